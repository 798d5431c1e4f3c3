"""The naive side of the benchmark: the torchvision fine-tuning tutorial's loop.

ImageFolder + PIL transforms + DataLoader(num_workers=2), fp32 whatever tlsweep's side runs in, and every
epoch a full forward pass through the frozen backbone; a hand-rolled sweep runs it once per configuration in
one process (no process start, no tracking: generous to the naive side). It uses the same model, weights, head,
optimizer groups, schedule and augmentation recipe as tlsweep, and keeps frozen BatchNorm layers in eval mode
like tlsweep's default, so both sides compute the same thing.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torchvision import datasets, transforms

from benchmarks.bounds import LITE0, sweep_config
from tlsweep import models
from tlsweep.training import strategies


def naive_run(root: Path, strategy: str, lr: float, seed: int, epochs: int, device: torch.device,
              image_size: int | None = None, model: tuple[str, ...] = LITE0) -> dict:
    """One run of the tutorial loop on the sweep's `model` (its overrides). Returns final val acc and per-epoch
    seconds."""
    torch.manual_seed(seed)
    preset = sweep_config(model).model  # what the sweep's model overrides compose to: the same arch and weights
    spec = models.get_spec(preset, image_size)
    model, pp = models.build_model(spec, None if strategy == "scratch" else preset.weights)
    pp = pp.with_crop(image_size)
    interp = transforms.InterpolationMode(pp.interpolation.value)
    tf = {
        "train": transforms.Compose([transforms.RandomResizedCrop(pp.crop, scale=(0.6, 1.0), interpolation=interp),
                                     transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                     transforms.Normalize(pp.mean, pp.std)]),
        "val": transforms.Compose([transforms.Resize(pp.resize, interpolation=interp), transforms.CenterCrop(pp.crop),
                                   transforms.ToTensor(), transforms.Normalize(pp.mean, pp.std)]),
    }
    loaders = {s: torch.utils.data.DataLoader(datasets.ImageFolder(root / s, tf[s]), batch_size=32,
                                              shuffle=s == "train", num_workers=2) for s in ("train", "val")}
    rung = {"scratch": ("all", 1.0, False), "probe": ([], 0.0, True), "partial": (None, 0.1, True),
            "finetune": ("all", 0.1, False)}[strategy]
    cfg = type("S", (), {"unfreeze": rung[0], "backbone_lr_scale": rung[1]})()
    plan = strategies.apply(model, spec, cfg, 2, lr)
    model.to(device)
    opt = torch.optim.AdamW(plan.groups, lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    crit = nn.CrossEntropyLoss()
    epoch_s = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.train()
        if rung[2]:
            strategies.frozen_bn_eval(model)
        for x, y in loaders["train"]:
            x, y = x.to(device), y.to(device)
            opt.zero_grad()
            loss = crit(model(x), y)
            loss.backward()
            opt.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in loaders["val"]:
                correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
        sched.step()
        epoch_s.append(time.perf_counter() - t0)
    return {"final_val_acc": correct / len(loaders["val"].dataset), "epoch_seconds": epoch_s}


def naive_sweep(root, grid, epochs, device, image_size=None, stop_at=None, on_run=None,
                model: tuple[str, ...] = LITE0) -> dict:
    """The hand-rolled sweep. Seeds run in the outer loop, so that a sweep stopped at `stop_at`
    (a time.time() value; no run starts that would likely end after it) has runs of every
    configuration, and its full wall can be estimated from them."""
    t0 = time.perf_counter()
    runs = []
    for s, lr, seed in sorted(grid, key=lambda g: g[2]):
        same = [r["seconds"] for r in runs if (r["strategy"], r["lr"]) == (s, lr)]
        expected = statistics.mean(same) if same else max((r["seconds"] for r in runs), default=0.0)
        if stop_at and time.time() + expected > stop_at:
            break
        r0 = time.perf_counter()
        r = naive_run(root, s, lr, seed, epochs, device, image_size, model)
        runs.append({"strategy": s, "lr": lr, "seed": seed, **r, "seconds": time.perf_counter() - r0})
        if on_run:
            on_run(runs)
    wall = time.perf_counter() - t0
    out = {"wall_s": wall, "runs": runs, "planned": len(grid), "complete": len(runs) == len(grid)}
    if not out["complete"]:
        # each configuration's mean run time times its planned runs; None if one has no run yet
        per = {}
        for r in runs:
            per.setdefault((r["strategy"], r["lr"]), []).append(r["seconds"])
        configs = {(s, lr) for s, lr, _ in grid}
        out["wall_s_estimate"] = (sum(statistics.mean(per[c]) * sum(1 for g in grid if g[:2] == c) for c in configs)
                                  if configs <= set(per) else None)
    return out
