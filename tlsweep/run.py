"""`run(cfg) -> dict`: one experiment, from a composed config to metrics in MLflow.

The Hydra entry point (`__main__`), sweeps and tests all call this same function.
"""
from __future__ import annotations

import random

import mlflow
import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from . import data as datasets
from . import models, strategies, tracking
from .train import fit


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def make_optimizer(cfg: DictConfig, groups: list[dict], epochs: int):
    """The optimizer over the strategy's parameter groups, and its LR schedule."""
    if cfg.name == "adamw":
        opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    elif cfg.name == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        raise ValueError(f"unknown optim.name {cfg.name!r}; valid: adamw, sgd")
    if cfg.scheduler == "cosine":
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    if cfg.scheduler in (None, "none"):
        return opt, None
    raise ValueError(f"unknown optim.scheduler {cfg.scheduler!r}; valid: cosine, none")


def run(cfg: DictConfig) -> dict:
    """Train one model with one strategy on one dataset; log everything to MLflow."""
    if cfg.epochs < 1:
        raise ValueError(f"epochs={cfg.epochs}: need at least 1")
    name = f"{cfg.model.name}-{cfg.strategy.name}-seed{cfg.seed}"
    with tracking.job_run(cfg, name):  # opened first, so that even a config error is recorded as FAILED
        spec = models.get_spec(cfg.model.name)
        strategies.resolve_unfreeze(spec, cfg.strategy.unfreeze)  # a bad stage name fails before any work
        seed_everything(cfg.seed)
        device = resolve_device(cfg.device)
        data = datasets.load(cfg.data)
        model, pp = models.build_model(spec, cfg.model.weights if cfg.strategy.pretrained else None)
        pp = pp.with_crop(cfg.data.image_size)
        plan = strategies.apply(model, spec, cfg.strategy, len(data.classes), cfg.optim.lr)
        model.to(device)
        optimizer, scheduler = make_optimizer(cfg.optim, plan.groups, cfg.epochs)
        train_loader, val_loader = datasets.plain_loaders(data, pp, cfg.batch_size, cfg.seed, cfg.data.num_workers)

        mlflow.set_tags({
            "tlsweep.device": str(device),
            "tlsweep.weights": spec.weights_name if cfg.strategy.pretrained and str(cfg.model.weights).upper() == "DEFAULT"
            else str(cfg.model.weights if cfg.strategy.pretrained else None),
            "tlsweep.preprocess": str(pp),
            "tlsweep.trainable_stages": ",".join(plan.trainable),
            **{f"tlsweep.group.{g['name']}": f"params={sum(p.numel() for p in g['params'])} lr={g['lr']:g}"
               for g in plan.groups},
        })
        bar = tqdm(total=cfg.epochs, desc=name, unit="epoch", leave=False)

        def on_epoch(epoch: int, metrics: dict) -> None:
            mlflow.log_metrics(metrics, step=epoch)  # one call per epoch: a dict is 2-3x cheaper than per metric
            bar.set_postfix(loss=f"{metrics['train_loss']:.3f}", val_acc=f"{metrics['val_acc']:.3f}")
            bar.update()

        result = fit(model, train_loader, val_loader, optimizer, scheduler, cfg.epochs, device,
                     freeze_bn=cfg.strategy.freeze_bn, bf16=cfg.bf16, channels_last=device.type == "cuda",
                     on_epoch=on_epoch)
        bar.close()
        result.update(trainable_params=plan.trainable_params, total_params=plan.total_params)
        mlflow.log_metrics(result)
    print(f"[tlsweep] {cfg.strategy.name:8s} seed={cfg.seed} final_val_acc={result['final_val_acc']:.4f} "
          f"best_val_acc={result['best_val_acc']:.4f} trainable={plan.trainable_params:,} "
          f"seconds={result['train_seconds']:.1f}", flush=True)
    return result
