"""Feature cache: run a frozen prefix of the network once per sweep, not once per step.

When everything below the trainable part is frozen and deterministic (BatchNorm in eval
mode, no active dropout or stochastic depth), the prefix is a pure function of its input.
Probe's prefix is the whole backbone; partial's is every stage below the first unfrozen one.
Its outputs are computed once per (model, weights, split point, data, preprocessing, views)
and reused across epochs, seeds and learning rates (in memory within a process, and on disk
across the processes of a parallel sweep).

Train augmentation makes the prefix output depend on the random crop, so the cache holds a
fixed number of augmented views per training image, drawn with a fixed seed: epoch e trains
on view (e - 1) mod V. Runs with different seeds therefore share their augmented views (their
head init and batch order still differ). Every run says so in its `tlsweep.fast.features` tag.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torchvision
from torch import nn

from .fastdata import DecodedImages, TensorLoader
from .models import ModelSpec

VIEW_SEED = 0  # fixed, so that every run of a sweep can share the cached views


def _stochastic_types() -> tuple[type, ...]:
    types = [nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm, torchvision.ops.StochasticDepth]
    try:
        from timm.layers import DropPath

        types.append(DropPath)
    except ImportError:
        pass
    return tuple(types)


@dataclass
class Split:
    prefix: nn.Sequential  # frozen, deterministic: its outputs are cached
    suffix: nn.Sequential  # what trains (shares its modules with the model)
    at: str  # name of the first suffix piece, for the record


def split(model: nn.Module, spec: ModelSpec) -> Split | str:
    """Cut the model below its first trainable piece. Returns the reason when it cannot.

    Call with the model in the mode it trains in (model.train(), then frozen_bn_eval).
    """
    if spec.pieces is None:
        return f"{spec.name} is not a plain chain of stages"
    pieces = spec.pieces(model)
    trainable = [any(p.requires_grad for p in m.parameters()) for _, m in pieces]
    k = trainable.index(True)
    noisy = _stochastic_types()
    # parameter-free dropout right below the trainable part acts on its input: keep it trainable-side
    while k > 0 and not list(pieces[k - 1][1].parameters()) and any(
            isinstance(m, noisy) for m in pieces[k - 1][1].modules()):
        k -= 1
    if k == 0:
        return "nothing is frozen below the trainable part"
    prefix = nn.Sequential(*[m for _, m in pieces[:k]])
    active = sorted({type(m).__name__ for m in prefix.modules() if isinstance(m, noisy) and m.training})
    if active:
        return (f"the frozen prefix has layers that are random or update state in training mode ({', '.join(active)}): "
                f"its output is not a pure function of the image (strategy.freeze_bn=true fixes BatchNorm)")
    names = [n or type(m).__name__ for n, m in pieces[k:]]
    return Split(prefix, nn.Sequential(*[m for _, m in pieces[k:]]), names[0])


@torch.no_grad()
def _run_prefix(prefix: nn.Module, loader: TensorLoader, n: int, batch_size: int, autocast) -> torch.Tensor:
    out = []
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(start + batch_size, n))
        with autocast():
            out.append(prefix(loader.batch(idx)))
    return torch.cat(out)


_MEMO: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


def features(prefix: nn.Module, train: DecodedImages, val: DecodedImages, key_parts: list[str], views: int,
             crop: int, mean, std, batch_size: int, device: torch.device, autocast, cache_dir: str | None,
             channels_last: bool = False, interpolation=None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(train features [V, N, ...], val features [N, ...], where they came from).

    `key_parts` must identify everything the prefix output depends on besides what this
    function adds itself (views, crop, normalization, dtype rules).
    """
    h = hashlib.sha256()
    for part in [*key_parts, views, VIEW_SEED, crop, tuple(mean), tuple(std), interpolation, device.type,
                 torch.__version__]:
        h.update(f"{part}|".encode())
    key = h.hexdigest()
    if key in _MEMO:
        tr, va = _MEMO[key]
        return tr.to(device), va.to(device), "memory"
    path = Path(cache_dir) / f"features-{key}.pt" if cache_dir else None
    if path is not None and path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        _MEMO[key] = (saved["train"], saved["val"])
        return saved["train"].to(device), saved["val"].to(device), "disk"
    prefix.to(device)
    aug = TensorLoader(train, batch_size, train=True, crop=crop, mean=mean, std=std, seed=VIEW_SEED, device=device,
                       channels_last=channels_last, interpolation=interpolation)
    tr = torch.stack([_run_prefix(prefix, aug, len(train), batch_size, autocast) for _ in range(views)])
    plain = TensorLoader(val, batch_size, train=False, crop=crop, mean=mean, std=std, device=device,
                         channels_last=channels_last)
    va = _run_prefix(prefix, plain, len(val), batch_size, autocast)
    _MEMO.clear()  # one entry: a sweep reuses one prefix at a time, and features can be large
    _MEMO[key] = (tr.cpu(), va.cpu())
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # parallel jobs may write the same entry
        torch.save({"train": tr.cpu(), "val": va.cpu()}, tmp)
        os.replace(tmp, path)
    return tr, va, "computed"


class FeatureLoader:
    """Batches (features, y) from cached features; train: reshuffled each epoch, next view each epoch."""

    def __init__(self, feats: torch.Tensor, targets: torch.Tensor, batch_size: int, train: bool, seed: int = 0):
        self.feats, self.targets = feats, targets.to(feats.device)
        self.batch_size, self.train = batch_size, train
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self.dataset = targets  # len(loader.dataset) = number of images, as with a DataLoader

    def __len__(self) -> int:
        return -(-len(self.targets) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.targets)
        if self.train:
            view = self.feats[self.epoch % len(self.feats)]
            order = torch.randperm(n, generator=self.generator).to(self.feats.device)
        else:
            view, order = self.feats, torch.arange(n, device=self.feats.device)
        self.epoch += 1
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            yield view[idx], self.targets[idx]
