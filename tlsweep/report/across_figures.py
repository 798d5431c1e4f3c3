"""The figures of the cross-task analysis (`across`), in the style of `figures`: one column wide,
Okabe-Ito, each strategy in the colour it has in every other figure, saved as PDF and PNG.

- across_aggregates: each method's aggregate with its stratified-bootstrap 95% CI, one panel per convention
- across_improvement: P(A > B) with its 95% CI for each pair, the better method as A (rliable's figure)
- across_cd: the critical-difference diagram of the average ranks (Demšar 2006), when there are enough tasks
- across_profiles: the fraction of runs above each threshold, with a 95% band
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from tlsweep.config.keys import STRATEGIES, STRATEGY_KEY
from tlsweep.report import render, stats
from tlsweep.report.across import CONVENTIONS, Across
from tlsweep.report.figures import PALETTE, RC, SIZE
from tlsweep.report.columns import is_fraction, metric_label

NAMES = ("across_aggregates", "across_improvement", "across_cd", "across_profiles")
LINESTYLES = ["-", "--", ":", "-."]
ROW = 0.17  # inches per method or pair


def make_all(out_dir: Path, result: Across, metric: str) -> list[Path]:
    """Draw the cross-task figures; returns the files written. A figure the data no longer supports
    (the CD diagram with fewer than five tasks) is removed, not left from an earlier report."""
    for stale in (Path(out_dir) / f"{n}.{ext}" for n in NAMES for ext in ("pdf", "png")):
        stale.unlink(missing_ok=True)
    style = _Style(result)
    scale = 100.0 if is_fraction(metric) else 1.0
    with matplotlib.rc_context(RC):  # the files are written inside it too: savefig reads pdf.fonttype
        todo = render.files(aggregates(result, style, metric, scale), out_dir, "across_aggregates")
        todo += render.files(improvement(result, style), out_dir, "across_improvement")
        if not result.no_cd:
            todo += render.files(cd_diagram(result, style), out_dir, "across_cd")
        todo += render.files(profiles(result, style, metric, scale), out_dir, "across_profiles")
        return render.save_all(todo)


class _Style:
    """A method's colour is its strategy's, as in `figures`; methods that share a strategy (other
    grouping keys differ) are told apart by line style."""

    def __init__(self, result: Across):
        self.names = result.methods
        keys = result.method_keys
        values = [dict(zip(keys, v)) for v in result.ranks[keys].itertuples(index=False)]
        self.primary = [v.get(STRATEGY_KEY, v[keys[0]]) for v in values]
        self.strategy = STRATEGY_KEY in keys
        seen: dict[str, int] = {}
        self.style = []
        for p in self.primary:
            self.style.append(LINESTYLES[seen.get(p, 0) % len(LINESTYLES)])
            seen[p] = seen.get(p, 0) + 1

    def color(self, name: str) -> str:
        primary = self.primary[self.names.index(name)]
        if self.strategy and primary in STRATEGIES:
            return PALETTE[STRATEGIES.index(primary)]
        return PALETTE[list(dict.fromkeys(self.primary)).index(primary) % len(PALETTE)]

    def linestyle(self, name: str) -> str:
        return self.style[self.names.index(name)]


def _names(frame: pd.DataFrame, result: Across) -> list[str]:
    return [stats._candidate(result.method_keys, tuple(r)) for r in frame[result.method_keys].itertuples(index=False)]


def aggregates(result: Across, style: _Style, metric: str, scale: float) -> Figure:
    """Estimate and 95% CI per method (rows, report order), one panel per convention, a shared axis."""
    table = result.aggregates.assign(method=_names(result.aggregates, result))
    convs = list(dict.fromkeys(table["convention"]))
    k = len(result.methods)
    fig = Figure(figsize=(SIZE[0], 0.45 + len(convs) * (0.3 + ROW * k)), layout="constrained")
    axes = fig.subplots(len(convs), 1, sharex=True, squeeze=False).ravel()
    for ax, conv in zip(axes, convs):
        part = table[table["convention"] == conv].set_index("method")
        for i, n in enumerate(result.methods):
            r = part.loc[n]
            ax.errorbar([r["estimate"] * scale], [i], color=style.color(n), marker="o", ms=3, capsize=2, lw=1,
                        xerr=[[(r["estimate"] - r["ci95_low"]) * scale], [(r["ci95_high"] - r["estimate"]) * scale]])
        ax.set_yticks(range(k), result.methods)
        ax.set_ylim(k - 0.5, -0.5)
        ax.set_title(CONVENTIONS[conv], fontsize=7, pad=2)
    axes[-1].set_xlabel(f"{metric_label(metric)}, {len(result.tasks)} tasks (95% CI)")
    return fig


def improvement(result: Across, style: _Style) -> Figure:
    """P(A > B) and its 95% CI, one row per pair, A the better of the two; 0.5 is a tie."""
    table = result.improvement
    order = {n: i for i, n in enumerate(result.methods)}
    rows = table[(table["p_improvement"] > 0.5) | ((table["p_improvement"] == 0.5)
                                                    & (table["a"].map(order) < table["b"].map(order)))]
    rows = rows.sort_values(["a", "b"], key=lambda c: c.map(order), kind="stable")
    fig = Figure(figsize=(SIZE[0], 0.6 + ROW * len(rows)), layout="constrained")
    ax = fig.add_subplot()
    ax.axvline(0.5, color="0.6", lw=0.8, ls="--", zorder=1)
    for i, (_, r) in enumerate(rows.iterrows()):
        ax.errorbar([r["p_improvement"]], [i], xerr=[[r["p_improvement"] - r["ci95_low"]],
                                                     [r["ci95_high"] - r["p_improvement"]]],
                    color=style.color(r["a"]), marker="o", ms=3, capsize=2, lw=1)
    ax.set_yticks(range(len(rows)), [f"{r['a']} > {r['b']}" for _, r in rows.iterrows()])
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlim(min(0.45, rows["ci95_low"].min() - 0.02), 1.0)
    ax.set_xlabel(f"P(A > B) over {len(result.tasks)} tasks (95% CI)")
    return fig


def cd_diagram(result: Across, style: _Style) -> Figure:
    """Demšar's critical-difference diagram: the rank axis (1, the best, on the left), each method
    hanging from its mean rank to a label at the side, thick bars joining methods whose ranks differ by
    less than CD (the Nemenyi test tells them apart from none of the others), and CD drawn to scale."""
    ranks = result.ranks.assign(method=_names(result.ranks, result)).sort_values("mean_rank", kind="stable")
    names, r = list(ranks["method"]), ranks["mean_rank"].to_numpy()
    k = len(names)
    label_w = 0.12 + 0.052 * max(len(f"{n} ({x:.2f})") for n, x in zip(names, r))  # inches at 6.5 pt
    width = max(SIZE[0], 2 * label_w + 1.2)
    left = math.ceil(k / 2)
    top, bar, row = 0.42, 0.09, 0.16  # inches: above the axis (CD, tick labels); per clique bar; per label row
    height = top + 0.12 + bar * len(result.cliques) + row * left + 0.08
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.axis("off")
    per_inch = (k - 1) / (width - 2 * label_w)  # the x axis is in ranks, the y axis in inches
    x_lo, x_hi = 1 - label_w * per_inch, k + label_w * per_inch
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(-(height - top), top)
    ax.plot([1, k], [0, 0], color="black", lw=0.8)
    for t in range(1, k + 1):
        ax.plot([t, t], [0, 0.05], color="black", lw=0.8)
        ax.text(t, 0.08, str(t), ha="center", va="bottom", fontsize=6.5)
    ax.plot([1, 1 + result.cd], [0.3, 0.3], color="black", lw=0.8, marker="|", ms=4)
    ax.text(1 + result.cd / 2, 0.33, f"CD = {result.cd:.2f}", ha="center", va="bottom", fontsize=6.5)
    first_row = -(0.12 + bar * len(result.cliques))
    for j, clique in enumerate(result.cliques):
        span = r[[names.index(n) for n in clique]]
        y = -0.08 - bar * j
        ax.plot([span.min() - 0.06 * per_inch, span.max() + 0.06 * per_inch], [y, y], color="black",
                lw=2, solid_capstyle="butt")
    for i, (n, x) in enumerate(zip(names, r)):
        side_left = i < left
        y = first_row - row * (i if side_left else k - 1 - i) - row / 2
        end = x_lo + 0.05 * per_inch if side_left else x_hi - 0.05 * per_inch
        ax.plot([x, x, end], [0, y, y], color=style.color(n), lw=0.9, ls=style.linestyle(n))
        ax.text(end, y + 0.015, f"{n} ({x:.2f})", ha="left" if side_left else "right", va="bottom", fontsize=6.5,
                color=style.color(n))
    return fig


def profiles(result: Across, style: _Style, metric: str, scale: float) -> Figure:
    """Fraction of runs (all tasks pooled) above each threshold: one line and 95% band per method."""
    table = result.profiles.assign(method=_names(result.profiles, result))
    fig = Figure(figsize=SIZE, layout="constrained")
    ax = fig.add_subplot()
    for n in result.methods:
        part = table[table["method"] == n]
        tau = part["tau"].to_numpy() * scale
        # a step function: the fraction drops at each run's score
        ax.plot(tau, part["fraction"], color=style.color(n), ls=style.linestyle(n), lw=1, drawstyle="steps-post")
        ax.fill_between(tau, part["ci95_low"], part["ci95_high"], color=style.color(n), alpha=0.15, linewidth=0,
                        step="post")
    above = "above" if result.higher_is_better else "below"
    ax.set_xlabel(f"threshold τ: {metric_label(metric)}")
    ax.set_ylabel(f"fraction of runs {above} τ")
    ax.set_ylim(-0.02, 1.02)
    handles = [Line2D([], [], color=style.color(n), ls=style.linestyle(n)) for n in result.methods]
    ax.legend(handles, result.methods, frameon=False, loc="lower left" if result.higher_is_better else "lower right",
              ncols=1 if len(handles) <= 5 else 2)
    ax.set_title(f"{len(result.tasks)} tasks pooled; raw scores", fontsize=6.5, pad=2)
    return fig
