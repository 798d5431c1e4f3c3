"""tlsweep: the transfer-learning ladder as Hydra sweeps, tracked in MLflow."""
import time

__version__ = "0.1.0"  # the one place the version is written: pyproject.toml, --version and every run's tag read it

# When the process began importing tlsweep: a sweep's fixed cost (imports, store, report) counts from here.
STARTED = time.time()
