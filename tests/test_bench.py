"""The benchmark script's GPU-sized ladder runs end to end on the CPU (tiny data, 1 epoch), so
that a GPU session spends its few minutes measuring, not debugging. The ladder covers every
strategy on both sides; the probe and fine-tune workloads use the same code."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO


def test_bench_smoke_runs_the_ladder(tiny_root, tmp_path):
    out = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench.py"), "--smoke", "--workload", "ladder",
                        "--data", str(tiny_root), "--out", str(out)], cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert row["workload"] == "ladder" and "strategy=finetune,partial,probe,scratch" in row["tlsweep_command"]
    assert row["naive_wall_s"] > 0 and row["tlsweep_wall_s"] > 0
    for side in ("naive_acc_mean_std", "tlsweep_acc_mean_std"):
        assert 0 <= row[side][0] <= 1
    # probe and partial trained on cached features; the other rungs cannot
    assert row["tlsweep_feature_cache"] == ["off", "on"]
