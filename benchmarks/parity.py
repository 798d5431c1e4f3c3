"""bf16 against fp32 on the same runs: does bf16 autocast change what a study concludes?

EfficientNet-Lite0 on hymenoptera and on scikit-learn's digits (the flowchart's near and far datasets), probe and
finetune, 3 seeds, each run once with bf16=true and once with bf16=false: one tlsweep multirun per dataset, into
one SQLite store (a rerun resumes: finished runs are skipped). It then prints, per dataset and strategy, the
paired gap (bf16 minus fp32, same seed) of the final scored accuracy in points, its mean and 95% t-interval over
the seeds. Parity: the interval includes 0 and |mean| <= 1 point.

    python benchmarks/parity.py                                  # the full table (about half an hour on 2 cores)
    python benchmarks/parity.py --smoke --data <small ImageFolder>  # 1 epoch, tiny images: the script works

bf16=true fails on a device without bf16 units (a CPU without AMX-BF16 or AVX512-BF16): parity is measured where
bf16=auto would turn it on.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = (REPO / ".." / "shared" / "data" / "hymenoptera_data").resolve()
STORE = Path("/work/results/bf16-parity")
PARITY_POINTS = 1.0  # |mean gap| allowed, in accuracy points


def sweep(data: str, store: Path, seeds: int, epochs: int, extra: list[str]) -> None:
    cmd = [sys.executable, "-m", "tlsweep", "-m", "model=efficientnet_lite0", *extra,
           "strategy=probe,finetune", f"seed={','.join(map(str, range(seeds)))}", "bf16=true,false",
           f"epochs={epochs}", f"tracking.uri=sqlite:///{store}/mlflow.db", f"tracking.sweep_name=bf16-parity-{data}",
           f"cache_dir={store}/cache", "hydra.callbacks.tlsweep.report=false"]
    print("$ python " + " ".join(cmd[1:]), flush=True)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    subprocess.run(cmd, cwd=store, env=env, check=True)


def gaps(store: Path) -> list[dict]:
    """Per (dataset, strategy): the seeds' paired gaps, bf16 minus fp32, in accuracy points."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    exp = client.get_experiment_by_name("tlsweep")
    runs = client.search_runs([exp.experiment_id], "tags.`tlsweep.role` = 'job' and attributes.status = 'FINISHED'")
    acc: dict[tuple, float] = {}
    for r in runs:
        p, m = r.data.params, r.data.metrics
        final = next(v for k, v in m.items() if k.startswith("final_") and k.endswith("_acc"))  # val or test
        acc[(p["data.name"], p["strategy.name"], int(p["seed"]), p["bf16"] == "True")] = 100 * final
    rows = []
    for data, strategy in sorted({k[:2] for k in acc}):
        seeds = sorted(s for d, st, s, b in acc if (d, st, b) == (data, strategy, True)
                       and (data, strategy, s, False) in acc)
        g = [acc[(data, strategy, s, True)] - acc[(data, strategy, s, False)] for s in seeds]
        rows.append({"data": data, "strategy": strategy, "seeds": seeds, "gaps": g,
                     "fp32": statistics.mean(acc[(data, strategy, s, False)] for s in seeds) if seeds else None,
                     "bf16": statistics.mean(acc[(data, strategy, s, True)] for s in seeds) if seeds else None,
                     **interval(g)})
    return rows


def interval(g: list[float]) -> dict:
    """Mean and 95% t-interval of paired gaps."""
    if len(g) < 2:
        return {"mean": g[0] if g else None, "low": None, "high": None, "parity": None}
    from scipy.stats import t

    mean, half = statistics.mean(g), t.ppf(0.975, len(g) - 1) * statistics.stdev(g) / math.sqrt(len(g))
    return {"mean": mean, "low": mean - half, "high": mean + half,
            "parity": mean - half <= 0 <= mean + half and abs(mean) <= PARITY_POINTS}


def table(rows: list[dict]) -> str:
    lines = ["| data | strategy | seeds | fp32 acc | bf16 acc | gap bf16 - fp32 (points) | 95% CI | parity |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = "n/a" if r["low"] is None else f"[{r['low']:+.2f}, {r['high']:+.2f}]"
        parity = "n/a" if r["parity"] is None else ("yes" if r["parity"] else "NO")
        lines.append(f"| {r['data']} | {r['strategy']} | {len(r['seeds'])} | {r['fp32']:.2f} | {r['bf16']:.2f} | "
                     f"{r['mean']:+.2f} ({', '.join(f'{x:+.2f}' for x in r['gaps'])}) | {ci} | {parity} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, default=STORE, help="the folder of the SQLite store and the feature cache")
    ap.add_argument("--hymenoptera", type=Path, default=DATA, help="the folder that holds hymenoptera's train/, val/")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--smoke", type=Path, metavar="FOLDER",
                    help="check the script: this small ImageFolder instead of both datasets, 32 px, 1 epoch, 2 seeds")
    args = ap.parse_args()
    args.store.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        sweep("smoke", args.store, 2, 1, ["data=imagefolder", f"data.root={args.smoke}", "data.image_size=32",
                                          "data.num_workers=0", "batch_size=4"])
    else:
        sweep("hymenoptera", args.store, args.seeds, args.epochs,
              ["data=hymenoptera", f"data.root={args.hymenoptera}", "data.download=false"])
        sweep("digits", args.store, args.seeds, args.epochs, ["data=digits"])
    print(table(gaps(args.store)), flush=True)


if __name__ == "__main__":
    main()
