"""The figure of the backbone table (`backbones`), in the style of `figures`: each score against accuracy, one
point per backbone with its 95% intervals, saved as PDF and PNG.

One panel per score (columns) and task (rows); in each, every backbone twice: its probe accuracy (a ring) and its
best strategy's (a filled square; where probe is the best, the ring circles it), in the backbone's colour, with the weighted Kendall tau of that score against each in
the panel's title when there are enough backbones. Vertical bars: the accuracy's 95% t-interval over seeds;
horizontal bars: the score's, where seeds differ (a random init).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from tlsweep.report import render
from tlsweep.report.backbones import MIN_BACKBONES, TARGETS, Backbones, name
from tlsweep.report.figures import PALETTE, RC
from tlsweep.report.columns import is_fraction, label, metric_label

NAMES = ("backbones",)
MARKER = {"probe": "o", "best": "s"}
PANEL = (2.2, 2.0)  # inches per panel: three scores side by side span a two-column page


def make_all(out_dir: Path, result: Backbones) -> list[Path]:
    """Draw the figure (none when no run logged a score: there is nothing to put on the x axis)."""
    for stale in (Path(out_dir) / f"{n}.{ext}" for n in NAMES for ext in ("pdf", "png")):
        stale.unlink(missing_ok=True)
    if not result.scores:
        return []
    with matplotlib.rc_context(RC):  # the files are written inside it too: savefig reads pdf.fonttype
        return render.save_all(render.files(scatter(result), out_dir, "backbones"))


def _err(mean: float, low: float, high: float, scale: float):
    if not (np.isfinite(low) and np.isfinite(high)) or high <= mean:
        return None
    return [[(mean - low) * scale], [(high - mean) * scale]]


def scatter(result: Backbones) -> Figure:
    tasks = list(dict.fromkeys(result.table["task"]))
    names = list(dict.fromkeys(name(r, result.keys) for _, r in result.table.iterrows()))
    colour = {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}
    rows, cols = len(tasks), len(result.scores)
    fig = Figure(figsize=(PANEL[0] * cols, PANEL[1] * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    y_scale = 100.0 if is_fraction(result.metric) else 1.0
    for i, task in enumerate(tasks):
        part = result.table[result.table["task"] == task]
        for j, col in enumerate(result.scores):
            ax = axes[i, j]
            x_scale = 100.0 if is_fraction(col) else 1.0
            for _, r in part.iterrows():
                for target in ("best", "probe"):  # probe's ring on top: where probe is the best, it circles the square
                    mean = r[f"{target}_mean"]
                    if not (np.isfinite(mean) and np.isfinite(r[col])):
                        continue
                    ax.errorbar([r[col] * x_scale], [mean * y_scale], color=colour[name(r, result.keys)],
                                yerr=_err(mean, r[f"{target}_ci95_low"], r[f"{target}_ci95_high"], y_scale),
                                xerr=_err(r[col], r[f"{col}_ci95_low"], r[f"{col}_ci95_high"], x_scale),
                                marker=MARKER[target], ms=6 if target == "probe" else 4, capsize=2, lw=0.8,
                                linestyle="none", mfc="none" if target == "probe" else colour[name(r, result.keys)])
            ax.margins(0.08)
            ax.set_xlabel(label(col) + (" (%)" if is_fraction(col) else ""))
            if j == 0:
                ax.set_ylabel((f"{task}: " if len(tasks) > 1 else "") + metric_label(result.metric))
            ax.set_title(_title(result, task, col), fontsize=6.5, pad=2)
    handles = [Line2D([], [], color=colour[n], marker="o", linestyle="none", ms=4) for n in names]
    handles += [Line2D([], [], color="0.35", marker=MARKER[t], mfc="none" if t == "probe" else "0.35",
                       linestyle="none", ms=6 if t == "probe" else 4) for t in TARGETS]
    fig.legend(handles, names + list(TARGETS.values()), loc="outside lower center", ncols=min(len(handles), 3),
               frameon=False)
    return fig


def _title(result: Backbones, task: str, col: str) -> str:
    taus = result.taus[(result.taus["task"] == task) & (result.taus["score"] == col)
                       & (result.taus["n_backbones"] >= MIN_BACKBONES)]
    parts = [f"{r.target} {r.weighted_tau:+.2f}" for r in taus.itertuples() if np.isfinite(r.weighted_tau)]
    return "weighted τ: " + ", ".join(parts) if parts else ""
