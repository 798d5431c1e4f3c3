"""Datasets (hymenoptera, any ImageFolder, scikit-learn digits; by name through `sources`), their checks, and
loaders.

Every dataset becomes an `ImageData`: class names plus train/val `Split`s whose items are
image file paths or uint8 [3,H,W] tensors. The plain loader below is the straightforward
path (decode every image every epoch, torchvision v2 transforms per sample); the
decode-once path in `fastdata` is chosen when `data.cache` is on and the data fits.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import unicodedata
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2

from ..config.errors import DataError
from .images import folder_of, image_files, is_leftover, load_rgb, screen
from .splits import SELECT_SEED, SPLIT_SEED, ImageData, Split, stratified_holdout  # noqa: F401 -- the data API
from ..models import Preprocess
from ..runtime import Loaders, Runtime

HYMENOPTERA_URL = "https://download.pytorch.org/tutorial/hymenoptera_data.zip"
# sha256 over (relative path, sha256 of bytes) of every file under train/ and val/ of the
# public archive, and the image counts ImageFolder finds (train/ants also holds one .gif,
# which ImageFolder skips). Measured on the tutorial's files.
HYMENOPTERA_SHA256 = "c415c930edc58a3d84c6f6b2c058ca7ea03038a196f05330aa86b3249cf557b7"
HYMENOPTERA_COUNTS = {"train": {"ants": 123, "bees": 121}, "val": {"ants": 70, "bees": 83}}


@dataclass
class Decoded:
    """The splits of an `ImageData`, each decoded once (`fastdata.DecodedImages`): the same names, so
    that no caller counts splits by position."""
    train: Any
    val: Any
    select: Any = None

    def eval_splits(self) -> list:
        """val, then the selection split when there is one, as `ImageData.eval_splits`."""
        return [self.val] + ([self.select] if self.select is not None else [])


def check_classes(data: ImageData) -> None:
    """Refuse data a classifier cannot be trained and scored on: fewer than two classes with training
    images, a class without any, or an evaluated split holding classes the training set lacks. (A one-class
    "classifier" scores 100%, and would end FINISHED.)"""
    counts = np.bincount(np.asarray(data.train.targets, dtype=np.int64), minlength=len(data.classes))
    present = [c for c, n in zip(data.classes, counts) if n]
    empty = [c for c, n in zip(data.classes, counts) if not n]
    if empty:
        raise DataError(f"{data.name}: class(es) {', '.join(empty)} have no training image (after data.shots, "
                        "data.select_fraction and data.bad_images); add images or remove the class")
    if len(present) < 2:
        raise DataError(f"{data.name}: the training set has {len(present)} class(es) with images "
                        f"({', '.join(present) or 'none'}); a classifier needs at least two")
    for name, split in (("val", data.val), ("select", data.select)):
        unseen = sorted({data.classes[t] for t in (split.targets if split else [])} - set(present))
        if unseen:
            raise DataError(f"{data.name}: the {name} split holds class(es) {', '.join(unseen)} that the "
                            "training set lacks; a model cannot be scored on classes it never saw")


# --- datasets --------------------------------------------------------------------------

def _class_folder(folder: Path) -> tuple[list[str], Split]:
    """The classes and images of `folder/<class>/**` (any depth, through symlinks), leaving out other tools'
    leftovers and hidden entries (`images.is_leftover`), refusing empty classes. Class names are compared
    NFC-normalized: macOS stores names decomposed, so a class copied from it still matches its twin."""
    try:
        dirs = sorted((unicodedata.normalize("NFC", e.name), e.path) for e in os.scandir(folder)
                      if not is_leftover(e.name) and e.is_dir())
    except OSError as err:
        raise DataError(f"{folder} cannot be listed ({err}).") from None
    if not dirs:
        raise DataError(f"{folder} has no class folders: put each class's images in {folder}/<class>/.")
    classes = [name for name, _ in dirs]
    twins = sorted({c for c in classes if classes.count(c) > 1})
    if twins:
        raise DataError(f"{folder} holds class folder(s) {', '.join(map(repr, twins))} twice, spelled in different "
                        "Unicode forms: merge them")
    items, targets = [], []
    for c, (_, path) in enumerate(dirs):
        files = image_files(path)
        if not files:
            raise DataError(f"class folder {path} holds no images ({', '.join(IMG_EXTENSIONS)}). "
                            f"Add images or remove the folder.")
        items += files
        targets += [c] * len(files)
    return classes, Split(items, targets)


def image_folder(root: str | Path, name: str = "imagefolder", val_fraction: float | None = None) -> ImageData:
    """`root/train/<class>/*` and `root/val/<class>/*`, with the same classes in both.

    A root with only `train/`, or with the class folders directly in it, gets a stratified val
    split of `val_fraction` of its images (fixed seed, `SPLIT_SEED`).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root={str(root)!r} does not exist. Set data.root to the folder that holds train/ and val/.")
    has_train, has_val = (root / "train").is_dir(), (root / "val").is_dir()
    if has_train and has_val:
        if val_fraction:
            raise DataError(f"{root} has its own val/ split, so data.val_fraction={val_fraction} would be ignored: "
                            "drop data.val_fraction, or point data.root at a folder without val/.")
        (train_classes, train), (val_classes, val) = _class_folder(root / "train"), _class_folder(root / "val")
        if train_classes != val_classes:
            raise DataError(f"train and val classes differ under {root}: train={train_classes} val={val_classes}. "
                            f"Both splits need the same class folders.")
        return ImageData(name, train_classes, train, val)
    if has_val:
        raise DataError(f"{root} has val/ but no train/: data.root must hold train/<class>/* and val/<class>/*.")
    pool = root / "train" if has_train else root
    if not val_fraction:
        raise DataError(f"{root} has no val/ split. Either add {root}/val/<class>/* (and put the training images in "
                        f"{root}/train/<class>/*), or set data.val_fraction=0.2 to hold out a stratified part of "
                        f"{pool}'s images as val.")
    classes, images = _class_folder(pool)
    train, val = stratified_holdout(images, float(val_fraction), classes=classes, key="data.val_fraction",
                                    where=str(pool))
    return ImageData(name, classes, train, val,
                     val_from=f"{val_fraction} of {pool} held out, stratified by class (seed {SPLIT_SEED})")


def _folder_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(q for split in ("train", "val") for q in (root / split).rglob("*") if q.is_file()):
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def safe_extract(archive: zipfile.ZipFile, target: Path) -> None:
    """Extract, refusing any member that would land outside `target` (zip slip) or is a link."""
    target = target.resolve()
    for info in archive.infolist():
        dest = (target / info.filename).resolve()
        is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
        if is_link or not dest.is_relative_to(target):
            raise DataError(f"refusing to extract {info.filename!r}: it would write outside {target}")
    archive.extractall(target)


def download_hymenoptera(root: Path, url: str = HYMENOPTERA_URL) -> None:
    """Fetch the tutorial archive so that `root` (…/hymenoptera_data) holds train/ and val/."""
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        zpath = Path(tmp) / "hymenoptera_data.zip"
        try:
            with urllib.request.urlopen(url, timeout=30) as resp, open(zpath, "wb") as f:
                shutil.copyfileobj(resp, f)
        except (urllib.error.URLError, OSError) as err:
            raise DataError(
                f"hymenoptera is not at {root} and could not be downloaded from {url} ({err}).\n"
                f"Offline: unzip hymenoptera_data.zip so that {root}/train and {root}/val exist, "
                f"or pass data.root=/path/to/hymenoptera_data."
            ) from None
        with zipfile.ZipFile(zpath) as archive:
            bad = archive.testzip()  # CRC of every member
            if bad is not None:
                raise DataError(f"the downloaded archive is corrupt (bad CRC in {bad}); delete it and retry.")
            safe_extract(archive, Path(tmp) / "x")
        extracted = Path(tmp) / "x" / "hymenoptera_data"
        if _folder_digest(extracted) != HYMENOPTERA_SHA256:
            raise DataError(f"the archive from {url} does not hold the expected hymenoptera files (checksum mismatch).")
        extracted.rename(root)


def hymenoptera(root: str | Path, download: bool = True) -> ImageData:
    """The torchvision tutorial's ants-vs-bees data, downloaded to `root` when missing."""
    root = Path(root).expanduser()
    if not (root / "train").is_dir() and download:
        download_hymenoptera(root)
    data = image_folder(root, name="hymenoptera")
    counts = {s: {c: getattr(data, s).targets.count(i) for i, c in enumerate(data.classes)} for s in ("train", "val")}
    if counts != HYMENOPTERA_COUNTS:
        raise DataError(f"{root} does not look like the hymenoptera data: found {counts}, expected {HYMENOPTERA_COUNTS}. "
                        f"Re-extract hymenoptera_data.zip there.")
    return data


def digits() -> ImageData:
    """scikit-learn's bundled handwritten digits: 1,797 real 8x8 images, fixed stratified 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    # 0..16 gray levels -> uint8, three channels so ImageNet backbones take them unchanged
    images = torch.from_numpy(np.round(d.images * 255 / 16).astype(np.uint8))[:, None].expand(-1, 3, -1, -1)
    idx = np.arange(len(images))
    tr, va = train_test_split(idx, test_size=0.2, stratify=d.target, random_state=0)
    split = lambda ids: Split([images[i].contiguous() for i in ids], [int(d.target[i]) for i in ids])  # noqa: E731
    return ImageData("digits", [str(c) for c in d.target_names], split(tr), split(va))


def few_shot(split: Split, shots: int, seed: int, classes: list[str] | None = None) -> Split:
    """Keep `shots` training images per class, chosen with a fixed seed (not the run's seed,
    so every run of a sweep sees the same subset)."""
    rng = np.random.default_rng(seed)
    targets = np.asarray(split.targets)
    keep = []
    for c in np.unique(targets):
        ids = np.flatnonzero(targets == c)
        if len(ids) < shots:
            name = repr(classes[c]) if classes else str(c)
            raise DataError(f"data.shots={shots} but class {name} has only {len(ids)} training image(s) in "
                            f"{folder_of(split.items)}: lower data.shots to {len(ids)} or add images to it")
        keep.extend(rng.choice(ids, shots, replace=False).tolist())
    keep.sort()
    return Split([split.items[i] for i in keep], [split.targets[i] for i in keep])


def _imagefolder(cfg) -> ImageData:
    if not cfg.get("root"):
        raise DataError("data=imagefolder needs data.root=/path/to/folder holding train/ and val/.")
    return image_folder(cfg.root, val_fraction=cfg.get("val_fraction"))


def _source(loader: str):
    """A loader of `sources` (datasets by name, torchvision's dataset classes), imported on first use."""
    def load(cfg) -> ImageData:
        from . import sources

        return getattr(sources, loader)(cfg)
    return load


# data.name -> the dataset it reads (the one registry of datasets; an unknown name lists these)
DATASETS = {
    "digits": lambda cfg: digits(),
    "hymenoptera": lambda cfg: hymenoptera(cfg.root, download=cfg.get("download", True)),
    "imagefolder": _imagefolder,
    "torchvision": _source("torchvision_data"),  # data.dataset=CIFAR10, Flowers102, ... (sources.TORCHVISION)
    "filelist": _source("file_list_data"),  # VTAB-1k style <path> <label> lists
    "hf": _source("hf_data"),  # a Hugging Face `datasets` dataset: the hub, or a save_to_disk folder
}


def load(cfg, cache_dir: str | None = None) -> ImageData:
    """The dataset a `data` config names, with `data.select_fraction` held out of train, then
    `data.shots` applied. `cache_dir`: where the screen of its files is kept for other processes."""
    if cfg.name not in DATASETS:
        raise DataError(f"unknown data.name {cfg.name!r}; valid: {', '.join(DATASETS)}")
    data = screen(DATASETS[cfg.name](cfg), cfg.get("bad_images", "skip"), cache_dir)
    if cfg.get("select_fraction") and data.select is not None:
        raise DataError(f"{data.name} has its own selection split ({data.select_from}); drop data.select_fraction")
    if cfg.get("select_fraction"):
        # carved before data.shots, so that a few-shot sweep is selected on the same images as a full one
        draw = SELECT_SEED if cfg.get("select_seed") is None else int(cfg.select_seed)
        data.train, data.select = stratified_holdout(data.train, float(cfg.select_fraction), draw,
                                                     classes=data.classes, key="data.select_fraction",
                                                     where=f"{data.name}'s training split ({folder_of(data.train.items)})")
        data.select_from = (f"{cfg.select_fraction} of train held out, stratified by class (seed {draw}): "
                            f"{len(data.select.items)} images, never trained on")
    if cfg.get("shots"):
        data.train = few_shot(data.train, int(cfg.shots), int(cfg.get("shots_seed", 0)), data.classes)
    check_classes(data)
    return data


# --- the plain (streaming) path --------------------------------------------------------

def train_transform(pp: Preprocess) -> v2.Transform:
    return v2.Compose([
        v2.RandomResizedCrop(pp.crop, scale=(0.6, 1.0), interpolation=pp.interpolation, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(pp.mean, pp.std),
    ])


def eval_transform(pp: Preprocess) -> v2.Transform:
    return v2.Compose([
        v2.Resize(pp.resize, interpolation=pp.interpolation, antialias=True),
        v2.CenterCrop(pp.crop),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(pp.mean, pp.std),
    ])


class SplitDataset(Dataset):
    def __init__(self, split: Split, transform):
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split.items)

    def __getitem__(self, i):
        return self.transform(load_rgb(self.split.items[i])), self.split.targets[i]


def decode(data: ImageData, pp: Preprocess, cfg, cache_dir: str | None):
    """Every split decoded once, when `data.cache` is on and the images fit `data.cache_budget_mb`.

    Returns (`Decoded` or None, how: a line for the run's tags). None means the streaming loaders:
    `loaders` then builds those.
    """
    from . import decoded as fastdata

    if not cfg.cache:
        return None, "off (data.cache=false)"
    splits = [data.train, *data.eval_splits()]
    need = sum(fastdata.decoded_size_bytes(s.items, pp.resize) for s in splits) / 2**20
    if need > cfg.cache_budget_mb:
        return None, f"off: {need:.0f} MB of decoded images exceed data.cache_budget_mb={cfg.cache_budget_mb}; streaming"
    disk = cache_dir if store_on_disk(cfg.get("cache_to_disk", False)) else None
    stores = [fastdata.decode_images(s.items, s.targets, pp.resize, pp.interpolation, load_rgb, disk) for s in splits]
    return Decoded(*stores), f"on ({need:.0f} MB of uint8 images{', on disk, memory-mapped' if disk else ''})"


def store_on_disk(setting: bool | str) -> bool:
    """data.cache_to_disk: auto is on where the launcher runs jobs in processes of their own (joblib, SLURM), which
    would each decode the images again; in one process (Hydra's basic launcher, a direct run) the jobs share the
    store in memory, and writing it would only cost time."""
    if setting != "auto":
        return bool(setting)
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return False
    launcher = str(HydraConfig.get().launcher.get("_target_", ""))
    return not launcher.endswith("BasicLauncher")


def streamed(data: ImageData, pp: Preprocess) -> Decoded:
    """The splits as sources that decode a batch at a time from the files, as `decode` would store them: what the
    feature pass reads when the images are not decoded once (over the budget, or data.cache=false)."""
    from .decoded import StreamedImages

    def source(split):
        return StreamedImages(split.items, split.targets, pp.resize, pp.interpolation, load_rgb)

    return Decoded(source(data.train), source(data.val), source(data.select) if data.select is not None else None)


def loaders(data: ImageData, pp: Preprocess, batch_size: int, seed: int, num_workers: int, rt: Runtime,
            decoded: Decoded | None = None) -> Loaders:
    """The image loaders of train, val and select (None without a selection split): over the decoded
    tensors when `decoded` is given, else the plain streaming DataLoaders. The selection split is
    read exactly like val (center crop, in order)."""
    from . import decoded as fastdata

    if decoded is None:
        pin = rt.device.type == "cuda"  # page-locked batches: the copy to the GPU runs beside the next step
        train, val = plain_loaders(data, pp, batch_size, seed, num_workers, pin)
        select = None if data.select is None else DataLoader(
            SplitDataset(data.select, eval_transform(pp)), batch_size=batch_size, shuffle=False,
            num_workers=num_workers, persistent_workers=num_workers > 0, pin_memory=pin)
        return Loaders(train, val, select)
    # the data lives where the model does: on a GPU, batches never cross the PCIe bus
    return Loaders(fastdata.TensorLoader(decoded.train, batch_size, True, pp, seed, rt),
                   fastdata.TensorLoader(decoded.val, batch_size, False, pp, rt=rt),
                   None if decoded.select is None else fastdata.TensorLoader(decoded.select, batch_size, False, pp,
                                                                             rt=rt))


class TrainBatches(Sampler):
    """Shuffled batches of a training split, as `DataLoader(shuffle=True)` draws them from `generator`, less a
    trailing batch of one (`fastdata.trained_count`)."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator):
        from .decoded import trained_count

        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.used = trained_count(n, batch_size)

    def __len__(self) -> int:
        return -(-self.used // self.batch_size)

    def __iter__(self):
        # torch's own shuffle, run to its end: the same draws from the generator as before, so runs repeat
        order = list(RandomSampler(range(self.n), generator=self.generator))[:self.used]
        for start in range(0, self.used, self.batch_size):
            yield order[start:start + self.batch_size]


def plain_loaders(data: ImageData, pp: Preprocess, batch_size: int, seed: int, num_workers: int, pin: bool = False):
    """DataLoaders that decode and transform every image every epoch, in `num_workers` processes that stay up
    across epochs, each with two batches in flight (DataLoader's prefetch); `pin`: into page-locked memory."""
    g = torch.Generator().manual_seed(seed)  # shuffling and (via worker seeds) augmentation follow the run's seed
    common = dict(num_workers=num_workers, persistent_workers=num_workers > 0, pin_memory=pin)
    train = DataLoader(SplitDataset(data.train, train_transform(pp)),
                       batch_sampler=TrainBatches(len(data.train.items), batch_size, g), generator=g, **common)
    val = DataLoader(SplitDataset(data.val, eval_transform(pp)), batch_size=batch_size, shuffle=False,
                     generator=torch.Generator().manual_seed(seed), **common)
    return train, val
