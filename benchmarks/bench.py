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
imports, Hydra, the store's creation, closing the runs and exit. tlsweep's side runs first
(once per `--n-jobs` value), then the naive side; `--stop-at` cuts the naive side between
runs and estimates its full wall from the runs that finished.

    python benchmarks/bench.py --workload probe      # CPU-sized: 2 LRs x 2 seeds x 3 epochs
    python benchmarks/bench.py --workload finetune   # 1 seed x 3 epochs, per-epoch ratio
    python benchmarks/bench.py --workload ladder     # GPU: 4 strategies x 5 seeds x 10 epochs
    python benchmarks/bench.py --workload all --out bench.json
    python benchmarks/bench.py --workload ladder --n-jobs 0 4   # tlsweep sequential, then 4 jobs at once
    python benchmarks/bench.py --smoke --data <small ImageFolder>  # every code path, in seconds

With CUDA present, probe becomes 3 LRs x 5 seeds x 10 epochs. On a lent GPU, run
benchmarks/device/run.sh: it runs the probe and ladder workloads with a time limit.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torchvision import datasets, transforms

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tlsweep import models, strategies  # noqa: E402

DATA = (REPO / ".." / "shared" / "data" / "hymenoptera_data").resolve()


# --- the naive side ----------------------------------------------------------------------

def naive_run(root: Path, strategy: str, lr: float, seed: int, epochs: int, device: torch.device,
              image_size: int | None = None) -> dict:
    """One run of the tutorial loop. Returns final val acc and per-epoch seconds."""
    torch.manual_seed(seed)
    spec = models.get_spec("efficientnet_lite0")
    model, pp = models.build_model(spec, None if strategy == "scratch" else "DEFAULT")
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

def tlsweep_sweep(root, grid, epochs, n_jobs: int = 0, image_size=None, timeout=None) -> dict:
    strategies_ = sorted({s for s, _, _ in grid})
    lrs = sorted({lr for _, lr, _ in grid})
    seeds = sorted({seed for _, _, seed in grid})
    # data=hymenoptera checks its image counts; any other folder is a plain ImageFolder
    data = [] if Path(root).resolve() == DATA else ["data=imagefolder"]
    launcher = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}"] if n_jobs else []
    size = [f"data.image_size={image_size}"] if image_size else []
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "tlsweep", "-m", "model=efficientnet_lite0", *data, f"data.root={root}", *size,
               f"strategy={','.join(strategies_)}", f"optim.lr={','.join(map(str, lrs))}",
               f"seed={','.join(map(str, seeds))}", f"epochs={epochs}", f"cache_dir={tmp}/cache",
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
        epoch_s = [[m.value for m in client.get_metric_history(r, "epoch_seconds")] for r in df.run_id]
        fast = sorted(set(df["tags.tlsweep.fast.features"].str.split(":").str[0]))
        in_jobs = float((df["metrics.prep_seconds"] + df["metrics.train_seconds"]).sum())
        parts = {k.removeprefix("metrics.seconds/"): float(df[k].sum()) for k in df if k.startswith("metrics.seconds/")}
        runs = [{"strategy": s, "lr": float(lr), "seed": int(seed), "final_val_acc": a, "epoch_seconds": e}
                for s, lr, seed, a, e in zip(df["params.strategy.name"], df["params.optim.lr"], df["params.seed"],
                                             df["metrics.final_val_acc"], epoch_s)]
    return {"wall_s": wall, "n_jobs": n_jobs, "command": " ".join(cmd[1:]), "runs": runs, "features_cache": fast,
            # the sum of every job's time inside run(cfg), and its parts; with parallel jobs these are
            # job-seconds that overlap, so only a sequential sweep's wall splits into them
            "in_jobs_s": in_jobs, "job_parts_s": parts,
            "outside_jobs_s": wall - in_jobs if n_jobs <= 1 else None}


def _acc(runs) -> dict:
    v = [r["final_val_acc"] for r in runs]
    if not v:
        return {"mean": None, "std": None, "n": 0, "min": None, "max": None}
    return {"mean": statistics.mean(v), "std": statistics.stdev(v) if len(v) > 1 else None, "n": len(v),
            "min": min(v), "max": max(v)}


def _f(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def summarize(name: str, naive: dict, fast: dict) -> dict:
    """One row: tlsweep (one launcher setting) against the naive sweep."""
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
        "speedup_end_to_end": naive_wall / fast["wall_s"] if naive_wall else None,
        "naive_epoch_s": epoch(naive) if naive["runs"] else None, "tlsweep_epoch_s": epoch(fast),
        "naive_acc_mean_std": [_acc(naive["runs"])["mean"], _acc(naive["runs"])["std"]] if naive["runs"] else None,
        "tlsweep_acc_mean_std": [_acc(fast["runs"])["mean"], _acc(fast["runs"])["std"]],
        "acc_by_config": by_config, "tlsweep_feature_cache": fast["features_cache"]})
    speed = (f"{row['speedup_end_to_end']:.1f}x end to end" + ("" if naive["complete"] else
             f" (naive side estimated from {row['naive_runs']} runs)")) if naive_wall else "n/a (too few naive runs)"
    parts = ", ".join(f"{k} {v:.1f}" for k, v in fast["job_parts_s"].items())
    print(f"\n== {name}, tlsweep with {fast['n_jobs'] or 1} job(s) at a time"
          f"\n  naive   : {naive['wall_s']:8.1f} s wall for {row['naive_runs']} runs"
          f"\n  tlsweep : {fast['wall_s']:8.1f} s wall; inside the jobs {fast['in_jobs_s']:.1f} s ({parts})"
          f"\n  speedup : {speed}"
          + "".join(f"\n  acc {k}: naive {_f(v['naive']['mean'])} (n={v['naive']['n']}, "
                    f"{_f(v['naive']['min'])}..{_f(v['naive']['max'])}), tlsweep {_f(v['tlsweep']['mean'])} "
                    f"(n={v['tlsweep']['n']})" for k, v in by_config.items())
          + f"\n  command : python {row['tlsweep_command']}", flush=True)
    return row


def environment(device: torch.device) -> dict:
    import torchvision

    gpu = device.type == "cuda"
    return {"device": str(device), "gpu": torch.cuda.get_device_name() if gpu else None,
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "cuda": torch.version.cuda if gpu else None, "python": sys.version.split()[0],
            "cpu_cores": os.cpu_count()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=["probe", "finetune", "ladder", "all"], default="all")
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
    workloads = {
        "probe": (list(itertools.product(["probe"], [1e-3, 3e-3, 1e-2] if gpu else [1e-3, 3e-3],
                                         range(5) if gpu else range(2))), 10 if gpu else 3),
        "finetune": ([("finetune", 1e-3, 0)], 3),
        "ladder": (list(itertools.product(["scratch", "probe", "partial", "finetune"], [1e-3], range(5))), 10),
    }
    chosen = list(workloads) if args.workload == "all" else [args.workload]
    if args.smoke:
        workloads = {name: ([g for g in grid if g[1:] == grid[0][1:]], 1) for name, (grid, _) in workloads.items()}
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
        grid, epochs = workloads[name]
        sides = report["sides"][name] = {"grid": len(grid), "epochs": epochs, "tlsweep": [], "naive": None}
        # tlsweep first: it is short, and a time limit then cuts the naive side, whose finished runs
        # still give its per-run cost
        for n in args.n_jobs:
            if left() is not None and left() < 10:
                sides["tlsweep"].append({"n_jobs": n, "error": "skipped: no time left", "command": ""})
                continue
            fast = tlsweep_sweep(args.data, grid, epochs, n, args.image_size, left())
            sides["tlsweep"].append(fast)
            failed |= "error" in fast
            print(f"{name}: tlsweep, {n or 1} job(s) at a time: " +
                  (fast["error"] if "error" in fast else f"{fast['wall_s']:.1f} s"), flush=True)
            save()

        def progress(runs):
            sides["naive"] = {"wall_s": sum(r["seconds"] for r in runs), "runs": runs, "planned": len(grid),
                              "complete": False, "in_progress": True}
            save()

        naive = sides["naive"] = naive_sweep(args.data, grid, epochs, device, args.image_size, args.stop_at, progress)
        print(f"{name}: naive side {naive['wall_s']:.1f} s for {len(naive['runs'])}/{len(grid)} runs, "
              f"accs {[round(r['final_val_acc'], 4) for r in naive['runs']]}", flush=True)
        if naive["runs"]:
            report["rows"] += [summarize(name, naive, fast) for fast in sides["tlsweep"]]
        save()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
