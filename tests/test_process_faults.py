"""Processes that end badly: a job or a launcher killed hard, two launches of one sweep, Ctrl-C in the
report, and runs that diverge.

The verdicts (orphan or not, refuse a launcher or not) are pure functions, tested here on tags; the
slow tier kills real processes and starts two launchers at once.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from tests.test_sweep import _callback
from tlsweep.tracking import owner, runs as tracking
from tlsweep import sweep
from tlsweep.config.errors import Diverged
from tlsweep.config.keys import Tag, diverged
from tlsweep.runtime import Loaders
from tlsweep.training.loop import divergence, fit

HERE = owner.host()
TINY = ["model=timm", "model.arch=resnet10t", "model.weights=null"]


# ---- is the process still there (pure) ------------------------------------------------------------------

def _tags(pid="4242", host="h1", start="100"):
    return {Tag.PID: pid, Tag.HOST: host, Tag.PID_START: start}


def test_an_orphan_is_told_from_a_live_run_and_a_reused_pid_is_not_the_job():
    alive_as = lambda started: lambda pid, start: start == started  # noqa: E731 -- process 4242, started then
    assert owner.judge(_tags(), 1000, alive_as("100"), "h1") == (False, "running (process 4242 on host h1)")
    assert owner.judge(_tags(), 1000, lambda pid, start: False, "h1") == \
        (True, "orphaned (process 4242 on host h1 is gone)")
    # the OS gave pid 4242 to another process since: not the job
    assert owner.judge(_tags(), 1000, alive_as("999"), "h1")[0] is True


def test_a_run_on_another_host_is_not_judged_but_its_last_activity_is_said():
    never = lambda pid, start: pytest.fail("a pid of another host must not be looked up here")  # noqa: E731
    verdict, why = owner.judge(_tags(host="node7"), now=1000, alive=never, here="login1", last_activity=1000 - 300)
    assert verdict is None
    assert why == "process 4242 runs on host node7, which cannot be checked from login1; last activity 5 min ago"
    assert owner.judge({}, 1000, never, "h1", 1000 - 40) == \
        (None, "no process recorded on the run, so it cannot be checked; last activity 40 s ago")


def test_pid_alive_checks_the_process_start_and_a_zombie_is_gone():
    me = owner.identity()
    assert me[Tag.HOST] == HERE and me[Tag.PID] == str(os.getpid())
    assert owner.pid_alive(os.getpid(), me[Tag.PID_START] or None)
    if me[Tag.PID_START]:  # Linux: a reused pid shows another start
        assert not owner.pid_alive(os.getpid(), str(int(me[Tag.PID_START]) + 1))
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while owner.pid_alive(child.pid) and time.monotonic() < deadline:  # ended, not yet reaped: a zombie
        time.sleep(0.02)
    assert not owner.pid_alive(child.pid)
    child.wait()
    assert not owner.pid_alive(child.pid)


def test_a_server_store_refuses_a_second_launcher_while_the_first_lives(monkeypatch):
    monkeypatch.delenv(owner.TAKE_OVER_ENV, raising=False)
    tags = {**_tags(), Tag.LAUNCHED: "2026-01-02T03:04:05+00:00"}
    alive, dead = (lambda pid, start: True), (lambda pid, start: False)
    line = ("tlsweep: sweep ladder is already being run by process 4242 on host h1 since 2026-01-02T03:04:05+00:00; "
            "wait for it or choose another tracking.sweep_name")
    assert owner.refusal("ladder", "RUNNING", tags, "h1", alive) == line
    assert owner.refusal("ladder", "RUNNING", tags, "h1", dead) is None  # killed hard: resume
    assert owner.refusal("ladder", "KILLED", tags, "h1", alive) is None  # closed: resume
    assert owner.refusal("ladder", "RUNNING", {}, "h1", alive) is None  # no owner recorded: as before
    remote = owner.refusal("ladder", "RUNNING", tags, "h2", alive)
    assert remote.startswith(line) and f"{owner.TAKE_OVER_ENV}=1" in remote
    monkeypatch.setenv(owner.TAKE_OVER_ENV, "1")
    assert owner.refusal("ladder", "RUNNING", tags, "h2", alive) is None


def test_a_local_sweep_is_held_by_one_process_and_freed_when_it_dies(tmp_path):
    db = tmp_path / "mlflow.db"
    first, second = owner.LocalClaim(db, "ladder/1"), owner.LocalClaim(db, "ladder/1")
    assert first.acquire() is None
    busy = second.acquire()
    assert busy.startswith(f"tlsweep: sweep ladder/1 is already being run by process {os.getpid()} on host {HERE} "
                           "since ") and busy.endswith("; wait for it or choose another tracking.sweep_name")
    assert owner.LocalClaim(db, "ladder-2").acquire() is None  # another name: its own lock
    first.release()
    assert second.acquire() is None
    second.release()
    # a holder killed hard: the OS drops its flock, so the next launcher goes on
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from tlsweep.tracking.owner import LocalClaim; c = LocalClaim(Path(sys.argv[1]), 'ladder/1'); "
                               "print(c.acquire(), flush=True); time.sleep(600)", str(db)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "None"
    assert f"by process {holder.pid} on host" in owner.LocalClaim(db, "ladder/1").acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    again = owner.LocalClaim(db, "ladder/1")
    assert again.acquire() is None
    again.release()


def test_the_report_names_orphans_and_does_not_wait_for_them(tmp_path):
    """A sweep whose jobs died hard: one on this host (its process gone), one on another host. The report is
    made from the finished run and says which is which, with the other's last activity."""
    from tlsweep.report import make_report

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _, exp_id = tracking.setup_store(uri)
    client = MlflowClient(uri)
    parent = client.create_run(exp_id, run_name="hard", tags={Tag.ROLE: "sweep", Tag.SWEEP_NAME: "hard"}).info.run_id
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid no process has now
    ids = {}
    for seed, tags in ((0, {}), (1, {Tag.PID: str(gone.pid), Tag.HOST: HERE}), (2, {Tag.PID: "77", Tag.HOST: "node7"})):
        rid = client.create_run(exp_id, run_name=f"probe seed={seed}", tags={Tag.PARENT: parent, Tag.ROLE: "job",
                                                                              **tags}).info.run_id
        client.log_param(rid, "seed", str(seed))
        client.log_metric(rid, "final_val_acc" if seed == 0 else "train_loss", 0.5,
                          timestamp=int((time.time() - 600) * 1000))
        ids[seed] = rid
    client.set_terminated(ids[0], "FINISHED")
    start = time.monotonic()
    rep = make_report(uri, sweep="hard", out=tmp_path / "report")
    assert time.monotonic() - start < 60
    reasons = {f["run_name"]: (f["status"], f["reason"]) for f in rep.failed}
    assert reasons["probe seed=1"] == ("RUNNING", f"orphaned (process {gone.pid} on host {HERE} is gone)")
    assert reasons["probe seed=2"] == ("RUNNING", f"process 77 runs on host node7, which cannot be checked from "
                                                  f"{HERE}; last activity 10 min ago")
    assert "2 run(s) still RUNNING in the store, left out and not waited for: 1 look(s) orphaned (the process is " \
           "gone), 1 cannot be checked from here." in rep.markdown
    assert f"- probe seed=1 ({ids[1]}) RUNNING: orphaned (process {gone.pid} on host {HERE} is gone)" in rep.markdown


# ---- runs that diverge ------------------------------------------------------------------------------------

def _run(status, name, tags=None):
    return SimpleNamespace(info=SimpleNamespace(status=status, run_id=name, run_name=name), data=SimpleNamespace(
        tags=tags or {}))


def test_a_diverged_run_is_a_lost_candidate_not_a_failure():
    lost = _run("FAILED", "probe lr=1e+06", {Tag.DIVERGED: "epoch 1, lr 1e+06 (head 1e+06), train loss nan",
                                             Tag.ERROR: "Diverged: non-finite training loss (nan) in epoch 1"})
    ok, broken = _run("FINISHED", "probe lr=0.001"), _run("FAILED", "probe lr=0.01", {Tag.ERROR: "DataError: x"})
    assert diverged(lost.data.tags) and not diverged(ok.data.tags) and not diverged(broken.data.tags)
    assert sweep.sweep_status([ok, lost]) == "FINISHED"
    assert sweep.sweep_status([ok, lost, broken]) == "FAILED"
    assert sweep.sweep_status([lost]) == "FINISHED"
    assert sweep.summary_line([ok, lost], planned=2) == \
        "[tlsweep] 1 of 2 jobs finished; 1 diverged: probe lr=1e+06 (epoch 1)"
    assert sweep.summary_line([ok, lost, broken], planned=4) == (
        "[tlsweep] 1 of 4 jobs failed: DataError: x; 1 diverged: probe lr=1e+06 (epoch 1); 1 of 4 never started; "
        "runs: probe lr=0.01 (FAILED)")
    # a KILLED run tagged diverged (killed between the tag and its close) is no lost candidate: it runs again
    assert sweep.sweep_status([_run("KILLED", "x", {Tag.DIVERGED: "epoch 1"})]) == "KILLED"


class NanAfter(nn.Module):
    """A linear model whose training output turns NaN from its `k`-th training step on."""

    def __init__(self, k: int):
        super().__init__()
        self.fc, self.k, self.steps = nn.Linear(4, 2), k, 0

    def forward(self, x):
        if self.training:
            self.steps += 1
            return self.fc(x) * (float("nan") if self.steps >= self.k else 1.0)
        return self.fc(x)


def test_a_nan_loss_stops_the_epoch_at_its_step_and_names_the_epoch_and_lrs():
    model = NanAfter(k=2)
    drawn = []
    batches = [(torch.randn(4, 4), torch.tensor([0, 1, 0, 1])) for _ in range(10)]
    loader = (drawn.append(i) or b for i, b in enumerate(batches))  # counts what the loop took
    opt = torch.optim.SGD([{"params": [model.fc.weight], "lr": 1e6, "name": "head"},
                           {"params": [model.fc.bias], "lr": 1e5, "name": "backbone"}], lr=1e6)
    with pytest.raises(Diverged, match=r"non-finite training loss \(nan\) in epoch 3") as info:
        fit(model, Loaders(loader, batches[:1]), opt, None, epochs=2, first_epoch=3)
    assert len(drawn) == 2  # on the CPU the check runs every step: the 8 batches after the NaN are not trained on
    err = info.value
    assert (err.epoch, err.lrs, err.loss) == (3, {"head": 1e6, "backbone": 1e5}, "train loss nan")
    assert divergence(err, 1e6) == "epoch 3, lr 1e+06 (head 1e+06, backbone 1e+05), train loss nan"
    many = Diverged("x", 1, {f"stage{i}": 0.1 for i in range(10)}, "val loss inf")
    assert divergence(many, 0.1).endswith("stage7 0.1, ... 2 more), val loss inf")


_sweep = _callback  # a sweep's callback started on the real config


@pytest.fixture
def sweep_env(monkeypatch):
    """Whatever a sweep's callback exports is undone after the test."""
    for var in (tracking.PARENT_ENV, tracking.SWEEP_NAME_ENV, tracking.SWEPT_ENV, tracking.EXPERIMENT_ENV,
                "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_a_diverged_config_counts_as_done_and_the_report_lists_it_apart(tmp_path, make_cfg, sweep_env, capsys):
    from tlsweep.report import make_report
    from tlsweep.run import run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cb = _sweep(uri, "lost")
    parent, exp_id = cb.parent, cb.exp_id
    sweep_env.setenv(tracking.SWEPT_ENV, '["optim.lr"]')  # as a sweep over optim.lr names its runs
    sgd = [*TINY, "strategy=finetune", "optim=sgd", "batch_size=2"]
    run(make_cfg(*sgd, "optim.lr=0.01"))
    with pytest.raises(Diverged):
        run(make_cfg(*sgd, "optim.lr=1e6"))
    client = MlflowClient(uri)
    runs = {r.info.run_name: r for r in client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent}'")}
    lost = runs["finetune lr=1000000.0"]
    assert lost.info.status == "FAILED" and lost.data.tags[Tag.ERROR].startswith("Diverged: non-finite")
    assert lost.data.tags[Tag.DIVERGED].startswith("epoch 1, lr 1e+06 (")
    assert lost.data.tags[Tag.PID] == str(os.getpid()) and lost.data.tags[Tag.HOST] == HERE

    capsys.readouterr()
    run(make_cfg(*sgd, "optim.lr=1e6"))  # a resume: the lost candidate is not tried again
    assert "finetune lr=1000000.0: skipped, diverged in this sweep (epoch 1, lr 1e+06" in capsys.readouterr().out
    assert len(client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent}'")) == 2

    cb.finish()
    assert "[tlsweep] 1 of 2 jobs finished; 1 diverged: finetune lr=1000000.0 (epoch 1)" in capsys.readouterr().out
    assert client.get_run(parent).info.status == "FINISHED"

    rep = make_report(uri, sweep="lost", by=["strategy.name"], out=tmp_path / "report")  # lr: a pair key here
    assert [d["run_name"] for d in rep.diverged] == ["finetune lr=1000000.0"] and not rep.failed
    assert rep.summary[["n", "n_diverged"]].values.tolist() == [[1, 1]]  # never averaged in, never dropped
    assert "| finetune | 1 (+1 diverged) |" in rep.markdown
    assert f"Diverged:\n- finetune lr=1000000.0 ({lost.info.run_id}): epoch 1, lr 1e+06" in rep.markdown
    table = pd.read_csv(tmp_path / "report" / "runs.csv", index_col="run_id", keep_default_na=False)
    assert table.at[lost.info.run_id, "diverged"].startswith("epoch 1") and not table.at[lost.info.run_id, "used"]


def test_ctrl_c_in_the_report_keeps_the_runs_and_closes_the_parent(tmp_path, make_cfg, sweep_env, monkeypatch,
                                                                    capsys):
    from tlsweep.report import make
    from tlsweep.run import run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cb = _sweep(uri, "cut", report=True)
    parent = cb.parent
    run(make_cfg(*TINY, "strategy=probe"))
    real = make.make_report

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(make, "make_report", interrupted)
    with pytest.raises(KeyboardInterrupt):  # the interrupt still ends the process (exit 130 in the CLI)
        cb.finish()
    out = capsys.readouterr().out
    assert ("[tlsweep] report of sweep cut interrupted; its runs are kept. Make it with: "
            f"python -m tlsweep.report sweep=cut tracking.uri={uri}") in out
    client = MlflowClient(uri)
    assert client.get_run(parent).info.status == "FINISHED"
    (job,) = client.search_runs([cb.exp_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert job.info.status == "FINISHED"
    assert owner.LocalClaim(tmp_path / "mlflow.db", "cut").acquire() is None  # the sweep's lock went with it
    rep = real(uri, sweep="cut", out=tmp_path / "later")  # made again from the store
    assert rep.summary["n"].tolist() == [1] and (tmp_path / "later" / "summary.md").exists()

    # the same from the atexit hook (a job had raised, so Hydra skipped on_multirun_end): the process is
    # ending already, so the interrupt is not raised again there (no traceback at exit)
    cb = _sweep(uri, "cut-at-exit", report=True)
    parent = cb.parent
    run(make_cfg(*TINY, "strategy=probe", "seed=1"))
    cb._finish_at_exit()
    assert "report of sweep cut-at-exit interrupted" in capsys.readouterr().out
    assert client.get_run(parent).info.status == "FINISHED"


# ---- real processes (slow tier) ---------------------------------------------------------------------------

def _env():
    return {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR")}


def _sweep_cmd(tiny_root, uri, name, *extra):
    return [sys.executable, "-m", "tlsweep", "-m", *TINY, "data=imagefolder", f"data.root={tiny_root}",
            "data.image_size=32", "data.num_workers=0", "batch_size=2", "device=cpu", f"tracking.uri={uri}",
            f"tracking.sweep_name={name}", *extra]


def _jobs(client, exp_id):
    return client.search_runs([exp_id], "tags.`tlsweep.role` = 'job'", max_results=1000)


@pytest.mark.slow
def test_a_sigkilled_sweep_shows_its_orphan_and_resumes(tmp_path, tiny_root):
    """SIGKILL the launcher (the basic launcher: the job runs in it) mid-job. The store then shows the job
    RUNNING; the report says it is orphaned, naming the dead process, without waiting; the same command
    resumes (the lock died with its holder): every config FINISHED once, the orphan KILLED."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.setup_store(uri)
    client = MlflowClient(uri)
    exp_id = client.get_experiment_by_name("tlsweep").experiment_id
    cmd = _sweep_cmd(tiny_root, uri, "kill9", "strategy=finetune", "seed=0,1,2,3", "epochs=8")
    first = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, orphan = time.monotonic() + 300, None
    while orphan is None and first.poll() is None and time.monotonic() < deadline:
        jobs = _jobs(client, exp_id)
        if any(r.info.status == "FINISHED" for r in jobs):  # mid-job: one done, the next one has logged an epoch
            orphan = next((r for r in jobs if r.info.status == "RUNNING" and r.data.metrics), None)
        time.sleep(0.05)
    assert orphan is not None, "no job was caught running"
    first.send_signal(signal.SIGKILL)
    first.wait()
    orphan = client.get_run(orphan.info.run_id)
    assert orphan.info.status == "RUNNING" and orphan.data.tags[Tag.PID] == str(first.pid)
    (parent,) = client.search_runs([exp_id], "tags.`tlsweep.role` = 'sweep'")
    assert parent.info.status == "RUNNING"

    start = time.monotonic()
    rep = subprocess.run([sys.executable, "-m", "tlsweep.report", "sweep=kill9", f"tracking.uri={uri}"],
                         cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert rep.returncode == 0, rep.stderr[-3000:]
    assert f"{orphan.info.run_name} ({orphan.info.run_id}) RUNNING: orphaned (process {first.pid} on host {HERE} " \
           "is gone)" in rep.stdout
    assert "1 look(s) orphaned" in rep.stdout and time.monotonic() - start < 120  # said, not waited for

    again = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "already being run" not in again.stderr and "(resumed: " in again.stdout
    jobs = _jobs(client, exp_id)
    assert Counter(r.data.params["seed"] for r in jobs if r.info.status == "FINISHED") == \
        {"0": 1, "1": 1, "2": 1, "3": 1}
    assert client.get_run(orphan.info.run_id).info.status == "KILLED"
    assert all(r.info.status in ("FINISHED", "KILLED") for r in jobs)
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_two_launches_of_one_sweep_run_each_config_once(tmp_path, tiny_root):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.setup_store(uri)  # the store made first, as by an earlier sweep: what is tested is the sweep's claim
    cmd = _sweep_cmd(tiny_root, uri, "twice", "strategy=probe", "seed=0,1,2", "epochs=2")
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 1], [o[1][-2000:] for o in outs]
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    refused = outs[loser][1].strip().splitlines()
    assert refused[-1].startswith(f"tlsweep: sweep twice is already being run by process {procs[winner].pid} "
                                  f"on host {HERE} since "), outs[loser][1][-2000:]
    assert refused[-1].endswith("; wait for it or choose another tracking.sweep_name")
    assert "Traceback" not in outs[loser][1] and "Launching" not in outs[loser][0] + outs[loser][1]
    client = MlflowClient(uri)
    exp_id = client.get_experiment_by_name("tlsweep").experiment_id
    jobs = _jobs(client, exp_id)
    assert sorted(r.data.params["seed"] for r in jobs) == ["0", "1", "2"]  # no config ran twice
    assert all(r.info.status == "FINISHED" for r in jobs)
    (parent,) = client.search_runs([exp_id], "tags.`tlsweep.role` = 'sweep'")
    assert parent.info.status == "FINISHED" and parent.data.tags[Tag.PID] == str(procs[winner].pid)


@pytest.mark.slow
def test_a_diverged_job_lets_the_sweep_go_on_and_exit_0(tmp_path, tiny_root):
    """optim=sgd optim.lr=1e6 in a 3-job sweep: the other two run, the command exits 0 with the diverged run
    named apart, and a resume does not run it again. The same config alone exits 1 with one line."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = _sweep_cmd(tiny_root, uri, "lr", "strategy=finetune", "optim=sgd", "optim.lr=0.01,1e6,0.001", "epochs=2")
    p = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "[tlsweep] 2 of 3 jobs finished; 1 diverged: finetune lr=1000000.0 (epoch 1)" in p.stdout
    assert "Diverged:\n- finetune lr=1000000.0" in p.stdout and "Traceback" not in p.stderr
    client = MlflowClient(uri)
    exp_id = client.get_experiment_by_name("tlsweep").experiment_id
    status = {r.data.params["optim.lr"]: r.info.status for r in _jobs(client, exp_id)}
    assert status == {"0.01": "FINISHED", "1000000.0": "FAILED", "0.001": "FINISHED"}
    (parent,) = client.search_runs([exp_id], "tags.`tlsweep.role` = 'sweep'")
    assert parent.info.status == "FINISHED"

    again = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "finetune lr=1000000.0: skipped, diverged in this sweep" in again.stdout
    assert len(_jobs(client, exp_id)) == 3

    one = [sys.executable, "-m", "tlsweep", *cmd[4:cmd.index("tracking.sweep_name=lr")], "strategy=finetune",
           "optim=sgd", "optim.lr=1e6", "epochs=2"]  # no -m: a single run
    alone = subprocess.run(one, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert alone.returncode == 1
    assert "tlsweep: Diverged: non-finite training loss (nan) in epoch 1; lower optim.lr" in \
        alone.stderr.splitlines(), alone.stderr[-2000:]  # as Hydra prints a job's error: the message alone
    assert "Traceback" not in alone.stderr
