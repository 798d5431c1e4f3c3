"""The advisor and its baselines replayed on measured grids: regret against budget, per task and replay; and the
backbone rankers (the transferability scores, and a static ranking by the weights' ImageNet top-1 and size).

    python benchmarks/advisor/replay.py --grids benchmarks/advisor/grids.csv --out docs/results/advisor/replays.csv

`--grids` holds one row per measured run (the results table's columns, tlsweep/advisor/table.py, plus `task` and
`draw`): every candidate of a task at every length a method asks for (1 epoch, the short rung, the full length) and
seed, on the fixed draw of the selection split (`draw` = fixed); and, for a task whose split is coarser than the
margin, the full-length runs of seeds 1 and 2 on their own draws (`draw` = per_seed), which is what a resplit study
(advise.resplit) runs past its first seed.

Methods: `advisor` as it ships (each seed past the first on its own draw where the split is coarse; where such a
task has no per_seed rows it replays on the fixed draw, and `draws` says so), `advisor_one_draw` (every seed on the
fixed draw: the advisor without the small-data remedy), random search, one-epoch top-k, successive halving, the
default habit and the full grid. Each runs at each share of its task's full grid (`--shares`), `--replays` times
with its own run-order seed; the default habit and the full grid do not depend on a budget and run once per
replay. Every pick is scored on the fixed draw's grid: a candidate's truth is its mean scored accuracy there.

Outputs: `--out`, one row per method, task, budget share and replay (`method`, `task`, `budget_share`, `replay`,
`regret` in points, `spent` job-seconds, `jobs`, `pick`, `draws`); beside it `rankers.csv` (per task, ranker and
target: Kendall's tau and the weighted tau over the backbones) and `regret.png` (regret against budget, the mean
over tasks with its 95% interval). It prints the mean regret per method and share, and the advisor's regret minus
each baseline's, paired by task, at `--claim-share`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from tlsweep.advisor import baselines, report, space
from tlsweep.advisor.replay import Grid, advise, claim, draws, regret, study_for, summary

SHARES = (0.1, 0.2, 0.3, 0.5, 1.0)
# a strategy's least valid length: its probe phase plus one epoch (lpft's 2 probe epochs), as the advisor's short
# rung is floored (tlsweep.advisor.space.with_short_floor) and the one-epoch rule and halving start it there
LEAST = {"lpft": 3}
MARGIN = 0.01  # advise.margin's default: where one image of the selection split moves select_acc by more, it resplits
RANKERS = ("score_logme", "score_knn_acc", "score_ncc_acc", "imagenet_top1", "total_params")


def replay_task(task: str, grid: Grid, resplit: Grid | None = None, shares=SHARES, replays: int = 20,
                short_epochs: int | None = None, habit_lr: float | None = None, eta: int | None = None,
                halving_eta: int = 3) -> list[dict]:
    rows = []
    coarse = space.resplits(None, report.resolution(grid.rows, MARGIN))
    shipped = resplit if coarse and resplit is not None else grid
    draws = "per seed" if shipped is resplit else ("one: no per_seed rows" if coarse else "one")

    def add(method, share, rep, out, how="one"):
        rows.append(dict(method=method, task=task, budget_share=share, replay=rep, regret=regret(grid, out.pick),
                         spent=out.spent, jobs=out.jobs, pick="/".join(map(str, out.pick)) if out.pick else "",
                         draws=how))

    for rep in range(replays):
        for share in shares:
            budget = share * grid.cost
            study = space.with_short_floor(study_for(grid, budget, short_epochs=short_epochs,
                                                     **({} if eta is None else {"eta": eta})),
                                           {s: e - 1 for s, e in LEAST.items()})
            add("advisor", share, rep, advise(shipped, study, order=rep), draws)
            add("advisor_one_draw", share, rep, advise(grid, study, order=rep))
            add("random_search", share, rep, baselines.random_search(grid, budget, np.random.default_rng([rep, 1])))
            add("one_epoch_top_k", share, rep, baselines.one_epoch_top_k(grid, budget, np.random.default_rng([rep, 1]),
                                                                         least=LEAST))
            add("successive_halving", share, rep, baselines.successive_halving(
                grid, budget, np.random.default_rng([rep, 1]), eta=halving_eta, least=LEAST))
        habit = baselines.default_habit(grid, np.random.default_rng([rep, 2]), lr=habit_lr)
        full = baselines.full_grid(grid)
        for share in shares:  # the same pick at every share: drawn as a flat line
            add("default_habit", share, rep, habit)
            add("full_grid", share, rep, full)
    return rows


def rankers(task: str, grid: Grid) -> list[dict]:
    """Per ranker (a score of the frozen features, or a static one) and target (the backbone's best probe, and
    its best candidate of any strategy, by truth): Kendall's tau and the weighted tau over the backbones."""
    from scipy import stats

    from tlsweep.features.measures import weighted_tau

    truth = grid.truth.reset_index()
    per = truth[truth["strategy"] == "probe"].groupby("backbone")["scored_acc"].max().rename("probe").to_frame()
    per["best"] = truth.groupby("backbone")["scored_acc"].max()
    probes = grid.rows[(grid.rows["strategy"] == "probe") & (grid.rows["status"] == "finished")]
    for r in RANKERS:
        if r in probes:
            per[r] = probes.groupby("backbone")[r].mean()
    out = []
    for r in [r for r in RANKERS if r in per and per[r].notna().all()]:
        for target in ("probe", "best"):
            x, y = per[r].to_numpy(float), per[target].to_numpy(float)
            out.append(dict(task=task, ranker=r, target=target, backbones=len(per),
                            kendall_tau=float(stats.kendalltau(x, y)[0]), weighted_tau=weighted_tau(x, y)))
    return out


def figure(results: pd.DataFrame, path: Path) -> Path:
    """Regret against budget share: per method the mean over tasks (each task's mean over replays), with the 95%
    t-interval over tasks as a band."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    s = summary(results)
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for method, part in s.groupby("method", sort=False):
        part = part.sort_values("budget_share")
        x = 100 * part["budget_share"]
        line = ax.plot(x, part["regret"], marker="o", lw=2.5 if method == "advisor" else 1.2, label=method)[0]
        ax.fill_between(x, part["low"], part["high"], color=line.get_color(), alpha=0.12)
    ax.set_xlabel("budget (% of the full grid's job-seconds)")
    ax.set_ylabel("regret (points of scored accuracy)")
    ax.set_title(f"Regret against budget, mean over {results['task'].nunique()} tasks (95% interval over tasks)")
    ax.set_xscale("log")
    ax.set_xticks([10, 20, 30, 50, 100], ["10", "20", "30", "50", "100"])
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--replays", type=int, default=20)
    parser.add_argument("--shares", type=float, nargs="+", default=list(SHARES))
    parser.add_argument("--short-epochs", type=int, default=None, help="the advisor's short rung (advise.short_epochs)")
    parser.add_argument("--eta", type=int, default=None, help="the advisor's halving rate (advise.eta)")
    parser.add_argument("--halving-eta", type=int, default=3, help="the successive-halving baseline's rate")
    parser.add_argument("--claim-share", type=float, default=0.3)
    args = parser.parse_args()
    grids = pd.read_csv(args.grids)
    rows, ranks = [], []
    for task, part in grids.groupby("task", sort=False):
        grid, resplit = draws(part)
        rows += replay_task(str(task), grid, resplit, args.shares, args.replays, args.short_epochs, eta=args.eta,
                            halving_eta=args.halving_eta)
        ranks += rankers(str(task), grid)
        print(f"{task}: replayed", flush=True)
    out = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(args.out, index=False, float_format="%.6g")
    pd.DataFrame(ranks).to_csv(args.out.parent / "rankers.csv", index=False, float_format="%.6g")
    figure(out, args.out.parent / "regret.png")
    with pd.option_context("display.width", 200):
        print(summary(out).round(3).to_string(index=False))
        print(claim(out[out["method"] != "advisor_one_draw"], args.claim_share).round(4).to_string(index=False))


if __name__ == "__main__":
    main()
