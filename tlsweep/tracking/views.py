"""The MLflow UI: where a store's UI serves, the links a job or a sweep prints, and a sweep's saved view (its runs
grouped by what the sweep varies, with the scored metric).

MLflow 3's UI keeps a saved view as an experiment tag, `mlflow.sharedViewState.<id>`, whose value is an
envelope `{"name", "createdAt", "updatedAt", "state"}`; `state` is the page's state as a JSON string (the UI
writes it deflate-compressed; it reads plain JSON too). The link `#/experiments/<exp>/runs?viewStateShareKey=<id>`
opens it, `&compareRunsMode=CHART` on the charts. This is the UI's own format, not an API: the names below are
MLflow 3.17's (savedViewEnvelope.ts, useSharedExperimentViewState.ts, ExperimentPageUIState.ts,
ExperimentPageSearchFacetsState.ts, runs-charts.types.ts under mlflow/server/js/src), so the view is written
only under MLflow 3, and a view that cannot be written costs the sweep its links, never its runs.

The state is built by pure functions; `save` is the one call that writes it, through the client it is given.
"""
from __future__ import annotations

import json
import time

from omegaconf import DictConfig, OmegaConf

from ..config.keys import is_seed

UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default (--host 127.0.0.1, --port 5000)
TAG_PREFIX = "mlflow.sharedViewState."
MAJOR = 3  # the UI major version whose view format this writes
# The report's metric when the runs are scored on a val split (report/make.py DEFAULT_METRIC, held to it by a
# test); the sweep's end rewrites the view with the metric its report used (final_test_acc on a test split)
SCORED_METRIC = "final_val_acc"
# Each bar chart draws its first `runsCountToCompare` runs or groups (the UI's default: 10); a sweep's
# groups all belong on it
BARS = 100
SECTION = "tlsweep-scored"  # the charts' first section: the scored metric alone
# The UI adds a chart for every other logged metric, in the section of its key's prefix ("Model metrics" for a
# bare key, "System metrics" for system/): these start folded, with those of the prefixes tlsweep's runs log
# (lr/<group>, seconds/<part>, score/<name>, score_seconds/<name>), so that the first screen is the comparison
FOLDED = ("Model metrics", "System metrics", "lr", "seconds", "score", "score_seconds")
_ABSENT = object()


def ui_base(uri: str) -> str:
    """Where the MLflow UI of store `uri` is served: the server itself, or where `mlflow ui` serves."""
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else UI


def ui_url(uri: str, experiment_id: str) -> str:
    """The experiment's runs table in the MLflow UI, in its "Model training" layout."""
    return f"{ui_base(uri)}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def announce(uri: str, experiment_id: str, links: dict[str, str] | None = None) -> None:
    """Where the runs are, and what to open: `links` (a sweep's saved view), else the runs table."""
    lines = [f"[tlsweep] MLflow store: {uri}"]
    if not uri.startswith(("http://", "https://")):  # a server is already serving its UI
        lines.append(f"[tlsweep] browse it with: mlflow ui --backend-store-uri {uri}")
    lines += [f"[tlsweep] {what}: {url}" for what, url in (links or {"runs table": ui_url(uri, experiment_id)}).items()]
    print("\n".join(lines), flush=True)


def supported(version: str) -> bool:
    """Whether the installed MLflow's UI reads the view format written here."""
    return version.split(".")[0] == str(MAJOR)


def group_keys(swept: list[str], cfg: DictConfig) -> list[str]:
    """The run params to group a sweep's runs by: those of the keys it varies, less the seeds (a group's
    runs are its seeds). A config group's option is logged as `<group>.name` (strategy -> strategy.name);
    a group with no node of its own (experiment=) logs no param and groups nothing."""
    by = []
    for key in swept:
        dotted = key.replace("/", ".")
        node = OmegaConf.select(cfg, dotted, default=_ABSENT)
        if isinstance(node, DictConfig):
            if "name" not in node:
                continue
            dotted = f"{dotted}.name"
        elif node is _ABSENT and key in cfg.get("hydra", {}).get("runtime", {}).get("choices", {}):
            continue
        if not is_seed(dotted):
            by.append(dotted)
    return by


def column(kind: str, key: str) -> str:
    """A runs-table column as the UI names it (makeCanonicalSortKey): metrics.`final_val_acc`."""
    return f"{kind}.`{key}`"


def state(parent: str, by: list[str], metric: str) -> dict:
    """The runs page of one sweep: its jobs (not the parent, whose metrics are the groups' means already),
    grouped by `by` with each group's mean of `metric`, best first; on the charts, one bar per group."""
    shown = column("metrics", metric)
    return {
        "searchFilter": f"tags.mlflow.parentRunId = '{parent}'",
        "orderByKey": shown,
        "orderByAsc": False,
        # no seed column: a group row would show the seeds' mean
        "selectedColumns": [shown, *(column("params", k) for k in by)],
        "groupBy": {"aggregateFunction": "average",
                    "groupByKeys": [{"mode": "param", "groupByData": k} for k in by]} if by else None,
        "runsHiddenMode": "SHOW_ALL",  # the UI's default draws only the first 10 runs or groups
        "compareRunCharts": [{"uuid": f"{SECTION}-bar", "type": "BAR", "metricKey": metric,
                              "metricSectionId": SECTION, "runsCountToCompare": BARS,
                              "deleted": False, "isGenerated": False}],
        "compareRunSections": [
            {"uuid": SECTION, "name": metric, "display": True, "isReordered": False, "deleted": False,
             "isGenerated": False},
            *({"uuid": f"tlsweep-{name.replace(' ', '-').lower()}", "name": name, "display": False,
               "isReordered": False, "deleted": False, "isGenerated": True} for name in FOLDED)],
        "isAccordionReordered": True,  # the sections in this order; else the UI sorts them by name
        "chartsSearchFilter": "",
        "useGroupedValuesInCharts": True,  # a group's bar is its mean, not its first run
    }


def envelope(name: str, view_state: dict, created_ms: int, updated_ms: int) -> str:
    """The tag's value: MLflow's saved-view envelope around the state (plain JSON, which the UI reads as is)."""
    return json.dumps({"name": name, "createdAt": created_ms, "updatedAt": updated_ms,
                       "state": json.dumps(view_state)})


def created(value: str | None) -> int | None:
    """When an existing view was first saved (its envelope's createdAt), or None."""
    try:
        made = json.loads(value)["createdAt"] if value else None
    except (ValueError, TypeError, KeyError):
        return None
    return made if isinstance(made, int) else None


def links(base: str, experiment_id: str, view_id: str) -> dict[str, str]:
    """What to open: the view's runs table and its charts. No search or sort parameter may join them: the UI
    then ignores the view."""
    table = (f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={view_id}"
             "&workflowType=machine_learning")
    return {"compare, table": table, "compare, chart": f"{table}&compareRunsMode=CHART"}


def title(sweep: str, by: list[str], metric: str) -> str:
    """The view's name in the UI's list of saved views."""
    return f"{sweep}: mean {metric}" + (f" by {', '.join(by)}" if by else "")


def save(client, experiment_id: str, parent: str, sweep: str, by: list[str], metric: str,
         version: str) -> str | None:
    """Write (or rewrite) the view of sweep `sweep` (parent run `parent`) with `client` (an MlflowClient); its
    id, the parent's run id, so that a resumed sweep keeps its links. None, said in one line, where the
    installed MLflow (`version`) is not the major version whose format this writes."""
    if not supported(version):
        print(f"[tlsweep] MLflow {version} is not {MAJOR}.x: no saved view of sweep {sweep} in its UI", flush=True)
        return None
    key = f"{TAG_PREFIX}{parent}"
    now = int(time.time() * 1000)
    before = client.get_experiment(experiment_id).tags.get(key)
    # about 2 kB, and under 100 bytes more per key: far below MLflow's 20,000 for an experiment tag's value
    value = envelope(title(sweep, by, metric), state(parent, by, metric), created(before) or now, now)
    client.set_experiment_tag(experiment_id, key, value)
    return parent
