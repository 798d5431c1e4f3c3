"""A recipe applied to a model: what trains, at which learning rate, in which epoch.

`apply` freezes what the strategy never trains, puts a fresh head on top and groups the parameters for
the optimizer; the `Plan` it returns sets what trains in each epoch, scales the groups' LRs and adds the
strategy's regularizer, through the hooks `train.fit` calls. What each key means, and the check of its
value, is the recipe's (`tlsweep.training.recipes`); `freeze_bn`'s BatchNorm policy is applied here (`train_mode`).
"""
from __future__ import annotations

import itertools
import math
from typing import Callable, Iterable

import torch
from torch import nn

from ..config.errors import ConfigError
from ..config.keys import Tag
from ..config.schema import FreezeBN
from ..models import ModelSpec
from .recipes import FILTERS, Recipe, check, resolve_unfreeze


class Plan:
    """What one run trains: the optimizer's parameter groups and the per-epoch hooks that fit() calls.

    `groups`: dicts with "name", "params", "lr" (and "weight_decay" where the strategy overrides
    optim.weight_decay), for torch.optim. Every parameter that trains in *any* epoch is in a group;
    `set_phase` decides which of them train in a given epoch.
    """

    def __init__(self, recipe: Recipe, groups: list[dict], by_stage: dict[str, list[nn.Parameter]],
                 head: list[nn.Parameter], named: dict[str, nn.Parameter], total_params: int,
                 epochs: int | None = None):
        self.recipe, self.groups, self.total_params = recipe, groups, total_params
        self._by_stage, self._head, self._named = by_stage, head, named
        self._stages = list(by_stage)  # every stage the strategy may unfreeze, input to output
        # stages that train in some epoch of this run (gradual may stop before the lowest ones)
        self.trainable = self.stages_at(epochs) if epochs else self._stages
        self.trainable_params = sum(p.numel() for p in head) + sum(
            p.numel() for s in self.trainable for p in by_stage[s])
        self._scheduled: list[float] | None = None
        self.penalty: Callable[[], torch.Tensor] | None = None
        if recipe.l2sp_alpha or recipe.l2sp_beta:
            self._backbone = list(itertools.chain(*by_stage.values()))  # once, not per training step
            self._anchor = [p.detach().clone() for p in self._backbone]
            self._reg_sum, self._reg_steps = 0.0, 0
            self.penalty = self._l2sp

    # --- phases -------------------------------------------------------------------------------
    def tags(self) -> dict[str, str]:
        """One tag per parameter group name: its size, (largest) LR, and how many of its parameters never
        decay; only groups with a parameter that trains in some epoch of this run (a short gradual run
        never reaches its lowest stages)."""
        trains = {id(p) for p in self._head} | {id(p) for s in self.trainable for p in self._by_stage[s]}
        tags: dict[str, tuple[int, int, float]] = {}
        for g in self.groups:
            if not any(id(p) in trains for p in g["params"]):
                continue
            n = sum(p.numel() for p in g["params"])
            name = g.get("stage", g["name"])  # auto-RGN: one tag per stage, not per tensor
            size, no_decay, lr = tags.get(name, (0, 0, g["lr"]))
            tags[name] = (size + n, no_decay + (n if g.get("weight_decay") == 0.0 else 0), max(lr, g["lr"]))
        return {f"{Tag.GROUP_PREFIX}{name}": f"params={size} lr={lr:g} no_weight_decay={nd}"
                for name, (size, nd, lr) in tags.items()}

    def stages_at(self, epoch: int) -> list[str]:
        """The stages that train in `epoch` (1-based), besides the head."""
        r = self.recipe
        if epoch <= r.probe_epochs:
            return []
        if r.unfreeze_every is None:
            return self._stages
        n = (epoch - 1 - r.probe_epochs) // r.unfreeze_every + 1
        return self._stages[max(len(self._stages) - n, 0):]  # one more from the top each step

    def segments(self, epochs: int) -> list[tuple[int, int]]:
        """(first epoch, number of epochs) of each run of epochs in which the same parameters train.

        The frozen prefix, and so the feature cache, can only change between segments.
        """
        out: list[tuple[int, int]] = []
        for epoch in range(1, epochs + 1):
            if out and self.stages_at(epoch) == self.stages_at(out[-1][0]):
                out[-1] = (out[-1][0], out[-1][1] + 1)
            else:
                out.append((epoch, 1))
        return out

    def set_phase(self, epoch: int) -> int:
        """Set requires_grad for `epoch`; returns the number of parameters that train in it.

        A frozen parameter gets requires_grad=False, not only lr 0: its .grad stays None, so AdamW
        and SGD skip it entirely. With lr 0 alone it would still be computed (a backward pass through
        the frozen stages), AdamW would fill its moments with the gradients of epochs in which it did
        not train and start with those stale moments once unfrozen, and the feature cache could never
        cut it off. Skipped, its state starts at its own step 0 when it is unfrozen (AdamW keeps a
        step count per tensor, so bias correction is right for it), and weight decay, decoupled in
        AdamW and added to the gradient in SGD, never touches it while frozen: frozen stays bit-identical.
        """
        on = set(self.stages_at(epoch))
        for stage, params in self._by_stage.items():
            for p in params:
                p.requires_grad_(stage in on)
        return sum(p.numel() for p in self._head) + sum(
            p.numel() for s in on for p in self._by_stage[s])

    # --- per-epoch hooks, called by train.fit ----------------------------------------------------
    def start_epoch(self, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    loader: Iterable) -> dict:
        """Before epoch `epoch`: set what trains, scale each group's scheduled LR (0 for a frozen
        group; auto-RGN's weights), put `model` in train mode. Returns the epoch's metrics."""
        n = self.set_phase(epoch)
        train_mode(model, self.recipe.freeze_bn)
        # The scheduler owns the LR; the multipliers apply for this epoch only and end_epoch undoes
        # them before scheduler.step(), so they never compound (CosineAnnealingLR's step is relative).
        self._scheduled = [g["lr"] for g in optimizer.param_groups]
        weights = self._rgn_weights(model, loader) if self.recipe.reweight == "rgn" else {}
        for g in optimizer.param_groups:
            if not any(p.requires_grad for p in g["params"]):
                g["lr"] = 0.0
            elif g.get("name") in weights:
                g["lr"] *= weights[g["name"]]
        return {"trainable_params": n}

    def end_epoch(self, optimizer: torch.optim.Optimizer) -> dict:
        """After the epoch's training pass: restore the scheduled LRs. Returns the epoch's metrics."""
        if self._scheduled is not None:
            for g, lr in zip(optimizer.param_groups, self._scheduled):
                g["lr"] = lr
            self._scheduled = None
        if self.penalty is None:
            return {}
        mean = float(self._reg_sum) / max(self._reg_steps, 1)
        self._reg_sum, self._reg_steps = 0.0, 0
        return {"reg_loss": mean}

    # --- L2-SP ----------------------------------------------------------------------------------
    def _l2sp(self) -> torch.Tensor:
        """alpha/2 * ||w - w0||^2 over the pretrained parameters + beta/2 * ||w||^2 over the head
        (Li, Grandvalet & Davoine, ICML 2018: their Omega for L2-SP)."""
        backbone = self._backbone
        if backbone and self._anchor[0].device != backbone[0].device:  # the model moved after apply()
            self._anchor = [a.to(p.device) for a, p in zip(self._anchor, backbone)]
        r = self.recipe
        zero = self._head[0].new_zeros(())
        sp = sum(((p - a) ** 2).sum() for p, a in zip(backbone, self._anchor)) if backbone else zero
        head = sum((p ** 2).sum() for p in self._head)
        reg = r.l2sp_alpha / 2 * sp + r.l2sp_beta / 2 * head
        self._reg_sum = self._reg_sum + reg.detach()  # stays on the device: no host sync per step
        self._reg_steps += 1
        return reg

    # --- auto-RGN -------------------------------------------------------------------------------
    def _rgn_weights(self, model: nn.Module, loader: Iterable) -> dict[str, float]:
        """Each trainable pretrained tensor's relative gradient norm ||g|| / ||theta||, averaged over
        the first `rgn_batches` batches (5 in Lee et al.'s get_lr_weights), divided by the largest.

        The fresh head is left out: Lee et al. adapt a network whose head is pretrained too, but a
        randomly initialized head has by far the largest ratio (lite0 on hymenoptera: 1.0 and 0.55
        for its bias and weight, every pretrained tensor below 0.01), which would hold the whole
        backbone at about 1% of its LR, a probe in all but name. The head trains at optim.lr, as in
        every strategy, and the pretrained tensor with the largest ratio at its stage's LR
        (optim.lr * backbone_lr_scale, as finetune).

        As in their code the model is in train mode (BatchNorm statistics see these batches too) and
        the loss is plain cross-entropy; unlike it,
        the optimizer (and its state) is kept across epochs: only the group LRs change. A tensor
        whose norm is 0 has no scale to be relative to: it trains at the full LR, like a fresh one.
        """
        head = {id(p) for p in self._head}
        named = {n: p for n, p in self._named.items() if p.requires_grad and id(p) not in head}
        params = list(named.values())
        if not params:
            return {}
        norms = torch.stack([p.detach().norm() for p in params])
        total = torch.zeros_like(norms)
        batches = 0
        device = params[0].device
        for x, y in itertools.islice(loader, self.recipe.rgn_batches):
            loss = nn.functional.cross_entropy(model(x.to(device)).float(), y.to(device))
            grads = torch.autograd.grad(loss, params, allow_unused=True)  # unused (off the path): 0
            g_norms = torch.stack([g.norm() if g is not None else norms.new_zeros(()) for g in grads])
            total += g_norms / norms.clamp_min(torch.finfo(norms.dtype).tiny)
            batches += 1
        rgn = (total / max(batches, 1)).where(norms > 0, torch.full_like(norms, math.inf))
        finite = rgn[torch.isfinite(rgn)]
        top = finite.max().item() if len(finite) else 0.0
        weights = (rgn / top).clamp(max=1.0) if top > 0 else torch.ones_like(rgn)
        return dict(zip(named, weights.tolist()))


def _owner(model: nn.Module, name: str) -> tuple[str, nn.Module]:
    module, _, leaf = name.rpartition(".")
    return leaf, model.get_submodule(module)


def apply(model: nn.Module, spec: ModelSpec, strategy, num_classes: int, lr: float,
          epochs: int | None = None) -> Plan:
    """Freeze what the strategy never trains, put a fresh head on top, and group the parameters
    that train in some epoch for the optimizer.

    The head is replaced *after* freezing, so it always trains. Only parameters that train in some
    epoch reach the optimizer; they keep requires_grad=True until `Plan.set_phase` picks an epoch.
    An adapter strategy (lora, dora) freezes the whole backbone and trains the adapters that
    `tlsweep.training.adapters` adds, as one pseudo-stage "adapters", beside the head.
    """
    r = check(spec, strategy, epochs)
    stages = [] if r.adapter else resolve_unfreeze(spec, r.unfreeze)
    keep = FILTERS[r.params]
    by_stage: dict[str, list[nn.Parameter]] = {s: [] for s in stages}
    named: dict[str, nn.Parameter] = {}
    for name, p in model.named_parameters():
        stage = spec.stage_of(name)
        trains = stage in by_stage and keep(*_owner(model, name))
        p.requires_grad_(trains)
        if trains:
            by_stage[stage].append(p)
            named[name] = p
    head_params = list(spec.replace_head(model, num_classes).parameters())
    named.update({f"{spec.head}.{n}": p for n, p in spec.head_module(model).named_parameters()})
    extra = {"weight_decay": 0.0} if r.l2sp_alpha or r.l2sp_beta else {}  # L2-SP replaces plain decay
    groups: list[dict] = []
    if r.adapter:
        from . import adapters  # peft is an optional extra: only these strategies import it

        named = adapters.attach(model, spec.head, r.adapter, r.rank, r.alpha, r.target_modules, r.adapter_dropout)
        head_params = [p for n, p in named.items() if n.startswith(spec.head + ".")]
        by_stage = {"adapters": [p for n, p in named.items() if not n.startswith(spec.head + ".")]}
        groups.append({"name": "adapters", "params": by_stage["adapters"], "lr": lr * r.lr_scale(1), **extra})
        groups.append({"name": "head", "params": head_params, "lr": lr, **extra})
    elif r.reweight is not None:  # one group per tensor: auto-RGN sets each tensor's LR
        top = list(reversed(spec.stages))  # k from the top: top.index(stage) + 1
        for name, p in named.items():
            stage = spec.stage_of(name) if not name.startswith(spec.head + ".") else None
            scale = 1.0 if stage is None else r.lr_scale(top.index(stage) + 1)
            # "stage": metrics and tags summarise the per-tensor LRs per stage (min/mean/max), not per tensor
            groups.append({"name": name, "stage": stage or "head", "params": [p], "lr": lr * scale, **extra})
    else:
        if r.layer_decay != 1 or r.unfreeze_every is not None:
            # units differ in LR or in when they start: one group each, named by the unit, k from the top
            units, unit_of = (spec.layers, spec.layer_of) if r.granularity == "layer" else (spec.stages, spec.stage_of)
            by_unit: dict[str, list[nn.Parameter]] = {}
            for name, p in named.items():
                if not name.startswith(spec.head + "."):
                    by_unit.setdefault(unit_of(name), []).append(p)
            for k, unit in enumerate(reversed(units), 1):
                if by_unit.get(unit):
                    groups.append({"name": unit, "params": by_unit[unit], "lr": lr * r.lr_scale(k), **extra})
        elif any(by_stage.values()):
            groups.append({"name": "backbone", "params": list(itertools.chain(*by_stage.values())),
                           "lr": lr * r.lr_scale(1), **extra})
        groups.append({"name": "head", "params": head_params, "lr": lr, **extra})
    by_stage = {s: ps for s, ps in by_stage.items() if ps}
    return Plan(r, _without_decay_on_1d(groups, named, spec), by_stage, head_params, named,
                total_params=sum(p.numel() for p in model.parameters()), epochs=epochs)


def no_weight_decay(name: str, p: nn.Parameter, spec: ModelSpec) -> bool:
    """timm's rule (`param_groups_weight_decay`, its default): no weight decay on 1-D tensors (norm
    scales and shifts, biases, DoRA's magnitudes), on any `.bias`, and on what the model's own
    `no_weight_decay()` names (a ViT's pos_embed and cls_token)."""
    return p.ndim <= 1 or name.endswith(".bias") or name in spec.no_weight_decay


def _without_decay_on_1d(groups: list[dict], named: dict[str, nn.Parameter], spec: ModelSpec) -> list[dict]:
    """Each group split in two, same name and LR: the tensors that decay, and those that never do
    (weight_decay 0, see `no_weight_decay`). A group already without decay (L2-SP) stays whole."""
    name_of = {id(p): n for n, p in named.items()}
    out = []
    for g in groups:
        if g.get("weight_decay") == 0.0:
            out.append(g)
            continue
        exempt = [no_weight_decay(name_of[id(p)], p, spec) for p in g["params"]]
        decay = [p for p, e in zip(g["params"], exempt) if not e]
        if decay:
            out.append({**g, "params": decay})
        if any(exempt):
            out.append({**g, "params": [p for p, e in zip(g["params"], exempt) if e], "weight_decay": 0.0})
    return out


def frozen_bn_eval(model: nn.Module, every: bool = False) -> None:
    """Put every BatchNorm whose parameters are all frozen (every one: `every`) in eval mode
    (call after model.train())."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (
                every or not any(p.requires_grad for p in m.parameters())):
            m.eval()


def train_mode(model: nn.Module, freeze_bn: FreezeBN | str) -> None:
    """model.train(), then the strategy's BatchNorm policy (see the module docstring)."""
    model.train()
    mode = FreezeBN.of(freeze_bn)
    if mode is not FreezeBN.none:
        frozen_bn_eval(model, every=mode is FreezeBN.all)


def check_batch_of_one(spec: ModelSpec, strategy, batch_size: int, lr: float, epochs: int) -> None:
    """Refuse batch_size=1 where some BatchNorm runs in train mode in some epoch of the run.

    Every batch then holds one sample, and a train-mode BatchNorm over a 1x1 map (or a BatchNorm1d) has
    one value per channel, which torch refuses mid-epoch; larger batches never get there, as the training
    loaders drop a trailing batch of one. Decided by the strategy's own Plan and BatchNorm rule applied to
    the architecture on the meta device (no memory, no weights), before any data is read.
    """
    if batch_size > 1:
        return
    with torch.device("meta"):
        model = spec.build()
        plan = apply(model, spec, strategy, 2, lr, epochs)  # any head size will do
    for first, _ in plan.segments(epochs):
        plan.set_phase(first)
        train_mode(model, plan.recipe.freeze_bn)
        bn = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
        if bn:
            raise ConfigError(
                f"batch_size=1: strategy {strategy.name} trains {len(bn)} BatchNorm layer(s) of {spec.name} in "
                f"train mode{f' from epoch {first}' if first > 1 else ''} ({', '.join(bn[:3])}"
                f"{f' and {len(bn) - 3} more' if len(bn) > 3 else ''}), which need at least 2 samples per batch; "
                "use batch_size>=2, or keep every BatchNorm in eval mode (strategy.freeze_bn=all, or a strategy "
                "that trains none, such as probe)")
