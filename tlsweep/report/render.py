"""Writing a report's figure files: each figure as PDF and as 300-dpi PNG, drawn in parallel where it is safe.

Every file is drawn from scratch by its own `savefig`, and the files of a sweep's report are most of what it
costs besides its imports, so they are drawn in parallel processes (docs/speed.md, "Fixed cost", measures it).

The other processes are forks of this one: they have the figures and matplotlib's backends already (a fresh
process would import matplotlib again, 0.3 s, and need the figures pickled). A child draws its share of the
files and leaves with `os._exit`, so it runs no atexit hook and no finaliser of the parent's objects (an
MLflow store's connections, a sweep's open runs). A child that fails, or has not finished by the deadline, is
killed and this process draws its files itself, so the files never depend on the forks: an error in drawing
is raised here, as without them. Forks only on Linux (macOS's system libraries are not fork-safe without an
exec), and no more processes than the CPUs this one may use (none under a one-CPU SLURM allocation).
"""
from __future__ import annotations

import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.backends.backend_agg  # noqa: F401 - loaded before a fork, not once in each child
import matplotlib.backends.backend_pdf  # noqa: F401
from matplotlib.figure import Figure

FORMATS = (("pdf", {}), ("png", {"dpi": 300}))
PDF_COST = 2  # a PDF draws in about twice a PNG's time (font subsetting): the shares are balanced on it
MAX_PROCESSES = 8
DEADLINE = (10.0, 10.0)  # a child must finish within max(10 s, 10x what this process's own share took)


@dataclass
class File:
    fig: Figure
    path: Path
    kwargs: dict = field(default_factory=dict)

    def save(self) -> None:
        self.fig.savefig(self.path, **self.kwargs)

    @property
    def cost(self) -> int:
        return PDF_COST if self.path.suffix == ".pdf" else 1


def files(fig: Figure, out_dir: Path, name: str) -> list[File]:
    """The files of one figure, named `name`.pdf and `name`.png in `out_dir`."""
    return [File(fig, Path(out_dir) / f"{name}.{ext}", kwargs) for ext, kwargs in FORMATS]


def processes() -> int:
    """How many processes may draw: this one and its forks, one per CPU this process may use."""
    if not sys.platform.startswith("linux") or not hasattr(os, "fork"):
        return 1
    return max(1, min(len(os.sched_getaffinity(0)), MAX_PROCESSES))


def shares(todo: list[File], n: int) -> list[list[File]]:
    """`todo` in `n` shares of about equal cost (longest first, each to the least loaded share)."""
    out: list[list[File]] = [[] for _ in range(n)]
    load = [0] * n
    for f in sorted(todo, key=lambda f: -f.cost):
        i = load.index(min(load))
        out[i].append(f)
        load[i] += f.cost
    return [s for s in out if s]


def save_all(todo: list[File]) -> list[Path]:
    """Write every file (call it inside the figures' rc_context: the children keep the settings they fork
    with); returns their paths, in the order given."""
    if not todo:
        return []
    parts = shares(todo, min(processes(), len(todo)))
    children: list[tuple[int | None, list[File]]] = []
    try:
        for share in parts[1:]:  # one by one: a Ctrl-C between forks still finds the earlier ones below
            children.append((_fork(share), share))
        start = time.monotonic()
        for f in parts[0]:
            f.save()
        now = time.monotonic()
        deadline = now + max(DEADLINE[0], DEADLINE[1] * (now - start))
        while children:
            pid, share = children[0]
            if pid is None or not _finished(pid, deadline):
                for f in share:  # the child's files, drawn here: an error raises as it would without forks
                    f.save()
            children.pop(0)
    finally:  # an error or Ctrl-C here: no child is left drawing, or unreaped
        for pid, _ in children:
            if pid is not None:
                _stop(pid)
    return [f.path for f in todo]


def _fork(share: list[File]) -> int | None:
    """A child drawing `share`; None when the fork fails (this process then draws them)."""
    try:
        with warnings.catch_warnings():
            # Python 3.12 warns on forking a process with threads (torch's, MLflow's): the child may hang on
            # a lock another thread held. It runs only matplotlib on the figures this thread made, and a
            # child that hangs is killed at the deadline.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    except OSError:
        return None
    if pid:
        return pid
    code = 1
    try:
        for f in share:
            f.save()
        code = 0
    finally:  # never back into the parent's code, whatever happened (Ctrl-C included)
        os._exit(code)


def _finished(pid: int, deadline: float) -> bool:
    """Whether the child ended well by `deadline`; one still running then is killed."""
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status) == 0
        if time.monotonic() > deadline:
            _stop(pid)
            return False
        time.sleep(0.005)


def _stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):  # reaped already
        pass
