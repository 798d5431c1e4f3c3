"""The baselines an HPO reviewer sets beside the advisor, each a pure function of a measured grid, a budget in
job-seconds and a run-order generator; each answers its jobs from the grid (tlsweep.advisor.replay) and picks a
candidate on the selection split alone.

    random_search      full-length runs of candidates drawn at random, one seed each, until the budget ends
    one_epoch_top_k    every candidate for one epoch, then the best ones by select_acc at full length while the
                       budget lasts (the "one-epoch" rule of Egele et al. 2023)
    successive_halving rungs of the grid's lengths, the top 1/eta of each promoted (Jamieson & Talwalkar 2016),
                       without the advisor's seeds stage
    default_habit      fine-tune at the default LR, one seed, whatever it costs
    full_grid          every candidate at full length on every seed, the best mean select_acc
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from tlsweep.advisor.replay import CANDIDATE, Grid, Outcome

METHODS = ("random_search", "one_epoch_top_k", "successive_halving", "default_habit", "full_grid")


def random_search(grid: Grid, budget: float, rng: np.random.Generator) -> Outcome:
    """Candidates in a random order, each at full length with a random measured seed, until the next would
    overspend; the best select_acc among those that finished."""
    ran = _Runs(grid, budget, rng)
    for cand in _shuffled(grid.candidates, rng):
        if not ran.run(cand, grid.epochs):
            break
    return ran.best({c: grid.epochs for c in grid.candidates}, "random search")


def one_epoch_top_k(grid: Grid, budget: float, rng: np.random.Generator, epochs: int = 1,
                    least: Mapping[str, int] | None = None) -> Outcome:
    """Every candidate (in a random order) for `epochs`, then the best of them by select_acc at full length, in
    rank order, while the budget lasts; the best full-length run, else the best short one. `least`: a strategy's
    shortest valid length (lpft's probe phase plus one epoch), at which it runs where `epochs` is shorter, as a
    user of the rule would run it."""
    first = _firsts(grid, epochs, least)
    if any(e not in grid.lengths() for e in first.values()):
        raise ValueError(f"one_epoch_top_k: the grid has no {epochs}-epoch runs (lengths {grid.lengths()})")
    ran = _Runs(grid, budget, rng)
    for cand in _shuffled(grid.candidates, rng):
        if not ran.run(cand, first[cand]):
            break
    for cand in ran.ranked(first):
        if not ran.run(cand, grid.epochs):
            break
    full = ran.best({c: grid.epochs for c in grid.candidates}, "one-epoch top-k")
    return full if full.pick is not None else ran.best(first, "one-epoch top-k (no full-length run fit)")


def successive_halving(grid: Grid, budget: float, rng: np.random.Generator, eta: int = 3,
                       least: Mapping[str, int] | None = None) -> Outcome:
    """Rungs at the grid's lengths, shortest first: every candidate on the first rung (in a random order), then
    the top ceil(n/eta) of each rung on the next, while the budget lasts; the best of the highest rung reached.
    `least`: as one_epoch_top_k's (a candidate whose rung is below it runs, and is ranked, at it)."""
    ran = _Runs(grid, budget, rng)
    rungs, alive = grid.lengths(), _shuffled(grid.candidates, rng)
    at = _firsts(grid, rungs[0], least)
    reached = at
    for i, rung in enumerate(rungs):
        if i:
            alive = ran.ranked(at)[:max(1, math.ceil(len(alive) / eta))]
            at = {c: max(rung, at[c]) for c in grid.candidates}
        done = 0
        for cand in alive:
            if not ran.has(cand, at[cand]) and not ran.run(cand, at[cand]):
                break
            done += 1
        if done:
            reached = dict(at)
        if done < len(alive):
            break
    return ran.best(reached, "successive halving")


def default_habit(grid: Grid, rng: np.random.Generator, strategy: str = "finetune", lr: float | None = None,
                  backbone: str | None = None) -> Outcome:
    """A user's habit: `strategy` at `lr` (the middle of the grid's LRs for it when None) on `backbone` (the
    grid's first when None), one seed, full length; it costs what it costs."""
    cands = [c for c in grid.candidates if c[1] == strategy and (backbone is None or c[0] == backbone)]
    if not cands:
        raise ValueError(f"default_habit: the grid has no {strategy} candidate")
    b = cands[0][0]
    lrs = sorted(c[2] for c in cands if c[0] == b)
    pick = (b, strategy, lrs[len(lrs) // 2] if lr is None else lr)
    row = grid.answer(*pick, grid.epochs, int(rng.choice(grid.seeds)), {})
    return Outcome(pick, float(row["job_seconds"]), 1, "default habit")


def full_grid(grid: Grid) -> Outcome:
    """Every candidate at full length on every seed: the best mean select_acc (a candidate that diverged or
    failed in any seed is out)."""
    full = grid.rows[grid.rows["epochs"] == grid.epochs]
    lost = set(full.loc[full["status"] != "finished", CANDIDATE].itertuples(index=False, name=None))
    means = full[full["status"] == "finished"].groupby(CANDIDATE)["select_acc"].mean()
    means = means[[c not in lost for c in means.index]]
    pick = None if means.empty else tuple(means.idxmax())
    return Outcome(pick, grid.cost, len(full), "full grid")


class _Runs:
    """The jobs one method ran, each answered by the grid, within its budget."""

    def __init__(self, grid: Grid, budget: float, rng: np.random.Generator):
        self.grid, self.budget, self.rng = grid, budget, rng
        self.spent, self.rows, self.paid = 0.0, [], {}

    def run(self, cand: tuple, epochs: int) -> bool:
        """Run `cand` for `epochs` at a random measured seed; False, running nothing, where it would overspend."""
        paid = dict(self.paid)  # committed only if the run fits
        row = self.grid.answer(*cand, epochs, int(self.rng.choice(self.grid.seeds)), paid)
        if self.spent + row["job_seconds"] > self.budget:
            return False
        self.paid = paid
        self.spent += float(row["job_seconds"])
        self.rows.append(row)
        return True

    def has(self, cand: tuple, epochs: int) -> bool:
        return any(tuple(r[c] for c in CANDIDATE) == cand and r["epochs"] == epochs for r in self.rows)

    def ranked(self, at: Mapping[tuple, int]) -> list[tuple]:
        """The candidates that finished their length in `at` (candidate -> epochs), best select_acc first (ties
        in the order they ran)."""
        runs = pd.DataFrame(self.rows, columns=list(self.grid.rows.columns))
        if runs.empty:
            return []
        mine = [at.get(c) == e for c, e in zip(runs[CANDIDATE].itertuples(index=False, name=None), runs["epochs"])]
        runs = runs[np.array(mine, dtype=bool) & (runs["status"] == "finished").to_numpy()]
        runs = runs.sort_values("select_acc", ascending=False, kind="stable")
        return list(dict.fromkeys(runs[CANDIDATE].itertuples(index=False, name=None)))

    def best(self, at: Mapping[tuple, int], why: str) -> Outcome:
        top = self.ranked(at)
        return Outcome(top[0] if top else None, self.spent, len(self.rows), why)


def _firsts(grid: Grid, epochs: int, least: Mapping[str, int] | None) -> dict[tuple, int]:
    """Each candidate's first length: `epochs`, or its strategy's least valid length where that is longer."""
    return {c: max(epochs, (least or {}).get(c[1], 1)) for c in grid.candidates}


def _shuffled(items: list, rng: np.random.Generator) -> list:
    return [items[i] for i in rng.permutation(len(items))]
