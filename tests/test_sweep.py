"""A sweep's lifecycle: resume after a kill, the parent's status, and the sweep-up of dead jobs."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import mlflow
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from tests.conftest import CONF
from tlsweep import sweep
from tlsweep.tracking import runs as tracking
from tlsweep.config.keys import Tag


def _run(status: str, key: str | None, name: str = "r", error: str | None = None):
    tags = {k: v for k, v in ((Tag.CONFIG_KEY, key), (Tag.ERROR, error)) if v}
    return SimpleNamespace(info=SimpleNamespace(status=status, run_id=f"{name}-{status}", run_name=name),
                           data=SimpleNamespace(tags=tags))


def test_a_rerun_that_finished_replaces_its_failed_first_attempt():
    runs = [_run("FINISHED", "a"), _run("KILLED", "b"), _run("FAILED", "c", error="Diverged: nan"),
            _run("FINISHED", "b"), _run("FAILED", None, "x"), _run("FAILED", None, "y")]
    kept = tracking.current(runs)
    assert [(r.info.status, r.data.tags.get(Tag.CONFIG_KEY)) for r in kept] == \
        [("FINISHED", "a"), ("FINISHED", "b"), ("FAILED", "c"), ("FAILED", None), ("FAILED", None)]
    assert sweep.sweep_status(kept) == "FAILED"
    assert sweep.sweep_status(tracking.current(runs[:4][:1] + runs[3:4])) == "FINISHED"
    assert sweep.sweep_status([]) == "FAILED"  # a sweep in which no job ran did not succeed
    assert sweep.summary_line([]) == "[tlsweep] no job of this sweep made a run"
    # failures grouped by error, most common first; a run without an error says its status
    assert sweep.summary_line(kept) == ("[tlsweep] 3 of 5 jobs failed: 2 x FAILED (no error recorded), 1 x Diverged: nan; "
                                        "runs: r (FAILED), x (FAILED), y (FAILED)")
    # an interrupted 24-job sweep does not read as an 8-job one
    assert sweep.summary_line(kept, planned=24) == (
        "[tlsweep] 3 of 24 jobs failed: 2 x FAILED (no error recorded), 1 x Diverged: nan; 19 of 24 never started; "
        "runs: r (FAILED), x (FAILED), y (FAILED)")
    assert sweep.summary_line(kept[:2], planned=2) == "[tlsweep] 2 of 2 jobs finished"
    assert sweep.summary_line([], planned=4) == "[tlsweep] no job of this sweep made a run; 4 of 4 never started"


def test_planned_jobs_counts_what_the_sweeper_launches():
    assert tracking.planned_jobs(["strategy=probe,finetune", "seed=range(0,3)", "epochs=2"]) == 6
    # a preset's sweep, and a command-line key that ends it (the last override of a key wins)
    assert tracking.planned_jobs(["seed=0"], {"strategy": "scratch,probe,partial,finetune", "seed": "0,1,2"}) == 4


def test_the_config_key_ignores_where_a_run_logs_and_caches(make_cfg):
    a = tracking.config_key(make_cfg("seed=1"))
    assert a == tracking.config_key(make_cfg("seed=1", "tracking.uri=sqlite:////elsewhere.db", "cache_dir=/tmp/x",
                                             "data.num_workers=3"))
    assert a != tracking.config_key(make_cfg("seed=2"))
    assert a != tracking.config_key(make_cfg("seed=1", "optim.lr=0.1"))


def _callback(uri: str, name: str, report: bool = False):
    """A sweep's callback started on the real config, as a multirun's launching process starts it."""
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=[f"tracking.uri={uri}", f"tracking.sweep_name={name}"],
                      return_hydra_config=True)
    cb = sweep.SweepCallback(report=report)
    cb.on_multirun_start(cfg)
    return cb


def test_a_worker_that_died_leaves_no_run_running(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cb = _callback(uri, "dead-worker")
    parent = cb.parent
    client = MlflowClient(uri)
    orphan = client.create_run(cb.exp_id, tags={"mlflow.parentRunId": parent}).info.run_id  # never closed
    cb.finish()
    assert client.get_run(orphan).info.status == "KILLED"
    assert "job process ended without closing its run" in client.get_run(orphan).data.tags["tlsweep.error"]
    assert client.get_run(parent).info.status == "KILLED"


def test_a_sweep_with_no_runs_does_not_close_finished(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cb = _callback(uri, "empty")
    parent = cb.parent
    cb.finish()
    assert MlflowClient(uri).get_run(parent).info.status == "FAILED"


def _children(client, exp_id, parent):
    return client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent}'", max_results=1000)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_killed_sweep_resumes_where_it_stopped(tmp_path, tiny_root, launcher):
    """SIGTERM once 2 of 4 jobs FINISHED, then the same command again: exactly the missing jobs run, under the
    same parent, and the report covers all 4. The store's experiment is not the default one, so the automatic
    report must follow tracking.experiment. Under joblib two jobs run at once: the one beside the second to
    finish may end its last epoch before the signal lands, so 2 or 3 jobs are FINISHED when the first run ends."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.setup_store(uri, "resumable")  # migrated once, as a sweep's launcher does
    cmd = [sys.executable, "-m", "tlsweep", "-m", "model=resnet18", "model.weights=null", "strategy=scratch",
           "seed=0,1,2,3", "data=imagefolder", f"data.root={tiny_root}", "data.image_size=64", "data.num_workers=0",
           "epochs=3", "batch_size=2", "device=cpu", f"tracking.uri={uri}", "tracking.experiment=resumable",
           "tracking.sweep_name=resume-me", f"hydra/launcher={launcher}"]
    if launcher == "joblib":
        cmd.append("hydra.launcher.n_jobs=2")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    client = MlflowClient(uri)
    exp_id = client.get_experiment_by_name("resumable").experiment_id

    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    done = []
    while len(done) < 2 and first.poll() is None and time.monotonic() < deadline:
        parents = client.search_runs([exp_id], "tags.`tlsweep.role` = 'sweep'")
        if parents:
            done = [r for r in _children(client, exp_id, parents[0].info.run_id) if r.info.status == "FINISHED"]
        time.sleep(0.05)
    assert len(done) >= 2, first.communicate()[0][-3000:]
    first.send_signal(signal.SIGTERM)
    out1 = first.communicate(timeout=120)[0]
    assert first.returncode != 0
    (parent,) = client.search_runs([exp_id], "tags.`tlsweep.role` = 'sweep'")
    runs1 = _children(client, exp_id, parent.info.run_id)
    finished1 = {r.data.params["seed"] for r in runs1 if r.info.status == "FINISHED"}
    assert len(finished1) in ((2, 3) if launcher == "joblib" else (2,)), out1[-3000:]  # killed after the second
    assert parent.info.status == "KILLED" and all(r.info.status != "RUNNING" for r in runs1), \
        (parent.info.status, [r.info.status for r in runs1], out1[-3000:])  # what the killed sweep printed

    second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert second.stdout.count("skipped, already FINISHED in this sweep") == len(finished1)
    assert f"(resumed: {len(finished1)} finished runs kept" in second.stdout
    (again,) = client.search_runs([exp_id], "tags.`tlsweep.role` = 'sweep'")
    assert again.info.run_id == parent.info.run_id and again.info.status == "FINISHED"
    runs2 = _children(client, exp_id, parent.info.run_id)
    new = [r for r in runs2 if r.info.run_id not in {r1.info.run_id for r1 in runs1}]
    assert sorted(r.data.params["seed"] for r in new) == sorted({"0", "1", "2", "3"} - finished1)
    assert all(r.info.status == "FINISHED" for r in new)
    assert "[tlsweep] 4 of 4 jobs finished" in second.stdout
    # the report, made at the end and logged to the parent, covers every finished run: all 4 seeds
    summary = client.download_artifacts(parent.info.run_id, "report/summary.csv", str(tmp_path / "dl"))
    import pandas as pd

    assert pd.read_csv(summary)["n"].tolist() == [4]
    assert mlflow.get_experiment_by_name("Default") is None or not client.search_runs(["0"])


def _timed(start: float, end: float | None):
    return SimpleNamespace(info=SimpleNamespace(start_time=int(start * 1000), end_time=None if end is None else int(end * 1000)))


def test_fixed_cost_is_wall_time_less_the_jobs_this_process_ran():
    runs = [_timed(102, 110), _timed(111, 121), _timed(50, 60), _timed(121.5, None)]  # an earlier run; one open
    cost = sweep.fixed_cost(runs, started=100, now=125)
    assert cost.line == "[tlsweep] 2 runs: 18.0 s in jobs, 7.0 s around them"
    assert cost.metrics == {"sweep/wall_seconds": 25, "sweep/in_jobs_seconds": 18, "sweep/around_jobs_seconds": 7}
    parallel = sweep.fixed_cost([_timed(102, 110), _timed(103, 111)], started=100, now=112)
    assert "overlapped" in parallel.line and "sweep/around_jobs_seconds" not in parallel.metrics


# About three times what this sweep spends around its jobs on a 2-core CPU (docs/speed.md, "Fixed cost"): a slow
# import or a second store creation creeping back in fails it, machine noise does not.
FIXED_COST_BOUND_S = 15.0


@pytest.mark.slow
def test_a_tiny_sweeps_fixed_cost_stays_bounded(tmp_path, tiny_root):
    """Two tiny jobs, a fresh store and a cold cache, as a user's first sweep in a new folder: what the sweep
    costs around its jobs (imports, store, parent run, report, exit) is printed, logged on the parent, and
    stays under the bound."""
    cmd = [sys.executable, "-m", "tlsweep", "-m", "model=timm", "model.arch=resnet10t", "model.weights=null",
           "strategy=probe", "seed=0,1", "data=imagefolder", f"data.root={tiny_root}", "data.image_size=32",
           "data.num_workers=0", "epochs=1", "batch_size=4", "device=cpu"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    start = time.perf_counter()
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - start
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    line = re.search(r"\[tlsweep\] 2 runs: ([\d.]+) s in jobs, ([\d.]+) s around them", p.stdout)
    assert line, p.stdout[-3000:]
    in_jobs, around = map(float, line.groups())
    assert in_jobs + around <= wall  # the process's own count, within the wall seen from outside
    assert around < FIXED_COST_BOUND_S, p.stdout[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    (parent,) = client.search_runs([client.get_experiment_by_name("tlsweep").experiment_id],
                                   "tags.`tlsweep.role` = 'sweep'")
    assert parent.data.metrics["sweep/around_jobs_seconds"] == pytest.approx(around, abs=0.05)
    assert parent.data.metrics["sweep/in_jobs_seconds"] == pytest.approx(in_jobs, abs=0.05)
    (saved,) = tmp_path.glob("outputs/multirun/*/*/multirun.yaml")  # the sweeper that composed each job once ran
    assert "_target_: hydra_plugins.tlsweep_sweeper.TlsweepSweeper" in saved.read_text()


class _CountingLoader:
    def __init__(self):
        self.calls = 0

    def load_sweep_config(self, master_config, sweep_overrides):
        self.calls += 1
        return {"overrides": list(sweep_overrides), "made": self.calls}

    def get_search_path(self):
        return "the real loader's"


def test_the_sweeper_composes_each_jobs_config_once():
    """Hydra's BasicSweeper composes every job's config to check the batch, then its launcher composes each again
    (docs/speed.md, "Fixed cost"). tlsweep's sweeper hands the launcher the config the check composed."""
    import pickle

    from hydra_plugins.tlsweep_sweeper import ComposeOnce, TlsweepSweeper

    real = _CountingLoader()
    loader, master = ComposeOnce(real), object()
    checked = [loader.load_sweep_config(master, [f"seed={s}"]) for s in range(3)]  # validate_batch_is_legal
    launched = [loader.load_sweep_config(master, [f"seed={s}"]) for s in range(3)]  # the launcher
    assert real.calls == 3 and launched == checked
    assert all(a is not b for a, b in zip(checked, launched))  # the check had a copy
    assert [c["made"] for c in launched] == [1, 2, 3]
    assert loader.load_sweep_config(master, ["seed=0"])["made"] == 4  # handed out once: then composed again
    assert loader.load_sweep_config(object(), ["seed=1"])["made"] == 5  # another master config: its own
    assert loader.get_search_path() == "the real loader's"
    loader.load_sweep_config(master, ["seed=9"])
    shipped = pickle.loads(pickle.dumps(loader))  # submitit pickles the launcher, and this loader, per job
    assert shipped.made == {} and shipped.loader.calls == real.calls
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=["experiment=vtab1k"], return_hydra_config=True)
    assert cfg.hydra.sweeper._target_ == f"{TlsweepSweeper.__module__}.{TlsweepSweeper.__name__}"
    assert cfg.hydra.sweeper.params  # a preset's sweep still reaches the sweeper
