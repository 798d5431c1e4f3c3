"""The GPU session's prepared command (benchmarks/device/run.sh) works before a GPU is spent on it.

A dry run goes through every step on the CPU with tiny data: imports, `pytest -m gpu`, the
ladder and probe benchmarks (tlsweep sequential and with parallel jobs, against the naive loop),
and the summary. The time limit, the naive side's early stop and the wheel-set check are tested
on their own, without running anything heavy.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import REPO

DEVICE = REPO / "benchmarks" / "device"


def _module(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _run_sh(out: Path, budget: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(out), "BUDGET_S": str(budget), "PYTHON": sys.executable}
    return subprocess.run(["bash", str(DEVICE / "run.sh"), *args], env=env, capture_output=True, text=True,
                          timeout=budget + 120)


@pytest.mark.slow
def test_dry_run_goes_through_every_step(tmp_path):
    # generous budget: the dry run's own time limit is tested below, here every step must finish
    p = _run_sh(tmp_path, 1500, "--dry-run")
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    # at most 8 flat files come back from a device run
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted(
        ["run.log", "steps.tsv", "pytest-gpu.xml", "ladder.json", "probe.json", "summary.json", "summary.txt"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["env"]["device"] == "cpu"
    assert [(s["step"], s["status"]) for s in summary["steps"]] == [
        ("wheels", "ok"), ("imports", "ok"), ("pytest -m gpu", "ok"), ("ladder", "ok"), ("probe", "ok")]
    assert summary["steps"][0]["note"] == "dry run: not installed"
    # the GPU tests were selected, and skip without CUDA
    assert summary["pytest_gpu"]["tests"] >= 2 and summary["pytest_gpu"]["skipped"] == summary["pytest_gpu"]["tests"]
    rows = {(r["workload"], r["n_jobs"]): r for r in summary["rows"]}
    assert set(rows) == {("ladder", 0), ("ladder", 2), ("probe", 0)}
    assert set(rows["ladder", 0]["acc_by_config"]) == {f"{s} lr=0.001" for s in ("scratch", "probe", "partial", "finetune")}
    assert "hydra/launcher=joblib hydra.launcher.n_jobs=2" in rows["ladder", 2]["tlsweep_command"]
    for row in rows.values():
        assert row["naive_complete"] and row["speedup_end_to_end"] == pytest.approx(
            row["naive_wall_s"] / row["tlsweep_wall_s"])
        assert 0 <= row["tlsweep_acc_mean_std"][0] <= 1
        parts = row["tlsweep_job_parts_s"]
        # "scores": the probe's transferability scores of its cached features, a part of their own
        assert {"mlflow", "model", "data", "features", "train"} <= set(parts) <= {
            "mlflow", "model", "data", "features", "train", "scores"}
        assert sum(parts.values()) == pytest.approx(row["tlsweep_in_jobs_s"], rel=0.05)
    # a sequential sweep's wall splits into the jobs and what is outside them
    seq = rows["ladder", 0]
    assert seq["tlsweep_outside_jobs_s"] > 0
    assert seq["tlsweep_outside_jobs_s"] + seq["tlsweep_in_jobs_s"] == pytest.approx(seq["tlsweep_wall_s"])
    assert rows["ladder", 2]["tlsweep_outside_jobs_s"] is None  # overlapping jobs: no such split
    # the table is the last thing printed, and is what summary.txt holds
    text = (tmp_path / "summary.txt").read_text()
    assert p.stdout.rstrip().endswith(text.rstrip())
    assert "| ladder (4 runs x 1 ep) | 2 |" in text and "| probe (1 runs x 1 ep) | 1 |" in text
    assert "step pytest -m gpu: ok" in text and "skipped)" in text


def test_time_limit_skips_what_does_not_fit_and_still_summarizes(tmp_path):
    p = _run_sh(tmp_path, 2, "--dry-run")
    assert p.returncode == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {s["step"]: s["status"] for s in summary["steps"]} == {
        "wheels": "ok", "imports": "skipped: no time left", "pytest -m gpu": "skipped: no time left",
        "ladder": "skipped: no time left", "probe": "skipped: no time left"}
    assert summary["rows"] == [] and "step ladder: skipped" in p.stdout


def test_naive_side_stops_between_runs_and_estimates_the_rest(monkeypatch):
    naive = _module(REPO / "benchmarks" / "naive.py")
    now = [1000.0]  # a fake clock that only the fake runs move: finetune takes 3 s, the others 1 s
    monkeypatch.setattr(naive, "time", SimpleNamespace(time=lambda: now[0], perf_counter=lambda: now[0]))

    def fake_run(root, strategy, lr, seed, epochs, device, image_size=None, model=None):
        now[0] += 3.0 if strategy == "finetune" else 1.0
        return {"final_val_acc": 0.5, "epoch_seconds": [1.0]}

    monkeypatch.setattr(naive, "naive_run", fake_run)
    grid = [(s, 1e-3, seed) for s in ("scratch", "finetune") for seed in range(3)]
    out = naive.naive_sweep(None, grid, 1, "cpu", stop_at=1000.0 + 9.5)
    # seeds outer: seed 0 (1 + 3 s), seed 1 (8 s); then finetune's 3 s would end after the stop
    assert [(r["strategy"], r["seed"]) for r in out["runs"]] == [
        ("scratch", 0), ("finetune", 0), ("scratch", 1), ("finetune", 1), ("scratch", 2)]
    assert not out["complete"] and out["planned"] == 6
    assert out["wall_s_estimate"] == pytest.approx(3 * 1.0 + 3 * 3.0)
    assert naive.naive_sweep(None, grid, 1, "cpu", stop_at=now[0] - 1)["runs"] == []
    assert naive.naive_sweep(None, grid, 1, "cpu")["complete"]


def _wheel(folder: Path, name: str, version: str, requires=(), tag="py3-none-any") -> None:
    dist = f"{name}-{version}"
    with zipfile.ZipFile(folder / f"{dist}-{tag}.whl", "w") as z:
        z.writestr(f"{dist}.dist-info/METADATA", "Metadata-Version: 2.1\n"
                   f"Name: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires))


def test_wheel_check_names_what_the_device_would_miss(tmp_path):
    check = _module(DEVICE / "check_wheels.py")
    image = {"numpy": check.Version("2.5.2"), "pandas": None}

    def problems(*required):
        return check.check(tmp_path, image, list(required))[0]

    _wheel(tmp_path, "a", "1.0", ["b>=2", "numpy<3", "pandas>=99", "colorama; sys_platform == 'win32'",
                                  "pytest; extra == 'test'"])
    assert problems() == ["a needs b>=2: neither a wheel nor in the image"]  # pandas: version unknown, name only
    _wheel(tmp_path, "b", "1.0")
    assert problems() == ["a needs b>=2, but b is 1.0"]
    (tmp_path / "b-1.0-py3-none-any.whl").unlink()
    _wheel(tmp_path, "b", "2.0", ["numpy>=3"])
    assert problems() == ["b needs numpy>=3, but numpy is 2.5.2"]
    _wheel(tmp_path, "b", "2.1")
    _wheel(tmp_path, "c", "1.0", tag="cp311-cp311-manylinux_2_17_x86_64")
    assert problems("c>=1", "d") == [
        "two versions of b: b-2.0-py3-none-any.whl and b-2.1-py3-none-any.whl",
        "c-1.0-cp311-cp311-manylinux_2_17_x86_64.whl does not install on CPython 3.12, manylinux x86-64",
        "tlsweep needs d: neither a wheel nor in the image"]


@pytest.mark.skipif(not (REPO / ".device" / "wheels").is_dir(), reason="no .device/ (benchmarks/device/prepare.sh)")
def test_prepared_wheels_are_complete():
    p = subprocess.run([sys.executable, str(DEVICE / "check_wheels.py"), str(REPO / ".device" / "wheels")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout
