"""What a study fixes (StudyConfig) and what the policy answers (Step: a batch of Jobs, or a Verdict).

Frozen dataclasses: the policy is a function of the results table and these values only, so that a rerun
on the same store makes the same decisions.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import pandas as pd

from tlsweep.advisor.table import lr_key
from tlsweep.config.errors import ConfigError
from tlsweep.config.keys import STRATEGIES

PROBE = "probe"  # the screen's strategy: a linear head on frozen features, the cheapest view of a backbone
STOPS = ("decided", "equivalent", "budget", "max_seeds", "nothing")
TRACE_COLUMNS = ["round", "stage", "candidate", "action", "evidence"]
ACTIONS = ("run", "promote", "wait", "drop", "add seed", "recommend")


@dataclass(frozen=True)
class StudyConfig:
    """The fixed part of a study; every check names its `advise.` key.

    `lrs`: one grid for every strategy, or {strategy: grid}, which must cover `probe` when backbones are
    screened. `budget` and `wall` are seconds (`parse_duration`). `prior_*`: the cost of a job nothing has
    measured yet, per epoch and per job; give upper guesses, since the budget is kept on estimates.
    """
    backbones: tuple[str, ...]
    strategies: tuple[str, ...]
    lrs: Mapping[str, tuple[float, ...]] | Sequence[float]
    epochs: int
    budget: float  # job-seconds: the sum of the jobs' durations, what a cluster charges
    wall: float | None = None  # wall-clock seconds from the study's start; None: no limit
    parallel: int = 1  # jobs that run at once: turns a batch's job-seconds into wall-clock
    short_epochs: int | None = None  # None: a third of `epochs`, as a first rung of successive halving
    keep: int = 2  # backbones kept by the screen
    # successive halving keeps the top ceil(n/eta) of a rung (Jamieson & Talwalkar 2016); 2 keeps 2 of 3 LRs, as one
    # short run on a small selection split too often picks the wrong one (docs/advisor.md replays both rates)
    eta: int = 2
    margin: float = 0.01  # gaps inside +-margin are practically nil: one point of accuracy
    allowance: float = 0.05  # the least gain from short to full length that a short run is credited with
    min_seeds: int = 3  # the finalists' first paired CI: two pairs give a t quantile of 12.7, no decision
    max_seeds: int = 10
    prior_epoch_seconds: float = 60.0
    prior_overhead_seconds: float = 30.0
    grid: Mapping[str, tuple[float, ...]] = field(init=False, repr=False)

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 -- a frozen dataclass normalizes once
        set_("backbones", tuple(self.backbones))
        set_("strategies", tuple(self.strategies))
        _check(len(self.backbones) > 0 and len(set(self.backbones)) == len(self.backbones), "backbones",
               f"give one or more distinct backbones, not {list(self.backbones)}")
        _check(len(self.strategies) > 0 and len(set(self.strategies)) == len(self.strategies), "strategies",
               f"give one or more distinct strategies, not {list(self.strategies)}")
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        _check(not unknown, "strategies", f"unknown {unknown}; strategies: {', '.join(STRATEGIES)}")
        for key in ("epochs", "parallel", "keep", "eta", "min_seeds", "max_seeds"):
            _check(isinstance(getattr(self, key), int) and getattr(self, key) >= 1, key,
                   f"must be an integer >= 1, not {getattr(self, key)!r}")
        needed = self.strategies + ((PROBE,) if self.probing and PROBE not in self.strategies else ())
        given = self.lrs if isinstance(self.lrs, Mapping) else {s: self.lrs for s in needed}
        lacking = [s for s in needed if not given.get(s)]
        _check(not lacking, "lrs", f"no learning rates for {lacking}")
        grids = {s: tuple(sorted({lr_key(x) for x in given[s]})) for s in needed}
        _check(all(lr > 0 for g in grids.values() for lr in g), "lrs", "learning rates must be > 0")
        set_("grid", MappingProxyType(grids))
        _check(self.eta >= 2, "eta", f"must be >= 2 (keep the top ceil(n/eta)), not {self.eta}")
        _check(self.min_seeds >= 2 and self.max_seeds >= self.min_seeds, "min_seeds",
               f"need 2 <= min_seeds <= max_seeds for a paired CI, not {self.min_seeds}, {self.max_seeds}")
        if self.short_epochs is not None:
            _check(1 <= self.short_epochs <= self.epochs, "short_epochs", f"must lie in 1..epochs={self.epochs}")
        _check(_positive(self.budget), "budget", f"must be > 0 seconds, not {self.budget!r}")
        _check(self.wall is None or _positive(self.wall), "wall", f"must be > 0 seconds, not {self.wall!r}")
        for key in ("margin", "allowance", "prior_epoch_seconds", "prior_overhead_seconds"):
            _check(math.isfinite(getattr(self, key)) and getattr(self, key) >= 0, key, "must be a number >= 0")

    @property
    def probing(self) -> bool:
        """Whether probe jobs run: to screen more backbones than `keep`, or as a rung of the ladder."""
        return len(self.backbones) > self.keep or PROBE in self.strategies

    @property
    def short(self) -> int:
        return self.short_epochs if self.short_epochs is not None else max(1, self.epochs // 3)

    def raced(self, strategy: str) -> bool:
        """Whether the strategy's LRs race from short runs; a probe's full run is already the screen's."""
        return strategy != PROBE and self.short < self.epochs

    def in_space(self, runs: pd.DataFrame) -> pd.Series:
        """The rows that are jobs of this study (wherever they came from); others only inform costs."""
        strategies = self.strategies + ((PROBE,) if self.probing else ())
        lr_ok = [lr in self.grid.get(s, ()) for s, lr in zip(runs["strategy"], runs["lr"])]
        return (runs["backbone"].isin(self.backbones) & runs["strategy"].isin(strategies)
                & pd.Series(lr_ok, index=runs.index, dtype=bool) & runs["epochs"].isin({self.short, self.epochs})
                & (runs["seed"] >= 0))


@dataclass(frozen=True)
class Config:
    """One trainable configuration: what a verdict recommends."""
    backbone: str
    strategy: str
    lr: float
    epochs: int

    def __str__(self) -> str:
        return f"{self.backbone}/{self.strategy} lr={self.lr:g} {self.epochs}ep"


@dataclass(frozen=True)
class Job:
    """A job to run: a Config at one seed, why it is proposed, and its estimated job-seconds."""
    backbone: str
    strategy: str
    lr: float
    epochs: int
    seed: int
    why: str
    cost: float
    cost_from: str  # where the estimate's epoch time comes from: measured, backbone, prior

    @property
    def key(self) -> tuple:
        return (self.backbone, self.strategy, self.lr, self.epochs, self.seed)

    @property
    def config(self) -> Config:
        return Config(self.backbone, self.strategy, self.lr, self.epochs)


@dataclass(frozen=True)
class Verdict:
    """The answer: the recommendation, the runner-up, recommendation minus runner-up paired by seed (mean,
    95% t-interval, pairs) and why the study stopped (one of STOPS)."""
    stopped: str
    recommendation: Config | None
    mean: float  # mean select_acc over the recommendation's seeds
    n_seeds: int
    runner_up: Config | None = None
    runner_up_mean: float = math.nan
    gap: float = math.nan
    ci: tuple[float, float] = (math.nan, math.nan)
    n_pairs: int = 0
    why: str = ""


@dataclass(frozen=True)
class Step:
    """The policy's answer to one table: jobs to run next, or the verdict (then `jobs` is empty). `trace`
    has TRACE_COLUMNS, every decision and its evidence; `spent` and `full_grid` are job-seconds."""
    jobs: tuple[Job, ...]
    verdict: Verdict | None
    trace: pd.DataFrame
    spent: float
    full_grid: float
    note: str = ""

    @property
    def progress(self) -> str:
        share = f" ({self.spent / self.full_grid:.0%})" if self.full_grid > 0 else ""
        return f"spent {self.spent:,.0f} job-seconds of an estimated full grid of {self.full_grid:,.0f}{share}"


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"advise.{key}: {message}")
