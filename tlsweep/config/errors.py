"""Expected failures, all of them: the user can fix them, and the message says how.

The CLI prints such an error as one line, without a traceback (a traceback is for bugs;
`HYDRA_FULL_ERROR=1` shows it anyway), and exits with the error's `exit_code`: 2 for a bad config
or bad data (what the user typed or pointed at, as argparse's usage errors), 1 for the others. The
job's MLflow run is still ended FAILED with the message in its `tlsweep.error` tag. Any other
exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import errno
import sys
from pathlib import Path
from typing import NoReturn


class UserError(Exception):
    """A failure the user can fix; the message says what to do."""
    exit_code = 1


class ConfigError(UserError, ValueError):
    """A config value that cannot work: unknown name or stage, epochs < 1, ..."""
    exit_code = 2


class DataError(UserError, ValueError):
    """The data is missing, unreadable or unusable (one class, a class without training images); the
    message names the files or classes and says what to fix."""
    exit_code = 2


class ReportError(UserError, ValueError):
    """The report cannot be made; the message says what is wrong and what to do."""


class Diverged(UserError, FloatingPointError):
    """The loss became NaN or infinite: the run diverged (usually the learning rate is too high).

    `epoch`, `lrs` (each parameter group's LR, by name) and `loss` ("train loss nan") say where, for the
    run's `tlsweep.diverged` tag."""

    def __init__(self, message: str, epoch: int | None = None, lrs: dict[str, float] | None = None,
                 loss: str = ""):
        super().__init__(message)
        self.epoch, self.lrs, self.loss = epoch, lrs or {}, loss


class WeightsUnavailable(UserError, RuntimeError):
    """Pretrained weights could not be fetched (typically: no network); the message says where the
    file goes and how to pass a local one."""


class StoreError(UserError, RuntimeError):
    """The MLflow store cannot be used: a tracking server that does not answer (or is no MLflow server), a store
    path that cannot be created or written, a full disk, an SQLite store another process holds locked. The
    message names the URI or path, the cause, and what to do.

    Exit code 1, not 2: the command may be right as typed, and the same command succeeds once the server is
    up, the disk has room or the lock is gone (2 tells a script that the command itself must change). A
    multirun whose store fails at its start ends there, before any job, with the same line and code
    (`end_command`)."""


def end_command(err: UserError) -> NoReturn:
    """End the command with `err` in one line, from a Hydra callback: Hydra turns a callback's exception into a
    warning and starts the sweep's jobs anyway. SystemExit passes Hydra's handlers, which catch Exception."""
    print(f"tlsweep: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
    raise SystemExit(err.exit_code) from err


def why(err: OSError) -> str:
    """An OS error's cause in a few words, naming the culprit where the OS does not: for "Not a directory",
    the file that stands where a folder should be."""
    if err.errno == errno.ENOTDIR and err.filename:
        for above in Path(err.filename).parents:
            if above.exists():
                return f"{above} is a file, not a folder" if not above.is_dir() else err.strerror
    return err.strerror or str(err)
