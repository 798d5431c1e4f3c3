"""The config's schema: every group's keys with their types and defaults, as Hydra structured configs.

Each YAML file under conf/ extends its schema (`defaults: [/<group>_<name>_schema@_here_, _self_]`), so that Hydra
refuses at composition a value of the wrong type (`optim.lr=fast`) or a key that is not there
(`strategy.probe_epoch=3`), naming the key. A strategy's schema holds only the keys that strategy reads:
finetune has no `probe_epochs`, so a sweep cannot quietly give it one.

Each key carries a one-line help and its range as field metadata (tlsweep/config/rules.py). `check_ranges(cfg)` then
tests what a type cannot say (those ranges, and relations), before a job reads data or builds a model; the
strategy's own values are checked by `recipes.Recipe` against the same rules, the device's presence by
`runtime.resolve_device`. docs/configuration.md is generated from these classes (`python -m tlsweep.manual`).
The data group's schemas live in config/data.py. Torch-free: the CLI composes and refuses a config without
importing torch.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from . import searchpath
from .advise import AdviseConf
from .data import (DATA_SCHEMAS, BadImages, DataConf, DownloadDataConf, FileListDataConf, FolderDataConf, HfDataConf,
                   TorchvisionDataConf)
from .errors import ConfigError
from .keys import STRATEGIES
from .rules import Rule, at_least, key, number, one_of, rule_of, unit_interval


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


# ---- model --------------------------------------------------------------------------------------------

@dataclass
class ModelConf:
    name: str = key(MISSING, "what runs and errors call the model (each preset sets it)")
    source: str = key("timm", "where the architecture and its weights come from", one_of("timm", "torchvision"))
    arch: Optional[str] = key(None, "timm's model name with its pretrained tag (vit_small_patch14_dinov2.lvd142m), "
                                    "or torchvision's for model.source=torchvision")
    weights: Optional[str] = key("DEFAULT", "DEFAULT (the pretrained weights), null (random init), or a checkpoint "
                                            "file: .safetensors, or .pth/.pt/.bin read with weights_only=True")


# ---- strategy: a base and the keys that only some strategies read ---------------------------------------

@dataclass
class StrategyConf:
    name: str = key(MISSING, "the strategy (each conf/strategy option sets it)")
    pretrained: bool = key(True, "start from the model's weights; false: random init, every LR scale 1")
    unfreeze: Any = key("all", "the stages that train: all, a list of stage names or indices (0 = the stem, -1 = "
                               "the last), [] (the head only), or null (the model's last stage)")
    backbone_lr_scale: float = key(1.0, "multiplier of optim.lr for the pretrained parameters (the head: 1)",
                                   number(0, strict=False, note=" (0: the backbone does not train)"))
    freeze_bn: FreezeBN = key(FreezeBN.frozen, "which BatchNorm layers stay in eval mode: frozen (those whose "
                                               "parameters are all frozen), none, all")
    cache_features: bool = key(True, "run a frozen, deterministic prefix once per sweep and train on its features")
    feature_views: Optional[int] = key(None, "augmented train views the feature cache holds per image",
                                       at_least(1, null="one view per epoch"))


# strategy.params: bitfit's bias, the norm layers' affine parameters, auto-RGN's all but BatchNorm (recipes.FILTERS)
PARAMS = ("all", "bias", "norm", "no_batchnorm")


@dataclass
class ParamsKeys:
    params: str = key("all", "which parameters of an unfrozen stage train", one_of(*PARAMS))


@dataclass
class ProbePhaseKeys:
    probe_epochs: int = key(0, "epochs in which the head alone trains, first", at_least(0))


@dataclass
class DecayKeys:
    layer_decay: float = key(1.0, "LR ratio of each stage (or layer) to the one above it",
                             number(0, strict=True, note=" (1: no decay)"))
    granularity: str = key("stage", "what one step of layer_decay spans: a stage (timm's coarse groups) or a layer "
                                    "(timm's coarse=False groups)", one_of("stage", "layer"))


@dataclass
class GradualKeys:
    unfreeze_every: Optional[int] = key(None, "after the probe epochs, one more stage from the top every N epochs",
                                        at_least(1, null="every stage at once"))


@dataclass
class L2spKeys:
    l2sp_alpha: float = key(0.0, "L2-SP's alpha: alpha/2 ‖w - w0‖² pulls the pretrained weights to their start",
                            number(0, strict=False))
    l2sp_beta: float = key(0.0, "L2-SP's beta: beta/2 ‖w‖² on the head", number(0, strict=False))


@dataclass
class RgnKeys:
    reweight: Optional[str] = key(None, "per-epoch LR reweighting: rgn (auto-RGN, by relative gradient norms)",
                                  one_of(None, "rgn"))
    rgn_batches: int = key(5, "batches the relative gradient norms are averaged over, each epoch", at_least(1))


@dataclass
class AdapterKeys:
    adapter: Optional[str] = key(None, "low-rank adapters through peft (the peft extra)", one_of(None, "lora", "dora"))
    rank: int = key(8, "the adapters' rank", at_least(1))
    alpha: float = key(8.0, "the adapters' scale numerator: the update is scaled by alpha / rank", number(0, strict=True))
    target_modules: Any = key(None, "the modules that get adapters, names or a regex; null: every Linear and 1x1 "
                                    "conv of the backbone")
    adapter_dropout: float = key(0.0, "dropout on the adapters' input", unit_interval("a number in [0, 1)"))


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
    name: str = key(MISSING, "the optimizer (each optim option sets it; optim.make_optimizer checks it)")
    lr: float = key(1e-3, "the head's learning rate; pretrained parameters train at it times their strategy's "
                          "scale", number(0, strict=True, finite=True))
    weight_decay: float = key(1e-4, "weight decay, never on 1-D tensors nor on what the model's no_weight_decay() "
                                    "names", number(0, strict=False, finite=True))
    scheduler: Optional[str] = key("cosine", "the LR schedule: cosine (over epochs) or none (null too)")


@dataclass
class SgdConf(OptimConf):
    momentum: float = key(0.9, "SGD's momentum", unit_interval())


# ---- the top ----------------------------------------------------------------------------------------

@dataclass
class TrackingConf:
    uri: Optional[str] = key(None, "the MLflow store; null: $MLFLOW_TRACKING_URI, else "
                                   "sqlite:///<launch dir>/mlruns/mlflow.db")
    experiment: str = key("tlsweep", "the MLflow experiment")
    sweep_name: Optional[str] = key(None, "the sweep's parent run, by name: the same name resumes it; null: "
                                          "sweep-<date>_<time>")


DEVICE = Rule("auto, cpu, cuda, cuda:<index> or mps", lambda v: bool(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v)))


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
    seed: int = key(0, "the run's seed: the head's init, data order, augmentation",
                    at_least(0, note=" (numpy seeds are unsigned)"))
    epochs: int = key(10, "training epochs", at_least(1))
    batch_size: int = key(32, "images per training batch", at_least(1))
    device: str = key("auto", "auto (cuda, then mps, then cpu), or a torch device", DEVICE)
    bf16: bool | str = key("auto", "bfloat16 autocast; auto: on where the device has native bf16 (CUDA with "
                           "compute capability 8.0 on, a CPU with AMX-BF16 or AVX512-BF16); true: there only. "
                           "On the CPU, depthwise convs train in fp32 (faster there)",
                           Rule("true, false or auto", lambda v: v is True or v is False or v == "auto"))
    channels_last: bool = key(True, "NHWC tensors and model: faster convolutions, on the CPU too")
    cache_dir: Optional[str] = key(".cache/tlsweep", "decoded images and cached features, shared by a sweep's "
                                                     "processes; null: memory only")


def register() -> None:
    """Put the schemas in Hydra's ConfigStore, where conf/'s defaults lists find them."""
    cs = ConfigStore.instance()
    # In no group: a group's schemas would show in `--help` as if they were its options.
    nodes = {"config": Config, "model_model": ModelConf, "optim_adamw": OptimConf, "optim_sgd": SgdConf,
             **{f"data_{name}": schema for name, schema in DATA_SCHEMAS.items()},
             **{f"strategy_{name}": schema for name, schema in STRATEGY_SCHEMAS.items()}}
    for name, node in nodes.items():
        cs.store(name=f"{name}_schema", node=node)
    # `--help` prints where the configs are searched (conf/hydra/help/tlsweep.yaml)
    if not OmegaConf.has_resolver("tlsweep.searchpath"):
        OmegaConf.register_new_resolver("tlsweep.searchpath", searchpath.describe, use_cache=False)


register()  # on import: whatever composes tlsweep's config (the CLI, tests, benchmarks) imports this module


# ---- what a type cannot say ---------------------------------------------------------------------------

def _bad(key: str, value, allowed: str) -> ConfigError:
    return ConfigError(f"{key}={value}: {allowed}")


def ranges() -> dict[str, Rule]:
    """Every dotted key of the top level, model, optim and data that has a rule (a strategy's keys are checked by
    its recipe)."""
    out: dict[str, Rule] = {}
    for prefix, schemas in (("", [Config]), ("model.", [ModelConf]), ("optim.", [SgdConf]),
                            ("data.", list(DATA_SCHEMAS.values()))):
        out.update({prefix + f.name: rule for schema in schemas for f in fields(schema)
                    if (rule := rule_of(f)) is not None and prefix + f.name not in out})
    return out


def check_ranges(cfg: DictConfig) -> None:
    """Ranges and relations of the top level, model, optim and data, each refused in one line naming the key and
    what it may be. A `0` where null means "all" is refused, not read as null."""
    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra."))
    if missing:
        what = {"data.root": "the folder that holds train/ and val/" if cfg.data.name != "filelist" else
                "the task folder that holds train800.txt, val200.txt and test.txt",
                "data.dataset": "a torchvision dataset: CIFAR10, Flowers102, DTD, ...",
                "data.path": "a Hugging Face hub name, or a folder written by save_to_disk"}.get(missing[0])
        raise ConfigError(f"{missing[0]} is required and not set: give {missing[0]}=..."
                          + (f" ({what})" if what else ""))
    absent = object()
    for name, rule in ranges().items():  # in the schema's order: the top level, model, optim, data
        value = OmegaConf.select(cfg, name, default=absent)
        if value is not absent and not rule.ok(value):  # absent: a key of other options (sgd's momentum)
            raise _bad(name, value, f"must be {rule.text}")
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
                       "of those (docs/strategies.md: keys only some strategies have)")
        elif key not in known and (near := near_keys(key)):
            out.append(f"tlsweep: no key {key}; did you mean {' or '.join(near)}?")
    return out


def strategy_keys(name: str) -> list[str]:
    schema = STRATEGY_SCHEMAS.get(name, AnyStrategy)
    return [f.name for f in fields(schema)]
