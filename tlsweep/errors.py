"""Expected failures, all of them: the user can fix them, and the message says how.

The CLI prints such an error as one line, without a traceback (a traceback is for bugs;
`HYDRA_FULL_ERROR=1` shows it anyway), and exits with the error's `exit_code`: 2 for a bad config
or bad data (what the user typed or pointed at, as argparse's usage errors), 1 for the others. The
job's MLflow run is still ended FAILED with the message in its `tlsweep.error` tag. Any other
exception is a bug and keeps its traceback.
"""
from __future__ import annotations


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
    """The loss became NaN or infinite: the run diverged (usually the learning rate is too high)."""


class WeightsUnavailable(UserError, RuntimeError):
    """Pretrained weights could not be fetched (typically: no network); the message says where the
    file goes and how to pass a local one."""
