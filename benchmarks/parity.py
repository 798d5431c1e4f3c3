"""bf16 against fp32 on the same runs: does bf16 autocast change what a study concludes?

EfficientNet-Lite0 on hymenoptera and on scikit-learn's digits (the flowchart's near and far datasets), probe and
finetune, each run once with bf16=true and once with bf16=false (3 seeds on hymenoptera, 10 on digits, where a run
costs less): one tlsweep multirun per dataset, into one SQLite store (a rerun resumes: finished runs are skipped).
It then prints, per dataset and strategy, the paired gap (bf16 minus fp32, same seed) of the final scored accuracy
in points, its mean and 95% t-interval over the seeds. Parity: the interval includes 0 and |mean| <= 1 point.

How large a gap mere float rounding makes: the digits fine-tune also runs a third time in fp32 with
channels_last=false (oneDNN's NCHW kernels: the same function, rounded in another order). Its gap to the
channels_last fp32 run is the noise floor a precision change is judged against: a study whose runs swing that far
under a reordering of fp32 sums cannot resolve 1 point with a few seeds, whatever the precision.

    python benchmarks/parity.py --out benchmarks/results/bf16-parity.json   # the full table (about 40 min on 2 cores)
    python benchmarks/parity.py --smoke <small ImageFolder>                  # 1 epoch, tiny images: the script works

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
STORE = REPO.parent / "results" / "bf16-parity"  # beside the clone: the runs stay out of the repository
PARITY_POINTS = 1.0  # |mean gap| allowed, in accuracy points
# the arms a run belongs to, by its (bf16, channels_last) params; a row compares the first of a pair to the second
ARMS = {("True", "True"): "bf16", ("False", "True"): "fp32", ("False", "False"): "fp32 NCHW"}
PAIRS = (("bf16", "fp32"), ("fp32 NCHW", "fp32"))


def sweep(name: str, store: Path, seeds: int, epochs: int, extra: list[str],
          arms: tuple[str, ...] = ("bf16=true,false",), strategies: str = "probe,finetune") -> None:
    cmd = [sys.executable, "-m", "tlsweep", "-m", "model=efficientnet_lite0", *extra,
           f"strategy={strategies}", f"seed={','.join(map(str, range(seeds)))}", *arms,
           f"epochs={epochs}", f"tracking.uri=sqlite:///{store}/mlflow.db", f"tracking.sweep_name=bf16-parity-{name}",
           f"cache_dir={store}/cache", "hydra.callbacks.tlsweep.report=false"]
    print("$ python " + " ".join(cmd[1:]), flush=True)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    subprocess.run(cmd, cwd=store, env=env, check=True)


def final_acc(metrics: dict) -> tuple[str, float]:
    """The run's final scored accuracy: on test where the data has a test split, else on val."""
    key = next(k for k in ("final_test_acc", "final_val_acc") if k in metrics)
    return key, metrics[key]


def gaps(store: Path) -> list[dict]:
    """Per (dataset, strategy, pair of arms): the seeds' paired gaps, first arm minus second, in accuracy points;
    beside them the paired gaps of the last epoch's val loss and the ratio of the training seconds."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    exp = client.get_experiment_by_name("tlsweep")
    runs = client.search_runs([exp.experiment_id], "tags.`tlsweep.role` = 'job' and attributes.status = 'FINISHED'")
    acc: dict[tuple, float] = {}
    loss: dict[tuple, float] = {}
    seconds: dict[tuple, float] = {}
    metric: dict[tuple, str] = {}
    for r in runs:
        p, m = r.data.params, r.data.metrics
        key = (p["data.name"], p["strategy.name"], int(p["seed"]), ARMS[(p["bf16"], p["channels_last"])])
        metric[key[:2]], final = final_acc(m)
        acc[key], loss[key], seconds[key] = 100 * final, m["val_loss"], m["seconds/train"]
    rows = []
    for data, strategy in sorted({k[:2] for k in acc}):
        for first, second in PAIRS:
            seeds = sorted(s for d, st, s, a in acc if (d, st, a) == (data, strategy, first)
                           and (data, strategy, s, second) in acc)
            if not seeds:
                continue
            pair = [((data, strategy, s, first), (data, strategy, s, second)) for s in seeds]
            g = [acc[a] - acc[b] for a, b in pair]
            rows.append({"data": data, "strategy": strategy, "compare": f"{first} - {second}",
                         "metric": metric[(data, strategy)], "seeds": seeds, "gaps": g,
                         "first_acc": statistics.mean(acc[a] for a, _ in pair),
                         "second_acc": statistics.mean(acc[b] for _, b in pair),
                         "val_loss_gaps": [loss[a] - loss[b] for a, b in pair],
                         "second_val_loss": statistics.mean(loss[b] for _, b in pair),
                         "train_seconds_ratio": sum(seconds[a] for a, _ in pair) / sum(seconds[b] for _, b in pair),
                         **interval(g)})
    return rows


def interval(g: list[float]) -> dict:
    """Mean and 95% t-interval of paired gaps."""
    if len(g) < 2:
        return {"mean": g[0] if g else None, "low": None, "high": None, "parity": None}
    from scipy.stats import t

    mean, half = statistics.mean(g), t.ppf(0.975, len(g) - 1) * statistics.stdev(g) / math.sqrt(len(g))
    low, high = float(mean - half), float(mean + half)  # scipy's t gives numpy floats: the file is JSON
    return {"mean": mean, "low": low, "high": high, "parity": bool(low <= 0 <= high and abs(mean) <= PARITY_POINTS)}


def table(rows: list[dict]) -> str:
    lines = ["| data | strategy | arms | seeds | acc, first / second arm | gap (points) | 95% CI | parity |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = "n/a" if r["low"] is None else f"[{r['low']:+.2f}, {r['high']:+.2f}]"
        parity = "n/a" if r["parity"] is None else ("yes" if r["parity"] else "NO")
        lines.append(f"| {r['data']} | {r['strategy']} | {r['compare']} | {len(r['seeds'])} | "
                     f"{r['first_acc']:.2f} / {r['second_acc']:.2f} | "
                     f"{r['mean']:+.2f} ({', '.join(f'{x:+.2f}' for x in r['gaps'])}) | {ci} | {parity} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, default=STORE, help="the folder of the SQLite store and the feature cache")
    ap.add_argument("--hymenoptera", type=Path, default=DATA, help="the folder that holds hymenoptera's train/, val/")
    ap.add_argument("--seeds", type=int, default=3, help="on hymenoptera")
    ap.add_argument("--digits-seeds", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--out", type=Path, help="write the rows, the command, the date and the machine to this JSON file")
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
        sweep("digits", args.store, args.digits_seeds, args.epochs, ["data=digits"])
        sweep("digits-nchw", args.store, args.digits_seeds, args.epochs, ["data=digits"],
              ("bf16=false", "channels_last=false"), "finetune")
    rows = gaps(args.store)
    print(table(rows), flush=True)
    if args.out:
        write(args.out, rows, args)


def write(out: Path, rows: list[dict], args: argparse.Namespace) -> None:
    """The result file docs/speed.md renders its parity table from (tlsweep/manual/benchtables.py)."""
    import json
    import time

    import torch

    sys.path.insert(0, str(REPO))
    from benchmarks.bench import environment  # the machine, as the bench's result files name it

    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "argv": ["python", "benchmarks/parity.py", *sys.argv[1:]],
                               "epochs": args.epochs, "model": "efficientnet_lite0",
                               "parity_points": PARITY_POINTS, "env": environment(torch.device("cpu")),
                               "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    main()
