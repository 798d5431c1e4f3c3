"""MLflow around a run and a sweep: the store, each job's run, the store's faults in one line, and who owns a run.

- `runs`: the MLflow adapter: the store and experiment, a job's run, its name and config key, its result.
- `faults`: where a store lives (its URI's file) and its faults, each as one line that names the URI or path, the
  cause, and what to do.
- `read`: the one way tlsweep reads a store's runs.
- `owner`: which process runs a run or a sweep, and whether it is still there.
- `views`: the MLflow UI: where it serves, the links a job or sweep prints, and a sweep's saved view.
"""
