"""Expected failures, all of them: the user can fix them, and the message says how.

The CLI prints such an error as one line and exits 1, without a traceback (a traceback is for
bugs; `HYDRA_FULL_ERROR=1` shows it anyway). The job's MLflow run is still ended FAILED with
the message in its `tlsweep.error` tag. Any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """A failure the user can fix; the message says what to do."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work: unknown name or stage, epochs < 1, ..."""


class DataError(UserError, ValueError):
    """The data is missing or not laid out as expected; the message says what to fix."""


class ReportError(UserError, ValueError):
    """The report cannot be made; the message says what is wrong and what to do."""


class Diverged(UserError, FloatingPointError):
    """The loss became NaN or infinite: the run diverged (usually the learning rate is too high)."""


class WeightsUnavailable(UserError, RuntimeError):
    """Pretrained weights could not be fetched (typically: no network); the message says where the
    file goes and how to pass a local one."""
