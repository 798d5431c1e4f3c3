"""tlsweep vs the naive loop, same workload, one invocation.

The naive loop is the torchvision fine-tuning tutorial's: ImageFolder + PIL transforms +
DataLoader(num_workers=2), fp32, and every epoch a full forward pass through the frozen
backbone; a hand-rolled sweep runs it once per configuration in one process (no process
start, no tracking: generous to the naive side). It uses the same model, weights, head,
optimizer groups, schedule and augmentation recipe as tlsweep, and keeps frozen BatchNorm
layers in eval mode like tlsweep's default, so both sides compute the same thing.

tlsweep runs as users run it: `python -m tlsweep -m ...` in a subprocess, with a fresh
MLflow store and a cold cache, so process start, decoding, feature caching and MLflow
logging are all inside its wall time. Each job records where its time went (`seconds/*`
metrics: MLflow, model, data, feature pass, training); the rest of the wall is process start,
imports, Hydra, the store's creation, closing the runs and exit: the sweep's fixed cost, which it logs
on its parent run (`sweep/around_jobs_seconds`) and the summary prints beside the speedup (its report
is off: the naive side makes none). After the last workload a table puts each ratio beside its bar
(issue 4: probe ≥ 10x end to end, fine-tune ≥ 1.25x per epoch, the GPU ladder ≥ 10x). tlsweep's side runs first
(once per `--n-jobs` value), then the naive side; `--stop-at` cuts the naive side between
runs and estimates its full wall from the runs that finished.

    python benchmarks/bench.py --workload probe      # CPU-sized: 2 LRs x 2 seeds x 3 epochs
    python benchmarks/bench.py --workload finetune   # 1 seed x 3 epochs, per-epoch ratio
    python benchmarks/bench.py --workload ladder     # GPU: 4 strategies x 5 seeds x 10 epochs
    python benchmarks/bench.py --workload probe finetune  # both, then the bars: each ratio against its target
    python benchmarks/bench.py --workload all --out bench.json   # probe, finetune, vit-probe (+ ladder on a GPU)
    python benchmarks/bench.py --workload ladder --n-jobs 0 4   # tlsweep sequential, then 4 jobs at once
    python benchmarks/bench.py --smoke --data <small ImageFolder>  # every code path, in seconds

The vit-probe workload has no naive side: it runs the probe sweep's shape on a ViT
(`model=timm model.arch=vit_tiny_patch16_224`, with a random-init checkpoint file as its weights: no
network, and like pretrained weights one frozen function for every seed)
through tlsweep twice, with the feature cache (the default) and without it
(`strategy.cache_features=false`: the frozen backbone runs every epoch), each on a fresh MLflow
store and a cold cache, and reports uncached/cached.

    python benchmarks/bench.py --workload vit-probe  # CPU-sized: 2 LRs x 2 seeds x 3 epochs, twice

The bound (probe and vit-probe): what no implementation of the probe sweep can avoid, the
forward passes of its frozen backbone over the images it trains and evaluates on, once each:
B x (V x N + M) images, where V is the number of augmented train views the cache holds
(`strategy.feature_views`, by default one per epoch), N the train images, M the evaluated images
(val, and the selection split if there is one), and B the number of distinct frozen backbones:
1 with pretrained weights, one per seed with `model.weights=null` (each seed's random init is
another function, so tlsweep keys its features by seed too). The forward is timm's
`forward_head(forward_features(x), pre_logits=True)` in eval mode under no_grad, with the sweep's
model, weights, crop size, batch size, channels_last and (on CUDA) bf16 autocast, and with each
BatchNorm folded into its conv the way tlsweep's own feature pass does it (unfolded, the bound
would be slower than the pass it bounds: EfficientNet-Lite0 on the dev CPU about 8 vs 6.5
ms/image). It excludes everything else: process start, imports, Hydra, MLflow, building the
model, reading and decoding images, augmentation (the inputs are one batch of random tensors
made at crop size beforehand, reused), training the head and one untimed warm-up batch. It runs
in a fresh process with tlsweep's allocator setting, like a tlsweep job, so that it neither
inherits the naive side's state nor hands that setting to the naive side. sweep/bound is the
sweep's end-to-end wall over the bound: close to 1.0x, a sweep has nothing left to win; what is
above it is the fixed costs and everything that is not the unavoidable forwards.

With CUDA present, probe and vit-probe become 3 LRs x 5 seeds x 10 epochs. On a lent GPU, run
benchmarks/device/run.sh: it runs the probe and ladder workloads with a time limit.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn
from torchvision import datasets, transforms

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tlsweep import models, strategies  # noqa: E402

DATA = (REPO / ".." / "shared" / "data" / "hymenoptera_data").resolve()
# the model of a workload, as the sweep's overrides; the naive side reads the lite0 preset itself
LITE0 = ("model=efficientnet_lite0",)
VIT = ("model=timm", "model.arch=vit_tiny_patch16_224")  # + model.weights=<a random-init checkpoint file>


def vit_weights(folder: Path) -> str:
    """A random-init vit_tiny checkpoint standing in for pretrained weights (no network here): like a
    pretrained backbone, one file serves every seed, so the sweep's feature pass runs once, as it would
    with DEFAULT weights (with model.weights=null each seed is another random function)."""
    import timm

    path = folder / "vit_tiny_patch16_224-random.pth"
    torch.manual_seed(0)
    torch.save(timm.create_model("vit_tiny_patch16_224").state_dict(), path)
    return f"model.weights={path}"


@dataclasses.dataclass(frozen=True)
class Workload:
    grid: list  # (strategy, lr, seed) per run
    epochs: int
    model: tuple[str, ...] = LITE0
    against: str = "naive"  # "naive": the tutorial loop; "uncached": tlsweep with strategy.cache_features=false
    bound: bool = False  # also time the frozen backbone's unavoidable forwards (probe sweeps only)


# --- the naive side ----------------------------------------------------------------------

def naive_run(root: Path, strategy: str, lr: float, seed: int, epochs: int, device: torch.device,
              image_size: int | None = None) -> dict:
    """One run of the tutorial loop. Returns final val acc and per-epoch seconds."""
    torch.manual_seed(seed)
    preset = OmegaConf.load(REPO / "conf" / "model" / "efficientnet_lite0.yaml")  # what model=efficientnet_lite0 is
    spec = models.get_spec(preset, image_size)
    model, pp = models.build_model(spec, None if strategy == "scratch" else preset.weights)
    pp = pp.with_crop(image_size)
    interp = transforms.InterpolationMode(pp.interpolation.value)
    tf = {
        "train": transforms.Compose([transforms.RandomResizedCrop(pp.crop, scale=(0.6, 1.0), interpolation=interp),
                                     transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                     transforms.Normalize(pp.mean, pp.std)]),
        "val": transforms.Compose([transforms.Resize(pp.resize, interpolation=interp), transforms.CenterCrop(pp.crop),
                                   transforms.ToTensor(), transforms.Normalize(pp.mean, pp.std)]),
    }
    loaders = {s: torch.utils.data.DataLoader(datasets.ImageFolder(root / s, tf[s]), batch_size=32,
                                              shuffle=s == "train", num_workers=2) for s in ("train", "val")}
    rung = {"scratch": ("all", 1.0, False), "probe": ([], 0.0, True), "partial": (None, 0.1, True),
            "finetune": ("all", 0.1, False)}[strategy]
    cfg = type("S", (), {"unfreeze": rung[0], "backbone_lr_scale": rung[1]})()
    plan = strategies.apply(model, spec, cfg, 2, lr)
    model.to(device)
    opt = torch.optim.AdamW(plan.groups, lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    crit = nn.CrossEntropyLoss()
    epoch_s = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.train()
        if rung[2]:
            strategies.frozen_bn_eval(model)
        for x, y in loaders["train"]:
            x, y = x.to(device), y.to(device)
            opt.zero_grad()
            loss = crit(model(x), y)
            loss.backward()
            opt.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in loaders["val"]:
                correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
        sched.step()
        epoch_s.append(time.perf_counter() - t0)
    return {"final_val_acc": correct / len(loaders["val"].dataset), "epoch_seconds": epoch_s}


def naive_sweep(root, grid, epochs, device, image_size=None, stop_at=None, on_run=None) -> dict:
    """The hand-rolled sweep. Seeds run in the outer loop, so that a sweep stopped at `stop_at`
    (a time.time() value; no run starts that would likely end after it) has runs of every
    configuration, and its full wall can be estimated from them."""
    t0 = time.perf_counter()
    runs = []
    for s, lr, seed in sorted(grid, key=lambda g: g[2]):
        same = [r["seconds"] for r in runs if (r["strategy"], r["lr"]) == (s, lr)]
        expected = statistics.mean(same) if same else max((r["seconds"] for r in runs), default=0.0)
        if stop_at and time.time() + expected > stop_at:
            break
        r0 = time.perf_counter()
        r = naive_run(root, s, lr, seed, epochs, device, image_size)
        runs.append({"strategy": s, "lr": lr, "seed": seed, **r, "seconds": time.perf_counter() - r0})
        if on_run:
            on_run(runs)
    wall = time.perf_counter() - t0
    out = {"wall_s": wall, "runs": runs, "planned": len(grid), "complete": len(runs) == len(grid)}
    if not out["complete"]:
        # each configuration's mean run time times its planned runs; None if one has no run yet
        per = {}
        for r in runs:
            per.setdefault((r["strategy"], r["lr"]), []).append(r["seconds"])
        configs = {(s, lr) for s, lr, _ in grid}
        out["wall_s_estimate"] = (sum(statistics.mean(per[c]) * sum(1 for g in grid if g[:2] == c) for c in configs)
                                  if configs <= set(per) else None)
    return out


# --- the tlsweep side ----------------------------------------------------------------------

def tlsweep_sweep(root, grid, epochs, n_jobs: int = 0, image_size=None, timeout=None, model=LITE0,
                  extra=()) -> dict:
    """`python -m tlsweep -m` over the grid with `model` (overrides) and `extra` overrides, in a fresh
    temporary directory: a new MLflow store and a cold cache."""
    strategies_ = sorted({s for s, _, _ in grid})
    lrs = sorted({lr for _, lr, _ in grid})
    seeds = sorted({seed for _, _, seed in grid})
    # data=hymenoptera checks its image counts; any other folder is a plain ImageFolder
    data = [] if Path(root).resolve() == DATA else ["data=imagefolder"]
    launcher = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}"] if n_jobs else []
    size = [f"data.image_size={image_size}"] if image_size else []
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "tlsweep", "-m", *model, *data, f"data.root={root}", *size,
               f"strategy={','.join(strategies_)}", f"optim.lr={','.join(map(str, lrs))}",
               f"seed={','.join(map(str, seeds))}", f"epochs={epochs}", f"cache_dir={tmp}/cache", *extra,
               "hydra.callbacks.tlsweep.report=false", *launcher]
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"stopped after {timeout:.0f} s (the time limit)", "command": " ".join(cmd[1:])}
        wall = time.perf_counter() - t0
        print("\n".join(line for line in p.stdout.splitlines() if line.startswith("[tlsweep]")), flush=True)
        if p.returncode:
            return {"error": f"exit {p.returncode}: {p.stderr[-3000:]}", "command": " ".join(cmd[1:])}
        import mlflow

        mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlruns/mlflow.db")
        df = mlflow.search_runs(experiment_names=["tlsweep"], filter_string="tags.`tlsweep.role` = 'job'")
        client = mlflow.MlflowClient()
        parent = mlflow.search_runs(experiment_names=["tlsweep"], filter_string="tags.`tlsweep.role` = 'sweep'")
        # what the sweep logged on its parent: its wall less the time its runs were open (sequential jobs only)
        fixed = parent["metrics.sweep/around_jobs_seconds"].iloc[0] \
            if "metrics.sweep/around_jobs_seconds" in parent else None
        epoch_s = [[m.value for m in client.get_metric_history(r, "epoch_seconds")] for r in df.run_id]
        tags = list(df["tags.tlsweep.fast.features"])
        fast = sorted({t.split(":")[0].split(" (")[0] for t in tags})  # on / off
        in_jobs = float((df["metrics.prep_seconds"] + df["metrics.train_seconds"]).sum())
        parts = {k.removeprefix("metrics.seconds/"): float(df[k].sum()) for k in df if k.startswith("metrics.seconds/")}
        runs = [{"strategy": s, "lr": float(lr), "seed": int(seed), "final_val_acc": a, "epoch_seconds": e}
                for s, lr, seed, a, e in zip(df["params.strategy.name"], df["params.optim.lr"], df["params.seed"],
                                             df["metrics.final_val_acc"], epoch_s)]
    return {"wall_s": wall, "n_jobs": n_jobs, "command": " ".join(cmd[1:]), "runs": runs, "features_cache": fast,
            "features_tags": tags, "feature_passes": sum("(computed" in t for t in tags),  # the others loaded them
            # the sum of every job's time inside run(cfg), and its parts; with parallel jobs these are
            # job-seconds that overlap, so only a sequential sweep's wall splits into them
            "in_jobs_s": in_jobs, "job_parts_s": parts,
            "outside_jobs_s": wall - in_jobs if n_jobs <= 1 else None,
            "fixed_cost_s": None if fixed is None or fixed != fixed else float(fixed)}


# --- the bound -----------------------------------------------------------------------------

def bound(root, grid, epochs, model=LITE0, image_size=None) -> dict:
    """Seconds of the probe sweep's unavoidable forwards (see the module docstring), measured in a
    fresh process: tlsweep's allocator setting stays out of this one, where the naive side runs."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_bound, (str(root), sorted({seed for _, _, seed in grid}), epochs, model, image_size))


class PreLogits(nn.Module):
    """A timm model up to its classifier, as timm defines it: the frozen backbone of a probe."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def _bound(root: str, seeds: list[int], epochs: int, model: tuple[str, ...], image_size: int | None) -> dict:
    from hydra import compose, initialize_config_dir

    import tlsweep.schema  # noqa: F401 -- registers the config schema that conf/ extends
    from tlsweep import data as datasets
    from tlsweep import features
    from tlsweep.runtime import resolve_device
    from tlsweep.runtime import autocast
    from tlsweep.train import tune_allocator

    tune_allocator()  # as every tlsweep job does: without it a CPU forward is about 3x slower
    # the sweep's own config, so that crop, batch size, channels_last, views and weights are the ones it uses
    data = [] if Path(root).resolve() == DATA else ["data=imagefolder"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("config", overrides=[*model, *data, f"data.root={root}", "strategy=probe", f"epochs={epochs}",
                                           *([f"data.image_size={image_size}"] if image_size else [])])
    spec = models.get_spec(cfg.model, cfg.data.image_size)
    if spec.source != "timm":
        raise ValueError(f"the bound runs timm's forward_features/forward_head; {spec.name} is from {spec.source}")
    device = resolve_device(cfg.device)
    split = datasets.load(cfg.data)
    n_train, n_eval = len(split.train.items), sum(len(s.items) for s in split.eval_splits())
    views = cfg.strategy.feature_views or epochs
    # a random init is another function per seed (tlsweep keys its features by seed then): one pass each
    backbones = len(seeds) if cfg.model.weights is None else 1
    bs = cfg.batch_size
    batches = [min(bs, n_train - i) for i in range(0, n_train, bs)] * views + \
              [min(bs, n_eval - i) for i in range(0, n_eval, bs)]

    def amp():  # bf16 autocast on CUDA only, as the sweep's feature pass
        return autocast(device, cfg.bf16)

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
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            first_call += time.perf_counter() - t0
            t0 = time.perf_counter()
            for n in batches:
                with amp():
                    net(x[:n])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds += time.perf_counter() - t0
    images = backbones * (views * n_train + n_eval)
    return {"seconds": seconds, "backbones": backbones, "views": views, "train_images": n_train,
            "eval_images": n_eval, "images": images, "ms_per_image": 1000 * seconds / images, "crop": pp.crop,
            "batch_size": bs, "channels_last": bool(cfg.channels_last), "bn_folded": folded,
            # not in the bound: the fold and its check (3 forwards of 2 images) and one warm-up batch
            "fold_and_warmup_s": first_call,
            "bf16": bool(cfg.bf16 and device.type == "cuda"), "device": str(device), "model": list(model)}


def bound_line(b: dict, sweep_s: float | None) -> str:
    """bound: X.X s of unavoidable forwards (V views x N + M images); sweep/bound = Y.Yx"""
    what = f"{b['views']} views x {b['train_images']} + {b['eval_images']} images"
    if b["backbones"] > 1:
        what = f"{b['backbones']} backbones (one per seed: random init) x ({what})"
    ratio = f"{sweep_s / b['seconds']:.1f}x" if sweep_s and b["seconds"] > 0 else "n/a"
    return f"bound: {b['seconds']:.1f} s of unavoidable forwards ({what}); sweep/bound = {ratio}"


def _acc(runs) -> dict:
    v = [r["final_val_acc"] for r in runs]
    if not v:
        return {"mean": None, "std": None, "n": 0, "min": None, "max": None}
    return {"mean": statistics.mean(v), "std": statistics.stdev(v) if len(v) > 1 else None, "n": len(v),
            "min": min(v), "max": max(v)}


def _f(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def summarize(name: str, naive: dict, fast: dict, bound_: dict | None = None) -> dict:
    """One row: tlsweep (one launcher setting) against the naive sweep, and against the bound."""
    row = {"workload": name, "n_jobs": fast.get("n_jobs"), "tlsweep_command": fast["command"]}
    if "error" in fast:
        return {**row, "error": fast["error"]}
    naive_wall = naive["wall_s"] if naive["complete"] else naive.get("wall_s_estimate")

    def epoch(side):
        return statistics.mean(s for r in side["runs"] for s in r["epoch_seconds"])

    by_config = {}
    for s, lr in sorted({(r["strategy"], r["lr"]) for r in fast["runs"]}):
        a = _acc([r for r in naive["runs"] if (r["strategy"], r["lr"]) == (s, lr)])
        b = _acc([r for r in fast["runs"] if (r["strategy"], r["lr"]) == (s, lr)])
        # "within the naive loop's seed spread": tlsweep's mean over seeds inside the naive runs' range
        by_config[f"{s} lr={lr:g}"] = {"naive": a, "tlsweep": b,
                                       "within_naive_range": a["n"] > 0 and a["min"] <= b["mean"] <= a["max"]}
    row.update({
        "naive_wall_s": naive["wall_s"], "naive_complete": naive["complete"],
        "naive_runs": f"{len(naive['runs'])}/{naive['planned']}", "naive_wall_s_full": naive_wall,
        "tlsweep_wall_s": fast["wall_s"], "tlsweep_in_jobs_s": fast["in_jobs_s"],
        "tlsweep_outside_jobs_s": fast["outside_jobs_s"], "tlsweep_job_parts_s": fast["job_parts_s"],
        "tlsweep_fixed_cost_s": fast.get("fixed_cost_s"),
        "speedup_end_to_end": naive_wall / fast["wall_s"] if naive_wall else None,
        "naive_epoch_s": epoch(naive) if naive["runs"] else None, "tlsweep_epoch_s": epoch(fast),
        "naive_acc_mean_std": [_acc(naive["runs"])["mean"], _acc(naive["runs"])["std"]] if naive["runs"] else None,
        "tlsweep_acc_mean_std": [_acc(fast["runs"])["mean"], _acc(fast["runs"])["std"]],
        "acc_by_config": by_config, "tlsweep_feature_cache": fast["features_cache"], **_bound_fields(bound_, fast)})
    speed = (f"{row['speedup_end_to_end']:.1f}x end to end" + ("" if naive["complete"] else
             f" (naive side estimated from {row['naive_runs']} runs)")) if naive_wall else "n/a (too few naive runs)"
    parts = ", ".join(f"{k} {v:.1f}" for k, v in fast["job_parts_s"].items())
    print(f"\n== {name}, tlsweep with {fast['n_jobs'] or 1} job(s) at a time"
          f"\n  naive   : {naive['wall_s']:8.1f} s wall for {row['naive_runs']} runs"
          f"\n  tlsweep : {fast['wall_s']:8.1f} s wall; inside the jobs {fast['in_jobs_s']:.1f} s ({parts})"
          f"\n  speedup : {speed}"
          f"\n  fixed   : {fixed_line(fast)}"
          + "".join(f"\n  acc {k}: naive {_f(v['naive']['mean'])} (n={v['naive']['n']}, "
                    f"{_f(v['naive']['min'])}..{_f(v['naive']['max'])}), tlsweep {_f(v['tlsweep']['mean'])} "
                    f"(n={v['tlsweep']['n']})" for k, v in by_config.items())
          + (f"\n  {bound_line(bound_, fast['wall_s'])}" if _measured(bound_) else "")
          + f"\n  command : python {row['tlsweep_command']}", flush=True)
    return row


def fixed_line(fast: dict) -> str:
    """The sweep's fixed cost, as it logged it on its parent run."""
    if fast.get("fixed_cost_s") is None:
        return "not split (jobs overlapped)"
    return (f"{fast['fixed_cost_s']:.1f} s of the {fast['wall_s']:.1f} s wall around the jobs (start-up, imports, "
            "store, Hydra, exit; no report, as the naive side makes none)")


def _measured(b: dict | None) -> bool:
    return bool(b) and "error" not in b


def _bound_fields(b: dict | None, fast: dict) -> dict:
    if not b:
        return {}
    if "error" in b:
        return {"bound": b}
    return {"bound": b, "bound_s": b["seconds"], "sweep_over_bound": fast["wall_s"] / b["seconds"],
            "bound_line": bound_line(b, fast["wall_s"])}


def summarize_uncached(name: str, cached: dict, uncached: dict, bound_: dict | None = None) -> dict:
    """One row: tlsweep with its feature cache against tlsweep without it, and against the bound."""
    row = {"workload": name, "n_jobs": cached.get("n_jobs"), "cached_command": cached["command"],
           "uncached_command": uncached["command"]}
    if "error" in cached or "error" in uncached:
        return {**row, "error": "; ".join(f"{k}: {side['error']}" for k, side in
                                          (("cached", cached), ("uncached", uncached)) if "error" in side)}
    acc = {k: _acc(side["runs"]) for k, side in (("cached", cached), ("uncached", uncached))}
    row.update({
        "cached_wall_s": cached["wall_s"], "uncached_wall_s": uncached["wall_s"],
        "uncached_over_cached": uncached["wall_s"] / cached["wall_s"],
        "cached_in_jobs_s": cached["in_jobs_s"], "uncached_in_jobs_s": uncached["in_jobs_s"],
        "cached_job_parts_s": cached["job_parts_s"], "uncached_job_parts_s": uncached["job_parts_s"],
        "cached_acc_mean_std": [acc["cached"]["mean"], acc["cached"]["std"]],
        "uncached_acc_mean_std": [acc["uncached"]["mean"], acc["uncached"]["std"]],
        "cached_features": cached["features_tags"], "uncached_features": uncached["features_tags"],
        "cached_feature_passes": cached["feature_passes"], "cached_fixed_cost_s": cached.get("fixed_cost_s"),
        **_bound_fields(bound_, cached)})

    def side(s):
        parts = ", ".join(f"{k} {v:.1f}" for k, v in s["job_parts_s"].items())
        return f"{s['wall_s']:8.1f} s wall; inside the jobs {s['in_jobs_s']:.1f} s ({parts})"

    def pm(a):
        return f"{_f(a['mean'])} ± {_f(a['std'])} (n={a['n']})"

    print(f"\n== {name}, tlsweep with {cached['n_jobs'] or 1} job(s) at a time"
          f"\n  cached  : {side(cached)}; feature pass computed {cached['feature_passes']}x"
          f"\n  uncached: {side(uncached)}"
          f"\n  uncached/cached: {row['uncached_over_cached']:.2f}x"
          f"\n  fixed   : {fixed_line(cached)} (cached)"
          f"\n  acc     : cached {pm(acc['cached'])}, uncached {pm(acc['uncached'])}"
          + (f"\n  {bound_line(bound_, cached['wall_s'])} (sweep: the cached one; uncached/bound = "
             f"{uncached['wall_s'] / bound_['seconds']:.1f}x)" if _measured(bound_) else "")
          + f"\n  command : python {row['cached_command']}"
          f"\n  command : python {row['uncached_command']}", flush=True)
    return row


# Issue 4's speed bars: the ratio each workload must reach against the naive loop in the same invocation.
BARS = {"probe": ("end to end", 10.0), "finetune": ("per epoch", 1.25), "ladder": ("end to end", 10.0)}


def bars(rows: list[dict]) -> list[dict]:
    """Each measured workload's ratio against its bar (and vit-probe's uncached/cached, which has none)."""
    out = []
    for row in rows:
        name = row["workload"]
        if "error" in row:
            out.append({"workload": name, "n_jobs": row.get("n_jobs"), "error": row["error"]})
            continue
        if name == "vit-probe":
            out.append({"workload": name, "n_jobs": row["n_jobs"], "measure": "uncached / cached, end to end",
                        "ratio": row["uncached_over_cached"], "bar": None, "fixed_cost_s": row["cached_fixed_cost_s"]})
            continue
        measure, bar = BARS[name]
        ratio = row["speedup_end_to_end"] if measure == "end to end" else \
            (row["naive_epoch_s"] / row["tlsweep_epoch_s"] if row["naive_epoch_s"] else None)
        out.append({"workload": name, "n_jobs": row["n_jobs"], "measure": f"naive / tlsweep, {measure}",
                    "ratio": ratio, "bar": bar, "met": None if ratio is None else ratio >= bar,
                    "naive_complete": row["naive_complete"], "fixed_cost_s": row["tlsweep_fixed_cost_s"]})
    return out


def bars_table(rows: list[dict]) -> str:
    lines = ["\n== bars (this invocation)", "| workload | jobs at a time | measure | ratio | bar | met | fixed cost |",
             "|---|---|---|---|---|---|---|"]
    for b in rows:
        if "error" in b:
            lines.append(f"| {b['workload']} | {b['n_jobs'] or 1} | error: {b['error'][:80]} | | | | |")
            continue
        ratio = "n/a" if b["ratio"] is None else f"{b['ratio']:.2f}x" + ("" if b.get("naive_complete", True) else
                                                                         " (naive side estimated)")
        met = "" if b["bar"] is None or b["met"] is None else ("yes" if b["met"] else "NO")
        fixed = "" if b["fixed_cost_s"] is None else f"{b['fixed_cost_s']:.1f} s"
        bar = "" if b["bar"] is None else f"≥ {b['bar']:g}x"
        lines.append(f"| {b['workload']} | {b['n_jobs'] or 1} | {b['measure']} | {ratio} | {bar} | {met} | {fixed} |")
    return "\n".join(lines)


def environment(device: torch.device) -> dict:
    import torchvision

    gpu = device.type == "cuda"
    return {"device": str(device), "gpu": torch.cuda.get_device_name() if gpu else None,
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "cuda": torch.version.cuda if gpu else None, "python": sys.version.split()[0],
            "cpu_cores": os.cpu_count()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=["probe", "finetune", "ladder", "vit-probe", "all"], nargs="+",
                    default=["all"], help="one or more, run in this order (all: every one this machine can run)")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, help="also write the results as JSON (rewritten after every step)")
    ap.add_argument("--n-jobs", type=int, nargs="+", default=[0],
                    help="tlsweep side: one sweep per value, running this many jobs at once (joblib launcher; "
                         "0: one after another in one process)")
    ap.add_argument("--image-size", type=int, help="crop size for both sides (default: the weights'); for dry runs")
    ap.add_argument("--stop-at", type=float,
                    help="a Unix time: start no step or naive run that would end after it; what finished is kept")
    ap.add_argument("--smoke", action="store_true",
                    help="check the script: every workload (the GPU-sized ladder too), cut to one LR and seed per "
                         "strategy and 1 epoch; use with a small --data")
    args = ap.parse_args()
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    env = environment(device)
    print(f"device: {env['gpu'] or 'cpu'} ({env['cpu_cores']} CPU cores), torch {env['torch']}", flush=True)
    probe = list(itertools.product(["probe"], [1e-3, 3e-3, 1e-2] if gpu else [1e-3, 3e-3],
                                   range(5) if gpu else range(2)))
    workloads = {
        "probe": Workload(probe, 10 if gpu else 3, bound=True),
        "finetune": Workload([("finetune", 1e-3, 0)], 3),
        "ladder": Workload(list(itertools.product(["scratch", "probe", "partial", "finetune"], [1e-3], range(5))), 10),
        "vit-probe": Workload(probe, 10 if gpu else 3, model=(*VIT, vit_weights(Path(tempfile.mkdtemp()))),
                              against="uncached", bound=True),
    }
    chosen = list(workloads) if "all" in args.workload else list(dict.fromkeys(args.workload))
    if args.smoke:
        workloads = {name: dataclasses.replace(w, grid=[g for g in w.grid if g[1:] == w.grid[0][1:]], epochs=1)
                     for name, w in workloads.items()}
    elif "ladder" in chosen and not gpu:
        print("ladder: skipped, it is sized for a GPU (4 x 5 x 10 epochs would take hours on this CPU)")
        chosen.remove("ladder")
    report = {"device": str(device), "env": env, "rows": [], "sides": {}}

    def save():
        if args.out:
            args.out.write_text(json.dumps(report, indent=2))

    def left():
        return None if args.stop_at is None else args.stop_at - time.time()

    failed = False
    for name in chosen:
        w = workloads[name]
        grid, epochs = w.grid, w.epochs
        sides = report["sides"][name] = {"grid": len(grid), "epochs": epochs, "model": list(w.model), "tlsweep": [],
                                         w.against: [] if w.against == "uncached" else None}
        # tlsweep first: it is short, and a time limit then cuts the naive side, whose finished runs
        # still give its per-run cost
        for n in args.n_jobs:
            for label, extra, runs in [("tlsweep", (), sides["tlsweep"])] + (
                    [("tlsweep uncached", ("strategy.cache_features=false",), sides["uncached"])]
                    if w.against == "uncached" else []):
                if left() is not None and left() < 10:
                    runs.append({"n_jobs": n, "error": "skipped: no time left", "command": ""})
                    continue
                fast = tlsweep_sweep(args.data, grid, epochs, n, args.image_size, left(), w.model, extra)
                runs.append(fast)
                failed |= "error" in fast
                print(f"{name}: {label}, {n or 1} job(s) at a time: " +
                      (fast["error"] if "error" in fast else f"{fast['wall_s']:.1f} s"), flush=True)
                save()
        bound_ = None
        if w.bound:
            if left() is not None and left() < 10:
                bound_ = {"error": "skipped: no time left"}
            else:
                try:
                    bound_ = bound(args.data, grid, epochs, w.model, args.image_size)
                except Exception as err:  # the sweeps' numbers still stand without it
                    bound_, failed = {"error": f"{type(err).__name__}: {err}"}, True
            sides["bound"] = bound_
            print(f"{name}: " + (f"bound not measured: {bound_['error']}" if "error" in bound_ else
                                 bound_line(bound_, None).split(";")[0]), flush=True)
            save()
        if w.against == "uncached":
            report["rows"] += [summarize_uncached(name, c, u, bound_)
                               for c, u in zip(sides["tlsweep"], sides["uncached"])]
            save()
            continue

        def progress(runs):
            sides["naive"] = {"wall_s": sum(r["seconds"] for r in runs), "runs": runs, "planned": len(grid),
                              "complete": False, "in_progress": True}
            save()

        naive = sides["naive"] = naive_sweep(args.data, grid, epochs, device, args.image_size, args.stop_at, progress)
        print(f"{name}: naive side {naive['wall_s']:.1f} s for {len(naive['runs'])}/{len(grid)} runs, "
              f"accs {[round(r['final_val_acc'], 4) for r in naive['runs']]}", flush=True)
        if naive["runs"]:
            report["rows"] += [summarize(name, naive, fast, bound_) for fast in sides["tlsweep"]]
        save()
    report["bars"] = bars(report["rows"])
    print(bars_table(report["bars"]), flush=True)
    save()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
