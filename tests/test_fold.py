"""The BN-folded prefix is checked as tightly as the README says, in the precision the cached pass runs."""
from __future__ import annotations

import torch
from torch import nn

from tlsweep.features import cache as features, fold
from tlsweep.data.pipeline import load_rgb
from tlsweep.data.decoded import decode_images
from tlsweep.models import Preprocess
from tlsweep.runtime import Runtime
from tests.conftest import write_image_folder


def _bf16_cpu():
    # CPU autocast to bfloat16 stands in for the CUDA pass's: same dtype rules, no GPU needed
    return torch.autocast("cpu", dtype=torch.bfloat16)


def _chain() -> nn.Sequential:
    torch.manual_seed(0)
    chain = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.BatchNorm2d(4))
    for bn in chain.modules():  # trained-looking statistics: the fold is not a no-op
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.bias.data.uniform_(-1, 1)
    return chain.eval().requires_grad_(False)


def test_fp32_tolerance_is_the_documented_one():
    ref = torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(0))
    scale = ref.abs().max()
    bump = torch.zeros_like(ref)
    bump[0, 0, 0, 0] = 1.0
    assert features.FOLD_RTOL == 1e-5  # README: "within 1e-5 of the output's largest magnitude"
    assert features.fold_agrees(ref + 0.5e-5 * scale * bump, ref, ref)
    assert not features.fold_agrees(ref + 2e-5 * scale * bump, ref, ref)
    assert not features.fold_agrees(ref + 5e-5 * scale * bump, ref, ref)  # the old 1e-4 check let this through
    assert not features.fold_agrees(ref[:1], ref, ref)  # another shape


def test_low_precision_tolerance_follows_the_passs_own_rounding():
    g = torch.Generator().manual_seed(1)
    ref = torch.randn(2, 4, 5, 5, generator=g)
    scale = ref.abs().max()
    noise = torch.randn(ref.shape, generator=g)
    unfolded = ref + 1e-2 * scale * noise / noise.abs().max()  # bf16's own error: 1e-2 of max|output|
    own = (unfolded - ref).abs().max()
    bump = torch.zeros_like(ref)
    bump[1, 2, 3, 4] = 1.0
    assert features.fold_agrees(ref + 1.5 * own * bump, ref, unfolded)
    assert not features.fold_agrees(ref + 3 * own * bump, ref, unfolded)
    assert not features.fold_agrees(ref + 1.5 * own * bump, ref, ref)  # in fp32 the same error is refused


def test_fold_is_accepted_under_bf16_and_a_wrong_fold_is_refused(monkeypatch):
    chain, x = _chain(), torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    for autocast in (None, _bf16_cpu):
        kwargs = {"autocast": autocast} if autocast else {}
        folded, n = features.fold_batchnorm(chain, x, **kwargs)
        assert n == 3 and folded is not chain
    real = fold.fuse_conv_bn_weights

    def off_by_a_percent(*args):  # within bf16's own rounding, but far outside fp32's: refused in fp32
        w, b = real(*args)
        return nn.Parameter(w * 1.01), b

    monkeypatch.setattr(fold, "fuse_conv_bn_weights", off_by_a_percent)
    same, n = features.fold_batchnorm(chain, x)
    assert same is chain and n == 0

    def off_by_half(*args):  # a wrong fold is refused under bf16 too
        w, b = real(*args)
        return nn.Parameter(w * 1.5), b

    monkeypatch.setattr(fold, "fuse_conv_bn_weights", off_by_half)
    same, n = features.fold_batchnorm(chain, x, autocast=_bf16_cpu)
    assert same is chain and n == 0


def test_the_cached_pass_checks_the_fold_under_its_own_autocast(tmp_path, monkeypatch):
    seen = []
    real = features.fold_batchnorm
    monkeypatch.setattr(features, "fold_batchnorm",
                        lambda prefix, example, autocast: seen.append(autocast) or real(prefix, example, autocast))
    root = write_image_folder(tmp_path, per_split={"train": 2, "val": 2})
    train, val = (decode_images([str(p) for p in sorted((root / s).rglob("*.png"))], [0] * 4, 20,
                                features.torchvision.transforms.InterpolationMode.BILINEAR, load_rgb)
                  for s in ("train", "val"))
    class Bf16Cpu(Runtime):  # the CUDA pass's bf16 autocast, on the CPU
        def autocast(self):
            return _bf16_cpu()

    rt = Bf16Cpu(torch.device("cpu"))
    pp = Preprocess(20, 16, (0.5,) * 3, (0.25,) * 3, features.torchvision.transforms.InterpolationMode.BILINEAR)
    tr, va, source = features.features(_chain(), train, val, ["test_fold", str(tmp_path)], 1, pp, 4, rt, None)
    assert seen == [rt.autocast]
    assert source == "computed, 3 BatchNorms folded into their convs"
    assert tr.shape[:2] == (1, 4) and va.shape[0] == 4
