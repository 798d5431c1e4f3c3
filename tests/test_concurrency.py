"""Nothing is lost when processes start together: a fresh store, a shared experiment, shared caches."""
from __future__ import annotations

import pytest

import os
import re
import subprocess
import sys

from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow  # end-to-end: the full tier (.ci/run runs it)

TINY = ["model=efficientnet_lite0", "strategy=probe", "epochs=1", "data=imagefolder", "data.image_size=32",
        "data.num_workers=0", "batch_size=4", "device=cpu"]


def _start(*args, cwd):
    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; each process must take the store it is given
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.Popen([sys.executable, "-m", "tlsweep", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _feature_sources(runs) -> list[str]:
    """Where each run's cached features came from: computed, disk or memory (see features.features)."""
    return sorted(re.search(r"run once \((\w+)", r.data.tags["tlsweep.fast.features"]).group(1) for r in runs)


def test_plain_runs_started_together_on_a_fresh_store(tmp_path, tiny_root):
    """Opening a fresh SQLite store migrates its schema; processes doing that at once crash or
    break the store, and racing to create the experiment can log into Default."""
    n = 4
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"  # not even its folder exists yet
    procs = [_start(*TINY, f"data.root={tiny_root}", f"tracking.uri={uri}", f"seed={i}", cwd=tmp_path)
             for i in range(n)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    failed = [out[-2000:] for p, out in zip(procs, outs) if p.returncode != 0]
    assert not failed, f"{len(failed)} of {n} failed:\n" + "\n---\n".join(failed)

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tlsweep")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.params["seed"] for r in runs) == [str(i) for i in range(n)]
    assert all(r.info.status == "FINISHED" for r in runs)
    # they share one probe prefix and one cache_dir: one computes it, the others load it
    assert _feature_sources(runs) == ["computed"] + ["disk"] * (n - 1)
    default = client.get_experiment_by_name("Default")
    assert default is None or client.search_runs([default.experiment_id]) == []
    # the store still takes writes and reads
    extra = client.create_run(exp.experiment_id)
    client.set_terminated(extra.info.run_id)
    assert len(client.search_runs([exp.experiment_id])) == n + 1


def test_joblib_workers_compute_a_shared_prefix_once(tmp_path, tiny_root):
    """Two joblib workers need the same probe features (seeds share the prefix and its views):
    one computes them under the entry's file lock, the other waits and loads them."""
    p = _start("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *TINY, f"data.root={tiny_root}",
               "seed=0,1", "data.cache_to_disk=true", "hydra.callbacks.tlsweep.report=false",
               # 60 views of 12 images: a pass of a few seconds, longer than the workers' start-up skew
               "strategy.feature_views=60", cwd=tmp_path)
    out = p.communicate(timeout=600)[0]
    assert p.returncode == 0, out[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("tlsweep").experiment_id], "tags.`tlsweep.role` = 'job'")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    starts = sorted((r.info.start_time, r.data.metrics["prep_seconds"]) for r in runs)
    print(f"run starts {(starts[1][0] - starts[0][0]) / 1000:.1f} s apart; prep {starts[0][1]:.1f} s, {starts[1][1]:.1f} s")
    assert _feature_sources(runs) == ["computed", "disk"], [r.data.tags["tlsweep.fast.features"] for r in runs]


def test_experiment_created_by_another_process_meanwhile_is_used(store_uri, monkeypatch):
    """Where no local lock applies (a tracking server), two processes may both find no experiment
    and both create it: the loser's create fails, and it must take the winner's id, not Default's."""
    from tlsweep.tracking import runs as tracking

    real = MlflowClient.get_experiment_by_name
    calls = []

    def not_there_yet(self, name):  # the first look happens before the other process creates it
        calls.append(name)
        return None if len(calls) == 1 else real(self, name)

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", not_there_yet)
    winner = MlflowClient(store_uri).create_experiment("raced")
    assert tracking.setup_store(store_uri, "raced") == (store_uri, winner)
    assert len(calls) == 2
