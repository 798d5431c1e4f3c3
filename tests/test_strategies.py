"""What each rung of the ladder trains, at which LR, and what stays bit-identical."""
from __future__ import annotations

import pytest
import torch

from tests.conftest import REPO, TINY_TIMM
from tlsweep.training import recipes, strategies
from tlsweep.config.errors import ConfigError
from tlsweep.models import get_spec
from tlsweep.training.optim import make_optimizer
from tlsweep.training.loop import run_epoch


def _plan(make_cfg, strategy, *overrides, epochs=None):
    cfg = make_cfg(f"strategy={strategy}", *overrides)
    spec = get_spec(cfg.model, cfg.data.image_size)
    model = spec.build()
    plan = strategies.apply(model, spec, cfg.strategy, num_classes=2, lr=cfg.optim.lr, epochs=epochs)
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


def test_partial_takes_stage_indices_too(make_cfg):
    _, _, plan = _plan(make_cfg, "partial", "strategy.unfreeze=[-1,2]")
    assert plan.trainable == ["layer2", "layer4"]  # input to output; 0 is the stem
    with pytest.raises(ConfigError, match=r"\[7\].*indices 0\.\.4.*\['stem', 'layer1', 'layer2', 'layer3', 'layer4'\]"):
        _plan(make_cfg, "partial", "strategy.unfreeze=[7]")


def test_partial_with_an_unknown_stage_names_the_valid_ones(make_cfg):
    with pytest.raises(ValueError, match=r"layer5.*valid stages.*layer4"):
        _plan(make_cfg, "partial", "strategy.unfreeze=[layer5]")


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("freeze_bn", ["frozen", "none"])
def test_probe_step_changes_only_the_head(make_cfg, freeze_bn):
    cfg, model, plan = _plan(make_cfg, "probe", f"strategy.freeze_bn={freeze_bn}")
    spec = get_spec(cfg.model, cfg.data.image_size)
    optimizer, _ = make_optimizer(cfg.optim, plan.groups, cfg.epochs)
    before = _snapshot(model)
    model.train()
    if cfg.strategy.freeze_bn == "frozen":
        strategies.frozen_bn_eval(model)
    torch.manual_seed(0)
    batch = [(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1]))]
    run_epoch(model, batch, optimizer=optimizer)
    after = _snapshot(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    head = {f"{spec.head}.weight", f"{spec.head}.bias"}
    running = {k for k in before if "running_" in k or "num_batches_tracked" in k}
    assert head <= changed
    if freeze_bn == "frozen":
        assert changed == head  # every frozen parameter and BN statistic bit-identical
    else:
        # the sloppy default of hand-written probes: frozen BN layers still update their statistics
        assert changed - head == running


# --- the strategies beyond the ladder: what trains, at which LR, in which epoch ---------------------

CONF_STRATEGIES = sorted(p.stem for p in (REPO / "conf" / "strategy").glob("*.yaml"))


def test_every_config_is_a_known_strategy_and_composes(make_cfg):
    assert sorted(recipes.NAMES) == CONF_STRATEGIES
    for name in CONF_STRATEGIES:
        recipe = recipes.Recipe.of(make_cfg(f"strategy={name}").strategy)
        assert recipe.name == name


@pytest.mark.parametrize("strategy,message", [
    ({"name": "probe2"}, r"strategy.name='probe2'.*valid: scratch, probe, partial, finetune, lpft"),
    ({"name": "bitfit", "params": "weights"}, r"strategy.params='weights'.*valid: all, bias, norm"),
    ({"name": "llrd", "layer_decy": 0.5}, r"strategy llrd has no key layer_decy; did you mean layer_decay\?"),
    # finetune has no layer_decay: a sweep `strategy=finetune,llrd ++strategy.layer_decay=0.5` must not pass
    ({"name": "finetune", "layer_decay": 0.5}, r"strategy finetune has no key layer_decay \(gradual, llrd have it"),
    ({"name": "l2sp", "pretrained": False, "l2sp_alpha": 0.1}, r"no start point"),
])
def test_a_bad_strategy_names_what_is_valid(strategy, message):
    with pytest.raises(ConfigError, match=message):
        recipes.Recipe.of(strategy)


def test_lpft_needs_an_epoch_after_the_probe(make_cfg):
    with pytest.raises(ConfigError, match=r"epochs=2 leaves no epoch after strategy.probe_epochs=2"):
        _plan(make_cfg, "lpft", "epochs=2", epochs=2)


@pytest.mark.parametrize("strategy", ["finetune", "scratch"])
def test_scratch_trains_at_optim_lr_whatever_backbone_lr_scale_says(make_cfg, strategy):
    """The sweep `strategy=scratch,finetune strategy.backbone_lr_scale=0.01` scales finetune only:
    nothing in scratch is pretrained."""
    cfg, _, plan = _plan(make_cfg, strategy, "optim.lr=1e-3", "strategy.backbone_lr_scale=0.01")
    optimizer, _ = make_optimizer(cfg.optim, plan.groups, cfg.epochs)
    expect = {"scratch": {"backbone": 1e-3, "head": 1e-3}, "finetune": {"backbone": 1e-5, "head": 1e-3}}[strategy]
    assert {g["name"]: g["lr"] for g in optimizer.param_groups} == pytest.approx(expect)


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_llrd_decays_the_lr_per_layer_from_the_top_as_timm_does(make_cfg):
    """k counts timm's fine-grained layers (a ResNet's blocks): the same per-parameter scale as
    timm's own param_groups_layer_decay gives."""
    from timm.optim._param_groups import param_groups_layer_decay

    _, model, plan = _plan(make_cfg, "llrd", "model=resnet18", "optim.lr=1e-3")
    lrs = {g["name"]: g["lr"] for g in plan.groups}
    blocks = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    assert lrs == pytest.approx({"head": 1e-3, **{b: 1e-3 * 0.75 ** (8 - i) for i, b in enumerate(blocks)},
                                 "stem": 1e-3 * 0.75 ** 9})
    assert _trainable(model) == {n for n, _ in model.named_parameters()}
    assert plan.groups[0]["name"] == "layer4.1"
    assert {id(p) for g in plan.groups if g["name"] == "layer4.1" for p in g["params"]} == \
        {id(p) for p in model.layer4[1].parameters()}
    ours = {id(p): g["lr"] / 1e-3 for g in plan.groups for p in g["params"]}
    theirs = {id(p): g["lr_scale"] for g in param_groups_layer_decay(model, layer_decay=0.75) for p in g["params"]}
    assert ours == pytest.approx(theirs)


def test_llrd_layer_decay_override_moves_every_stage(make_cfg):
    _, _, plan = _plan(make_cfg, "llrd", "model=resnet18", "optim.lr=1e-3", "strategy.layer_decay=0.5")
    assert {g["name"]: g["lr"] for g in plan.groups}["layer3.1"] == pytest.approx(1e-3 * 0.5 ** 3)


def _epoch(plan, model, optimizer, epoch, loader=()):
    metrics = plan.start_epoch(epoch, model, optimizer, loader)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    return metrics, lrs, _trainable(model)


def test_gradual_unfreezes_one_stage_per_epoch_with_discriminative_lrs(make_cfg):
    cfg, model, plan = _plan(make_cfg, "gradual", "model=resnet18", "optim.lr=1e-3", "optim.scheduler=none",
                             "epochs=4", epochs=4)
    optimizer, _ = make_optimizer(cfg.optim, plan.groups, cfg.epochs)
    assert plan.segments(4) == [(1, 1), (2, 1), (3, 1), (4, 1)]
    head = {"fc.weight", "fc.bias"}
    layer = lambda name: {n for n, _ in model.named_parameters() if n.startswith(name + ".")}  # noqa: E731
    expected_trainable = [head, head | layer("layer4"), head | layer("layer4") | layer("layer3"),
                          head | layer("layer4") | layer("layer3") | layer("layer2")]
    for epoch, want in enumerate(expected_trainable, start=1):
        metrics, lrs, trainable = _epoch(plan, model, optimizer, epoch)
        assert trainable == want, epoch
        assert metrics["trainable_params"] == sum(p.numel() for n, p in model.named_parameters() if n in want)
        on = {"head": 0, "layer4": 1, "layer3": 2, "layer2": 3}
        assert lrs == pytest.approx({s: (1e-3 * 0.385 ** k if s in on and on[s] < epoch else 0.0)
                                     for s, k in {"head": 0, "layer4": 1, "layer3": 2, "layer2": 3, "layer1": 4,
                                                  "stem": 5}.items()}), epoch
        plan.end_epoch(optimizer)
        assert {g["name"]: g["lr"] for g in optimizer.param_groups}["stem"] == pytest.approx(1e-3 * 0.385 ** 5)


def test_a_frozen_phase_leaves_the_frozen_stages_bit_identical_and_stateless(make_cfg):
    """Frozen by requires_grad=False (not lr 0 alone): AdamW keeps no state for them and weight decay
    never touches them, and their BatchNorm statistics stay put."""
    cfg, model, plan = _plan(make_cfg, "gradual", "model=resnet18", "epochs=3", epochs=3)
    optimizer, _ = make_optimizer(cfg.optim, plan.groups, cfg.epochs)
    before = _snapshot(model)
    torch.manual_seed(0)
    batch = [(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1]))]
    plan.start_epoch(2, model, optimizer, batch)  # head + layer4
    strategies.train_mode(model, cfg.strategy.freeze_bn)
    run_epoch(model, batch, optimizer=optimizer)
    plan.end_epoch(optimizer)
    changed = {k for k in before if not torch.equal(before[k], _snapshot(model)[k])}
    assert changed and all(k.startswith(("fc.", "layer4.")) for k in changed)
    stateful = {id(p) for p in optimizer.state}
    assert stateful == {id(p) for p in [*model.fc.parameters(), *model.layer4.parameters()]}


def test_lpft_probes_then_fine_tunes_everything_with_bn_in_eval(make_cfg):
    cfg, model, plan = _plan(make_cfg, "lpft", "model=resnet18", "optim.lr=1e-3", "optim.scheduler=none",
                             "epochs=5", epochs=5)
    optimizer, _ = make_optimizer(cfg.optim, plan.groups, cfg.epochs)
    assert plan.segments(5) == [(1, 2), (3, 3)]  # the probe phase is one segment: its features can be cached
    for epoch in (1, 2):
        _, lrs, trainable = _epoch(plan, model, optimizer, epoch)
        assert trainable == {"fc.weight", "fc.bias"} and lrs == pytest.approx({"backbone": 0.0, "head": 1e-3})
        plan.end_epoch(optimizer)
    _, lrs, trainable = _epoch(plan, model, optimizer, 3)
    assert trainable == {n for n, _ in model.named_parameters()}
    assert lrs == pytest.approx({"backbone": 1e-4, "head": 1e-3})
    strategies.train_mode(model, cfg.strategy.freeze_bn)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns) and model.training  # use_net_val_mode


def test_bitfit_trains_only_biases_and_the_head(make_cfg):
    _, model, plan = _plan(make_cfg, "bitfit", "model=resnet18", "optim.lr=1e-3")
    assert _trainable(model) == {n for n, _ in model.named_parameters() if n.endswith(".bias")} | {"fc.weight"}
    bn_biases = sum(m.bias.numel() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert plan.trainable_params == bn_biases + 512 * 2 + 2  # resnet18's convs have no bias
    assert {g["name"]: g["lr"] for g in plan.groups} == pytest.approx({"backbone": 1e-3, "head": 1e-3})


@pytest.mark.parametrize("model_name,norm_type", [("resnet18", torch.nn.BatchNorm2d),
                                                  ("convnext_tiny", torch.nn.LayerNorm)])
def test_norm_trains_only_normalization_layers_and_the_head(make_cfg, model_name, norm_type):
    cfg, model, plan = _plan(make_cfg, "norm", f"model={model_name}")
    spec = get_spec(cfg.model)
    norms = {f"{n}.{leaf}" for n, m in model.named_modules() if isinstance(m, norm_type)
             for leaf, _ in m.named_parameters(recurse=False)}
    assert norms and _trainable(model) == norms | {f"{spec.head}.weight", f"{spec.head}.bias"}


def test_l2sp_penalty_is_alpha_half_distance_to_start_plus_beta_half_head_norm(make_cfg):
    """On a tiny model, by hand: every pretrained weight moved by a known amount."""
    from torch import nn
    from tlsweep.models import ModelSpec

    stages = {"conv": ("0.weight", "0.bias"), "bn": ("1.weight", "1.bias")}

    def reset(model, n):
        model[3] = nn.Linear(2, n)
        return model[3]

    spec = ModelSpec(name="tiny", arch="tiny", source="test",
                     build=lambda: nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 5)),
                     head="3", stages=stages, layers=stages, preprocess=None, weights_name="none",
                     pieces=lambda m: [], chain=False, load_default=lambda m, s: None, reset_head=reset,
                     _stage_of={n: s for s, names in stages.items() for n in names})
    model = spec.build()
    plan = strategies.apply(model, spec, {"name": "l2sp", "l2sp_alpha": 0.1, "l2sp_beta": 0.01}, 2, lr=1e-3)
    assert all(g["weight_decay"] == 0.0 for g in plan.groups)  # the penalty replaces plain weight decay
    start = 0.01 / 2 * (model[3].weight.square().sum() + model[3].bias.square().sum()).item()
    assert plan.penalty().item() == pytest.approx(start)  # at the start only the head's term
    with torch.no_grad():
        model[0].weight += 0.5   # 6 values
        model[0].bias -= 2.0     # 2 values
        model[1].weight += 1.0   # 2 values
        model[3].weight.fill_(3.0)  # 2 x 2 head
        model[3].bias.fill_(-1.0)
    want = 0.1 / 2 * (6 * 0.25 + 2 * 4.0 + 2 * 1.0) + 0.01 / 2 * (4 * 9.0 + 2 * 1.0)
    penalty = plan.penalty()
    assert penalty.item() == pytest.approx(want)
    penalty.backward()
    assert torch.allclose(model[0].bias.grad, torch.full((2,), 0.1 * -2.0))  # alpha * (w - w0)
    assert torch.allclose(model[3].weight.grad, torch.full((2, 2), 0.01 * 3.0))  # beta * w
    # reg_loss: the mean of the epoch's penalties, then reset
    assert plan.end_epoch(torch.optim.SGD(plan.groups, lr=1e-3)) == pytest.approx({"reg_loss": (start + want) / 2})
    plan.penalty()
    assert plan.end_epoch(torch.optim.SGD(plan.groups, lr=1e-3)) == pytest.approx({"reg_loss": want})


def test_auto_rgn_lrs_follow_the_relative_gradient_norms(make_cfg):
    cfg, model, plan = _plan(make_cfg, "auto_rgn", "model=resnet18", "optim.lr=1e-3", "optim.scheduler=none")
    for m in model.modules():  # timm zero-inits each block's last BN (no gradient reaches its convs): undo
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(m.weight)
    bn = {n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert _trainable(model) == {n for n, _ in model.named_parameters() if n.rpartition(".")[0] not in bn}
    assert all(len(g["params"]) == 1 for g in plan.groups)  # one group per tensor
    optimizer, _ = make_optimizer(cfg.optim, plan.groups, cfg.epochs)
    torch.manual_seed(0)
    batches = [(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])) for _ in range(7)]
    # by hand, on a copy in the same (train) mode: mean over the first 5 batches of ||g|| / ||w||
    import copy
    twin = copy.deepcopy(model)
    twin.train()
    ratios = {n: 0.0 for n, p in twin.named_parameters() if p.requires_grad}
    for x, y in batches[:5]:
        twin.zero_grad()
        torch.nn.functional.cross_entropy(twin(x), y).backward()
        for n, p in twin.named_parameters():
            if p.requires_grad:
                ratios[n] += (p.grad.norm() / p.detach().norm()).item() / 5
    head = {"fc.weight", "fc.bias"}
    top = max(r for n, r in ratios.items() if n not in head)  # the fresh head's ratio is left out
    _, lrs, _ = _epoch(plan, model, optimizer, 1, batches)
    assert lrs == pytest.approx({n: 1e-3 if n in head else 1e-4 * r / top for n, r in ratios.items()}, rel=1e-4)
    assert max(v for n, v in lrs.items() if n not in head) == pytest.approx(1e-4)  # lr * backbone_lr_scale
    assert len(set(round(v, 12) for v in lrs.values())) > len(lrs) // 2  # they differ per tensor
    plan.end_epoch(optimizer)
    assert {g["name"]: g["lr"] for g in optimizer.param_groups} == pytest.approx(
        {n: 1e-3 if n in head else 1e-4 for n in ratios})  # restored for the scheduler


# --- every strategy on every timm family: builds, trains what it claims, one step ---------------

def _expected(strategy: str, spec, model, names: list[str]) -> dict[str, float]:
    """name -> LR multiple of optim.lr, for every parameter the strategy trains (by its README row)."""
    head = {n for n in names if n.startswith(spec.head + ".")}
    top = list(reversed(spec.stages))
    k = {n: top.index(spec.stage_of(n)) + 1 for n in names if n not in head}
    layers = list(reversed(spec.layers))
    module = dict(model.named_modules())
    owner = {n: module[n.rpartition(".")[0]] for n in names}
    norm_types = (torch.nn.modules.batchnorm._NormBase, torch.nn.LayerNorm, torch.nn.GroupNorm)
    rule = {
        "scratch": lambda n: 1.0,
        "probe": lambda n: None,
        "partial": lambda n: 0.1 if spec.stage_of(n) == spec.last_stage else None,
        "finetune": lambda n: 0.1, "lpft": lambda n: 0.1, "l2sp": lambda n: 0.1,
        "llrd": lambda n: 0.75 ** (layers.index(spec.layer_of(n)) + 1),
        "gradual": lambda n: 0.385 ** k[n],
        "bitfit": lambda n: 1.0 if n.endswith(".bias") else None,
        "norm": lambda n: 1.0 if isinstance(owner[n], norm_types) else None,
        "auto_rgn": lambda n: None if isinstance(owner[n], torch.nn.modules.batchnorm._BatchNorm) else 0.1,
    }[strategy]
    out = {n: 1.0 for n in head}
    out.update({n: r for n in names if n not in head and (r := rule(n)) is not None})
    return out


ADAPTER_STRATEGIES = ("lora", "dora")


def _families():
    """Every strategy x family in the full tier; the default tier pairs them so that each strategy and
    each family runs at least once (strategy i on family i mod 5)."""
    # score is left out: it builds probe's Plan and trains nothing (tests/test_scores_run.py checks that)
    trained = [s for s in recipes.NAMES if recipes.Recipe.of({"name": s}).trains]
    return [(s, a) if (i - TINY_TIMM.index(a)) % len(TINY_TIMM) == 0 else pytest.param(s, a, marks=pytest.mark.slow)
            for i, s in enumerate(trained) for a in TINY_TIMM]


@pytest.mark.parametrize("strategy,arch", _families())
def test_every_strategy_trains_what_it_claims_on_every_timm_family(make_cfg, arch, strategy):
    if strategy in ADAPTER_STRATEGIES:
        pytest.importorskip("peft", reason="the peft extra (CI installs it)")
    cfg, model, plan = _plan(make_cfg, strategy, "model=timm", f"model.arch={arch}", "model.weights=null",
                             "optim.lr=1e-3", "optim.scheduler=none")
    spec = get_spec(cfg.model, cfg.data.image_size)
    trainable = _trainable(model)
    grouped = {id(p): g for g in plan.groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert {n for n, p in named.items() if id(p) in grouped} == trainable  # the optimizer holds what trains
    assert plan.trainable_params == sum(named[n].numel() for n in trainable)
    if strategy in ADAPTER_STRATEGIES:
        adapters = {n for n in trainable if "lora_" in n}
        assert adapters and trainable - adapters == {n for n in trainable if n.startswith(spec.head + ".")}
        assert all(grouped[id(named[n])]["lr"] == pytest.approx(1e-3) for n in trainable)
    else:
        want = _expected(strategy, spec, model, list(named))
        assert trainable == set(want), sorted(trainable ^ set(want))[:5]
        assert {n: grouped[id(named[n])]["lr"] / 1e-3 for n in trainable} == pytest.approx(want)
    # one step on tiny images: finite, and nothing outside the trainable set moves
    optimizer, _ = make_optimizer(cfg.optim, plan.groups, cfg.epochs)
    before = {n: p.detach().clone() for n, p in named.items()}
    plan.start_epoch(1, model, optimizer, [(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1]))])
    torch.manual_seed(0)
    loss, _ = run_epoch(model, [(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1]))], optimizer=optimizer,
                        penalty=plan.penalty)
    plan.end_epoch(optimizer)
    changed = {n for n, p in named.items() if not torch.equal(p, before[n])}
    assert torch.isfinite(torch.tensor(loss)) and changed and changed <= trainable
    # and what trains learns: a few steps on one fixed batch lower its loss, measured the same way before and
    # after, in the mode it trains in (eval mode would also measure BatchNorm's running statistics, which
    # five steps of a random-init model cannot settle)
    x, y = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 0, 1])

    def batch_loss() -> float:
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(model(x), y).item()

    plan.start_epoch(cfg.epochs, model, optimizer, [(x, y)])  # the last epoch: a phased strategy's every stage
    start = batch_loss()
    for _ in range(5):
        run_epoch(model, [(x, y)], optimizer=optimizer, penalty=plan.penalty)
    assert batch_loss() < start
    plan.end_epoch(optimizer)


@pytest.mark.parametrize("arch", ["vit_tiny_patch16_224", "resnet10t"])
def test_no_weight_decay_on_1d_parameters_as_timm(make_cfg, arch):
    """timm's default (param_groups_weight_decay): norms, biases and the model's no_weight_decay()
    names (a ViT's pos_embed, cls_token) never decay; every other trained tensor does."""
    from timm.optim._param_groups import param_groups_weight_decay

    cfg, model, plan = _plan(make_cfg, "finetune", "model=timm", f"model.arch={arch}", "model.weights=null")
    optimizer, _ = make_optimizer(cfg.optim, plan.groups, cfg.epochs)
    exempt = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    decays = {id(p) for g in optimizer.param_groups if g["weight_decay"] == cfg.optim.weight_decay > 0 for p in g["params"]}
    theirs = param_groups_weight_decay(model, weight_decay=cfg.optim.weight_decay,
                                       no_weight_decay_list=getattr(model, "no_weight_decay", set)())
    assert exempt == {id(p) for p in theirs[0]["params"]} and decays == {id(p) for p in theirs[1]["params"]}
    assert exempt and decays and len(exempt | decays) == len(list(model.parameters()))
    if arch.startswith("vit"):
        assert id(model.pos_embed) in exempt and id(model.cls_token) in exempt
    # the two halves of a group share its name and LR: one lr/<group> metric each
    assert {g["name"] for g in optimizer.param_groups} == {"backbone", "head"}


def test_auto_rgn_logs_its_lrs_per_stage_not_per_tensor(make_cfg):
    from tlsweep.training.loop import lr_metrics

    cfg, model, plan = _plan(make_cfg, "auto_rgn", "model=resnet18", "optim.lr=1e-3")
    optimizer, _ = make_optimizer(cfg.optim, plan.groups, cfg.epochs)
    layer1 = [g for g in optimizer.param_groups if g["stage"] == "layer1"]
    layer1[0]["lr"] *= 0.5  # as a reweighting would: the stage's LRs now differ
    metrics = lr_metrics(optimizer.param_groups)
    spec = get_spec(cfg.model)
    assert set(metrics) == {f"lr/{s}/{k}" for s in [*spec.stages, "head"] for k in ("min", "mean", "max")}
    assert metrics["lr/layer1/min"] == pytest.approx(5e-5) and metrics["lr/layer1/max"] == pytest.approx(1e-4)
    assert metrics["lr/layer1/mean"] == pytest.approx(sum(g["lr"] for g in layer1) / len(layer1))
    assert lr_metrics([{"name": "head", "lr": 1.0}, {"name": "head", "lr": 1.0, "weight_decay": 0.0}]) == {"lr/head": 1.0}


def test_an_unknown_optimizer_or_schedule_lists_the_registered_ones(make_cfg):
    from omegaconf import OmegaConf

    optim = make_cfg().optim
    with pytest.raises(ConfigError, match=r"optim.name=adam: unknown; valid: adamw, sgd"):
        make_optimizer(OmegaConf.merge(optim, {"name": "adam"}), [], 1)
    with pytest.raises(ConfigError, match=r"optim.scheduler=step: unknown; valid: cosine, none"):
        make_optimizer(OmegaConf.merge(optim, {"scheduler": "step"}), [], 1)


def test_an_unknown_dataset_lists_the_registered_ones():
    from tlsweep.data import pipeline as data

    with pytest.raises(data.DataError, match=r"data.name 'cifar'; valid: digits, hymenoptera, imagefolder"):
        data.load(type("C", (), {"name": "cifar"})())
