"""tlsweep vs the naive loop, and against the workload's bound, same workload, one invocation.

The naive loop is the torchvision fine-tuning tutorial's (benchmarks/naive.py): ImageFolder + PIL transforms +
DataLoader(num_workers=2), fp32, and every epoch a full forward pass through the frozen backbone, with the
same model, weights, head, optimizer groups, schedule and augmentation recipe as tlsweep.

tlsweep runs as users run it: `python -m tlsweep -m ...` in a subprocess, with a fresh
MLflow store and a cold cache, so process start, decoding, feature caching and MLflow
logging are all inside its wall time. Each job records where its time went (`seconds/*`
metrics: MLflow, model, data, feature pass, training); the rest of the wall is process start,
imports, Hydra, the store's creation, closing the runs and exit: the sweep's fixed cost, which it logs
on its parent run (`sweep/around_jobs_seconds`) and the summary prints beside the speedup (its report
is off: the naive side makes none). After the last workload a table puts each ratio beside its bar
(probe ≥ 10x end to end, fine-tune ≥ 1.25x per epoch, the GPU ladder ≥ 10x). tlsweep's side runs first
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

The bound (benchmarks/bounds.py): what no implementation of the workload can avoid, timed alone with the
sweep's own model, crop, batch size, channels_last and precision, on inputs made beforehand. For probe and
vit-probe, the frozen backbone's forwards over the images the sweep trains and evaluates on, once each;
sweep/bound is the sweep's end-to-end wall over it. For the fine-tune, its train steps (forward, backward,
optimizer step) over the images each epoch trains on, plus its val forwards, every epoch; tlsweep/bound is
given per epoch (an epoch of the run over an epoch of the bound) and end to end. Close to 1.0x, a workload
has nothing left to win; what is above it is the fixed costs and everything that is not the unavoidable work.

`--model` runs the probe, fine-tune and ladder workloads on resnet50 or vit_small_patch16_224 (random init)
instead of EfficientNet-Lite0; `--bf16 true|false|auto` sets tlsweep's precision (and its bounds'); the naive
side stays the tutorial's fp32 loop, so in bf16 tlsweep/naive holds the bf16 gain too.

    python benchmarks/bench.py --workload finetune --model resnet50 --bf16 true --epochs 2

With CUDA present, probe and vit-probe become 3 LRs x 5 seeds x 10 epochs. On a lent GPU, run
benchmarks/device/run.sh: it runs the probe and ladder workloads with a time limit.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks import naive as tutorial  # noqa: E402  (its naive_sweep: patched in tests)
from benchmarks.bounds import (DATA, LITE0, bound, bound_line, data_overrides, finetune_bound,  # noqa: E402
                               finetune_bound_line)
from benchmarks.summary import bars, bars_table, summarize, summarize_uncached  # noqa: E402

VIT = ("model=timm", "model.arch=vit_tiny_patch16_224")  # + model.weights=<a random-init checkpoint file>
# --model: the probe, fine-tune and ladder workloads' model, as the sweep's overrides (the naive side composes
# the same); the larger two with random init (no network here), as timm builds them
MODELS = {"efficientnet_lite0": LITE0,  # timm's tf_efficientnet_lite0 with its packaged ImageNet weights
          "resnet50": ("model=resnet50", "model.weights=null"),
          "vit_small_patch16_224": ("model=timm", "model.arch=vit_small_patch16_224", "model.weights=null")}


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
    bound: str | None = None  # also time what the workload cannot avoid: "probe" or "finetune" (benchmarks/bounds.py)


# --- the tlsweep side ----------------------------------------------------------------------

def tlsweep_sweep(root, grid, epochs, n_jobs: int = 0, image_size=None, timeout=None, model=LITE0,
                  extra=()) -> dict:
    """`python -m tlsweep -m` over the grid with `model` (overrides) and `extra` overrides, in a fresh
    temporary directory: a new MLflow store and a cold cache."""
    strategies_ = sorted({s for s, _, _ in grid})
    lrs = sorted({lr for _, lr, _ in grid})
    seeds = sorted({seed for _, _, seed in grid})
    launcher = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}"] if n_jobs else []
    size = [f"data.image_size={image_size}"] if image_size else []
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "tlsweep", "-m", *model, *data_overrides(root), *size,
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
            "bf16": sorted(set(df["tags.tlsweep.fast.bf16"])),  # what its jobs ran in, and why
            # the sum of every job's time inside run(cfg), and its parts; with parallel jobs these are
            # job-seconds that overlap, so only a sequential sweep's wall splits into them
            "in_jobs_s": in_jobs, "job_parts_s": parts,
            "outside_jobs_s": wall - in_jobs if n_jobs <= 1 else None,
            "fixed_cost_s": None if fixed is None or fixed != fixed else float(fixed)}


def environment(device: torch.device) -> dict:
    import platform

    import torchvision

    from tlsweep.runtime import cpu_bf16_units

    gpu = device.type == "cuda"
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else \
        platform.processor()
    return {"device": str(device), "gpu": torch.cuda.get_device_name() if gpu else None,
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "cuda": torch.version.cuda if gpu else None, "python": sys.version.split()[0],
            "cpu": cpu, "cpu_cores": os.cpu_count(), "cpu_bf16_units": list(cpu_bf16_units())}


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
    ap.add_argument("--model", choices=list(MODELS), default="efficientnet_lite0",
                    help="the probe, fine-tune and ladder workloads' model (resnet50 and vit_small: random init)")
    ap.add_argument("--bf16", choices=["auto", "true", "false"],
                    help="tlsweep's side and the bounds run with bf16=<this> (default: the config's, auto); the "
                         "naive side is the tutorial's fp32 loop whatever this says")
    ap.add_argument("--epochs", type=int, help="the fine-tune workload's epochs (default 3)")
    ap.add_argument("--smoke", action="store_true",
                    help="check the script: every workload (the GPU-sized ladder too), cut to one LR and seed per "
                         "strategy and 1 epoch; use with a small --data")
    args = ap.parse_args()
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    env = environment(device)
    print(f"device: {env['gpu'] or 'cpu'} ({env['cpu']}, {env['cpu_cores']} cores, bf16 units: "
          f"{', '.join(env['cpu_bf16_units']) or 'none'}), torch {env['torch']}", flush=True)
    model = MODELS[args.model]
    precision = (f"bf16={args.bf16}",) if args.bf16 else ()
    probe = list(itertools.product(["probe"], [1e-3, 3e-3, 1e-2] if gpu else [1e-3, 3e-3],
                                   range(5) if gpu else range(2)))
    workloads = {
        "probe": Workload(probe, 10 if gpu else 3, model=model, bound="probe"),
        "finetune": Workload([("finetune", 1e-3, 0)], args.epochs or 3, model=model, bound="finetune"),
        "ladder": Workload(list(itertools.product(["scratch", "probe", "partial", "finetune"], [1e-3], range(5))), 10,
                           model=model),
        "vit-probe": Workload(probe, 10 if gpu else 3, model=(*VIT, vit_weights(Path(tempfile.mkdtemp()))),
                              against="uncached", bound="probe"),
    }
    chosen = list(workloads) if "all" in args.workload else list(dict.fromkeys(args.workload))
    if args.smoke:
        workloads = {name: dataclasses.replace(w, grid=[g for g in w.grid if g[1:] == w.grid[0][1:]], epochs=1)
                     for name, w in workloads.items()}
    elif "ladder" in chosen and not gpu:
        print("ladder: skipped, it is sized for a GPU (4 x 5 x 10 epochs would take hours on this CPU)")
        chosen.remove("ladder")
    report = {"device": str(device), "env": env, "date": time.strftime("%Y-%m-%d %H:%M %Z"), "model": args.model,
              "bf16": args.bf16 or "the config's (auto)", "argv": sys.argv[1:], "rows": [], "sides": {}}

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
            for label, extra, runs in [("tlsweep", precision, sides["tlsweep"])] + (
                    [("tlsweep uncached", ("strategy.cache_features=false", *precision), sides["uncached"])]
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
                    bound_ = {"probe": bound, "finetune": finetune_bound}[w.bound](
                        args.data, grid, epochs, w.model, args.image_size, precision)
                except Exception as err:  # the sweeps' numbers still stand without it
                    bound_, failed = {"error": f"{type(err).__name__}: {err}"}, True
            sides["bound"] = bound_
            line = finetune_bound_line(bound_, None, None) if bound_.get("kind") == "finetune" else \
                bound_line(bound_, None) if "error" not in bound_ else f"bound not measured: {bound_['error']}"
            print(f"{name}: " + line.split(";")[0], flush=True)
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

        naive = sides["naive"] = tutorial.naive_sweep(args.data, grid, epochs, device, args.image_size, args.stop_at,
                                                   progress, w.model)
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
