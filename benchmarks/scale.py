"""tlsweep as the data grows: a generated ImageFolder of N images, and one probe run on it, timed, with its peak memory.

    python benchmarks/scale.py make --images 100000 --root /tmp/scale-100k      # once per size (fixed seed)
    python benchmarks/scale.py probe --root /tmp/scale-100k --budget-mb 4096 1000 --out scale.json

`make` writes 160-px JPEGs in 10 classes, 90% train / 10% val. Each class has its own mean colour and stripe
direction under per-image noise, so a linear probe on frozen features can learn them and an accuracy near chance
means something broke. The same seed makes the same folder.

`probe` runs `python -m tlsweep model=efficientnet_lite0 data=imagefolder data.root=ROOT strategy=probe epochs=1`
once per budget (`data.cache_budget_mb`), each with a fresh store and cache under a temporary folder, and records
the wall time, the child's peak RSS (getrusage of the children: the job is the only one), the run's decode and
feature-cache tags and its accuracy. The images stay out of the repository.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
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


def probe(root: Path, budget_mb: float, extra: list[str]) -> dict:
    work = Path(tempfile.mkdtemp(prefix="tlsweep-scale-"))
    cmd = [sys.executable, "-m", "tlsweep", "model=efficientnet_lite0", "data=imagefolder", f"data.root={root}",
           "strategy=probe", "epochs=1", f"data.cache_budget_mb={budget_mb}", f"cache_dir={work / 'cache'}",
           f"tracking.uri=sqlite:///{work / 'mlflow.db'}", *extra]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    import mlflow

    run = mlflow.MlflowClient(f"sqlite:///{work / 'mlflow.db'}").search_runs(
        [mlflow.MlflowClient(f"sqlite:///{work / 'mlflow.db'}").get_experiment_by_name("tlsweep").experiment_id])[0]
    images = sum(1 for _ in root.rglob("*.jpg"))
    return {"images": images, "budget_mb": budget_mb, "wall_s": round(wall, 1),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 2),
            "decode": run.data.tags.get("tlsweep.fast.decode_once"), "features": run.data.tags.get("tlsweep.fast.features"),
            "final_val_acc": run.data.metrics.get("final_val_acc"), "command": " ".join(cmd[1:4] + cmd[5:8])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    m = sub.add_parser("make")
    m.add_argument("--images", type=int, required=True)
    m.add_argument("--root", type=Path, required=True)
    p = sub.add_parser("probe")
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--budget-mb", type=float, nargs="+", default=[4096])
    p.add_argument("--out", type=Path)
    p.add_argument("overrides", nargs="*", help="more key=value for the run")
    args = parser.parse_args()
    if args.what == "make":
        return make(args.images, args.root)
    rows = []
    for budget in args.budget_mb:  # one process each: RUSAGE_CHILDREN's peak is the largest child's so far
        rows.append(probe(args.root, budget, args.overrides))
        print(json.dumps(rows[-1]), flush=True)
        if len(args.budget_mb) > 1:
            print("(peak RSS is the largest child's so far: run one budget per invocation to read each alone)")
    if args.out:
        args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                        "machine": f"{platform.processor() or platform.machine()}, "
                                                   f"{__import__('os').cpu_count()} cores",
                                        "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
