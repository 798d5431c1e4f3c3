"""The results table the advisor reads, defined in one place, and the view of it a decision may read.

One row per job that ran (whoever ran it: this study, an earlier one, a grid run by hand):

    backbone       str    the model (`model=` option, e.g. "resnet18")
    strategy       str    the rung (`strategy=` option, e.g. "finetune"); one of tlsweep.config.keys.STRATEGIES
    lr             float  `optim.lr`
    epochs         int    the length the job was configured to train (short or full)
    seed           int    `seed`; the key that pairs two configs' runs
    status         str    "finished", "diverged" (loss became NaN/inf: tlsweep.config.keys.diverged) or "failed"
    select_acc     float  accuracy on the selection split (`data.select_fraction`): the only accuracy decided on
    scored_acc     float  accuracy on the scored split (`final_val_acc` or `final_test_acc`); optional, never
                          decided on: `visible` drops it before any decision
    job_seconds    float  the job's measured duration, start to end: what a cluster charges
    epoch_seconds  float  measured seconds per training epoch
    feature_seconds float optional: seconds of the frozen feature pass a probe computed (not read from the
                          cache); what an unmeasured strategy's epoch is estimated from (tlsweep.advisor.budget)
    select_images  float  optional: the selection split's size; one image moves select_acc by 1/select_images
                          (what the report's caution reads: tlsweep.advisor.report.resolution)
    imagenet_top1  float  optional: the weights' stated ImageNet top-1 (%); total_params: the model's size. A static
    total_params   float  ranking of backbones, set beside the scores; no decision reads them
    score_*        float  optional transferability scores of the backbone's frozen features (LogME, k-NN, ...),
                          computed without the scored split; recorded in the screen's evidence

A (backbone, strategy, lr, epochs, seed) with any row has run: it is never proposed again.
"""
from __future__ import annotations

import pandas as pd

from tlsweep.config.keys import SELECT_IMAGES  # the column holds the run's metric of that name

KEY = ("backbone", "strategy", "lr", "epochs", "seed")
STATUSES = ("finished", "diverged", "failed")
SCORED = "scored_acc"
SCORE_PREFIX = "score_"
FEATURE_SECONDS = "feature_seconds"
COLUMNS = KEY + ("status", "select_acc", SCORED, "job_seconds", "epoch_seconds")
_DTYPES = (str, str, float, int, int, str, float, float, float, float)
# What a decision may read: everything but the scored split.
DECISION_COLUMNS = tuple(c for c in COLUMNS if c != SCORED)


def lr_key(lr: float) -> float:
    """An LR as the advisor compares it: 10 significant digits, so that 1e-3 logged as "0.001" matches."""
    return float(f"{float(lr):.10g}")


def empty() -> pd.DataFrame:
    """A results table with no rows (a study that has run nothing yet)."""
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(COLUMNS, _DTYPES)})


def visible(results: pd.DataFrame) -> pd.DataFrame:
    """The decision columns of `results` (plus score_*), typed; the scored split is not in it.

    Raises ValueError for a missing column or an unknown status: the table comes from code, not from a user.
    """
    missing = [c for c in DECISION_COLUMNS if c not in results.columns]
    if missing:
        raise ValueError(f"results table lacks {missing}; its columns: tlsweep.advisor.table")
    optional = [c for c in (FEATURE_SECONDS, SELECT_IMAGES) if c in results.columns]
    keep = list(DECISION_COLUMNS) + optional + sorted(c for c in results.columns if str(c).startswith(SCORE_PREFIX))
    runs = results.loc[:, keep].copy()
    bad = sorted(set(runs["status"]) - set(STATUSES))
    if bad:
        raise ValueError(f"results table: unknown status {bad}; statuses: {', '.join(STATUSES)}")
    runs["backbone"] = runs["backbone"].astype(str)
    runs["strategy"] = runs["strategy"].astype(str)
    runs["lr"] = [lr_key(x) for x in runs["lr"]]
    for c in ("epochs", "seed"):
        runs[c] = runs[c].astype(int)
    for c in [c for c in ("select_acc", "job_seconds", "epoch_seconds", *optional) if c in runs]:
        runs[c] = pd.to_numeric(runs[c], errors="coerce").astype(float)
    return runs.reset_index(drop=True)

