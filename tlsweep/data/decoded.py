"""The "decode once" data path: every image decoded and resized once, kept as uint8 tensors in
memory (CPU or GPU), and augmented per sample, a whole batch at a time.

The plain path (ImageFolder + per-sample transforms + DataLoader) decodes each JPEG again
every epoch; here that cost is paid once. What stays the same and what differs from it:

- Eval batches are bit-identical to `Resize(resize) + CenterCrop(crop) + ToDtype + Normalize`
  applied to `load_rgb(item)`: the same resize kernel runs once at decode time and the center
  crop is a slice.
- Train batches follow `RandomResizedCrop(crop, scale=(0.6, 1), ratio=(3/4, 4/3))` +
  `RandomHorizontalFlip()` with one crop box and one flip per sample. Two stated differences:
  boxes are drawn on the stored copy (short side = `resize`) rather than on the full-size
  image, which leaves the distribution of crop regions unchanged because scale and ratio are
  relative; and the crop is resampled by `roi_align` (bilinear, each output pixel averaging
  2x2 samples in its bin) instead of torchvision's antialiased resize.

`decoded_size_bytes` reads only image headers, so a caller can compare it with a memory budget
and fall back to the streaming loader before anything is decoded.
"""
from __future__ import annotations

import functools
import hashlib
import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torchvision
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from . import diskcache
from .augment import (RATIO, SCALE, augmented, center_crops, centered, draw_augmentation, pad_batch, resized_crops,
                      sample_crop_boxes)
from .images import displayed_size
from ..progress import PassProgress
from ..runtime import Runtime

if TYPE_CHECKING:  # duck-typed: anything with crop, mean, std, interpolation (no import of the model zoo)
    from ..models import Preprocess

Item = str | os.PathLike | torch.Tensor  # a file path, or a uint8 [3, H, W] RGB tensor


def _resized_hw(h: int, w: int, resize: int) -> tuple[int, int]:
    # Same arithmetic as torchvision's Resize(int): short side -> resize, long side truncated.
    if w <= h:
        return int(resize * h / w), resize
    return resize, int(resize * w / h)


@functools.lru_cache(maxsize=None)
def _header_hw(path: str, size: int, mtime_ns: int) -> tuple[int, int]:
    # size and mtime key it, as _file_digest: the budget check and the decode read each header once
    w, h = displayed_size(path)  # the header only, and the EXIF orientation load_rgb applies
    return h, w


def _item_hw(item: Item) -> tuple[int, int]:
    if isinstance(item, torch.Tensor):
        return tuple(item.shape[-2:])
    st = os.stat(item)
    return _header_hw(os.fspath(item), st.st_size, st.st_mtime_ns)


def stored_sizes(items: Sequence[Item], resize: int) -> torch.Tensor:
    """int64 [N, 2]: each item's (h, w) once `decode_images` has resized it, from the headers alone (exact, EXIF
    rotations included: a turn swaps width and height)."""
    return torch.tensor([_resized_hw(*_item_hw(it), resize) for it in items], dtype=torch.int64).reshape(-1, 2)


def decoded_size_bytes(items: Sequence[Item], resize: int) -> int:
    """Bytes of the uint8 image store `decode_images` allocates (with `images.load_rgb`), from headers only."""
    return int(3 * stored_sizes(items, resize).prod(1).sum())


@dataclass
class DecodedImages:
    """Decoded images of one split, each at its own size, back to back in one buffer (no
    padding: one wide panorama does not make every image as wide).

    pixels: uint8 [sum of 3*h*w]; image i is pixels[offsets[i]:][:3*h*w] as a [3, h, w] tensor.
    offsets: int64 [N], and sizes: int64 [N, 2] (true (h, w)). Both always on the CPU: crop
        boxes are drawn there, so a seed gives the same crops on every device.
    targets: int64 [N].
    """

    pixels: torch.Tensor
    offsets: torch.Tensor
    sizes: torch.Tensor
    targets: torch.Tensor

    @classmethod
    def pack(cls, images: Sequence[torch.Tensor], targets: torch.Tensor) -> DecodedImages:
        sizes = torch.tensor([img.shape[-2:] for img in images], dtype=torch.int64).reshape(-1, 2)
        lengths = 3 * sizes.prod(1)
        offsets = torch.cumsum(lengths, 0) - lengths
        pixels = torch.cat([img.reshape(-1) for img in images]) if images else torch.empty(0, dtype=torch.uint8)
        return cls(pixels, offsets, sizes, targets)

    def __len__(self) -> int:
        return len(self.targets)

    def images(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """Images `idx`, as views (the `ImageSource` protocol that the feature pass reads)."""
        return [self.image(i) for i in idx.tolist()]

    def image(self, i: int) -> torch.Tensor:
        """Image i, uint8 [3, h, w]: a view, on the pixels' device."""
        h, w = self.sizes[i].tolist()
        start = int(self.offsets[i])
        return self.pixels[start : start + 3 * h * w].view(3, h, w)

    def to(self, device: torch.device | str) -> DecodedImages:
        """A copy with pixels and targets on `device` (no copy where they already are)."""
        return DecodedImages(self.pixels.to(device), self.offsets, self.sizes, self.targets.to(device))


@functools.lru_cache(maxsize=None)
def _file_digest(path: str, size: int, mtime_ns: int) -> bytes:
    # size and mtime are part of the cache key, so an edited file is hashed again; within a
    # sweep's process each file is read and hashed once, not once per job
    return hashlib.sha256(Path(path).read_bytes()).digest()


def content_key(items: Sequence[Item], resize: int, interpolation: InterpolationMode) -> str:
    """sha256 over the items' contents (file bytes or tensor bytes), `resize` and `interpolation`."""
    h = hashlib.sha256()
    # torchvision's version is in the key because its resize kernel defines the stored pixels.
    h.update(f"{resize}|{interpolation.value}|{torchvision.__version__}".encode())
    for it in items:
        if isinstance(it, torch.Tensor):
            t = it.detach().cpu().contiguous()
            data = t.numpy().tobytes()
            h.update(f"|tensor{tuple(t.shape)}{t.dtype}:{len(data)}:".encode())
        else:
            st = os.stat(it)
            data = _file_digest(os.fspath(it), st.st_size, st.st_mtime_ns)
            h.update(f"|file:{st.st_size}:".encode())
        h.update(data)
    return h.hexdigest()


def trained_count(n: int, batch_size: int) -> int:
    """How many of a training split's `n` samples one epoch trains on: all, except that a trailing batch of
    exactly one is dropped. BatchNorm in training mode cannot normalize a single sample whose feature map is
    1x1 (one value per channel), and a batch of one is no batch statistic anyway. The order is reshuffled
    every epoch, so every sample is still seen; larger remainders are kept, so that small data lose nothing."""
    return n - 1 if batch_size > 1 and n > 1 and n % batch_size == 1 else n


_STORES: OrderedDict[str, DecodedImages] = OrderedDict()
# Every split of one dataset: train, val and, with data.select_fraction, select. With room for fewer,
# the splits a job reads in turn would evict each other and every job would decode all of them again.
MEMO_STORES = 3


def decode_images(
    items: Sequence[Item],
    targets: Sequence[int] | torch.Tensor,
    resize: int,
    interpolation: InterpolationMode,
    loader: Callable[[Item], torch.Tensor],
    cache_dir: str | os.PathLike | None = None,
) -> DecodedImages:
    """Decode each item once with `loader` (tlsweep.data.pipeline.load_rgb) and resize its short side to
    `resize`, exactly as the eval path's `Resize(resize, interpolation)` does.

    The store is kept in memory for the next call with the same content (the next job of a
    sweep), and with `cache_dir` also saved under `content_key` for other processes (one
    decodes, the others wait for it; an unreadable copy is decoded again with a warning).
    Targets are not cached: they always come from the caller.
    """
    targets = torch.as_tensor(targets, dtype=torch.int64)
    if len(targets) != len(items):
        raise ValueError(f"{len(items)} items but {len(targets)} targets")
    key = content_key(items, resize, interpolation)
    if key in _STORES:  # the jobs of a sweep run in one process (Hydra's basic launcher)
        _STORES.move_to_end(key)
        return replace(_STORES[key], targets=targets)
    path = Path(cache_dir) / f"decoded-{key}.pt" if cache_dir is not None else None
    # parallel sweep jobs decode the same images: one does it, the others wait and load its copy
    with diskcache.locked(path, "decoding the images"):
        # memory-mapped: every process of the node (joblib workers, a SLURM array) reads one copy of the pixels
        saved = diskcache.load(path, lambda saved: _check(saved, key, len(items)), mmap=True)
        if saved is not None:
            store = DecodedImages(saved["pixels"], saved["offsets"], saved["sizes"], targets)
        else:
            store = _decode_into_one_buffer(items, targets, resize, interpolation, loader)
            diskcache.save({"key": key, "pixels": store.pixels, "offsets": store.offsets, "sizes": store.sizes}, path)
    _STORES[key] = store
    while len(_STORES) > MEMO_STORES:
        _STORES.popitem(last=False)
    return store


def _decode_into_one_buffer(items, targets, resize, interpolation, loader) -> DecodedImages:
    """Every item decoded and resized straight into its slot of one buffer sized from the headers: the process
    holds the store once, plus an image in flight per thread (a list of images, then their concatenation, held it
    twice at its peak, and the allocator kept much of the first copy)."""
    sizes = stored_sizes(items, resize)
    lengths = 3 * sizes.prod(1)
    offsets = torch.cumsum(lengths, 0) - lengths
    pixels = torch.empty(int(lengths.sum()), dtype=torch.uint8)
    progress = PassProgress(f"decoding {len(items):,} images", len(items))

    def one(i: int) -> None:
        img = F.resize(loader(items[i]), [resize], interpolation, antialias=True)
        h, w = sizes[i].tolist()
        if tuple(img.shape) != (3, h, w):  # a header that lies about the pixels (a broken writer)
            raise ValueError(f"{items[i]}: decoded to {tuple(img.shape[-2:])} after the resize, but its header "
                             f"gives {(h, w)}")
        pixels[int(offsets[i]):int(offsets[i]) + 3 * h * w].view(3, h, w).copy_(img)
        progress.step(1)

    # PIL and torch release the GIL while decoding and resizing, so threads use every core
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for _ in pool.map(one, range(len(items))):
            pass
    progress.done()
    return DecodedImages(pixels, offsets, sizes, targets)


class StreamedImages:
    """A split read from its files a batch at a time, each image decoded and resized exactly as `decode_images`
    stores it, and never held whole: what the feature pass reads when the decoded images exceed their budget.
    `sizes` come from the headers, so crop boxes can be drawn before any pixel is decoded."""

    def __init__(self, items: Sequence[Item], targets, resize: int, interpolation: InterpolationMode,
                 loader: Callable[[Item], torch.Tensor]):
        self.items, self.resize, self.interpolation, self.loader = list(items), resize, interpolation, loader
        self.targets = torch.as_tensor(targets, dtype=torch.int64)
        self.sizes = stored_sizes(self.items, resize)

    def __len__(self) -> int:
        return len(self.items)

    def images(self, idx: torch.Tensor) -> list[torch.Tensor]:
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            return list(pool.map(lambda i: F.resize(self.loader(self.items[i]), [self.resize], self.interpolation,
                                                    antialias=True), idx.tolist()))


class ChainedImages:
    """Several image sources read as one (val, then the selection split): the feature pass runs them in one
    sequence of batches, as one store of both would."""

    def __init__(self, parts: Sequence):
        self.parts = list(parts)
        self.targets = torch.cat([p.targets for p in self.parts])
        self.sizes = torch.cat([p.sizes for p in self.parts])
        self.starts = torch.cumsum(torch.tensor([0] + [len(p) for p in self.parts]), 0)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def images(self, idx: torch.Tensor) -> list[torch.Tensor]:
        part = torch.searchsorted(self.starts, idx, right=True) - 1
        out: list[torch.Tensor] = []
        for k in part.unique_consecutive().tolist():  # idx ascends in the feature pass
            mine = idx[part == k]
            out += self.parts[k].images(mine - self.starts[k])
        return out


def _check(saved: dict, key: str, n: int) -> str | None:
    """What is wrong with a loaded image store, if anything: its layout must describe its pixels."""
    if saved.get("key") != key:
        return "was not saved for these images (its key differs or is missing)"
    pixels, offsets, sizes = (saved.get(k) for k in ("pixels", "offsets", "sizes"))
    if not all(isinstance(t, torch.Tensor) for t in (pixels, offsets, sizes)):
        return "lacks pixels, offsets or sizes"
    if (pixels.dtype != torch.uint8 or pixels.ndim != 1 or sizes.shape != (n, 2) or offsets.shape != (n,)
            or sizes.dtype != torch.int64 or offsets.dtype != torch.int64):
        return f"does not hold {n} uint8 images"
    lengths = 3 * sizes.prod(1)
    if not torch.equal(offsets, torch.cumsum(lengths, 0) - lengths) or int(lengths.sum()) != pixels.numel():
        return "has offsets or sizes that do not match its pixels"
    return None


class TensorLoader:
    """Batches `(x, y)` of one split from `DecodedImages`, for use wherever a DataLoader is:
    x float32 [B, 3, crop, crop] normalized, y int64 [B], both on `device`.

    train=True: reshuffled every epoch, one random resized crop and flip per sample; a trailing batch
    of one is dropped (`trained_count`). train=False: in order, center crop, every sample. All
    randomness comes from one CPU generator seeded once with `seed`; each epoch continues its
    stream, so epochs differ and a run repeats.
    `len(loader)` is the number of batches and `len(loader.dataset)` the number of images,
    as with a DataLoader.
    """

    def __init__(self, data: DecodedImages, batch_size: int, train: bool, pp: Preprocess, seed: int = 0,
                 rt: Runtime | None = None) -> None:
        """`pp`: the crop size, normalization and (train, on the CPU) interpolation; an interpolation of
        None resamples with roi_align (bilinear), as on the GPU. `rt`: the device the images move to
        and the memory format; None keeps them where they are, in NCHW."""
        if len(data) and pp.crop > int(data.sizes.min()):
            # CenterCrop would zero-pad such images, which center_crops does not reproduce.
            raise ValueError(f"crop {pp.crop} exceeds the smallest stored side {int(data.sizes.min())}")
        self.dataset = data if rt is None else data.to(rt.device)
        self.batch_size = batch_size
        self.train = train
        self.crop = pp.crop
        self.mean, self.std = list(pp.mean), list(pp.std)
        self.channels_last = rt is not None and rt.channels_last
        self.interpolation = pp.interpolation
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.dataset)
        return -(-(trained_count(n, self.batch_size) if self.train else n) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.dataset)
        order = torch.randperm(n, generator=self.generator) if self.train else torch.arange(n)
        for b in range(len(self)):  # len() leaves out a trailing training batch of one
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield self.batch(idx), self.dataset.targets[idx.to(self.dataset.targets.device)]

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        """Normalized inputs for images `idx`: augmented (continuing the stream) when train."""
        x = self._train_batch(idx) if self.train else self._eval_batch(idx)
        x = F.normalize(x, self.mean, self.std)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _train_batch(self, idx: torch.Tensor) -> torch.Tensor:
        boxes, flip = draw_augmentation(self.dataset.sizes[idx], self.generator)
        return augmented(self.dataset.images(idx), boxes, flip, self.crop, self.interpolation)

    def _eval_batch(self, idx: torch.Tensor) -> torch.Tensor:
        return F.to_dtype(center_crops(self.dataset, idx, self.crop), torch.float32, scale=True)


