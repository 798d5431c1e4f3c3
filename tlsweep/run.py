"""`run(cfg) -> dict`: one experiment, from a composed config to metrics in MLflow.

The Hydra entry point (`__main__`), sweeps and tests all call this same function.
"""
from __future__ import annotations

import contextlib
import random
import time

import mlflow
import numpy as np
import torch
from omegaconf import DictConfig

from . import data as datasets
from . import features, models, schema, strategies, tracking
from .errors import ConfigError
from .keys import Tag
from .progress import Progress
from .runtime import Runtime
from .train import fit, tune_allocator


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """`auto`: CUDA, then MPS, then the CPU. A device asked for by name must be there."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    found = ", ".join(["cpu", *([f"cuda (x{torch.cuda.device_count()})"] if cuda else []), *(["mps"] if mps else [])])
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not (cuda and (device.index or 0) < torch.cuda.device_count()) or \
            device.type == "mps" and not mps:
        raise ConfigError(f"device={name}: not on this machine (found: {found}); use device=auto or device=cpu")
    return device


# optim.name -> the optimizer over the strategy's groups; optim.scheduler -> the LR schedule over `epochs`
OPTIMIZERS = {
    "adamw": lambda groups, cfg: torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay),
    "sgd": lambda groups, cfg: torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay),
}
SCHEDULERS = {
    "cosine": lambda opt, epochs: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs),
    "none": lambda opt, epochs: None,
}


def check_optim(cfg: DictConfig) -> None:
    if cfg.name not in OPTIMIZERS:
        raise ConfigError(f"optim.name={cfg.name}: unknown; valid: {', '.join(OPTIMIZERS)}")
    if ("none" if cfg.scheduler is None else cfg.scheduler) not in SCHEDULERS:
        raise ConfigError(f"optim.scheduler={cfg.scheduler}: unknown; valid: {', '.join(SCHEDULERS)} (or null)")


def make_optimizer(cfg: DictConfig, groups: list[dict], epochs: int):
    """The optimizer over the strategy's parameter groups, and its LR schedule."""
    check_optim(cfg)
    scheduler = "none" if cfg.scheduler is None else cfg.scheduler
    opt = OPTIMIZERS[cfg.name](groups, cfg)
    return opt, SCHEDULERS[scheduler](opt, epochs)


def _weights_id(spec: models.ModelSpec, weights, seed: int) -> str:
    """What the frozen prefix's parameters are, for the feature cache's key."""
    if weights is None:  # a random init differs per seed, so its features do too
        return f"random-init-seed{seed}"
    if str(weights).upper() == "DEFAULT":
        return spec.weights_name
    return models.file_sha256(weights)


def group_tags(groups: list[dict]) -> dict[str, str]:
    """One tag per parameter group name: its size, (largest) LR, and how many of its parameters never decay."""
    tags: dict[str, tuple[int, int, float]] = {}
    for g in groups:
        n = sum(p.numel() for p in g["params"])
        name = g.get("stage", g["name"])  # auto-RGN: one tag per stage, not per tensor
        size, no_decay, lr = tags.get(name, (0, 0, g["lr"]))
        tags[name] = (size + n, no_decay + (n if g.get("weight_decay") == 0.0 else 0), max(lr, g["lr"]))
    return {f"{Tag.GROUP_PREFIX}{name}": f"params={size} lr={lr:g} no_weight_decay={nd}"
            for name, (size, nd, lr) in tags.items()}


class Stopwatch:
    """Seconds per part of a job (`with clock("data"): ...`), for the record of where its time goes.

    On CUDA it waits for the device at the end of each part, so that queued kernels count
    where they were launched; one sync per part, never per step.
    """

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.device: torch.device | None = None

    @contextlib.contextmanager
    def __call__(self, part: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.device is not None and self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds[part] = self.seconds.get(part, 0.0) + time.perf_counter() - t0


def _merge(before: dict, part: dict) -> dict:
    """fit() results of consecutive segments as one run's: the best over all, the last one's final."""
    if not before:
        return part
    best = part if part["best_val_acc"] > before["best_val_acc"] else before
    return {**before, **part, "best_val_acc": best["best_val_acc"], "best_epoch": best["best_epoch"],
            "train_seconds": before["train_seconds"] + part["train_seconds"]}


def run(cfg: DictConfig) -> dict:
    """Train one model with one strategy on one dataset; log everything to MLflow."""
    tune_allocator()
    start = time.perf_counter()
    clock = Stopwatch()
    name = tracking.run_name(cfg)
    done = tracking.finished_run(cfg)
    if done is not None:  # a resumed sweep: this config already finished in it
        print(f"[tlsweep] {name}: skipped, already FINISHED in this sweep (run {done.info.run_id})", flush=True)
        return dict(done.data.metrics)
    progress = Progress(name, cfg.epochs)
    with tracking.job_run(cfg, name):  # opened first, so that even a config error is recorded as FAILED
        clock.seconds["mlflow"] = time.perf_counter() - start  # store, run, params, config artifact
        schema.check(cfg)  # ranges and relations, before any data is read or model built
        check_optim(cfg.optim)
        device = resolve_device(cfg.device)
        progress.start()
        with clock("model"):
            spec = models.get_spec(cfg.model, cfg.data.image_size)
            strategies.check(spec, cfg.strategy, cfg.epochs)  # a bad key, value or stage fails before any work
            seed_everything(cfg.seed)
        with clock("data"):
            data = datasets.load(cfg.data)
        with clock("model"):  # on CUDA this holds the context's start, at the first tensor moved there
            weights = cfg.model.weights if cfg.strategy.pretrained else None  # scratch: random init
            model, pp = models.build_model(spec, weights)
            pp = pp.with_crop(cfg.data.image_size)
            plan = strategies.apply(model, spec, cfg.strategy, len(data.classes), cfg.optim.lr, cfg.epochs)
            model.to(device)
            if cfg.channels_last:
                model.to(memory_format=torch.channels_last)
            optimizer, scheduler = make_optimizer(cfg.optim, plan.groups, cfg.epochs)
            clock.device = device
        with clock("data"):
            decoded, decode_how = datasets.decode(data, pp, cfg.data, cfg.cache_dir)
        images = []  # the image loaders, built once, when the first segment needs them

        rt = Runtime.of(device, cfg.bf16, cfg.channels_last)
        cache = features.CacheSettings.of(cfg, _weights_id(spec, weights, cfg.seed))

        def segment_batches(first: int, epochs: int):
            """(net, loaders, decision) for epochs first.. of one segment: its frozen prefix may be cached."""
            plan.set_phase(first)  # the cache cuts below what trains in this segment
            net, batches, how = model, None, features.CacheDecision(False, "strategy.cache_features=false")
            if cfg.strategy.cache_features:  # seed: segment 1 keeps the run's seed, later ones a new stream
                with clock("features"):
                    net, batches, how = features.cached_loaders(model, spec, data, decoded, pp, rt, cache, epochs,
                                                                cfg.seed + 1_000_003 * (first - 1))
            if batches is None:  # images, not features: only now do they go to the device
                if not images:
                    with clock("data"):
                        images.append(datasets.loaders(data, pp, cfg.batch_size, cfg.seed, cfg.data.num_workers,
                                                       rt, decoded))
                batches = images[0]
            return net, batches, how

        segments = plan.segments(cfg.epochs)  # phases of a phased strategy (lpft, gradual); else one
        net, batches, features_how = segment_batches(*segments[0])
        if images and decoded is not None:
            decode_how += f", batches built on {device.type}"

        with clock("mlflow"):
            mlflow.set_tags({
                Tag.DECODE: decode_how,
                Tag.FEATURES: str(features_how),
                Tag.BF16: str(cfg.bf16 and device.type == "cuda"),
                Tag.CHANNELS_LAST: str(cfg.channels_last),
                Tag.DEVICE: str(device),
                Tag.DATA_VAL: data.val_from,
                Tag.DATA_SELECT: data.select_from,
                Tag.BAD_IMAGES: f"{len(data.skipped)} skipped" + (f": {', '.join(data.skipped)}"[:4000] if data.skipped else ""),
                **models.weights_record(spec, weights),
                Tag.PREPROCESS: str(pp),
                Tag.TRAINABLE_STAGES: ",".join(plan.trainable),
                **group_tags(plan.trained_groups()),
            })
        prep_seconds = time.perf_counter() - start  # data, model and feature cache, before the first epoch
        progress.ready(prep_seconds, "feature cache " + ("on" if features_how.on else "off"))
        logged_before = clock.seconds["mlflow"]

        def on_epoch(epoch: int, metrics: dict) -> None:
            with clock("mlflow"):
                mlflow.log_metrics(metrics, step=epoch)  # one call per epoch: a dict is 2-3x cheaper than per metric
            progress.epoch(epoch, metrics)

        try:
            result, hows = {}, []
            for i, (first, epochs) in enumerate(segments):
                if i:  # a later phase: its own cut of the frozen prefix; the time counts as preparation
                    t0 = time.perf_counter()
                    net, batches, features_how = segment_batches(first, epochs)
                    prep_seconds += time.perf_counter() - t0
                if len(segments) > 1:  # say which epochs each way of running served
                    hows.append(f"epochs {first}-{first + epochs - 1}: {features_how}")
                    mlflow.set_tag(Tag.FEATURES, "; ".join(hows))
                part = fit(net, batches, optimizer, scheduler, epochs, rt,  # the plan holds freeze_bn
                           plan=plan, first_epoch=first, on_epoch=on_epoch)
                result = _merge(result, part)
        finally:
            progress.close()
        clock.seconds["train"] = result["train_seconds"] - (clock.seconds["mlflow"] - logged_before)  # fit logs too
        result.update(trainable_params=plan.trainable_params, total_params=plan.total_params,
                      prep_seconds=prep_seconds)
        # where the job's time went, in disjoint parts (their sum is prep_seconds + train_seconds, to
        # within the few statements between parts); the final log_metrics and closing the run are not in it
        # A key with a per-epoch history (trainable_params, select_acc) is not logged again: its last epoch's
        # value is the run's (a second value at step 0 drew lpft's curve from 3.4M down to 12.8k and back)
        summary = {k: v for k, v in result.items() if k not in ("trainable_params", "select_acc")}
        mlflow.log_metrics({**summary, **{f"seconds/{k}": v for k, v in clock.seconds.items()}})
    print(f"[tlsweep] {cfg.strategy.name:8s} seed={cfg.seed} final_val_acc={result['final_val_acc']:.4f} "
          f"best_val_acc={result['best_val_acc']:.4f} trainable={plan.trainable_params:,} "
          f"seconds={result['prep_seconds']:.1f} prep + {result['train_seconds']:.1f} train", flush=True)
    return result
