"""The advisor and its baselines replayed on measured grids: regret against budget, per task and replay.

    python benchmarks/advisor/replay.py --grids benchmarks/advisor/grids.csv --out docs/results/advisor/replays.csv

`--grids` holds one row per measured run (the results table's columns, tlsweep/advisor/table.py, plus `task`):
every candidate of a task at every length a method asks for (1 epoch, the short rung, the full length) and seed.
Each method runs at each share of its task's full grid (`--shares`), `--replays` times with its own run-order seed;
the default habit and the full grid do not depend on a budget and run once per replay. The output has one row per
method, task, budget share and replay: `method`, `task`, `budget_share`, `replay`, `regret` (points), `spent`
(job-seconds), `jobs`, `pick`. It prints the mean regret per method and share over tasks, and the advisor's
regret minus each baseline's, paired by task, at `--claim-share`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from tlsweep.advisor import baselines
from tlsweep.advisor.replay import Grid, advise, claim, regret, study_for, summary

SHARES = (0.1, 0.2, 0.3, 0.5, 1.0)


def replay_task(task: str, grid: Grid, shares=SHARES, replays: int = 20, short_epochs: int | None = None,
                habit_lr: float | None = None) -> list[dict]:
    rows = []

    def add(method, share, rep, out):
        rows.append(dict(method=method, task=task, budget_share=share, replay=rep, regret=regret(grid, out.pick),
                         spent=out.spent, jobs=out.jobs, pick="/".join(map(str, out.pick)) if out.pick else ""))

    for rep in range(replays):
        for share in shares:
            budget = share * grid.cost
            add("advisor", share, rep, advise(grid, study_for(grid, budget, short_epochs=short_epochs), order=rep))
            for name in ("random_search", "one_epoch_top_k", "successive_halving"):
                add(name, share, rep, getattr(baselines, name)(grid, budget, np.random.default_rng([rep, 1])))
        habit = baselines.default_habit(grid, np.random.default_rng([rep, 2]), lr=habit_lr)
        full = baselines.full_grid(grid)
        for share in shares:  # the same pick at every share: drawn as a flat line
            add("default_habit", share, rep, habit)
            add("full_grid", share, rep, full)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--replays", type=int, default=20)
    parser.add_argument("--shares", type=float, nargs="+", default=list(SHARES))
    parser.add_argument("--short-epochs", type=int, default=None, help="the advisor's short rung (advise.short_epochs)")
    parser.add_argument("--claim-share", type=float, default=0.3)
    args = parser.parse_args()
    grids = pd.read_csv(args.grids)
    rows = []
    for task, part in grids.groupby("task", sort=False):
        rows += replay_task(str(task), Grid(part.drop(columns="task")), args.shares, args.replays, args.short_epochs)
        print(f"{task}: replayed", flush=True)
    out = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(args.out, index=False)
    print(summary(out).to_string(index=False))
    print(claim(out, args.claim_share).to_string(index=False))


if __name__ == "__main__":
    main()
