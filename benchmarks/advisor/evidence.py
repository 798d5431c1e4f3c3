"""The advisor against an exhaustive grid: regret and compute share per task.

    python benchmarks/advisor/evidence.py --grid sqlite:///grid/mlflow.db --advise runs/{task}/mlflow.db \
        --tasks hymenoptera-all digits-10 ... --out docs/advisor/evidence.csv

The grid's store holds one sweep per task, named `grid-<task>` (benchmarks/advisor/grid.sh); the advisor ran
each task in a fresh store (`--advise`, `{task}` filled in; benchmarks/advisor/advise.sh), so that none of its
runs is the grid's. Regret is the grid's best mean scored accuracy minus the grid's own mean scored accuracy of
the configuration the advisor recommends; `select_regret` is the same for the config a full grid would pick on
the selection split (what choosing on the selection split costs, with every run done).
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd

from tlsweep.config.keys import Tag

RECOMMENDED = re.compile(r"(?P<backbone>\S+)/(?P<strategy>\S+) lr=(?P<lr>\S+) (?P<epochs>\d+)ep")


def runs(uri: str, where: str) -> pd.DataFrame:
    """The finished job runs matching `where`: backbone, strategy, lr, seed, scored, select, job seconds."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tlsweep")
    rows, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], f"tags.`tlsweep.role` = 'job' and {where}",
                                  max_results=1000, page_token=token)
        for r in page:
            p, m = r.data.params, r.data.metrics
            rows.append(dict(backbone=p.get("model.name"), strategy=p.get("strategy.name"),
                             lr=float(f"{float(p['optim.lr']):.10g}"), epochs=int(p["epochs"]), seed=int(p["seed"]),
                             status=r.info.status, scored=m.get("final_val_acc"), select=m.get("select_acc"),
                             job_seconds=((r.info.end_time or r.info.start_time) - r.info.start_time) / 1000))
        token = page.token
        if not token:
            return pd.DataFrame(rows)


def recommendation(uri: str) -> tuple[dict | None, str]:
    """The study's recommended config (parsed from its parent's tag) and why it stopped."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tlsweep")
    parents = client.search_runs([exp.experiment_id], "tags.`tlsweep.role` = 'sweep'", order_by=["start_time DESC"])
    tags = parents[0].data.tags if parents else {}
    found = RECOMMENDED.fullmatch(tags.get(Tag.ADVISE_RECOMMENDATION, ""))
    rec = found.groupdict() if found else None
    if rec:
        rec["lr"], rec["epochs"] = float(f"{float(rec['lr']):.10g}"), int(rec["epochs"])
    return rec, tags.get(Tag.ADVISE_STOPPED, "")


def task_row(task: str, grid: pd.DataFrame, advised: pd.DataFrame, rec: dict | None, stopped: str) -> dict:
    done = grid[grid["status"] == "FINISHED"]
    means = done.groupby(["backbone", "strategy", "lr", "epochs"])[["scored", "select"]].mean()
    best = means["scored"].idxmax()
    by_select = means["select"].idxmax()
    key = (rec["backbone"], rec["strategy"], rec["lr"], rec["epochs"]) if rec else None
    rec_scored = means["scored"].get(key, float("nan")) if key else float("nan")
    fmt = lambda k: f"{k[1]} lr={k[2]:g}"  # noqa: E731 (one backbone, one length in the grid)
    grid_s, adv_s = grid["job_seconds"].sum(), advised["job_seconds"].sum()
    return {"task": task, "grid_runs": len(grid), "grid_best": fmt(best), "grid_best_scored": means["scored"][best],
            "recommended": fmt(key) if key else "none", "recommended_scored": rec_scored,
            "regret_pts": 100 * (means["scored"][best] - rec_scored),
            "select_regret_pts": 100 * (means["scored"][best] - means["scored"][by_select]),
            "advisor_runs": len(advised), "grid_job_s": grid_s, "advisor_job_s": adv_s,
            "compute_share": adv_s / grid_s, "stopped": stopped.split(":")[0]}


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--grid", required=True, help="the grid's tracking URI")
    ap.add_argument("--advise", required=True, help="each task's advisor store, {task} filled in")
    ap.add_argument("--tasks", nargs="+", required=True)
    ap.add_argument("--out", help="write the table here as CSV, and as markdown beside it (.md)")
    args = ap.parse_args(argv)
    rows = []
    for task in args.tasks:
        uri = args.advise.format(task=task)
        rec, stopped = recommendation(uri)
        rows.append(task_row(task, runs(args.grid, f"tags.`tlsweep.sweep_name` = 'grid-{task}'"),
                             runs(uri, "attributes.status != 'RUNNING'"), rec, stopped))
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.round(4).to_string(index=False))
    print(f"mean regret {table['regret_pts'].mean():.2f} pts, max {table['regret_pts'].max():.2f}; "
          f"compute share mean {table['compute_share'].mean():.1%}, max {table['compute_share'].max():.1%}")
    if args.out:
        table.to_csv(args.out, index=False, float_format="%.6g")
        Path(args.out).with_suffix(".md").write_text(markdown(table))
    return table


def markdown(table: pd.DataFrame) -> str:
    """The page's table: per task, the grid's best and the advisor's pick (scored accuracy, mean over the grid's
    3 seeds), the regret in points, and the compute each spent."""
    lines = ["| task | grid's best | advisor's pick | regret (pts) | choosing on selection, full grid (pts) | "
             "grid job-min | advisor job-min | share | advisor stopped |", "|" + "---|" * 9]
    for r in table.itertuples():
        lines.append(f"| {r.task} | {r.grid_best} ({100 * r.grid_best_scored:.1f}%) | {r.recommended} "
                     f"({100 * r.recommended_scored:.1f}%) | {r.regret_pts:.2f} | {r.select_regret_pts:.2f} | "
                     f"{r.grid_job_s / 60:.1f} | {r.advisor_job_s / 60:.1f} | {r.compute_share:.0%} | {r.stopped} |")
    mean = table[["regret_pts", "select_regret_pts", "grid_job_s", "advisor_job_s"]].mean()
    lines.append(f"| **mean** | | | **{mean.regret_pts:.2f}** | {mean.select_regret_pts:.2f} | "
                 f"{mean.grid_job_s / 60:.1f} | {mean.advisor_job_s / 60:.1f} | "
                 f"{table.advisor_job_s.sum() / table.grid_job_s.sum():.0%} | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
