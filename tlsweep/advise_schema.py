"""The advisor's keys (`advise.*`, set by experiment=advise), as a Hydra structured config.

Apart from schema.py, which is near its size limit; its Config types `advise` with it. Every value is
checked again, with its key named, when the sweeper builds the study (tlsweep.advisor.space.study).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import MISSING


@dataclass
class AdviseConf:
    budget: str = MISSING  # job-seconds, the sum of the jobs' durations (what a cluster charges): 30m, 2h, 1h30m
    wall: Optional[str] = None  # wall-clock limit from this launch's start (same units); null: none
    keep: int = 2  # backbones kept by the probe screen
    margin: float = 0.01  # finalists whose paired gap lies inside +-margin are equivalent: one point of accuracy
    eta: int = 3  # successive halving keeps the top 1/eta of the LRs at full length
    max_seeds: int = 10  # paired seeds per finalist before the study gives up deciding
    # null: the packaged, offline backbones (efficientnet_lite0; lite1, lite2 where the `zoo` extra is installed).
    # Names of model= options, or of timm archs (model.arch=) when the base model is model=timm
    backbones: Optional[list[str]] = None
    strategies: Optional[list[str]] = None  # null: probe, partial, finetune, lpft; lora, dora where peft is installed
    lrs: Any = None  # null: optim.lr x {1/3, 1, 3}; a list for every strategy, or {strategy: list}
