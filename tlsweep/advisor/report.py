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
    tied) by which images the split happens to hold. On such a split the study draws a split per seed
    (advise.resplit), so that its finalists' paired seeds see different images."""
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


def finalists(results: pd.DataFrame, step: Step, study: StudyConfig) -> pd.DataFrame:
    """What the study decided among: every config it ran at full length on two seeds or more (the finalists of
    its seeds stage), best selection mean first. Per finalist: its seeds, the selection and scored accuracies'
    means and 95% t-intervals over them, and its paired gap to the recommendation on the seeds both ran
    (positive: the finalist selects better)."""
    full = results[(results["epochs"] == study.epochs) & (results["status"] == "finished")]
    rec = step.verdict.recommendation if step.verdict else None
    ref = rows_of(results, rec).set_index("seed")["select_acc"] if rec is not None else pd.Series(dtype=float)
    out = []
    for (b, s, lr), part in full.groupby(["backbone", "strategy", "lr"], sort=False):
        if part["seed"].nunique() < 2:
            continue
        sel, sco = (pd.to_numeric(part[c], errors="coerce").to_numpy(float) for c in ("select_acc", SCORED))
        pairs = part.set_index("seed")["select_acc"].sub(ref).dropna()
        _, _, s_low, s_high = stats.t_interval(sel)
        _, _, c_low, c_high = stats.t_interval(sco[np.isfinite(sco)])
        _, _, g_low, g_high = stats.t_interval(pairs.to_numpy(float)) if len(pairs) else (0, 0, math.nan, math.nan)
        mine = rec is not None and (b, s, lr_key(lr)) == (rec.backbone, rec.strategy, rec.lr)
        out.append({"candidate": f"{b}/{s} lr={lr:g}" + (" (recommended)" if mine else ""),
                    "seeds": ",".join(str(int(x)) for x in sorted(part["seed"])),
                    "select_acc": sel.mean(), "select_low": s_low, "select_high": s_high,
                    "scored_acc": np.nanmean(sco) if np.isfinite(sco).any() else math.nan,
                    "scored_low": c_low, "scored_high": c_high,
                    "gap_to_recommended": math.nan if mine or not len(pairs) else pairs.mean(),
                    "gap_low": math.nan if mine else g_low, "gap_high": math.nan if mine else g_high})
    cols = ["candidate", "seeds", "select_acc", "select_low", "select_high", "scored_acc", "scored_low",
            "scored_high", "gap_to_recommended", "gap_low", "gap_high"]
    return pd.DataFrame(out, columns=cols).sort_values("select_acc", ascending=False, ignore_index=True)


def finalists_markdown(table: pd.DataFrame) -> str:
    """The finalists as the study's end prints them: each accuracy with its 95% interval over seeds."""
    ci = lambda m, lo, hi: "n/a" if not math.isfinite(m) else (  # noqa: E731
        f"{m:.4f} [{lo:.4f}, {hi:.4f}]" if math.isfinite(lo) else f"{m:.4f}")
    gap = lambda m, lo, hi: "" if not math.isfinite(m) else (  # noqa: E731
        f"{m:+.4f} [{lo:+.4f}, {hi:+.4f}]" if math.isfinite(lo) else f"{m:+.4f}")
    rows = [(r.candidate, r.seeds, ci(r.select_acc, r.select_low, r.select_high),
             ci(r.scored_acc, r.scored_low, r.scored_high), gap(r.gap_to_recommended, r.gap_low, r.gap_high))
            for r in table.itertuples()]
    return markdown(pd.DataFrame(rows, columns=["finalist", "seeds", "selection (95% CI)", "scored (95% CI)",
                                                "selection gap to the recommendation (paired)"]))


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
