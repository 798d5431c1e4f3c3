"""The backbone table: which backbone to pick for a task, by its frozen features' transferability scores, and
whether those scores rank the backbones as their accuracy after transfer does.

Input: the finished runs of one or several sweeps, score runs (strategy=score, which log scores and no accuracy)
and trained runs alike, as `frame` lays them out. Per task (a dataset: the runs' `task` param), one row per
backbone: `model.name`, with `model.arch` and `model.weights` where they vary (a random-init control):
- each score (score/logme, score/knn_acc, score/ncc_acc): its mean over seeds. Pretrained weights give every
  seed the same features and so the same score; a random init differs per seed, and its interval says so.
- probe's accuracy and the best trained strategy's, each the best group by mean (a group: the strategy and any
  other grouping key, say the LR), with its 95% t-interval over seeds (`stats.t_interval`), and their ranks
  among the backbones (1 = best, ties averaged; the scores are ranked the same way).
- with at least MIN_BACKBONES backbones, per score: the weighted Kendall tau (hyperbolic weights, as
  `scores.weighted_tau`) and the Spearman rho of the score against each accuracy.
Pure pandas/numpy (scipy through `tlsweep.scores`): no MLflow, no matplotlib (backbone_figures draws).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tlsweep.features import measures as scores
from tlsweep.config.keys import (DATASET_KEY, IMAGENET_TOP1, SCORE_PREFIX, SCORE_SECONDS_PREFIX, SCORE_STRATEGY, SCORES,
                                 STRATEGY_KEY, TOTAL_PARAMS)
from tlsweep.config.keys import short_labels
from tlsweep.report import stats, tables
from tlsweep.report.columns import UNSET, is_fraction, label

BACKBONE_KEYS = ("model.name", "model.arch", "model.weights")
TASK_KEYS = ("task", DATASET_KEY)  # `task` names the dataset whatever source read it; older runs lack it
MIN_BACKBONES = 3  # a rank correlation over two backbones is +1 or -1, whatever the scores
TARGETS = {"probe": "probe", "best": "best strategy"}  # column prefix -> what the tables call it
FILES = ("backbones.csv", "backbones_taus.csv")
# static rankers, set beside the scores in the rank correlations: they need no data (the weights' stated ImageNet
# top-1, the model's size), and a score that does not beat them is not worth its features
STATIC = (IMAGENET_TOP1, TOTAL_PARAMS)
TAU_COLUMNS = ["score", "target", "n_backbones", "weighted_tau", "spearman_rho"]


@dataclass
class Backbones:
    table: pd.DataFrame  # one row per task x backbone: the keys, scores, accuracies, ranks (backbones.csv)
    taus: pd.DataFrame  # per task x score x target: TAU_COLUMNS (backbones_taus.csv)
    keys: list[str]  # what tells backbones apart
    task_key: str | None  # the task column, when the runs span several tasks
    scores: list[str]  # the score metrics the runs logged, as score/<name>
    metric: str


def backbone_keys(params: pd.DataFrame) -> list[str]:
    """model.name, then model.arch and model.weights where they vary within a model name (model=timm sweeps its
    arch; a control sweeps its weights); a preset's arch follows its name and says nothing more."""
    if "model.name" not in params:
        return ["model.name"]
    return ["model.name"] + [k for k in BACKBONE_KEYS[1:]
                             if k in params and (params.groupby("model.name")[k].nunique() > 1).any()]


def has_scores(runs: pd.DataFrame) -> bool:
    return any(f"{SCORE_PREFIX}{s}" in runs and runs[f"{SCORE_PREFIX}{s}"].notna().any() for s in SCORES)


def frame(runs: pd.DataFrame, params: pd.DataFrame, metric: str, by: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """(one row per finished run: task, backbone keys, `group` (the strategy and the other `by` keys), seed,
    `value` (the metric; NaN for a score run) and each score logged; the backbone keys)."""
    finished = runs["status"] == "FINISHED"
    runs, params = runs[finished], params.loc[finished]
    keys = backbone_keys(params)
    task = next((k for k in TASK_KEYS if k in params and params[k].notna().any()), None)
    group_keys = [STRATEGY_KEY] + [k for k in by if k not in (STRATEGY_KEY, task, *keys)]
    out = params.reindex(columns=list(dict.fromkeys([*keys, *group_keys, "seed"] + ([task] if task else []))))
    out = out.fillna(UNSET).astype(str)
    out["task"] = out[task] if task else "all"
    out["group"] = [stats._candidate(group_keys, tuple(r)) for r in out[group_keys].itertuples(index=False)]
    out["value"] = runs[metric].astype(float) if metric in runs else np.nan
    out.loc[out[STRATEGY_KEY] == SCORE_STRATEGY, "value"] = np.nan  # trains nothing: never an accuracy
    for name in SCORES:
        for prefix in (SCORE_PREFIX, SCORE_SECONDS_PREFIX):
            out[prefix + name] = runs[prefix + name].astype(float) if prefix + name in runs else np.nan
    for name in STATIC:
        out[name] = runs[name].astype(float) if name in runs else np.nan
    return out, keys


def analyse(runs: pd.DataFrame, params: pd.DataFrame, metric: str, by: list[str],
            higher_is_better: bool = True) -> Backbones:
    """The backbone table and the rank correlations of the finished `runs` (with their `params`)."""
    data, keys = frame(runs, params, metric, by)
    logged = [SCORE_PREFIX + s for s in SCORES if data[SCORE_PREFIX + s].notna().any()]
    static = [s for s in STATIC if data[s].notna().any()]
    tasks = list(dict.fromkeys(data["task"]))
    rows, taus = [], []
    for task in tasks:
        part = data[data["task"] == task]
        found = [_row(b, runs_of, keys, logged, higher_is_better) | {s: float(runs_of[s].mean()) for s in static}
                 for b, runs_of in part.groupby(keys, sort=False, dropna=False)]
        table = pd.DataFrame(found)
        for col in logged + [f"{t}_mean" for t in TARGETS]:
            # 1 = best, ties sharing their mean rank (scipy.stats.rankdata's "average"); every score: higher is better
            higher = higher_is_better or col in logged
            table[f"{col}_rank"] = table[col].rank(ascending=not higher, method="average")
        taus += [{"task": task, **r} for r in correlations(table, logged + [c for c in static if c in table])]
        rows.append(table.assign(task=task))
    table = pd.concat(rows, ignore_index=True)
    task_key = "task" if len(tasks) > 1 else None
    return Backbones(table[["task", *[c for c in table.columns if c != "task"]]],
                     pd.DataFrame(taus, columns=["task", *TAU_COLUMNS]), keys, task_key, logged, metric)


def _row(backbone, part: pd.DataFrame, keys: list[str], logged: list[str], higher_is_better: bool) -> dict:
    backbone = backbone if isinstance(backbone, tuple) else (backbone,)
    row = dict(zip(keys, backbone))
    per_seed = part.groupby("seed")  # a score run and a probe run of one seed scored the same features
    for col in logged:
        x = per_seed[col].mean().dropna().to_numpy()
        _, _, low, high = stats.t_interval(x)
        if len(x) > 1 and np.ptp(x) == 0:  # pretrained weights: one value, whose interval is only float rounding
            low = high = float(x.mean())
        row |= {col: float(x.mean()) if len(x) else np.nan, f"{col}_ci95_low": low, f"{col}_ci95_high": high,
                f"{col}_n": len(x)}
        seconds = SCORE_SECONDS_PREFIX + col.removeprefix(SCORE_PREFIX)
        row[seconds] = float(part[seconds].median()) if part[seconds].notna().any() else np.nan
    trained = part[part["value"].notna()]
    for target, strategies in (("probe", ["probe"]), ("best", None)):
        pool = trained if strategies is None else trained[trained[STRATEGY_KEY].isin(strategies)]
        row |= _best_group(pool, target, higher_is_better)
    return row


def _best_group(pool: pd.DataFrame, target: str, higher_is_better: bool) -> dict:
    """The group of `pool` with the best mean: its name, n, mean and 95% t-interval over seeds."""
    out = {f"{target}_group": "", f"{target}_n": 0, f"{target}_mean": np.nan, f"{target}_ci95_low": np.nan,
           f"{target}_ci95_high": np.nan}
    if pool.empty:
        return out
    means = pool.groupby("group", sort=False)["value"].mean()
    name = means.idxmax() if higher_is_better else means.idxmin()
    x = pool.loc[pool["group"] == name, "value"].to_numpy()
    _, _, low, high = stats.t_interval(x)
    return out | {f"{target}_group": name, f"{target}_n": len(x), f"{target}_mean": float(x.mean()),
                  f"{target}_ci95_low": low, f"{target}_ci95_high": high}


def correlations(table: pd.DataFrame, logged: list[str]) -> list[dict]:
    """Per score and target with at least MIN_BACKBONES backbones that have both: weighted tau and Spearman rho."""
    out = []
    for col in logged:
        for target in TARGETS:
            both = table[[col, f"{target}_mean"]].dropna()
            tau = rho = math.nan
            if len(both) >= MIN_BACKBONES:
                x, y = both[col].to_numpy(), both[f"{target}_mean"].to_numpy()
                with warnings.catch_warnings():  # a constant column: scipy warns and returns NaN, kept as NaN
                    warnings.simplefilter("ignore")
                    tau, rho = scores.weighted_tau(x, y), scores.spearman_rho(x, y)
            out.append({"score": col, "target": target, "n_backbones": len(both), "weighted_tau": tau,
                        "spearman_rho": rho})
    return out


def write(result: Backbones, out_dir: Path) -> list[Path]:
    """backbones.csv and backbones_taus.csv, with the raw keys; returns their paths."""
    paths = [Path(out_dir) / f for f in FILES]
    result.table.to_csv(paths[0], index=False)
    result.taus.to_csv(paths[1], index=False)
    return paths


def name(row, keys: list[str]) -> str:
    """A backbone's name in tables and figures: "efficientnet_lite0", "efficientnet_lite0, weights=None"."""
    return ", ".join(short_labels([(k, row[k]) for k in keys]))


def _cell(mean: float, low: float, high: float, n: int, frac: bool, rank: float | None = None,
          spread_only: bool = False) -> str:
    """`mean ± half-width (rank)`; `spread_only`: no interval where the values do not differ (a score of
    pretrained weights: one value, computed once), as an accuracy's zero-width interval still says n > 1."""
    if not np.isfinite(mean):
        return ""
    text = tables._fmt(mean, frac) if frac else f"{mean:.3f}"
    if n > 1 and np.isfinite(high) and (high > mean or not spread_only):
        text += f" ± {tables._fmt(high - mean, frac) if frac else f'{high - mean:.3f}'}"
    return text + (f" ({rank:g})" if rank is not None and np.isfinite(rank) else "")


def markdown(result: Backbones) -> str:
    """The Backbones section of summary.md: the table per task, then the rank correlations."""
    frac = is_fraction(result.metric)
    lines = [f"### Backbones: transferability scores and {label(result.metric)}", ""]
    header = ["backbone"] + [label(c) + (" (%)" if is_fraction(c) else "") for c in result.scores]
    header += ["probe (%)" if frac else "probe", "best strategy", "best (%)" if frac else "best"]
    for task, part in result.table.groupby("task", sort=False):
        if result.task_key:
            lines += [f"**{task}**", ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for _, r in part.iterrows():
            cells = [name(r, result.keys)]
            cells += [_cell(r[c], r[f"{c}_ci95_low"], r[f"{c}_ci95_high"], r[f"{c}_n"], is_fraction(c), r[f"{c}_rank"],
                            spread_only=True) for c in result.scores]
            for target in TARGETS:
                cells.append(_cell(r[f"{target}_mean"], r[f"{target}_ci95_low"], r[f"{target}_ci95_high"],
                                   r[f"{target}_n"], frac, r[f"{target}_mean_rank"]))
                if target == "best":
                    cells.insert(-1, r["best_group"])
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        taus = result.taus[(result.taus["task"] == task) & (result.taus["n_backbones"] >= MIN_BACKBONES)]
        if len(taus):
            lines += ["| score | weighted τ vs probe | ρ vs probe | weighted τ vs best | ρ vs best |", "|---|---|---|---|---|"]
            for col, t in taus.groupby("score", sort=False):
                v = {r.target: r for r in t.itertuples()}
                lines.append(f"| {'static: ' + label(col) if col in STATIC else label(col)} | " + " | ".join(
                    f"{getattr(v[tg], m):+.2f}" if tg in v and np.isfinite(getattr(v[tg], m)) else "n/a"
                    for tg in TARGETS for m in ("weighted_tau", "spearman_rho")) + " |")
            lines.append("")
    lines += _notes(result)
    return "\n".join(lines) + "\n"


def _notes(result: Backbones) -> list[str]:
    n = result.table.groupby("task").size().min()
    out = [f"Scores: mean over seeds (± 95% t-interval where seeds differ: a random init), on the pre-logit features "
           f"of the frozen backbone (train's first augmented view; k-NN, k={scores.KNN_K}, and NCC on the selection "
           "split when there is one, else leave-one-out on train); higher is better. Accuracy: "
           f"{label(result.metric)} ({result.metric}), mean ± 95% t-interval over seeds of probe's and of the best "
           "trained strategy's best group by mean (with several LRs, the best LR: selected on the scored split, "
           "so optimistic). (n): rank among the backbones, 1 = best, ties averaged."]
    if n >= MIN_BACKBONES:
        out.append("Weighted τ: Kendall's tau with hyperbolic weights (scipy.stats.weightedtau), swaps among the "
                   "top backbones weighing most; ρ: Spearman's rank correlation; both of the score against the mean "
                   "accuracy over the backbones that have both. A static ranker needs no data: the weights' stated "
                   "ImageNet top-1 (`imagenet_top1`, where known) and the parameter count (`total_params`).")
    else:
        out.append(f"No rank correlation: it needs at least {MIN_BACKBONES} backbones ({n} here).")
    return out
