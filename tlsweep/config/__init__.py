"""The config and the names everything agrees on: the schema of every group, its rules, the logged keys, the errors
a user can fix, and where the config groups are found. Nothing here imports torch or MLflow.

- `schema`: every group's keys with types and defaults, as Hydra structured configs; `check_ranges`.
- `data`: the `data` group's schemas, one per kind of source.
- `advise`: the advisor's keys (`advise.*`).
- `rules`: a key's one-line help and its range, declared beside the key.
- `keys`: the logged keys and tag names (`Tag`) that runs, sweeps and the report share.
- `errors`: the expected failures, each with what to do.
- `searchpath`: where the config groups are: the user's presets first, then the package's own.
"""
