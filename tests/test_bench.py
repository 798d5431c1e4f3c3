"""The benchmark script's GPU-sized ladder runs end to end on the CPU (tiny data, 1 epoch), so
that a GPU session spends its few minutes measuring, not debugging. The ladder covers every
strategy on both sides; the probe and fine-tune workloads use the same code. The vit-probe
workload (tlsweep cached vs uncached, and the bound) runs the same way."""
from __future__ import annotations

import pytest

import json
import re
import subprocess
import sys

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # end-to-end: the full tier (.ci/run runs it)


def test_bench_smoke_runs_the_ladder(tiny_root, tmp_path):
    out = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench.py"), "--smoke", "--workload", "ladder",
                        "--data", str(tiny_root), "--out", str(out)], cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert row["workload"] == "ladder" and "strategy=finetune,partial,probe,scratch" in row["tlsweep_command"]
    # the fixed cost, as the sweep logged it on its parent, beside the speedup and in the bars table
    assert 0 < row["tlsweep_fixed_cost_s"] < row["tlsweep_wall_s"]
    (bar,) = result["bars"]
    assert (bar["workload"], bar["bar"], bar["ratio"]) == ("ladder", 10.0, row["speedup_end_to_end"])
    assert bar["met"] == (bar["ratio"] >= 10)
    assert f"| ladder | 1 | naive / tlsweep, end to end | {bar['ratio']:.2f}x | ≥ 10x |" in p.stdout
    assert f"fixed   : {row['tlsweep_fixed_cost_s']:.1f} s of the" in p.stdout
    assert row["naive_wall_s"] > 0 and row["tlsweep_wall_s"] > 0
    for side in ("naive_acc_mean_std", "tlsweep_acc_mean_std"):
        assert 0 <= row[side][0] <= 1
    # both sides ran every planned config, the same ones, with the same number of seeds
    assert row["naive_complete"] and row["naive_runs"].split("/")[0] == row["naive_runs"].split("/")[1] != "0"
    assert {k.split()[0] for k in row["acc_by_config"]} == {"scratch", "probe", "partial", "finetune"}
    assert all(c["naive"]["n"] == c["tlsweep"]["n"] >= 1 for c in row["acc_by_config"].values()), row["acc_by_config"]
    # probe and partial trained on cached features; the other rungs cannot
    assert row["tlsweep_feature_cache"] == ["off", "on"]


def test_bench_smoke_runs_the_vit_probe(tiny_root, tmp_path):
    out = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench.py"), "--smoke", "--workload", "vit-probe",
                        "--data", str(tiny_root), "--out", str(out)], cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["workload"] == "vit-probe" and "error" not in row
    for side in ("cached", "uncached"):
        assert re.search(r"model.arch=vit_tiny_patch16_224 model.weights=\S+-random.pth", row[f"{side}_command"])
        assert row[f"{side}_wall_s"] > 0 and 0 <= row[f"{side}_acc_mean_std"][0] <= 1
    assert "strategy.cache_features=false" in row["uncached_command"]
    assert "strategy.cache_features" not in row["cached_command"]
    # each side's one job took the path it was meant to: the cache computed once, then off
    (cached,), (uncached,) = row["cached_features"], row["uncached_features"]
    assert cached.startswith("on") and "(computed" in cached and row["cached_feature_passes"] == 1
    assert uncached.startswith("off")
    # 1 view (1 epoch) of the 12 train images + the 8 val images, through one backbone (1 seed)
    b = row["bound"]
    assert (b["backbones"], b["views"], b["train_images"], b["eval_images"], b["images"]) == (1, 1, 12, 8, 20)
    m = re.search(r"bound: (\d+\.\d) s of unavoidable forwards \(1 views x 12 \+ 8 images\); "
                  r"sweep/bound = (\d+\.\d)x", p.stdout)
    assert m, p.stdout[-2000:]
    assert b["seconds"] > 0 and float(m.group(1)) == round(b["seconds"], 1)  # the line says what the JSON holds
    assert float(m.group(2)) == round(row["cached_wall_s"] / b["seconds"], 1) > 1


def test_bench_smoke_gives_the_finetune_bound_in_the_precision_asked(tiny_root, tmp_path):
    out = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench.py"), "--smoke", "--workload", "finetune",
                        "--bf16", "false", "--data", str(tiny_root), "--out", str(out)], cwd=tmp_path,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert "bf16=false" in row["tlsweep_command"] and row["tlsweep_bf16"] == ["off (bf16=false)"]
    # one epoch: train steps on the 12 train images, forwards on the 8 val images, in the sweep's precision
    b = row["bound"]
    assert (b["kind"], b["epochs"], b["train_images"], b["eval_images"]) == ("finetune", 1, 12, 8)
    assert b["bf16"] == "off (bf16=false)" and b["optimizer"] == "AdamW" and b["channels_last"]
    assert 0 < b["train_s"] and 0 < b["eval_s"] and b["seconds"] == b["train_s"] + b["eval_s"]
    epoch = row["tlsweep_epoch_s"]
    assert row["epoch_over_bound"] == epoch / b["per_epoch_s"] and row["sweep_over_bound"] > row["epoch_over_bound"]
    assert row["tlsweep_over_naive_per_epoch"] == epoch / row["naive_epoch_s"]
    m = re.search(r"tlsweep/bound = (\d+\.\d\d)x per epoch \(\d+\.\d / \d+\.\d s\), (\d+\.\d\d)x end to end", p.stdout)
    assert m, p.stdout[-2000:]
    assert float(m.group(1)) == round(row["epoch_over_bound"], 2)  # the line says what the JSON holds
    (bar,) = result["bars"]
    assert (bar["over_bound"], bar["bound_measure"]) == (row["epoch_over_bound"], "per epoch")
    assert f"| {bar['over_bound']:.2f}x per epoch |" in p.stdout


def test_parity_smoke_pairs_each_seeds_bf16_run_with_its_fp32_run(tiny_root, tmp_path):
    from tlsweep.runtime import cpu_bf16_units

    if not cpu_bf16_units():
        pytest.skip("bf16=true needs a CPU with AMX-BF16 or AVX512-BF16")  # the study is where auto turns bf16 on
    out = tmp_path / "parity.json"
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "parity.py"), "--smoke", str(tiny_root),
                        "--store", str(tmp_path / "store"), "--out", str(out)], cwd=tmp_path,
                       capture_output=True, text=True)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    result = json.loads(out.read_text())
    assert result["env"]["cpu_bf16_units"] and result["argv"][:2] == ["python", "benchmarks/parity.py"]
    rows = {r["strategy"]: r for r in result["rows"]}
    assert rows.keys() == {"probe", "finetune"}
    for r in rows.values():
        # 2 seeds, each a bf16 run paired with its fp32 run: the gap is their difference, the interval around it
        assert r["seeds"] == [0, 1] and r["data"] == "imagefolder" and r["metric"].startswith("final_")
        assert r["compare"] == "bf16 - fp32"
        assert len(r["gaps"]) == 2 and r["low"] <= r["mean"] <= r["high"]
        assert abs(r["mean"] - sum(r["gaps"]) / 2) < 1e-9
        assert abs(r["first_acc"] - r["second_acc"] - r["mean"]) < 1e-9
        assert len(r["val_loss_gaps"]) == 2 and r["second_val_loss"] > 0 and r["train_seconds_ratio"] > 0
    # the printed table says what the file holds
    p_ = rows["probe"]
    assert f"| imagefolder | probe | bf16 - fp32 | 2 | {p_['first_acc']:.2f} / {p_['second_acc']:.2f} |" in p.stdout
