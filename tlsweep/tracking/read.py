"""The one way tlsweep reads a store's runs: below the sweep's lifecycle (sweep.py), the
job's tracking (runs.py) and the report (report/reading.py). Needs MLflow only: no torch, no pandas."""
from __future__ import annotations

import contextlib

from ..imports import heavy

PAGE = 1000  # runs per search request (MLflow's own cap per page)


def opening(uri: str):
    """Around a process's first open of a SQL store, which imports SQLAlchemy and Alembic (0.7 s): those imports
    with the collector paused (imports.heavy); a plain block once they are loaded, or for a server's URI."""
    if uri.startswith(("http://", "https://", "databricks")):
        return contextlib.nullcontext()
    return heavy("mlflow.store.tracking.sqlalchemy_store")


def search(client, exp_id: str, filter_string: str, max_results: int | None = None) -> list:
    """Every active run matching `filter_string` (or the first `max_results`), oldest first, across result pages."""
    runs, token = [], None
    while True:
        page = client.search_runs([exp_id], filter_string=filter_string, order_by=["attributes.start_time ASC"],
                                  max_results=min(max_results or PAGE, PAGE), page_token=token)
        runs += page
        token = page.token
        if not token or (max_results and len(runs) >= max_results):
            return runs[:max_results] if max_results else runs


def children(client, exp_id: str, parent_id: str, max_results: int | None = None, status: str | None = None) -> list:
    """The child runs of a parent run, oldest first (only those with `status`, e.g. FINISHED, when given)."""
    filter_string = f"tags.mlflow.parentRunId = '{parent_id}'"
    if status:
        filter_string += f" and attributes.status = '{status}'"
    return search(client, exp_id, filter_string, max_results)
