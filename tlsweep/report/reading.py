"""Reading a sweep from the MLflow store: its parent run, its children as tables, a metric's history.

Only sweeps' parent runs and one sweep's children are read, never every run in the store.
Error messages name the report CLI's keys (`tracking.uri=`, `tracking.experiment=`, `sweep=`).
"""
from __future__ import annotations

import logging
from collections import Counter

from tlsweep.tracking import owner, faults as stores
from tlsweep.config.errors import ReportError, StoreError
from tlsweep.imports import heavy
from tlsweep.config.keys import Tag
from tlsweep.tracking.read import children, opening, search  # noqa: F401 -- children: the report's callers use it here

with heavy():  # MLflow, and with it pandas (docs/speed.md, Fixed cost)
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

log = logging.getLogger(__name__)

LISTED = 10  # sweeps named in an error message


def open_store(uri: str, experiment: str) -> tuple[MlflowClient, str]:
    """Client and experiment id; refuses to create a store that is not there."""
    path = stores.local_path(uri)
    stores.configure()  # bounded HTTP retries: a server that dies while the report reads costs seconds, not minutes
    if path is None:  # a server or a database: one probe first, so that a dead one is one line, not retries
        try:
            stores.check(uri)
        except StoreError as err:
            raise ReportError(str(err)) from None
    if path is not None and not path.exists():
        raise ReportError(f"no MLflow store at {path} (tracking URI {uri}): the file does not exist. "
                          "Pass tracking.uri=<uri> or set MLFLOW_TRACKING_URI, or run a sweep first.")
    if path is not None and path.is_file() and path.stat().st_size == 0:
        raise ReportError(f"the MLflow store {path} is an empty file; run a sweep first")
    try:
        with opening(uri):
            client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
    except MlflowException as e:
        raise ReportError(f"cannot read the MLflow store {uri}: {e.message}") from e
    if exp is None:
        raise ReportError(f"the MLflow store {uri} has no experiment {experiment!r}: it holds no sweeps. "
                          "Run a sweep first, or pass tracking.uri=<uri> / tracking.experiment=<name> "
                          "for another store or experiment.")
    return client, exp.experiment_id


def find_parent(client, exp_id: str, sweep: str | None, uri: str, experiment: str):
    """The parent run whose id or name is `sweep`; None picks the latest sweep with a FINISHED child."""
    if sweep is not None:  # a run id: any parent run of this experiment, tlsweep's or not
        try:
            run = client.get_run(str(sweep))
            if run.info.lifecycle_stage == "active" and run.info.experiment_id == exp_id:
                return run
        except MlflowException:
            pass  # not a run id: a name
    parents = search(client, exp_id, "tags.`tlsweep.role` = 'sweep'")[::-1]  # latest first
    if sweep is None:
        for run in parents:
            if children(client, exp_id, run.info.run_id, max_results=1, status="FINISHED"):
                return run
        if not parents:
            raise ReportError(f"the MLflow store {uri} holds no sweep in experiment {experiment!r}; "
                              "run a multirun (-m) first, or pass tracking.experiment=<name>")
        raise ReportError(f"no sweep in {uri} (experiment {experiment!r}) has a finished run, so there is "
                          "no latest sweep to report. Sweeps, latest first:\n"
                          + _listing(client, exp_id, parents)
                          + "\nPass sweep=<name or parent run id> to see why one of them failed.")
    sweep = str(sweep)
    matches = [r for r in parents if sweep in (r.info.run_name, r.data.tags.get(Tag.SWEEP_NAME))]
    if not matches:
        known = ", ".join(f"{r.info.run_name} ({r.info.run_id})" for r in parents[:LISTED]) or "none"
        raise ReportError(f"no sweep {sweep!r} in {uri}: pass a parent run id or name. "
                          f"Latest sweeps: {known}")
    if len(matches) > 1:
        log.warning("%d sweeps are named %r; using the latest, %s", len(matches), sweep, matches[0].info.run_id)
    return matches[0]


def _listing(client, exp_id: str, parents: list) -> str:
    """One line per sweep (the latest LISTED): name, parent run id, how many children in each status."""
    lines = []
    for run in parents[:LISTED]:
        counts = Counter(c.info.status for c in children(client, exp_id, run.info.run_id))
        found = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no child runs"
        lines.append(f"  {run.info.run_name} ({run.info.run_id}): {found}")
    if len(parents) > LISTED:
        lines.append(f"  ... and {len(parents) - LISTED} older sweeps")
    return "\n".join(lines)


def run_tables(found: list) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs: name, status, error, how it diverged ("" if it did not) and final metrics; params as logged,
    strings), indexed by run id."""
    rows = [{"run_name": r.info.run_name, "status": r.info.status, "start_time": r.info.start_time,
             "error": r.data.tags.get(Tag.ERROR, ""),
             "diverged": r.data.tags.get(Tag.DIVERGED, "") if r.info.status == "FAILED" else "",
             **r.data.metrics} for r in found]
    index = pd.Index([r.info.run_id for r in found], name="run_id")
    params = pd.DataFrame([r.data.params for r in found], index=index, dtype=object)
    return pd.DataFrame(rows, index=index), params


def history(client, run_ids, key: str) -> pd.DataFrame:
    """Long table run_id, step, value of one metric's history (empty when not logged)."""
    rows = [(rid, m.step, m.value) for rid in run_ids for m in client.get_metric_history(rid, key)]
    return pd.DataFrame(rows, columns=["run_id", "step", "value"])


def liveness(client, running: list, now: float) -> dict[str, tuple[bool | None, str]]:
    """Run id -> `owner.judge`'s (orphaned, why) for each RUNNING run: whether its process is still there.
    Its last activity is its last logged metric (one history request per metric; RUNNING runs are few)."""
    out = {}
    for run in running:
        stamps = [m.timestamp for key in run.data.metrics for m in client.get_metric_history(run.info.run_id, key)]
        last = max(stamps, default=run.info.start_time or 0) / 1000
        out[run.info.run_id] = owner.judge(run.data.tags, now, owner.pid_alive, owner.host(), last)
    return out
