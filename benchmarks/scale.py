"""tlsweep as the data grows: a generated ImageFolder of N images, and one probe run on it, timed, with its peak memory.

    python benchmarks/scale.py make --images 100000 --root /tmp/scale-100k      # once per size (fixed seed)
    python benchmarks/scale.py probe --root /tmp/scale-100k --budget-mb 4096 --out benchmarks/results/scale.json
    python benchmarks/scale.py sweep --root /tmp/scale-100k --out benchmarks/results/scale.json data.image_size=64
    python benchmarks/scale.py stream --root /tmp/scale-20k --budget-mb 1 --out benchmarks/results/scale.json \
        data.image_size=64

ROOT may also be a real dataset's folder from benchmarks/advisor/data/ (its source.json names it in the row).
`make` writes 160-px JPEGs in 10 classes, 90% train / 10% val. Each class has its own mean colour and stripe
direction under per-image noise, so a linear probe on frozen features can learn them and an accuracy near chance
means something broke. The same seed makes the same folder.

`probe` runs `python -m tlsweep model=efficientnet_lite0 data=imagefolder data.root=ROOT strategy=probe epochs=1`
once per budget (`data.cache_budget_mb`), each with a fresh store and cache under a temporary folder, and records
the wall time, the child's peak RSS (getrusage of the children: the job is the only one), the run's decode and
feature-cache tags and its accuracy. `sweep` runs the 3-LR x 3-seed x 10-epoch probe sweep and sets its wall beside
its parts: the data and feature passes (paid once, by the first job) plus every job's head training. `stream` runs
one fine-tune epoch, on images over the budget (DataLoader workers decode them every epoch) or under it (decoded
once, before the epoch), with its wall and peak memory, and sets the epoch beside its streamed bound: decoding and
transforming the epoch's images with every core, plus the train steps and val forwards on inputs made beforehand
(benchmarks/bounds.py). With `--out`, each row replaces the row of the same workload, size,
budget and command in the result file (docs/speed.md renders it). The images stay out of the repository.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES, SIDE, SEED = 10, 160, 0


def _write(args: tuple[Path, int, int]) -> None:
    path, label, index = args
    rng = np.random.default_rng([SEED, index])
    base = np.array([(label * 37) % 256, (label * 91 + 60) % 256, (label * 53 + 120) % 256], dtype=np.float32)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    angle = np.pi * label / CLASSES
    stripes = 40 * np.sin((np.cos(angle) * xx + np.sin(angle) * yy) / 6)[..., None]
    img = base + stripes + rng.normal(0, 35, (SIDE, SIDE, 3))
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)


def make(images: int, root: Path) -> None:
    jobs = []
    for i in range(images):
        label = i % CLASSES
        split = "val" if (i // CLASSES) % 10 == 9 else "train"
        folder = root / split / f"c{label}"
        folder.mkdir(parents=True, exist_ok=True)
        jobs.append((folder / f"{i:06d}.jpg", label, i))
    with ProcessPoolExecutor() as pool:
        list(pool.map(_write, jobs, chunksize=256))
    print(f"wrote {images:,} images under {root}")


def _measured(cmd: list[str], cwd: Path) -> dict:
    """Run `cmd`; its wall time and its peak memory: resident (what getrusage reports, mapped file pages included)
    and anonymous (the process's own memory, sampled every 0.2 s from /proc: file pages it maps, such as memory-
    mapped features, are page cache the kernel can drop, and are left out)."""
    start = time.perf_counter()
    child = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {"anon": 0}

    def sample() -> None:
        while child.poll() is None:
            try:
                for line in open(f"/proc/{child.pid}/status"):
                    if line.startswith("RssAnon:"):
                        peak["anon"] = max(peak["anon"], int(line.split()[1]))
            except OSError:
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    out, err = child.communicate()
    wall = time.perf_counter() - start
    if child.returncode:
        raise SystemExit(err[-3000:])
    return {"wall_s": round(wall, 1),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 2),
            "peak_anon_gb": round(peak["anon"] / 2**20, 2)}


def probe(root: Path, budget_mb: float, extra: list[str]) -> dict:
    work = Path(tempfile.mkdtemp(prefix="tlsweep-scale-"))
    cmd = [sys.executable, "-m", "tlsweep", "model=efficientnet_lite0", "data=imagefolder", f"data.root={root}",
           "strategy=probe", "epochs=1", f"data.cache_budget_mb={budget_mb}", f"cache_dir={work / 'cache'}",
           f"tracking.uri=sqlite:///{work / 'mlflow.db'}", *extra]
    measured = _measured(cmd, work)
    import mlflow

    run = mlflow.MlflowClient(f"sqlite:///{work / 'mlflow.db'}").search_runs(
        [mlflow.MlflowClient(f"sqlite:///{work / 'mlflow.db'}").get_experiment_by_name("tlsweep").experiment_id])[0]
    images = sum(1 for _ in root.rglob("*.jpg"))
    return {"images": images, "budget_mb": budget_mb, **measured,
            "decode": run.data.tags.get("tlsweep.fast.decode_once"), "features": run.data.tags.get("tlsweep.fast.features"),
            "final_val_acc": run.data.metrics.get("final_val_acc"),
            "command": "python " + " ".join(c for c in cmd[1:] if not c.startswith(("cache_dir=", "tracking.uri=")))}


def sweep(root: Path, budget_mb: float, extra: list[str]) -> dict:
    """The 3-LR x 3-seed x 10-epoch probe sweep, against its own parts: the feature passes (one per cached view,
    paid by the first job) plus the heads' training (every job's), which no implementation can skip."""
    work = Path(tempfile.mkdtemp(prefix="tlsweep-scale-"))
    cmd = [sys.executable, "-m", "tlsweep", "-m", "model=efficientnet_lite0", "data=imagefolder", f"data.root={root}",
           "strategy=probe", "optim.lr=1e-3,3e-3,1e-2", "seed=0,1,2", "epochs=10", f"data.cache_budget_mb={budget_mb}",
           f"cache_dir={work / 'cache'}", f"tracking.uri=sqlite:///{work / 'mlflow.db'}", "hydra.callbacks.tlsweep.report=false",
           *extra]
    measured = _measured(cmd, work)
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tlsweep").experiment_id])
    jobs = [r for r in runs if r.data.tags.get("tlsweep.role") == "job"]
    m = [r.data.metrics for r in jobs]
    passes = sum(x.get("seconds/features", 0) + x.get("seconds/data", 0) for x in m)
    heads = sum(x.get("train_seconds", 0) for x in m)
    return {"images": sum(1 for _ in root.rglob("*.jpg")), "budget_mb": budget_mb, "jobs": len(jobs), **measured,
            "passes_s": round(passes, 1), "heads_s": round(heads, 1),
            "wall_over_parts": round(measured["wall_s"] / (passes + heads), 2),
            "features": sorted({r.data.tags.get("tlsweep.fast.features", "")[:160] for r in jobs}),
            "final_val_acc": [round(x.get("final_val_acc", float("nan")), 4) for x in m],
            "command": "python " + " ".join(c for c in cmd[1:] if not c.startswith(("cache_dir=", "tracking.uri=")))}


def stream(root: Path, budget_mb: float, extra: list[str]) -> dict:
    """One fine-tune epoch (the images over the budget: DataLoader workers decode them every epoch; under it:
    decoded once before the epoch), against the streamed bound: decoding and transforming the epoch's images with
    every core, plus the train steps and val forwards on inputs made beforehand (benchmarks/bounds.py), each
    timed alone."""
    sys.path.insert(0, str(Path(__file__).parent))
    from bounds import finetune_bound

    from tlsweep.data import pipeline as datasets
    from tlsweep.data.images import load_rgb

    work = Path(tempfile.mkdtemp(prefix="tlsweep-scale-"))
    overrides = ["strategy=finetune", "epochs=1", f"data.cache_budget_mb={budget_mb}", *extra]
    cmd = [sys.executable, "-m", "tlsweep", "model=efficientnet_lite0", "data=imagefolder", f"data.root={root}",
           *overrides, f"cache_dir={work / 'cache'}", f"tracking.uri=sqlite:///{work / 'mlflow.db'}"]
    measured = _measured(cmd, work)  # the run's own wall and peak memory, before the bound's work in this process
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("tlsweep").experiment_id])[0]
    epoch_s = run.data.metrics["epoch_seconds"]
    steps = finetune_bound(root, [("finetune", 1e-3, 0)], 1, ("model=efficientnet_lite0",),
                           extra=[f"data.cache_budget_mb={budget_mb}", *extra])
    from bounds import _setup

    cfg, _, _, spec, data = _setup(root, ("model=efficientnet_lite0",), extra)
    pp = spec.preprocess.with_crop(cfg.data.image_size)
    train_t, eval_t = datasets.train_transform(pp), datasets.eval_transform(pp)
    jobs = [(p, train_t) for p in data.train.items] + [(p, eval_t) for s in data.eval_splits() for p in s.items]
    from concurrent.futures import ThreadPoolExecutor

    start = time.perf_counter()
    with ThreadPoolExecutor(os.cpu_count()) as pool:  # PIL and torch release the GIL: every core decodes
        list(pool.map(lambda job: job[1](load_rgb(job[0])).sum(), jobs))
    decode_s = time.perf_counter() - start
    bound_s = decode_s + steps["per_epoch_s"]
    return {"images": len(jobs), "budget_mb": budget_mb, **measured, "epoch_s": round(epoch_s, 1),
            "decode_s": round(decode_s, 1), "steps_s": round(steps["per_epoch_s"], 1), "bound_s": round(bound_s, 1),
            "epoch_over_bound": round(epoch_s / bound_s, 2), "ms_per_image": round(1000 * epoch_s / len(jobs), 2),
            "decode": run.data.tags.get("tlsweep.fast.decode_once"),
            "command": "python " + " ".join(c for c in cmd[1:] if not c.startswith(("cache_dir=", "tracking.uri=")))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    m = sub.add_parser("make")
    m.add_argument("--images", type=int, required=True)
    m.add_argument("--root", type=Path, required=True)
    for name in ("probe", "sweep", "stream"):
        w = sub.add_parser(name)
        w.add_argument("--root", type=Path, required=True)
        w.add_argument("--budget-mb", type=float, nargs="+", default=[4096])
        w.add_argument("--out", type=Path)
        w.add_argument("overrides", nargs="*", help="more key=value for the run")
    args = parser.parse_args()
    if args.what == "make":
        return make(args.images, args.root)
    rows = []
    source = args.root / "source.json"  # a real dataset's folder (benchmarks/advisor/data/) says what it holds
    data = json.loads(source.read_text())["dataset"] if source.exists() else "generated"
    for budget in args.budget_mb:  # one process each: RUSAGE_CHILDREN's peak is the largest child's so far
        row = {"kind": args.what, "data": data, **{"probe": probe, "sweep": sweep, "stream": stream}[args.what](
            args.root, budget, args.overrides), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{_cpu()}, {os.cpu_count()} cores, {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB"}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if len(args.budget_mb) > 1:
            print("(peak RSS is the largest child's so far: run one budget per invocation to read each alone)")
    if args.out:  # the result file: a new measurement replaces the row of the same workload, size and budget
        same = lambda a, b: all(a.get(k, "generated") == b.get(k, "generated")  # noqa: E731
                                for k in ("kind", "data", "images", "budget_mb", "command"))
        old = json.loads(args.out.read_text())["rows"] if args.out.exists() else []
        kept = [r for r in old if not any(same(r, n) for n in rows)] + rows
        kept.sort(key=lambda r: (["probe", "sweep", "stream"].index(r["kind"]), r.get("data", "generated") != "generated",
                                 r["images"], -r["budget_mb"]))
        args.out.write_text(json.dumps({"rows": kept}, indent=1) + "\n")


def _cpu() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


if __name__ == "__main__":
    main()
