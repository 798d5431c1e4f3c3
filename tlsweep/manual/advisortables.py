"""docs/advisor.md's measured tables, rendered from the committed result files: the tabular benchmark's grids
(benchmarks/advisor/grids.csv) and the replays on them (docs/results/advisor/replays.csv, rankers.csv), both
written by the scripts in benchmarks/advisor/. pandas only: no torch, no MLflow.
"""
from __future__ import annotations

import math
from pathlib import Path

from .benchtables import markdown_table

REPO = Path(__file__).resolve().parents[2]
GRIDS = REPO / "benchmarks" / "advisor" / "grids.csv"
REPLAYS = REPO / "docs" / "results" / "advisor" / "replays.csv"
RANKERS = REPLAYS.parent / "rankers.csv"
CLAIM_SHARE = 0.3
ABLATION = "advisor_one_draw"  # the advisor without its small-data remedy: compared in its own table
RANKER_NAMES = {"score_logme": "LogME", "score_knn_acc": "k-NN accuracy", "score_ncc_acc": "nearest-class-mean",
                "imagenet_top1": "static: ImageNet top-1", "total_params": "static: parameters"}


def _read(path: Path):
    import pandas as pd

    return pd.read_csv(path) if path.exists() else None


def _ci(mean: float, low: float, high: float, signed: bool = False) -> str:
    f = "{:+.2f}" if signed else "{:.2f}"
    return f.format(mean) + (f" [{f.format(low)}, {f.format(high)}]" if math.isfinite(low) else "")


def grids_table() -> str:
    """Per task: its data, the runs measured, their job-hours, and the grid's best candidate by truth."""
    from tlsweep.advisor.replay import Grid

    grids = _read(GRIDS)
    if grids is None:
        return "\nNot measured yet.\n"
    if "draw" not in grids:
        grids["draw"] = "fixed"
    rows = []
    for task, part in grids.groupby("task", sort=False):
        fixed = part[part["draw"] == "fixed"]
        grid = Grid(fixed.drop(columns=["task", "draw"]))
        best = grid.truth.idxmax()
        n_sel = fixed["select_images"].dropna()
        rows.append([str(task), f"{int(n_sel.min())}" if len(n_sel) else "-", str(len(fixed)),
                     str(int((part["draw"] == "per_seed").sum())), f"{part['job_seconds'].sum() / 3600:.2f}",
                     f"{best[0]}/{best[1]} lr={best[2]:g}", f"{100 * grid.truth.max():.1f}",
                     f"{100 * (grid.truth.max() - grid.truth.min()):.1f}"])
    return markdown_table(["task", "selection images", "runs (fixed draw)", "runs (own draw per seed)", "job-hours",
                           "grid's best (mean scored over seeds)", "its accuracy %", "best minus worst (points)"], rows)


def regret_table() -> str:
    """Mean regret per method at each budget share over tasks, with its 95% t-interval, and the worst task."""
    from tlsweep.advisor.replay import summary

    replays = _read(REPLAYS)
    if replays is None:
        return "\nNot measured yet.\n"
    s = summary(replays)
    shares = sorted(s["budget_share"].unique())
    rows = []
    for method, part in s.groupby("method", sort=False):
        by = part.set_index("budget_share")
        rows.append([method] + [_ci(by.loc[x, "regret"], by.loc[x, "low"], by.loc[x, "high"]) if x in by.index
                                else "-" for x in shares] + [f"{part['worst'].max():.2f}"])
    header = ["method"] + [f"{100 * x:.0f}% of the grid" for x in shares] + ["worst task, any share"]
    return markdown_table(header, rows) + (
        f"\nRegret in points of scored accuracy: mean over {replays['task'].nunique()} tasks (each task's mean over "
        f"{replays['replay'].nunique()} replays) with its 95% t-interval over tasks.\n")


def claim_table() -> str:
    """The advisor's regret minus each baseline's at CLAIM_SHARE, paired by task, with Holm's adjustment."""
    from tlsweep.advisor.replay import claim

    replays = _read(REPLAYS)
    if replays is None:
        return "\nNot measured yet.\n"
    c = claim(replays[replays["method"] != ABLATION], CLAIM_SHARE)  # the baselines: the ablation is not one
    rows = [[r.baseline, str(r.tasks), _ci(r.difference, r.low, r.high, signed=True), f"{r.p:.3g}",
             f"{r.p_holm:.3g}", "yes" if r.high < 0 else ("worse" if r.low > 0 else "no")] for r in c.itertuples()]
    return markdown_table(["baseline", "tasks", f"advisor minus baseline at {100 * CLAIM_SHARE:.0f}% (points, 95% CI)",
                           "p (paired t)", "p (Holm)", "advisor better: the interval excludes 0"], rows)


def rankers_table() -> str:
    """Each backbone ranker's Kendall tau with the probe's and the best strategy's accuracy: mean over tasks, and
    on how many tasks it ranks the backbones exactly."""
    ranks = _read(RANKERS)
    if ranks is None or ranks.empty:
        return "\nNot measured yet.\n"
    rows = []
    for (ranker, target), part in ranks.groupby(["ranker", "target"], sort=False):
        tau = part["kendall_tau"].dropna()
        rows.append([RANKER_NAMES.get(ranker, ranker), {"probe": "probe", "best": "best strategy"}[target],
                     f"{tau.mean():+.2f}" if len(tau) else "-", f"{part['weighted_tau'].mean():+.2f}",
                     f"{int((tau > 0.999).sum())} of {len(part)}"])
    return markdown_table(["ranker", "accuracy ranked", "Kendall tau (mean over tasks)", "weighted tau (mean)",
                           "tasks ranked exactly"], rows) + (
        f"\nOver {int(ranks['backbones'].max())} backbones per task a tau is -1, -1/3, +1/3 or +1 (other values where "
        f"two backbones tie in accuracy).\n")


def small_data_table() -> str:
    """Per task whose selection split the advisor resplits (coarser than its margin): its regret with a draw per
    seed and with one draw, at CLAIM_SHARE, mean and worst over replays, and the share of replays within 2 points."""
    replays = _read(REPLAYS)
    if replays is None:
        return "\nNot measured yet.\n"
    at = replays[(replays["budget_share"] - CLAIM_SHARE).abs() < 1e-9]
    tasks = sorted(at.loc[(at["method"] == "advisor") & (at["draws"] != "one"), "task"].unique())
    rows = []
    for task in tasks:
        cells = [task, at.loc[(at["task"] == task) & (at["method"] == "advisor"), "draws"].iloc[0]]
        for method in ("advisor", ABLATION):
            r = at.loc[(at["task"] == task) & (at["method"] == method), "regret"]
            cells += [f"{r.mean():.2f}", f"{r.max():.2f}", f"{(r <= 2).mean():.0%}"]
        rows.append(cells)
    return markdown_table(["task", "advisor's draws", "regret, a draw per seed (mean)", "worst", "replays <= 2 pts",
                           "regret, one draw (mean)", "worst", "replays <= 2 pts"], rows) if rows else \
        "\nNo task's selection split is coarser than the margin.\n"
