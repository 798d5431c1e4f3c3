"""Sweeps on a real one-node SLURM cluster into a real MLflow server on PostgreSQL.

The daemons are started here (tests/services.py), on 127.0.0.1, and stopped by PID. Jobs are
the real `python -m tlsweep` on tiny images for 1-2 epochs.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from tests import services

pytestmark = pytest.mark.services

TINY = ["model=efficientnet_lite0", "data=imagefolder", "data.image_size=32", "data.num_workers=0", "batch_size=4",
        "device=cpu", "cache_dir=null"]  # lite0's ImageNet weights ship in a package: nothing downloads
CPU_NODE = ["hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]


def _say(request, text: str) -> None:
    """Print past pytest's capture, so the CI log shows it."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(text, flush=True)


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    with services.postgres_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as s:
        _say(request, f"\n[services] PostgreSQL (initdb + start + createdb): {s.seconds_postgres:.1f} s; "
                      f"mlflow server on it ready: {s.seconds_mlflow:.1f} s ({s.uri})")
        yield s


@pytest.fixture(scope="module")
def slurm(request, tmp_path_factory):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher",
                        reason='needs the cluster extra: pip install -e ".[cluster]"')
    with services.slurm_cluster(tmp_path_factory.mktemp("slurm")) as cluster:
        _say(request, f"\n[services] SLURM (munged + slurmctld + slurmd, node idle): {cluster.seconds:.1f} s")
        yield cluster


def _tlsweep(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in (env or os.environ).items() if k != "MLFLOW_TRACKING_URI"}  # the CLI names its store
    env["OMP_NUM_THREADS"] = "1"  # several jobs share the test machine's few cores
    return subprocess.run([sys.executable, "-m", "tlsweep", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def _children(client: MlflowClient, parent) -> list:
    return client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")


def _printed_results(stdout: str) -> dict[tuple[str, str], float]:
    """What each job printed at its end: (strategy, seed) -> final_val_acc."""
    return {(m[1], m[2]): float(m[3])
            for m in re.finditer(r"\[tlsweep\] (\w+)\s+seed=(\d+) final_val_acc=([\d.]+)", stdout)}


def test_slurm_sweep_into_the_tracking_server(slurm, server, tiny_root, tmp_path):
    """The issue's command through the `slurm` preset: 4 SLURM jobs, one parent, the report at the end."""
    p = _tlsweep("-m", "hydra/launcher=slurm", f"hydra.launcher.partition={slurm.partition}",
                 "hydra.launcher.account=tlsweep-test", *CPU_NODE, "strategy=probe,finetune", "seed=0,1", *TINY,
                 f"data.root={tiny_root}", "epochs=1", f"tracking.uri={server.uri}", "tracking.sweep_name=on-slurm",
                 cwd=tmp_path, env=slurm.env)
    print(p.stdout[-6000:])
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Submitit 'slurm' sweep output dir" in p.stderr + p.stdout

    client = MlflowClient(server.uri)
    exp = client.get_experiment_by_name("tlsweep")
    [parent] = client.search_runs([exp.experiment_id], "tags.`tlsweep.sweep_name` = 'on-slurm' "
                                                       "and tags.`tlsweep.role` = 'sweep'")
    assert parent.info.status == "FINISHED"
    children = _children(client, parent)
    assert {(r.data.params["strategy.name"], r.data.params["seed"]) for r in children} == \
        {(s, k) for s in ("probe", "finetune") for k in ("0", "1")}
    assert len(children) == 4
    printed = _printed_results(p.stdout)  # empty: the jobs printed into their SLURM logs, not here
    jobs = slurm.scontrol_jobs()
    for r in children:
        assert r.info.status == "FINISHED" and r.info.experiment_id == exp.experiment_id
        assert [a.path for a in client.list_artifacts(r.info.run_id)] == ["config.yaml"]
        job = jobs[r.data.tags["tlsweep.slurm_job_id"]]  # a real job of this cluster, ended well
        assert (job["JobName"], job["Partition"], job["Account"], job["JobState"]) == \
            ("tlsweep", "debug", "tlsweep-test", "COMPLETED")
        log = tmp_path.glob(f"outputs/multirun/*/*/.submitit/{r.data.tags['tlsweep.slurm_job_id']}/*_log.out")
        printed.update(_printed_results("".join(f.read_text() for f in log)))
    assert len({r.data.tags["tlsweep.slurm_job_id"] for r in children}) == 4
    assert len({jobs[r.data.tags["tlsweep.slurm_job_id"]]["ArrayJobId"] for r in children}) == 1  # one array
    assert printed == {(r.data.params["strategy.name"], r.data.params["seed"]):
                       round(r.data.metrics["final_val_acc"], 4) for r in children}

    # the report, made by the launching process once submitit saw every job end, is on the parent
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {f"report/{f}" for f in ("summary.csv", "gaps.csv", "runs.csv", "summary.md", "ladder.png",
                                    "curves.png")} <= logged
    served = pd.read_csv(client.download_artifacts(parent.info.run_id, "report/summary.csv", str(tmp_path / "dl")))
    assert served["n"].sum() == 4
    # and the report reads the sweep back from the server alone
    from tlsweep.report import make_report

    rep = make_report(tracking_uri=server.uri, sweep="on-slurm", out=tmp_path / "again")
    assert rep.parent_run_id == parent.info.run_id
    pd.testing.assert_frame_equal(pd.read_csv(rep.out_dir / "summary.csv"), served)
    # and so does the report's command line, given the server by the run config's key
    cli = subprocess.run([sys.executable, "-m", "tlsweep.report", f"tracking.uri={server.uri}", "sweep=on-slurm",
                          f"out={tmp_path / 'cli'}"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"})
    assert cli.returncode == 0, cli.stderr[-3000:]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "cli" / "summary.csv"), served)


def test_eight_concurrent_writers_lose_nothing(server, tiny_root, tmp_path):
    """8 jobs in 8 processes (joblib) write to the server at once: every run, metric and artifact arrives."""
    client = MlflowClient(server.uri)
    default_runs = len(client.search_runs(["0"]))
    seeds = [str(k) for k in range(8)]
    p = _tlsweep("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=8", "strategy=probe", f"seed={','.join(seeds)}",
                 *TINY, f"data.root={tiny_root}", "epochs=2", f"tracking.uri={server.uri}",
                 "tracking.experiment=writers", "tracking.sweep_name=eight-writers",
                 "hydra.callbacks.tlsweep.report=false", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]

    exp = client.get_experiment_by_name("writers")
    runs = client.search_runs([exp.experiment_id])
    [parent] = [r for r in runs if r.data.tags.get("tlsweep.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 9 and len(children) == 8
    assert len(client.search_runs(["0"])) == default_runs  # none strayed into Default
    assert parent.info.status == "FINISHED" and all(r.info.status == "FINISHED" for r in children)
    assert sorted(r.data.params["seed"] for r in children) == seeds

    # every metric, every step: the same set in every run, and what each job printed is what the server holds
    steps = [{k: [m.step for m in client.get_metric_history(r.info.run_id, k)] for k in r.data.metrics}
             for r in children]
    assert all(s == steps[0] for s in steps) and len(steps[0]["val_acc"]) == 2, steps
    printed = _printed_results(p.stdout)
    assert printed == {("probe", r.data.params["seed"]): round(r.data.metrics["final_val_acc"], 4) for r in children}
    for r in children:
        local = client.download_artifacts(r.info.run_id, "config.yaml", str(tmp_path / r.info.run_id))
        cfg = yaml.safe_load(Path(local).read_text())
        assert (str(cfg["seed"]), cfg["tracking"]["experiment"]) == (r.data.params["seed"], "writers")


def test_a_cancelled_job_does_not_end_the_sweep_early(slurm, tiny_root, tmp_path):
    """SLURM cancels job 0 while job 1 is still queued: the launcher waits for job 1, then exits 1;
    job 0's run is closed KILLED and the report at the end has both. (hydra-submitit-launcher's
    own launcher raised at job 0 and left job 1 to run after the sweep had closed.)"""
    env = {k: v for k, v in slurm.env.items() if k != "MLFLOW_TRACKING_URI"}
    launcher = subprocess.Popen(  # every job held at submission: the test starts each one
        [sys.executable, "-m", "tlsweep", "-m", "hydra/launcher=slurm", *CPU_NODE,
         "+hydra.launcher.additional_parameters.hold=true", "strategy=probe", "epochs=2000,1", *TINY,
         # every epoch runs the backbone: job 0 must outlast the cancel (on cached features its 2000
         # epochs took a few seconds and could finish first)
         "strategy.cache_features=false",
         f"data.root={tiny_root}", "tracking.sweep_name=cancelled"],
        cwd=tmp_path, env={**env, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def wait_for(what, condition, timeout=180):
        deadline = time.monotonic() + timeout
        while not (found := condition()):
            assert launcher.poll() is None and time.monotonic() < deadline, f"no {what}"
            time.sleep(1)
        return found

    try:
        held = wait_for("held jobs", lambda: [j for j, d in slurm.scontrol_jobs().items()
                                              if d["Reason"] == "JobHeldUser"])
        [array] = {j.split("_")[0] for j in held}
        store = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")  # made and migrated before any job
        subprocess.run(["scontrol", "release", f"{array}_0"], env=env, check=True)
        wait_for("epoch of job 0", lambda: store.search_runs(["1"], "params.epochs = '2000' and metrics.val_acc >= 0"))
        subprocess.run(["scancel", f"{array}_0"], env=env, check=True)
        wait_for("cancel", lambda: slurm.scontrol_jobs()[f"{array}_0"]["JobState"] == "CANCELLED")
        time.sleep(35)  # submitit polls the states 2, 4, 8, 16, 32, 64 s after submitting: it has seen the cancel
        assert launcher.poll() is None, "the launcher ended while job 1 was still queued"
        subprocess.run(["scontrol", "release", f"{array}_1"], env=env, check=True)
        out, _ = launcher.communicate(timeout=300)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 1, out[-3000:]
    assert "state: CANCELLED" in out

    [parent] = store.search_runs(["1"], "tags.`tlsweep.role` = 'sweep'")
    status = {r.data.params["epochs"]: r.info.status for r in _children(store, parent)}
    assert status == {"2000": "KILLED", "1": "FINISHED"}
    assert parent.info.status == "KILLED"
    runs = pd.read_csv(store.download_artifacts(parent.info.run_id, "report/runs.csv", str(tmp_path / "dl")))
    assert sorted(runs["status"]) == ["FINISHED", "KILLED"]


def test_a_killed_slurm_sweep_resumes_where_it_stopped(slurm, tiny_root, tmp_path):
    """SIGTERM on the launcher once 2 of 4 jobs FINISHED cancels the other two on the cluster; the same
    command again runs exactly those two, under the same parent, and the report covers all 4."""
    env = {k: v for k, v in slurm.env.items() if k != "MLFLOW_TRACKING_URI"}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "tlsweep", "-m", "hydra/launcher=slurm", *CPU_NODE, "strategy=probe",
           "seed=0,1,2,3", "epochs=1", *TINY, f"data.root={tiny_root}", "tracking.sweep_name=resume-on-slurm"]
    store = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    first = subprocess.Popen([*cmd, "+hydra.launcher.additional_parameters.hold=true"], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (held := [j for j, d in slurm.scontrol_jobs().items() if d["Reason"] == "JobHeldUser"]):
            assert first.poll() is None and time.monotonic() < deadline, "no held jobs"
            time.sleep(1)
        [array] = {j.split("_")[0] for j in held}
        subprocess.run(["scontrol", "release", f"{array}_0", f"{array}_1"], env=env, check=True)
        while len(store.search_runs(["1"], "attributes.status = 'FINISHED' and tags.`tlsweep.role` = 'job'")) < 2:
            assert first.poll() is None and time.monotonic() < deadline, "jobs 0 and 1 did not finish"
            time.sleep(1)
        first.send_signal(15)
        out1, _ = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode != 0 and "cancelled the sweep's unfinished jobs" in out1, out1[-3000:]
    [parent] = store.search_runs(["1"], "tags.`tlsweep.role` = 'sweep'")
    assert parent.info.status == "KILLED"
    before = {r.info.run_id for r in _children(store, parent)}
    assert len(before) == 2

    again = _tlsweep(*cmd[3:], cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    [same] = store.search_runs(["1"], "tags.`tlsweep.role` = 'sweep'")
    assert same.info.run_id == parent.info.run_id and same.info.status == "FINISHED"
    runs = _children(store, parent)
    new = [r for r in runs if r.info.run_id not in before]
    assert sorted(r.data.params["seed"] for r in new) == ["2", "3"]
    assert all(r.info.status == "FINISHED" and r.data.tags["tlsweep.slurm_job_id"] for r in new)
    summary = pd.read_csv(store.download_artifacts(parent.info.run_id, "report/summary.csv", str(tmp_path / "dl")))
    assert summary["n"].tolist() == [4]


ADVISE = ["experiment=advise", "advise.budget=2h", "advise.backbones=[efficientnet_lite0]",
          "advise.strategies=[probe,finetune]", "advise.lrs=[0.001,0.01]", "advise.max_seeds=3", "epochs=3"]


def _advised(store: MlflowClient, stdout: str) -> list:
    """The study ended with a recommendation, and every job it ran is a FINISHED child of its one parent."""
    assert "== tlsweep advise: recommendation ==" in stdout, stdout[-3000:]
    [parent] = store.search_runs(["1"], "tags.`tlsweep.role` = 'sweep'")
    assert parent.data.tags["tlsweep.advise.recommendation"].startswith("efficientnet_lite0/")
    runs = _children(store, parent)
    assert len(runs) >= 6 and all(r.info.status == "FINISHED" for r in runs)
    return runs


def test_the_advisor_runs_each_batch_as_one_slurm_array(slurm, tiny_root, tmp_path):
    """experiment=advise on the SLURM launcher: the sweeper's batches are submitit arrays, one per batch."""
    p = _tlsweep("-m", "hydra/launcher=slurm", *CPU_NODE, *ADVISE, *TINY, f"data.root={tiny_root}",
                 "tracking.sweep_name=advise-on-slurm", cwd=tmp_path, env=slurm.env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    runs = _advised(MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db"), p.stdout)
    jobs = slurm.scontrol_jobs()
    # a batch of one job is submitted as a plain job, without an ArrayJobId
    arrays = {jobs[j].get("ArrayJobId", j) for j in (r.data.tags["tlsweep.slurm_job_id"] for r in runs)}
    assert 2 <= len(arrays) < len(runs), arrays  # an array per batch, not one per job


def test_the_advisor_runs_its_batches_through_joblib(tiny_root, tmp_path):
    p = _tlsweep("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *ADVISE, *TINY, f"data.root={tiny_root}",
                 "tracking.sweep_name=advise-on-joblib", cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    runs = _advised(MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db"), p.stdout)
    assert len({r.data.tags["tlsweep.pid"] for r in runs}) >= 2  # jobs ran in joblib's worker processes
