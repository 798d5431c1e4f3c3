"""What a job imports, and the garbage collector paused while heavy modules load (tlsweep/imports.py)."""
from __future__ import annotations

import gc
import subprocess
import sys

import pytest

from tlsweep.imports import heavy


def test_heavy_pauses_the_collector_and_freezes_what_the_block_made():
    assert gc.isenabled()
    before = gc.get_freeze_count()
    with heavy():
        assert not gc.isenabled()
        made = [[i] for i in range(1000)]  # tracked containers, alive after the block
        with heavy():  # nested: the inner block must not turn the collector back on
            pass
        assert not gc.isenabled()
    assert gc.isenabled()
    assert gc.get_freeze_count() >= before + len(made)
    gc.unfreeze()  # give the test process's objects back to the collector


def test_heavy_does_nothing_once_its_modules_are_loaded():
    """A later job of the same process: nothing to import, so nothing of the job is frozen."""
    before = gc.get_freeze_count()
    with heavy("gc", "sys"):
        assert gc.isenabled()
        made = [[i] for i in range(1000)]
    assert gc.get_freeze_count() == before and made
    with heavy("gc", "tlsweep_not_loaded_yet"):
        assert not gc.isenabled()
    gc.unfreeze()


def test_heavy_turns_the_collector_back_on_when_the_block_fails():
    with pytest.raises(ImportError):
        with heavy():
            import tlsweep_no_such_module  # noqa: F401
    assert gc.isenabled()
    gc.unfreeze()


def test_heavy_leaves_a_paused_collector_paused():
    gc.disable()
    try:
        with heavy():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
        gc.unfreeze()


def test_a_job_imports_nothing_of_the_report():
    """`import tlsweep.run` (what every job loads) must not load the report's stack: matplotlib (0.4 s),
    scipy.stats (0.4 s), tlsweep.report. Two heavy modules come with a job and cannot be kept out, so they are
    not checked here: torch._dynamo (torchvision's roi_align and timm's naflexvit import it, and torch.optim's
    Optimizer.step imports it on its first call: torch/optim/optimizer.py, `_use_grad`), and scipy (MLflow's
    package init imports mlflow.models.utils, which imports scipy.sparse)."""
    code = ("import sys, tlsweep.run\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib' or m == 'scipy.stats'"
            " or m.startswith('tlsweep.report')))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip() == "[]", p.stdout


def test_opening_a_store_freezes_nothing_once_sqlalchemy_is_loaded():
    """Opening a store in a loop (a notebook making reports) must not freeze the caller's objects each time."""
    import contextlib

    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401 -- loaded, as after any store's first open

    from tlsweep.tracking.read import opening

    before = gc.get_freeze_count()
    with opening("sqlite:///x.db"):
        assert gc.isenabled()
    assert gc.get_freeze_count() == before
    assert isinstance(opening("http://127.0.0.1:5000"), contextlib.nullcontext)
