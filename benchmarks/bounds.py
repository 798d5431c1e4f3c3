"""The bounds of the benchmark's workloads: what no implementation of the workload can avoid, timed alone.

The probe's bound (probe and vit-probe): the forward passes of its frozen backbone over the images it trains and
evaluates on, once each: B x (V x N + M) images, where V is the number of augmented train views the cache holds
(`strategy.feature_views`, by default one per epoch), N the train images, M the evaluated images (val, and the
selection split if there is one), and B the number of distinct frozen backbones: 1 with pretrained weights, one
per seed with `model.weights=null` (each seed's random init is another function, so tlsweep keys its features by
seed too). The forward is timm's `forward_head(forward_features(x), pre_logits=True)` in eval mode under no_grad,
with each BatchNorm folded into its conv the way tlsweep's own feature pass does it (unfolded, the bound would be
slower than the pass it bounds).

The fine-tune's bound: the model's train steps (forward, cross-entropy, backward, optimizer step, on the
strategy's parameter groups with the sweep's optimizer) over the images an epoch trains on, and its forwards over
the evaluated images in eval mode under no_grad, for every epoch of the run: E x (train steps on N images + M
forwards). What a fine-tune evaluates every epoch is part of the workload, so it is part of its bound; the train
steps alone are reported too.

Both run with the sweep's own config: model, weights, crop size, batch size, channels_last and precision
(`bf16`, resolved on the device as a tlsweep job resolves it), and exclude everything else: process start,
imports, Hydra, MLflow, building the model, reading, decoding and augmenting images (the inputs are one batch
of random tensors made at crop size beforehand, reused), metrics, and one untimed warm-up batch (first-call
kernel selection and allocations). Each runs in a fresh process with tlsweep's allocator setting, like a
tlsweep job, so that it neither inherits the naive side's state nor hands that setting to the naive side.
"""
from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import torch
from torch import nn

from tlsweep import models
from tlsweep.training import strategies

REPO = Path(__file__).resolve().parents[1]
DATA = (REPO / ".." / "shared" / "data" / "hymenoptera_data").resolve()
# the model of a workload, as the sweep's overrides; the naive side composes the same
LITE0 = ("model=efficientnet_lite0",)


def data_overrides(root) -> list[str]:
    # data=hymenoptera checks its image counts; any other folder is a plain ImageFolder
    return ([] if Path(root).resolve() == DATA else ["data=imagefolder"]) + [f"data.root={root}"]


def sweep_config(model: tuple[str, ...], *overrides: str):
    """The config a sweep with these overrides composes (tlsweep's conf/, its schema)."""
    from hydra import compose, initialize_config_dir

    import tlsweep.config.schema  # noqa: F401 -- registers the config schema that conf/ extends

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return compose("config", overrides=[*model, *overrides])


def _in_fresh_process(fn, *args) -> dict:
    # tlsweep's allocator setting stays out of the process the naive side runs in
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def _setup(root, model, overrides):
    """(cfg, device, precision, spec, data) as a tlsweep job has them before it builds its model."""
    from tlsweep.data import pipeline as datasets
    from tlsweep.runtime import resolve_bf16, resolve_device
    from tlsweep.training.loop import tune_allocator

    tune_allocator()  # as every tlsweep job does: without it a CPU forward is about 3x slower
    cfg = sweep_config(model, *data_overrides(root), *overrides)
    device = resolve_device(cfg.device)
    spec = models.get_spec(cfg.model, cfg.data.image_size)
    return cfg, device, resolve_bf16(cfg.bf16, device), spec, datasets.load(cfg.data)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batches(n: int, bs: int) -> list[int]:
    return [min(bs, n - i) for i in range(0, n, bs)]


# --- the probe's bound ------------------------------------------------------------------------

def bound(root, grid, epochs, model, image_size=None, extra=()) -> dict:
    """Seconds of the probe sweep's unavoidable forwards, in a fresh process."""
    return _in_fresh_process(_bound, str(root), sorted({seed for _, _, seed in grid}), epochs, model, image_size,
                             tuple(extra))


class PreLogits(nn.Module):
    """A timm model up to its classifier, as timm defines it: the frozen backbone of a probe."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def _bound(root: str, seeds: list[int], epochs: int, model: tuple[str, ...], image_size: int | None,
           extra: tuple[str, ...]) -> dict:
    from tlsweep.features import cache as features
    from tlsweep.runtime import Runtime, autocast, train_depthwise_in_fp32

    size = [f"data.image_size={image_size}"] if image_size else []
    cfg, device, precision, spec, split = _setup(root, model, ["strategy=probe", f"epochs={epochs}", *size, *extra])
    if spec.source != "timm":
        raise ValueError(f"the bound runs timm's forward_features/forward_head; {spec.name} is from {spec.source}")
    n_train, n_eval = len(split.train.items), sum(len(s.items) for s in split.eval_splits())
    views = cfg.strategy.feature_views or epochs
    # a random init is another function per seed (tlsweep keys its features by seed then): one pass each
    backbones = len(seeds) if cfg.model.weights is None else 1
    bs = cfg.batch_size
    batches = _batches(n_train, bs) * views + _batches(n_eval, bs)

    def amp():  # the sweep's feature pass runs under the same autocast
        return autocast(device, precision.bf16)

    seconds, first_call, folded = 0.0, 0.0, 0
    for seed in seeds[:backbones]:
        torch.manual_seed(seed)
        net, pp = models.build_model(spec, cfg.model.weights)
        pp = pp.with_crop(cfg.data.image_size)
        net = PreLogits(net).eval().requires_grad_(False).to(device)
        x = torch.randn(bs, 3, pp.crop, pp.crop, generator=torch.Generator().manual_seed(0)).to(device)
        if cfg.channels_last:
            net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        t0 = time.perf_counter()
        net, folded = features.fold_batchnorm(net, x[:2], amp)
        with torch.no_grad():
            with amp():
                net(x)  # warm-up, not in the bound: first-call kernel selection and allocations
            _sync(device)
            first_call += time.perf_counter() - t0
            t0 = time.perf_counter()
            for n in batches:
                with amp():
                    net(x[:n])
            _sync(device)
            seconds += time.perf_counter() - t0
    images = backbones * (views * n_train + n_eval)
    return {"kind": "probe", "seconds": seconds, "backbones": backbones, "views": views, "train_images": n_train,
            "eval_images": n_eval, "images": images, "ms_per_image": 1000 * seconds / images, "crop": pp.crop,
            "batch_size": bs, "channels_last": bool(cfg.channels_last), "bn_folded": folded,
            # not in the bound: the fold and its check (3 forwards of 2 images) and one warm-up batch
            "fold_and_warmup_s": first_call, "bf16": str(precision), "device": str(device), "model": list(model)}


def bound_line(b: dict, sweep_s: float | None) -> str:
    """bound: X.X s of unavoidable forwards (V views x N + M images); sweep/bound = Y.Yx"""
    what = f"{b['views']} views x {b['train_images']} + {b['eval_images']} images"
    if b["backbones"] > 1:
        what = f"{b['backbones']} backbones (one per seed: random init) x ({what})"
    ratio = f"{sweep_s / b['seconds']:.1f}x" if sweep_s and b["seconds"] > 0 else "n/a"
    return f"bound: {b['seconds']:.1f} s of unavoidable forwards ({what}); sweep/bound = {ratio}"


# --- the fine-tune's bound --------------------------------------------------------------------

def finetune_bound(root, grid, epochs, model, image_size=None, extra=()) -> dict:
    """Seconds of the fine-tune's train steps and val forwards alone (one run of the grid: all its runs are the
    same work), in a fresh process."""
    (strategy, lr, seed), *_ = grid
    return _in_fresh_process(_finetune_bound, str(root), strategy, lr, seed, epochs, model, image_size, tuple(extra))


def _finetune_bound(root: str, strategy: str, lr: float, seed: int, epochs: int, model: tuple[str, ...],
                    image_size: int | None, extra: tuple[str, ...]) -> dict:
    from tlsweep.data.decoded import trained_count
    from tlsweep.training.optim import make_optimizer
    from tlsweep.runtime import Runtime, autocast, train_depthwise_in_fp32

    size = [f"data.image_size={image_size}"] if image_size else []
    cfg, device, precision, spec, split = _setup(root, model, [f"strategy={strategy}", f"optim.lr={lr}",
                                                               f"seed={seed}", f"epochs={epochs}", *size, *extra])
    torch.manual_seed(seed)
    net, pp = models.build_model(spec, cfg.model.weights if cfg.strategy.pretrained else None)
    pp = pp.with_crop(cfg.data.image_size)
    plan = strategies.apply(net, spec, cfg.strategy, len(split.classes), cfg.optim.lr, epochs)
    net.to(device)
    if cfg.channels_last:
        net.to(memory_format=torch.channels_last)
    train_depthwise_in_fp32(net, Runtime.of(device, precision.bf16, cfg.channels_last))  # as a job does
    optimizer, _ = make_optimizer(cfg.optim, plan.groups, epochs)
    bs = cfg.batch_size
    n_train, n_eval = len(split.train.items), sum(len(s.items) for s in split.eval_splits())
    train, evals = _batches(trained_count(n_train, bs), bs), _batches(n_eval, bs)
    x = torch.randn(bs, 3, pp.crop, pp.crop, generator=torch.Generator().manual_seed(0)).to(device)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.arange(bs) % len(split.classes)).to(device)

    def step(n: int) -> None:  # what tlsweep's loop does per batch, less its metrics
        with autocast(device, precision.bf16):
            loss = nn.functional.cross_entropy(net(x[:n]).float(), y[:n])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def evaluate(n: int) -> None:
        with autocast(device, precision.bf16):
            net(x[:n])

    t0 = time.perf_counter()
    plan.set_phase(1)
    strategies.train_mode(net, plan.recipe.freeze_bn)
    step(bs)  # warm-up, not in the bound: first-call kernel selection, allocations, the optimizer's state
    net.eval()
    evaluate(bs)
    _sync(device)
    warmup = time.perf_counter() - t0
    train_s = eval_s = 0.0
    for epoch in range(1, epochs + 1):
        plan.set_phase(epoch)
        strategies.train_mode(net, plan.recipe.freeze_bn)
        t0 = time.perf_counter()
        for n in train:
            step(n)
        _sync(device)
        t1 = time.perf_counter()
        net.eval()
        for n in evals:
            evaluate(n)
        _sync(device)
        train_s, eval_s = train_s + t1 - t0, eval_s + time.perf_counter() - t1
    trained = sum(train)
    return {"kind": "finetune", "seconds": train_s + eval_s, "train_s": train_s, "eval_s": eval_s, "epochs": epochs,
            "per_epoch_s": (train_s + eval_s) / epochs, "train_images": trained, "eval_images": n_eval,
            "ms_per_train_image": 1000 * train_s / (epochs * trained),
            "ms_per_eval_image": 1000 * eval_s / (epochs * n_eval), "crop": pp.crop, "batch_size": bs,
            "channels_last": bool(cfg.channels_last), "optimizer": type(optimizer).__name__, "warmup_s": warmup,
            "bf16": str(precision), "device": str(device), "model": list(model)}


def finetune_bound_line(b: dict, sweep_s: float | None, epoch_s: float | None) -> str:
    """bound: X.X s (E epochs x (train steps on N + forwards on M images)); tlsweep/bound = ..."""
    ratios = []
    if epoch_s:
        ratios.append(f"{epoch_s / b['per_epoch_s']:.2f}x per epoch ({epoch_s:.1f} / {b['per_epoch_s']:.1f} s)")
    if sweep_s:
        ratios.append(f"{sweep_s / b['seconds']:.2f}x end to end")
    return (f"bound: {b['seconds']:.1f} s ({b['epochs']} epochs x (train steps on {b['train_images']} images "
            f"{b['ms_per_train_image']:.1f} ms/image + val forwards on {b['eval_images']} images "
            f"{b['ms_per_eval_image']:.1f} ms/image)); tlsweep/bound = " + (", ".join(ratios) or "n/a"))
