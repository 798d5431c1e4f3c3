"""The forward pass as a chain of (label, module) pieces, input to output, "head" last: what lets
the feature cache run a frozen prefix once and train the rest. Tests check each chain computes model(x)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .spec import Pieces

def module_name(model: nn.Module, module: nn.Module) -> str:
    """The path of `module` inside `model` (e.g. timm's get_classifier(): "head.fc")."""
    for name, m in model.named_modules():
        if m is module:
            return name
    raise ValueError(f"{type(model).__name__}: the module is not part of the model")


class _Call(nn.Module):
    """A piece that runs a method of the model (e.g. a ViT's `_pos_embed`). The modules and
    parameters it uses are registered on it, so the feature cache sees whether any of them trains."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], modules: dict[str, nn.Module] = {},
                 params: dict[str, nn.Parameter | None] = {}):
        super().__init__()
        self.__dict__["_fn"] = fn  # not a submodule: the model as a whole must not hang off a piece
        for n, m in modules.items():
            if m is not None:
                self.add_module(n, m)
        for n, p in params.items():
            if p is not None:
                self.register_parameter(n, p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fn(x)


class _Backbone(nn.Module):
    """Everything below the head of a model that is not a chain of its stages: forward_features, then
    forward_head(pre_logits=True), run in eval mode (the feature cache only uses it when nothing in it
    trains and nothing in it is random). The head's dropout is the next piece instead, so that it
    stays active in training."""

    def __init__(self, model: nn.Module, head: str):
        super().__init__()
        self.__dict__["_model"] = model
        for i, (n, p) in enumerate((n, p) for n, p in model.named_parameters() if not n.startswith(head + ".")):
            self.register_parameter(f"p{i}", p)
        self.__dict__["_inner"] = [m for n, m in model.named_modules() if n and not n.startswith(head)]

    def inner_modules(self) -> list[nn.Module]:
        return self._inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        model = self._model
        modes = {m: m.training for m in model.modules()}
        model.eval()
        try:
            return model.forward_head(model.forward_features(x), pre_logits=True)
        finally:
            for m, mode in modes.items():
                m.training = mode


def _head_dropout(model: nn.Module) -> nn.Module:
    # timm applies drop_rate right before the classifier (functional F.dropout or a head_drop module)
    return nn.Dropout(float(getattr(model, "drop_rate", 0.0) or 0.0))


def timm_chain(m: nn.Module) -> Pieces | None:
    """The model as a chain of its stages, for the families whose forward_features is one:
    timm's ResNet, EfficientNet, MobileNetV3, ConvNeXt and VisionTransformer. None elsewhere."""
    kind = type(m).__name__
    if kind == "ResNet":
        return [("stem", nn.Sequential(m.conv1, m.bn1, m.act1, m.maxpool)),
                *[(f"layer{i}", getattr(m, f"layer{i}")) for i in range(1, 5)],
                (None, m.global_pool), (None, _head_dropout(m)), ("head", m.fc)]
    if kind in ("EfficientNet", "MobileNetV3"):
        stem = [("stem", nn.Sequential(m.conv_stem, m.bn1))]
        blocks = [(f"blocks.{i}", b) for i, b in enumerate(m.blocks)]
        if kind == "EfficientNet":  # forward_features ends with conv_head, bn2; the head pools
            top = [("conv_head", nn.Sequential(m.conv_head, m.bn2)), (None, m.global_pool)]
        else:  # MobileNetV3 pools first, then its conv_head works on the pooled vector
            top = [("conv_head", nn.Sequential(m.global_pool, m.conv_head, m.norm_head, m.act2, m.flatten))]
        return [*stem, *blocks, *top, (None, _head_dropout(m)), ("head", m.classifier)]
    if kind == "ConvNeXt":
        return [("stem", m.stem), *[(f"stages.{i}", s) for i, s in enumerate(m.stages)], ("norm_pre", m.norm_pre),
                ("head.pre_logits", _Call(lambda x: m.head(x, pre_logits=True),
                                          {n: c for n, c in m.head.named_children() if c is not m.head.fc})),
                ("head", m.head.fc)]
    if kind == "VisionTransformer":
        def embed(x):
            return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))

        return [("stem", _Call(embed, {"patch_embed": m.patch_embed, "norm_pre": m.norm_pre},
                               {n: getattr(m, n, None) for n in ("cls_token", "reg_token", "pos_embed")})),
                *[(f"blocks.{i}", b) for i, b in enumerate(m.blocks)], ("norm", m.norm),
                ("pool", _Call(lambda x: m.fc_norm(m.pool(x)),
                               {"fc_norm": m.fc_norm, "attn_pool": getattr(m, "attn_pool", None)})),
                (None, m.head_drop), ("head", m.head)]
    return None


def timm_pieces(m: nn.Module) -> Pieces:
    chain = timm_chain(m)
    if chain is not None:
        return chain
    head = module_name(m, m.get_classifier())
    return [("backbone", _Backbone(m, head)), (None, _head_dropout(m)), ("head", m.get_classifier())]


def mobilenet_v3_pieces(m):
    f, c = m.features, m.classifier
    return [("stem", f[0]), ("stage1", f[1]), ("stage2", nn.Sequential(*f[2:4])), ("stage3", nn.Sequential(*f[4:7])),
            ("stage4", nn.Sequential(*f[7:13])),
            ("stage5", nn.Sequential(*f[13:17], m.avgpool, nn.Flatten(1), c[0], c[1])), (None, c[2]), ("head", c[3])]


def convnext_pieces(m):
    f, c = m.features, m.classifier
    return [("stem", f[0]), ("stage1", f[1]), ("stage2", nn.Sequential(f[2], f[3])),
            ("stage3", nn.Sequential(f[4], f[5])), ("stage4", nn.Sequential(f[6], f[7], m.avgpool, c[0], c[1])),
            ("head", c[2])]


def tv_vit_pieces(m):
    def embed(x):  # torchvision's VisionTransformer.forward up to its encoder's layers
        x = m._process_input(x)
        x = torch.cat([m.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return m.encoder.dropout(x + m.encoder.pos_embedding)

    layers = list(m.encoder.layers)
    return [("stem", _Call(embed, {"conv_proj": m.conv_proj},
                           {"class_token": m.class_token, "pos_embedding": m.encoder.pos_embedding})),
            *[(f"block{i}", layer) for i, layer in enumerate(layers)], ("ln", m.encoder.ln),
            (None, _Call(lambda x: x[:, 0])), ("head", m.heads.head)]


