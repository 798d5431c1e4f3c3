"""What tlsweep knows about one model: `ModelSpec`, and the preprocessing its weights expect."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn
from torchvision.transforms.v2 import InterpolationMode

SOURCES = ("timm", "torchvision")


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


Pieces = list[tuple[str | None, nn.Module]]


@dataclass(frozen=True)
class ModelSpec:
    """Everything tlsweep needs to know about one model, resolved from its config."""

    name: str  # what runs and errors call it (the preset's name, or the timm model name)
    arch: str  # timm model name with its pretrained tag, or torchvision's model name
    source: str  # "timm" or "torchvision"
    build: Callable[[], nn.Module]  # the architecture, randomly initialised, with its original head
    head: str  # module path of the classifier, replaced for the new task
    stages: dict[str, tuple[str, ...]]  # stage -> its parameter names, input to output
    layers: dict[str, tuple[str, ...]]  # finer groups for layer-wise LR decay (timm's coarse=False)
    preprocess: Preprocess  # what the DEFAULT weights expect
    weights_name: str  # recorded in MLflow so a reader knows which checkpoint DEFAULT meant
    # The forward pass as a chain of (label, module) pieces, input to output, "head" last. Lets the
    # feature cache run a frozen prefix once and train the rest; tests check the chain equals model(x).
    pieces: Callable[[nn.Module], Pieces]
    chain: bool  # whether `pieces` cuts between stages (else only below the head: backbone, head)
    load_default: Callable[[nn.Module, "ModelSpec"], None]  # loads the DEFAULT weights into a built model
    reset_head: Callable[[nn.Module, int], nn.Module]  # puts a fresh head in place, returns it
    filter_checkpoint: Callable[[dict, nn.Module], dict] = lambda sd, model: sd  # remap/resample a checkpoint
    no_weight_decay: frozenset[str] = frozenset()  # names exempt from weight decay besides 1-D tensors
    imagenet_top1: float | None = None  # the DEFAULT weights' ImageNet-1k top-1 (%), where their publisher says
    _stage_of: dict[str, str] = field(default_factory=dict, repr=False)
    _layer_of: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def last_stage(self) -> str:
        return list(self.stages)[-1]

    def stage_of(self, param_name: str) -> str | None:
        """The stage a parameter belongs to (None for the head)."""
        return self._stage_of.get(param_name)

    def layer_of(self, param_name: str) -> str | None:
        """The fine-grained layer a parameter belongs to (None for the head)."""
        return self._layer_of.get(param_name)

    def head_module(self, model: nn.Module) -> nn.Module:
        return model.get_submodule(self.head)

    def replace_head(self, model: nn.Module, num_classes: int) -> nn.Module:
        """Put a fresh, trainable classifier where the pretrained head was."""
        return self.reset_head(model, num_classes)


def by_param(groups: dict[str, tuple[str, ...]]) -> dict[str, str]:
    return {p: g for g, names in groups.items() for p in names}


