"""The training loop. It takes built objects (model, loaders, optimizer), never the config."""
from __future__ import annotations

import ctypes
import math
import sys
import time
from typing import Callable, Iterable

import torch
from torch import nn

from ..config.errors import Diverged
from ..runtime import CPU, Loaders, Runtime
from .strategies import Plan


def tune_allocator() -> None:
    """Keep freed activation buffers in the process instead of handing them back to the OS.

    glibc serves large tensors with mmap and returns them on free, so every conv output
    costs page faults: on this project's 2-core CPU, an EfficientNet-Lite0 forward spent
    more time in the kernel than in math (32.6 ms/image; 11.3 ms with this setting,
    measured with a batch-32 forward loop). PyTorch's CPU tuning guide gives the
    same advice (jemalloc/tcmalloc); this is the glibc-only equivalent. No-op elsewhere.
    """
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: allocations below 1 GiB come from the heap
    libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep up to 1 GiB of freed heap for reuse


# How often a pass checks that its loss is still finite. On the CPU every step: the loss is already on the
# host, so the check costs nothing, and a diverged run stops at its first NaN step. On CUDA (and MPS) reading
# a value waits for the device, draining the queue of kernels the host keeps ahead of it, so there the pass
# checks its running sum every SYNC_EVERY steps: a diverged run wastes at most that many steps, not an epoch.
SYNC_EVERY = 32


def run_epoch(model: nn.Module, loader: Iterable, rt: Runtime = CPU, optimizer=None,
              penalty: Callable[[], torch.Tensor] | None = None) -> tuple[float, float]:
    """One pass over `loader`; trains when an optimizer is given. Returns (mean loss, accuracy).

    `penalty()` (a regularizer such as L2-SP) is added to the loss it trains on, not to the loss it
    reports, which stays the data's cross-entropy. Sums stay on the device: on an accelerator, one host
    sync per SYNC_EVERY steps. A pass whose loss is no longer finite stops there and returns it (NaN or
    inf): a NaN stays in the sum, and cross-entropy is never negative, so an inf cannot cancel.
    """
    train = optimizer is not None
    loss_sum = torch.zeros((), device=rt.device, dtype=torch.float64)
    correct = torch.zeros((), device=rt.device, dtype=torch.int64)
    n = 0
    check_every = 1 if rt.device.type == "cpu" else SYNC_EVERY
    with torch.set_grad_enabled(train):
        for step, (x, y) in enumerate(loader, 1):
            x, y = rt.put(x), y.to(rt.device, non_blocking=True)
            with rt.autocast():
                logits = model(x)
                loss = nn.functional.cross_entropy(logits.float(), y)
            if train:
                optimizer.zero_grad(set_to_none=True)
                (loss + penalty() if penalty is not None else loss).backward()
                optimizer.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            n += len(y)
            if step % check_every == 0 and not torch.isfinite(loss_sum):
                break
    return loss_sum.item() / n, correct.item() / n


def lr_metrics(groups: list[dict]) -> dict[str, float]:
    """`lr/<group>` per named group (the halves of a group with and without weight decay share one);
    groups that carry a "stage" (auto-RGN's one group per tensor) as `lr/<stage>/{min,mean,max}`."""
    out: dict[str, float] = {}
    per_stage: dict[str, list[float]] = {}
    for i, g in enumerate(groups):
        if "stage" in g:
            per_stage.setdefault(g["stage"], []).append(g["lr"])
        else:
            out[f"lr/{g.get('name', i)}"] = g["lr"]
    for stage, lrs in per_stage.items():
        out.update({f"lr/{stage}/min": min(lrs), f"lr/{stage}/mean": sum(lrs) / len(lrs), f"lr/{stage}/max": max(lrs)})
    return out


def _group_lrs(lrs: dict[str, float]) -> dict[str, float]:
    return {k.removeprefix("lr/"): v for k, v in lrs.items()}


def _finite(loss: float, split: str, epoch: int, lrs: dict[str, float]) -> None:
    """Raise Diverged when an epoch's loss on `split` (train, val) is NaN or infinite."""
    if not math.isfinite(loss):
        words = {"train": "training", "val": "validation"}[split]
        raise Diverged(f"non-finite {words} loss ({loss}) in epoch {epoch}; lower optim.lr", epoch, _group_lrs(lrs),
                       f"{split} loss {loss}")


def divergence(err: Diverged, lr: float) -> str:
    """The `tlsweep.diverged` tag: "epoch 1, lr 1e+06 (head 1e+06, backbone 1e+05), train loss nan", with
    `lr` the config's optim.lr and in parentheses the LRs that epoch's parameter groups trained with."""
    groups = [f"{name} {value:.3g}" for name, value in err.lrs.items()]
    if len(groups) > 8:  # auto_rgn: one group per tensor, summed up per stage; keep the tag one line
        groups = groups[:8] + [f"... {len(groups) - 8} more"]
    return f"epoch {err.epoch}, lr {lr:.3g}" + (f" ({', '.join(groups)})" if groups else "") + f", {err.loss}"


def fit(model: nn.Module, loaders: Loaders, optimizer: torch.optim.Optimizer, scheduler, epochs: int,
        rt: Runtime = CPU, *, plan: Plan | None = None, first_epoch: int = 1,
        on_epoch: Callable[[int, dict], None] | None = None) -> dict:
    """Train for `epochs`, numbered from `first_epoch`, evaluating after each. Raises Diverged on a
    non-finite train or val loss. `plan` (strategies.Plan) decides per epoch what trains, at which LR,
    and what is added to the loss, and puts the model in train mode; without one, everything trains
    in plain train mode.

    Returns best/final validation accuracy and timing. With a `loaders.select` (a split held out of
    train for model selection), each epoch also logs select_loss/select_acc, and the result holds
    the last epoch's select_acc.
    """
    best_acc, best_epoch, start = -1.0, 0, time.perf_counter()
    for epoch in range(first_epoch, first_epoch + epochs):
        t0 = time.perf_counter()
        if plan is not None:  # the plan puts the model in train mode, with its strategy's BatchNorm rule
            extra = plan.start_epoch(epoch, model, optimizer, loaders.train)
        else:
            extra = {}
            model.train()
        lrs = lr_metrics(optimizer.param_groups)
        train_loss, train_acc = run_epoch(model, loaders.train, rt, optimizer, plan.penalty if plan is not None else None)
        if plan is not None:
            extra.update(plan.end_epoch(optimizer))
        _finite(train_loss, "train", epoch, lrs)
        model.eval()
        val_loss, val_acc = run_epoch(model, loaders.val, rt)
        _finite(val_loss, "val", epoch, lrs)  # finite weights can still overflow on unseen inputs
        if scheduler is not None:
            scheduler.step()
        if val_acc > best_acc:
            best_acc, best_epoch = val_acc, epoch
        metrics = {"train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss, "val_acc": val_acc,
                   **lrs, **extra, "epoch_seconds": time.perf_counter() - t0}
        if loaders.select is not None:  # in eval mode, like val: the split model selection reads
            metrics["select_loss"], metrics["select_acc"] = run_epoch(model, loaders.select, rt)
        if on_epoch:
            on_epoch(epoch, metrics)
    result = {"best_val_acc": best_acc, "best_epoch": best_epoch, "final_val_acc": val_acc,
              "train_seconds": time.perf_counter() - start}
    if loaders.select is not None:
        result["select_acc"] = metrics["select_acc"]
    return result


def merge(before: dict, part: dict) -> dict:
    """fit() results of consecutive segments as one run's: the best over all, the last one's final."""
    if not before:
        return part
    best = part if part["best_val_acc"] > before["best_val_acc"] else before
    return {**before, **part, "best_val_acc": best["best_val_acc"], "best_epoch": best["best_epoch"],
            "train_seconds": before["train_seconds"] + part["train_seconds"]}
