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

import contextlib
import copy
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torchvision
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from . import diskcache
from .fastdata import DecodedImages, TensorLoader, content_key, trained_count
from .feature_scores import HeadInputs
from .models import ModelSpec, Preprocess, file_sha256
from .runtime import Loaders, Runtime
from .schema import FreezeBN
from .strategies import train_mode

VIEW_SEED = 0  # fixed, so that every run of a sweep can share the cached views
# The fold is exact algebra; in fp32 it moved the prefix output by 2e-7 to 1.1e-6 of max|output|
# (ResNet-18, MobileNetV3-Large, EfficientNet-Lite0, 224 px, trained-looking BN statistics).
FOLD_RTOL = 1e-5
# Under bf16 autocast the unfolded prefix itself is off by ~5e-3 to 2e-2 of max|output| (same
# models); the folded one was off by 0.8x to 1.2x that. A wrong fold is off by the output's size.
LOW_PRECISION_SLACK = 2.0


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
    if decoded is None:
        return model, None, CacheDecision(False, "needs the decode-once data (data.cache=true within its budget)"), None
    train_mode(model, settings.freeze_bn)  # decide in the mode the model trains in
    cut = split(model, spec)
    if isinstance(cut, str):
        return model, None, CacheDecision(False, cut), None
    views = settings.views or epochs
    evaluated = decoded.eval_splits()
    with torch.no_grad():
        per_image = cut.prefix(torch.zeros(1, 3, pp.crop, pp.crop, device=rt.device)).numel() * 4
    need = per_image * (views * len(decoded.train) + sum(map(len, evaluated))) / 2**20
    if need > settings.budget_mb:
        return model, None, CacheDecision(
            False, f"{need:.0f} MB of features exceed data.cache_budget_mb={settings.budget_mb}"), None
    # the selection split is evaluated like val: one center-crop pass, cached with val's
    together = evaluated[0] if len(evaluated) == 1 else DecodedImages.pack(
        [d.image(i) for d in evaluated for i in range(len(d))], torch.cat([d.targets for d in evaluated]))
    key = [spec.name, spec.arch, settings.weights_id, cut.at, len(cut.prefix), f"bf16={rt.bf16}",
           content_key(data.train.items, pp.resize, pp.interpolation),
           content_key([it for s in data.eval_splits() for it in s.items], pp.resize, pp.interpolation)]
    train_f, eval_f, source = features(cut.prefix, decoded.train, together, key, views, pp, settings.batch_size, rt,
                                       settings.cache_dir)
    evals, start = [], 0
    for d in evaluated:
        evals.append(FeatureLoader(eval_f[start:start + len(d)], d.targets, settings.batch_size, train=False))
        start += len(d)
    loaders = Loaders(FeatureLoader(train_f, decoded.train.targets, settings.batch_size, train=True, seed=seed), *evals)
    head = None
    if cut.at == "head":  # every model's pieces label the head "head" (models/pieces.py): the prefix gives its input
        select = evals[1] if len(evals) > 1 else None  # eval_splits(): val, then the selection split
        head = HeadInputs(entry_key(key, views, pp, rt), train_f[0], decoded.train.targets,
                          select.feats if select else None, select.targets if select else None)
    return cut.suffix, loaders, CacheDecision(True, (
        f"frozen prefix below {cut.at} run once ({source}); {views} augmented train views "
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


def _bn_replacement(bn: nn.BatchNorm2d) -> nn.Module | None:
    """What stays of a BatchNorm once its affine map lives in the conv before it."""
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    if type(bn) in _timm_types("BatchNormAct2d"):  # batch norm, then its own dropout and activation
        return nn.Sequential(bn.drop, bn.act)
    return None  # an unknown subclass may do more than normalize: leave it alone


def _foldable_conv(conv: nn.Module) -> bool:
    # A conv whose forward uses its weight as stored (timm's Conv2dSame only pads first);
    # e.g. weight-standardized convs transform the weight on every call and cannot take a fold.
    kind = getattr(type(conv), "plain_class", type(conv))  # a depthwise conv that trains in fp32 (runtime.py)
    return kind is nn.Conv2d or kind in _timm_types("Conv2dSame")


def _timm_types(*names: str) -> tuple[type, ...]:
    # A model holding timm layers has imported timm; do not pay its import (~0.7 s) otherwise.
    layers = sys.modules.get("timm.layers")
    return tuple(getattr(layers, n) for n in names if hasattr(layers, n)) if layers else ()


@torch.no_grad()
def fold_batchnorm(prefix: nn.Module, example: torch.Tensor,
                   autocast=contextlib.nullcontext) -> tuple[nn.Module, int]:
    """A copy of the frozen prefix with each eval-mode BatchNorm folded into the conv that feeds it.

    In eval mode BN is a fixed per-channel affine map, so conv -> BN equals one conv with
    scaled weights and a bias: the same function, one pass over the activations fewer
    (lite0 on the 2-core dev CPU: about 8 -> 6.5 ms per image). Pairs are found from the order in
    which modules run on `example`; the copy is only used if, run under `autocast` (a context
    factory: the one the cached pass runs under), it gives the prefix's own output on `example`
    (`fold_agrees`), else the prefix is returned unchanged.
    Returns (module to run, number of BatchNorms folded).
    """
    order: list[nn.Module] = []
    hooks = [m.register_forward_pre_hook(lambda m, args: order.append(m))
             for m in prefix.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    try:
        reference = prefix(example)
    finally:
        for h in hooks:
            h.remove()
    names = {m: n for n, m in prefix.named_modules()}
    pairs = [(names[c], names[b]) for c, b in zip(order, order[1:])
             if _foldable_conv(c) and isinstance(b, nn.BatchNorm2d) and not b.training and b.track_running_stats
             and c.out_channels == b.num_features and _bn_replacement(b) is not None]
    if not pairs:
        return prefix, 0
    folded = copy.deepcopy(prefix)
    for conv_name, bn_name in pairs:
        conv, bn = folded.get_submodule(conv_name), folded.get_submodule(bn_name)
        conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                                      bn.eps, bn.weight, bn.bias)
        _set(folded, bn_name, _bn_replacement(bn))
    folded.requires_grad_(False)
    with autocast():
        as_run, out = prefix(example), folded(example)
    if not fold_agrees(out.float(), reference, as_run.float()):
        return prefix, 0
    return folded, len(pairs)


def fold_agrees(folded_out: torch.Tensor, reference: torch.Tensor, unfolded_out: torch.Tensor) -> bool:
    """Whether the folded prefix computes the prefix's function, judged in the precision the pass runs.

    `reference`: the prefix in fp32; `folded_out` / `unfolded_out`: the folded and the original
    prefix under the pass's autocast (in fp32, `unfolded_out` is `reference` again). Accepted when
    max|folded - reference| <= FOLD_RTOL * max|reference| + LOW_PRECISION_SLACK * max|unfolded - reference|:
    fp32 rounding of the fold, plus the rounding the pass already accepts in its own precision.
    """
    if folded_out.shape != reference.shape:
        return False
    scale = reference.abs().max()
    own_rounding = (unfolded_out - reference).abs().max()
    error = (folded_out - reference).abs().max()
    return bool(error <= FOLD_RTOL * scale + LOW_PRECISION_SLACK * own_rounding)


def _set(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


@torch.no_grad()
def _run_prefix(prefix: nn.Module, loader: TensorLoader, n: int, batch_size: int, autocast) -> torch.Tensor:
    out = []
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(start + batch_size, n))
        with autocast():
            # autocast leaves them in bf16; stored in fp32, as the budget counts them and the scores read them
            out.append(prefix(loader.batch(idx)).float())
    return torch.cat(out)


_MEMO: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


def features(prefix: nn.Module, train: DecodedImages, val: DecodedImages, key_parts: list[str], views: int,
             pp: Preprocess, batch_size: int, rt: Runtime, cache_dir: str | None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(train features [V, N, ...], val features [N, ...], where they came from).

    `key_parts` must identify everything the prefix output depends on besides what this
    function adds itself (views, preprocessing, dtype rules). With `cache_dir`, the
    parallel jobs of a sweep that need the same features compute them once: the first holds
    the entry's file lock while it computes, the others wait and load the file.
    """
    key = entry_key(key_parts, views, pp, rt)
    if key in _MEMO:
        tr, va = _MEMO[key]
        return tr.to(rt.device), va.to(rt.device), "memory"
    path = Path(cache_dir) / f"features-{key}.pt" if cache_dir else None
    with diskcache.locked(path, "the frozen prefix's features"):
        saved = diskcache.load(path, lambda saved: _check(saved, key, views, len(train), len(val)))
        if saved is not None:
            _remember(key, saved["train"], saved["val"])
            return saved["train"].to(rt.device), saved["val"].to(rt.device), "disk"
        tr, va, folded = _compute(prefix, train, val, views, pp, batch_size, rt)
        host = {"train": tr.cpu(), "val": va.cpu()}  # one device-to-host copy for the disk and the memo
        diskcache.save({"key": key, **host}, path)
    _remember(key, host["train"], host["val"])
    return tr, va, f"computed, {folded} BatchNorms folded into their convs" if folded else "computed"


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


def _check(saved: dict, key: str, views: int, n_train: int, n_val: int) -> str | None:
    """What is wrong with a loaded entry, if anything."""
    if saved.get("key") != key:
        return "was not saved for these inputs (its key differs or is missing)"
    tr, va = saved.get("train"), saved.get("val")
    if not (isinstance(tr, torch.Tensor) and isinstance(va, torch.Tensor)):
        return "lacks the train or val features"
    if tr.shape[:2] != (views, n_train) or va.shape[:1] != (n_val,) or tr.shape[2:] != va.shape[1:]:
        return f"holds features of shape {tuple(tr.shape)} / {tuple(va.shape)}, not [{views}, {n_train}, ...] / [{n_val}, ...]"
    if not (tr.dtype == va.dtype == torch.float32):  # a bf16 pass's features were once stored as bf16
        return f"holds {tr.dtype} / {va.dtype} features, not float32"
    return None


def _compute(prefix, train, val, views: int, pp: Preprocess, batch_size: int,
             rt: Runtime) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Run the prefix (BatchNorm folded) over `views` augmented passes of train and one plain pass of val."""
    prefix.to(rt.device)
    example = torch.randn(2, 3, pp.crop, pp.crop, generator=torch.Generator().manual_seed(0)).to(rt.device)
    # checked under the pass's own autocast: a fold that is exact in fp32 must also hold in bf16
    prefix, folded = fold_batchnorm(prefix, example.contiguous(memory_format=torch.channels_last)
                                    if rt.channels_last else example, rt.autocast)
    aug = TensorLoader(train, batch_size, True, pp, VIEW_SEED, rt)
    tr = torch.stack([_run_prefix(prefix, aug, len(train), batch_size, rt.autocast) for _ in range(views)])
    plain = TensorLoader(val, batch_size, False, pp, rt=rt)
    return tr, _run_prefix(prefix, plain, len(val), batch_size, rt.autocast), folded


class FeatureLoader:
    """Batches (features, y) from cached features; train: reshuffled each epoch, next view each epoch, a
    trailing batch of one dropped (`fastdata.trained_count`: what trains may hold BatchNorm)."""

    def __init__(self, feats: torch.Tensor, targets: torch.Tensor, batch_size: int, train: bool, seed: int = 0):
        self.feats, self.targets = feats, targets.to(feats.device)
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
            view = self.feats[self.epoch % len(self.feats)]
            order = torch.randperm(n, generator=self.generator).to(self.feats.device)
        else:
            view, order = self.feats, torch.arange(n, device=self.feats.device)
        self.epoch += 1
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            idx = order[start:start + self.batch_size]
            yield view[idx], self.targets[idx]
