"""Feature cache: run a frozen prefix of the network once per sweep, not once per step.

When everything below the trainable part is frozen and deterministic (BatchNorm in eval
mode, no active dropout or stochastic depth), the prefix is a pure function of its input.
Probe's prefix is the whole backbone; partial's is every stage below the first unfrozen one.
Its outputs are computed once per (model, weights, split point, data, preprocessing, views)
and reused across epochs, seeds and learning rates (in memory within a process, and on disk
across the processes of a parallel sweep, where one computes an entry and the others wait for it).

Train augmentation makes the prefix output depend on the random crop, so the cache holds a
fixed number of augmented views per training image, drawn with a fixed seed: epoch e trains
on view (e - 1) mod V. Runs with different seeds therefore share their augmented views (their
head init and batch order still differ). Every run says so in its `tlsweep.fast.features` tag.

The pass itself runs a copy of the prefix with each BatchNorm folded into the conv before it
(`fold_batchnorm`): the same function to float rounding, one memory pass fewer per layer. It is
checked the way the pass runs (fp32, or bf16 autocast) before use: see `fold_agrees`. Features are stored in
fp32 whatever the pass ran in, and the key holds the precision, so fp32 and bf16 features never mix.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torchvision
from torch import nn
from torchvision.transforms.v2 import functional as F

from ..data import diskcache
from ..data.decoded import (ChainedImages, StreamedImages, augmented, centered, content_key, draw_augmentation,
                            trained_count)
from .scores import HeadInputs
from .fold import FOLD_RTOL, LOW_PRECISION_SLACK, _timm_types, fold_agrees, fold_batchnorm  # noqa: F401
from ..models import ModelSpec, Preprocess, file_sha256
from ..progress import PassProgress
from ..runtime import Loaders, Runtime
from ..config.schema import FreezeBN
from ..training.strategies import train_mode

VIEW_SEED = 0  # fixed, so that every run of a sweep can share the cached views


def _stochastic_types() -> tuple[type, ...]:
    return (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm, torchvision.ops.StochasticDepth,
            *_timm_types("DropPath"))


@dataclass(frozen=True)
class CacheDecision:
    """Whether a segment of a run trains on cached features, and why: `str()` is the run's tag."""

    on: bool
    why: str

    def __str__(self) -> str:
        return f"{'on' if self.on else 'off'}: {self.why}"


def weights_id(spec: ModelSpec, weights, seed: int) -> str:
    """What the frozen prefix's parameters are, for the feature cache's key."""
    if weights is None:  # a random init differs per seed, so its features do too
        return f"random-init-seed{seed}"
    if str(weights).upper() == "DEFAULT":
        return spec.weights_name
    return file_sha256(weights)


@dataclass(frozen=True)
class CacheSettings:
    """What a run's config says about its feature cache."""

    views: int | None  # strategy.feature_views (None: one per epoch)
    budget_mb: float  # data.cache_budget_mb
    batch_size: int
    cache_dir: str | None
    freeze_bn: FreezeBN  # the mode the model trains in decides what is frozen and deterministic
    weights_id: str  # what the frozen parameters are (checkpoint, or the seed of a random init)

    @classmethod
    def of(cls, cfg, spec: ModelSpec, weights) -> "CacheSettings":
        return cls(cfg.strategy.feature_views, cfg.data.cache_budget_mb, cfg.batch_size, cfg.cache_dir,
                   cfg.strategy.freeze_bn, weights_id(spec, weights, cfg.seed))


def cached_loaders(model: nn.Module, spec: ModelSpec, data, decoded, pp: Preprocess, rt: Runtime,
                   settings: CacheSettings, epochs: int, seed: int):
    """(what trains, (train, val, select or None) loaders, decision, head inputs) with the frozen prefix run
    once, when that is valid; else (the model, None, the decision saying why not, None). `epochs`: how many
    epochs these loaders serve; `data` (ImageData) and `decoded` (data.Decoded) name the same splits. Head
    inputs: when the prefix ends right below the head, its cached features as the transferability scores
    read them (`feature_scores.HeadInputs`); else None."""
    train_mode(model, settings.freeze_bn)  # decide in the mode the model trains in
    cut = split(model, spec)
    if isinstance(cut, str):
        return model, None, CacheDecision(False, cut), None
    views = settings.views or epochs
    evaluated = decoded.eval_splits()
    with torch.no_grad():
        per_image = cut.prefix(torch.zeros(1, 3, pp.crop, pp.crop, device=rt.device)).numel() * 4
    need = per_image * (views * len(decoded.train) + sum(map(len, evaluated))) / 2**20
    mapped = need > settings.budget_mb  # then on disk, read back a batch at a time
    if mapped and settings.cache_dir is None:
        return model, None, CacheDecision(False, f"{need:.0f} MB of features exceed data.cache_budget_mb="
                                                 f"{settings.budget_mb}, and cache_dir=null leaves no disk to keep "
                                                 "them on"), None
    # the selection split is evaluated like val: one center-crop pass, cached with val's
    together = evaluated[0] if len(evaluated) == 1 else ChainedImages(evaluated)
    key = [spec.name, spec.arch, settings.weights_id, cut.at, len(cut.prefix), f"bf16={rt.bf16}",
           content_key(data.train.items, pp.resize, pp.interpolation),
           content_key([it for s in data.eval_splits() for it in s.items], pp.resize, pp.interpolation)]
    train_f, eval_f, source = features(cut.prefix, decoded.train, together, key, views, pp, settings.batch_size, rt,
                                       settings.cache_dir, mapped)
    evals, start = [], 0
    for d in evaluated:
        evals.append(FeatureLoader(eval_f[start:start + len(d)], d.targets, settings.batch_size, train=False,
                                   device=rt.device))
        start += len(d)
    loaders = Loaders(FeatureLoader(train_f, decoded.train.targets, settings.batch_size, train=True, seed=seed,
                                    device=rt.device), *evals)
    head = None
    if cut.at == "head":  # every model's pieces label the head "head" (models/pieces.py): the prefix gives its input
        select = evals[1] if len(evals) > 1 else None  # eval_splits(): val, then the selection split
        head = HeadInputs(entry_key(key, views, pp, rt), train_f[0], decoded.train.targets,
                          select.feats if select else None, select.targets if select else None)
    where = (f", {need:,.1f} MB on disk, read a batch at a time: over data.cache_budget_mb={settings.budget_mb}" if mapped
             else "")
    streamed = " from the image files, streamed" if isinstance(decoded.train, StreamedImages) else ""
    return cut.suffix, loaders, CacheDecision(True, (
        f"frozen prefix below {cut.at} run once{streamed} ({source}){where}; {views} augmented train views "
        f"(seed {VIEW_SEED}) shared across runs; epoch e uses view (e-1) mod {views}")), head


@dataclass
class Split:
    prefix: nn.Sequential  # frozen, deterministic: its outputs are cached
    suffix: nn.Sequential  # what trains (shares its modules with the model)
    at: str  # name of the first suffix piece, for the record


def _active(module: nn.Module, noisy: tuple[type, ...]) -> bool:
    """Random or state-updating right now: a training-mode BatchNorm, dropout or drop-path with p > 0."""
    if not (isinstance(module, noisy) and module.training):
        return False
    p = getattr(module, "p", getattr(module, "drop_prob", None))
    return p is None or p > 0


def split(model: nn.Module, spec: ModelSpec) -> Split | str:
    """Cut the model below its first trainable piece. Returns the reason when it cannot.

    Call with the model in the mode it trains in (model.train(), then frozen_bn_eval).
    A model that is no chain of its stages (`spec.chain` false) has two pieces, backbone and head,
    so only a fully frozen backbone (probe, lpft's probe phase) is cut.
    """
    pieces = spec.pieces(model)
    trainable = [any(p.requires_grad for p in m.parameters()) for _, m in pieces]
    k = trainable.index(True)
    noisy = _stochastic_types()
    # parameter-free dropout right below the trainable part acts on its input: keep it trainable-side
    while k > 0 and not list(pieces[k - 1][1].parameters()) and any(
            isinstance(m, noisy) for m in pieces[k - 1][1].modules()):
        k -= 1
    if k == 0:
        if not spec.chain:
            return (f"{spec.name} ({type(model).__name__}) is not a chain of its stages, so only a fully "
                    f"frozen backbone is cached")
        return "nothing is frozen below the trainable part"
    prefix = nn.Sequential(*[m for _, m in pieces[:k]])
    inner = [m for _, piece in pieces[:k]
             for m in (piece.inner_modules() if hasattr(piece, "inner_modules") else piece.modules())]
    active = sorted({type(m).__name__ for m in inner if _active(m, noisy)})
    if active:
        return (f"the frozen prefix has layers that are random or update state in training mode ({', '.join(active)}): "
                f"its output is not a pure function of the image (strategy.freeze_bn=frozen fixes BatchNorm)")
    at = next((n for n, _ in pieces[k:] if n), type(pieces[k][1]).__name__)  # a labelled piece: a stage, the head
    return Split(prefix, nn.Sequential(*[m for _, m in pieces[k:]]), at)


_MEMO: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


def features(prefix: nn.Module, train, val, key_parts: list[str], views: int, pp: Preprocess, batch_size: int,
             rt: Runtime, cache_dir: str | None, mapped: bool = False) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(train features [V, N, ...], val features [N, ...], where they came from).

    `train`, `val`: image sources (`fastdata.DecodedImages`, `StreamedImages`, `ChainedImages`). `key_parts` must
    identify everything the prefix output depends on besides what this function adds itself (views,
    preprocessing, dtype rules). With `cache_dir`, the parallel jobs of a sweep that need the same features
    compute them once: the first holds the entry's file lock while it computes, the others wait and load the
    file. `mapped`: the train features go to a file beside the entry (`FeatureFile`) and are read back a batch at
    a time (they exceed the budget); each batch moves to the device.
    """
    key = entry_key(key_parts, views, pp, rt)
    if key in _MEMO:
        tr, va = _MEMO[key]
        return tr if isinstance(tr, FeatureFile) else tr.to(rt.device), va.to(rt.device), "memory"
    path = Path(cache_dir) / f"features-{key}.pt" if cache_dir else None
    with diskcache.locked(path, "the frozen prefix's features"):
        saved = diskcache.load(path, lambda saved: _check(saved, key, views, len(train), len(val), path))
        if saved is not None:
            _remember(key, saved["train"], saved["val"])
            tr = saved["train"]
            return tr if isinstance(tr, FeatureFile) else tr.to(rt.device), saved["val"].to(rt.device), "disk"
        array = Path(f"{path}.train.f32") if mapped else None
        tr, va, folded = _compute(prefix, train, val, views, pp, batch_size, rt, array)
        host = {"train": tr if mapped else tr.cpu(), "val": va.cpu()}  # one device-to-host copy for disk and memo
        diskcache.save({"key": key, "val": host["val"], "train": None if mapped else host["train"],
                        "mapped": array.name if mapped else None, "shape": list(tr.shape) if mapped else None},
                       path)
    _remember(key, host["train"], host["val"])
    return tr, va, f"computed, {folded} BatchNorms folded into their convs" if folded else "computed"


class FeatureFile:
    """Train features [V, N, ...] as raw float32 in a file beside the cache entry, written and read a batch of rows at
    a time (pwrite, pread), never mapped: the process holds a batch, and the file's pages stay the page cache's,
    outside its resident memory, which a mapping would count as they are touched."""

    def __init__(self, path: Path, shape: tuple[int, ...], write: bool = False):
        self.path, self.shape, self.dtype = path, tuple(shape), torch.float32
        self.row = int(np.prod(self.shape[2:], dtype=np.int64))  # floats per image
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT if write else os.O_RDONLY)
        if write:
            os.ftruncate(self.fd, 4 * int(np.prod(self.shape, dtype=np.int64)))
        elif os.fstat(self.fd).st_size != 4 * int(np.prod(self.shape, dtype=np.int64)):
            size = os.fstat(self.fd).st_size
            os.close(self.fd)
            raise ValueError(f"holds {size} bytes, not the {4 * int(np.prod(self.shape))} of {self.shape} float32")

    def __len__(self) -> int:
        return self.shape[0]

    def __del__(self) -> None:
        try:
            os.close(self.fd)
        except (OSError, AttributeError):
            pass

    def write(self, view: int, start: int, rows: torch.Tensor) -> None:
        data = rows.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
        os.pwrite(self.fd, data, 4 * self.row * (view * self.shape[1] + start))

    def rows(self, view: int, idx: torch.Tensor) -> torch.Tensor:
        """Features of images `idx` in view `view`, in the order of `idx`."""
        order = torch.argsort(idx)
        out = np.empty((len(idx), self.row), dtype=np.float32)
        base = view * self.shape[1]
        for k, i in zip(order.tolist(), idx[order].tolist()):
            out[k] = np.frombuffer(os.pread(self.fd, 4 * self.row, 4 * self.row * (base + i)), dtype=np.float32)
        return torch.from_numpy(out).view(len(idx), *self.shape[2:])

    def __getitem__(self, view: int) -> torch.Tensor:
        """A whole view in memory (the transferability scores read view 0)."""
        count = self.shape[1] * self.row
        data = np.fromfile(self.path, dtype=np.float32, count=count, offset=4 * count * view)
        return torch.from_numpy(data).view(*self.shape[1:])

    def finish(self, final: Path) -> None:
        """On disk whole, then under its final name: a reader never opens half of one."""
        os.fsync(self.fd)
        os.replace(self.path, final)
        self.path = final


def entry_key(key_parts: list[str], views: int, pp: Preprocess, rt: Runtime) -> str:
    """The cache entry's key: `key_parts` and what `features` adds itself (views, preprocessing, dtype rules).
    Entries already on disk are found by it: a change to it orphans them (tests/test_scores_run.py holds one)."""
    h = hashlib.sha256()
    for part in [*key_parts, views, VIEW_SEED, pp.crop, tuple(pp.mean), tuple(pp.std), pp.interpolation,
                 rt.device.type, torch.__version__, "bn-folded"]:
        h.update(f"{part}|".encode())
    return h.hexdigest()


def _remember(key: str, tr: torch.Tensor, va: torch.Tensor) -> None:
    _MEMO.clear()  # one entry: a sweep reuses one prefix at a time, and features can be large
    _MEMO[key] = (tr, va)


def _check(saved: dict, key: str, views: int, n_train: int, n_val: int, path: Path | None = None) -> str | None:
    """What is wrong with a loaded entry, if anything. A mapped entry's train features are opened here."""
    if saved.get("key") != key:
        return "was not saved for these inputs (its key differs or is missing)"
    if saved.get("mapped") and path is not None:
        try:
            saved["train"] = FeatureFile(path.parent / saved["mapped"], tuple(saved["shape"]))
        except (OSError, ValueError, KeyError, TypeError) as err:
            return f"has its train features in {saved['mapped']}, which cannot be read ({err})"
    tr, va = saved.get("train"), saved.get("val")
    if not (isinstance(tr, (torch.Tensor, FeatureFile)) and isinstance(va, torch.Tensor)):
        return "lacks the train or val features"
    if tr.shape[:2] != (views, n_train) or va.shape[:1] != (n_val,) or tr.shape[2:] != va.shape[1:]:
        return f"holds features of shape {tuple(tr.shape)} / {tuple(va.shape)}, not [{views}, {n_train}, ...] / [{n_val}, ...]"
    if not (tr.dtype == va.dtype == torch.float32):  # stored in fp32 whatever the pass ran in
        return f"holds {tr.dtype} / {va.dtype} features, not float32"
    return None


@torch.no_grad()
def _compute(prefix, train, val, views: int, pp: Preprocess, batch_size: int, rt: Runtime,
             array: Path | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Run the prefix (BatchNorm folded) over `views` augmented passes of train and one plain pass of val.

    Each batch of train images is read once and serves every view. The crop boxes and flips are drawn first, in
    the order one pass per view would draw them (view after view, batch after batch, from one generator seeded
    `VIEW_SEED`), so the views are the same whether the images come from memory or stream from their files.
    `array`: write the train features to this file (`FeatureFile`) instead of memory."""
    prefix.to(rt.device)
    example = torch.randn(2, 3, pp.crop, pp.crop, generator=torch.Generator().manual_seed(0)).to(rt.device)
    # checked under the pass's own autocast: a fold that is exact in fp32 must also hold in bf16
    prefix, folded = fold_batchnorm(prefix, example.contiguous(memory_format=torch.channels_last)
                                    if rt.channels_last else example, rt.autocast)
    generator = torch.Generator().manual_seed(VIEW_SEED)
    batches = [torch.arange(s, min(s + batch_size, len(train))) for s in range(0, len(train), batch_size)]
    drawn = [[draw_augmentation(train.sizes[idx], generator) for idx in batches] for _ in range(views)]
    progress = PassProgress(f"feature pass, {views} view(s) of {len(train):,} + {len(val):,} images",
                            len(train) + len(val))
    tr = None
    for b, idx in enumerate(batches):
        images = [im.to(rt.device, non_blocking=True) for im in train.images(idx)]
        for v in range(views):
            y = _forward(prefix, augmented(images, *drawn[v][b], pp.crop, pp.interpolation), pp, rt)
            if tr is None:
                shape = (views, len(train), *y.shape[1:])
                tr = FeatureFile(Path(f"{array}.tmp"), shape, write=True) if array else y.new_empty(shape)
            if array:
                tr.write(v, int(idx[0]), y)
            else:
                tr[v, idx[0]:idx[-1] + 1] = y
        progress.step(len(idx))
    va = []
    for s in range(0, len(val), batch_size):
        idx = torch.arange(s, min(s + batch_size, len(val)))
        va.append(_forward(prefix, centered([im.to(rt.device) for im in val.images(idx)], pp.crop), pp, rt))
        progress.step(len(idx))
    progress.done()
    if array:
        tr.finish(array)
    return tr, torch.cat(va), folded


def _forward(prefix: nn.Module, x: torch.Tensor, pp: Preprocess, rt: Runtime) -> torch.Tensor:
    x = F.normalize(x, list(pp.mean), list(pp.std))
    if rt.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with rt.autocast():
        # autocast leaves them in bf16; stored in fp32, as the budget counts them and the scores read them
        return prefix(x).float()


class FeatureLoader:
    """Batches (features, y) from cached features; train: reshuffled each epoch, next view each epoch, a
    trailing batch of one dropped (`fastdata.trained_count`: what trains may hold BatchNorm)."""

    def __init__(self, feats: torch.Tensor, targets: torch.Tensor, batch_size: int, train: bool, seed: int = 0,
                 device: torch.device | None = None):
        """`feats`: a tensor, or a `FeatureFile` (train only). `device`: where batches go; None: where `feats` are."""
        self.device = device or feats.device
        self.feats, self.targets = feats, targets.to(self.device)
        self.batch_size, self.train = batch_size, train
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self.dataset = targets  # len(loader.dataset) = number of images, as with a DataLoader

    def __len__(self) -> int:
        n = len(self.targets)
        return -(-(trained_count(n, self.batch_size) if self.train else n) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.targets)
        if self.train:
            v = self.epoch % len(self.feats)
            order = torch.randperm(n, generator=self.generator)
            rows = ((lambda idx: self.feats.rows(v, idx)) if isinstance(self.feats, FeatureFile)
                    else (lambda idx, view=self.feats[v]: view[idx.to(view.device)]))
        else:
            order = torch.arange(n)
            rows = lambda idx: self.feats[idx.to(self.feats.device)]  # noqa: E731
        self.epoch += 1
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            idx = order[start:start + self.batch_size]
            yield rows(idx).to(self.device, non_blocking=True), self.targets[idx.to(self.device)]
