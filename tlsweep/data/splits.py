"""What a dataset is once loaded, whatever its source: `ImageData` (class names, a train split, the scored
split, an optional selection split, and where each came from), and the one way tlsweep carves a split
out of another (stratified, with a fixed seed). The bottom of the data modules: `data` (the datasets it
reads itself, the checks and loaders) and `sources` (datasets by name) both build on it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..config.errors import DataError

# The held-out split of a folder without val/ is the same for every run and seed of a study.
SPLIT_SEED = 0
# The selection split too: every run of a sweep (any seed, any LR) is chosen on the same images.
SELECT_SEED = SPLIT_SEED


@dataclass
class Split:
    items: list  # file paths (str) or uint8 [3,H,W] tensors
    targets: list[int]


@dataclass
class ImageData:
    name: str
    classes: list[str]
    train: Split
    val: Split  # the scored split: what final_<scored>_acc is measured on
    val_from: str = "its own val split"  # where val came from, for the run's tags
    # The scored split's real name: "val", or "test" for a dataset whose official val split selects
    # (then `select`) and whose test split scores; the run's metrics carry it (final_test_acc).
    scored: str = "val"
    select: Split | None = None  # held out of train to choose hyperparameters on (data.select_fraction)
    select_from: str = "none (data.select_fraction=null)"  # for the run's tags
    skipped: list[str] = field(default_factory=list)  # unreadable image files left out (data.bad_images=skip)

    def eval_splits(self) -> list[Split]:
        """val, then the selection split when there is one: the splits evaluated, never trained on."""
        return [self.val] + ([self.select] if self.select is not None else [])


def stratified_holdout(split: Split, fraction: float, seed: int = SPLIT_SEED, *, classes: list[str] | None = None,
                       key: str = "the held-out fraction", where: str = "the split") -> tuple[Split, Split]:
    """(kept, held out): `fraction` of each class held out, chosen with a fixed seed (not the
    run's), so every run of a sweep holds out the same images. `classes`, `key` (the config key that asked)
    and `where` (the folder or split) name what a refusal is about."""
    from sklearn.model_selection import train_test_split

    if not 0 < fraction < 1:
        raise DataError(f"a held-out fraction must be in (0, 1), got {fraction}")
    counts = np.bincount(np.asarray(split.targets, dtype=np.int64), minlength=len(classes or ()))
    name = lambda c: repr(classes[c]) if classes else str(c)  # noqa: E731
    # scikit-learn's stratified split needs each class on both sides, and at least one held-out image per class
    few = [(name(c), int(n)) for c, n in enumerate(counts) if 0 < n < 2]
    if few:
        listed = ", ".join(f"class {c} has {n} image" for c, n in few[:5])
        listed += f" (and {len(few) - 5} more)" if len(few) > 5 else ""
        raise DataError(f"{listed} in {where}; {key}={fraction} needs at least 2 per class (one to train on, one to "
                        "hold out): add images to it, or remove the class")
    n, present = len(split.items), int((counts > 0).sum())
    held = math.ceil(fraction * n)  # as scikit-learn rounds
    kept = n - held
    if held < present or kept < present:
        side, fix = (f"holds out {held}", "raise") if held < present else (f"keeps {kept} to train on", "lower")
        raise DataError(f"{key}={fraction} of the {n} images in {where} {side}, fewer than their {present} classes "
                        f"(each needs one on both sides): {fix} {key}, or add images")
    idx = np.arange(n)
    try:
        keep, held_out = train_test_split(idx, test_size=fraction, stratify=split.targets, random_state=seed)
    except ValueError as err:  # what the checks above do not foresee
        raise DataError(f"cannot hold out {key}={fraction} of every class in {where}: {err}") from None
    pick = lambda ids: Split([split.items[i] for i in sorted(ids)], [split.targets[i] for i in sorted(ids)])  # noqa: E731
    return pick(keep), pick(held_out)


def why(err: Exception) -> str:
    """An exception as one line for a message naming a file: "OSError: image file is truncated"."""
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")
