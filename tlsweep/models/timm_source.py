"""Any timm model by name: every fact from timm's uniform API, with no table per architecture.

The head is `get_classifier()` / `reset_classifier()`; stages are `group_matcher(coarse=True)` grouped
by timm's own `group_with_matcher`, layers (for layer-wise LR decay) the same with `coarse=False`;
preprocessing is `resolve_model_data_config`; DEFAULT weights come through timm's own loader.
"""
from __future__ import annotations

import math
import sys
from typing import Callable

import torch
from torch import nn
from torchvision.transforms.v2 import InterpolationMode

from ..config.errors import ConfigError, UserError, WeightsUnavailable
from ..imports import heavy
from . import weights as W
from .pieces import module_name, timm_chain, timm_pieces
from .spec import ModelSpec, Preprocess, by_param

def _timm():
    with heavy("timm"):  # once per process (docs/speed.md, Fixed cost); only a run that builds a timm model pays it
        import timm

    return timm


def _create(arch: str, img_size: int | None, **kwargs) -> nn.Module:
    timm = _timm()
    try:
        return timm.create_model(arch, pretrained=False, **({"img_size": img_size} if img_size else {}), **kwargs)
    except RuntimeError as err:  # timm: "Unknown model (...)"
        if "Unknown model" not in str(err):
            raise
        base = arch.split(".")[0]
        near = timm.list_models(f"*{base[:max(len(base) - 3, 3)]}*")[:8]
        raise ConfigError(f"model.arch={arch!r} is not a timm model; e.g. {near or timm.list_models()[:5]} "
                          f"(timm.list_models('*vit*') lists them, timm.list_pretrained() the tagged ones)") from None
    except TypeError as err:  # a model that takes no img_size
        raise ConfigError(f"model {arch!r} cannot be built at data.image_size={img_size}: {err}") from None


def _name_groups(groups: list[list[str]], first_is_stem: bool) -> dict[str, tuple[str, ...]]:
    """Name each group of parameter names by the shortest module path of its first parameter that no
    other group's parameters share (blocks.3, layer2, stages.1, blocks.3.1 for a finer layer),
    "stem" for a matcher's stem group, else group<i>."""
    out: dict[str, tuple[str, ...]] = {}
    for i, names in enumerate(groups):
        others = [n for j, g in enumerate(groups) if j != i for n in g]
        parts = names[0].split(".")[:-1]
        label = ""
        for depth in range(1, len(parts) + 1):
            prefix = ".".join(parts[:depth])
            if not any(o == prefix or o.startswith(prefix + ".") for o in others):
                label = prefix
                break
        if i == 0 and first_is_stem:
            label = "stem"
        if not label or label in out:
            label = f"group{i}"
        out[label] = tuple(names)
    return out


_UNMATCHED = "\x00unmatched"  # a name no matcher knows: it shows which group timm left for the unmatched


def timm_groups(model: nn.Module, head: str, coarse: bool) -> dict[str, tuple[str, ...]]:
    """The model's parameters (head excluded) in timm's groups, input to output.

    `model.group_matcher(coarse)` through timm's `group_with_matcher`, as `param_groups_layer_decay`
    uses it. timm sends parameters its matcher does not name (a ConvNeXt's head norm, a ViT's fc_norm)
    to one last group; here they join the last matched group instead, so that "the last stage" is
    the top of the network, not a lone norm layer (timm's layer decay also gives them the top LR).
    """
    from timm.models._manipulate import group_with_matcher

    names = [n for n, _ in model.named_parameters() if not n.startswith(head + ".")]
    matcher = model.group_matcher(coarse=coarse)
    grouped = group_with_matcher([(n, None) for n in names] + [(_UNMATCHED, None)], matcher)
    groups = [list(g) for _, g in sorted(grouped.items())]
    rest = next(g for g in groups if _UNMATCHED in g)
    rest.remove(_UNMATCHED)
    if rest and rest is not groups[0]:
        groups[groups.index(rest) - 1].extend(rest)
        rest.clear()
    groups = [g for g in groups if g]
    if not groups:
        raise ConfigError(f"{type(model).__name__}: timm's group_matcher found no parameters outside the head")
    stem_first = isinstance(matcher, dict) and next(iter(matcher), None) == "stem"
    return _name_groups(groups, stem_first)


def _timm_reset_head(model: nn.Module, num_classes: int) -> nn.Module:
    # reset_classifier also rebuilds a parameter-free global pool; its new Linear draws its init
    # from the global RNG exactly like nn.Linear(in_features, num_classes)
    model.reset_classifier(num_classes)
    return model.get_classifier()


def _family_filter(model: nn.Module) -> Callable[[dict, nn.Module], dict]:
    """timm's checkpoint_filter_fn of the model's module: it maps original-format checkpoints
    (DINOv2, CLIP, FB ConvNeXt) to timm's keys and resamples a ViT's position embeddings to the
    model's img_size. Families without one take checkpoints as they are."""
    fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    return fn if fn is not None else (lambda sd, m: sd)


def _timm_load_default(arch: str) -> Callable[[nn.Module, "ModelSpec"], None]:
    def load(model: nn.Module, spec: "ModelSpec") -> None:
        if arch in W.PACKAGED:
            W.load_pretrained(model, spec, W.PACKAGED[arch].state_dict())
            return
        cfg = getattr(model, "pretrained_cfg", None) or {}
        if not (cfg.get("hf_hub_id") or cfg.get("url") or cfg.get("file")):
            raise ConfigError(f"model.arch={arch!r} has no pretrained weights in timm; pick a tagged name from "
                              f"timm.list_pretrained('{arch.split('.')[0]}*'), or model.weights=null / a file")
        timm = _timm()

        def fetch() -> None:
            # timm's own loader: hub (or URL) download into its cache, its checkpoint filter (pos-embed
            # resampling for img_size), then a strict load: every key must match
            timm.models.load_pretrained(model, pretrained_cfg=cfg, num_classes=model.num_classes,
                                        filter_fn=_family_filter(model), strict=True)

        where = cfg.get("hf_hub_id") or cfg.get("url")
        try:
            with W.hub_cache_only():  # a file already in the hub's cache loads without asking the network
                fetch()
            return
        except (UserError, KeyboardInterrupt):
            raise
        except Exception:
            pass
        offline = W.hub_unreachable(where)
        try:
            if offline:
                raise OSError(offline)
            fetch()
        except (UserError, KeyboardInterrupt):
            raise
        except Exception as err:  # offline: the hub client's own error type varies by version
            raise WeightsUnavailable(
                f"could not load timm's pretrained weights for {arch!r} from {where} "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}).\n"
                f"Offline, put the hub's files under {W.hub_cache_hint(str(where).split('/')[-1])} "
                f"(`huggingface-cli download {where}` on a machine with a network, then copy that cache folder), "
                f"or pass model.weights=/path/to/model.safetensors (or .pth)") from err
    return load


def _timm_preprocess(model: nn.Module) -> Preprocess:
    cfg = _timm().data.resolve_model_data_config(model)  # timm's record of these weights' recipe
    crop = cfg["input_size"][-1]
    return Preprocess(math.floor(crop / cfg["crop_pct"]), crop, tuple(cfg["mean"]), tuple(cfg["std"]),
                      InterpolationMode(cfg["interpolation"]))


def timm_spec(name: str, arch: str, image_size: int | None) -> ModelSpec:
    timm = _timm()
    pretrained_cfg = timm.models.get_pretrained_cfg(arch)
    # A model with a fixed input size (ViTs: the position embeddings) is built at the crop size;
    # timm's checkpoint filter then resamples pretrained position embeddings to it.
    img_size = image_size if image_size and pretrained_cfg is not None and pretrained_cfg.fixed_input_size else None
    with torch.device("meta"):  # the facts need no memory and no weights
        probe = _create(arch, img_size)
    classifier = probe.get_classifier() if hasattr(probe, "get_classifier") else None
    if not isinstance(classifier, nn.Module) or not callable(getattr(probe, "group_matcher", None)):
        # e.g. a distilled DeiT has two heads (head, head_dist): "the head" is not one module
        raise ConfigError(f"model.arch={arch!r}: tlsweep needs one classifier module and timm's group_matcher; "
                          f"this model has get_classifier() -> {type(classifier).__name__}. Pick another variant "
                          f"(e.g. without distillation)")
    head = module_name(probe, classifier)
    stages = timm_groups(probe, head, coarse=True)
    layers = timm_groups(probe, head, coarse=False)
    nwd = getattr(probe, "no_weight_decay", None)
    default_name = W.PACKAGED[arch].name if arch in W.PACKAGED else (
        f"timm:{pretrained_cfg.hf_hub_id or arch}" if pretrained_cfg is not None else f"timm:{arch} (no pretrained tag)")
    return ModelSpec(
        name=name, arch=arch, source="timm",
        build=lambda: _create(arch, img_size),
        head=head, stages=stages, layers=layers,
        preprocess=_timm_preprocess(probe),
        weights_name=default_name,
        imagenet_top1=W.PACKAGED[arch].imagenet_top1 if arch in W.PACKAGED else None,  # timm ships no accuracies
        pieces=timm_pieces,
        chain=timm_chain(probe) is not None,
        load_default=_timm_load_default(arch),
        reset_head=_timm_reset_head,
        filter_checkpoint=lambda sd, model: _family_filter(model)(sd, model),
        no_weight_decay=frozenset(nwd()) if callable(nwd) else frozenset(),
        _stage_of=by_param(stages), _layer_of=by_param(layers),
    )


