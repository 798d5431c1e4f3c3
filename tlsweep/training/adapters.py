"""Parameter-efficient fine-tuning: LoRA (Hu et al., ICLR 2022) and DoRA (Liu et al., ICML 2024)
adapters injected into a frozen backbone through Hugging Face `peft`.

peft is an optional extra (`pip install -e ".[peft]"`) and is imported only inside `attach`, so
tlsweep imports, and every other strategy runs, without it.

Which layers get adapters by default (`default_targets`): every linear map the backbone applies per
token or per pixel, i.e.
- every `nn.Linear` (a timm ViT's fused `qkv`, `proj`, `fc1`, `fc2`; a ConvNeXt block's MLP);
- every `nn.MultiheadAttention` as a whole (torchvision's ViT): peft's LoRA for it adapts the fused
  q/k/v projection and `out_proj`, the same maps as timm's `qkv` and `proj`. The `out_proj` Linear
  inside it is not targeted on its own: MultiheadAttention reads `out_proj.weight` directly and never
  calls its forward, so an adapter there would train nothing;
- every 1x1 `nn.Conv2d` with groups == 1 (EfficientNet's conv_pw/conv_pwl/conv_head and SE convs,
  ResNet's bottleneck and downsample 1x1s): a 1x1 conv is a per-pixel Linear, and LoRA on it is the
  same low-rank update. Depthwise and kxk convs are left out: peft's conv LoRA on them factors the
  kernel, a different kind of update, and the VTAB-1k PEFT literature adapts linear maps only.
The head is never a target: it trains fully, as peft's `modules_to_save`.
"""
from __future__ import annotations

import torch.nn as nn

from ..config.errors import ConfigError

KINDS = ("lora", "dora")
_INSTALL = 'pip install -e ".[peft]" (peft needs transformers and accelerate)'


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _is_pointwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1


def _model_name(model: nn.Module) -> str:
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")  # timm models record theirs
    return arch or type(model).__name__


def _candidates(model: nn.Module, head: str) -> list[str]:
    """Backbone modules that can take an adapter, in `named_modules` order."""
    modules = [(n, m) for n, m in model.named_modules() if n and not _under(n, head)]
    mha = [n for n, m in modules if isinstance(m, nn.MultiheadAttention)]
    return [n for n, m in modules if n in mha or _is_pointwise(m)
            or (isinstance(m, nn.Linear) and not any(_under(n, a) for a in mha))]


def default_targets(model: nn.Module, head: str) -> list[str]:
    """Full names of the modules that get adapters when strategy.target_modules is null (see the
    module docstring for which and why)."""
    targets = _candidates(model, head)
    if not targets:
        raise ConfigError(
            f"{_model_name(model)} has no nn.Linear, nn.MultiheadAttention or 1x1 nn.Conv2d outside its head "
            f"{head!r} for LoRA/DoRA to adapt: pass strategy.target_modules (module names or a regex)")
    return targets


def _check_mha(model: nn.Module, targets: list[str], kind: str, dropout: float) -> None:
    mha = [n for n in targets if isinstance(model.get_submodule(n), nn.MultiheadAttention)]
    if mha and kind == "dora":
        raise ConfigError(
            f"strategy=dora: peft has no DoRA for nn.MultiheadAttention ({mha[0]} of {_model_name(model)}); "
            "use strategy=lora, a timm ViT (model=timm), or strategy.target_modules without the attention")
    if mha and dropout:
        # peft cannot factor x out of lora_B(lora_A(dropout(x))) in its merged MultiheadAttention forward
        raise ConfigError(f"strategy.adapter_dropout={dropout}: peft's LoRA on nn.MultiheadAttention ({mha[0]} of "
                          f"{_model_name(model)}) needs adapter_dropout: 0.0")


def attach(model: nn.Module, head: str, kind: str, rank: int, alpha: float,
           target_modules: list[str] | str | None = None, dropout: float = 0.0) -> dict[str, nn.Parameter]:
    """Inject LoRA (kind="lora") or DoRA (kind="dora", peft's use_dora=True) adapters into `model` in place,
    with the head at `head` in peft's modules_to_save (so it trains fully). Returns name -> parameter of every
    parameter that trains afterwards (adapters and the head copy), in model.named_parameters() order.

    Everything else is frozen by peft. Afterwards `model.<head>` is peft's ModulesToSaveWrapper: its
    frozen `original_module` is unused, `model(x)` runs the trained copy `modules_to_save.default`.
    `target_modules` (names, name suffixes, or one regex string) is passed to peft as it takes it.

    torchvision's ViT: peft's LoRA on nn.MultiheadAttention adds the adapter into the frozen in_proj and
    out_proj weights before each forward and subtracts it after, as new Parameter objects: those two
    frozen weights drift by float rounding (1.5e-8 after 3 steps on a toy model) and must not be held
    by reference across forwards. timm ViTs (nn.Linear qkv/proj) have neither effect.
    """
    if kind not in KINDS:
        raise ConfigError(f"adapter kind {kind!r} is not one of {', '.join(KINDS)}")
    try:
        import peft
    except ImportError:
        raise ConfigError(f"strategy={kind} needs the optional extra: {_INSTALL}") from None

    given = target_modules is not None
    if given:
        # a Hydra ListConfig is no list to peft (it matches lists by suffix, strings as one regex)
        targets = target_modules if isinstance(target_modules, str) else [str(t) for t in target_modules]
    else:
        targets = default_targets(model, head)
        _check_mha(model, targets, kind, dropout)
    config = peft.LoraConfig(target_modules=targets, r=rank, lora_alpha=alpha, lora_dropout=dropout,
                             use_dora=kind == "dora", modules_to_save=[head])
    try:
        peft_model = peft.get_peft_model(model, config)  # injects into `model` itself; the wrapper is not kept
    except ValueError as err:  # peft: no module matched, or one it cannot adapt (a BatchNorm, DoRA on attention)
        if not given:
            raise  # the defaults are all Linear/attention/1x1 convs peft adapts: this is a bug, not a config
        some = ", ".join(_candidates(model, head)[:6]) or "none"
        raise ConfigError(f"strategy.target_modules={target_modules!r} cannot be adapted on {_model_name(model)}: "
                          f"{err}\nLinear/attention/1x1-conv modules of this model: {some}, ...") from None

    trains = {n: p for n, p in model.named_parameters() if p.requires_grad}
    # peft's modules_to_save matches by bare suffix ("fc" would also wrap "se.fc"), and it keeps the
    # original head beside the trained copy: only adapters and the copy may train
    stray = [n for n in trains if ".lora_" not in n and not n.startswith(f"{head}.modules_to_save.")]
    missed = [] if given else [t for t in targets
                               if not isinstance(model.get_submodule(t), peft.tuners.lora.LoraLayer)]
    if stray or missed:
        raise RuntimeError(f"peft trains {stray[:4]} beside the adapters and the head copy, "
                           f"or left default targets {missed[:4]} without an adapter")
    counted = peft_model.get_nb_trainable_parameters()[0]
    if counted != sum(p.numel() for p in trains.values()):
        raise RuntimeError(f"peft counts {counted} trainable parameters, tlsweep "
                           f"{sum(p.numel() for p in trains.values())}: the accounting is wrong")
    return trains
