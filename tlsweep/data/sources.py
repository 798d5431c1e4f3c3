"""Datasets by name: torchvision's classification datasets, VTAB-1k style file lists, Hugging Face `datasets`.

Each becomes an `ImageData` like the datasets of `pipeline.py`, so that data.shots, data.select_fraction, the
decode-once store and the run's tags work unchanged. Roles follow a dataset's official splits: its train
split trains; where it has both a validation and a test split, the validation split selects (`select`)
and the test split is scored (`scored="test"`); a dataset with one held-out split is scored on it. Where
torchvision defines no split at all, a stratified part is held out with a fixed seed (`SPLIT_SEED`), and
the run's `tlsweep.data.val` tag says so.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.datasets

from ..config.errors import DataError
from .images import UNREADABLE, leave_out, open_image, to_rgb, without_leftovers
from .splits import SPLIT_SEED, ImageData, Split, stratified_holdout
from .splits import why as _why

# --- torchvision ---------------------------------------------------------------------------------------

# The part held out (stratified, SPLIT_SEED) as the scored split where torchvision defines no split and
# data.val_fraction is null: the 80/20 split EuroSAT's and Caltech's transfer benchmarks commonly report.
HOLDOUT_FRACTION = 0.2


@dataclass(frozen=True)
class Official:
    """How tlsweep reads one torchvision dataset: the split (constructor argument) each role gets."""
    folder: str  # what torchvision reads under data.root ("." : data.root itself)
    get: str  # how to get the files by hand ({root}: data.root), for the error a missing copy raises
    train: str | None = "train"  # None: torchvision defines no split; one is held out of the whole set
    scored: str | None = "test"
    select: str | None = None  # the official validation split, where a test split is scored
    flag: bool = False  # the constructor takes train=True/False (CIFAR, MNIST), not split=
    extra: tuple[tuple[str, object], ...] = ()  # further constructor arguments, as (name, value)
    classes: tuple[str, ...] = ()  # where torchvision names none (SVHN, GTSRB)
    downloads: bool = True  # False: torchvision cannot download it any more (StanfordCars)

    def kwargs(self, split: str | None) -> dict:
        if split is None:
            return dict(self.extra)
        return {"train": split == "train"} if self.flag else {"split": split, **dict(self.extra)}

    @property
    def scored_name(self) -> str:
        """What the run's metrics call the scored split: final_test_acc, or final_val_acc."""
        return "test" if self.scored and self.scored.startswith("test") else "val"


_VGG = "https://www.robots.ox.ac.uk/~vgg/data"
# data.dataset -> how to read it: torchvision 0.29's classification datasets with an official protocol
TORCHVISION: dict[str, Official] = {
    "CIFAR10": Official("cifar-10-batches-py", "extract https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz "
                        "in {root}", flag=True),
    "CIFAR100": Official("cifar-100-python", "extract https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz "
                         "in {root}", flag=True),
    "MNIST": Official("MNIST/raw", "gunzip the four *-ubyte.gz files of https://ossci-datasets.s3.amazonaws.com/mnist/ "
                      "into {root}/MNIST/raw", flag=True),
    "FashionMNIST": Official("FashionMNIST/raw", "gunzip the four *-ubyte.gz files of "
                             "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/ into {root}/FashionMNIST/raw",
                             flag=True),
    "SVHN": Official(".", "put train_32x32.mat and test_32x32.mat of http://ufldl.stanford.edu/housenumbers/ in "
                     "{root} itself (the 'extra' split is not used)", classes=tuple(str(d) for d in range(10))),
    "STL10": Official("stl10_binary", "extract http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz in {root} "
                      "(the 5,000 labelled training images train; the unlabelled ones are not used)",
                      classes=("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")),
    "Flowers102": Official("flowers-102", f"put {_VGG}/flowers/102/102flowers.tgz extracted (jpg/), imagelabels.mat "
                           "and setid.mat in {root}/flowers-102", select="val"),
    "DTD": Official("dtd", f"extract {_VGG}/dtd/download/dtd-r1.0.1.tar.gz in {{root}}/dtd (giving "
                    "{root}/dtd/dtd/images and labels); partition 1 of the 10 is used", select="val",
                    extra=(("partition", 1),)),
    "FGVCAircraft": Official("fgvc-aircraft-2013b", f"extract {_VGG}/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz "
                             "in {root} (the 100 variants are the classes)", select="val"),
    "Country211": Official("country211", "extract https://openaipublic.azureedge.net/clip/data/country211.tgz in {root}",
                           select="valid"),
    "RenderedSST2": Official("rendered-sst2", "extract https://openaipublic.azureedge.net/clip/data/rendered-sst2.tgz "
                             "in {root}", select="val"),
    "OxfordIIITPet": Official("oxford-iiit-pet", f"extract {_VGG}/pets/data/images.tar.gz and annotations.tar.gz in "
                              "{root}/oxford-iiit-pet", train="trainval"),
    "Food101": Official("food-101", "extract http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz in {root}"),
    "StanfordCars": Official("stanford_cars", "torchvision cannot download it (its URL is gone): from a copy (e.g. "
                             "Kaggle's), lay out {root}/stanford_cars/devkit/{{cars_meta.mat,cars_train_annos.mat}}, "
                             "cars_train/, cars_test/ and cars_test_annos_withlabels.mat", downloads=False),
    "GTSRB": Official("gtsrb", "extract GTSRB-Training_fixed.zip, GTSRB_Final_Test_Images.zip and "
                      "GTSRB_Final_Test_GT.zip of https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/ "
                      "in {root}/gtsrb", classes=tuple(str(c) for c in range(43))),
    "Imagenette": Official("imagenette2", "extract https://s3.amazonaws.com/fast-ai-imageclas/imagenette2.tgz in {root}",
                           scored="val"),
    "Caltech101": Official("caltech101", "extract caltech-101.zip of https://data.caltech.edu/records/mzrjq-6wc02, "
                           "then its 101_ObjectCategories.tar.gz, in {root}/caltech101", train=None, scored=None),
    "Caltech256": Official("caltech256", "extract 256_ObjectCategories.tar of https://data.caltech.edu/records/nyy15-4j048 "
                           "in {root}/caltech256", train=None, scored=None),
    "SUN397": Official("SUN397", "extract http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz in {root}",
                       train=None, scored=None),
    "EuroSAT": Official("eurosat", "extract EuroSAT.zip of https://huggingface.co/datasets/torchgeo/eurosat in "
                        "{root}/eurosat (giving {root}/eurosat/2750/<class>/*.jpg)", train=None, scored=None),
}


def _open(name: str, spec: Official, root: Path, split: str | None, download: bool):
    """torchvision's dataset object of one split, downloaded by torchvision when missing and `download`."""
    cls = getattr(torchvision.datasets, name)
    fetch = download and spec.downloads  # StanfordCars(download=True) raises even where the files are there
    try:
        return cls(str(root), download=fetch, **spec.kwargs(split))
    except (RuntimeError, OSError, ValueError) as err:  # not found / corrupt; urllib's URLError is an OSError
        where = (root / spec.folder).absolute()
        tried = ("torchvision cannot download it" if not spec.downloads else
                 "the download failed" if download else "data.download=false")
        raise DataError(f"{name}{f' ({split} split)' if split else ''}: no usable copy in {where} ({_why(err)}; "
                        f"{tried}). torchvision reads it from there: {spec.get.format(root=root.absolute())}; "
                        f"or pass data.root=<the folder that holds {'them' if spec.folder == '.' else spec.folder}>"
                        + ("; with network, data.download=true fetches it" if spec.downloads else "")) from None


def _rebuilt(name: str, ds) -> list[str]:
    """Caltech's file paths, which torchvision does not keep: rebuilt as its __getitem__ builds them."""
    if name == "Caltech101":
        return [os.path.join(ds.root, "101_ObjectCategories", ds.categories[y], f"image_{i:04d}.jpg")
                for i, y in zip(ds.index, ds.y)]
    return [os.path.join(ds.root, "256_ObjectCategories", ds.categories[y], f"{y + 1:03d}_{i:04d}.jpg")
            for i, y in zip(ds.index, ds.y)]


def _items(name: str, ds) -> Split:
    """One split's images, as file paths where torchvision keeps files, as uint8 [3,H,W] tensors where it
    holds arrays (CIFAR, SVHN, STL10, MNIST). Reads torchvision's (private) file lists: checked here, so
    that a torchvision that renames them fails with this message, not later."""
    data = getattr(ds, "data", None)
    if isinstance(data, (np.ndarray, torch.Tensor)):
        x = torch.as_tensor(np.asarray(data))
        if x.ndim == 3:  # grayscale (MNIST): three channels, so ImageNet backbones take them unchanged
            x = x[:, None].expand(-1, 3, -1, -1)
        elif x.shape[-1] == 3:  # HWC (CIFAR); SVHN and STL10 hold CHW
            x = x.permute(0, 3, 1, 2)
        targets = getattr(ds, "targets", None)
        targets = ds.labels if targets is None else targets
        return Split([img.clone() for img in x.to(torch.uint8)], [int(t) for t in targets])
    if name in ("Caltech101", "Caltech256"):
        files, targets = _rebuilt(name, ds), list(ds.y)
    elif (attr := next((a for a in ("_image_files", "_images") if hasattr(ds, a)), None)) and hasattr(ds, "_labels"):
        files, targets = getattr(ds, attr), ds._labels  # Flowers102, DTD, FGVCAircraft, Food101, SUN397; the pets
    elif attr := next((a for a in ("_samples", "samples") if hasattr(ds, a)), None):
        pairs = getattr(ds, attr)  # StanfordCars, GTSRB, Imagenette, RenderedSST2; ImageFolders (EuroSAT, Country211)
        files, targets = [p for p, _ in pairs], [t for _, t in pairs]
    else:
        raise DataError(f"torchvision {torchvision.__version__}'s {name} keeps none of the image lists tlsweep reads "
                        "(data, _image_files/_images with _labels, _samples, samples; written against torchvision "
                        "0.29): update tlsweep.data.sources._items")
    files = [str(f) for f in files]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise DataError(f"{name}: {len(missing)} image file(s) it lists are missing, e.g. {missing[0]}; "
                        "re-extract the dataset")
    return Split(files, [int(t) for t in targets])


def _classes(name: str, spec: Official, ds) -> list[str]:
    names = getattr(ds, "classes", None) or getattr(ds, "categories", None) or spec.classes
    if not names:
        raise DataError(f"torchvision's {name} names no classes here; tlsweep needs them (data.dataset={name})")
    # Imagenette names each class with its synonyms, as a tuple: the first is the name
    return [str(c[0]) if isinstance(c, tuple) else str(c) for c in names]


def torchvision_data(cfg) -> ImageData:
    """`data=torchvision data.dataset=<Name> data.root=<download folder>`: the dataset's official splits,
    mapped to roles as `TORCHVISION` says."""
    name = str(cfg.dataset)
    if name not in TORCHVISION:
        raise DataError(f"unknown data.dataset {name!r}; valid: {', '.join(TORCHVISION)}")
    spec, root = TORCHVISION[name], Path(cfg.root).expanduser()
    fraction = cfg.get("val_fraction")
    if fraction and spec.scored is not None:
        raise DataError(f"{name} has its own {spec.scored} split, so data.val_fraction={fraction} would be ignored: "
                        "drop it (it holds out a part only where torchvision defines no split)")

    def split_of(split: str | None, classes: list[str] | None = None) -> tuple[Split, list[str]]:
        ds = _open(name, spec, root, split, bool(cfg.download))
        # torchvision's ImageFolder (EuroSAT, Country211) takes a ".ipynb_checkpoints" folder for a class
        items, own = without_leftovers(_classes(name, spec, ds), _items(name, ds), root)
        if classes is not None and own != classes:  # DTD, Food101, the pets name classes per split
            raise DataError(f"{name}'s {split} split names other classes than its {spec.train} split "
                            f"({len(own)} vs {len(classes)}); re-extract the dataset")
        return items, own

    train, classes = split_of(spec.train)
    if spec.scored is None:
        fraction = float(fraction or HOLDOUT_FRACTION)
        train, val = stratified_holdout(train, fraction, SPLIT_SEED, classes=classes, key="data.val_fraction",
                                        where=f"{name} ({(root / spec.folder).absolute()})")
        val_from = (f"{fraction} of {name} held out, stratified by class (seed {SPLIT_SEED}; torchvision defines "
                    f"no split): {len(val.items)} images")
    else:
        val, _ = split_of(spec.scored, classes)
        val_from = f"{name}'s official {spec.scored} split: {len(val.items)} images"
    data = ImageData(name, classes, train, val, val_from=val_from, scored=spec.scored_name)
    if spec.select is not None:
        data.select, _ = split_of(spec.select, classes)
        data.select_from = f"{name}'s official {spec.select} split: {len(data.select.items)} images, never trained on"
    return data


# --- file lists (VTAB-1k as the PEFT repositories ship it) -------------------------------------------------

def _read_list(path: Path) -> list[tuple[str, int]]:
    """`<relative path> <label>` per line."""
    if not path.is_file():
        raise DataError(f"list file {path} does not exist; a VTAB-1k task folder holds train800.txt, val200.txt, "
                        "train800val200.txt and test.txt (data.train_list, data.select_list, data.test_list)")
    pairs = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().rsplit(maxsplit=1)  # the last field is the label: a path may hold spaces
        try:
            pairs.append((parts[0], int(parts[1])))
        except (IndexError, ValueError):
            raise DataError(f"{path}:{n}: expected '<relative path> <integer label>', got {line.strip()!r}") from None
    if not pairs:
        raise DataError(f"list file {path} lists no images")
    return pairs


def file_list(root: str | Path, train_list: str | None = None, select_list: str | None = "val200.txt",
              test_list: str = "test.txt") -> ImageData:
    """A task folder of `<relative path> <label>` lists: `train_list` trains (null: train800.txt, or
    train800val200.txt without a selection list), `select_list` selects, `test_list` is scored as "test".
    The classes are the distinct labels, sorted numerically."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root={str(root)!r} does not exist. Set it to one task's folder (e.g. vtab-1k/dtd) "
                        "holding train800.txt, val200.txt, train800val200.txt and test.txt.")
    train_list = train_list or ("train800.txt" if select_list else "train800val200.txt")
    lists = {"train": train_list, "select": select_list, "test": test_list}
    pairs = {role: _read_list(root / f) for role, f in lists.items() if f}
    labels = sorted({label for ps in pairs.values() for _, label in ps})
    index = {label: i for i, label in enumerate(labels)}
    splits = {role: Split([str(root / p) for p, _ in ps], [index[label] for _, label in ps])
              for role, ps in pairs.items()}
    missing = [(lists[role], p) for role, s in splits.items() for p in s.items if not os.path.isfile(p)]
    if missing:
        raise DataError(f"{len(missing)} image(s) listed are missing, e.g. {missing[0][1]} (listed in "
                        f"{root / missing[0][0]})")
    trained = set(splits["train"].items)
    for role in ("select", "test"):
        shared = trained.intersection(splits[role].items) if role in splits else ()
        if shared:  # e.g. data.train_list=train800val200.txt with the default data.select_list=val200.txt
            raise DataError(f"{len(shared)} image(s) of {lists[role]} are also in {train_list} (e.g. {min(shared)}): "
                            f"a {role} split must be held out of training"
                            + ("; set data.select_list=null to train on train800val200.txt" if role == "select" else ""))
    data = ImageData(root.name, [str(label) for label in labels], splits["train"], splits["test"],
                     val_from=f"{root.name}'s {test_list}: {len(splits['test'].items)} images", scored="test")
    if "select" in splits:
        data.select = splits["select"]
        data.select_from = f"{root.name}'s {select_list}: {len(data.select.items)} images, never trained on"
    else:
        data.select_from = (f"none (data.select_list=null): {train_list} trains, "
                            f"{len(splits['train'].items)} images")
    return data


def file_list_data(cfg) -> ImageData:
    """`data=filelist data.root=<task folder>`, with data.train_list, data.select_list, data.test_list."""
    root = Path(cfg.root) / cfg.task if cfg.get("task") else cfg.root
    return file_list(root, cfg.train_list, cfg.select_list, cfg.test_list)


# --- Hugging Face datasets -------------------------------------------------------------------------------

def _datasets():
    """The `datasets` package, an optional extra."""
    try:
        import datasets
    except ImportError:
        raise DataError('data=hf needs the Hugging Face `datasets` package: pip install -e ".[datasets]"') from None
    return datasets


def _load_hf(cfg, datasets):
    """(the DatasetDict, its name): a folder written by `save_to_disk`, or a dataset of the hub."""
    path = str(cfg.path)
    local = Path(path).expanduser()
    if (local / "dataset_dict.json").is_file():
        return datasets.load_from_disk(str(local)), local.name
    if (local / "state.json").is_file():
        raise DataError(f"{local} holds one Dataset saved with save_to_disk, without named splits: save a "
                        "DatasetDict (e.g. {'train': ..., 'test': ...}) so that data.train_split and "
                        "data.scored_split can name them")
    name = path + (f"/{cfg.subset}" if cfg.subset else "") + (f"@{cfg.revision}" if cfg.revision else "")
    try:
        loaded = datasets.load_dataset(path, cfg.subset, revision=cfg.revision, cache_dir=cfg.root)
    except (OSError, ValueError) as err:  # offline: ConnectionError; unknown name: DatasetNotFoundError
        raise DataError(
            f"could not load {name!r} from {'that folder' if local.is_dir() else 'the Hugging Face hub'} "
            f"({_why(err)}). Offline: on a machine with network "
            f"run datasets.load_dataset({path!r}).save_to_disk(FOLDER), copy FOLDER here and pass data.path=FOLDER; "
            "or, with it already in the cache (data.root, else ~/.cache/huggingface/datasets), set "
            "HF_DATASETS_OFFLINE=1 and HF_HUB_OFFLINE=1") from None
    if not isinstance(loaded, datasets.DatasetDict):
        raise DataError(f"{name} loaded as one split, not a dataset of named splits")
    return loaded, name


def hf_data(cfg) -> ImageData:
    """`data=hf data.path=<hub name or folder>`: train_split trains, select_split selects, scored_split is
    scored (as "test" when its name starts with test, else as "val"); images decoded to uint8 tensors."""
    from torchvision.transforms.v2.functional import pil_to_tensor

    datasets = _datasets()
    dd, name = _load_hf(cfg, datasets)
    roles = {"train": cfg.train_split, "scored": cfg.scored_split, "select": cfg.select_split}
    named = [split for split in roles.values() if split is not None]
    if len(set(named)) < len(named):
        raise DataError(f"data.train_split, data.select_split and data.scored_split must name different splits, "
                        f"got {', '.join(named)}: a split that trains cannot select or be scored")
    picked = {}
    for role, split in roles.items():
        if split is None:
            continue
        if split not in dd:
            raise DataError(f"{name} has no split {split!r} (data.{role}_split); it has {', '.join(dd)}")
        ds = dd[split]
        for key in ("image_column", "label_column"):
            if cfg[key] not in ds.column_names:
                raise DataError(f"{name}'s {split} split has no column {cfg[key]!r} (data.{key}); it has "
                                f"{', '.join(ds.column_names)}")
        picked[role] = ds
    label = picked["train"].features[cfg.label_column]
    if isinstance(label, datasets.ClassLabel):
        classes, index = list(label.names), None
        for role, ds in picked.items():
            other = ds.features[cfg.label_column]
            if getattr(other, "names", None) != classes:
                raise DataError(f"{name}'s {roles[role]} split names other classes than its {cfg.train_split} split")
    else:  # plain values: the distinct ones of every split used, sorted
        values = sorted({v for ds in picked.values() for v in ds[cfg.label_column]})
        classes, index = [str(v) for v in values], {v: i for i, v in enumerate(values)}

    bad: list[tuple[str, str]] = []  # (row, why) of the images that cannot be decoded

    def split(role: str) -> Split:
        ds = picked[role]
        # undecoded (bytes or a path), so that a decompression bomb is refused from its header, never decoded
        ds = ds.cast_column(cfg.image_column, datasets.Image(decode=False))
        targets = [v if index is None else index[v] for v in ds[cfg.label_column]]
        if index is None and not all(0 <= t < len(classes) for t in targets):  # ClassLabel's -1: no label
            raise DataError(f"{name}'s {roles[role]} split holds images without a label ({cfg.label_column} outside "
                            f"0..{len(classes) - 1}); it cannot be trained or scored on")
        kept = Split([], [])
        for row, (cell, target) in enumerate(zip(ds.select_columns([cfg.image_column])[cfg.image_column], targets)):
            if not isinstance(cell, dict) or not (cell.get("bytes") or cell.get("path")):
                raise DataError(f"{name}'s {roles[role]} split: {cfg.image_column} is not an image column")
            where = f"{name}/{roles[role]}[{row}]" + (f" ({cell['path']})" if cell.get("path") else "")
            try:
                with open_image(io.BytesIO(cell["bytes"]) if cell.get("bytes") else cell["path"]) as img:
                    kept.items.append(pil_to_tensor(to_rgb(img)))
            except UNREADABLE as err:
                bad.append((where, _why(err)))
                continue
            kept.targets.append(int(target))
        if targets and not kept.items:
            raise DataError(f"{name}'s {roles[role]} split has no readable image: {bad[-1][0]}: {bad[-1][1]}")
        return kept

    scored = split("scored")
    data = ImageData(name, classes, split("train"), scored,
                     val_from=f"{name}'s {cfg.scored_split} split: {len(scored.items)} images",
                     scored="test" if str(cfg.scored_split).startswith("test") else "val")
    if "select" in picked:
        data.select = split("select")
        data.select_from = f"{name}'s {cfg.select_split} split: {len(data.select.items)} images, never trained on"
    if bad:
        leave_out(name, bad, cfg.get("bad_images", "skip"))
        data.skipped = [w for w, _ in bad]
    return data
