"""The report's figure files drawn in forked processes: the same files as in one process, and whatever a
child does (fails, hangs), every file is written and a drawing error reaches the caller."""
from __future__ import annotations

import os
import sys
import time

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from tlsweep.report import render
from tlsweep.report.figures import RC

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform: one process draws")


def _figures(out_dir, n=3) -> list[render.File]:
    out_dir.mkdir(exist_ok=True)
    todo = []
    for i in range(n):
        fig = Figure(figsize=(2, 1.5))
        ax = fig.add_subplot()
        ax.plot(np.arange(10), np.arange(10) ** (1 + i / 3), label=f"curve {i}")
        ax.set_xlabel("epoch")
        ax.legend()
        todo += render.files(fig, out_dir, f"fig{i}")
    return todo


def _logging_saves(monkeypatch, log, behave=None):
    """File.save, recording which process wrote each file; `behave(parent)` may fail or hang a child."""
    parent, save = os.getpid(), render.File.save

    def logged(self):
        if behave is not None:
            behave(os.getpid() == parent)
        save(self)
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {self.path.name}\n")

    monkeypatch.setattr(render.File, "save", logged)
    return parent


def _forks(monkeypatch) -> list[int]:
    """The pids of the children save_all forks (in the parent; a child leaves by os._exit)."""
    pids, fork = [], render._fork

    def recorded(share):
        pid = fork(share)
        pids.append(pid)
        return pid

    monkeypatch.setattr(render, "_fork", recorded)
    return pids


def _all_reaped(pids) -> bool:
    """Every child ended and waited for: none left drawing, none a zombie."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue
        return False
    return True


def _writers(log) -> dict[str, int]:
    return {name: int(pid) for pid, name in (line.split() for line in log.read_text().splitlines())}


def test_shares_balance_pdfs_against_pngs(tmp_path):
    todo = _figures(tmp_path)
    parts = render.shares(todo, 2)
    assert sorted(f.path.name for part in parts for f in part) == sorted(f.path.name for f in todo)
    assert [sum(f.cost for f in part) for part in parts] == [5, 4]  # 3 PDFs (2 each) and 3 PNGs over two
    assert render.shares(todo[:1], 4) == [todo[:1]]  # no empty share, so no idle fork


def test_forked_processes_write_the_files_one_process_writes(tmp_path, monkeypatch):
    log = tmp_path / "log"
    parent = _logging_saves(monkeypatch, log)
    monkeypatch.setattr(render, "processes", lambda: 2)
    pids = _forks(monkeypatch)
    with matplotlib.rc_context(RC):
        forked = render.save_all(_figures(tmp_path / "forked"))
    writers = _writers(log)
    assert set(writers.values()) == {parent, *pids} and len(pids) == 1  # the child drew its share
    assert _all_reaped(pids)
    monkeypatch.setattr(render, "processes", lambda: 1)
    with matplotlib.rc_context(RC):
        alone = render.save_all(_figures(tmp_path / "alone"))
    assert [p.name for p in forked] == [p.name for p in alone] == \
        ["fig0.pdf", "fig0.png", "fig1.pdf", "fig1.png", "fig2.pdf", "fig2.png"]
    for a, b in zip(forked, alone):
        if a.suffix == ".png":
            assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
        else:  # the same fonts, embedded as TrueType (rc pdf.fonttype=42 reached the child)
            assert b"/FontFile2" in a.read_bytes() and b"/FontFile2" in b.read_bytes()
            assert abs(a.stat().st_size - b.stat().st_size) < 200  # only the creation date differs


@pytest.mark.parametrize("child", ["fails", "hangs"])
def test_a_childs_files_are_drawn_here_when_it_fails_or_hangs(tmp_path, monkeypatch, child):
    def behave(in_parent):
        if not in_parent:
            if child == "fails":
                raise RuntimeError("a child's drawing failed")
            time.sleep(30)

    log = tmp_path / "log"
    parent = _logging_saves(monkeypatch, log, behave)
    monkeypatch.setattr(render, "processes", lambda: 3)
    monkeypatch.setattr(render, "DEADLINE", (1.0, 0.0))
    pids = _forks(monkeypatch)
    start = time.monotonic()
    paths = render.save_all(_figures(tmp_path))
    assert time.monotonic() - start < 30
    assert all(p.stat().st_size > 0 for p in paths) and len(paths) == 6
    assert set(_writers(log).values()) == {parent}
    assert len(pids) == 2 and _all_reaped(pids)


def test_a_drawing_error_reaches_the_caller_and_leaves_no_child(tmp_path, monkeypatch):
    def behave(in_parent):
        if in_parent:
            raise ValueError("cannot draw this")
        time.sleep(30)  # the children are still drawing when the parent fails

    _logging_saves(monkeypatch, tmp_path / "log", behave)
    monkeypatch.setattr(render, "processes", lambda: 3)
    pids = _forks(monkeypatch)
    with pytest.raises(ValueError, match="cannot draw this"):
        render.save_all(_figures(tmp_path))
    assert len(pids) == 2 and _all_reaped(pids)


def test_one_process_draws_where_forking_is_not_safe(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert render.processes() == 1
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})  # a SLURM job given one CPU
    assert render.processes() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert render.processes() == render.MAX_PROCESSES
