"""The advisor's decisions: which backbone, strategy and LR, from a table of results and a fixed study.

`next_step(results, study)` reads the table (tlsweep.advisor.table) and returns a Step: the next batch of
jobs, or the Verdict. It keeps no state: every call replays every decision from the table, so a study
rerun on a store that holds finished runs (its own, an earlier study's, a grid run by hand) reuses them
and never proposes a job that has a row. The procedure, each decision a row of the trace:

1. screen (round 1): a probe on every backbone at every probe LR; keep the `keep` best by mean select_acc
   (each backbone at its best LR).
2. short rung (round 2): each kept (backbone, strategy) at every LR for `short` epochs, seed 0.
3. full rung (round 3), successive halving (Jamieson & Talwalkar 2016; the rungs of Hyperband, Li et al.
   2017): the top ceil(n_lrs / eta) LRs at full length. The candidate with the best short run goes
   first when nothing has run at full length; after that, a candidate whose best short run plus the
   allowance is below the best full-length mean cannot catch it, and is dropped.
4. seeds (rounds 4+): the two best configs by mean select_acc get seeds, paired by seed, until the 95%
   t-interval of best minus runner-up (tlsweep.report.stats) excludes zero (decided), lies inside
   +-margin (equivalent: the one with fewer measured job-seconds is recommended), or `max_seeds` pairs
   leave it undecided. The budget can end any stage: the verdict says so and names the best so far. A candidate
   whose cheapest job of a rung costs more than the budget has left is dropped at that rung, and the others go on.
   A backbone that nothing has measured is priced by the priors (tlsweep.advisor.budget); where they leave it no
   job, its cheapest job runs anyway, to measure it: the budget is then overspent by at most that job per backbone,
   and a small budget still gets a screen instead of no pick.

A (backbone, strategy, lr) with a diverged or failed run, at any length or seed, is lost: dropped with
that evidence and never averaged. Only select_acc is read; `table.visible` removes the scored split first.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tlsweep.advisor import budget
from tlsweep.advisor.study import PROBE, TRACE_COLUMNS, Config, Job, Step, StudyConfig, Verdict
from tlsweep.advisor.table import visible
from tlsweep.report import stats

SHORT, FULL, SEEDS = 2, 3, 4  # trace rounds of the stages after the screen (1)


def next_step(results: pd.DataFrame, study: StudyConfig, wall_elapsed: float = 0.0) -> Step:
    """The next batch of jobs for `study`, or its Verdict, from the results table alone.

    `wall_elapsed`: wall-clock seconds the study has run so far (only read when `study.wall` is set).
    Example: `step = next_step(table.empty(), study)`; run `step.jobs`, append their rows, call again.
    """
    return _Decide(visible(results), study, wall_elapsed).step()


@dataclass(frozen=True)
class _Mean:
    config: Config
    mean: float
    n: int


class _Decide:
    """One call's replay of the procedure over `runs`, the table without its scored split."""

    def __init__(self, runs: pd.DataFrame, study: StudyConfig, wall_elapsed: float):
        self.study, self.wall_elapsed = study, wall_elapsed
        self.costs = budget.CostModel(runs, study)
        self.spent = budget.spent(runs, study, self.costs)
        self.trace: list[dict] = []
        mine = runs[study.in_space(runs)]
        self.ran = set(mine[["backbone", "strategy", "lr", "epochs", "seed"]].itertuples(index=False, name=None))
        ok = (mine["status"] == "finished") & np.isfinite(mine["select_acc"])
        self.ok = mine[ok]
        self.lost = {}  # (backbone, strategy, lr) -> why it is lost
        for r in mine[~ok].itertuples():
            why = r.status if r.status != "finished" else "finished without select_acc"
            self.lost.setdefault((r.backbone, r.strategy, r.lr), f"{why} at seed {r.seed}, {r.epochs} epochs")
        agg = self.ok.groupby(["backbone", "strategy", "lr", "epochs"])["select_acc"].agg(["mean", "count"])
        self.means = {k: (m, n) for k, m, n in zip(agg.index, agg["mean"], agg["count"])}

    # -- the procedure --------------------------------------------------------------------------------------
    def step(self) -> Step:
        self.drop_lost()
        kept, want = self.screen()
        if want:
            return self.propose(want, 1)
        if not kept:
            return self.finish(Verdict("nothing", None, math.nan, 0, why="every backbone's probes were lost"))
        candidates = [(b, s) for b in kept for s in self.study.strategies]
        for stage, round_ in ((self.first_rung, SHORT), (self.full_rung, FULL)):
            want = stage(candidates)
            poor = self.unaffordable(want, round_)
            candidates = [c for c in candidates if c not in poor]
            want = [u for u in want if (u[0].backbone, u[0].strategy) not in poor]
            if want:
                return self.propose(want, round_)
        return self.seeds(candidates)

    def unaffordable(self, units: list[list[Job]], round_: int) -> set[tuple[str, str]]:
        """The candidates whose cheapest job of this rung costs more than the budget has left: dropped, so that
        one costly rung (an unmeasured strategy) ends that candidate, not the study."""
        left = self.study.budget - self.spent
        cheapest: dict[tuple[str, str], float] = {}
        for unit in units:
            key = (unit[0].backbone, unit[0].strategy)
            cheapest[key] = min(cheapest.get(key, math.inf), sum(j.cost for j in unit))
        poor = {k for k, cost in cheapest.items() if cost > left}
        for b, strategy in sorted(poor):
            self.note(round_, "rung 0" if round_ == SHORT else "rung 1", f"{b}/{strategy}", "drop",
                      f"cannot be afforded: its cheapest job is est. {cheapest[b, strategy]:.0f} s, "
                      f"{left:.0f} of the budget's job-seconds are left")
        return poor

    def screen(self) -> tuple[list[str], list[list[Job]]]:
        """Round 1: probe every backbone; the best `keep` by probe select_acc go on."""
        s = self.study
        if not s.probing:
            return list(s.backbones), []
        want = [[self.job(b, PROBE, lr, s.epochs, 0, "screen: probe on frozen features")]
                for b in s.backbones for lr in s.grid[PROBE] if self.new(b, PROBE, lr, s.epochs, 0)]
        if want:
            return [], want
        best = {b: self.best_lr(b, PROBE, s.epochs) for b in s.backbones}
        ranked = sorted(s.backbones, key=lambda b: -best[b].mean if best[b] else math.inf)
        # With no more backbones than `keep` the probes are the ladder's rung, not a screen: all go on.
        kept = [b for b in ranked if best[b]][:s.keep] if len(s.backbones) > s.keep else list(s.backbones)
        for rank, b in enumerate(ranked, 1):
            scores = "".join(f"; {c}={v:.4g}" for c, v in self.scores(b).items())
            if best[b] is None:
                evidence = "every probe LR lost"
            else:
                evidence = (f"probe select_acc {best[b].mean:.4f} at lr={best[b].config.lr:g} ({_seeds(best[b].n)}), "
                            f"rank {rank} of {len(ranked)}{scores}; keep the best {s.keep}")
            self.note(1, "screen", b, "promote" if b in kept else "drop", evidence)
        return kept, []

    def first_rung(self, candidates: list[tuple[str, str]]) -> list[list[Job]]:
        """Round 2: every LR of every candidate, short when raced, else at full length; seed 0."""
        s, want = self.study, []
        for b, strategy in candidates:
            raced = s.raced(strategy) and not self.at_full(b, strategy)
            epochs = s.short if raced else s.epochs
            why = f"rung 0: every LR for {epochs} of {s.epochs} epochs" if raced else "every LR, full length"
            want += [[self.job(b, strategy, lr, epochs, 0, why)] for lr in s.grid[strategy]
                     if (b, strategy, lr) not in self.lost and self.new(b, strategy, lr, epochs, 0)]
        return want

    def full_rung(self, candidates: list[tuple[str, str]]) -> list[list[Job]]:
        """Round 3: the top ceil(n/eta) of each raced candidate's n LRs at full length, unless it cannot catch up."""
        s = self.study
        incumbent = self.leader(candidates)
        allowance, allowance_why = self.allowance()
        want, waiting = [], []
        for b, strategy in candidates:
            if not s.raced(strategy) or self.at_full(b, strategy):
                continue
            short = sorted((m for m in (self.mean(b, strategy, lr, s.short) for lr in s.grid[strategy]) if m),
                           key=lambda m: -m.mean)
            if not short:
                self.note(SHORT, "rung 0", f"{b}/{strategy}", "drop", "every LR lost")
                continue
            survivors = short[:math.ceil(len(s.grid[strategy]) / s.eta)]
            started = any(not self.new(b, strategy, lr, s.epochs, 0) for lr in s.grid[strategy])
            if started:
                want += self.promote(b, strategy, short, survivors, "at full length since an earlier batch")
            else:
                waiting.append((b, strategy, short, survivors))
        waiting.sort(key=lambda w: -w[3][0].mean)
        if incumbent is None:
            if want or not waiting:
                for b, strategy, _, _ in waiting:
                    self.note(FULL, "rung 1", f"{b}/{strategy}", "wait", "a candidate already runs at full length")
                return want
            # Nothing at full length yet to compare with: the best short run goes first, and its result
            # decides whether the others can catch up.
            b, strategy, short, survivors = waiting.pop(0)
            want += self.promote(b, strategy, short, survivors, f"best short run {survivors[0].mean:.4f} of all "
                                                                "candidates; nothing at full length yet")
            for b, strategy, _, _ in waiting:
                self.note(FULL, "rung 1", f"{b}/{strategy}", "wait", "the best short run goes to full length first")
            return want
        for b, strategy, short, survivors in waiting:
            top = survivors[0]
            reach = top.mean + allowance  # the most its full-length run can be expected to reach
            evidence = (f"best short {top.mean:.4f} at lr={top.config.lr:g} + allowance {allowance:.4f} "
                        f"({allowance_why}) = {reach:.4f} vs incumbent {incumbent.config} {incumbent.mean:.4f}")
            if reach < incumbent.mean:
                self.note(FULL, "rung 1", f"{b}/{strategy}", "drop", f"cannot catch up: {evidence}")
            else:
                want += self.promote(b, strategy, short, survivors, f"can catch up: {evidence}")
        return want

    def seeds(self, candidates: list[tuple[str, str]]) -> Step:
        """Rounds 4+: seeds for the two best configs until their paired CI decides."""
        s = self.study
        ranked = self.finalists(candidates)
        if not ranked:
            return self.finish(Verdict("nothing", None, math.nan, 0, why="every candidate was lost"))
        for rest in ranked[2:]:
            self.note(SEEDS, "seeds", str(rest.config), "drop",
                      f"mean {rest.mean:.4f} ({_seeds(rest.n)}): not in the top 2")
        if len(ranked) == 1:
            a = ranked[0]
            return self.finish(Verdict("decided", a.config, a.mean, a.n, why="the only candidate left"))
        a, r = ranked[:2]
        x, y = self.paired(a.config, r.config)
        n = len(x)
        if n >= s.min_seeds:
            d = x - y
            _, _, low, high = stats.t_interval(d)
            spread = not math.isnan(stats.paired_p(x, y))  # no spread, no interval: stats.paired_p's rule
            ci = f"best - runner-up {d.mean():+.4f}, 95% CI [{low:+.4f}, {high:+.4f}] over {n} paired seeds"
            if spread and (low > 0 or high < 0):
                win, lose = (a, r) if low > 0 else (r, a)
                return self.finish(self.verdict("decided", win, lose, f"{ci}: excludes 0"))
            if spread and -s.margin <= low and high <= s.margin:
                cheap, dear = sorted((a, r), key=lambda m: self.job_seconds(m.config))
                why = (f"{ci}: inside +-{s.margin:g}; {cheap.config} takes {self.job_seconds(cheap.config):.0f} s "
                       f"a run, {dear.config} {self.job_seconds(dear.config):.0f} s")
                return self.finish(self.verdict("equivalent", cheap, dear, why))
            if n >= s.max_seeds:
                return self.finish(self.verdict("max_seeds", a, r, f"{ci}: undecided at max_seeds={s.max_seeds}"))
            self.note(SEEDS, "seeds", f"{a.config} vs {r.config}", "add seed",
                      f"{ci}: " + ("no spread in the differences" if not spread else
                                   f"neither excludes 0 nor lies inside +-{s.margin:g}"))
        target = min(s.max_seeds, max(s.min_seeds, n + 1))
        have = [set(self.ok_seeds(m.config)) for m in (a, r)]
        missing = [seed for seed in range(s.max_seeds) if not (seed in have[0] and seed in have[1])][:target - n]
        units = [[self.job(m.config.backbone, m.config.strategy, m.config.lr, m.config.epochs, seed,
                           f"finalist: seed {seed} for a paired CI") for m, h in zip((a, r), have) if seed not in h]
                 for seed in missing]
        return self.propose([u for u in units if u], SEEDS + max(0, target - s.min_seeds), finals=(a, r))

    # -- evidence ----------------------------------------------------------------------------------------
    def mean(self, b: str, strategy: str, lr: float, epochs: int) -> _Mean | None:
        if (b, strategy, lr) in self.lost or (b, strategy, lr, epochs) not in self.means:
            return None
        m, n = self.means[b, strategy, lr, epochs]
        return _Mean(Config(b, strategy, lr, epochs), float(m), int(n))

    def best_lr(self, b: str, strategy: str, epochs: int) -> _Mean | None:
        found = [m for m in (self.mean(b, strategy, lr, epochs) for lr in self.study.grid[strategy]) if m]
        return max(found, key=lambda m: m.mean) if found else None  # max keeps the first of equals: the lowest LR

    def finalists(self, candidates: list[tuple[str, str]]) -> list[_Mean]:
        """Each candidate at its best LR at full length, best first (ties: the order of the study)."""
        best = [self.best_lr(b, strategy, self.study.epochs) for b, strategy in candidates]
        return sorted((m for m in best if m), key=lambda m: -m.mean)

    def leader(self, candidates: list[tuple[str, str]]) -> _Mean | None:
        ranked = self.finalists(candidates)
        return ranked[0] if ranked else None

    def allowance(self) -> tuple[float, str]:
        """The gain a short run is credited with: the larger of the study's default and the largest gain
        from short to full length seen on one (backbone, strategy, lr) at seed 0: optimistic on purpose,
        as a wrong drop loses the best config for good while a wrong promotion costs one full run."""
        s = self.study
        first = self.ok[self.ok["seed"] == 0].groupby(["backbone", "strategy", "lr", "epochs"])["select_acc"].mean()
        gains = [first[k[:3] + (s.epochs,)] - v for k, v in first.items()
                 if k[3] == s.short < s.epochs and k[:3] not in self.lost and k[:3] + (s.epochs,) in first.index]
        seen = max(gains, default=-math.inf)
        if seen > s.allowance:
            return float(seen), f"largest gain seen, over {len(gains)} LRs; default {s.allowance:g}"
        return s.allowance, f"default; largest gain seen {seen:.4f}" if gains else "default; no gain seen yet"

    def paired(self, a: Config, r: Config) -> tuple[np.ndarray, np.ndarray]:
        rows = [self.rows(c).rename(columns={"select_acc": "value"}) for c in (a, r)]
        return stats.paired(rows[0], rows[1], ["seed"], (str(a), str(r)))

    def rows(self, c: Config) -> pd.DataFrame:
        ok = self.ok
        return ok[(ok["backbone"] == c.backbone) & (ok["strategy"] == c.strategy) & (ok["lr"] == c.lr)
                  & (ok["epochs"] == c.epochs)]

    def ok_seeds(self, c: Config) -> list[int]:
        return list(self.rows(c)["seed"])

    def job_seconds(self, c: Config) -> float:
        return float(self.rows(c)["job_seconds"].mean())

    def scores(self, b: str) -> dict[str, float]:
        cols = [c for c in self.ok.columns if c.startswith("score_")]
        part = self.ok[self.ok["backbone"] == b]
        return {c: float(part[c].mean()) for c in cols if part[c].notna().any()}

    # -- outputs -----------------------------------------------------------------------------------------
    def new(self, *key) -> bool:
        return key not in self.ran

    def at_full(self, b: str, strategy: str) -> bool:
        """Every LR ran at full length (a grid run by hand): no short run can add to that."""
        return all((b, strategy, lr) in self.lost or not self.new(b, strategy, lr, self.study.epochs, 0)
                   for lr in self.study.grid[strategy])

    def job(self, b: str, strategy: str, lr: float, epochs: int, seed: int, why: str) -> Job:
        cost, source = self.costs.estimate(b, strategy, epochs)
        return Job(b, strategy, lr, epochs, seed, why, cost, source)

    def promote(self, b: str, strategy: str, short: list[_Mean], survivors: list[_Mean], why: str) -> list[list[Job]]:
        """Successive halving's step up: the survivors' full-length jobs (seed 0) that have not run."""
        by_lr = ", ".join(f"{m.config.lr:g}: {m.mean:.4f}" for m in short)
        self.note(FULL, "rung 1", f"{b}/{strategy}", "promote",
                  f"short select_acc by LR {by_lr}; the top {len(survivors)} of {len(self.study.grid[strategy])} "
                  f"(eta={self.study.eta}) go to {self.study.epochs} epochs; {why}")
        return [[self.job(b, strategy, m.config.lr, self.study.epochs, 0, f"rung 1: {why}")] for m in survivors
                if self.new(b, strategy, m.config.lr, self.study.epochs, 0)]

    def drop_lost(self) -> None:
        for (b, strategy, lr), why in self.lost.items():
            round_ = 1 if strategy == PROBE else SHORT if self.study.raced(strategy) else FULL
            self.note(round_, "lost", f"{b}/{strategy} lr={lr:g}", "drop", f"{why}: lost, never averaged")

    def note(self, round_: int, stage: str, candidate: str, action: str, evidence: str) -> None:
        self.trace.append(dict(zip(TRACE_COLUMNS, (round_, stage, candidate, action, evidence))))

    def verdict(self, stopped: str, win: _Mean, lose: _Mean, why: str) -> Verdict:
        x, y = self.paired(win.config, lose.config)
        d = x - y
        _, _, low, high = stats.t_interval(d)
        return Verdict(stopped, win.config, win.mean, win.n, lose.config, lose.mean,
                       float(d.mean()) if len(d) else math.nan, (low, high), len(d), why)

    def finish(self, verdict: Verdict) -> Step:
        self.note(self.trace[-1]["round"] if self.trace else 1, "verdict",
                  str(verdict.recommendation), "recommend", f"{verdict.stopped}: {verdict.why}")
        return Step((), verdict, self.table(), self.spent, budget.full_grid(self.study, self.costs))

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.trace, columns=TRACE_COLUMNS).sort_values("round", kind="stable", ignore_index=True)

    def propose(self, units: list[list[Job]], round_: int, finals: tuple[_Mean, _Mean] | None = None) -> Step:
        """The units that fit the budget, or the budget's verdict when none does."""
        s = self.study
        wall_left = (s.wall - self.wall_elapsed) if s.wall is not None else math.inf
        jobs, left = budget.fit(units, s.budget - self.spent, wall_left, s.parallel)
        measuring = set()
        if not jobs and s.budget > self.spent and wall_left > 0:
            # Priced by the priors alone, a backbone never measured would never start: its cheapest unit runs to
            # measure it, and its other jobs are priced from that
            firsts: dict[str, list[Job]] = {}
            for u in sorted(units, key=lambda u: sum(j.cost for j in u)):
                if not self.costs.measured(u[0].backbone):
                    firsts.setdefault(u[0].backbone, list(u))
            jobs = [j for u in firsts.values() for j in u]
            measuring, left = set(jobs), sum(map(len, units)) - len(jobs)
        if not jobs:
            need = sum(j.cost for u in units for j in u)
            why = (f"spent {self.spent:.0f} of {s.budget:.0f} job-seconds"
                   + (f", {self.wall_elapsed:.0f} of {s.wall:.0f} s wall-clock" if s.wall is not None else "")
                   + f"; the next {sum(map(len, units))} jobs need {need:.0f} (cheapest unit "
                     f"{min(sum(j.cost for j in u) for u in units):.0f})")
            return self.finish(self.so_far(finals, why))
        for j in jobs:
            self.note(round_, "seeds" if finals else ("screen", "rung 0", "rung 1")[min(round_, 3) - 1],
                      str(j.config) + f" seed {j.seed}", "add seed" if finals else "run",
                      f"{j.why}; est. {j.cost:.0f} s ({j.cost_from})"
                      + ("; over what the budget has left, run to measure the backbone" if j in measuring else ""))
        note = f"{left} jobs wait for a later batch: over the remaining budget" if left else ""
        return Step(tuple(jobs), None, self.table(), self.spent, budget.full_grid(s, self.costs), note)

    def so_far(self, finals: tuple[_Mean, _Mean] | None, why: str) -> Verdict:
        """The budget's verdict: the best config so far, full length before short, with the finalists'
        paired gap when they have one."""
        if finals:
            return self.verdict("budget", *finals, why)
        found = [self.mean(*k) for k in self.means]
        found = sorted((m for m in found if m), key=lambda m: (-m.config.epochs, -m.mean))
        if not found:
            return Verdict("budget", None, math.nan, 0, why=f"{why}; nothing finished")
        return Verdict("budget", found[0].config, found[0].mean, found[0].n, why=why)


def _seeds(n: int) -> str:
    return f"{n} seed" + ("" if n == 1 else "s")
