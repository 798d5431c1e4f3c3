"""The logged keys as the report reads them: which params group the runs, how their values sort,
which metrics are fractions, and the label a reader sees for each key.

The bottom of the report: statistics, tables and figures all use it, and it imports none of them
(nor MLflow). CSVs keep the raw keys; tables and figures show `label(key)`.
"""
from __future__ import annotations

import math

import pandas as pd

from tlsweep.config.errors import ReportError
from tlsweep.config.keys import STRATEGIES, STRATEGY_KEY, is_seed  # the names the runs and the report share

UNSET = "<unset>"  # a param some runs never had (a key only some strategies set, e.g. lpft's probe_epochs)
# Params that differ between runs of one configuration: they identify a replicate, not a group.
PER_RUN_LAST = {"device", "root", "output_dir", "run_dir", "out_dir", "num_workers", "job_num", "job_id"}
PER_RUN_PREFIXES = ("tracking.", "hydra.")

# What tables and figures call a key; any other key falls back to `_plain`.
LABELS = {
    "final_val_acc": "final val accuracy", "best_val_acc": "best val accuracy", "val_acc": "val accuracy",
    "train_acc": "train accuracy", "val_loss": "val loss", "train_loss": "train loss",
    "final_test_acc": "final test accuracy", "best_test_acc": "best test accuracy", "test_acc": "test accuracy",
    "test_loss": "test loss", "select_acc": "selection accuracy",
    "best_epoch": "best epoch", "trainable_params": "trainable parameters", "total_params": "parameters",
    "imagenet_top1": "ImageNet top-1",
    "train_seconds": "training time (s)", "prep_seconds": "preparation time (s)",
    "epoch_seconds": "time per epoch (s)",
    STRATEGY_KEY: "strategy", "model.name": "model", "optim.name": "optimizer", "data.name": "dataset",
    "optim.lr": "learning rate", "optim.weight_decay": "weight decay", "optim.scheduler": "LR schedule",
    "data.shots": "shots per class", "data.image_size": "image size", "strategy.unfreeze": "unfrozen stages",
    "strategy.backbone_lr_scale": "backbone LR scale", "batch_size": "batch size",
    "score/logme": "LogME", "score/knn_acc": "k-NN accuracy", "score/ncc_acc": "nearest-class-mean accuracy",
}


def label(key: str) -> str:
    """The readable name of a param or metric key ("optim.lr" -> "learning rate")."""
    return LABELS.get(key) or _plain(key)


def _plain(key: str) -> str:
    """An unknown key, spelled out: "optim.momentum" -> "optim momentum", "data.name" -> "data"."""
    return key.removesuffix(".name").replace(".", " ").replace("_", " ")


def metric_label(metric: str) -> str:
    """The label of a metric's axis or column, with its unit: "final val accuracy (%)"."""
    return f"{label(metric)} (%)" if is_fraction(metric) else label(metric)


def is_fraction(metric: str) -> bool:
    """Logged in [0, 1], shown in %."""
    return "acc" in metric


def lower_is_better(metric: str) -> bool:
    return any(w in metric for w in ("loss", "err", "seconds", "time"))


def as_number(value) -> float | None:
    """The float a logged param string stands for, or None ("None", "adamw")."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def sort_key(key: str, value: str) -> tuple:
    """Strategies in ladder order, numbers numerically ("3e-4" < "0.01"), then text ("None" last)."""
    if key == STRATEGY_KEY and value in STRATEGIES:
        return (0, STRATEGIES.index(value), "")
    x = as_number(value)
    return (1, x, "") if x is not None and math.isfinite(x) else (2, 0.0, str(value))


def is_per_run(key: str) -> bool:
    return is_seed(key) or key.rsplit(".", 1)[-1] in PER_RUN_LAST or key.startswith(PER_RUN_PREFIXES)


def design_keys(params: pd.DataFrame) -> list[str]:
    """Params that vary across the sweep's children, except per-run keys and keys that another one
    determines (strategy.backbone_lr_scale follows strategy.name). `strategy.name` first, then by name.
    """
    # Unset values are ignored: a job that crashed before logging its params varies nothing.
    varying = [k for k in params.columns if not is_per_run(k) and params[k].nunique() > 1]
    varying.sort(key=lambda k: (k != STRATEGY_KEY, not k.endswith(".name"), k))  # a choice beats its details
    kept: list[str] = []
    for k in varying:
        if not any((params.groupby(j)[k].nunique() <= 1).all() for j in kept):
            kept.append(k)
    return sorted(kept, key=lambda k: (k != STRATEGY_KEY, k))


def seed_keys(params: pd.DataFrame) -> list[str]:
    """The seed params that vary, or `seed` when none does: a seed param that never varies
    (data.shots_seed) pairs nothing."""
    return [k for k in params.columns if is_seed(k) and params[k].nunique() > 1] or \
        [k for k in params.columns if k == "seed"]


def resolve_keys(keys: list[str], params: pd.DataFrame) -> list[str]:
    """Param names as logged; "strategy" is short for "strategy.name", "lr" for the one "*.lr"."""
    resolved = []
    for key in map(str, keys):
        if key in params.columns:
            resolved.append(key)
        elif f"{key}.name" in params.columns:
            resolved.append(f"{key}.name")
        elif len(hits := [k for k in params.columns if k.endswith("." + key)]) == 1:
            resolved.append(hits[0])
        else:
            raise ReportError(f"no run of the sweep has a param {key!r}; "
                              f"params that vary: {', '.join(design_keys(params)) or 'none'}; "
                              f"all params: {', '.join(params.columns)}")
    return list(dict.fromkeys(resolved))
