"""Heavy imports with the garbage collector paused.

torch, torchvision, timm, MLflow with SQLAlchemy, pandas and matplotlib create millions of objects that live
until the process ends. While they are made, CPython's cyclic collector runs again and again, and each full
collection walks the whole growing heap: a quarter of the import time goes to it, and one full collection
afterwards still takes a noticeable part of a second (docs/speed.md, "Fixed cost").

`heavy()` collects what is garbage already, pauses the collector for a block of imports, then freezes every
object that exists (`gc.freeze`: moved to a generation no collection walks), so no later collection, in
training either, walks the imported modules again. A frozen object is still freed when its last reference
goes; one that ends up in a reference cycle is not, so the block is for imports: what they leave lives until
exit anyway. The collection first keeps earlier garbage (a finished job's configs) from being frozen with
them; once the modules are frozen it walks only what came after, milliseconds. Code that runs once per job
names the modules it imports: when they are loaded already (a later job of the same process) the block does
nothing, so no job's objects are frozen with them.
"""
from __future__ import annotations

import contextlib
import gc
import sys


@contextlib.contextmanager
def heavy(*modules: str):
    """Pause and freeze around the block; a plain block when every one of `modules` is loaded already."""
    if modules and all(m in sys.modules for m in modules):
        yield
        return
    enabled = gc.isenabled()  # nested: only the outermost block turns it back on
    if enabled:
        gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
