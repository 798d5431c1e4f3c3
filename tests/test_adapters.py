"""LoRA/DoRA through peft: which layers get adapters, what trains, and that nothing else moves."""
from __future__ import annotations

import copy
import functools
import importlib
import importlib.util
import sys

import pytest
import timm
import torch
import torchvision
from omegaconf import OmegaConf
from torch import nn

from tlsweep.training import adapters
from tlsweep.config.errors import ConfigError

# peft is an optional extra: tests that inject skip without it (default_targets and the missing-peft error do not)
needs_peft = pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason='pip install -e ".[peft]"')


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tensors here are tiny: a second OpenMP thread only spin-waits on a shared machine (~100x slower)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.lru_cache(maxsize=None)
def _timm_prototype(name: str, **kwargs) -> tuple[nn.Module, str]:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=3, **kwargs)
    model.requires_grad_(False)
    model.reset_classifier(3)
    head = model.get_classifier()
    return model, next(n for n, m in model.named_modules() if m is head)


def _timm(name: str, **kwargs) -> tuple[nn.Module, str]:
    """A random-init timm model, frozen, with a fresh 3-class head (as strategies.apply leaves it);
    a copy of one built once (timm's init of a ViT takes a second)."""
    model, head = _timm_prototype(name, **kwargs)
    return copy.deepcopy(model), head


def _vit():
    return _timm("vit_tiny_patch16_224", img_size=32)


def _tv_vit() -> tuple[nn.Module, str]:
    """torchvision's ViT (nn.MultiheadAttention), two tiny layers."""
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2,
                                                 hidden_dim=32, mlp_dim=64, num_classes=3)
    model.requires_grad_(False)
    model.heads.head = nn.Linear(32, 3)
    return model, "heads.head"


def _trainable(model):
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _peft_count(model, head, kind, rank, targets=None):
    import peft

    peft_model = peft.get_peft_model(model, peft.LoraConfig(
        target_modules=targets, r=rank, lora_alpha=rank, use_dora=kind == "dora", modules_to_save=[head]))
    return peft_model.get_nb_trainable_parameters()[0]


def test_vit_default_targets_are_every_blocks_linears_only():
    model, head = _vit()
    targets = adapters.default_targets(model, head)
    assert targets == [f"blocks.{i}.{m}" for i in range(12) for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]
    assert isinstance(model.patch_embed.proj, nn.Conv2d)  # excluded by the Linear rule, not by name
    assert head == "head"


def test_convnext_targets_its_mlp_linears_not_the_nested_head():
    model, head = _timm("convnext_atto")
    targets = adapters.default_targets(model, head)
    assert head == "head.fc" and len(targets) == 24  # 2+2+6+2 blocks x fc1, fc2
    assert all(t.endswith(("mlp.fc1", "mlp.fc2")) for t in targets)


def test_cnn_targets_only_pointwise_convs():
    model, head = _timm("resnet10t")
    # BasicBlocks: 3x3 convs only; the 1x1s are the downsamples of layers 2-4
    assert adapters.default_targets(model, head) == [f"layer{i}.0.downsample.1" for i in (2, 3, 4)]

    model, head = _timm("mobilenetv3_small_050")
    targets = adapters.default_targets(model, head)
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            pointwise = m.kernel_size == (1, 1) and m.groups == 1
            assert (name in targets) == pointwise, name
    assert "conv_head" in targets and "blocks.0.0.conv_dw" not in targets and "conv_stem" not in targets
    assert head == "classifier" and len(targets) == 41

    # a grouped 1x1 (ShuffleNet's) is not a per-pixel Linear over all channels, a 3x3 not per-pixel at all
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1, groups=2), nn.Conv2d(8, 8, 3),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    assert adapters.default_targets(model, "5") == ["0"]


def test_torchvision_attention_is_targeted_whole_not_its_out_proj():
    model, head = _tv_vit()
    layers = [f"encoder.layers.encoder_layer_{i}" for i in range(2)]
    # out_proj is a Linear whose forward MultiheadAttention never calls: an adapter there would not train
    assert adapters.default_targets(model, head) == [
        f"{l}.{m}" for l in layers for m in ("self_attention", "mlp.0", "mlp.3")]


def test_a_model_with_nothing_to_adapt_says_to_pass_target_modules():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(ConfigError, match=r"Sequential.*strategy\.target_modules"):
        adapters.default_targets(model, "3")


@needs_peft
def test_vit_lora_and_dora_counts():
    per_block_lora = 8 * ((192 + 576) + (192 + 192) + (192 + 768) + (768 + 192))  # r * (in + out) per Linear
    per_block_out = 576 + 192 + 768 + 192  # DoRA's magnitude: one per output feature
    head = 192 * 3 + 3
    model, name = _vit()
    lora = adapters.attach(model, name, "lora", rank=8, alpha=8)
    assert sum(p.numel() for p in lora.values()) == 12 * per_block_lora + head == 295_491
    model, name = _vit()
    dora = adapters.attach(model, name, "dora", rank=8, alpha=8)
    assert sum(p.numel() for p in dora.values()) == 12 * (per_block_lora + per_block_out) + head == 316_227
    model, name = _vit()
    assert _peft_count(model, name, "dora", 8, adapters.default_targets(model, name)) == 316_227


@needs_peft
@pytest.mark.parametrize("make", [_vit, lambda: _timm("efficientnet_b0")], ids=["vit", "efficientnet_b0"])
def test_dora_adds_exactly_one_magnitude_per_output_feature(make):
    model, head = make()
    out = sum(getattr(m, "out_features", None) or m.out_channels
              for m in (model.get_submodule(t) for t in adapters.default_targets(model, head)))
    counts = {}
    for kind in adapters.KINDS:
        model, head = make()
        counts[kind] = sum(p.numel() for p in adapters.attach(model, head, kind, rank=4, alpha=4).values())
    assert counts["dora"] - counts["lora"] == out


CASES = [(_vit, "lora"), (_vit, "dora"), (lambda: _timm("resnet10t"), "dora"),
         (lambda: _timm("mobilenetv3_small_050"), "lora"), (lambda: _timm("convnext_atto"), "lora")]


@needs_peft
@pytest.mark.parametrize("make,kind", CASES, ids=["vit-lora", "vit-dora", "resnet10t-dora", "mnv3-lora", "convnext-lora"])
def test_one_step_moves_only_what_attach_returns(make, kind):
    model, head = make()
    named = adapters.attach(model, head, kind, rank=4, alpha=8)
    assert list(named) == list(_trainable(model))  # the same set, in named_parameters order
    assert {id(p) for p in named.values()} == {id(p) for p in model.parameters() if p.requires_grad}

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(named.values(), lr=1e-2)
    model.train()
    loss = nn.functional.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 2]))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in named.values())  # every adapter is on the forward path
    optimizer.step()
    after = dict(model.named_parameters())
    frozen = [n for n in before if n not in named]
    assert frozen and all(torch.equal(before[n], after[n]) for n in frozen)
    # lora_A gets a zero gradient while lora_B is zero (its init): B, DoRA's magnitude and the head move
    moving = [n for n in named if ".lora_A." not in n]
    assert moving and all(not torch.equal(before[n], after[n]) for n in moving)


@needs_peft
def test_head_copy_trains_and_is_what_the_model_runs():
    model, head = _vit()
    named = adapters.attach(model, head, "lora", rank=8, alpha=8)
    assert [n for n in named if n.startswith("head.")] == ["head.modules_to_save.default.weight",
                                                           "head.modules_to_save.default.bias"]
    wrapper = model.get_submodule(head)
    assert not any(p.requires_grad for p in wrapper.original_module.parameters())
    with torch.no_grad():
        wrapper.modules_to_save["default"].weight.zero_()
        wrapper.modules_to_save["default"].bias.copy_(torch.tensor([1.0, 2.0, 3.0]))
        wrapper.original_module.bias.fill_(-5.0)  # ignored: the copy answers
        assert torch.equal(model.eval()(torch.randn(2, 3, 32, 32)), torch.tensor([[1.0, 2.0, 3.0]] * 2))


@needs_peft
def test_torchvision_vit_lora_trains_through_multihead_attention():
    model, head = _tv_vit()
    named = adapters.attach(model, head, "lora", rank=4, alpha=4)
    attention = [n for n in named if ".self_attention." in n]
    assert len(attention) == 2 * 4  # in_proj and out_proj, A and B, per layer
    loss = nn.functional.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 2]))
    loss.backward()
    assert all(named[n].grad is not None for n in attention)


@needs_peft
def test_dora_on_multihead_attention_is_a_config_error():
    model, head = _tv_vit()
    with pytest.raises(ConfigError, match=r"strategy=dora.*MultiheadAttention"):
        adapters.attach(model, head, "dora", rank=4, alpha=4)


@needs_peft
@pytest.mark.parametrize("targets,adapted", [
    (r".*\.mlp\.fc\d", 24), (["fc1"], 12), (OmegaConf.create(["blocks.0.attn.qkv"]), 1)])
def test_given_target_modules_pass_through_to_peft(targets, adapted):
    model, head = _vit()
    named = adapters.attach(model, head, "lora", rank=2, alpha=2, target_modules=targets)
    assert len([n for n in named if ".lora_A." in n]) == adapted


@needs_peft
@pytest.mark.parametrize("targets", [["nope"], "nope.*", ["norm1"]])
def test_bad_target_modules_name_the_key_and_some_candidates(targets):
    model, head = _vit()
    with pytest.raises(ConfigError, match=r"(?s)strategy\.target_modules=.*blocks\.0\.attn\.qkv"):
        adapters.attach(model, head, "lora", rank=8, alpha=8, target_modules=targets)


def test_unknown_kind_lists_the_valid_ones():
    model, head = _vit()
    with pytest.raises(ConfigError, match=r"'ia3'.*lora, dora"):
        adapters.attach(model, head, "ia3", rank=8, alpha=8)


def test_without_peft_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now raises ImportError
    importlib.reload(adapters)  # and tlsweep.training.adapters still imports: peft is imported inside attach only
    model, head = _vit()
    with pytest.raises(ConfigError, match=r'strategy=dora needs the optional extra: pip install -e "\.\[peft\]"'):
        adapters.attach(model, head, "dora", rank=8, alpha=8)
