"""`run(cfg) -> dict`: one experiment, from a composed config to metrics in MLflow.

The Hydra entry point (`__main__`), sweeps and tests all call this same function. A job reads as three steps:
`prepare` (the config checked, the data loaded and decoded, the model built with the strategy's plan: a `Job`),
`train` (each segment of the plan's epochs, on cached features or on images, from a `Feed`), and the `Record`
(tags before the first epoch, metrics per epoch, the result and where the time went at the end). `run` holds the
edges: the job's MLflow run, its stopwatch and what it prints.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property

from omegaconf import DictConfig

from .imports import heavy

with heavy():  # torch, torchvision, MLflow: seconds of imports (see imports.py)
    import mlflow
    import torch
    from mlflow.entities import Metric, Param, RunTag
    from torch import nn

    from . import models
    from .config import schema
    from .config.errors import ConfigError, Diverged
    from .config.keys import SELECT_IMAGES, Tag
    from .data import pipeline as datasets
    from .data.splits import ImageData
    from .features import cache as features
    from .features import scores as feature_scores
    from .progress import Progress
    from .runtime import Runtime, Stopwatch, resolve_bf16, resolve_device, seed_everything, train_depthwise_in_fp32
    from .tracking import runs as tracking
    from .training import recipes, strategies
    from .training.loop import divergence, fit, merge, tune_allocator
    from .training.optim import check_optim, make_optimizer


def run(cfg: DictConfig) -> dict:
    """Train one model with one strategy on one dataset; log everything to MLflow."""
    clock = Stopwatch()  # from here: prep_seconds is everything before the first epoch
    tune_allocator()
    name = tracking.run_name(cfg)
    done = tracking.finished_run(cfg, name)
    if done is not None:  # a resumed sweep: this config already finished in it, or diverged
        return tracking.skipped(name, done)
    with tracking.job_run(cfg, name):  # opened first, so that even a config error is recorded as FAILED
        clock.seconds["mlflow"] = clock.elapsed()  # store, run, params, config artifact
        record = Record(cfg, name, clock)
        job = prepare(cfg, clock)
        feed = Feed(job, clock)
        first = feed.segment(*job.segments[0])  # its frozen prefix's features, where it may use a cache
        scores = None
        if first.head is not None:  # the frozen features' transferability scores, before any training
            with clock("scores"):
                scores = feature_scores.of(first.head, cfg.cache_dir)
        record.start(job, first, scores)
        result = train(job, feed, first, record)
        result = record.finish(job, result, scores)
    return record.announce(job, result, scores)


@dataclass(frozen=True)
class Job:
    """A job ready to train: its config (read only from here on), its data, its model and the strategy's plan."""

    cfg: DictConfig
    spec: models.ModelSpec
    weights: str | None  # None: a random init (scratch)
    rt: Runtime
    bf16_how: str  # what autocasts, and why: the run's tag
    data: ImageData
    pp: models.Preprocess
    decoded: datasets.Decoded | None  # None: over the decode budget, the images stream from their files
    decode_how: str
    model: nn.Module
    plan: strategies.Plan
    optimizer: torch.optim.Optimizer | None  # None: the score rung trains nothing
    scheduler: object | None

    @property
    def trains(self) -> bool:
        return self.plan.recipe.trains

    @property
    def segments(self) -> list[tuple[int, int]]:
        """(first epoch, epochs) of each phase of a phased strategy (lpft, gradual); else one."""
        return self.plan.segments(self.cfg.epochs)


def prepare(cfg: DictConfig, clock: Stopwatch) -> Job:
    """Check the config, then read the data and build the model: every mistake a config can hold fails before any
    data is read."""
    schema.check_ranges(cfg)  # ranges and relations
    check_optim(cfg.optim)
    device = resolve_device(cfg.device)
    precision = resolve_bf16(cfg.bf16, device)  # bf16=true on a device without bf16 units fails here
    seed_everything(cfg.seed)
    with clock("model"):
        spec = models.get_spec(cfg.model, cfg.data.image_size)
        recipes.check(spec, cfg.strategy, cfg.epochs)  # a bad key, value or stage
        strategies.check_batch_of_one(spec, cfg.strategy, cfg.batch_size, cfg.optim.lr, cfg.epochs)
    with clock("data"):  # every image decoded once, as the weights' preprocessing resizes it
        data = datasets.load(cfg.data, cfg.cache_dir)
        pp = spec.preprocess.with_crop(cfg.data.image_size)
        decoded, decode_how = datasets.decode(data, pp, cfg.data, cfg.cache_dir)
    with clock("model"):  # on CUDA this holds the context's start, at the first tensor moved there
        weights = cfg.model.weights if cfg.strategy.pretrained else None  # scratch: random init
        model, _ = models.build_model(spec, weights)  # its preprocessing is spec.preprocess, as above
        plan = strategies.apply(model, spec, cfg.strategy, len(data.classes), cfg.optim.lr, cfg.epochs)
        model.to(device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        trains = plan.recipe.trains  # the score rung trains nothing: no optimizer, no epoch
        optimizer, scheduler = make_optimizer(cfg.optim, plan.groups, cfg.epochs) if trains else (None, None)
        clock.device = device
    rt = Runtime.of(device, precision.bf16, cfg.channels_last)
    fp32_depthwise = train_depthwise_in_fp32(model, rt)  # CPU bf16: oneDNN's are slower there in training
    bf16_how = str(precision) + (f", {fp32_depthwise} depthwise convs fp32 where they backpropagate"
                                 if fp32_depthwise else "")
    return Job(cfg, spec, weights, rt, bf16_how, data, pp, decoded, decode_how, model, plan, optimizer, scheduler)


@dataclass(frozen=True)
class Segment:
    """The epochs first.. of one phase, and what they train on."""

    first: int
    epochs: int
    net: nn.Module  # what runs on each batch: the model, or what trains above a cached prefix
    batches: object  # runtime.Loaders: of images, or of cached features
    how: features.CacheDecision
    head: feature_scores.HeadInputs | None  # the cached features, where the prefix ends right below the head


class Feed:
    """A job's batches, segment by segment: its frozen prefix's cached features where the segment may use them,
    else its images (their loaders built once, when a segment first needs them)."""

    def __init__(self, job: Job, clock: Stopwatch):
        self.job, self.clock = job, clock

    def segment(self, first: int, epochs: int) -> Segment:
        job, cfg = self.job, self.job.cfg
        job.plan.set_phase(first)  # the cache cuts below what trains in this segment
        net, batches, how, head = job.model, None, features.CacheDecision(False, "strategy.cache_features=false"), None
        if cfg.strategy.cache_features:  # seed: segment 1 keeps the run's seed, later ones a new stream
            with self.clock("features"):
                # past the decode budget the feature pass streams the image files: the cache has no cliff
                images = job.decoded or datasets.streamed(job.data, job.pp)
                net, batches, how, head = features.cached_loaders(job.model, job.spec, job.data, images, job.pp,
                                                                  job.rt, self.cache_settings, epochs,
                                                                  cfg.seed + 1_000_003 * (first - 1))
        if batches is None and not job.trains:
            raise ConfigError(f"strategy={cfg.strategy.name} scores the cached frozen features, and this run has "
                              f"none: the feature cache is {how}")
        if batches is None:  # images, not features: only now do they go to the device
            with self.clock("data"):
                batches = self.images
        return Segment(first, epochs, net, batches, how, head)

    @cached_property
    def cache_settings(self) -> features.CacheSettings:
        return features.CacheSettings.of(self.job.cfg, self.job.spec, self.job.weights)

    @cached_property
    def images(self):
        cfg, job = self.job.cfg, self.job
        return datasets.loaders(job.data, job.pp, cfg.batch_size, cfg.seed, cfg.data.num_workers, job.rt,
                                job.decoded)


def train(job: Job, feed: Feed, first: Segment, record: "Record") -> dict:
    """Every segment's epochs (`fit`); a later segment's feed is preparation, not training. The score rung has
    none."""
    segments, result, seg = job.segments, {}, first
    try:
        for i, (start, epochs) in enumerate(segments if job.trains else []):
            if i:  # a later phase: its own cut of the frozen prefix
                t0 = time.perf_counter()
                seg = feed.segment(start, epochs)
                record.prep_seconds += time.perf_counter() - t0
            if len(segments) > 1:
                record.segment(seg)
            part = fit(seg.net, seg.batches, job.optimizer, job.scheduler, epochs, job.rt,  # the plan holds freeze_bn
                       plan=job.plan, first_epoch=start, on_epoch=record.epoch)
            result = merge(result, part)
    except Diverged as err:  # a lost candidate, not a fault: resume skips it, the sweep counts it as ended
        record.diverged(err)
        raise
    finally:
        record.progress.close()
    return result


class Record:
    """What a job tells MLflow and the terminal, and how long that took (the stopwatch's "mlflow" part)."""

    def __init__(self, cfg: DictConfig, name: str, clock: Stopwatch):
        self.cfg, self.clock = cfg, clock
        self.progress = Progress(name, cfg.epochs)
        self.progress.start()
        self.prep_seconds = 0.0  # data, model and feature cache, before the first epoch and between segments
        self.scored = "val"
        self._hows: list[str] = []
        self._before_training = 0.0

    def start(self, job: Job, first: Segment, scores: feature_scores.Scores | None) -> None:
        """The tags, the scores and the task in one request, before any training. The task is the dataset whatever
        source named it (Flowers102, a VTAB-1k folder, hymenoptera): what a cross-task report groups by
        (`across=task`); not a config key, so no config sets it."""
        data, self.scored = job.data, job.data.scored
        decode_how = job.decode_how + (f", batches built on {job.rt.device.type}"
                                       if job.decoded is not None and not first.how.on else "")
        with self.clock("mlflow"):
            log_batch({
                Tag.DECODE: decode_how,
                Tag.FEATURES: str(first.how),
                Tag.BF16: job.bf16_how,  # on (cpu amx_bf16), off (bf16=false), ...
                Tag.CHANNELS_LAST: str(self.cfg.channels_last),
                Tag.DEVICE: str(job.rt.device),
                Tag.DATA_VAL: data.val_from,
                Tag.DATA_SELECT: data.select_from,
                Tag.BAD_IMAGES: f"{len(data.skipped)} skipped" + (f": {', '.join(data.skipped)}"[:4000]
                                                                  if data.skipped else ""),
                **models.weights_record(job.spec, job.weights),
                Tag.PREPROCESS: str(job.pp),
                **({Tag.TRAINABLE_STAGES: ",".join(job.plan.trainable), **job.plan.tags()} if job.trains else {}),
                **({Tag.SCORES: str(scores)} if scores else {}),
            }, {**(scores.metrics() if scores else {}), **models.imagenet_top1(job.spec, job.weights),
                # how finely select_acc can move (one image is 1/n of it): the advisor's report says so
                **({SELECT_IMAGES: len(data.select.items)} if data.select is not None else {})},
                {"task": data.name})
        self.prep_seconds = self.clock.elapsed()  # everything before the first epoch
        if job.trains:
            self.progress.ready(self.prep_seconds, f"feature cache {'on' if first.how.on else 'off'}, "
                                                   f"bf16 {job.bf16_how}")
        self._before_training = self.clock.seconds["mlflow"]

    def segment(self, seg: Segment) -> None:
        """Which way of running served which epochs, as they start."""
        self._hows.append(f"epochs {seg.first}-{seg.first + seg.epochs - 1}: {seg.how}")
        mlflow.set_tag(Tag.FEATURES, "; ".join(self._hows))

    def epoch(self, epoch: int, metrics: dict) -> None:
        with self.clock("mlflow"):  # one call per epoch: a dict is cheaper than a call per metric (docs/speed.md)
            mlflow.log_metrics(scored_as(metrics, self.scored), step=epoch)
        self.progress.epoch(epoch, metrics)

    def diverged(self, err: Diverged) -> None:
        mlflow.set_tag(Tag.DIVERGED, divergence(err, self.cfg.optim.lr))

    def finish(self, job: Job, result: dict, scores: feature_scores.Scores | None) -> dict:
        """Log the result and where the time went, in disjoint parts: their sum is prep_seconds + train_seconds,
        to within the few statements between parts (the final log and closing the run are not in it)."""
        seconds = self.clock.seconds
        if job.trains:  # fit's time holds the per-epoch logging, counted as mlflow
            seconds["train"] = result["train_seconds"] - (seconds["mlflow"] - self._before_training)
        result = {**result, "trainable_params": job.plan.trainable_params if job.trains else 0,
                  "total_params": job.plan.total_params, "prep_seconds": self.prep_seconds}
        # A key with a per-epoch history (trainable_params, select_acc) is not logged again: its last epoch's
        # value is the run's (a second value at step 0 would put a point out of order on its curve); the score
        # rung has no epochs, so its trainable_params, 0, is logged here
        summary = {k: v for k, v in result.items() if k not in ("trainable_params", "select_acc") or not job.trains}
        # a store that refuses them gets them printed as a JSON line, and the run is not FINISHED
        tracking.log_result(scored_as({**summary, **{f"seconds/{k}": v for k, v in seconds.items()}}, self.scored))
        return {**scored_as(result, self.scored), **(scores.metrics() if scores else {})}

    def announce(self, job: Job, result: dict, scores: feature_scores.Scores | None) -> dict:
        """The job's one line, and its result for the caller."""
        name, s = self.cfg.strategy.name, self.scored
        if not job.trains:
            print(f"[tlsweep] {name:8s} seed={self.cfg.seed} "
                  + " ".join(f"{k}={v:.4f}" for k, v in scores.values.items())
                  + f" ({scores.source}, bf16 {job.bf16_how}) seconds={result['prep_seconds']:.1f} prep", flush=True)
            return result
        print(f"[tlsweep] {name:8s} seed={self.cfg.seed} final_{s}_acc={result[f'final_{s}_acc']:.4f} "
              f"best_{s}_acc={result[f'best_{s}_acc']:.4f} trainable={job.plan.trainable_params:,} "
              f"seconds={result['prep_seconds']:.1f} prep + {result['train_seconds']:.1f} train", flush=True)
        return result


def log_batch(tags: dict[str, str], metrics: dict[str, float], params: dict[str, str]) -> None:
    """Tags, metrics and params of the active run in one store request, as mlflow.set_tags alone makes: a probe job of a
    sweep whose features come from memory takes a fraction of a second, of which a second request would be a
    visible share."""
    now = int(time.time() * 1000)
    mlflow.MlflowClient().log_batch(mlflow.active_run().info.run_id,
                                    metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                                    params=[Param(k, str(v)) for k, v in params.items()],
                                    tags=[RunTag(k, str(v)) for k, v in tags.items()])


def scored_as(metrics: dict, scored: str) -> dict:
    """The loop's val_* keys under the scored split's real name (`test_acc`, `final_test_acc`) when it
    is a test split; unchanged for a val split."""
    if scored == "val":
        return metrics
    return {k.replace("val_", f"{scored}_") if k.startswith(("val_", "best_val_", "final_val_")) else k: v
            for k, v in metrics.items()}
