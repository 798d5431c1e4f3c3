"""What each rung of the ladder trains, at which LR, and what stays bit-identical."""
from __future__ import annotations

import pytest
import torch

from tlsweep import strategies
from tlsweep.models import get_spec
from tlsweep.run import make_optimizer
from tlsweep.train import run_epoch


def _plan(make_cfg, strategy, *overrides):
    cfg = make_cfg(f"strategy={strategy}", *overrides)
    spec = get_spec(cfg.model.name)
    model = spec.build()
    plan = strategies.apply(model, spec, cfg.strategy, num_classes=2, lr=cfg.optim.lr)
    return cfg, model, plan


@pytest.mark.parametrize("strategy,expected", [
    ("probe", 1_026), ("partial", 8_394_754), ("finetune", 11_177_538), ("scratch", 11_177_538)])
def test_resnet18_trainable_counts(make_cfg, strategy, expected):
    _, model, plan = _plan(make_cfg, strategy, "model=resnet18")
    assert plan.trainable_params == expected
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected
    assert sum(p.numel() for g in plan.groups for p in g["params"]) == expected  # only trainable ones


@pytest.mark.parametrize("strategy,lrs", [
    ("probe", {"head": 1e-3}), ("partial", {"backbone": 1e-4, "head": 1e-3}),
    ("finetune", {"backbone": 1e-4, "head": 1e-3}), ("scratch", {"backbone": 1e-3, "head": 1e-3})])
def test_each_group_has_the_lr_the_strategy_promises(make_cfg, strategy, lrs):
    cfg, _, plan = _plan(make_cfg, strategy, "optim.lr=1e-3")
    optimizer, _ = make_optimizer(cfg.optim, plan.groups, cfg.epochs)
    assert {g["name"]: g["lr"] for g in optimizer.param_groups} == pytest.approx(lrs)


def test_backbone_lr_scale_is_honoured(make_cfg):
    cfg, _, plan = _plan(make_cfg, "finetune", "optim.lr=3e-4", "strategy.backbone_lr_scale=0.01")
    assert {g["name"]: g["lr"] for g in plan.groups} == pytest.approx({"backbone": 3e-6, "head": 3e-4})


def test_partial_unfreezes_named_stages(make_cfg):
    _, model, plan = _plan(make_cfg, "partial", "strategy.unfreeze=[layer3,layer4]")
    assert plan.trainable == ["layer3", "layer4"]
    assert model.layer3[0].conv1.weight.requires_grad and not model.layer2[0].conv1.weight.requires_grad


def test_partial_with_an_unknown_stage_names_the_valid_ones(make_cfg):
    with pytest.raises(ValueError, match=r"layer5.*valid stages.*layer4"):
        _plan(make_cfg, "partial", "strategy.unfreeze=[layer5]")


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("freeze_bn", [True, False])
def test_probe_step_changes_only_the_head(make_cfg, freeze_bn):
    cfg, model, plan = _plan(make_cfg, "probe", f"strategy.freeze_bn={freeze_bn}")
    spec = get_spec(cfg.model.name)
    optimizer, _ = make_optimizer(cfg.optim, plan.groups, cfg.epochs)
    before = _snapshot(model)
    model.train()
    if cfg.strategy.freeze_bn:
        strategies.frozen_bn_eval(model)
    torch.manual_seed(0)
    batch = [(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1]))]
    run_epoch(model, batch, torch.device("cpu"), optimizer)
    after = _snapshot(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    head = {f"{spec.head}.weight", f"{spec.head}.bias"}
    running = {k for k in before if "running_" in k or "num_batches_tracked" in k}
    assert head <= changed
    if freeze_bn:
        assert changed == head  # every frozen parameter and BN statistic bit-identical
    else:
        # the sloppy default of hand-written probes: frozen BN layers still update their statistics
        assert changed - head == running
