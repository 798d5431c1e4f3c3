"""`make_report`: read one sweep from the store, compute its statistics, write tables and figures."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tlsweep.report import stats, store, tables
from tlsweep.report.keys import ReportError, design_keys, label, resolve_keys, seed_keys
from tlsweep.tracking import EXPERIMENT, current, default_tracking_uri

DEFAULT_METRIC = "final_val_acc"  # best_val_acc is selected on the validation set it is scored on


@dataclass
class Report:
    """What `make_report` produced; every table is also a file in `out_dir`."""

    summary: pd.DataFrame
    gaps: pd.DataFrame
    out_dir: Path
    failed: list[dict]  # runs left out: run_id, run_name, status, reason
    parent_run_id: str
    sweep_name: str
    metric: str
    by: list[str]
    markdown: str  # the summary table as printed to the console
    files: list[Path] = field(default_factory=list)


def default_out(sweep_name: str, metric: str, by: list[str], default_by: list[str]) -> Path:
    """reports/<sweep>/ for the default table (where the end-of-sweep report writes it); another
    metric or `by` gets its own subfolder, reports/<sweep>/<metric>[_by_<key>+<key>]/, so no report
    overwrites another's files.
    """
    base = Path("reports") / sweep_name.replace(os.sep, "_")
    if metric == DEFAULT_METRIC and by == default_by:
        return base
    name = metric if by == default_by else f"{metric}_by_{'+'.join(by) or 'nothing'}"
    return base / name.replace(os.sep, "_")


def make_report(tracking_uri: str | None = None, sweep: str | None = None, metric: str = DEFAULT_METRIC,
                by: list[str] | None = None, out: str | os.PathLike | None = None, ci: str = "t",
                reference: str | None = None, experiment: str = EXPERIMENT) -> Report:
    """Summarise one sweep of `experiment` and write tables and figures to `out`.

    `sweep` is a parent run id or name (None: the latest sweep with a finished run); `out` defaults
    to `default_out`; `ci` is "t" or "bootstrap"; `reference` is "key=value" or a bare value.
    """
    if ci not in ("t", "bootstrap"):
        raise ReportError(f"ci={ci!r} is not known: use ci=t or ci=bootstrap")
    uri = default_tracking_uri(tracking_uri)
    client, exp_id = store.open_store(uri, experiment)
    parent = store.find_parent(client, exp_id, sweep, uri, experiment)
    sweep_name = parent.data.tags.get("tlsweep.sweep_name") or parent.info.run_name or parent.info.run_id
    # a resumed sweep: a config's FINISHED rerun replaces its FAILED or KILLED first attempt
    runs, params = store.run_tables(current(store.children(client, exp_id, parent.info.run_id)))

    default_by = design_keys(params)
    by = resolve_keys([by] if isinstance(by, str) else by, params) if by is not None else default_by
    # Pairs share their seeds and every design param outside `by`, so they differ only in `by`.
    pair_keys = [k for k in dict.fromkeys(seed_keys(params) + default_by) if k not in by]

    if runs.empty:
        raise ReportError(f"sweep {sweep_name!r} ({parent.info.run_id}) has no child runs; nothing to report")
    finished = runs["status"] == "FINISHED"
    if not finished.any():
        errors = [e for e in runs["error"] if e]
        raise ReportError(f"sweep {sweep_name!r} has no finished runs ({len(runs)} runs: "
                          f"{', '.join(sorted(set(runs['status'])))}); nothing to report"
                          + (f". First error: {errors[0]}" if errors else ""))
    if metric not in runs.columns or runs.loc[finished, metric].isna().all():
        logged = sorted(c for c in runs.columns if c not in ("run_name", "status", "error", "start_time"))
        raise ReportError(f"no finished run of sweep {sweep_name!r} logged metric {metric!r}; "
                          f"logged metrics: {', '.join(logged)}")
    used = finished & runs[metric].notna() & np.isfinite(runs[metric].astype(float))
    failed = [{"run_id": rid, "run_name": r.run_name, "status": r.status,
               "reason": r.error if r.status != "FINISHED" else f"no finite {metric} logged"}
              for rid, r in runs[~used].iterrows()]

    data = params.loc[used, by + pair_keys].fillna("<unset>").copy()
    data["value"] = runs.loc[used, metric].astype(float)
    data["trainable_params"] = runs.loc[used].get("trainable_params", np.nan)

    summary = stats.summary(data, by)
    ref = stats.reference(reference, by, summary)
    gaps = stats.gaps(data, by, pair_keys, ref, summary, bootstrap=ci == "bootstrap")

    from tlsweep.report import figures  # imports matplotlib: not needed until the data has checked out

    out_dir = Path(out) if out is not None else default_out(sweep_name, metric, by, default_by)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.p[dn][fg]"):  # a figure this sweep no longer supports must not linger
        if stale.stem in figures.NAMES:
            stale.unlink()
    summary.to_csv(out_dir / "summary.csv", index=False)  # CSVs keep the raw keys
    gaps.to_csv(out_dir / "gaps.csv", index=False)
    runs_out = pd.concat([runs[["run_name", "status"]], params[by + pair_keys],
                          runs[metric].rename(metric)], axis=1).assign(used=used)
    runs_out.rename_axis("run_id").to_csv(out_dir / "runs.csv")

    notes = tables.method_notes(metric, ref, ci, failed, pair_keys)
    title = f"**{sweep_name}** ({parent.info.run_id}): {label(metric)}, {int(used.sum())} of {len(runs)} runs"
    markdown = tables.markdown(title, summary, gaps, by, metric, ref, ci, notes, failed)
    (out_dir / "summary.md").write_text(markdown)
    (out_dir / "summary.tex").write_text(tables.latex(summary, gaps, by, metric, ref, notes, sweep_name))
    files = [out_dir / f for f in ("summary.csv", "gaps.csv", "runs.csv", "summary.md", "summary.tex")]

    history = store.history(client, data.index, "val_acc")
    files += figures.make_all(out_dir, data, summary, history, by, metric)
    return Report(summary=summary, gaps=gaps, out_dir=out_dir, failed=failed,
                  parent_run_id=parent.info.run_id, sweep_name=sweep_name, metric=metric, by=by,
                  markdown=markdown, files=files)
