"""Faults of the store around a run fail fast, in one line that names the URI or path, and never lose a
finished run: a tracking server that does not answer, a store path that cannot be written, a full disk, an
SQLite store another process holds locked. What keeps working after one: tests/test_fault_recovery.py."""
from __future__ import annotations

import contextlib
import errno
import gc
import http.server
import json
import logging
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path

import pytest
import sqlalchemy.exc
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.tracking import MlflowClient
from urllib3.util.retry import Retry

from tlsweep.data import diskcache, decoded as fastdata
from tlsweep.features import cache as features
from tlsweep.tracking import faults as stores, runs as tracking
from tlsweep.config.errors import StoreError
from tlsweep.run import run

NULL = "model.weights=null"  # random init: no download
FAST = 10  # seconds: a store fault is said within this, never after minutes of retries


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    """Each test starts with no store fault recorded, no cache failure said, and no sweep in the environment."""
    monkeypatch.setattr(stores, "_failed", [])
    monkeypatch.setattr(diskcache, "_said", set())
    for var in (tracking.PARENT_ENV, tracking.SWEEP_NAME_ENV, tracking.SWEPT_ENV, tracking.EXPERIMENT_ENV,
                "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)  # restored as it was when the test ends


def closed_port() -> int:
    """A port nothing listens on: bound, then let go."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fails(cfg) -> tuple[str, float]:
    t0 = time.perf_counter()
    with pytest.raises(StoreError) as info:
        run(cfg)
    return str(info.value), time.perf_counter() - t0


def _status(uri: str) -> list[tuple[str, str]]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tlsweep")
    return [(r.info.run_name, r.info.status) for r in client.search_runs([exp.experiment_id])] if exp else []


# ---- a tracking server that does not answer ----------------------------------------------------------

@contextlib.contextmanager
def _server(kind: str):
    """A URI that fails as `kind` does: nothing listening, a listener that never answers, a host no
    resolver knows, an HTTP server that is no MLflow server."""
    if kind == "refused":
        yield f"http://127.0.0.1:{closed_port()}", "connection refused"
    elif kind == "timed out":
        with socket.socket() as s:  # the kernel accepts the connection; nobody reads or answers
            s.bind(("127.0.0.1", 0))
            s.listen(4)
            yield f"http://127.0.0.1:{s.getsockname()[1]}", f"no answer in {stores.PROBE_S} s"
    elif kind == "unknown host":
        yield "http://no-such-host.invalid:5000", "unknown host no-such-host.invalid"  # .invalid never resolves
    else:
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        try:
            yield (f"http://127.0.0.1:{srv.server_address[1]}",
                   "answers, but not as an MLflow server (GET /health: HTTP 404)")
        finally:
            srv.shutdown()
            srv.server_close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.mark.parametrize("kind", ["refused", "timed out", "unknown host", "not mlflow"])
def test_a_server_that_does_not_answer_fails_in_seconds_naming_the_uri(make_cfg, monkeypatch, kind):
    monkeypatch.setattr(stores, "PROBE_S", 1)
    with _server(kind) as (uri, cause):
        message, seconds = _fails(make_cfg(f"tracking.uri={uri}", NULL))
    assert uri in message and cause in message and "\n" not in message, message
    assert seconds < FAST, seconds


def test_the_console_says_a_dead_server_in_one_line(tmp_path):
    """A multirun stops at its start, before any job: one line, no traceback, exit 1. (Hydra turns a callback's
    exception into a warning and starts the jobs anyway; the callback ends the command instead.)"""
    uri = f"http://127.0.0.1:{closed_port()}"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR")}
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "tlsweep", "-m", f"tracking.uri={uri}", "seed=0,1"], cwd=tmp_path,
                       capture_output=True, text=True, env=env, timeout=120)
    seconds = time.perf_counter() - t0
    assert p.returncode == 1, p.stderr
    assert p.stderr.strip() == (f"tlsweep: StoreError: cannot reach the MLflow server at {uri} (connection refused); "
                                "start it or set tracking.uri"), p.stderr
    assert "Launching" not in p.stdout + p.stderr and "Traceback" not in p.stdout + p.stderr
    assert seconds < FAST, seconds


@pytest.mark.slow
def test_the_console_says_a_dead_server_in_one_line_for_a_single_run(tmp_path):
    uri = f"http://127.0.0.1:{closed_port()}"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR")}
    p = subprocess.run([sys.executable, "-m", "tlsweep", f"tracking.uri={uri}", NULL], cwd=tmp_path,
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 1, p.stderr
    assert f"tlsweep: StoreError: cannot reach the MLflow server at {uri} (connection refused)" in p.stderr
    assert "Traceback" not in p.stdout + p.stderr


def test_mlflows_retries_are_bounded_unless_the_user_set_them(monkeypatch):
    for key in stores.HTTP_RETRIES:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "42")
    stores.configure()
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "42"  # the user's value stays
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == stores.HTTP_RETRIES["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    # urllib3's own backoff with these values (as MLflow builds its Retry): a refused call sleeps at most
    # 0 + 2 + 4 + 8 + 16 s plus 1 s of jitter per retry, and so survives an outage of that long
    retry = Retry(total=int(stores.HTTP_RETRIES["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]),
                  backoff_factor=int(stores.HTTP_RETRIES["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"]), backoff_jitter=0)
    sleeps = []
    with contextlib.suppress(Exception):
        while True:
            retry = retry.increment(method="GET", url="/", error=ConnectionRefusedError())
            sleeps.append(retry.get_backoff_time())
    jitter = float(stores.HTTP_RETRIES["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"]) * len(sleeps)
    assert 25 <= sum(sleeps) and sum(sleeps) + jitter <= 40, sleeps


# ---- a store path that cannot be written ---------------------------------------------------------------

def test_a_store_under_a_regular_file_fails_naming_the_path(make_cfg, tmp_path):
    (tmp_path / "afile").write_text("")
    db = tmp_path / "afile" / "sub" / "mlflow.db"
    message, seconds = _fails(make_cfg(f"tracking.uri=sqlite:///{db}", NULL))
    assert message == (f"cannot create the MLflow store at {db} ({tmp_path / 'afile'} is a file, not a folder); "
                       "set tracking.uri to a path in a writable folder")
    assert seconds < FAST


@pytest.mark.parametrize("code,words", [(errno.EACCES, "Permission denied"), (errno.ENOSPC, "No space left"),
                                        (errno.EROFS, "Read-only file system")])
def test_a_store_folder_that_refuses_writes_fails_naming_the_path(make_cfg, tmp_path, monkeypatch, code, words):
    """As root, chmod stops no write: the refusal is the OS's error on the first write into the folder."""
    def refused(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(kwargs.get("dir")))

    monkeypatch.setattr(stores.tempfile, "TemporaryFile", refused)
    db = tmp_path / "store" / "mlflow.db"
    message, seconds = _fails(make_cfg(f"tracking.uri=sqlite:///{db}", NULL))
    assert str(db) in message and words in message, message
    assert ("free space" in message) == (code == errno.ENOSPC), message
    assert seconds < FAST


def test_a_file_that_is_no_store_is_named(make_cfg, tmp_path):
    db = tmp_path / "notes.db"
    db.write_text("these are notes, not a database " * 200)
    message, _ = _fails(make_cfg(f"tracking.uri=sqlite:///{db}", NULL))
    assert message == (f"cannot open the MLflow store at {db} (file is not a database); point tracking.uri at an "
                       "MLflow store, or at a new file")


# ---- a full disk under a finished run ------------------------------------------------------------------

def _disk_full(monkeypatch, when) -> dict:
    """Make SQLite's writes fail as on a full disk (what MLflow raises for it) from the first log_batch for which
    `when(metrics)` holds: then every write fails, closing the run too, until the returned switch's "full" is
    set False (space freed); it is not set again."""
    switch = {"full": False, "armed": True}

    def refuse():
        orig = sqlite3.OperationalError("database or disk is full")
        raise MlflowException(sqlalchemy.exc.OperationalError("INSERT", {}, orig),
                              error_code=TEMPORARILY_UNAVAILABLE) from orig

    def wrap(name):
        real = getattr(SqlAlchemyStore, name)

        def write(self, *args, **kwargs):
            metrics = kwargs.get("metrics", args[1] if len(args) > 1 else [])
            if name == "log_batch" and switch["armed"] and when(metrics):
                switch.update(full=True, armed=False)
            if switch["full"]:
                refuse()
            return real(self, *args, **kwargs)
        monkeypatch.setattr(SqlAlchemyStore, name, write)

    for name in ("log_batch", "set_tag", "update_run_info"):
        wrap(name)
    return switch


def _final(metrics) -> bool:
    return any(m.key == "final_val_acc" for m in metrics)


def test_a_full_disk_never_loses_a_finished_runs_metrics(make_cfg, tmp_path, monkeypatch, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = make_cfg(f"tracking.uri={uri}", NULL, "strategy=probe")
    tracking.setup_store(uri)
    disk = _disk_full(monkeypatch, _final)
    message, seconds = _fails(cfg)
    disk["full"] = False
    assert message.startswith(f"cannot write the MLflow store at {tmp_path / 'mlflow.db'} (database or disk is full)")
    assert seconds < 60  # the run trains first
    out = capsys.readouterr().out
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(lines) == 1 and 0 <= lines[0]["metrics"]["final_val_acc"] <= 1, out
    assert lines[0]["run_name"] == tracking.run_name(cfg) and lines[0]["config_key"] == tracking.config_key(cfg)
    assert "stays RUNNING in the store" in out and "final_val_acc=" not in out  # no claim that it finished
    assert _status(uri) == [(tracking.run_name(cfg), "RUNNING")]  # not FINISHED: a resume runs it again


def test_a_full_store_disk_is_said_before_the_run(make_cfg, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.setup_store(uri)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(stores.tempfile, "TemporaryFile", no_space)
    message, seconds = _fails(make_cfg(f"tracking.uri={uri}", NULL))
    assert message == (f"cannot write the MLflow store at {tmp_path / 'mlflow.db'} (No space left on device); free "
                       "space on its disk or set tracking.uri to a store elsewhere")
    assert seconds < FAST and _status(uri) == []


@pytest.fixture
def tmpfs(tmp_path):
    """A real 8 MiB tmpfs, where mounting one is permitted (root, outside a locked-down container)."""
    root = tmp_path / "tmpfs"
    root.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(root)], capture_output=True,
                           text=True) if shutil.which("mount") else None
    if mount is None or mount.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({mount.stderr.strip() if mount else 'no mount command'})")
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


def _fill(folder: Path) -> Path:
    """Write into `folder` until its disk is full; returns the filler, whose removal frees it."""
    filler = folder / "filler"
    with contextlib.suppress(OSError), open(filler, "wb") as f:
        while True:
            f.write(bytes(64 * 1024))
            f.flush()
    return filler


def test_a_real_full_disk_under_the_store_and_the_caches(make_cfg, tmpfs, monkeypatch, capsys):
    """The store and the caches on a tmpfs that is full whenever a cache is saved, and when the run has trained:
    the caches stay in memory and say so; the metrics come out as a JSON line; the run is not FINISHED."""
    uri = f"sqlite:///{tmpfs / 'store' / 'mlflow.db'}"
    tracking.setup_store(uri)
    cfg = make_cfg(f"tracking.uri={uri}", NULL, "strategy=probe", f"cache_dir={tmpfs / 'cache'}",
                   "data.cache_to_disk=true")
    save, log_result = diskcache.save, tracking.log_result

    def save_on_a_full_disk(obj, path):
        filler = _fill(tmpfs)
        try:
            save(obj, path)
        finally:
            filler.unlink()  # room again for the epochs' metrics

    def log_on_a_full_disk(metrics):
        fillers.append(_fill(tmpfs))
        log_result(metrics)

    fillers = []
    monkeypatch.setattr(features, "_MEMO", {})  # what an earlier test left in memory is not saved again
    monkeypatch.setattr(fastdata, "_STORES", OrderedDict())
    monkeypatch.setattr(diskcache, "save", save_on_a_full_disk)
    monkeypatch.setattr(tracking, "log_result", log_on_a_full_disk)
    message, _ = _fails(cfg)
    for f in fillers:
        f.unlink()
    assert message.startswith(f"cannot write the MLflow store at {tmpfs / 'store' / 'mlflow.db'} ("), message
    out = capsys.readouterr().out
    assert "cache at " + str(tmpfs / "cache") in out and "(No space left on device); kept in memory" in out, out
    assert any(json.loads(line)["metrics"].get("final_val_acc") is not None for line in out.splitlines()
               if line.startswith("{")), out
    assert _status(uri) == [(tracking.run_name(cfg), "RUNNING")]


def test_a_real_full_disk_before_the_run_names_the_store(make_cfg, tmpfs):
    uri = f"sqlite:///{tmpfs / 'mlflow.db'}"
    tracking.setup_store(uri)
    _fill(tmpfs)
    message, seconds = _fails(make_cfg(f"tracking.uri={uri}", NULL))
    assert message.startswith(f"cannot write the MLflow store at {tmpfs / 'mlflow.db'} (No space left on device)")
    assert seconds < FAST


def test_an_error_outside_mlflow_is_not_the_stores():
    """A full /dev/shm under a data loader raises the OSError a full store would: only MLflow's calls count."""
    assert stores.fault(OSError(errno.ENOSPC, "No space left on device"), "sqlite:////x/mlflow.db") is None
    assert stores.fault(ValueError("database is locked"), "sqlite:////x/mlflow.db") is None


# ---- a store another process holds locked --------------------------------------------------------------

@contextlib.contextmanager
def _held(db: Path, seconds: float):
    """Another process holds the db's exclusive lock for `seconds` (or until the block ends)."""
    code = ("import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "c.execute('BEGIN EXCLUSIVE'); print('held', flush=True); time.sleep(float(sys.argv[2]))")
    holder = subprocess.Popen([sys.executable, "-c", code, str(db), str(seconds)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_released_within_the_bound_lets_the_run_through(make_cfg, tmp_path):
    db = tmp_path / "mlflow.db"
    tracking.setup_store(f"sqlite:///{db}")
    cfg = make_cfg(f"tracking.uri=sqlite:///{db}", NULL, "strategy=probe")
    with _held(db, 2):
        t0 = time.perf_counter()
        result = run(cfg)
    assert time.perf_counter() - t0 >= 1.5  # it waited for the lock
    assert 0 <= result["final_val_acc"] <= 1
    assert _status(f"sqlite:///{db}") == [(tracking.run_name(cfg), "FINISHED")]


def test_a_lock_held_past_the_bound_is_said_in_one_line(make_cfg, tmp_path, monkeypatch):
    db = tmp_path / "mlflow.db"
    tracking.setup_store(f"sqlite:///{db}")
    monkeypatch.setattr(stores, "LOCK_WAIT_S", 1)
    with _held(db, 60):
        message, seconds = _fails(make_cfg(f"tracking.uri=sqlite:///{db}", NULL))
    assert message == (f"the MLflow store at {db} is locked by another process (still locked after 1 s); close what "
                       "holds it (a sqlite3 shell, a DB browser, mlflow gc) and run again, or set tracking.uri")
    assert 1 <= seconds < 5, seconds
    assert _status(f"sqlite:///{db}") == []


# ---- a lock this very process holds after an interrupt --------------------------------------------------

@contextlib.contextmanager
def _gc_off():
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _own_lock(uri: str, where: str, monkeypatch) -> None:
    """Leave a write transaction of this process open on the store, as a Ctrl-C inside SQLAlchemy's cleanup after
    a write does: on a connection that only the garbage collector can return ("lost"), or on one back in
    MLflow's pool without its rollback ("pooled")."""
    engine = MlflowClient(uri)._tracking_client.store.engine
    conn = engine.connect()
    conn.exec_driver_sql("UPDATE experiments SET name = name")  # pysqlite begins the write transaction
    if where == "lost":
        cycle = {"connection": conn}
        cycle["self"] = cycle  # unreachable once dropped, freed only by a collection
    else:
        with monkeypatch.context() as m:  # the interrupt cut the pool's reset short
            m.setattr(engine.dialect, "do_rollback", lambda dbapi_connection: None)
            conn.close()


@pytest.mark.parametrize("where", ["lost", "pooled"])
def test_a_write_an_interrupt_cut_short_does_not_lock_this_process_out(make_cfg, tmp_path, monkeypatch, where):
    """The job's KILLED and the sweep parent's close are written after the interrupt, by the process that holds
    the lock: `release` ends the interrupted transaction, and the run ends KILLED at once, not after MLflow's
    20 s wait on itself."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.setup_store(uri)
    with _gc_off():
        _own_lock(uri, where, monkeypatch)
        assert "is locked" in str(stores.fault_now(uri))  # the state a cut-short write leaves
        stores.release(uri)
        assert stores.fault_now(uri) is None

        def interrupted(*a, **k):
            _own_lock(uri, where, monkeypatch)
            raise KeyboardInterrupt

        monkeypatch.setattr("tlsweep.run.fit", interrupted)
        t0 = time.perf_counter()
        with pytest.raises(KeyboardInterrupt):
            run(make_cfg(f"tracking.uri={uri}", NULL, "strategy=finetune"))
        assert time.perf_counter() - t0 < FAST
    assert [status for _, status in _status(uri)] == ["KILLED"]


def test_mlflows_logged_traceback_of_a_store_fault_is_dropped():
    """tlsweep says the fault in one line; MLflow's own log of it (with its traceback) would bury that line."""
    def record(err):
        try:
            raise err
        except Exception:
            return logging.LogRecord("mlflow.store.db.utils", logging.ERROR, __file__, 1, "SQLAlchemy database error",
                                     None, sys.exc_info())

    locked = sqlalchemy.exc.OperationalError("UPDATE", {}, sqlite3.OperationalError("database is locked"))
    assert stores._not_reported_here(record(locked)) is False
    assert stores._not_reported_here(record(ValueError("a bug"))) is True
