"""The optimizer and LR schedule over a strategy's parameter groups: `optim.name` and `optim.scheduler`
are keys of these registries (the strategy decides the groups and their LRs, tlsweep/training/strategies.py)."""
from __future__ import annotations

import torch
from omegaconf import DictConfig

from ..config.errors import ConfigError

# optim.name -> the optimizer over the strategy's groups; optim.scheduler -> the LR schedule over `epochs`
OPTIMIZERS = {
    "adamw": lambda groups, cfg: torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay),
    "sgd": lambda groups, cfg: torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay),
}
SCHEDULERS = {
    "cosine": lambda opt, epochs: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs),
    "none": lambda opt, epochs: None,
}


def check_optim(cfg: DictConfig) -> None:
    """Refuse an unknown optimizer or schedule before any work."""
    if cfg.name not in OPTIMIZERS:
        raise ConfigError(f"optim.name={cfg.name}: unknown; valid: {', '.join(OPTIMIZERS)}")
    if ("none" if cfg.scheduler is None else cfg.scheduler) not in SCHEDULERS:
        raise ConfigError(f"optim.scheduler={cfg.scheduler}: unknown; valid: {', '.join(SCHEDULERS)} (or null)")


def make_optimizer(cfg: DictConfig, groups: list[dict], epochs: int):
    """The optimizer over the strategy's parameter groups, and its LR schedule."""
    check_optim(cfg)
    scheduler = "none" if cfg.scheduler is None else cfg.scheduler
    opt = OPTIMIZERS[cfg.name](groups, cfg)
    return opt, SCHEDULERS[scheduler](opt, epochs)
