"""Where a store lives (the file of an SQLite or folder URI), and the store's faults around a run, each as one
line that names the URI or path, the cause, and what to do: a tracking server that does not answer (or is no
MLflow server), a store path that cannot be created or written, a full disk, an SQLite store another process holds
locked.

`check` looks before MLflow's first call: a server by one GET /health (a few seconds, no retries), an SQLite
store by making its folder, writing a little there and taking its write lock. `fault` reads an exception that
an MLflow call raised later as one of these faults, or None when it is not the store's fault. `release` ends
the write lock that an interrupted write leaves with this very process. Below runs.py and sweep.py; MLflow is
imported only inside the functions that call it.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shlex
import socket
import sqlite3
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from ..config.errors import StoreError, why
from ..config.keys import Tag

PROBE_S = 5  # a healthy server answers /health in milliseconds; a few seconds leave room for a slow VPN hop
MLFLOW_BUSY_S = 20  # MLflow's own wait on a locked SQLite db, per statement (PRAGMA busy_timeout = 20000)
# How long tlsweep waits for an SQLite store's write lock before a job, as long as MLflow then waits on each
# statement: another process's write takes milliseconds, a `mlflow gc` seconds; a lock held longer is a
# program left open on the db (a sqlite3 shell, a DB browser) that waiting will not end. (MLflow's own first
# open waits 5 s per try and ends in a traceback.)
LOCK_WAIT_S = MLFLOW_BUSY_S
WRITE_PROBE = 64 * 1024  # a few SQLite transactions' worth (4 KiB pages, their journal): a disk with less is full
# MLflow's HTTP defaults are 7 retries with backoff factor 2, that is sleeps of 0, 4, 8, ... up to 120 s
# (urllib3's cap), and 120 s to wait for each answer: a server that is down cost 4 min 10 s per call before
# the traceback. 5 retries with factor 1 sleep 0, 2, 4, 8 and 16 s (plus up to 1 s of jitter each): an outage
# of up to about 30 s (a server restarted) is ridden out, and a refused call fails after at most 35 s. 10 s per attempt
# bounds a host that does not answer at all at 6 x 10 + 35 = 95 s; the probe before a sweep catches that
# case in PROBE_S. A value the user set wins.
HTTP_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "1.0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
SERVERS = ("http://", "https://")
DB_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}  # a database named directly, by its dialect

_failed: list[tuple[str, StoreError]] = []  # (job, fault): this process's jobs the store failed, for the summary


def local_path(uri: str) -> Path | None:
    """The file or folder a local tracking URI points to (None for servers and in-memory SQLite)."""
    if uri.startswith("sqlite:///"):
        rest = uri[len("sqlite:///"):].split("?")[0]  # sqlite:////abs/x.db keeps the leading "/"
        return Path(rest) if rest and rest != ":memory:" else None
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(parsed.path)
    if parsed.scheme == "" or re.fullmatch(r"[a-zA-Z]", parsed.scheme):  # a bare path (or C:\ on Windows)
        return Path(uri)
    return None


def sqlite_file(uri: str) -> Path | None:
    """The database file of an SQLite store's URI; None for any other store."""
    return local_path(uri) if uri.startswith("sqlite:///") else None


def configure() -> None:
    """What tlsweep sets for MLflow before any store call: bounded HTTP retries (HTTP_RETRIES) unless the user
    set their own, and no logged traceback for an SQLite fault that tlsweep reports in one line itself."""
    for key, value in HTTP_RETRIES.items():
        os.environ.setdefault(key, value)
    logging.getLogger("mlflow.store.db.utils").addFilter(_not_reported_here)


def _not_reported_here(record: logging.LogRecord) -> bool:
    err = record.exc_info[1] if record.exc_info else None
    return err is None or _cause(err) is None


# ---- the check before a store is used -------------------------------------------------------------------

def check(uri: str, lock_wait: float | None = None) -> None:
    """Raise StoreError when the store at `uri` cannot be used now; `lock_wait`: seconds to wait for an
    SQLite store's write lock (LOCK_WAIT_S)."""
    db = sqlite_file(uri)
    if uri.startswith(SERVERS):
        _probe_server(uri)
    elif db is not None:
        _check_sqlite(db, LOCK_WAIT_S if lock_wait is None else lock_wait)
    elif urlparse(uri).scheme.split("+")[0] in DB_PORTS:
        _probe_database(uri)


def release(uri: str) -> None:
    """End what an interrupt left open of this process's own hold on an SQLite store.

    A KeyboardInterrupt (Ctrl-C, or SIGTERM as the CLI turns it) can land inside SQLAlchemy's cleanup of a
    write, before its rollback: the connection stays out of its pool, or goes back in it with the transaction
    open, and keeps the store's write lock. The next write of this very process (the run's KILLED, the sweep
    parent's close) would wait for itself and fail as "locked". A garbage collection returns the lost
    connections to the pool; disposing MLflow's engines closes the pooled ones, and closing an SQLite connection
    rolls its transaction back.
    """
    if sqlite_file(uri) is None:  # a server or a database server ends the transaction with the connection
        return
    import gc

    gc.collect()
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    for engine in list(getattr(SqlAlchemyStore, "_engine_map", {}).values()):  # MLflow's engine per URI
        engine.dispose()


def fault_now(uri: str) -> StoreError | None:
    """The store's fault as `check` finds it now, waiting at most about PROBE_S; None when it works."""
    try:
        check(uri, lock_wait=1)
    except StoreError as err:
        return err
    return None


def _probe_server(uri: str) -> None:
    from mlflow.utils.credentials import get_default_host_creds  # MLflow's own auth and TLS settings
    from mlflow.utils.rest_utils import http_request

    try:
        answer = http_request(get_default_host_creds(uri), "/health", "GET", max_retries=0, timeout=PROBE_S,
                              raise_on_status=False)
    except Exception as err:  # noqa: BLE001 -- whatever stops the request, the message says which it was
        cause = _cause(err, PROBE_S)
        raise StoreError(unreachable(uri, cause[1] if cause else f"{type(err).__name__}: {err}")) from err
    code = answer.status_code
    if code in (401, 403):
        raise StoreError(f"the MLflow server at {uri} refuses tlsweep (GET /health: HTTP {code}); set "
                         "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN")
    if code >= 500:
        raise StoreError(f"the MLflow server at {uri} answers with an error (GET /health: HTTP {code}); "
                         "see its log, or set tracking.uri")
    if code != 200:
        raise StoreError(f"the server at {uri} answers, but not as an MLflow server (GET /health: HTTP {code}); "
                         "check the host and port in tracking.uri")


def _probe_database(uri: str) -> None:
    """A database server named directly (postgresql://...): one TCP connection, not MLflow's 10 tries over 100 s."""
    url = urlparse(uri)
    if not url.hostname:  # a Unix socket: nothing to dial here
        return
    try:
        socket.create_connection((url.hostname, url.port or DB_PORTS[url.scheme.split("+")[0]]), PROBE_S).close()
    except OSError as err:
        words = _net_words(err, PROBE_S)
        raise StoreError(f"cannot reach the database of the MLflow store at {_shown(uri)} ({words}); start it or set "
                         "tracking.uri") from err


def _check_sqlite(db: Path, lock_wait: float) -> None:
    new = not db.exists()
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        if db.is_dir():
            raise IsADirectoryError(errno.EISDIR, "a folder, not a file", str(db))
        with tempfile.TemporaryFile(dir=db.parent) as f:  # unnamed, gone when closed
            f.write(bytes(WRITE_PROBE))
            f.flush()
    except OSError as err:
        raise StoreError(store_path(db, why(err), "create" if new else "write")) from err
    if new:
        return
    con = sqlite3.connect(db, timeout=lock_wait, isolation_level=None)  # isolation_level None: our BEGIN, as typed
    try:
        con.execute("BEGIN IMMEDIATE")  # the write lock MLflow's writes take; SQLite retries while another holds it
        con.execute("PRAGMA schema_version")  # reads the header: a file that is no SQLite database fails here
        con.execute("ROLLBACK")
    except sqlite3.Error as err:
        words = str(err)
        raise StoreError(locked(db, lock_wait) if "locked" in words else store_path(
            db, words, "open", "point tracking.uri at an MLflow store, or at a new file")) from err
    finally:
        con.close()


# ---- a fault met by an MLflow call -----------------------------------------------------------------------

def fault(err: BaseException, uri: str) -> StoreError | None:
    """`err` (raised by an MLflow call on the store at `uri`) as a StoreError, or None when the store is not
    at fault (a bug, a bad value, an interrupt). Only an error raised through MLflow's code counts: a full
    /dev/shm under a data loader raises the same OSError, and is not the store's."""
    db = sqlite_file(uri)
    if isinstance(err, StoreError):
        return err
    cause = _cause(err, os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT")) if _through_mlflow(err) else None
    if cause is None:
        return None
    kind, words = cause
    if kind == "locked":
        return StoreError(locked(db or uri, MLFLOW_BUSY_S))
    if kind == "network":
        return StoreError(unreachable(uri, words) if uri.startswith(SERVERS) else
                          f"cannot reach the database of the MLflow store at {_shown(uri)} ({words}); start it")
    return StoreError(store_path(db or uri, words, "write"))


def _through_mlflow(err: BaseException) -> bool:
    tb = err.__traceback__
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__", "").startswith("mlflow."):
            return True
        tb = tb.tb_next
    return False


def _cause(err: BaseException, timeout: float | str | None = None) -> tuple[str, str] | None:
    """(kind, words) of the first store fault in `err`'s chain: kind is network, locked or disk; `timeout`:
    the seconds a request waited, for the words of a timeout."""
    for e in _chain(err):
        name, text = type(e).__name__, str(e)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES,
                                                  errno.EPERM, errno.ENOTDIR, errno.EIO):
            return "disk", why(e)
        if isinstance(e, (ConnectionError, socket.gaierror, TimeoutError)) or name in (  # the builtin ConnectionError
                "NameResolutionError", "ConnectTimeoutError", "ReadTimeoutError", "ProtocolError",
                "RemoteDisconnected", "ResponseError", "SSLError"):
            return "network", _net_words(e, timeout)
        if name == "OperationalError" or isinstance(e, sqlite3.Error):  # SQLite's, raw or through SQLAlchemy
            for words in ("database is locked", "database or disk is full", "attempt to write a readonly database",
                          "unable to open database file", "disk I/O error"):
                if words in text:
                    return ("locked" if words == "database is locked" else "disk"), words
            if "could not connect" in text or "Connection refused" in text:  # a database server's driver
                return "network", text.splitlines()[0][:200]
    return None


def _chain(err: BaseException) -> Iterator[BaseException]:
    """`err`, then what it wraps: causes and contexts, urllib3's `reason`, SQLAlchemy's `orig`, requests' first arg."""
    seen, todo = set(), [err]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        wrapped = [getattr(e, "reason", None), getattr(e, "orig", None), *(e.args[:1] if e.args else [])]
        todo += [e.__cause__, e.__context__, *(w for w in wrapped if isinstance(w, BaseException))]


def _net_words(e: BaseException, timeout: float | str | None) -> str:
    name = type(e).__name__
    if isinstance(e, ConnectionRefusedError) or "refused" in str(e).lower():
        return "connection refused"
    if isinstance(e, socket.gaierror) or name == "NameResolutionError":
        return "unknown host"
    if isinstance(e, TimeoutError) or "Timeout" in name or "timed out" in str(e):
        return f"no answer in {timeout} s" if timeout else "timed out"
    if name == "ResponseError":  # urllib3 gave up on a status: "too many 503 error responses"
        return f"server error: {str(e)[:120]}"
    if name == "SSLError":
        return f"TLS error: {str(e)[:160]}"
    return "connection broken: the server does not speak HTTP, or closed the connection"


# ---- the messages ---------------------------------------------------------------------------------------

def unreachable(uri: str, words: str) -> str:
    if words == "unknown host":
        words = f"unknown host {urlparse(uri).hostname}"
    return f"cannot reach the MLflow server at {uri} ({words}); start it or set tracking.uri"


def store_path(where: Path | str, words: str, verb: str = "write", todo: str | None = None) -> str:
    full = "full" in words or "No space" in words or "quota" in words.lower()
    todo = todo or ("free space on its disk or set tracking.uri to a store elsewhere" if full else
                    "set tracking.uri to a path in a writable folder")
    return f"cannot {verb} the MLflow store at {where} ({words}); {todo}"


def locked(where: Path | str, waited: float) -> str:
    return (f"the MLflow store at {where} is locked by another process (still locked after {waited:g} s); close "
            "what holds it (a sqlite3 shell, a DB browser, mlflow gc) and run again, or set tracking.uri")


def _shown(uri: str) -> str:
    """A database URI without its password."""
    url = urlparse(uri)
    return uri.replace(f":{url.password}@", ":***@") if url.password else uri


# ---- what a sweep says about the jobs the store failed --------------------------------------------------

@contextlib.contextmanager
def translated(uri: str, job: str | None = None) -> Iterator[None]:
    """A store fault in the block is raised as its StoreError (and counted against `job`); other errors pass."""
    try:
        yield
    except Exception as err:
        found = fault(err, uri)
        if found is None:
            raise
        if job:
            record(job, found)
        if found is err:
            raise
        raise found from err


@contextlib.contextmanager
def one_try() -> Iterator[None]:
    """MLflow's HTTP calls in the block: one attempt of PROBE_S, no retries. For closing a run right after
    the store failed: the retries were spent on the call that failed."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(PROBE_S)})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def record(job: str, err: StoreError) -> None:
    if job not in [j for j, _ in _failed]:
        _failed.append((job, err))


def end_after_fault(run_id: str, run_name: str, err: StoreError) -> None:
    """End the active run FAILED after its store failed, in one quick try (no HTTP retries: the failed call
    spent them). If the store still fails, the run stays RUNNING there, and a resume of the sweep by name
    runs its config again."""
    import mlflow

    record(run_name, err)
    with one_try():
        if "locked" not in str(err):  # on a locked db each statement waits MLflow's 20 s: one is enough
            with contextlib.suppress(Exception):  # the run's status matters more than its tag
                mlflow.set_tag(Tag.ERROR, f"StoreError: {err}"[:5000])
        try:
            mlflow.end_run("FAILED")  # pops the run off the fluent stack first: the next job starts clean
        except Exception:  # noqa: BLE001 -- the store's fault is what the user sees, in one line
            print(f"[tlsweep] run {run_id} ({run_name}) stays RUNNING in the store, which cannot close it now; "
                  "resuming the sweep by its name runs the config again", flush=True)


def failed_before() -> bool:
    """Whether the store failed a job of this process already."""
    return bool(_failed)


def unlogged(uri: str, run_id: str | None, run_name: str | None, tags: dict, metrics: dict) -> None:
    """Print a finished job's metrics that the store did not take, as one JSON line of the job's output."""
    line = {"tlsweep": "metrics the store did not take", "store": _shown(uri), "run_id": run_id,
            "run_name": run_name, "config_key": tags.get(Tag.CONFIG_KEY),
            "overrides": tags.get(Tag.OVERRIDES), "metrics": metrics}
    print(json.dumps(line, default=str), flush=True)


def resume_command(sweep_name: str) -> str:
    """The command line of this multirun with its sweep's name: it runs again every config not FINISHED."""
    args = [a for a in sys.argv[1:] if not a.startswith("tracking.sweep_name=")]
    return "python -m tlsweep " + " ".join(shlex.quote(a) for a in [*args, f"tracking.sweep_name={sweep_name}"])


def failed_line(sweep_name: str) -> str | None:
    """The summary's line on this process's jobs that the store failed, with the command that resumes them."""
    if not _failed:
        return None
    jobs = ", ".join(job for job, _ in _failed)
    return (f"[tlsweep] {len(_failed)} job(s) could not use the store: {jobs} ({_failed[0][1]}); their runs are "
            f"not FINISHED and any metrics they made are printed above as JSON lines. Once the store works, "
            f"resume: {resume_command(sweep_name)}")


def left_open(sweep_name: str, parent: str, err: StoreError) -> str:
    """The line of a sweep's end that finds the store failing: nothing could be closed or reported."""
    jobs = f"; jobs the store failed: {', '.join(j for j, _ in _failed)}" if _failed else ""
    return (f"[tlsweep] sweep {sweep_name} ends with its store failing: {err}. Its parent run {parent} stays "
            f"RUNNING and no report is made{jobs}. Once the store works, resume: {resume_command(sweep_name)}")
