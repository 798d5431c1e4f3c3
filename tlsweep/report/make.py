"""`make_report`: read one sweep from the store, compute its statistics, write tables and figures."""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from tlsweep.report import backbones as backbone_table, reading as store, stats, tables
from tlsweep.config.errors import ReportError, why
from tlsweep.imports import heavy
from tlsweep.report.columns import UNSET, design_keys, label, lower_is_better, resolve_keys, seed_keys
from tlsweep.config.keys import DATASET_KEY, SCORE_STRATEGY, SHOTS_KEY, STRATEGY_KEY, Tag
from tlsweep.tracking.runs import EXPERIMENT, current, default_tracking_uri

if TYPE_CHECKING:
    from tlsweep.report.across import Across

DEFAULT_METRIC = "final_val_acc"  # best_val_acc is selected on the validation set it is scored on
TEST_METRIC = "final_test_acc"  # the default instead when the runs' scored split is a test split
SELECTION_METRIC = "select_acc"  # logged by runs with data.select_fraction; higher is better


@dataclass
class Report:
    """What `make_report` produced; every table is also a file in `out_dir`."""

    summary: pd.DataFrame
    gaps: pd.DataFrame
    out_dir: Path
    failed: list[dict]  # runs left out: run_id, run_name, status, reason (a RUNNING run: whether it is orphaned)
    parent_run_id: str  # several sweeps: their parent run ids, comma-separated
    sweep_name: str     # several sweeps: their names joined by "+"
    metric: str
    by: list[str]
    markdown: str  # the summary table as printed to the console
    files: list[Path] = field(default_factory=list)
    selected: pd.DataFrame | None = None  # with `select`: per group, the chosen values (selected.csv)
    decision: pd.DataFrame | None = None  # when data.shots varies: best strategy per cell (decision.csv)
    across: Across | None = None  # with `across`: the cross-task analysis (across_*.csv)
    backbones: backbone_table.Backbones | None = None  # the backbone table (backbones*.csv), when made
    diverged: list[dict] = field(default_factory=list)  # runs whose loss became NaN/inf: run_id, run_name, how


def default_out(sweep_name: str, metric: str, by: list[str], default_by: list[str],
                select: list[str] | None = None, select_on: str = "select") -> Path:
    """reports/<sweep>/ for the default table (where the end-of-sweep report writes it); another
    metric, `by` or `select` gets its own subfolder,
    reports/<sweep>/<metric>[_by_<key>+<key>][_select_<key>[_on_val]]/, so no report overwrites another's files.
    """
    base = Path("reports") / sweep_name.replace(os.sep, "_")
    if metric in (DEFAULT_METRIC, TEST_METRIC) and by == default_by and not select:
        return base
    name = metric if by == default_by else f"{metric}_by_{'+'.join(by) or 'nothing'}"
    if select:
        name += f"_select_{'+'.join(select)}" + ("_on_val" if select_on == "val" else "")
    return base / name.replace(os.sep, "_")


def _writable(out_dir: Path) -> None:
    """Make the report's folder, and write a little there: a folder that cannot be made or written, or a full
    disk, is a ReportError that names it before any table is written."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir) as f:  # unnamed, gone when closed
            f.write(bytes(256 * 1024))  # about what the tables take; the figures, a few times more
            f.flush()
    except OSError as err:
        raise ReportError(f"cannot write the report to {out_dir} ({why(err)}); free space there or pass "
                          "out= a writable folder") from err


def make_report(tracking_uri: str | None = None, sweep: str | list[str] | None = None, metric: str | None = None,
                by: list[str] | None = None, out: str | os.PathLike | None = None, ci: str = "t",
                reference: str | None = None, experiment: str = EXPERIMENT, select: list[str] | None = None,
                select_on: str = "select", across: str | list[str] | None = None,
                across_groups: dict[str, str] | None = None, child_runs: list | None = None,
                backbones: bool | None = None) -> Report:
    """Summarise one sweep of `experiment`, or several as one, and write tables and figures to `out`.

    `sweep` is a parent run id or name (None: the latest sweep with a finished run), or a list of
    them: their runs are pooled, one per configuration (the earliest finished); `out` defaults
    to `default_out`; `metric` to final_test_acc when the runs were scored on a test split (a dataset
    with official val and test splits: val selects, test scores), else final_val_acc; `ci` is "t" or "bootstrap"; `reference` is "key=value" or a bare value.
    `select` (e.g. ["optim.lr"]): within each group of the other `by` keys, keep only the value with
    the best mean selection metric over seeds: `select_acc` (the split held out of train by
    data.select_fraction), or with select_on="val" the scored metric itself (optimistic).
    `across` (e.g. "data.name", or ["data.name", "data.shots"]) adds statistics over tasks, the values
    of those keys: the methods are the groups of the other `by` keys, the runs of a task its seeds
    (`across.analyse`); `across_groups` maps a task to its group (None: VTAB-1k's when it names every task).
    `child_runs`: the one sweep's child runs, when the caller has listed them (the sweep's end): not read again.
    `backbones` adds the backbone table (`backbones.analyse`: scores, probe and best accuracy per backbone, rank
    correlations); None: when some run logged scores and the runs span several backbones. Score runs
    (strategy=score) train nothing: they are in no accuracy group, and a sweep of only score runs reports the
    backbone table alone.
    """
    if ci not in ("t", "bootstrap"):
        raise ReportError(f"ci={ci!r} is not known: use ci=t or ci=bootstrap")
    if select_on not in ("select", "val"):
        raise ReportError(f"select_on={select_on!r} is not known: use select_on=select (the selection split, "
                          "data.select_fraction) or select_on=val (the scored split: optimistic)")
    uri = default_tracking_uri(tracking_uri)
    client, exp_id = store.open_store(uri, experiment)
    asked = [sweep] if sweep is None or isinstance(sweep, str) else [str(s) for s in sweep]
    if not asked:
        raise ReportError("sweep=[] names no sweep: pass a name or parent run id, or a list of them")
    parents = list({p.info.run_id: p for p in (store.find_parent(client, exp_id, s, uri, experiment)
                                               for s in asked)}.values())
    names = [p.data.tags.get(Tag.SWEEP_NAME) or p.info.run_name or p.info.run_id for p in parents]
    sweep_name, parent_ids = "+".join(names), ",".join(p.info.run_id for p in parents)
    if child_runs is None:
        child_runs = [c for p in parents for c in store.children(client, exp_id, p.info.run_id)]
    elif len(parents) > 1:
        raise ReportError("child_runs holds one sweep's children: pass it with one sweep")
    found = sorted(child_runs, key=lambda r: r.info.start_time or 0)
    # a resumed sweep: a config's FINISHED rerun replaces its FAILED or KILLED first attempt; across
    # sweeps, a config that ran in several counts once (its earliest finished run), never twice
    kept = current(found)
    repeated = _repeated_configs(found) if len(parents) > 1 else 0
    runs, params = store.run_tables(kept)
    every_run, every_param = runs, params  # score runs too: the backbone table reads their scores
    scoring = params[STRATEGY_KEY] == SCORE_STRATEGY if STRATEGY_KEY in params else np.zeros(len(params), bool)
    runs, params = runs[~scoring], params.loc[~scoring]  # no accuracy: in no group, never averaged
    # a run still RUNNING is not waited for: it may be an orphan (its process killed), which only a resume closes
    alive = store.liveness(client, [r for r in kept if r.info.status == "RUNNING"], time.time())

    default_by = design_keys(params)
    by = resolve_keys([by] if isinstance(by, str) else by, params) if by is not None else default_by
    select = resolve_keys([select] if isinstance(select, str) else select, params) if select else []
    by = [k for k in by if k not in select]  # the groups within which a value is selected
    across = resolve_keys([across] if isinstance(across, str) else across, params) if across else []
    if set(across) & set(select):
        raise ReportError(f"across={across} and select={select} share a key: a task cannot also be selected")
    # Pairs share their seeds and every design param outside `by`, so they differ only in `by`
    # (and, with `select`, in each group's selected values).
    pair_keys = [k for k in dict.fromkeys(seed_keys(params) + default_by) if k not in by + select]

    if metric is None:
        metric = TEST_METRIC if TEST_METRIC in runs.columns and runs[TEST_METRIC].notna().any() else DEFAULT_METRIC
    if scoring.any() and not (runs["status"] == "FINISHED").any() and backbones is not False:
        # only score runs finished: no accuracy to tabulate, and the backbone table is the whole report
        out_dir = Path(out) if out is not None else default_out(sweep_name, metric, [], [])
        return _scores_only(every_run, every_param, metric, sweep_name, parent_ids, out_dir)
    if runs.empty:
        raise ReportError(f"sweep {sweep_name!r} ({parent_ids}) has no child runs"
                          + (" but score runs (pass backbones=true or leave it unset)" if scoring.any() else "")
                          + "; nothing to report")
    finished = runs["status"] == "FINISHED"
    if not finished.any():
        errors = [e for e in runs["error"] if e]
        raise ReportError(f"sweep {sweep_name!r} has no finished runs ({len(runs)} runs: "
                          f"{', '.join(sorted(set(runs['status'])))}); nothing to report"
                          + (f". First error: {errors[0]}" if errors else "")
                          + "".join(f". {runs.at[rid, 'run_name']} is RUNNING: {verdict}"
                                    for rid, (_, verdict) in alive.items()))
    if metric not in runs.columns or runs.loc[finished, metric].isna().all():
        logged = sorted(c for c in runs.columns if c not in ("run_name", "status", "error", "diverged", "start_time"))
        raise ReportError(f"no finished run of sweep {sweep_name!r} logged metric {metric!r}; "
                          f"logged metrics: {', '.join(logged)}")
    selection = SELECTION_METRIC if select_on == "select" else metric
    if select and (selection not in runs.columns or runs.loc[finished, selection].isna().all()):
        raise ReportError(f"select={select} needs a selection split, but no finished run of sweep {sweep_name!r} "
                          f"logged {selection}: rerun the sweep with data.select_fraction=0.2 (held out of train), "
                          "or pass select_on=val to select on the scored split (the numbers are then optimistic)")
    needed = [metric] + ([selection] if select else [])
    used = finished & np.logical_and.reduce([np.isfinite(runs[m].astype(float)) for m in needed])
    gone = runs["diverged"] != ""  # lost candidates: listed apart, never averaged (their metrics are NaN or absent)
    failed = [{"run_id": rid, "run_name": r.run_name, "status": r.status,
               "reason": alive[rid][1] if rid in alive else r.error if r.status != "FINISHED" else
               f"no finite {' or '.join(m for m in needed if not np.isfinite(float(r[m])))} logged"}
              for rid, r in runs[~used & ~gone].iterrows()]
    diverged = [{"run_id": rid, "run_name": r.run_name, "how": r.diverged} for rid, r in runs[gone].iterrows()]

    data = params.loc[used, by + pair_keys + select].fillna(UNSET).copy()
    data["value"] = runs.loc[used, metric].astype(float)
    data["trainable_params"] = runs.loc[used].get("trainable_params", np.nan)
    selected = None
    if select:
        data["selection"] = runs.loc[used, selection].astype(float)
        selected = stats.select_best(data, by, select, higher_is_better=not lower_is_better(selection))
        keep = data.reset_index().merge(selected[by + select], on=by + select)["run_id"]
        data = data.loc[keep]

    summary = stats.summary(data, by)
    ref = stats.reference(reference, by, summary)
    gaps = stats.gaps(data, by, pair_keys, ref, summary, bootstrap=ci == "bootstrap")
    shown = by + select  # the tables also show each group's selected values
    cross = None
    if across:  # methods: the groups of the other `by` keys; a task's runs: its seeds (and any key left out)
        # scipy.stats's import (docs/speed.md, Fixed cost): only a cross-task report needs it
        from tlsweep.report import across as across_stats, across_tables

        methods = [k for k in by if k not in across]
        tasks = data[methods + ["value"]].join(params.loc[data.index, across].fillna(UNSET))
        cross = across_stats.analyse(tasks, across, methods, across_groups,
                                     higher_is_better=not lower_is_better(metric))
    summary = _count_diverged(summary, params.loc[gone, by], by)
    if select:
        summary, gaps = (_with_selected(frame, selected, by, select) for frame in (summary, gaps))

    with heavy("tlsweep.report.figures"):  # matplotlib: not needed until the data has checked out
        from tlsweep.report import backbone_figures, figures

    unselected = [k for k in default_by if k not in select]
    out_dir = Path(out) if out is not None else default_out(sweep_name, metric, by, unselected, select, select_on)
    _writable(out_dir)
    for stale in out_dir.glob("*.p[dn][fg]"):  # a figure this sweep no longer supports must not linger
        if stale.stem in figures.NAMES + backbone_figures.NAMES:
            stale.unlink()
    summary.to_csv(out_dir / "summary.csv", index=False)  # CSVs keep the raw keys
    gaps.to_csv(out_dir / "gaps.csv", index=False)
    metrics = [metric] + ([selection] if select and selection != metric else [])
    runs_out = pd.concat([runs[["run_name", "status", "diverged"]], params[by + pair_keys + select], runs[metrics]],
                         axis=1)
    runs_out = runs_out.assign(used=runs_out.index.isin(data.index))  # with select: only the selected values
    runs_out.rename_axis("run_id").to_csv(out_dir / "runs.csv")
    files = [out_dir / f for f in ("summary.csv", "gaps.csv", "runs.csv", "summary.md", "summary.tex")]

    notes = tables.method_notes(metric, ref, ci, failed, pair_keys, n_gaps=int(gaps["p_value"].notna().sum()),
                                n_flat=int(((gaps["n_pairs"] > 1) & gaps["p_value"].isna()).sum()),
                                n_diverged=len(diverged))
    if alive:
        notes.append(_running_note(alive, sweep_name))
    if len(parents) > 1:
        notes.insert(0, f"Pooled {len(parents)} sweeps: {', '.join(names)}"
                     + (f"; {repeated} configuration(s) ran in more than one, each counted once "
                        "(its earliest finished run)." if repeated else "."))
    choice, row_key, rows_label = None, None, ""
    if SHOTS_KEY in by and data[SHOTS_KEY].nunique() > 1:
        row_key = DATASET_KEY if DATASET_KEY in by else None
        rows_label = ", ".join(sorted(params.loc[used, DATASET_KEY].dropna().unique())) \
            if DATASET_KEY in params else ""
        cells = [k for k in (row_key, SHOTS_KEY) if k]
        choice = stats.decide(data, cells, [k for k in by if k not in cells], pair_keys,
                              higher_is_better=not lower_is_better(metric))
        choice.to_csv(out_dir / "decision.csv", index=False)
        files.append(out_dir / "decision.csv")
        notes.append(tables.decision_note(choice, metric))
    if select:
        selected.assign(selection_metric=selection, selected_on=select_on).to_csv(out_dir / "selected.csv",
                                                                                 index=False)
        files.append(out_dir / "selected.csv")
        notes.insert(1, _selection_note(select, by, selection, select_on, metric))
    if cross is not None:
        files += across_tables.write(cross, out_dir)
    with_backbones = _wants_backbones(backbones, every_run, every_param)
    if scoring.any():
        notes.append(f"{int(scoring.sum())} score run(s) (strategy=score) train nothing: in no group of this table; "
                     + ("their scores are in the Backbones table." if with_backbones else
                        "backbones=true tabulates their scores."))
    title = f"**{sweep_name}** ({parent_ids}): {label(metric)}, {len(data)} of {len(runs)} runs"
    markdown = tables.markdown(title, summary, gaps, shown, metric, ref, ci, notes, failed, diverged)
    if choice is not None:
        markdown += "\n" + tables.decision_markdown(choice, row_key, metric, rows_label)
    if cross is not None:
        markdown += "\n" + across_tables.markdown(cross, metric)
    bb = None
    if with_backbones:
        bb = backbone_table.analyse(every_run, every_param, metric, by + select, not lower_is_better(metric))
        files += backbone_table.write(bb, out_dir)
        markdown += "\n" + backbone_table.markdown(bb)
    (out_dir / "summary.md").write_text(markdown)
    (out_dir / "summary.tex").write_text(tables.latex(summary, gaps, shown, metric, ref, notes, sweep_name))

    history = store.history(client, data.index, "test_acc" if "test" in metric else "val_acc")
    files += figures.make_all(out_dir, data, summary, history, by, metric, choice, row_key, rows_label)
    if cross is not None:
        from tlsweep.report import across_figures

        files += across_figures.make_all(out_dir, cross, metric)
    if bb is not None:
        files += backbone_figures.make_all(out_dir, bb)
    return Report(summary=summary, gaps=gaps, out_dir=out_dir, failed=failed,
                  parent_run_id=parent_ids, sweep_name=sweep_name, metric=metric, by=by,
                  markdown=markdown, files=files, selected=selected, decision=choice, across=cross, diverged=diverged,
                  backbones=bb)


def _wants_backbones(asked: bool | None, runs: pd.DataFrame, params: pd.DataFrame) -> bool:
    """`backbones=` as asked; unset: when some finished run logged scores and the runs span several backbones."""
    if asked is not None:
        return bool(asked)
    done = runs["status"] == "FINISHED"
    keys = backbone_table.backbone_keys(params.loc[done])
    return backbone_table.has_scores(runs[done]) and len(params.loc[done].reindex(columns=keys).drop_duplicates()) > 1


def _scores_only(runs: pd.DataFrame, params: pd.DataFrame, metric: str, sweep_name: str, parent_ids: str,
                 out_dir: Path) -> Report:
    """The report of runs that trained nothing (strategy=score): the backbone table, its CSVs and figure."""
    with heavy("tlsweep.report.figures"):
        from tlsweep.report import backbone_figures

    bb = backbone_table.analyse(runs, params, metric, [])
    _writable(out_dir)
    done = runs["status"] == "FINISHED"
    failed = [{"run_id": rid, "run_name": r.run_name, "status": r.status, "reason": r.error}
              for rid, r in runs[~done].iterrows()]
    markdown = (f"**{sweep_name}** ({parent_ids}): transferability scores, {int(done.sum())} of {len(runs)} runs "
                "(strategy=score: no training, no accuracy)\n\n" + backbone_table.markdown(bb))
    if failed:
        markdown += "\nLeft out:\n" + "".join(f"- {f['run_name']} ({f['run_id']}) {f['status']}: "
                                                f"{f['reason'] or 'no error logged'}\n" for f in failed)
    (out_dir / "summary.md").write_text(markdown)
    files = backbone_table.write(bb, out_dir) + [out_dir / "summary.md"] + backbone_figures.make_all(out_dir, bb)
    return Report(summary=pd.DataFrame(columns=stats.STAT_COLUMNS), gaps=pd.DataFrame(columns=stats.GAP_COLUMNS),
                  out_dir=out_dir, failed=failed, parent_run_id=parent_ids, sweep_name=sweep_name, metric=metric,
                  by=[], markdown=markdown, files=files, backbones=bb)


def _count_diverged(summary: pd.DataFrame, lost: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """`summary` with n_diverged: per group, how many of its runs diverged (left out of its n and mean). A group
    whose every run diverged has no row; the Diverged list names its runs."""
    if by:
        counts = lost.fillna(UNSET).groupby(by).size().rename("n_diverged").reset_index()
        out = summary.merge(counts, on=by, how="left")
    else:
        out = summary.assign(n_diverged=len(lost))
    out["n_diverged"] = out["n_diverged"].fillna(0).astype(int)
    cols = list(summary.columns)
    return out[cols[:cols.index("n") + 1] + ["n_diverged"] + cols[cols.index("n") + 1:]]  # beside the n it adds to


def _running_note(alive: dict, sweep_name: str) -> str:
    """What the report says about runs still RUNNING in the store, which it does not wait for."""
    orphans = sum(orphaned is True for orphaned, _ in alive.values())
    unknown = sum(orphaned is None for orphaned, _ in alive.values())
    parts = [f"{orphans} look(s) orphaned (the process is gone)" if orphans else "",
             f"{unknown} cannot be checked from here" if unknown else "",
             f"{len(alive) - orphans - unknown} still running" if len(alive) - orphans - unknown else ""]
    return (f"{len(alive)} run(s) still RUNNING in the store, left out and not waited for: "
            f"{', '.join(p for p in parts if p)}. An orphan stays RUNNING until the sweep is resumed "
            f"(the same command with tracking.sweep_name={sweep_name}), which closes it KILLED and runs its config again.")


def _repeated_configs(found: list) -> int:
    """How many configurations (tlsweep.config_key) have a finished run in more than one sweep."""
    sweeps: dict[str, set] = {}
    for run in found:
        key = run.data.tags.get(Tag.CONFIG_KEY)
        if key and run.info.status == "FINISHED":
            sweeps.setdefault(key, set()).add(run.data.tags.get(Tag.PARENT))
    return sum(len(s) > 1 for s in sweeps.values())


def _with_selected(frame: pd.DataFrame, selected: pd.DataFrame, by: list[str], select: list[str]) -> pd.DataFrame:
    """`frame` (one row per group) with each group's selected values after the group keys."""
    merged = frame.merge(selected[by + select], on=by, how="left") if by else \
        frame.assign(**selected[select].iloc[0].to_dict())
    return merged[by + select + [c for c in frame.columns if c not in by]]


def _selection_note(select: list[str], by: list[str], selection: str, select_on: str, metric: str) -> str:
    within = f"within each {', '.join(by)}" if by else "over the whole sweep"
    if select_on == "val":
        return (f"Selected {', '.join(select)} {within} by the best mean {selection} over seeds on the validation "
                f"split that {metric} is scored on: these numbers are optimistic (selected.csv).")
    return (f"Selected {', '.join(select)} {within} by the best mean {selection} over seeds on the selection split "
            "(data.select_fraction, held out of train, disjoint from val); "
            f"{metric} is scored on val at the selected values only (selected.csv).")
