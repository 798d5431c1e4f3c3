"""What trains, and at which learning rate: the rungs of the transfer-learning ladder.

A strategy is data, not a script (conf/strategy/*.yaml):
- `pretrained`: start from the model's weights (false for scratch),
- `unfreeze`: `all`, or a list of stage names (`[]` for probe, null = the model's last stage),
- `backbone_lr_scale`: pretrained parameters train at `optim.lr * backbone_lr_scale`
  (discriminative learning rates, as in ULMFiT); the fresh head always trains at `optim.lr`,
- `freeze_bn`: BatchNorm layers whose parameters are frozen stay in eval mode, so their
  running statistics never change.

This module is where every learning rate of a run is decided.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .errors import ConfigError
from .models import ModelSpec

NAMES = ("scratch", "probe", "partial", "finetune")


@dataclass
class Plan:
    groups: list[dict]  # optimizer parameter groups, each with "name", "params", "lr"
    trainable: list[str]  # stages that train besides the head ("all" stages for scratch/finetune)
    trainable_params: int
    total_params: int


def resolve_unfreeze(spec: ModelSpec, unfreeze) -> list[str]:
    """The stage names that train, checked against the model's stages."""
    if unfreeze is None:
        return [spec.last_stage]
    if isinstance(unfreeze, str):
        if unfreeze == "all":
            return list(spec.stages)
        unfreeze = [unfreeze]
    unknown = [s for s in unfreeze if s not in spec.stages]
    if unknown:
        raise ConfigError(
            f"strategy.unfreeze names unknown stage(s) {unknown} for model {spec.name}; "
            f"valid stages (input to output): {list(spec.stages)}"
        )
    return list(unfreeze)


def apply(model: nn.Module, spec: ModelSpec, strategy, num_classes: int, lr: float) -> Plan:
    """Freeze what the strategy keeps fixed, then put a fresh head on top, and group the
    trainable parameters for the optimizer.

    The head is replaced *after* freezing, so it always trains. Only trainable
    parameters reach the optimizer.
    """
    stages = resolve_unfreeze(spec, strategy.unfreeze)
    for name, p in model.named_parameters():
        p.requires_grad_(spec.stage_of(name) in stages)
    head = spec.replace_head(model, num_classes)

    # Scratch has nothing pretrained, so its scale is 1 (conf/strategy/scratch.yaml).
    backbone = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith(spec.head + ".")]
    groups = []
    if backbone:
        groups.append({"name": "backbone", "params": backbone, "lr": lr * strategy.backbone_lr_scale})
    groups.append({"name": "head", "params": list(head.parameters()), "lr": lr})
    return Plan(
        groups=groups,
        trainable=stages,
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_params=sum(p.numel() for p in model.parameters()),
    )


def frozen_bn_eval(model: nn.Module) -> None:
    """Put every BatchNorm whose parameters are all frozen in eval mode (call after model.train())."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
            m.eval()
