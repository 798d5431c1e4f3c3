"""Image files: which entries of a folder are images at all, one image decoded to RGB as a viewer shows it,
its displayed size from the header alone, and the screen that finds the files a dataset cannot use
(damaged, not images, dangling links, decompression bombs) before anything trains on them.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms.v2.functional import pil_to_tensor

from ..config.errors import DataError
from .splits import ImageData, Split, why

# What PIL raises for a file it cannot decode: not an image (UnidentifiedImageError is an OSError), truncated
# or missing (OSError), a mode it cannot convert (ValueError), a corrupt header (SyntaxError), a decompression
# bomb (the warning too: under `-W error` PIL's warning for a bomb below twice the limit is raised).
UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning)

# What other tools leave beside images: Windows' thumbnail caches and folder settings, the folder macOS's
# zip adds (its AppleDouble "._x.jpg" files carry image extensions but hold metadata), a NAS's thumbnails,
# recycle bins. Hidden names (".DS_Store", ".ipynb_checkpoints", "._x.jpg", ".git") are left out as well.
LEFTOVERS = frozenset({"thumbs.db", "ehthumbs.db", "desktop.ini", "__macosx", "@eadir", "$recycle.bin",
                       "system volume information"})

# Transparent pixels are composited over white, as a browser or document shows them: most transparent
# images (product shots, logos, clip art) were made to be seen on a white page, and dropping alpha instead
# (PIL's convert) exposes whatever colour the editor left under transparent pixels (often black, sometimes
# noise), so the same picture would differ with the tool that saved it.
BACKGROUND = (255, 255, 255)
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa")
_ORIENTATION = 0x0112  # the EXIF tag; 5-8 turn the image by a quarter, swapping width and height


def is_leftover(name: str) -> bool:
    """Whether a file or folder name is another tool's leftover (or hidden), never a class or an image."""
    return name.startswith(".") or name.lower() in LEFTOVERS


def image_files(folder: str | os.PathLike) -> list[str]:
    """The image files under `folder` (any depth, through symlinked files and folders), sorted, leaving out
    leftovers and hidden entries. A dangling symlink with an image's name is kept: the screen names it."""
    found, seen = [], set()
    for top, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:  # a link back up the tree would walk forever
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not is_leftover(d)]
        found.append((top, [os.path.join(top, f) for f in sorted(files)
                            if not is_leftover(f) and f.lower().endswith(IMG_EXTENSIONS)]))
    # in torchvision's make_dataset order (folders sorted by path), so that a listing is what it was before
    return [p for _, paths in sorted(found) for p in paths]


def check_size(img: Image.Image) -> None:
    """Refuse an image over PIL's `Image.MAX_IMAGE_PIXELS` before its pixels are decoded. Between once and
    twice the limit PIL itself only warns and decodes it all (seconds and gigabytes for a small file);
    checked here from the header, without touching the process's warning filters (the screen runs threads)."""
    limit = Image.MAX_IMAGE_PIXELS
    w, h = img.size
    if limit is not None and w * h > limit:
        raise Image.DecompressionBombError(
            f"{w}x{h} = {w * h:,} pixels exceeds PIL's Image.MAX_IMAGE_PIXELS={limit:,} (a possible decompression "
            "bomb; not decoded): downscale or remove it")


@contextmanager
def open_image(path):
    """PIL's lazy image (header read, pixels not yet), refused when it is a decompression bomb."""
    with Image.open(path) as img:
        check_size(img)
        yield img


def to_rgb(img: Image.Image) -> Image.Image:
    """An opened image as 8-bit RGB, turned upright by its EXIF orientation (`ImageOps.exif_transpose`)."""
    ImageOps.exif_transpose(img, in_place=True)  # loads the pixels
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode == "I" or mode.startswith("I;16"):
        # 16-bit data (PNG, TIFF; PIL reads 16-bit PGM as "I" too): convert() would clip at 255, so every
        # value above 255 turned white. 0..65535 maps to 0..255 as a viewer does, the same for every image.
        a = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
        return Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8)).convert("RGB")
    if mode == "F":
        # Float images come in two conventions, 0..1 (scikit-image, most float TIFF writers) and 0..255 (PIL's
        # own "F"); one whose values all lie in [0, 1] is read as the first. NaN becomes black.
        a = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        scale = 255.0 if a.size and a.max() <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.round(a * scale), 0, 255).astype(np.uint8)).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in img.info:  # "transparency": a palette or tRNS colour key
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (*BACKGROUND, 255)), rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, RGBX


def load_rgb(item) -> torch.Tensor:
    """An image as uint8 [3,H,W] RGB, upright (PIL decodes: torchvision.io's decoders are deprecated)."""
    if isinstance(item, torch.Tensor):
        return item
    try:
        with open_image(item) as img:
            return pil_to_tensor(to_rgb(img))
    except UNREADABLE as err:  # never a bare PIL error: say which file
        raise DataError(f"cannot read image {item}: {_why(item, err)}") from None


def displayed_size(path) -> tuple[int, int]:
    """(width, height) of an image file as `load_rgb` returns it, turned by its EXIF orientation, from the
    header alone. A PNG may keep its EXIF after the pixels, where PIL sees it only by decoding them; that is
    not read here, and cannot change a byte count (the turned image has as many pixels)."""
    with Image.open(path) as img:
        w, h = img.size
        # Image.getexif reads EXIF, XMP and ImageMagick's raw profile, as exif_transpose does; a PNG's own
        # getexif would decode the pixels first, to look behind them
        exif = Image.Image.getexif(img)
        return (h, w) if exif.get(_ORIENTATION, 1) in (5, 6, 7, 8) else (w, h)


def _why(path, err: Exception) -> str:
    if os.path.islink(path) and not os.path.exists(path):
        return f"a symbolic link to {os.readlink(path)}, which does not exist"
    return why(err)


def announce(message: str) -> None:
    """A line on the run's own output, which `PYTHONWARNINGS=ignore` cannot hide."""
    enc = getattr(sys.stdout, "encoding", None) or "utf-8"
    print(f"[tlsweep] {message}".encode(enc, "backslashreplace").decode(enc), flush=True)


_SCREENED: dict[str, list[tuple[str, str]]] = {}  # listing key -> its unreadable files, once per process


def _stamp(path) -> str:
    for stat in (os.stat, os.lstat):  # a dangling link: the link itself
        try:
            st = stat(path)
            return f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n"
        except OSError:
            pass
    return f"{path}\0missing\n"  # the screen says so


def unreadable(items: list, cache_dir: str | os.PathLike | None = None) -> list[tuple[str, str]]:
    """(path, why) of each image file among `items` that cannot be decoded to RGB. Every file is decoded
    once, except decompression bombs, refused from
    their header; the answer is kept per process for the same listing (same paths, sizes and modification
    times), so a sweep's later jobs pay nothing, and with `cache_dir` on disk (`screen-<key>.json`), so that the
    sweep's other processes (joblib workers, SLURM jobs) do not decode every file again to screen it."""
    paths = [p for p in items if not isinstance(p, torch.Tensor)]
    if not paths:
        return []
    h = hashlib.sha256()
    for p in paths:
        h.update(_stamp(p).encode("utf-8", "surrogateescape"))
    key = h.hexdigest()
    saved = Path(cache_dir) / f"screen-{key}.json" if cache_dir is not None else None
    if key not in _SCREENED and saved is not None and saved.is_file():
        try:
            _SCREENED[key] = [tuple(pair) for pair in json.loads(saved.read_text())]
        except (OSError, ValueError):
            pass  # unreadable or cut short: screened again below, and written again
    if key not in _SCREENED:
        def check(path) -> tuple[str, str] | None:
            try:
                with open_image(path) as img:
                    to_rgb(img)  # decodes every pixel: a truncated file fails here, not at open
            except UNREADABLE as err:
                return str(path), _why(path, err)
            return None

        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # PIL releases the GIL while decoding
            _SCREENED[key] = [w for w in pool.map(check, paths) if w]
        if saved is not None:
            try:  # whole or not at all: a temporary file renamed into place
                saved.parent.mkdir(parents=True, exist_ok=True)
                tmp = saved.with_name(f".{saved.name}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps(_SCREENED[key]))
                os.replace(tmp, saved)
            except OSError:
                pass  # a folder that cannot be written costs only this: the next process screens again
    return _SCREENED[key]


def _listed(bad: list[tuple[str, str]]) -> str:
    listed = "; ".join(f"{p}: {w.rstrip('.')}" for p, w in bad[:10])
    return listed + (f"; ... ({len(bad) - 10} more)" if len(bad) > 10 else "")


def leave_out(name: str, bad: list[tuple[str, str]], mode: str) -> None:
    """Refuse (data.bad_images=error) the unreadable images `bad` ((file, why) pairs) of dataset `name`, or
    say that they are left out (skip): printed on the run's output, and warned."""
    if str(mode) == "error":
        raise DataError(f"{len(bad)} image file(s) cannot be read (data.bad_images=error): {_listed(bad)}. "
                        "Fix or remove them, or set data.bad_images=skip to leave them out")
    message = f"{name}: left out {len(bad)} unreadable image file(s) (data.bad_images=skip): {_listed(bad)}"
    announce(message)
    warnings.warn(message, stacklevel=3)


def screen(data: ImageData, mode: str, cache_dir: str | os.PathLike | None = None) -> ImageData:
    """Leave out (`skip`) or refuse (`error`) the image files that cannot be decoded, naming them
    (`leave_out`); a split that a skip leaves empty is refused. `cache_dir`: where the answer is kept for the
    sweep's other processes (`unreadable`)."""
    splits = {"train": data.train, "val": data.val, **({"select": data.select} if data.select is not None else {})}
    bad = unreadable([p for s in splits.values() for p in s.items], cache_dir)
    if not bad:
        return data
    if str(mode) == "error":
        leave_out(data.name, bad, mode)  # raises
    gone = {p for p, _ in bad}
    for name, split in splits.items():
        keep = [i for i, p in enumerate(split.items) if str(p) not in gone]
        if split.items and not keep:
            mine = {str(p) for p in split.items}
            raise DataError(f"{data.name}: the {name} split ({folder_of(split.items)}) has no readable image "
                            f"left: all {len(split.items)} were left out (data.bad_images=skip): "
                            f"{_listed([b for b in bad if b[0] in mine])}. Fix or replace the files")
        setattr(data, name, Split([split.items[i] for i in keep], [split.targets[i] for i in keep]))
    leave_out(data.name, bad, mode)
    data.skipped = [p for p, _ in bad]
    return data


def without_leftovers(classes: list[str], split: Split, root) -> tuple[Split, list[str]]:
    """(split, classes) less other tools' leftovers (`is_leftover`) that a listing took for classes or
    images: a class named like one, and any file below such a folder of `root`."""
    drop = {i for i, c in enumerate(classes) if is_leftover(c)}
    renumber = {old: new for new, old in enumerate(i for i in range(len(classes)) if i not in drop)}

    def clean(item) -> bool:
        return isinstance(item, torch.Tensor) or not any(
            is_leftover(part) for part in os.path.relpath(item, root).split(os.sep) if part != "..")

    keep = [i for i, (it, t) in enumerate(zip(split.items, split.targets)) if t in renumber and clean(it)]
    if len(keep) == len(split.items) and not drop:
        return split, classes
    return (Split([split.items[i] for i in keep], [renumber[split.targets[i]] for i in keep]),
            [c for i, c in enumerate(classes) if i not in drop])


def folder_of(items: list) -> str:
    """The folder a split's files share, for a message ("memory" for images held as tensors)."""
    folders = {os.path.dirname(os.path.abspath(p)) for p in items if not isinstance(p, torch.Tensor)}
    return os.path.commonpath(sorted(folders)) if folders else "memory"
