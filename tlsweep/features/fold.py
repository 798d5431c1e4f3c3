"""BatchNorm folded into the conv before it, for the frozen prefix's feature pass: the same function to float
rounding, one memory pass fewer per layer (docs/speed.md measures it)."""
from __future__ import annotations

import contextlib
import copy
import sys

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

# The fold is exact algebra; in fp32 it moved the prefix output by 2e-7 to 1.1e-6 of max|output|
# (ResNet-18, MobileNetV3-Large, EfficientNet-Lite0, 224 px, trained-looking BN statistics).
FOLD_RTOL = 1e-5
# Under bf16 autocast the unfolded prefix itself is off by ~5e-3 to 2e-2 of max|output| (same
# models); the folded one was off by 0.8x to 1.2x that. A wrong fold is off by the output's size.
LOW_PRECISION_SLACK = 2.0


def _bn_replacement(bn: nn.BatchNorm2d) -> nn.Module | None:
    """What stays of a BatchNorm once its affine map lives in the conv before it."""
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    if type(bn) in _timm_types("BatchNormAct2d"):  # batch norm, then its own dropout and activation
        return nn.Sequential(bn.drop, bn.act)
    return None  # an unknown subclass may do more than normalize: leave it alone


def _foldable_conv(conv: nn.Module) -> bool:
    # A conv whose forward uses its weight as stored (timm's Conv2dSame only pads first);
    # e.g. weight-standardized convs transform the weight on every call and cannot take a fold.
    kind = getattr(type(conv), "plain_class", type(conv))  # a depthwise conv that trains in fp32 (runtime.py)
    return kind is nn.Conv2d or kind in _timm_types("Conv2dSame")


def _timm_types(*names: str) -> tuple[type, ...]:
    # A model holding timm layers has imported timm; do not pay its import otherwise.
    layers = sys.modules.get("timm.layers")
    return tuple(getattr(layers, n) for n in names if hasattr(layers, n)) if layers else ()


@torch.no_grad()
def fold_batchnorm(prefix: nn.Module, example: torch.Tensor,
                   autocast=contextlib.nullcontext) -> tuple[nn.Module, int]:
    """A copy of the frozen prefix with each eval-mode BatchNorm folded into the conv that feeds it.

    In eval mode BN is a fixed per-channel affine map, so conv -> BN equals one conv with
    scaled weights and a bias: the same function, one pass over the activations fewer (docs/speed.md, "Feature
    cache", gives what it saves). Pairs are found from the order in
    which modules run on `example`; the copy is only used if, run under `autocast` (a context
    factory: the one the cached pass runs under), it gives the prefix's own output on `example`
    (`fold_agrees`), else the prefix is returned unchanged.
    Returns (module to run, number of BatchNorms folded).
    """
    order: list[nn.Module] = []
    hooks = [m.register_forward_pre_hook(lambda m, args: order.append(m))
             for m in prefix.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    try:
        reference = prefix(example)
    finally:
        for h in hooks:
            h.remove()
    names = {m: n for n, m in prefix.named_modules()}
    pairs = [(names[c], names[b]) for c, b in zip(order, order[1:])
             if _foldable_conv(c) and isinstance(b, nn.BatchNorm2d) and not b.training and b.track_running_stats
             and c.out_channels == b.num_features and _bn_replacement(b) is not None]
    if not pairs:
        return prefix, 0
    folded = copy.deepcopy(prefix)
    for conv_name, bn_name in pairs:
        conv, bn = folded.get_submodule(conv_name), folded.get_submodule(bn_name)
        conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                                      bn.eps, bn.weight, bn.bias)
        _set(folded, bn_name, _bn_replacement(bn))
    folded.requires_grad_(False)
    with autocast():
        as_run, out = prefix(example), folded(example)
    if not fold_agrees(out.float(), reference, as_run.float()):
        return prefix, 0
    return folded, len(pairs)


def fold_agrees(folded_out: torch.Tensor, reference: torch.Tensor, unfolded_out: torch.Tensor) -> bool:
    """Whether the folded prefix computes the prefix's function, judged in the precision the pass runs.

    `reference`: the prefix in fp32; `folded_out` / `unfolded_out`: the folded and the original
    prefix under the pass's autocast (in fp32, `unfolded_out` is `reference` again). Accepted when
    max|folded - reference| <= FOLD_RTOL * max|reference| + LOW_PRECISION_SLACK * max|unfolded - reference|:
    fp32 rounding of the fold, plus the rounding the pass already accepts in its own precision.
    """
    if folded_out.shape != reference.shape:
        return False
    scale = reference.abs().max()
    own_rounding = (unfolded_out - reference).abs().max()
    error = (folded_out - reference).abs().max()
    return bool(error <= FOLD_RTOL * scale + LOW_PRECISION_SLACK * own_rounding)


def _set(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)
