"""Transferability scores of a run's frozen features, read before any training: LogME, k-NN and
nearest-class-mean accuracy (`tlsweep.scores`), computed once per feature-cache entry and kept beside it.

They depend only on what the cached features depend on (weights, data, preprocessing), so the runs of a
sweep that share an entry (seeds, learning rates) share its scores: the first computes them, the others
load them (`scores-<key>.pt` beside `features-<key>.pt`, same key; in memory with cache_dir=null). A feature
entry saved before scores existed still loads as it is: its scores are computed on first use.

Which features: the head's input (pre-logits), read only when the cached prefix ends right below the head
(probe, lpft's probe phase, score). Train: the cache's first augmented view, the one the head trains on in
epoch 1, not the center-crop train features the LogME paper scores: the cache holds no center-crop pass of
train, and one would cost a forward pass over the training set (seconds, where the scores take
milliseconds). So LogME and the leave-one-out k-NN see RandomResizedCrop views, whose features are noisier
than center crops. k-NN and NCC are scored on the selection split (center crops, as it is evaluated) when
the data has one, else leave-one-out on train; the scored split (val or test) is never read.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data import diskcache
from . import measures as scores
from ..config.keys import SCORE_PREFIX as PREFIX, SCORE_SECONDS_PREFIX as SECONDS_PREFIX, SCORES as NAMES


@dataclass(frozen=True)
class HeadInputs:
    """The cached features below the head, as the scores read them."""

    key: str  # the feature-cache entry's key: the scores are stored under it
    train: torch.Tensor  # [N, D]: the first augmented view of every training image
    train_y: torch.Tensor
    select: torch.Tensor | None = None  # [M, D], center crops; None: the data has no selection split
    select_y: torch.Tensor | None = None


@dataclass(frozen=True)
class Scores:
    values: dict[str, float]
    seconds: dict[str, float]  # each score's cost when it was computed: a run that loads them pays none of it
    source: str  # computed, disk or memory
    scored_on: str  # where k-NN and NCC were scored

    def metrics(self) -> dict[str, float]:
        """`score/<name>` and `score_seconds/<name>`, as a run logs them."""
        return {**{PREFIX + k: v for k, v in self.values.items()},
                **{SECONDS_PREFIX + k: v for k, v in self.seconds.items()}}

    def __str__(self) -> str:  # the run's `tlsweep.scores` tag
        return (f"{self.source}; on the pre-logits: train's first augmented view (LogME), k-NN (k={scores.KNN_K}) "
                f"and NCC scored on {self.scored_on}")


def compute(train_f: np.ndarray, train_y: np.ndarray, select_f: np.ndarray | None = None,
            select_y: np.ndarray | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """(values, seconds) of the three scores; k-NN and NCC on the selection split when given, else
    leave-one-out on train."""
    run = {"logme": lambda: scores.logme(train_f, train_y),  # looked up per call: tests count the calls
           "knn_acc": lambda: scores.knn_acc(train_f, train_y, select_f, select_y),
           "ncc_acc": lambda: scores.ncc_acc(train_f, train_y, select_f, select_y)}
    values, seconds = {}, {}
    for name, fn in run.items():
        t0 = time.perf_counter()
        values[name] = float(fn())
        seconds[name] = time.perf_counter() - t0
    return values, seconds


_MEMO: dict[str, tuple[dict[str, float], dict[str, float]]] = {}  # a few floats per entry: all kept


def of(inputs: HeadInputs, cache_dir: str | None) -> Scores:
    """The scores of these features: from memory, from the file beside the feature entry, or computed (and
    saved there, under the entry's file lock, so that the parallel jobs of a sweep compute them once)."""
    scored_on = "the selection split" if inputs.select is not None else "train, leave-one-out"
    if inputs.key in _MEMO:
        return Scores(*_MEMO[inputs.key], "memory", scored_on)
    path = Path(cache_dir) / f"scores-{inputs.key}.pt" if cache_dir else None
    with diskcache.locked(path, "the transferability scores"):
        saved = diskcache.load(path, lambda saved: _check(saved, inputs.key))
        if saved is not None:
            source = "disk"
            values, seconds = ({k: float(v) for k, v in saved[part].items()} for part in ("values", "seconds"))
        else:
            source = "computed"
            values, seconds = compute(*(_numpy(t) for t in (inputs.train, inputs.train_y, inputs.select,
                                                              inputs.select_y)))
            diskcache.save({"key": inputs.key, "values": values, "seconds": seconds}, path)
    _MEMO[inputs.key] = (values, seconds)
    return Scores(values, seconds, source, scored_on)


def _numpy(t: torch.Tensor | None) -> np.ndarray | None:
    if t is None:
        return None
    t = t.detach().cpu()
    return (t.float() if t.is_floating_point() else t).reshape(len(t), -1).numpy() if t.ndim > 1 else t.numpy()


def _check(saved: dict, key: str) -> str | None:
    """What is wrong with a loaded entry, if anything."""
    if saved.get("key") != key:
        return "was not saved for these inputs (its key differs or is missing)"
    for part in ("values", "seconds"):
        got = saved.get(part)
        if not isinstance(got, dict) or set(got) != set(NAMES):
            return f"lacks the {part} of {', '.join(NAMES)}"
    return None
