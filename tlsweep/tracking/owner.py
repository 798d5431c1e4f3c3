"""Which process runs a run or a sweep, and whether it is still there.

A run stays RUNNING in the store when its process died without closing it (SIGKILL, out of memory, a
lost SLURM node). So each job run, and a sweep's parent, records the process behind it: host, pid
and the process's start time (a pid the OS has since handed to another process is then not taken
for it). `judge` turns those tags into a verdict, and `refusal` into the line that stops a second
launcher of a sweep: pure functions over (tags, now, a pid-alive callable), tested without processes.

A sweep on a local SQLite store is claimed by a file lock beside the db (`claim_local`), held by the
launching process for the sweep's whole life: flock is atomic, and the OS releases it when its
holder dies, so a resume after a hard kill is never refused.

Needs neither torch nor MLflow: the report, the sweep and the job's tracking all read it.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

from filelock import FileLock, Timeout

from ..config.keys import Tag

Alive = Callable[[int, "str | None"], bool]  # (pid, its recorded start or None) -> that process runs on this host
TAKE_OVER_ENV = "TLSWEEP_TAKE_OVER"  # =1: resume a sweep whose launcher, on another host, is known to be gone


def host() -> str:
    return socket.gethostname()


def process_start(pid: int) -> str | None:
    """When process `pid` started, in clock ticks since boot (field 22 of /proc/<pid>/stat); None without /proc."""
    fields = _stat(pid)
    return fields[19] if fields else None


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from its third field on (state, ...): the second, the command, may hold spaces."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def identity() -> dict[str, str]:
    """This process, as the tags of a run it runs (or a sweep it launches)."""
    return {Tag.HOST: host(), Tag.PID: str(os.getpid()), Tag.PID_START: process_start(os.getpid()) or ""}


def pid_alive(pid: int, start: str | None = None) -> bool:
    """Whether process `pid` runs on this host and, when its start was recorded, is that same process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    fields = _stat(pid)
    if fields is None:  # no /proc (macOS): the pid alone
        return True
    if fields[0] in ("Z", "X"):  # a zombie has ended; only its parent has not reaped it yet
        return False
    return not start or fields[19] == start


def ago(seconds: float) -> str:
    """A duration as a person reads it: 40 s, 12 min, 3.5 h, 2.0 days."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h" if seconds < 172800 else f"{seconds / 86400:.1f} days"


def judge(tags: dict, now: float, alive: Alive, here: str, last_activity: float | None = None) -> tuple[bool | None, str]:
    """(orphaned, why) for a RUNNING run: True when its process is gone, False when it runs, None when this host
    cannot tell (another host, or a run that recorded no process). `last_activity`: the time (s) of its last
    logged metric, else its start, said when the process cannot be checked."""
    pid, where = tags.get(Tag.PID), tags.get(Tag.HOST)
    quiet = f"; last activity {ago(now - last_activity)} ago" if last_activity is not None else ""
    if not pid or not where:
        return None, f"no process recorded on the run, so it cannot be checked{quiet}"
    if where != here:
        return None, f"process {pid} runs on host {where}, which cannot be checked from {here}{quiet}"
    if alive(int(pid), tags.get(Tag.PID_START) or None):
        return False, f"running (process {pid} on host {where})"
    return True, f"orphaned (process {pid} on host {where} is gone)"


def busy_line(name: str, owner: dict) -> str:
    since = owner.get(Tag.LAUNCHED) or "an unknown time"
    return (f"tlsweep: sweep {name} is already being run by process {owner.get(Tag.PID, '?')} on host "
            f"{owner.get(Tag.HOST, '?')} since {since}; wait for it or choose another tracking.sweep_name")


def refusal(name: str, status: str, tags: dict, here: str, alive: Alive) -> str | None:
    """Why a launcher must not take over sweep `name` (its parent's status and tags, on a server store), or None.

    A parent that is not RUNNING, or whose launcher is gone from this host, is free to resume. One RUNNING
    under a launcher on another host cannot be checked from here: it is taken as alive, and the line says how
    to take the sweep over once that process is known to be gone."""
    if status != "RUNNING" or not tags.get(Tag.PID):
        return None  # ended, or a parent made before tlsweep recorded its launcher: as before, resume
    if tags.get(Tag.HOST) == here:
        return busy_line(name, tags) if alive(int(tags[Tag.PID]), tags.get(Tag.PID_START) or None) else None
    if os.environ.get(TAKE_OVER_ENV) == "1":
        return None
    return busy_line(name, tags) + (f" (it cannot be checked from host {here}: if it is gone, run again with "
                                    f"{TAKE_OVER_ENV}=1)")


def launched() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


class LocalClaim:
    """A sweep name claimed on a local store: a file lock beside the db, and beside it who holds it."""

    def __init__(self, db: Path, name: str):
        # the name as a file name: readable, and a hash so that names differing only in odd characters differ
        safe = re.sub(r"[^\w.-]", "_", name)[:80] + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
        self.lock = FileLock(f"{db}.sweep-{safe}.lock", timeout=0)
        self.owner_file = Path(f"{db}.sweep-{safe}.owner")  # not the lock file: taking a lock truncates it
        self.name = name

    def acquire(self) -> str | None:
        """Hold the claim and record this process as its owner; the refusal line when another process holds it."""
        try:
            self.lock.acquire()
        except Timeout:
            return busy_line(self.name, self._owner())
        self.owner_file.write_text(json.dumps({**identity(), Tag.LAUNCHED: launched()}))
        return None

    def release(self) -> None:
        if self.lock.is_locked:
            self.owner_file.unlink(missing_ok=True)  # before the lock goes: a next owner's file must stay
            self.lock.release()

    def _owner(self) -> dict:
        for _ in range(20):  # the holder writes its file right after it took the lock: give it a moment
            try:
                return json.loads(self.owner_file.read_text())
            except (OSError, ValueError):
                time.sleep(0.1)
        return {}
