"""A grid store -> the tabular benchmark's result file: one row per measured run, with `task` and `backbone`.

    python benchmarks/advisor/grids.py --store sqlite:///grid/mlflow.db --out benchmarks/advisor/grids.csv

Every sweep named `grid-<task>` in the store (benchmarks/advisor/grid.sh) is read into the advisor's results table
(tlsweep/advisor/table.py: backbone, strategy, lr, epochs, seed, status, select_acc, scored_acc, job_seconds,
epoch_seconds, the run's transferability scores, selection-split size, ImageNet top-1 and parameter count) with the
task beside it, and `draw`: fixed, or per_seed for a sweep `grid-<task>@resplit` (each seed on its own draw of the
selection split). A task and draw already in `--out` are replaced by the store's rows; others are kept, so grids
measured at different times (and in different stores) share one file. `--prefix advise-` reads a live study's sweeps
instead (benchmarks/advisor/advise.sh names them `advise-<task>`): the rows it ran, as a small grid to replay.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from tlsweep.advisor.runs import Space, results
from tlsweep.config.keys import STRATEGY_KEY, Tag


def task_rows(client, exp_id: str, sweep: str) -> pd.DataFrame:
    from tlsweep.tracking.read import search

    runs = search(client, exp_id, f"tags.`{Tag.ROLE}` = 'job' and tags.`{Tag.SWEEP_NAME}` = '{sweep}'")
    pairs = {(r.data.params.get("model.name"), r.data.params.get(STRATEGY_KEY)) for r in runs}
    table = results(runs, Space("model.name", {p: {} for p in pairs}))  # every run of the sweep is the grid's
    return table.drop(columns="ended")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="the grid's tracking URI")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--prefix", default="grid-", help="the sweeps read: those whose name starts with it")
    args = parser.parse_args()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(args.store)
    exp = client.get_experiment_by_name("tlsweep")
    sweeps = sorted({r.data.tags[Tag.SWEEP_NAME] for r in client.search_runs(
        [exp.experiment_id], f"tags.`{Tag.ROLE}` = 'sweep'", max_results=1000) if
        r.data.tags.get(Tag.SWEEP_NAME, "").startswith(args.prefix)})
    # grid-<task>@resplit: the seeds past the first on their own draws of the selection split (grid.sh GRID_DRAW)
    new = [task_rows(client, exp.experiment_id, s).assign(task=s[len(args.prefix):].split("@")[0],
                                                           draw="per_seed" if s.endswith("@resplit") else "fixed")
           for s in sweeps]
    new = pd.concat(new, ignore_index=True) if new else pd.DataFrame()
    old = pd.read_csv(args.out) if args.out.exists() else pd.DataFrame(columns=["task"])
    if "draw" not in old:
        old["draw"] = "fixed"
    mine = set(zip(new.get("task", []), new.get("draw", [])))
    kept = pd.concat([old[[t not in mine for t in zip(old["task"], old["draw"])]], new], ignore_index=True)
    front = ["task", "draw", "backbone", "strategy", "lr", "epochs", "seed"]
    kept = kept[front + [c for c in kept.columns if c not in front]]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    kept.to_csv(args.out, index=False, float_format="%.6g")
    for (task, draw), part in kept.groupby(["task", "draw"], sort=False):
        print(f"{task} ({draw} draw): {len(part)} runs, {part['job_seconds'].sum() / 60:.1f} job-minutes, "
              f"{(part['status'] != 'finished').sum()} not finished")


if __name__ == "__main__":
    main()
