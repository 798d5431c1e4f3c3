"""tlsweep vs the naive loop, same workload, one invocation.

The naive loop is the torchvision fine-tuning tutorial's: ImageFolder + PIL transforms +
DataLoader(num_workers=2), fp32, and every epoch a full forward pass through the frozen
backbone; a hand-rolled sweep runs it once per configuration in one process (no process
start, no tracking: generous to the naive side). It uses the same model, weights, head,
optimizer groups, schedule and augmentation recipe as tlsweep, and keeps frozen BatchNorm
layers in eval mode like tlsweep's default, so both sides compute the same thing.

tlsweep runs as users run it: `python -m tlsweep -m ...` in a subprocess, with a fresh
MLflow store and a cold cache, so process start, decoding, feature caching and MLflow
logging are all inside its wall time.

    python benchmarks/bench.py --workload probe      # CPU-sized: 2 LRs x 2 seeds x 3 epochs
    python benchmarks/bench.py --workload finetune   # 1 seed x 3 epochs, per-epoch ratio
    python benchmarks/bench.py --workload ladder     # GPU: 4 strategies x 5 seeds x 10 epochs
    python benchmarks/bench.py --workload all --out bench.json
    python benchmarks/bench.py --smoke --data <small ImageFolder>  # every code path, in seconds

With CUDA present, probe becomes 3 LRs x 5 seeds x 10 epochs. On a GPU with a 10-minute limit
per command, run `--workload probe` and `--workload ladder` as separate commands.
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

def naive_run(root: Path, strategy: str, lr: float, seed: int, epochs: int, device: torch.device) -> dict:
    """One run of the tutorial loop. Returns final val acc and per-epoch seconds."""
    torch.manual_seed(seed)
    spec = models.get_spec("efficientnet_lite0")
    model, pp = models.build_model(spec, None if strategy == "scratch" else "DEFAULT")
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


def naive_sweep(root, grid, epochs, device) -> dict:
    t0 = time.perf_counter()
    runs = [naive_run(root, s, lr, seed, epochs, device) for s, lr, seed in grid]
    return {"wall_s": time.perf_counter() - t0, "runs": runs}


# --- the tlsweep side ----------------------------------------------------------------------

def tlsweep_sweep(root, grid, epochs, launcher_args) -> dict:
    strategies_ = sorted({s for s, _, _ in grid})
    lrs = sorted({lr for _, lr, _ in grid})
    seeds = sorted({seed for _, _, seed in grid})
    # data=hymenoptera checks its image counts; any other folder is a plain ImageFolder
    data = [] if Path(root).resolve() == DATA else ["data=imagefolder"]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "tlsweep", "-m", "model=efficientnet_lite0", *data, f"data.root={root}",
               f"strategy={','.join(strategies_)}", f"optim.lr={','.join(map(str, lrs))}",
               f"seed={','.join(map(str, seeds))}", f"epochs={epochs}", f"cache_dir={tmp}/cache",
               "hydra.callbacks.tlsweep.report=false", *launcher_args]
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        t0 = time.perf_counter()
        p = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if p.returncode:
            raise SystemExit(f"tlsweep failed:\n{p.stderr[-4000:]}")
        import mlflow

        mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlruns/mlflow.db")
        df = mlflow.search_runs(experiment_names=["tlsweep"], filter_string="tags.`tlsweep.role` = 'job'")
        client = mlflow.MlflowClient()
        epoch_s = [[m.value for m in client.get_metric_history(r, "epoch_seconds")] for r in df.run_id]
        fast = sorted(set(df["tags.tlsweep.fast.features"].str.split(":").str[0]))
        # time inside run(cfg) of all jobs: the wall minus interpreter start, imports, Hydra and store setup
        in_jobs = float((df["metrics.prep_seconds"] + df["metrics.train_seconds"]).sum())
    return {"wall_s": wall, "in_jobs_s": in_jobs, "command": " ".join(cmd[1:]),
            "runs": [{"final_val_acc": a, "epoch_seconds": e} for a, e in zip(df["metrics.final_val_acc"], epoch_s)],
            "features_cache": fast}


def summarize(name: str, naive: dict, fast: dict) -> dict:
    def acc(side):
        v = [r["final_val_acc"] for r in side["runs"]]
        return statistics.mean(v), statistics.stdev(v) if len(v) > 1 else float("nan")

    def epoch(side):
        return statistics.mean(s for r in side["runs"] for s in r["epoch_seconds"])

    row = {"workload": name, "naive_wall_s": naive["wall_s"], "tlsweep_wall_s": fast["wall_s"],
           "tlsweep_in_jobs_s": fast["in_jobs_s"],
           "speedup_end_to_end": naive["wall_s"] / fast["wall_s"],
           "naive_epoch_s": epoch(naive), "tlsweep_epoch_s": epoch(fast),
           "speedup_per_epoch": epoch(naive) / epoch(fast),
           "naive_acc_mean_std": acc(naive), "tlsweep_acc_mean_std": acc(fast),
           "tlsweep_command": fast["command"], "tlsweep_feature_cache": fast["features_cache"]}
    print(f"\n== {name}\n  naive   : {naive['wall_s']:8.1f} s wall, {row['naive_epoch_s']:.2f} s/epoch, "
          f"final val acc {row['naive_acc_mean_std'][0]:.4f} ± {row['naive_acc_mean_std'][1]:.4f} (std, n={len(naive['runs'])})"
          f"\n  tlsweep : {fast['wall_s']:8.1f} s wall, {row['tlsweep_epoch_s']:.2f} s/epoch, "
          f"final val acc {row['tlsweep_acc_mean_std'][0]:.4f} ± {row['tlsweep_acc_mean_std'][1]:.4f} (std, n={len(fast['runs'])})"
          f"\n            ({fast['in_jobs_s']:.1f} s of it inside the jobs' run(cfg); the rest is process start, "
          f"imports, Hydra and creating the MLflow store)"
          f"\n  speedup : {row['speedup_end_to_end']:.1f}x end to end, {row['speedup_per_epoch']:.2f}x per epoch"
          + (" (epochs only: the cached frozen prefix ran once, before them)" if "on" in fast["features_cache"] else "")
          + f"\n  command : python {row['tlsweep_command']}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=["probe", "finetune", "ladder", "all"], default="all")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, help="also write the results as JSON")
    ap.add_argument("--n-jobs", type=int, default=0, help="tlsweep side: run this many jobs at once (joblib launcher)")
    ap.add_argument("--smoke", action="store_true",
                    help="check the script: every workload (the GPU-sized ladder too), cut to one LR and seed per "
                         "strategy and 1 epoch; use with a small --data")
    args = ap.parse_args()
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    launcher = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.n_jobs}"] if args.n_jobs else []
    print(f"device: {torch.cuda.get_device_name() if gpu else 'cpu'} ({os.cpu_count()} CPU cores), "
          f"torch {torch.__version__}", flush=True)
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
    rows = []
    for name in chosen:
        grid, epochs = workloads[name]
        naive = naive_sweep(args.data, grid, epochs, device)
        print(f"{name}: naive side {naive['wall_s']:.1f} s, accs {[r['final_val_acc'] for r in naive['runs']]}", flush=True)
        fast = tlsweep_sweep(args.data, grid, epochs, launcher)
        rows.append(summarize(name, naive, fast))
    if args.out:
        args.out.write_text(json.dumps({"device": str(device), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
