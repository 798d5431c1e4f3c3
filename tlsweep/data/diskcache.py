"""Files that the processes of a sweep share: made by one, waited for by the others, written whole,
checked before use.

A file lock beside the entry lets the first process compute it while the others wait and then
load it. An entry is written to a temporary file in the same folder and renamed into place, so
a reader never sees half a file; one left damaged anyway (a full disk, a copy, an edit) fails
its check on load and is recomputed with a warning. A cache folder that cannot be made or written (a
full disk, a file in its path, no permission) costs only the cache: the entry stays in memory for this
run, and a printed line, which PYTHONWARNINGS=ignore cannot hide, says so once per entry.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from filelock import FileLock, Timeout

from ..config.errors import why

# what each entry's file name (features-<key>.pt, scores-<key>.pt) holds, for the line that says it could not be written
KINDS = {"features": "the feature cache", "decoded": "the decoded-image cache",
         "scores": "the transferability scores"}
_said: set[Path] = set()  # entries whose failure to write was said already in this process


def _memory_only(path: Path, err: OSError) -> None:
    if path not in _said:
        _said.add(path)
        what = KINDS.get(path.name.split("-")[0], "the cache")
        print(f"[tlsweep] cannot write {what} at {path} ({why(err)}); kept in memory for this run", flush=True)


@contextlib.contextmanager
def locked(path: Path | None, what: str) -> Iterator[None]:
    """Hold the lock of entry `path` (a `<name>.lock` file beside it); say so when another process has it.

    None (memory only), or a folder where the lock cannot be made: nothing to lock.
    """
    if path is None:
        yield
        return
    lock: FileLock | None = FileLock(f"{path}.lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire(timeout=0)
    except Timeout:
        print(f"[tlsweep] waiting for another process to finish {what} ({path.name})", flush=True)
        lock.acquire()  # no timeout: the lock goes with its holder, also when that process dies
    except OSError as err:  # nothing can be shared through this folder: computed here, kept in memory
        _memory_only(path, err)
        lock = None
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def load(path: Path | None, check: Callable[[dict], str | None], mmap: bool = False) -> dict | None:
    """The saved dict, or None when there is none (or no `path`) or it is unusable (then with a warning).

    `check` returns what is wrong with a loaded dict, or None when it is fit to use. `mmap`: its tensors read the
    file through a memory map, so that the processes of a node share one copy in the page cache.
    """
    if path is None or not path.exists():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        problem = check(saved) if isinstance(saved, dict) else f"holds a {type(saved).__name__}, not a dict"
    except Exception as err:  # noqa: BLE001 - truncated zip, garbage pickle, ...: all mean "recompute"
        problem = f"cannot be read ({type(err).__name__}: {str(err)[:200]})"
    if problem:
        warnings.warn(f"cache file {path} {problem}; recomputing it", RuntimeWarning, stacklevel=2)
        return None
    return saved


def save(obj: dict, path: Path | None) -> None:
    """Write `obj` to `path` whole or not at all: a temporary file in the same folder, then a rename. A disk
    that refuses it leaves the entry in memory only, with a printed line."""
    if path is None:
        return
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        _memory_only(path, err)
        return
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the name points at it
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        written = _write_error(err)
        if written is None:
            raise
        _memory_only(path, written)


def _write_error(err: BaseException) -> OSError | None:
    """The OSError behind a failed write: torch.save reports one from inside its zip writer as a RuntimeError."""
    while err is not None and not isinstance(err, OSError):
        err = err.__cause__ or err.__context__
    return err
