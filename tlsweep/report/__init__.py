"""The report of one sweep: a table with honest uncertainty, and the figures of a paper.

Reads only the MLflow store (no Hydra output folders), so a store copied from a cluster works:

    python -m tlsweep.report                      # the latest sweep with a finished run
    python -m tlsweep.report sweep=<parent run id or name> metric=best_val_acc \
        by=[strategy.name,optim.lr] tracking.uri=sqlite:///other/mlflow.db

One module per job, each readable and testable alone; arrows point down:
    __main__  the CLI (Hydra, conf/report.yaml)  ->  make: make_report, where the files go
    make      ->  store (MLflow), stats, tables, figures
    tables, figures  ->  stats (numbers only, no MLflow)  ->  keys (labels, order, groups)

Method (also written into summary.md / summary.tex):
- Runs: the child runs of the sweep's parent run (tag `mlflow.parentRunId`). Only FINISHED runs
  that logged the metric enter the statistics; the others are listed as left out.
- Groups: runs with equal values of the `by` params. By default `by` is every param whose value
  varies across the sweep's children, except per-run keys (`*seed`, `device`, `data.root`, output
  dirs, `tracking.*`, `hydra.*`) and keys another one determines (strategy.backbone_lr_scale follows
  strategy.name). It is worked out from the logged params, so any store of this layout works.
- Per group, over seeds: n, mean, std (ddof=1), sem, and the 95% CI of the mean from Student's t
  with n-1 dof. n=1 gives NaN for std/sem/CI, never a zero-width interval.
- Gaps: each group against its reference group. The reference fixes the reference keys (default
  `strategy.name=scratch`, else the first group's strategy, else the whole first group) and keeps
  the group's own values of the other `by` keys: with by=[strategy.name, optim.lr], finetune at
  lr=1e-3 is compared with scratch at lr=1e-3. Runs are paired on the seed params plus any varying
  design params left out of `by` (so pairs differ only in the `by` keys); duplicates of a pair key
  are averaged. Reported: mean paired difference, its 95% t-interval and the paired t-test p-value
  over the n pairs; with ci=bootstrap also a percentile bootstrap CI (10,000 resamples, seed 0).
  Pairs that all differ by the same amount get no p-value ("no spread"): the t statistic is infinite.
- Several sweeps (`sweep=[a,b]`): their children pooled, one run per configuration (its earliest
  finished run, by the `tlsweep.config_key` tag).
- Decision (when data.shots varies): per dataset x shots cell, the best `by` candidate by mean,
  and whether it is ahead of the runner-up (paired t-test on seeds, Holm over the cells, 0.05).
"""
from __future__ import annotations

from tlsweep.config.errors import ReportError

__all__ = ["Report", "ReportError", "make_report"]


def __getattr__(name: str):
    # make_report reads MLflow: imported on first use, so that `tlsweep.report.stats` (and tests
    # of a t-interval) load without MLflow (PEP 562 module __getattr__).
    if name in ("Report", "make_report"):
        from tlsweep.report import make

        return getattr(make, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
