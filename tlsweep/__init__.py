"""tlsweep: the transfer-learning ladder as Hydra sweeps, tracked in MLflow."""
import time

# When the process began importing tlsweep: a sweep's fixed cost (imports, store, report) counts from here.
STARTED = time.time()
