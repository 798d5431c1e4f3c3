"""What a store or disk fault leaves working: the caches fall back to memory and say so, the report's folder is
named, a lock taken mid-run is said after MLflow's wait, a sweep names the jobs the store failed and resumes
them, and a real MLflow server stopped mid-sweep loses no run."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from tests.test_sweep import _callback
from tests import services
from tests.test_store_faults import FAST, NULL, _disk_full, _fails, _final, _held, _status
from tests.test_store_faults import _clean  # noqa: F401 -- the autouse fixture, active in this module too
from tlsweep.data import diskcache
from tlsweep.tracking import owner, faults as stores, runs as tracking
from tlsweep import sweep
from tlsweep.config.errors import ReportError, StoreError
from tlsweep.report import make
from tlsweep.run import run

# ---- the caches and the report's folder ----------------------------------------------------------------

def test_a_cache_that_cannot_be_written_stays_in_memory_and_says_so(tmp_path, monkeypatch, capsys):
    (tmp_path / "afile").write_text("")
    entry = tmp_path / "afile" / "cache" / "features-abc.pt"
    with diskcache.locked(entry, "the features"):
        assert diskcache.load(entry, lambda saved: None) is None
        diskcache.save({"x": torch.zeros(3)}, entry)
    full = tmp_path / "decoded-abc.pt"

    def no_space(obj, f):
        f.write(b"PK")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(diskcache.torch, "save", no_space)
    diskcache.save({"x": 1}, full)
    diskcache.save({"x": 1}, full)  # said once per entry
    assert capsys.readouterr().out.splitlines() == [
        f"[tlsweep] cannot write the feature cache at {entry} ({tmp_path / 'afile'} is a file, not a folder); "
        "kept in memory for this run",
        f"[tlsweep] cannot write the decoded-image cache at {full} (No space left on device); kept in memory for "
        "this run"]
    assert list(tmp_path.iterdir()) == [tmp_path / "afile"]  # no temporary file left behind


def test_a_report_folder_that_cannot_be_written_is_a_report_error(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("")
    with pytest.raises(ReportError, match=f"cannot write the report to {tmp_path / 'afile' / 'rep'} "
                                          rf"\({tmp_path / 'afile'} is a file, not a folder\)"):
        make._writable(tmp_path / "afile" / "rep")

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "TemporaryFile", no_space)
    with pytest.raises(ReportError, match=r"report to .*ok \(No space left on device\); free space there"):
        make._writable(tmp_path / "ok")



def test_a_report_on_a_server_that_does_not_answer_is_one_line_in_seconds():
    from tests.test_store_faults import closed_port

    uri = f"http://127.0.0.1:{closed_port()}"
    t0 = time.perf_counter()
    with pytest.raises(ReportError, match=rf"cannot reach the MLflow server at {uri} \(connection refused\)"):
        make.make_report(tracking_uri=uri, sweep="any")
    assert time.perf_counter() - t0 < 10  # MLflow's own retries took 4 min on a dead server

@pytest.mark.slow
def test_a_lock_taken_during_the_run_is_said_after_mlflows_wait(make_cfg, tmp_path, monkeypatch, capsys):
    """Locked after the run started: each MLflow statement waits MLFLOW_BUSY_S, then one line, the metrics as JSON,
    and no logged traceback of MLflow's."""
    db = tmp_path / "mlflow.db"
    tracking.setup_store(f"sqlite:///{db}")
    cfg = make_cfg(f"tracking.uri=sqlite:///{db}", NULL, "strategy=probe")
    log_result = tracking.log_result
    with contextlib.ExitStack() as held:
        monkeypatch.setattr(tracking, "log_result", lambda metrics: (held.enter_context(_held(db, 120)),
                                                                     log_result(metrics)))
        message, seconds = _fails(cfg)
    assert message.startswith(f"the MLflow store at {db} is locked by another process (still locked after 20 s)")
    assert seconds < 3 * stores.MLFLOW_BUSY_S + FAST  # the metrics, then one try to close the run
    captured = capsys.readouterr()
    assert any(line.startswith("{") for line in captured.out.splitlines()), captured.out
    assert "Traceback" not in captured.err + captured.out and "SQLAlchemy database error" not in captured.err
    assert _status(f"sqlite:///{db}") == [(tracking.run_name(cfg), "RUNNING")]


# ---- a sweep whose store fails for one job: the summary, and a resume that reruns it ---------------------

_start = _callback  # a sweep's callback started on the real config


def test_a_sweep_names_the_jobs_the_store_failed_and_resumes_them(make_cfg, tmp_path, monkeypatch, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setattr(sys, "argv", ["tlsweep", "-m", f"tracking.uri={uri}", "seed=0,1"])
    jobs = [make_cfg(f"tracking.uri={uri}", NULL, "strategy=probe", f"seed={s}") for s in (0, 1)]
    cb = _start(uri, "outage")
    run(jobs[0])
    disk = _disk_full(monkeypatch, _final)
    with pytest.raises(StoreError):
        run(jobs[1])
    disk["full"] = False  # the disk has room again
    cb.finish()
    out = capsys.readouterr().out
    resume = f"python -m tlsweep -m tracking.uri={uri} seed=0,1 tracking.sweep_name=outage"
    assert f"[tlsweep] 1 job(s) could not use the store: resnet18 probe seed=1 (cannot write the MLflow store at" in out
    assert f"Once the store works, resume: {resume}" in out
    assert "Traceback" not in out
    # the job's run, left RUNNING, is closed by the sweep's end (as an orphan's), and the sweep did not finish
    assert sorted(_status(uri))[1:] == [("resnet18 probe seed=0", "FINISHED"), ("resnet18 probe seed=1", "KILLED")]
    assert sorted(_status(uri))[0][1] != "FINISHED"

    monkeypatch.setattr(stores, "_failed", [])
    cb = _start(uri, "outage")  # the resume: seed=0 is skipped, seed=1 runs again
    run(jobs[0])
    run(jobs[1])
    cb.finish()
    assert "skipped, already FINISHED" in capsys.readouterr().out
    statuses = sorted(_status(uri))
    assert ("outage", "FINISHED") in statuses and statuses.count(("resnet18 probe seed=1", "FINISHED")) == 1


def test_a_sweep_ending_with_its_store_gone_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setattr(sys, "argv", ["tlsweep", "-m", f"tracking.uri={uri}", "seed=0,1"])
    cb = _start(uri, "gone")
    parent = cb.parent
    monkeypatch.setattr(stores, "LOCK_WAIT_S", 1)
    with _held(tmp_path / "mlflow.db", 60):
        t0 = time.perf_counter()
        cb.finish()
        seconds = time.perf_counter() - t0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith(f"[tlsweep] sweep gone ends with its store failing: the MLflow store at "
                              f"{tmp_path / 'mlflow.db'} is locked by another process"), out
    assert f"parent run {parent} stays RUNNING" in out[-1] and "tracking.sweep_name=gone" in out[-1]
    assert seconds < FAST


# ---- a real MLflow server that stops mid-sweep ----------------------------------------------------------

class _Server:
    """`mlflow server` on SQLite at a fixed port: killed as a crash would (SIGKILL), and started again there."""

    def __init__(self, root: Path, port: int):
        self.root, self.port, self.proc = root, port, None
        self.env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # fewer workers, a faster start
        self.env.pop("MLFLOW_TRACKING_URI", None)

    def start(self, after: float = 0) -> None:
        time.sleep(after)
        self.proc = services.start([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                                    f"sqlite:///{self.root / 'server.db'}", "--artifacts-destination",
                                    str(self.root / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port),
                                    "--workers", "1"], self.root / "mlflow.log", env=self.env, cwd=self.root,
                                   start_new_session=True)

    def ready(self) -> None:
        services.wait_until(lambda: urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5).status
                            == 200, "mlflow server", 180, [self.root / "mlflow.log"], [self.proc])

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # its session: the server and its workers
            self.proc.wait()


@pytest.mark.services
def test_a_server_that_stops_mid_sweep_loses_no_run(make_cfg, tmp_path, monkeypatch, capsys):
    """A short outage under a job is retried through; a long one fails the job in bounded time with its metrics
    printed; the sweep's end says so in one line; once the server is back, the resume reruns only that job."""
    server = _Server(tmp_path, services.free_port())
    uri = f"http://127.0.0.1:{server.port}"
    argv = ["tlsweep", "-m", f"tracking.uri={uri}", "seed=0,1"]
    monkeypatch.setattr(sys, "argv", argv)
    jobs = [make_cfg(f"tracking.uri={uri}", NULL, "strategy=probe", f"seed={s}") for s in (0, 1)]
    log_result = tracking.log_result
    try:
        server.start()
        server.ready()
        cb = _start(uri, "outage")

        def short_outage(metrics):  # the server dies as the job logs its result, and is back seconds later
            server.kill()
            threading.Thread(target=server.start, args=(1,)).start()
            log_result(metrics)

        monkeypatch.setattr(tracking, "log_result", short_outage)
        assert 0 <= run(jobs[0])["final_val_acc"] <= 1  # MLflow's bounded retries outlast the restart

        def long_outage(metrics):
            server.kill()
            log_result(metrics)

        monkeypatch.setattr(tracking, "log_result", long_outage)
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # the bound, shrunk: a dead server costs ~1 s
        message, seconds = _fails(jobs[1])
        assert message == f"cannot reach the MLflow server at {uri} (connection refused); start it or set tracking.uri"
        assert seconds < 60
        t0 = time.perf_counter()
        cb.finish()
        assert time.perf_counter() - t0 < FAST
        out = capsys.readouterr().out
        assert [json.loads(line)["run_name"] for line in out.splitlines() if line.startswith("{")] == \
            ["resnet18 probe seed=1"]
        assert f"sweep outage ends with its store failing: cannot reach the MLflow server at {uri}" in out
        assert "jobs the store failed: resnet18 probe seed=1" in out and "tracking.sweep_name=outage" in out

        server.start()
        server.ready()
        monkeypatch.setattr(tracking, "log_result", log_result)
        monkeypatch.setattr(owner, "pid_alive", lambda pid, start=None: False)  # the first launcher is gone
        monkeypatch.setattr(stores, "_failed", [])
        cb = _start(uri, "outage")
        run(jobs[0])
        run(jobs[1])
        cb.finish()
        assert "resnet18 probe seed=0: skipped, already FINISHED" in capsys.readouterr().out
        statuses = _status(uri)
        assert ("outage", "FINISHED") in statuses and statuses.count(("resnet18 probe seed=1", "FINISHED")) == 1
    finally:
        server.kill()
