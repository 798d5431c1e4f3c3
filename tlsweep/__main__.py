"""`python -m tlsweep` / `tlsweep`: the Hydra entry point. All the work is in `run.run`."""
import gc
import math
import signal
import sys

import hydra
from hydra.errors import CompactHydraException
from omegaconf import DictConfig

from . import __version__
from .config import schema  # schema registers the config schema before Hydra composes
from .config.errors import Diverged, UserError
from .imports import heavy
from .progress import PipeSafe
from .config.searchpath import CONF, presets_in_play


def torch_pair_message(err: Exception) -> str | None:
    """What to reinstall when torchvision was built for another torch, else None.

    pip, told to fetch a CPU build from an index it cannot reach, can fall back to a torchvision of
    another release than the torch it keeps; the pair then fails at import with "operator
    torchvision::nms does not exist". torchvision 0.N+15 goes with torch 2.N."""
    if "torchvision::" not in str(err):
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        torch_v, vision_v = version("torch"), version("torchvision")
    except PackageNotFoundError:
        return None
    major, minor = (int(x) for x in torch_v.split("+")[0].split(".")[:2])
    want = f"0.{minor + 15}" if major == 2 else "the release made for it"
    return (f"tlsweep: torchvision {vision_v} was built for another torch than the installed {torch_v} "
            f"({str(err).splitlines()[0]}).\nReinstall them as a pair, e.g. "
            f"pip install --force-reinstall \"torch=={torch_v.split('+')[0]}\" \"torchvision=={want}.*\" "
            f"(from the same index)")


def _job_code():
    """`run`, with what a job needs (torch, torchvision, timm, MLflow), imported when the first job starts:
    `--help`, composing a config and refusing a bad one need none of it. A torchvision built for another
    torch fails here, before any work, with what to reinstall."""
    with heavy("tlsweep.run"):  # torch, torchvision, MLflow: seconds of imports, in a process's first job
        try:
            import torchvision  # noqa: F401
        except RuntimeError as err:
            message = torch_pair_message(err)
            if message is None:
                raise
            raise SystemExit(message) from None
        from .run import run

    return run


class JobError(CompactHydraException):
    """A user error, as Hydra prints it: the message alone, no traceback (HYDRA_FULL_ERROR=1 shows it)."""


_jobs = {"started": 0, "exit_code": 1}  # what the in-process jobs did, for the exit code


@hydra.main(version_base=None, config_path=str(CONF), config_name="config")
def main(cfg: DictConfig) -> float:
    _jobs["started"] += 1
    run = _job_code()
    try:
        result = run(cfg)
        return result.get("final_val_acc", result.get("final_test_acc"))
    except UserError as err:  # already recorded FAILED in MLflow, with this message
        if isinstance(err, Diverged) and _multirun():
            # a sweep's lost candidate, not a fault: its run is FAILED and tagged diverged, and the job returns,
            # so that Hydra counts it done and a sweep whose other jobs finished exits 0
            print(f"tlsweep: {type(err).__name__}: {err} (the sweep goes on)", file=sys.stderr, flush=True)
            return math.nan
        _jobs["exit_code"] = max(_jobs["exit_code"], err.exit_code)
        raise JobError(f"tlsweep: {type(err).__name__}: {err}") from err


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _exit_code(code) -> int:
    """Hydra exits 1 for any failure. 2 when the input was bad: a config Hydra could not compose (no job
    started here, and no sweep began: a sweep's jobs may run elsewhere, on SLURM), or a job's
    ConfigError/DataError. A store that fails (StoreError) exits 1, also when a multirun's start finds it so."""
    if code != 1:
        return code
    if not _jobs["started"] and "tlsweep.sweep" not in sys.modules:
        overrides = [a for a in sys.argv[1:] if not a.startswith("-")]
        for hint in schema.hints(overrides) + presets_in_play(overrides):
            print(hint, file=sys.stderr)
        return 2
    return _jobs["exit_code"]


def _mark_ended_early(status: str) -> None:
    """Tell a sweep's callback (when a multirun loaded it) how the launching process ended."""
    sweep = sys.modules.get("tlsweep.sweep")
    if sweep is not None:
        sweep.mark_ended_early(status)


def _sigterm(signum, frame):
    raise KeyboardInterrupt  # a killed job (SIGTERM) ends its MLflow run as KILLED, like Ctrl-C


def cli() -> None:
    if sys.argv[1:] == ["--version"]:  # before Hydra, which answers --version with its own
        print(f"tlsweep {__version__}")
        return
    signal.signal(signal.SIGTERM, _sigterm)
    sys.stdout, sys.stderr = PipeSafe(sys.stdout), PipeSafe(sys.stderr)  # before Hydra's log handlers take them
    # What the jobs import and build (torch, timm, MLflow, SQLAlchemy, ...) leaves millions of objects
    # that live until exit; freezing them at the end keeps the interpreter's final collection from
    # walking them, most of what exiting cost (docs/speed.md, "Fixed cost").
    try:
        main()
    except KeyboardInterrupt:
        _mark_ended_early("KILLED")  # before the atexit hook closes a sweep's parent
        print("[tlsweep] interrupted (Ctrl-C or SIGTERM): the running job's run ends KILLED", file=sys.stderr)
        sys.exit(130)
    except SystemExit as end:  # Hydra exits 1 when composing, a job or the launcher failed
        if end.code not in (None, 0):
            _mark_ended_early("FAILED")
            sys.exit(_exit_code(end.code))
        raise
    finally:
        gc.freeze()


if __name__ == "__main__":
    cli()
