"""The advisor's keys (`advise.*`, set by experiment=advise), as a Hydra structured config.

One group per module, as `data`'s: schema.py's Config types `advise` with it. Every value is
checked again, with its key named, when the sweeper builds the study (tlsweep.advisor.space.study).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import MISSING

from .rules import key


@dataclass
class AdviseConf:
    budget: str = key(MISSING, "job-seconds the study may spend, the sum of its jobs' durations (what a cluster "
                               "charges): 30m, 2h, 1h30m; a bare number is refused. A backbone nothing has measured "
                               "runs its cheapest probe even where the priors price it over what is left")
    wall: Optional[str] = key(None, "a wall-clock limit from the launch (same units); null: none")
    keep: int = key(2, "backbones the probe screen keeps")
    margin: float = key(0.01, "finalists whose paired gap lies within +-margin are equivalent (the cheaper one is "
                              "recommended): one point of accuracy")
    eta: int = key(2, "successive halving keeps the top ceil(n/eta) of the LRs at each rung")
    max_seeds: int = key(10, "paired seeds per finalist before the study stops deciding")
    resplit: Optional[bool] = key(None, "each seed past the first holds out its own draw of the selection split "
                                        "(data.select_seed=<seed>), so that finalists are not told apart by one "
                                        "draw of a few images; null: when the split is coarser than advise.margin "
                                        "(one image moves select_acc by more)")
    # Names of model= options, or of timm archs (model.arch=) when the base model is model=timm
    backbones: Optional[list[str]] = key(None, "the candidate backbones; null: the offline ones installed "
                                               "(efficientnet_lite0; lite1, lite2 with the zoo extra)")
    strategies: Optional[list[str]] = key(None, "the candidate strategies; null: probe, partial, finetune, lpft "
                                                "(and lora, dora with the peft extra)")
    lrs: Any = key(None, "the candidate LRs: a list for every strategy, or {strategy: list}; null: optim.lr x "
                         "{1/3, 1, 3}")
