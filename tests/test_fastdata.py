"""The decode-once path: per-sample augmentation, reproducibility, eval parity with the plain
v2 pipeline, the box distribution, the size estimate and the on-disk cache."""
from __future__ import annotations

import math
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from tests.conftest import damage
from tlsweep.data import decoded as fastdata
from tlsweep.models import Preprocess
from tlsweep.runtime import Runtime
from tlsweep.data.decoded import (RATIO, SCALE, TensorLoader, decode_images, decoded_size_bytes, resized_crops,
                                  sample_crop_boxes)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def pp(crop: int, mean=MEAN, std=STD, interpolation=None) -> Preprocess:
    """A loader's preprocessing; interpolation None crops with roi_align, the GPU's way."""
    return Preprocess(crop, crop, mean, std, interpolation)
BILINEAR = InterpolationMode.BILINEAR
BICUBIC = InterpolationMode.BICUBIC


def load_rgb(item) -> torch.Tensor:
    """Stand-in for tlsweep.data.pipeline.load_rgb: a path or a uint8 [3, H, W] tensor -> uint8 RGB."""
    if isinstance(item, torch.Tensor):
        return item
    with Image.open(item) as img:
        return F.pil_to_tensor(img.convert("RGB"))


def smooth_image(h: int, w: int) -> torch.Tensor:
    """Low-frequency content with different structure along x and y (so a transposed box shows)."""
    y = torch.linspace(0, 1, h)[:, None]
    x = torch.linspace(0, 1, w)[None, :]
    chans = [0.5 + 0.4 * torch.sin(3 * x + y), 0.5 + 0.4 * torch.cos(5 * y) + 0 * x, x * (1 - y) + 0.1 * y]
    return (torch.stack(chans).clamp(0, 1) * 255).round().to(torch.uint8)


def random_images(sizes, seed=0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for h, w in sizes]


def ks_statistic(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest gap between the empirical CDFs of two samples."""
    grid = torch.cat([a, b]).unique()
    cdf_a = torch.searchsorted(a.sort().values, grid, right=True) / len(a)
    cdf_b = torch.searchsorted(b.sort().values, grid, right=True) / len(b)
    return float((cdf_a - cdf_b).abs().max())


def epoch(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_train_crops_differ_per_sample():
    n = 16
    data = decode_images([smooth_image(48, 64)] * n, [0] * n, 40, BILINEAR, load_rgb)
    boxes = sample_crop_boxes(data.sizes, torch.Generator().manual_seed(0))
    assert len(torch.unique(boxes, dim=0)) > n // 2
    (x, _), *_ = TensorLoader(data, n, True, pp(32), seed=0)
    distinct = {tuple(x[i].flatten()[::97].tolist()) for i in range(n)}
    assert len(distinct) > n // 2  # a batch-level v2 transform would give 1


def test_flip_is_per_sample():
    img = torch.zeros(3, 40, 60, dtype=torch.uint8)
    img[:, :, 30:] = 255  # every allowed crop spans the middle, so its left edge is dark unless flipped
    n = 32
    data = decode_images([img] * n, [0] * n, 40, BILINEAR, load_rgb)
    (x, _), = TensorLoader(data, n, True, pp(24, (0, 0, 0), (1, 1, 1)), seed=0)
    left, right = x[:, :, :, 0].mean((1, 2)), x[:, :, :, -1].mean((1, 2))
    flipped = left > 0.9
    assert torch.all(flipped == (right < 0.1))  # each output is either the crop or its mirror
    assert 0 < int(flipped.sum()) < n


def test_same_seed_same_stream_different_seed_differs():
    imgs = random_images([(40, 50), (60, 36), (36, 36), (45, 70), (50, 40)])
    data = decode_images(imgs, [0, 1, 0, 1, 1], 36, BILINEAR, load_rgb)

    def run(seed):
        loader = TensorLoader(data, 2, True, pp(32), seed=seed)
        return epoch(loader), epoch(loader)

    (a1, a2), (b1, b2), (c1, _) = run(0), run(0), run(1)
    assert len(a1) == 2  # 5 images in batches of 2: the trailing batch of one is not trained on
    for (xa, ya), (xb, yb) in zip(a1 + a2, b1 + b2):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not all(torch.equal(xa, xb) for (xa, _), (xb, _) in zip(a1, a2))  # epochs differ
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a1, c1))


@pytest.mark.parametrize("interpolation", [InterpolationMode.BILINEAR, InterpolationMode.BICUBIC])
def test_eval_batch_equals_plain_v2_pipeline(interpolation):
    resize, crop = 32, 27
    # Odd and even margins on both axes, portrait and landscape, up- and downscaling.
    sizes = [(40, 61), (70, 33), (32, 32), (25, 47), (90, 35), (33, 50)]
    imgs = random_images(sizes)
    plain = v2.Compose(
        [
            v2.Resize(resize, interpolation=interpolation),
            v2.CenterCrop(crop),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD),
        ]
    )
    expected = torch.stack([plain(load_rgb(img)) for img in imgs])
    data = decode_images(imgs, range(len(imgs)), resize, interpolation, load_rgb)
    batches = epoch(TensorLoader(data, 4, False, pp(crop)))
    assert torch.equal(torch.cat([x for x, _ in batches]), expected)
    assert torch.cat([y for _, y in batches]).tolist() == list(range(len(imgs)))


def test_box_distribution_matches_torchvision():
    n = 3000
    h, w = 256, 341
    boxes = sample_crop_boxes(torch.tensor([[h, w]] * n), torch.Generator().manual_seed(0))
    top, left, bh, bw = boxes.T.double()
    assert torch.all((top >= 0) & (left >= 0) & (top + bh <= h) & (left + bw <= w))
    frac, log_ratio = bh * bw / (h * w), torch.log(bw / bh)
    # Tolerances cover rounding w and h to whole pixels.
    assert frac.min() >= SCALE[0] - 0.01 and frac.max() <= SCALE[1]
    assert log_ratio.min() >= math.log(RATIO[0]) - 0.01 and log_ratio.max() <= math.log(RATIO[1]) + 0.01

    # Same distribution as torchvision's own sampler (not the same stream: ours is vectorized).
    rrc = v2.RandomResizedCrop(224, scale=SCALE, ratio=RATIO)
    torch.manual_seed(0)
    ref = [rrc.make_params([torch.empty(3, h, w)]) for _ in range(n)]
    r_top, r_h, r_w = (
        torch.tensor([p[k] for p in ref], dtype=torch.float64) for k in ("top", "height", "width")
    )
    # Two-sample Kolmogorov-Smirnov statistic; 0.05 is its 0.1% critical value for n = 3000.
    assert ks_statistic(frac, r_h * r_w / (h * w)) < 0.05
    assert ks_statistic(log_ratio, torch.log(r_w / r_h)) < 0.05
    assert ks_statistic(top / (h - bh + 1), r_top / (h - r_h + 1)) < 0.05


@pytest.mark.parametrize("h,w", [(20, 200), (200, 20), (30, 30)])
def test_box_fallback_matches_torchvision(h, w):
    # A 1:10 image never fits a 0.6-area box with ratio in [3/4, 4/3]: always the fallback.
    # A square one almost always fits, so only the first check applies there.
    boxes = sample_crop_boxes(torch.tensor([[h, w]] * 50), torch.Generator().manual_seed(0))
    rrc = v2.RandomResizedCrop(16, scale=SCALE, ratio=RATIO)
    if h == w:
        assert torch.all((boxes[:, 2:] <= h) & (boxes[:, :2] >= 0))
        return
    p = rrc.make_params([torch.empty(3, h, w)])
    assert torch.all(boxes == torch.tensor([p["top"], p["left"], p["height"], p["width"]]))


def test_roi_align_crop_close_to_torchvision_resized_crop():
    crop = 48
    imgs = [smooth_image(56, 80), smooth_image(90, 56)]
    data = decode_images(imgs, [0, 1], 56, BILINEAR, load_rgb)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        boxes = sample_crop_boxes(data.sizes, g)
        ours = resized_crops([data.image(0), data.image(1)], boxes, crop)
        for i, (top, left, bh, bw) in enumerate(boxes.tolist()):
            img = F.to_dtype(data.image(i), torch.float32, scale=True)
            ref = F.resized_crop(img, top, left, bh, bw, [crop, crop], antialias=True)
            # Bilinear without antialias: small differences, mostly on the border rows.
            assert (ours[i] - ref).abs().mean() < 0.002  # measured: <= 0.0006
            assert (ours[i] - ref).abs().max() < 0.01  # measured: <= 0.004


@pytest.mark.parametrize("interp", [BILINEAR, BICUBIC])
def test_cpu_crops_are_torchvisions_resized_crop(interp):
    """With an interpolation on the CPU, each crop is exactly the plain path's kernel on that box."""
    imgs = [smooth_image(56, 80), smooth_image(90, 56)]
    data = decode_images(imgs, [0, 1], 56, interp, load_rgb)
    boxes = sample_crop_boxes(data.sizes, torch.Generator().manual_seed(0))
    ours = resized_crops([data.image(0), data.image(1)], boxes, 48, interp)
    for i, (top, left, bh, bw) in enumerate(boxes.tolist()):
        ref = F.resized_crop(data.image(i), top, left, bh, bw, [48, 48], interp, antialias=True)
        assert torch.equal(ours[i], F.to_dtype(ref, torch.float32, scale=True))


def test_padding_does_not_leak_into_crops():
    small = torch.full((3, 40, 40), 200, dtype=torch.uint8)
    big = random_images([(40, 90)])[0]
    data = decode_images([small, big], [0, 1], 40, BILINEAR, load_rgb)
    assert data.pixels.numel() == 3 * (40 * 40 + 40 * 90)  # stored unpadded, each at its own size
    assert torch.equal(data.image(0), small) and torch.equal(data.image(1), big)
    whole = torch.tensor([[0, 0, 40, 40], [0, 0, 40, 90]])
    for interp in (None, BILINEAR):  # roi_align over a padded batch, and the CPU's per-sample kernel
        x = resized_crops([data.image(0), data.image(1)], whole, 32, interp)
        # Zero padding would darken the last column by about a quarter.
        torch.testing.assert_close(x[0], torch.full_like(x[0], 200 / 255))


def write_images(folder, sizes, seed=0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, img in enumerate(random_images(sizes, seed)):
        path = folder / f"{k}.{'png' if k % 2 else 'jpg'}"
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(path)
        paths.append(str(path))
    return paths


def test_size_estimate_equals_decoded_bytes(tmp_path):
    items = write_images(tmp_path, [(30, 50), (64, 40), (40, 40)]) + random_images([(33, 81)])
    estimate = decoded_size_bytes(items, 24)
    data = decode_images(items, [0] * len(items), 24, BILINEAR, load_rgb)
    assert estimate == data.pixels.nbytes


def test_cache_round_trips_and_key_follows_content(tmp_path, monkeypatch):
    paths = write_images(tmp_path / "img", [(30, 50), (64, 40)])
    calls, loaded = [], []
    real_load = fastdata.diskcache.load

    def spying_load(path, check, mmap=False):  # what came back from the disk copy, if anything
        saved = real_load(path, check, mmap)
        loaded.append(saved is not None)
        return saved

    monkeypatch.setattr(fastdata.diskcache, "load", spying_load)

    def counting_loader(item):
        calls.append(item)
        return load_rgb(item)

    cache = tmp_path / "cache"
    first = decode_images(paths, [0, 1], 24, BILINEAR, counting_loader, cache_dir=cache)
    assert len(calls) == 2 and len(list(cache.glob("decoded-*.pt"))) == 1
    assert loaded == [False]
    fastdata._STORES.clear()  # as a fresh process starts: nothing is served from memory
    again = decode_images(paths, [1, 0], 24, BILINEAR, counting_loader, cache_dir=cache)
    assert len(calls) == 2 and loaded == [False, True]  # read back from the disk copy, not decoded
    assert again.pixels is not first.pixels
    assert all(torch.equal(getattr(again, k), getattr(first, k)) for k in ("pixels", "offsets", "sizes"))
    assert again.targets.tolist() == [1, 0]  # targets come from the caller, not the cache

    decode_images(paths, [0, 1], 24, InterpolationMode.BICUBIC, counting_loader, cache_dir=cache)
    assert len(calls) == 4  # another interpolation is another entry
    write_images(tmp_path / "img", [(30, 50), (64, 40)], seed=1)  # same names and sizes, new pixels
    changed = decode_images(paths, [0, 1], 24, BILINEAR, counting_loader, cache_dir=cache)
    assert len(calls) == 6 and len(list(cache.glob("decoded-*.pt"))) == 3
    assert not torch.equal(changed.pixels, first.pixels)

    tensors = random_images([(30, 50)])
    decode_images(tensors, [0], 24, BILINEAR, counting_loader, cache_dir=cache)
    tensors[0][0, 0, 0] ^= 1  # one pixel: only the content, not the size, changes
    decode_images(tensors, [0], 24, BILINEAR, counting_loader, cache_dir=cache)
    assert len(calls) == 8


@pytest.mark.parametrize("how", ["truncated", "garbage", "inconsistent"])
def test_a_damaged_disk_copy_is_decoded_again_with_a_warning(tmp_path, how):
    paths = write_images(tmp_path / "img", [(30, 50), (64, 40)])
    calls = []

    def counting_loader(item):
        calls.append(item)
        return load_rgb(item)

    def decode():
        fastdata._STORES.clear()  # as a fresh process starts
        return decode_images(paths, [0, 1], 24, BILINEAR, counting_loader, cache_dir=tmp_path / "cache")

    first = decode()
    (entry,) = (tmp_path / "cache").glob("decoded-*.pt")
    damage(entry, how)
    with pytest.warns(RuntimeWarning, match="recomputing"):
        again = decode()
    assert len(calls) == 4
    assert all(torch.equal(getattr(again, k), getattr(first, k)) for k in ("pixels", "offsets", "sizes"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        decode()  # the rewritten copy is whole again
    assert len(calls) == 4


def test_parallel_callers_decode_the_same_images_once(tmp_path):
    """The second caller waits for the first one's disk copy instead of decoding its own."""
    paths = write_images(tmp_path / "img", [(30, 50), (64, 40), (40, 40)])
    calls, start = [], threading.Barrier(2)

    def slow_loader(item):
        calls.append(item)
        time.sleep(0.3)  # long enough that both callers are inside decode_images at once
        return load_rgb(item)

    def job(_):
        start.wait()
        return decode_images(paths, [0, 1, 2], 24, BILINEAR, slow_loader, cache_dir=tmp_path / "cache")

    fastdata._STORES.clear()
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(job, range(2))
    assert len(calls) == len(paths)
    assert torch.equal(a.pixels, b.pixels) and torch.equal(a.sizes, b.sizes)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_match_cpu():
    imgs = random_images([(40, 50), (60, 36), (36, 36), (45, 70)])
    data = decode_images(imgs, [0, 1, 2, 3], 36, BILINEAR, load_rgb)
    for train in (True, False):
        cpu = epoch(TensorLoader(data, 3, train, pp(32), seed=0))
        gpu = epoch(TensorLoader(data, 3, train, pp(32), seed=0, rt=Runtime(torch.device("cuda"))))
        for (xc, yc), (xg, yg) in zip(cpu, gpu):
            assert xg.is_cuda and torch.equal(yc, yg.cpu())
            if train:  # roi_align's float sums may round differently on the GPU
                torch.testing.assert_close(xg.cpu(), xc, atol=1e-4, rtol=0)
            else:
                assert torch.equal(xg.cpu(), xc)


def test_the_next_job_finds_every_split_in_memory(tmp_path):
    """A job with data.select_fraction reads train, val and select in turn; the next job of the
    sweep (same process) must find all three in memory. With room for two they evicted each other
    and every job decoded every split again."""
    fastdata._STORES.clear()
    calls = []

    def counting_loader(item):
        calls.append(item)
        return item

    splits = [random_images([(30, 40)] * n, seed=n) for n in (3, 2, 1)]  # train, val, select
    for _ in range(2):  # two jobs of a sweep
        for items in splits:
            decode_images(items, [0] * len(items), 24, BILINEAR, counting_loader)
    assert len(calls) == 6  # each image decoded once, by the first job
