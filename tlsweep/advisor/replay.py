"""Studies replayed on a measured grid: every job a method asks for is answered by the grid's row of the same
config, length and seed, so a method's regret at any budget costs nothing to recompute, for any later policy too
(the tabular benchmarks of HPO: LCBench, YAHPO, HPOBench).

A grid is a results table (tlsweep.advisor.table) of one task: one row per (backbone, strategy, lr, epochs, seed)
that was measured, with `scored_acc`. Its candidates are the configs measured at full length; the truth of a config
is its mean scored accuracy at full length over the grid's seeds (a run that diverged or failed counts as 0), read
only to score a pick, never to make one.
A method's regret is the best candidate's truth minus its pick's, in points of accuracy. A method that names no
pick scores as the worst candidate.

    grid = Grid(rows)                       # rows of one task
    advise(grid, budget=0.3 * grid.cost, order=seed)  -> Outcome
    regret(grid, outcome.pick)              # points
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tlsweep.advisor.policy import next_step
from tlsweep.advisor.study import Job, StudyConfig
from tlsweep.advisor.table import COLUMNS, FEATURE_SECONDS, KEY, SCORE_PREFIX, SCORED, SELECT_IMAGES, empty, lr_key
from tlsweep.report.stats import holm, paired_p, t_interval

CANDIDATE = ["backbone", "strategy", "lr"]


class Unmeasured(LookupError):
    """A job the grid has no row for: the grid must hold every length and seed a replayed method asks for."""


class Grid:
    """One task's measured runs, looked up by (backbone, strategy, lr, epochs, seed)."""

    def __init__(self, rows: pd.DataFrame):
        missing = [c for c in (*COLUMNS, SCORED) if c not in rows.columns]
        if missing:
            raise ValueError(f"grid lacks {missing}")
        runs = rows.assign(lr=[lr_key(x) for x in rows["lr"]])
        for c in ("epochs", "seed"):
            runs[c] = runs[c].astype(int)
        dup = runs.duplicated(list(KEY))
        if dup.any():
            raise ValueError(f"grid measures {list(runs.loc[dup, list(KEY)].iloc[0])} twice: one row per job")
        # A frozen prefix's feature pass is paid by the first job that needs it (its views up to its length), in
        # the grid's order as in a method's: each row's time is kept without its pass, and `answer` charges the
        # pass to whichever job of a replay needs it first.
        passes = pd.to_numeric(runs[FEATURE_SECONDS], errors="coerce") if FEATURE_SECONDS in runs else \
            pd.Series(np.nan, index=runs.index)
        self._passes: dict[tuple[str, str], list[tuple[int, float]]] = {}
        for b, s, e, sec in zip(runs["backbone"], runs["strategy"], runs["epochs"], passes):
            if np.isfinite(sec):
                self._passes.setdefault((b, _prefix(s)), []).append((int(e), float(sec)))
        runs = runs.assign(job_seconds=runs["job_seconds"] - passes.fillna(0.0), **{FEATURE_SECONDS: np.nan})
        self.rows = runs.reset_index(drop=True)
        self.epochs = int(runs["epochs"].max())  # the full length
        self.seeds = tuple(sorted(runs["seed"].unique()))
        self._by_key = {k: i for i, k in enumerate(runs[list(KEY)].itertuples(index=False, name=None))}
        full = runs[runs["epochs"] == self.epochs]
        # a run that diverged or failed gave the user nothing: it counts as 0 in its candidate's truth
        acc = full[SCORED].where(full["status"] == "finished", 0.0).astype(float)
        self.truth = full.assign(**{SCORED: acc}).groupby(CANDIDATE)[SCORED].mean()
        # the full grid: every candidate, every seed, full length, and each feature pass once
        self.cost = float(full["job_seconds"].sum()) + sum(sec for p in self._passes.values() for _, sec in p)

    @property
    def candidates(self) -> list[tuple[str, str, float]]:
        return list(self.truth.index)

    def lengths(self) -> list[int]:
        return sorted(self.rows["epochs"].unique())

    def row(self, backbone: str, strategy: str, lr: float, epochs: int, seed: int) -> dict:
        """The measured run, its job-seconds without any feature pass."""
        i = self._by_key.get((backbone, strategy, lr_key(lr), int(epochs), int(seed)))
        if i is None:
            raise Unmeasured(f"no row for {backbone}/{strategy} lr={lr:g} {epochs} epochs seed {seed}")
        return self.rows.iloc[i].to_dict()

    def answer(self, backbone: str, strategy: str, lr: float, epochs: int, seed: int,
               paid: dict[tuple[str, str], int]) -> dict:
        """The row as a method's job meets it: where its frozen prefix's views up to `epochs` are not yet `paid`
        (prefix -> length computed so far, updated here), it pays them, in job_seconds and feature_seconds."""
        row = self.row(backbone, strategy, lr, epochs, seed)
        key = (backbone, _prefix(strategy))
        have = paid.get(key, 0)
        extra = sum(sec for e, sec in self._passes.get(key, ()) if have < e <= epochs)
        if extra:
            row["job_seconds"] += extra
            row[FEATURE_SECONDS] = extra
            paid[key] = max(have, int(epochs))
        return row


def _prefix(strategy: str) -> str:
    """Whose cached features a strategy reads: lpft's probe phase reads the probe's (the pre-logits)."""
    return "probe" if strategy == "lpft" else strategy


@dataclass(frozen=True)
class Outcome:
    """What a method picked (a candidate, or None), the job-seconds it spent, and the jobs it ran."""
    pick: tuple[str, str, float] | None
    spent: float
    jobs: int
    why: str = ""


def draws(rows: pd.DataFrame) -> tuple[Grid, Grid | None]:
    """One task's rows (with a `draw` column: "fixed", or "per_seed" for runs whose seed drew its own selection
    split) as the grid on the fixed draw, and the grid a resplit study meets (advise.resplit): each per_seed row in
    place of the fixed row of its key, the rest as measured; None where there are no per_seed rows."""
    draw = rows["draw"] if "draw" in rows else pd.Series("fixed", index=rows.index)
    fixed = rows[draw == "fixed"].drop(columns=["task", "draw"], errors="ignore")
    own = rows[draw == "per_seed"].drop(columns=["task", "draw"], errors="ignore")
    if FEATURE_SECONDS in own:  # a draw of its own trains on other images: its pass is its own, kept in its time
        own = own.assign(**{FEATURE_SECONDS: np.nan})
    grid = Grid(fixed)
    if own.empty:
        return grid, None
    keys = lambda t: list(zip(t["backbone"], t["strategy"], map(lr_key, t["lr"]),  # noqa: E731
                              t["epochs"].astype(int), t["seed"].astype(int)))
    theirs = set(keys(own))
    replaced = np.array([k in theirs for k in keys(fixed)], dtype=bool)
    return grid, Grid(pd.concat([fixed[~replaced], own], ignore_index=True))


def regret(grid: Grid, pick: tuple[str, str, float] | None) -> float:
    """Points of accuracy between the best candidate and `pick` (the worst candidate's loss for None)."""
    best = float(grid.truth.max())
    got = float(grid.truth.min()) if pick is None else float(grid.truth.get((pick[0], pick[1], lr_key(pick[2])), 0.0))
    return 100 * (best - got)


def study_for(grid: Grid, budget: float, short_epochs: int | None = None, **advise) -> StudyConfig:
    """The advisor's study over the grid's candidates: every backbone and strategy, each strategy's LRs, the
    grid's full length, its seeds as the most the study may ask for. `advise`: StudyConfig's other fields."""
    lrs = {s: tuple(sorted(g)) for s, g in grid.truth.reset_index().groupby("strategy")["lr"]}
    backbones = tuple(dict.fromkeys(b for b, _, _ in grid.candidates))
    strategies = tuple(s for s in dict.fromkeys(s for _, s, _ in grid.candidates))
    seeds = len(grid.seeds)
    fields = dict(min_seeds=min(3, seeds), max_seeds=seeds) | advise
    return StudyConfig(backbones, strategies, lrs, grid.epochs, budget, short_epochs=short_epochs, **fields)


def advise(grid: Grid, study: StudyConfig, order: int | None = 0, max_rounds: int = 200) -> Outcome:
    """`next_step` to its verdict, each job answered by the grid. `order` draws which measured seed answers the
    study's seed 0, 1, ... (a permutation of the grid's seeds): the run-order seed of a replay; None: seed i is
    the grid's i-th, as a live study that ran these rows saw them."""
    seeds = list(grid.seeds) if order is None else np.random.default_rng(order).permutation(grid.seeds).tolist()
    seed_of = dict(enumerate(int(s) for s in seeds))
    table = empty()
    jobs, paid = 0, {}
    for _ in range(max_rounds):
        step = next_step(table, study)
        if step.verdict is not None:
            rec = step.verdict.recommendation
            pick = None if rec is None else (rec.backbone, rec.strategy, rec.lr)
            return Outcome(pick, step.spent, jobs, step.verdict.stopped)
        rows = [_answer(grid, j, seed_of, paid) for j in step.jobs]
        jobs += len(rows)
        table = pd.concat([table, pd.DataFrame(rows)], ignore_index=True)
    raise RuntimeError(f"no verdict after {max_rounds} rounds")


def _answer(grid: Grid, job: Job, seed_of: dict[int, int], paid: dict) -> dict:
    if job.seed not in seed_of:
        raise Unmeasured(f"the study asks for seed {job.seed}; the grid measured {len(grid.seeds)} seeds")
    row = grid.answer(job.backbone, job.strategy, job.lr, job.epochs, seed_of[job.seed], paid)
    # what a live study's table holds of the run (its pass, the split's size, the scores), with the study's own
    # seed: it pairs configs by it
    seen = [c for c in row if c in COLUMNS or c in (FEATURE_SECONDS, SELECT_IMAGES) or str(c).startswith(SCORE_PREFIX)]
    return {c: row[c] for c in seen} | {"seed": job.seed}


def summary(results: pd.DataFrame) -> pd.DataFrame:
    """Regret per method and budget share: the mean over tasks (each task's mean over replays) with its 95%
    t-interval over tasks, and the worst task."""
    per_task = results.groupby(["method", "budget_share", "task"])["regret"].mean().reset_index()
    out = []
    for (method, share), part in per_task.groupby(["method", "budget_share"]):
        x = part["regret"].to_numpy(float)
        _, _, low, high = t_interval(x)
        out.append(dict(method=method, budget_share=share, tasks=len(x), regret=float(x.mean()), low=low, high=high,
                        worst=float(x.max())))
    return pd.DataFrame(out)


def claim(results: pd.DataFrame, share: float, method: str = "advisor") -> pd.DataFrame:
    """`method`'s regret minus each other method's, paired by task at `share` of the grid: the mean difference
    in points (negative: `method` loses less), its 95% t-interval over tasks, and the p-value with Holm's
    adjustment over the methods compared."""
    at = results[np.isclose(results["budget_share"], share)]
    per_task = at.groupby(["method", "task"])["regret"].mean().unstack("task")
    if method not in per_task.index:
        raise ValueError(f"no {method} rows at budget share {share}")
    rows = []
    for other in [m for m in per_task.index if m != method]:
        both = per_task.loc[[method, other]].dropna(axis=1)
        a, b = both.loc[method].to_numpy(float), both.loc[other].to_numpy(float)
        _, _, low, high = t_interval(a - b)
        rows.append(dict(baseline=other, tasks=len(a), difference=float(np.mean(a - b)) if len(a) else math.nan,
                         low=low, high=high, p=paired_p(a, b)))
    out = pd.DataFrame(rows)
    if len(out):
        out["p_holm"] = holm(out["p"].to_numpy(float))
    return out
