"""The report's figures: one-column paper size, colour-blind-safe, each saved as PDF and PNG.

Colour is the strategy (the first grouping key when there is no strategy key); each combination of
the other grouping keys gets its own panel (curves, lr, shots) or marker (ladder). Accuracy axes
stop at 0 and 100 %: a t-interval from two seeds can reach past them, and the tables keep its true
ends. Axes carry the readable labels of `keys` ("final val accuracy (%)"). Uses matplotlib's object
API, not pyplot, so making a report never touches the caller's backend or open figures.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from tlsweep.config.keys import SHOTS_KEY, STRATEGIES, STRATEGY_KEY, short_labels
from tlsweep.report import render
from tlsweep.report.columns import as_number, is_fraction, label, metric_label, sort_key
from tlsweep.report.stats import t_interval

# fontTools logs each font-subsetting step of a PDF at INFO, which Hydra's logging would print
logging.getLogger("fontTools.subset").setLevel(logging.WARNING)

OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]  # Okabe & Ito 2008
# fourteen strategies need fourteen colours: Okabe-Ito's eight, then six of Paul Tol's muted scheme (score, the
# fourteenth, trains nothing and so has no accuracy to draw; it keeps a colour so that the index never runs out)
PALETTE = OKABE_ITO + ["#882255", "#44AA99", "#999933", "#AA4499", "#332288", "#117733"]
MARKERS = ["o", "s", "^", "D", "v", "P"]
NAMES = ("ladder", "curves", "lr", "shots", "decision")
SIZE = (3.3, 2.4)  # inches: one column of a two-column paper
RC = {"font.size": 8, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7, "legend.fontsize": 6.5,
      "axes.spines.top": False, "axes.spines.right": False, "lines.linewidth": 1.2,
      "pdf.fonttype": 42}  # TrueType in the PDF: journals reject Type 3 fonts


def make_all(out_dir: Path, data: pd.DataFrame, summary: pd.DataFrame, history: pd.DataFrame,
             by: list[str], metric: str, choice: pd.DataFrame | None = None, row_key: str | None = None,
             rows_label: str = "") -> list[Path]:
    """Draw every figure the sweep supports; returns the files written.

    `data`: one row per run (index run_id) with the `by` columns, `value` and `trainable_params`;
    `summary`: one row per group, in report order; `history`: run_id, step, value of val_acc;
    `choice`: the table of stats.decide over (row_key, data.shots), when the sweep varies the shots.
    """
    fraction = is_fraction(metric)
    todo = []
    with matplotlib.rc_context(RC):  # the files are written inside it too: savefig reads pdf.fonttype
        todo += _prepared(ladder(data, summary, by, metric), out_dir, "ladder", fraction)
        if not history.empty:
            todo += _prepared(curves(data, summary, history, by), out_dir, "curves", True)
        for name in ("lr", "shots"):  # the file is named by the key's last part: optim.lr, data.shots
            x_key = next((k for k in by if k.rsplit(".", 1)[-1] == name), None)
            if x_key is not None and summary[x_key].nunique() > 1:
                todo += _prepared(versus(data, summary, by, x_key, metric), out_dir, name, fraction)
        if choice is not None:
            todo += _prepared(decision(choice, row_key, SHOTS_KEY, metric, rows_label), out_dir, "decision", False)
        return render.save_all(todo)


def _scale(metric: str) -> float:
    return 100.0 if is_fraction(metric) else 1.0


def _prepared(fig: Figure, out_dir: Path, name: str, percent: bool) -> list[render.File]:
    if percent:
        for ax in fig.axes:
            low, high = ax.get_ylim()
            ax.set_ylim(max(low, 0.0), min(high, 100.0))
    return render.files(fig, out_dir, name)


class _Layout:
    """Colour per strategy (else the first key); the other grouping keys pick a panel or a marker."""

    def __init__(self, summary: pd.DataFrame, by: list[str], skip: str | None = None):
        keys = [k for k in by if k != skip]
        self.primary = STRATEGY_KEY if STRATEGY_KEY in keys else (keys[0] if keys else None)
        self.others = [k for k in keys if k != self.primary]
        self.primaries = list(dict.fromkeys(summary[self.primary])) if self.primary else ["all"]
        self.combos = list(dict.fromkeys(map(tuple, summary[self.others].itertuples(index=False))))

    def key(self, row) -> tuple[str, tuple]:
        return (row[self.primary] if self.primary else "all"), tuple(row[k] for k in self.others)

    def color(self, primary: str) -> str:
        if self.primary == STRATEGY_KEY and primary in STRATEGIES:  # a strategy keeps its colour across figures
            return PALETTE[STRATEGIES.index(primary)]
        return PALETTE[self.primaries.index(primary) % len(PALETTE)]

    def label(self, combo: tuple) -> str:
        # a choice (data.name, model.name) speaks for itself: "digits", not "name=digits"
        return ", ".join(short_labels(list(zip(self.others, combo))))

    def panels(self) -> tuple[Figure, dict]:
        """One panel per combination of the other keys, sharing axes; the figure grows in height."""
        n = len(self.combos)
        cols = min(n, 3 if max(len(self.label(c)) for c in self.combos) <= 14 else 2)  # titles must fit
        rows = math.ceil(n / cols)
        height = SIZE[1] if n == 1 else 0.4 + 1.3 * rows
        fig = Figure(figsize=(SIZE[0], height), layout="constrained")
        grid = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False).ravel()
        for ax in grid[n:]:
            ax.set_visible(False)
        for ax, combo in zip(grid, self.combos):
            if combo:
                ax.set_title(self.label(combo), fontsize=6.5, pad=2)
        return fig, dict(zip(self.combos, grid))

    def color_legend(self, fig: Figure, marker: str = "") -> None:
        if not self.primary:
            return
        handles = [Line2D([], [], color=self.color(p), marker=marker, ms=3) for p in self.primaries]
        if len(self.combos) == 1 and len(handles) <= 4:
            fig.axes[0].legend(handles, self.primaries, frameon=False)
        else:
            fig.legend(handles, self.primaries, loc="outside upper center", ncols=min(len(handles), 4), frameon=False)


def _members(data: pd.DataFrame, row, keys: list[str]) -> pd.DataFrame:
    mask = np.ones(len(data), dtype=bool)
    for k in keys:
        mask &= (data[k] == row[k]).to_numpy()
    return data[mask]


def _human(n: float) -> str:
    for div, unit in [(1e9, "G"), (1e6, "M"), (1e3, "k")]:
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}"
    return f"{n:.0f}"


def ladder(data: pd.DataFrame, summary: pd.DataFrame, by: list[str], metric: str) -> Figure:
    """One point per group with its 95% CI, the seeds as small dots, trainable params under each tick.

    Groups that share a strategy stand side by side, told apart by marker.
    """
    lay = _Layout(summary, by)
    if lay.primary == STRATEGY_KEY and "trainable_params" in data:  # the ladder climbs by what trains
        # scratch, the baseline with nothing pretrained, stays leftmost (it trains as much as finetune)
        size = data.groupby(STRATEGY_KEY)["trainable_params"].median()
        lay.primaries.sort(key=lambda p: (p != "scratch", size.get(p, np.inf), sort_key(STRATEGY_KEY, p)))
    scale = _scale(metric)
    fig = Figure(figsize=SIZE, layout="constrained")
    ax = fig.add_subplot()
    width = 0.6 / len(lay.combos)
    for _, row in summary.iterrows():
        primary, combo = lay.key(row)
        c = lay.combos.index(combo)
        x = lay.primaries.index(primary) + (c - (len(lay.combos) - 1) / 2) * width
        seeds = _members(data, row, by)["value"].to_numpy() * scale
        # the seeds in a strip left of the mean marker, each at its own x: none hides under the marker,
        # and two seeds with the same value (one image apart is a step) still show as two dots
        jitter = -np.linspace(0.15, 0.45, len(seeds)) * width if len(seeds) > 1 else np.full(len(seeds), -0.3 * width)
        ax.scatter(x + jitter, seeds, s=6, color=lay.color(primary), alpha=0.45, linewidths=0, zorder=2)
        yerr = None
        if row["n"] > 1:
            yerr = [[(row["mean"] - row["ci95_low"]) * scale], [(row["ci95_high"] - row["mean"]) * scale]]
        ax.errorbar([x], [row["mean"] * scale], yerr=yerr, color=lay.color(primary),
                    marker=MARKERS[c % len(MARKERS)], ms=4, capsize=2, lw=1, zorder=3)
    labels = [str(p) for p in lay.primaries]
    if lay.primary:
        ax.set_xlabel(label(lay.primary))
        if "trainable_params" in data and data["trainable_params"].notna().any():
            counts = data.groupby(lay.primary)["trainable_params"].median()
            sep = "\n" if len(lay.primaries) <= 6 else "  "  # slanted names below take the count on their line
            labels = [f"{p}{sep}{_human(counts[p])}" if pd.notna(counts.get(p)) else str(p) for p in lay.primaries]
            ax.set_xlabel(ax.get_xlabel() + " (trainable parameters)")
    # more than six names side by side overlap in one column's width: slant them
    slant = dict(rotation=40, ha="right", rotation_mode="anchor") if len(labels) > 6 else {}
    ax.set_xticks(range(len(labels)), labels, **slant)
    ax.set_xlim(-0.6, len(labels) - 0.4)
    ax.set_ylabel(metric_label(metric))
    if lay.others:  # colour already names the strategy: the legend only decodes the markers
        handles = [Line2D([], [], color="0.35", marker=MARKERS[i % len(MARKERS)], linestyle="none", ms=4)
                   for i in range(len(lay.combos))]
        labels = [lay.label(c) for c in lay.combos]
        if len(labels) <= 3:
            ax.legend(handles, labels, frameon=False)
        else:
            fig.set_size_inches(SIZE[0], SIZE[1] + 0.13 * math.ceil(len(labels) / 2))
            fig.legend(handles, labels, loc="outside lower center", ncols=2, frameon=False)
    return fig


def _band(values: np.ndarray) -> tuple[float, float, float]:
    """Mean and 95% t-interval of the non-NaN values (NaN interval for n < 2)."""
    values = values[~np.isnan(values)]
    _, _, low, high = t_interval(values)
    return float(values.mean()), low, high


def curves(data: pd.DataFrame, summary: pd.DataFrame, history: pd.DataFrame, by: list[str]) -> Figure:
    """Validation accuracy against epoch: mean over seeds and 95% CI band, one line per strategy."""
    lay = _Layout(summary, by)
    fig, panels = lay.panels()
    for _, row in summary.iterrows():
        primary, combo = lay.key(row)
        runs = _members(data, row, by).index
        table = history[history["run_id"].isin(runs)].pivot_table(index="step", columns="run_id", values="value")
        if table.empty:
            continue
        bands = np.array([_band(v) for v in table.to_numpy()]) * 100
        ax = panels[combo]
        ax.plot(table.index, bands[:, 0], color=lay.color(primary))
        ax.fill_between(table.index, bands[:, 1], bands[:, 2], color=lay.color(primary), alpha=0.2, linewidth=0)
    for ax in panels.values():
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.supxlabel("epoch", fontsize=8)
    fig.supylabel(metric_label("val_acc"), fontsize=8)
    lay.color_legend(fig)
    return fig


def versus(data: pd.DataFrame, summary: pd.DataFrame, by: list[str], x_key: str, metric: str) -> Figure:
    """The metric against a numeric key on a log axis: one line with a 95% CI band per strategy.

    A non-numeric value (data.shots=None: every labelled image) is drawn right of the largest number.
    """
    scale = _scale(metric)
    raw = list(dict.fromkeys(summary[x_key]))
    numbers = [as_number(v) for v in raw]
    top = max((x for x in numbers if x is not None and x > 0), default=1.0)
    extra = [v for v, x in zip(raw, numbers) if x is None or x <= 0]
    pos = {v: x if x is not None and x > 0 else top * 3.0 ** (1 + extra.index(v)) for v, x in zip(raw, numbers)}
    lay = _Layout(summary, by, skip=x_key)
    line_keys = [k for k in by if k != x_key]
    fig, panels = lay.panels()
    for _, first in (summary.drop_duplicates(line_keys) if line_keys else summary.iloc[:1]).iterrows():
        primary, combo = lay.key(first)
        part = _members(summary, first, line_keys)
        part = part.assign(x=part[x_key].map(pos)).sort_values("x")
        runs = _members(data, first, line_keys)
        ax, color = panels[combo], lay.color(primary)
        ax.plot(part["x"], part["mean"] * scale, color=color, marker="o", ms=3)
        ax.fill_between(part["x"], part["ci95_low"] * scale, part["ci95_high"] * scale,
                        color=color, alpha=0.2, linewidth=0)
        ax.scatter(runs[x_key].map(pos), runs["value"] * scale, s=5, color=color, alpha=0.4, linewidths=0)
    for ax in panels.values():
        ax.set_xscale("log")
        ax.set_xticks([pos[v] for v in raw], ["all" if v == "None" else str(v) for v in raw])
        ax.minorticks_off()
    fig.supxlabel(label(x_key), fontsize=8)
    fig.supylabel(metric_label(metric), fontsize=8)
    lay.color_legend(fig, marker="o")
    return fig


def decision(table: pd.DataFrame, row_key: str | None, col_key: str, metric: str, rows_label: str = "") -> Figure:
    """The decision chart as evidence: one row per dataset, one column per shots value; each cell
    names the best strategy by mean and its mean, or "A ≈ B" when it is not significantly ahead of
    the runner-up (stats.decide). A clear winner's cell is filled in its colour, a tie only tinted.
    """
    scale = _scale(metric)
    fmt = (lambda m: f"{m * scale:.1f}") if scale != 1 else (lambda m: f"{m:.3g}")
    rows = list(dict.fromkeys(table[row_key])) if row_key else [rows_label]
    cols = sorted(dict.fromkeys(table[col_key]), key=lambda v: sort_key(col_key, v))
    width = max(SIZE[0], 0.9 + 1.05 * len(cols))
    fig = Figure(figsize=(width, 0.75 + 0.55 * len(rows)), layout="constrained")
    ax = fig.add_subplot()
    for _, r in table.iterrows():
        i = rows.index(r[row_key]) if row_key else 0
        j = cols.index(r[col_key])
        best = r["best"]
        color = PALETTE[STRATEGIES.index(best) % len(PALETTE)] if best in STRATEGIES else "0.5"
        clear = bool(r["significant"]) or not r["runner_up"]
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor=color,
                               alpha=0.45 if clear else 0.15, edgecolor="white", lw=2))
        text = f"{best} {fmt(r['best_mean'])}"
        if not clear:
            text += f"\n≈ {r['runner_up']} {fmt(r['runner_up_mean'])}"
        ax.text(j, i, text, ha="center", va="center", fontsize=6.5, linespacing=1.3)
    ax.set_xlim(-0.5, len(cols) - 0.5)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xticks(range(len(cols)), ["all" if c == "None" else str(c) for c in cols])
    ax.set_yticks(range(len(rows)), [str(r) for r in rows])
    ax.xaxis.tick_top()
    ax.xaxis.set_label_position("top")
    ax.set_xlabel(label(col_key))
    if row_key:
        ax.set_ylabel(label(row_key))
    ax.tick_params(length=0)
    for side in ("left", "bottom", "top", "right"):
        ax.spines[side].set_visible(False)
    fig.supxlabel(f"the best mean {metric_label(metric)}; A ≈ B: A is not significantly ahead\n"
                  "of the runner-up B (paired t-test on seeds, Holm over the cells, 0.05)", fontsize=6)
    return fig
