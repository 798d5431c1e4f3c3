"""The config's schema: every group's keys with their types and defaults, as Hydra structured configs.

Each YAML file under conf/ extends its schema (`defaults: [/<group>_<name>_schema@_here_, _self_]`), so that Hydra
refuses at composition a value of the wrong type (`optim.lr=fast`) or a key that is not there
(`strategy.probe_epoch=3`), naming the key. A strategy's schema holds only the keys that strategy reads:
finetune has no `probe_epochs`, so a sweep cannot quietly give it one.

`check_ranges(cfg)` then tests what a type cannot say (ranges and relations), before a job reads data or
builds a model; the strategy's own values are checked by `recipes.Recipe`, the device's presence by
`runtime.resolve_device`. Torch-free: the CLI composes and refuses a config without importing torch.
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from .advise_schema import AdviseConf
from .errors import ConfigError
from .keys import STRATEGIES


class FreezeBN(str, Enum):
    """Which BatchNorm layers stay in eval mode (running statistics fixed) while the model trains."""
    frozen = "frozen"  # those whose parameters are all frozen: a frozen stage stays a fixed function
    none = "none"  # none: every BatchNorm uses batch statistics (plain model.train())
    all = "all"  # every one, trained or not (LP-FT's use_net_val_mode)

    def __str__(self) -> str:  # as the YAML spells it, in params, tags and messages
        return self.value

    @classmethod
    def of(cls, value) -> "FreezeBN":
        """From the config's value, or from a bool as code may pass it (True: frozen, False: none)."""
        if isinstance(value, bool):
            return cls.frozen if value else cls.none
        return cls(str(value))


class BadImages(str, Enum):
    """What decoding does with an image file it cannot read."""
    skip = "skip"  # leave it out, warn with the list, count it in a run tag
    error = "error"  # refuse the data, listing the files

    def __str__(self) -> str:
        return self.value


# ---- model --------------------------------------------------------------------------------------------

@dataclass
class ModelConf:
    name: str = MISSING  # what runs and errors call it
    source: str = "timm"  # timm | torchvision
    arch: Optional[str] = None  # timm model name with its tag, or torchvision's model name
    weights: Optional[str] = "DEFAULT"  # DEFAULT, null (random init) or a .pth/.safetensors file


# ---- strategy: a base and the keys that only some strategies read ---------------------------------------

@dataclass
class StrategyConf:
    name: str = MISSING
    pretrained: bool = True
    unfreeze: Any = "all"  # all, a list of stage names or indices, [] (head only), or null (the last stage)
    backbone_lr_scale: float = 1.0
    freeze_bn: FreezeBN = FreezeBN.frozen
    cache_features: bool = True
    feature_views: Optional[int] = None


@dataclass
class ParamsKeys:
    params: str = "all"  # which parameters of an unfrozen stage train: all, bias, norm, no_batchnorm


@dataclass
class ProbePhaseKeys:
    probe_epochs: int = 0


@dataclass
class DecayKeys:
    layer_decay: float = 1.0
    granularity: str = "stage"  # stage | layer (timm's fine-grained groups)


@dataclass
class GradualKeys:
    unfreeze_every: Optional[int] = None


@dataclass
class L2spKeys:
    l2sp_alpha: float = 0.0
    l2sp_beta: float = 0.0


@dataclass
class RgnKeys:
    reweight: Optional[str] = None
    rgn_batches: int = 5


@dataclass
class AdapterKeys:
    adapter: Optional[str] = None  # lora | dora
    rank: int = 8
    alpha: float = 8.0
    target_modules: Any = None
    adapter_dropout: float = 0.0


@dataclass
class FilterStrategy(ParamsKeys, StrategyConf):
    pass


@dataclass
class LpftStrategy(ProbePhaseKeys, StrategyConf):
    pass


@dataclass
class LlrdStrategy(DecayKeys, StrategyConf):
    pass


@dataclass
class GradualStrategy(GradualKeys, ProbePhaseKeys, DecayKeys, StrategyConf):
    pass


@dataclass
class L2spStrategy(L2spKeys, StrategyConf):
    pass


@dataclass
class RgnStrategy(RgnKeys, ParamsKeys, StrategyConf):
    pass


@dataclass
class AdapterStrategy(AdapterKeys, StrategyConf):
    pass


@dataclass
class AnyStrategy(AdapterKeys, RgnKeys, L2spKeys, GradualKeys, DecayKeys, ProbePhaseKeys, ParamsKeys,
                  StrategyConf):
    """Every strategy key with its default: what `recipes.Recipe` holds."""


# strategy name -> its schema (conf/strategy/<name>.yaml extends strategy_<name>_schema)
STRATEGY_SCHEMAS: dict[str, type] = {
    "scratch": StrategyConf, "probe": StrategyConf, "partial": StrategyConf, "finetune": StrategyConf,
    "lpft": LpftStrategy, "llrd": LlrdStrategy, "gradual": GradualStrategy, "l2sp": L2spStrategy,
    "bitfit": FilterStrategy, "norm": FilterStrategy, "auto_rgn": RgnStrategy, "lora": AdapterStrategy,
    "dora": AdapterStrategy, "score": StrategyConf,
}
assert set(STRATEGY_SCHEMAS) == set(STRATEGIES)


# ---- optim ------------------------------------------------------------------------------------------

@dataclass
class OptimConf:
    name: str = MISSING  # adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 1e-4
    scheduler: Optional[str] = "cosine"  # cosine | none


@dataclass
class SgdConf(OptimConf):
    momentum: float = 0.9


# ---- data -------------------------------------------------------------------------------------------

@dataclass
class DataConf:
    name: str = MISSING
    root: Optional[str] = None
    select_fraction: Optional[float] = None
    shots: Optional[int] = None
    shots_seed: int = 0
    image_size: Optional[int] = None
    num_workers: int = 2
    cache: bool = True
    cache_budget_mb: float = 4096
    cache_to_disk: bool = False
    bad_images: BadImages = BadImages.skip


@dataclass
class DownloadDataConf(DataConf):
    download: bool = True


@dataclass
class FolderDataConf(DataConf):
    root: str = MISSING  # required: data.root=/path/to/folder
    val_fraction: Optional[float] = None


@dataclass
class TorchvisionDataConf(DownloadDataConf):
    root: str = "data"  # the download folder: torchvision keeps each dataset in its own folder under it
    dataset: str = MISSING  # a torchvision class name: CIFAR10, Flowers102, ... (tlsweep.sources.TORCHVISION)
    val_fraction: Optional[float] = None  # where torchvision defines no split: the part held out (null: 0.2)


@dataclass
class FileListDataConf(DataConf):
    root: str = MISSING  # one task's folder of <relative path> <label> lists (VTAB-1k), or a suite's folder
    task: Optional[str] = None  # a task folder under root (a sweep over a suite's tasks); null: root is the task
    train_list: Optional[str] = None  # null: train800.txt, or train800val200.txt when select_list is null
    select_list: Optional[str] = "val200.txt"
    test_list: str = "test.txt"


@dataclass
class HfDataConf(DataConf):
    path: str = MISSING  # a hub name (uoft-cs/cifar10) or a folder written by save_to_disk
    subset: Optional[str] = None  # the hub's configuration name, where it has several
    revision: Optional[str] = None  # a hub commit or tag, to pin the data
    image_column: str = "image"
    label_column: str = "label"
    train_split: str = "train"
    select_split: Optional[str] = None
    scored_split: str = "test"


# ---- the top ----------------------------------------------------------------------------------------

@dataclass
class TrackingConf:
    uri: Optional[str] = None
    experiment: str = "tlsweep"
    sweep_name: Optional[str] = None


@dataclass
class Config:
    # Each group's option brings its own schema (a subclass of these). Typed Any here: OmegaConf merges an
    # option into a field typed with the base class by filling the base's defaults first, and a `???`
    # of the option then cannot unset them (data=imagefolder would get root=None, not "required").
    model: Any = MISSING  # ModelConf
    strategy: Any = MISSING  # StrategyConf or one with its strategy's own keys
    optim: Any = MISSING  # OptimConf
    data: Any = MISSING  # DataConf
    tracking: TrackingConf = field(default_factory=TrackingConf)
    advise: Optional[AdviseConf] = None  # experiment=advise sets it: the advisor's study
    seed: int = 0
    epochs: int = 10
    batch_size: int = 32
    device: str = "auto"
    bf16: bool = True
    channels_last: bool = True
    cache_dir: Optional[str] = ".cache/tlsweep"


def register() -> None:
    """Put the schemas in Hydra's ConfigStore, where conf/'s defaults lists find them."""
    cs = ConfigStore.instance()
    # In no group: a group's schemas would show in `--help` as if they were its options.
    nodes = {"config": Config, "model_model": ModelConf, "optim_adamw": OptimConf, "optim_sgd": SgdConf,
             "data_data": DataConf, "data_download": DownloadDataConf, "data_folder": FolderDataConf,
             "data_torchvision": TorchvisionDataConf, "data_filelist": FileListDataConf, "data_hf": HfDataConf,
             **{f"strategy_{name}": schema for name, schema in STRATEGY_SCHEMAS.items()}}
    for name, node in nodes.items():
        cs.store(name=f"{name}_schema", node=node)


register()  # on import: whatever composes tlsweep's config (the CLI, tests, benchmarks) imports this module


# ---- what a type cannot say ---------------------------------------------------------------------------

def _bad(key: str, value, allowed: str) -> ConfigError:
    return ConfigError(f"{key}={value}: {allowed}")


def check_ranges(cfg: DictConfig) -> None:
    """Ranges and relations of the top level, optim and data, each refused in one line naming the key and
    what it may be. A `0` where null means "all" is refused, not read as null."""
    def at_least(key: str, low: int, null_ok: bool = False, note: str = "") -> None:
        value = OmegaConf.select(cfg, key)
        if value is None and null_ok:
            return
        if value is None or value < low:
            raise _bad(key, value, f"must be an integer >= {low}" + (" or null" if null_ok else "") + note)

    def fraction(key: str) -> None:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not 0 < value < 1:
            raise _bad(key, value, "must be a fraction in (0, 1), or null for none held out")

    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra."))
    if missing:
        what = {"data.root": "the folder that holds train/ and val/" if cfg.data.name != "filelist" else
                "the task folder that holds train800.txt, val200.txt and test.txt",
                "data.dataset": "a torchvision dataset: CIFAR10, Flowers102, DTD, ...",
                "data.path": "a Hugging Face hub name, or a folder written by save_to_disk"}.get(missing[0])
        raise ConfigError(f"{missing[0]} is required and not set: give {missing[0]}=..."
                          + (f" ({what})" if what else ""))
    at_least("epochs", 1)
    at_least("batch_size", 1)
    at_least("seed", 0, note=" (numpy seeds are unsigned)")
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", cfg.device):
        raise _bad("device", cfg.device, "must be auto, cpu, cuda, cuda:<index> or mps")
    lr, wd = cfg.optim.lr, cfg.optim.weight_decay
    if not (math.isfinite(lr) and lr > 0):
        raise _bad("optim.lr", lr, "must be a finite number > 0")
    if not (math.isfinite(wd) and wd >= 0):
        raise _bad("optim.weight_decay", wd, "must be a finite number >= 0")
    momentum = OmegaConf.select(cfg, "optim.momentum", default=None)
    if momentum is not None and not 0 <= momentum < 1:
        raise _bad("optim.momentum", momentum, "must be in [0, 1)")
    at_least("data.shots", 1, null_ok=True, note=" (null: every training image)")
    at_least("data.shots_seed", 0)
    at_least("data.image_size", 16, null_ok=True, note=" (null: the crop the weights expect)")
    at_least("data.num_workers", 0)
    at_least("data.cache_budget_mb", 0)
    fraction("data.select_fraction")
    fraction("data.val_fraction")
    weights = cfg.model.weights
    if weights not in (None, "DEFAULT") and not Path(weights).is_file():
        raise _bad("model.weights", weights, "no such file; give DEFAULT (the pretrained tag), null (random "
                   "init) or the path of a .pth/.pt/.safetensors checkpoint")


# ---- near matches for a key Hydra refused ---------------------------------------------------------------

def known_keys() -> set[str]:
    """Every dotted key some option of some group has."""
    out = {f.name for f in fields(Config)} | {f"tracking.{f.name}" for f in fields(TrackingConf)}
    for group, schemas in (("model", [ModelConf]), ("strategy", [AnyStrategy]), ("optim", [SgdConf]),
                           ("data", [DownloadDataConf, FolderDataConf, TorchvisionDataConf, FileListDataConf,
                                     HfDataConf]), ("advise", [AdviseConf])):
        out |= {f"{group}.{f.name}" for s in schemas for f in fields(s)}
    return out


def near_keys(key: str) -> list[str]:
    """Keys close to a misspelt one (strategy.probe_epoch -> strategy.probe_epochs)."""
    key = key.lstrip("+~")
    return difflib.get_close_matches(key, sorted(known_keys()), n=3, cutoff=0.75)


def hints(overrides: list[str]) -> list[str]:
    """For overrides Hydra refused: the near keys of a misspelt one, the strategies that own a key the
    chosen one lacks."""
    out, known = [], known_keys()
    # the strategies asked for (a sweep's values too); conf/config.yaml's default when none is
    chosen = [v for line in overrides if line.startswith("strategy=") for v in line.split("=", 1)[1].split(",")]
    chosen = chosen or ["finetune"]
    for line in overrides:
        key = line.split("=", 1)[0].lstrip("+~")
        if "=" not in line or key in known and not key.startswith("strategy."):
            continue
        last = key.rsplit(".", 1)[-1]
        owners = [n for n in STRATEGY_SCHEMAS if key.startswith("strategy.") and last in strategy_keys(n)]
        if owners and any(c not in owners for c in chosen):
            out.append(f"tlsweep: strategy.{last} is a key of {', '.join(owners)} only; sweep it in a sweep "
                       "of those (README: keys only some strategies have)")
        elif key not in known and (near := near_keys(key)):
            out.append(f"tlsweep: no key {key}; did you mean {' or '.join(near)}?")
    return out


def strategy_keys(name: str) -> list[str]:
    schema = STRATEGY_SCHEMAS.get(name, AnyStrategy)
    return [f.name for f in fields(schema)]
