"""The `data` group's schemas: one per kind of source, each key with its help and range (tlsweep.config.rules).

schema.py keeps the other groups and imports these under its own names; conf/data/*.yaml
extends them (`defaults: [/data_<kind>_schema@_here_]`). A subclass that redefines a key keeps the base's help.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional

from omegaconf import MISSING

from .rules import Rule, at_least, fraction, key, number


class BadImages(str, Enum):
    """What decoding does with an image file it cannot read."""
    skip = "skip"  # leave it out, warn with the list, count it in a run tag
    error = "error"  # refuse the data, listing the files

    def __str__(self) -> str:
        return self.value


@dataclass
class DataConf:
    name: str = key(MISSING, "the dataset's name in runs and reports (each data option sets it)")
    root: Optional[str] = key(None, "the folder with train/<class>/* and val/<class>/*; torchvision: the download "
                                    "folder; filelist: the task folder; hf: the download cache (null: Hugging Face's)")
    select_fraction: Optional[float] = key(
        None, "hold out this stratified part of train (fixed seed) as a selection split, never trained on; runs "
              "log select_acc for `report select=`; carved before data.shots", fraction())
    select_seed: Optional[int] = key(
        None, "the draw of the selection split; null: one fixed draw for every run; ${seed}: a draw per run seed "
              "(repeated hold-out: on a small split, a choice is not bet on one draw of a few images)",
        at_least(0, null="the fixed draw"))
    shots: Optional[int] = key(None, "keep N training images per class (a fixed subset; val untouched)",
                               at_least(1, null="every training image"))
    shots_seed: int = key(0, "the seed that picks the data.shots subset, the same for every run seed", at_least(0))
    image_size: Optional[int] = key(None, "the crop size (the resize keeps the weights' ratio)",
                                    at_least(16, null="the crop the weights expect"))
    num_workers: int = key(2, "worker processes of the streaming loader (the decode-once path needs none)",
                           at_least(0))
    cache: bool = key(True, "decode every image once, then augment tensors per sample; false: stream from disk")
    cache_budget_mb: float = key(4096, "MB a process may hold of decoded images (above it they stream from disk; "
                                       "a decode peaks at their size plus the images in flight), and, apart, of "
                                       "cached features (above it they go to cache_dir, read a batch at a time). A joblib worker "
                                       "holds its own images, unless cache_to_disk maps one copy per node",
                                 number(0, strict=False))
    cache_to_disk: bool | str = key("auto", "also keep the decoded images under cache_dir, where a sweep's other "
                                          "processes on the node read one copy of them through a memory map; auto: "
                                          "where the launcher runs jobs in processes of their own (joblib, SLURM)",
                                    Rule("true, false or auto", lambda v: v is True or v is False or v == "auto"))
    bad_images: BadImages = key(BadImages.skip, "an image file that cannot be decoded: skip it (printed, warned, "
                                                "tagged) or refuse the data with the list")


@dataclass
class DownloadDataConf(DataConf):
    download: bool = key(True, "download into data.root when missing")


@dataclass
class FolderDataConf(DataConf):
    root: str = MISSING  # required: data.root=/path/to/folder
    val_fraction: Optional[float] = key(
        None, "imagefolder with only train/ (or only class folders): hold out this stratified part as val, fixed "
              "seed; torchvision: the part held out where it defines no split (null there: 0.2)", fraction())


@dataclass
class TorchvisionDataConf(DownloadDataConf):
    root: str = "data"  # the download folder: torchvision keeps each dataset in its own folder under it
    dataset: str = key(MISSING, "torchvision's class name: CIFAR10, Flowers102, ... (tlsweep.data.sources.TORCHVISION; "
                                "an unknown name lists the valid ones)")
    val_fraction: Optional[float] = key(None, rule=fraction())  # where torchvision defines no split (null: 0.2)


@dataclass
class FileListDataConf(DataConf):
    root: str = MISSING  # one task's folder of <relative path> <label> lists (VTAB-1k), or a suite's folder
    task: Optional[str] = key(None, "a task folder under data.root (a sweep over a suite's tasks); null: data.root "
                                    "is the task")
    train_list: Optional[str] = key(None, "the list that trains; null: train800.txt, or train800val200.txt when "
                                          "data.select_list is null")
    select_list: Optional[str] = key("val200.txt", "the list that selects; null: none")
    test_list: str = key("test.txt", "the list that is scored (final_test_acc)")


@dataclass
class HfDataConf(DataConf):
    path: str = key(MISSING, "a Hugging Face hub name (uoft-cs/cifar10) or a folder written by save_to_disk")
    subset: Optional[str] = key(None, "the hub's configuration name, where it has several")
    revision: Optional[str] = key(None, "a hub commit or tag, to pin the data")
    image_column: str = key("image", "the image column (decoded to RGB)")
    label_column: str = key("label", "the label column (class names from its ClassLabel)")
    train_split: str = key("train", "the split that trains")
    select_split: Optional[str] = key(None, "the split that selects; null: none")
    scored_split: str = key("test", "the split that is scored: final_test_acc when its name starts with test, "
                                    "else final_val_acc")


# every data schema, as conf/data/*.yaml names them (data_<kind>_schema)
DATA_SCHEMAS: dict[str, type] = {"data": DataConf, "download": DownloadDataConf, "folder": FolderDataConf,
                                 "torchvision": TorchvisionDataConf, "filelist": FileListDataConf, "hf": HfDataConf}
