"""MLflow runs -> the advisor's results table (tlsweep.advisor.table), and back to the store for the study.

`results(runs, space)` is pure: it reads each run's params, metrics, tags and status (MLflow's Run objects or
anything shaped like them), so a test feeds it plain objects. Only `search` talks to MLflow, imported inside it.

A run is a row of the study when it is one of the study's configs: its backbone and strategy are candidates and
every other param equals the study's (`Space.fixed`), whoever ran it (this study, an earlier one, a grid run
by hand). The LR, length and seed are the row's key; where and how it logged (tracking.*, caches, workers)
and the advisor's own keys never count.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import pandas as pd

from tlsweep.advisor.table import COLUMNS, FEATURE_SECONDS, SCORE_PREFIX, SCORED, lr_key
from tlsweep.config.keys import (IMAGENET_TOP1, SCORE_PREFIX as LOGGED_SCORE, SELECT_IMAGES, STRATEGY_KEY, TOTAL_PARAMS,
                                 Tag, diverged)

STATUS = {"FINISHED": "finished", "FAILED": "failed"}  # RUNNING, KILLED: no row, a resume runs the config again
RANK = {"finished": 0, "diverged": 1, "failed": 2}  # a config's row, of several attempts: the best-ended


@dataclass(frozen=True)
class Space:
    """Which runs are the study's: `backbone_param` names the backbone (model.name, or model.arch under
    model=timm); `fixed[(backbone, strategy)]` are the params such a job has besides the LR, epochs and seed."""
    backbone_param: str
    fixed: Mapping[tuple[str, str], Mapping[str, str]]


def fixed_params(flat: Mapping[str, str], ignore: Iterable[str]) -> dict[str, str]:
    """A job's flattened params less the advisor's varied keys and the key prefixes in `ignore`."""
    ignore = tuple(ignore) + ("optim.lr", "epochs", "seed", "data.select_seed")  # the draw follows the seed
    return {k: v for k, v in flat.items() if not (k in ignore or k.startswith(ignore))}


def results(runs: Iterable, space: Space) -> pd.DataFrame:
    """One row per study config (table.COLUMNS, score_* and `ended`, the run's end in epoch seconds); where a
    config ran more than once, its finished run (the latest), else its diverged, else its failed one."""
    rows = [r for r in (row(run, space) for run in runs) if r is not None]
    extra = sorted({k for r in rows for k in r} - set(COLUMNS) - {"ended"})
    table = pd.DataFrame(rows, columns=[*COLUMNS, "ended", *extra])
    if table.empty:
        return table
    table["rank"] = table["status"].map(RANK)
    table = table.sort_values(["rank", "ended"], ascending=[True, False], kind="stable")
    table = table.drop_duplicates(["backbone", "strategy", "lr", "epochs", "seed"]).drop(columns="rank")
    return table.sort_values("ended", kind="stable", ignore_index=True)


def row(run, space: Space) -> dict | None:
    """The run's row, or None when it is not one of the study's configs or has not ended (RUNNING, KILLED)."""
    params, metrics, info = run.data.params, run.data.metrics, run.info
    status = STATUS.get(info.status)
    backbone, strategy = params.get(space.backbone_param), params.get(STRATEGY_KEY)
    fixed = space.fixed.get((backbone, strategy))
    if status is None or fixed is None or any(params.get(k) != v for k, v in fixed.items()):
        return None
    try:
        key = dict(backbone=backbone, strategy=strategy, lr=lr_key(params["optim.lr"]), epochs=int(params["epochs"]),
                   seed=int(params["seed"]))
    except (KeyError, ValueError):
        return None
    if status == "failed" and diverged(run.data.tags):
        status = "diverged"
    seconds = (info.end_time - info.start_time) / 1000 if info.end_time and info.start_time else math.nan
    scored = metrics.get("final_val_acc", metrics.get("final_test_acc", math.nan))
    scores = {SCORE_PREFIX + k[len(LOGGED_SCORE):].replace("/", "_"): v for k, v in metrics.items()
              if k.startswith(LOGGED_SCORE)}
    ok = status == "finished"
    # the frozen pass's time, where this run computed it (a cache hit reads it back in a fraction of that)
    computed = "(computed" in str(run.data.tags.get(Tag.FEATURES, ""))  # else "(memory)", "(disk)", "off: ..."
    passed = metrics.get("seconds/features", math.nan) if computed else math.nan
    return {**key, "status": status, "select_acc": metrics.get("select_acc", math.nan) if ok else math.nan,
            SCORED: scored if ok else math.nan, "job_seconds": seconds,
            "epoch_seconds": metrics.get("epoch_seconds", math.nan), "ended": (info.end_time or 0) / 1000,
            FEATURE_SECONDS: passed, SELECT_IMAGES: metrics.get(SELECT_IMAGES, math.nan),
            **{k: metrics.get(k, math.nan) for k in (IMAGENET_TOP1, TOTAL_PARAMS)}, **scores}


def search(uri: str, exp_id: str, data_name: str) -> list:
    """The experiment's job runs on the data of this name (the rest of the match is `results`')."""
    from mlflow.tracking import MlflowClient

    from tlsweep.tracking.read import search as pages

    where = f"tags.`{Tag.ROLE}` = 'job' and params.`data.name` = '{data_name}'"
    return pages(MlflowClient(uri), exp_id, where)
