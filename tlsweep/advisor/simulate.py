"""A study played against a synthetic truth: the policy's loop to its verdict, with no training.

The truth table has one row per (backbone, strategy, lr):

    mean              expected select_acc at full length
    noise             standard deviation of one run's select_acc around it (seed to seed)
    rate              learning-curve shape: a run of e of the full E epochs reaches
                      mean * (1 - exp(-rate e)) / (1 - exp(-rate E))
    epoch_seconds     seconds per epoch (exact: the cost model's measured estimates are then exact too)
    overhead_seconds  a job's fixed seconds (start-up, data, features)
    diverge           probability that a run diverges (optional, default 0)
    scored_mean       expected scored-split accuracy (optional, default `mean`): the policy must never see it

Every run's outcome is a function of (seed, config, run seed) alone, not of the order jobs were asked
for: a resumed study sees the same numbers as an uninterrupted one.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tlsweep.advisor import budget
from tlsweep.advisor.policy import next_step
from tlsweep.advisor.study import PROBE, Config, Job, StudyConfig, Verdict
from tlsweep.advisor.table import COLUMNS, SCORED, empty, lr_key

TRUTH_COLUMNS = ["backbone", "strategy", "lr", "mean", "noise", "rate", "epoch_seconds", "overhead_seconds"]


@dataclass(frozen=True)
class Simulation:
    """What a simulated study did: its verdict, the last step's trace (every decision replayed on the final
    table), `log` (each batch's new trace rows, with the evidence as it stood then, column `batch`),
    job-seconds spent, the policy's estimate of the full grid and its true cost, the batches and jobs it ran
    and the final results table."""
    verdict: Verdict
    trace: pd.DataFrame
    log: pd.DataFrame
    spent: float
    full_grid: float
    true_grid: float
    rounds: int
    jobs: int
    results: pd.DataFrame


def simulate(truth: pd.DataFrame, study: StudyConfig, seed: int = 0, seed_sd: float = 0.0,
             results: pd.DataFrame | None = None, max_rounds: int = 200) -> Simulation:
    """Run `next_step` to its verdict, each batch's jobs answered from `truth`.

    `seed_sd`: a run seed's effect shared by every config (same split order, same init stream), the part
    of the noise that pairing by seed removes. `results`: a table to start from (a resumed study).
    """
    indexed = _indexed(truth, study)
    table = empty() if results is None else results.copy()
    wall, jobs, seen, log = 0.0, 0, set(), []
    for round_ in range(1, max_rounds + 1):
        step = next_step(table, study, wall_elapsed=wall)
        for row in step.trace.itertuples(index=False, name=None):
            if row not in seen:
                seen.add(row)
                log.append((round_,) + row)
        if step.verdict is not None:
            log = pd.DataFrame(log, columns=["batch"] + list(step.trace.columns))
            return Simulation(step.verdict, step.trace, log, step.spent, step.full_grid, true_grid(truth, study),
                              round_ - 1, jobs, table)
        rows = [run(indexed.loc[(j.backbone, j.strategy, j.lr)], j, study.epochs, seed, seed_sd) for j in step.jobs]
        wall += budget.makespan([r["job_seconds"] for r in rows], study.parallel)
        jobs += len(rows)
        # `batch` is not read by the policy: it lets a test cut the table where a study was interrupted
        table = pd.concat([table, pd.DataFrame(rows, columns=COLUMNS).assign(batch=round_)], ignore_index=True)
    raise RuntimeError(f"no verdict after {max_rounds} rounds")


def run(truth: pd.Series, job: Job, full_epochs: int, seed: int = 0, seed_sd: float = 0.0) -> dict:
    """One job's results row, drawn from its truth row; `full_epochs` is where the curve reaches the mean."""
    rng = np.random.default_rng([seed, zlib.crc32(repr(job.key).encode())])
    shared = np.random.default_rng([seed, job.seed, 1]).normal() * seed_sd
    row = dict(zip(("backbone", "strategy", "lr", "epochs", "seed"), job.key), epoch_seconds=truth.epoch_seconds)
    if rng.random() < truth.get("diverge", 0.0):
        return row | dict(status="diverged", select_acc=math.nan, **{SCORED: math.nan},
                          job_seconds=truth.overhead_seconds + truth.epoch_seconds)  # NaN loss in the first epoch
    shape = (1 - math.exp(-truth.rate * job.epochs)) / (1 - math.exp(-truth.rate * full_epochs))
    noise = rng.normal() * truth.noise + shared
    scored = truth.get("scored_mean", truth["mean"])
    return row | dict(status="finished", select_acc=float(np.clip(truth["mean"] * shape + noise, 0, 1)),
                      **{SCORED: float(np.clip(scored * shape + noise, 0, 1))},
                      job_seconds=truth.overhead_seconds + job.epochs * truth.epoch_seconds)


def true_grid(truth: pd.DataFrame, study: StudyConfig) -> float:
    """The full grid's real job-seconds (as `budget.full_grid` estimates it: full length, `min_seeds`)."""
    t = _indexed(truth, study).reset_index()
    t = t[t["backbone"].isin(study.backbones) & t["strategy"].isin(study.strategies)]
    return float(((t["overhead_seconds"] + study.epochs * t["epoch_seconds"]) * study.min_seeds).sum())


def truth_best(truth: pd.DataFrame, study: StudyConfig) -> Config:
    """The config with the highest true mean among the study's candidates that never diverge (one that
    may is lost by the policy's rule whenever it does)."""
    t = _indexed(truth, study).reset_index()
    t = t[t["backbone"].isin(study.backbones) & t["strategy"].isin(study.strategies)]
    if "diverge" in t:
        t = t[t["diverge"] == 0]
    best = t.loc[t["mean"].idxmax()]
    return Config(best.backbone, best.strategy, best.lr, study.epochs)


def random_truth(rng: np.random.Generator, study: StudyConfig) -> pd.DataFrame:
    """A plausible truth for `study`: backbones of different quality and speed, strategies that help or
    hurt, an LR optimum per (backbone, strategy), sometimes a top LR that diverges."""
    rows = []
    for b in study.backbones:
        quality, per_epoch, overhead = rng.uniform(0.55, 0.85), rng.uniform(5, 60), rng.uniform(10, 60)
        for s in study.grid:
            # from scratch a net learns slowly and ends lower; a pretrained one is most of the way there in a third
            # of its epochs (rate 0.3 per epoch: 63% of the curve's rise by epoch 3)
            fit = quality + rng.normal(0, 0.05) - (0.2 if s == "scratch" else 0.0)
            rate = rng.uniform(0.05, 0.2) if s == "scratch" else rng.uniform(0.3, 1.5)
            factor = 0.05 if s == PROBE else rng.uniform(0.5, 1.5)  # a probe trains a head on cached features
            peak = rng.integers(len(study.grid[s]))
            risky = rng.random() < 0.3
            for i, lr in enumerate(study.grid[s]):
                mean = float(np.clip(fit - 0.04 * abs(i - peak), 0.05, 0.99))  # 4 points per LR step off the peak
                diverge = 0.5 if risky and i == len(study.grid[s]) - 1 else 0.0
                rows.append(dict(backbone=b, strategy=s, lr=lr, mean=mean, noise=rng.uniform(0.003, 0.02), rate=rate,
                                 epoch_seconds=per_epoch * factor, overhead_seconds=overhead, diverge=diverge))
    return pd.DataFrame(rows)


def _indexed(truth: pd.DataFrame, study: StudyConfig) -> pd.DataFrame:
    missing = [c for c in TRUTH_COLUMNS if c not in truth.columns]
    if missing:
        raise ValueError(f"truth table lacks {missing}")
    return truth.assign(lr=[lr_key(x) for x in truth["lr"]]).set_index(["backbone", "strategy", "lr"])
