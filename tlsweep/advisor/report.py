"""What a study shows at its end: the recommendation block, the decision trace as CSV and markdown, and the
race figure (each candidate's best selection accuracy against the study's cumulative compute).

The scored split (`scored_acc`) is read here and only here: every decision was taken without it.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from tlsweep.advisor.study import Config, Step, StudyConfig
from tlsweep.advisor.table import SCORED, SELECT_IMAGES, lr_key
from tlsweep.report import stats


def rows_of(results: pd.DataFrame, c: Config) -> pd.DataFrame:
    """The finished runs of one config."""
    r = results
    lr = np.array([lr_key(x) for x in r["lr"]]) if len(r) else np.array([])
    return r[(r["backbone"] == c.backbone) & (r["strategy"] == c.strategy) & (lr == c.lr)
             & (r["epochs"] == c.epochs) & (r["status"] == "finished")]


def interval(values: pd.Series) -> str:
    """`0.8512, 95% CI [0.8301, 0.8723] over 3 seeds` (no interval from one seed)."""
    x = pd.to_numeric(values, errors="coerce").dropna().to_numpy(float)
    if not len(x):
        return "n/a"
    _, _, low, high = stats.t_interval(x)
    ci = f", 95% CI [{low:.4f}, {high:.4f}]" if math.isfinite(low) else ""
    return f"{x.mean():.4f}{ci} over {len(x)} seed{'s' if len(x) != 1 else ''}"


def resolution(results: pd.DataFrame, margin: float) -> str:
    """A caution when the selection split is too small for the study's margin, else "".

    select_acc moves in steps of one image, 1/n of a split of n images. Where that step is coarser than
    `advise.margin`, two candidates whose true accuracies differ by less than one image are told apart (or
    tied) by which images the split happens to hold, and no seed count changes what the split can see."""
    if SELECT_IMAGES not in results.columns:
        return ""
    sizes = pd.to_numeric(results[SELECT_IMAGES], errors="coerce").dropna()
    if not len(sizes) or 1 / sizes.min() <= margin:
        return ""
    n = int(sizes.min())
    return (f"the selection split has {n} images: one image moves a selection accuracy by {1 / n:.4f}, "
            f"coarser than advise.margin={margin:g}; candidates closer than one image are ranked by which images "
            f"the split holds. A larger split (data.select_fraction, or more data) resolves finer")


def recommendation(step: Step, results: pd.DataFrame, study: StudyConfig, select_from: str = "") -> str:
    """The block printed and logged at the study's end."""
    v = step.verdict
    lines = ["== tlsweep advise: recommendation =="]
    if v is None or v.recommendation is None:
        lines.append(f"  none: {v.stopped if v else 'no verdict'}: {v.why if v else ''}")
    else:
        c, mine = v.recommendation, rows_of(results, v.recommendation)
        lines += [f"  backbone   {c.backbone}", f"  strategy   {c.strategy}", f"  LR         {c.lr:g}",
                  f"  epochs     {c.epochs}",
                  f"  selection  {interval(mine['select_acc'])}  (the only accuracy decided on)",
                  f"  scored     {interval(mine[SCORED])}  (read once, for this report)"]
        if v.runner_up is not None:
            gap = (f"{v.gap:+.4f}, 95% CI [{v.ci[0]:+.4f}, {v.ci[1]:+.4f}] over {v.n_pairs} paired seeds"
                   if v.n_pairs >= 2 else f"{v.gap:+.4f} over {v.n_pairs} paired seed(s)")
            lines += [f"  runner-up  {v.runner_up}: selection {v.runner_up_mean:.4f}",
                      f"  gap        recommendation minus runner-up {gap}"]
    if v is not None:
        lines.append(f"  stopped    {v.stopped}: {v.why}")
    lines.append(f"  compute    {step.progress}; budget {study.budget:,.0f} job-seconds")
    if select_from:
        lines.append(f"  selection split: {select_from}")
    caution = resolution(results, study.margin)
    if caution:
        lines.append(f"  caution    {caution}")
    return "\n".join(lines)


def markdown(trace: pd.DataFrame) -> str:
    """The trace as a markdown table (no tabulate needed)."""
    cells = lambda row: "| " + " | ".join(str(x).replace("|", "\\|") for x in row) + " |"  # noqa: E731
    return "\n".join([cells(trace.columns), cells(["---"] * len(trace.columns)),
                      *(cells(r) for r in trace.itertuples(index=False, name=None))]) + "\n"


def race(results: pd.DataFrame, step: Step, path: Path) -> Path:
    """Each (backbone, strategy): its best selection accuracy so far against the study's job-seconds so far,
    in the order the runs ended; a line ends at the candidate's last run, where it was dropped (x) or won (*)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    runs = results.sort_values("ended", kind="stable")
    spent = runs["job_seconds"].fillna(0).cumsum() / 60
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    best = step.verdict.recommendation if step.verdict else None
    for (b, s), part in runs.groupby(["backbone", "strategy"], sort=False):
        acc = part["select_acc"].where(part["status"] == "finished").cummax()
        x, y = spent[part.index], acc
        if not y.notna().any():
            continue
        won = best is not None and (b, s) == (best.backbone, best.strategy)
        line = ax.plot(x, y, drawstyle="steps-post", lw=2.5 if won else 1.2, label=f"{b}/{s}")[0]
        ax.plot(x.iloc[-1], y.iloc[-1], "*" if won else "x", ms=12 if won else 7, color=line.get_color())
    ax.set_xlabel("study's compute so far (job-minutes)")
    ax.set_ylabel("best selection accuracy so far")
    ax.set_title("The race: each candidate until it was dropped (x) or recommended (*)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return path
