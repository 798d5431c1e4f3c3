"""`run(cfg) -> dict`: one experiment, from a composed config to metrics in MLflow.

The Hydra entry point (`__main__`), sweeps and tests all call this same function.
"""
from __future__ import annotations

import time

from omegaconf import DictConfig

from .imports import heavy

with heavy():  # torch, torchvision, MLflow: seconds of imports (see imports.py)
    import mlflow
    import torch
    from mlflow.entities import Metric, RunTag
    from torch import nn

    from . import data as datasets
    from . import feature_scores, features, models, recipes, schema, strategies, tracking
    from .errors import ConfigError, Diverged
    from .keys import SELECT_IMAGES, Tag
    from .optim import check_optim, make_optimizer
    from .progress import Progress
    from .runtime import Runtime, Stopwatch, resolve_bf16, resolve_device, seed_everything, train_depthwise_in_fp32
    from .train import divergence, fit, merge, tune_allocator


def run(cfg: DictConfig) -> dict:
    """Train one model with one strategy on one dataset; log everything to MLflow."""
    tune_allocator()
    start = time.perf_counter()
    clock = Stopwatch()
    name = tracking.run_name(cfg)
    done = tracking.finished_run(cfg)
    if done is not None:  # a resumed sweep: this config already finished in it, or diverged
        how = (f"diverged in this sweep ({done.data.tags[Tag.DIVERGED]}; delete run {done.info.run_id} to run it "
               "again)" if done.info.status == "FAILED" else f"already FINISHED in this sweep (run {done.info.run_id})")
        print(f"[tlsweep] {name}: skipped, {how}", flush=True)
        return dict(done.data.metrics)
    with tracking.job_run(cfg, name):  # opened first, so that even a config error is recorded as FAILED
        clock.seconds["mlflow"] = time.perf_counter() - start  # store, run, params, config artifact
        schema.check_ranges(cfg)  # ranges and relations, before any data is read or model built
        check_optim(cfg.optim)
        device = resolve_device(cfg.device)
        precision = resolve_bf16(cfg.bf16, device)  # bf16=true on a device without bf16 units fails here
        seed_everything(cfg.seed)
        progress = Progress(name, cfg.epochs)
        progress.start()
        with clock("model"):
            spec = models.get_spec(cfg.model, cfg.data.image_size)
            recipes.check(spec, cfg.strategy, cfg.epochs)  # a bad key, value or stage fails before any work
            check_batch_of_one(spec, cfg)
        with clock("data"):  # every image decoded once, as the weights' preprocessing resizes it
            data = datasets.load(cfg.data, cfg.cache_dir)
            # the task a run is on, whatever source named it (Flowers102, a VTAB-1k task folder, hymenoptera):
            # what a cross-task report groups by (`across=task`); not a config key, so no config sets it
            mlflow.log_param("task", data.name)
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
        images = []  # the image loaders, built once, when the first segment needs them

        rt = Runtime.of(device, precision.bf16, cfg.channels_last)
        fp32_depthwise = train_depthwise_in_fp32(model, rt)  # CPU bf16: oneDNN's are slower there in training
        bf16_how = str(precision) + (f", {fp32_depthwise} depthwise convs fp32 where they backpropagate"
                                     if fp32_depthwise else "")
        cache = []  # the feature cache's settings, made when a segment first asks
        head_inputs = []  # a segment's cached features, when its frozen prefix ends right below the head

        def segment_batches(first: int, epochs: int):
            """(net, loaders, decision) for epochs first.. of one segment: its frozen prefix may be cached."""
            plan.set_phase(first)  # the cache cuts below what trains in this segment
            net, batches, how = model, None, features.CacheDecision(False, "strategy.cache_features=false")
            if cfg.strategy.cache_features:  # seed: segment 1 keeps the run's seed, later ones a new stream
                with clock("features"):
                    if not cache:
                        cache.append(features.CacheSettings.of(cfg, spec, weights))
                    # past the decode budget the feature pass streams the image files: the cache has no cliff
                    images_for_features = decoded or datasets.streamed(data, pp)
                    net, batches, how, head = features.cached_loaders(model, spec, data, images_for_features, pp, rt,
                                                                      cache[0], epochs,
                                                                      cfg.seed + 1_000_003 * (first - 1))
                    head_inputs.extend([head] if head is not None else [])
            if batches is None and not trains:
                raise ConfigError(f"strategy={cfg.strategy.name} scores the cached frozen features, and this run has "
                                  f"none: the feature cache is {how}")
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
        scored = None
        if head_inputs:  # the frozen features' transferability scores, before any training (once per cache entry)
            with clock("scores"):
                scored = feature_scores.of(head_inputs[0], cfg.cache_dir)

        with clock("mlflow"):  # one request: the tags, and the scores before any training
            log_batch({
                Tag.DECODE: decode_how,
                Tag.FEATURES: str(features_how),
                Tag.BF16: bf16_how,  # on (cpu amx_bf16), off (bf16=false), ...
                Tag.CHANNELS_LAST: str(cfg.channels_last),
                Tag.DEVICE: str(device),
                Tag.DATA_VAL: data.val_from,
                Tag.DATA_SELECT: data.select_from,
                Tag.BAD_IMAGES: f"{len(data.skipped)} skipped" + (f": {', '.join(data.skipped)}"[:4000] if data.skipped else ""),
                **models.weights_record(spec, weights),
                Tag.PREPROCESS: str(pp),
                **({Tag.TRAINABLE_STAGES: ",".join(plan.trainable), **plan.tags()} if trains else {}),
                **({Tag.SCORES: str(scored)} if scored else {}),
            }, {**(scored.metrics() if scored else {}),
                # how finely select_acc can move (one image is 1/n of it): the advisor's report says so
                **({SELECT_IMAGES: len(data.select.items)} if data.select is not None else {})})
        prep_seconds = time.perf_counter() - start  # data, model and feature cache, before the first epoch
        if trains:
            progress.ready(prep_seconds, f"feature cache {'on' if features_how.on else 'off'}, bf16 {bf16_how}")
        logged_before = clock.seconds["mlflow"]

        def on_epoch(epoch: int, metrics: dict) -> None:
            with clock("mlflow"):  # one call per epoch: a dict is 2-3x cheaper than per metric
                mlflow.log_metrics(scored_as(metrics, data.scored), step=epoch)
            progress.epoch(epoch, metrics)

        result, hows = {}, []
        try:
            for i, (first, epochs) in enumerate(segments if trains else []):
                if i:  # a later phase: its own cut of the frozen prefix; the time counts as preparation
                    t0 = time.perf_counter()
                    net, batches, features_how = segment_batches(first, epochs)
                    prep_seconds += time.perf_counter() - t0
                if len(segments) > 1:  # say which epochs each way of running served
                    hows.append(f"epochs {first}-{first + epochs - 1}: {features_how}")
                    mlflow.set_tag(Tag.FEATURES, "; ".join(hows))
                part = fit(net, batches, optimizer, scheduler, epochs, rt,  # the plan holds freeze_bn
                           plan=plan, first_epoch=first, on_epoch=on_epoch)
                result = merge(result, part)
        except Diverged as err:  # a lost candidate, not a fault: resume skips it, the sweep counts it as ended
            mlflow.set_tag(Tag.DIVERGED, divergence(err, cfg.optim.lr))
            raise
        finally:
            progress.close()
        if trains:
            clock.seconds["train"] = result["train_seconds"] - (clock.seconds["mlflow"] - logged_before)  # fit logs too
        result.update(trainable_params=plan.trainable_params if trains else 0, total_params=plan.total_params,
                      prep_seconds=prep_seconds)
        # where the job's time went, in disjoint parts (their sum is prep_seconds + train_seconds, to
        # within the few statements between parts); the final log_metrics and closing the run are not in it
        # A key with a per-epoch history (trainable_params, select_acc) is not logged again: its last epoch's
        # value is the run's (a second value at step 0 would put a point out of order on its curve)
        # (score has no epochs: its trainable_params, 0, is logged here)
        summary = {k: v for k, v in result.items() if k not in ("trainable_params", "select_acc") or not trains}
        # a store that refuses them gets them printed as a JSON line, and the run is not FINISHED
        tracking.log_result(scored_as({**summary, **{f"seconds/{k}": v for k, v in clock.seconds.items()}},
                                      data.scored))
    s = data.scored
    result = {**scored_as(result, s), **(scored.metrics() if scored else {})}
    if not trains:
        print(f"[tlsweep] {cfg.strategy.name:8s} seed={cfg.seed} "
              + " ".join(f"{k}={v:.4f}" for k, v in scored.values.items())
              + f" ({scored.source}, bf16 {precision}) seconds={result['prep_seconds']:.1f} prep", flush=True)
        return result
    print(f"[tlsweep] {cfg.strategy.name:8s} seed={cfg.seed} final_{s}_acc={result[f'final_{s}_acc']:.4f} "
          f"best_{s}_acc={result[f'best_{s}_acc']:.4f} trainable={plan.trainable_params:,} "
          f"seconds={result['prep_seconds']:.1f} prep + {result['train_seconds']:.1f} train", flush=True)
    return result


def log_batch(tags: dict[str, str], metrics: dict[str, float]) -> None:
    """Tags and metrics of the active run in one store request, as mlflow.set_tags alone makes: a probe job of a
    sweep whose features come from memory takes 0.2-0.3 s, of which a second request (3-8 ms on SQLite) would be
    a visible share."""
    now = int(time.time() * 1000)
    mlflow.MlflowClient().log_batch(mlflow.active_run().info.run_id,
                                    metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                                    tags=[RunTag(k, str(v)) for k, v in tags.items()])


def scored_as(metrics: dict, scored: str) -> dict:
    """The loop's val_* keys under the scored split's real name (`test_acc`, `final_test_acc`) when it
    is a test split; unchanged for a val split."""
    if scored == "val":
        return metrics
    return {k.replace("val_", f"{scored}_") if k.startswith(("val_", "best_val_", "final_val_")) else k: v
            for k, v in metrics.items()}


def check_batch_of_one(spec: models.ModelSpec, cfg: DictConfig) -> None:
    """Refuse batch_size=1 where some BatchNorm runs in train mode in some epoch of the run.

    Every batch then holds one sample, and a train-mode BatchNorm over a 1x1 map (or a BatchNorm1d) has
    one value per channel, which torch refuses mid-epoch; larger batches never get there, as the training
    loaders drop a trailing batch of one. Decided by the strategy's own Plan and BatchNorm rule applied to
    the architecture on the meta device (no memory, no weights), before any data is read.
    """
    if cfg.batch_size > 1:
        return
    with torch.device("meta"):
        model = spec.build()
        plan = strategies.apply(model, spec, cfg.strategy, 2, cfg.optim.lr, cfg.epochs)  # any head size will do
    for first, _ in plan.segments(cfg.epochs):
        plan.set_phase(first)
        strategies.train_mode(model, plan.recipe.freeze_bn)
        bn = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
        if bn:
            raise ConfigError(
                f"batch_size=1: strategy {cfg.strategy.name} trains {len(bn)} BatchNorm layer(s) of {spec.name} in "
                f"train mode{f' from epoch {first}' if first > 1 else ''} ({', '.join(bn[:3])}"
                f"{f' and {len(bn) - 3} more' if len(bn) > 3 else ''}), which need at least 2 samples per batch; "
                "use batch_size>=2, or keep every BatchNorm in eval mode (strategy.freeze_bn=all, or a strategy "
                "that trains none, such as probe)")
