"""The report of one sweep: a table with honest uncertainty, and the figures of a paper.

Reads only the MLflow store (no Hydra output folders), so a store copied from a cluster works:

    python -m tlsweep.report                      # the latest sweep in the default store
    python -m tlsweep.report sweep=<parent run id or name> metric=best_val_acc \
        by=[strategy.name,optim.lr] out=paper/

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
"""
from __future__ import annotations

import logging
import math
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from scipy import stats

from tlsweep.tracking import EXPERIMENT, default_tracking_uri

log = logging.getLogger(__name__)

STAT_COLUMNS = ["n", "mean", "std", "sem", "ci95_low", "ci95_high", "min", "max"]
GAP_COLUMNS = ["reference", "n_pairs", "mean_diff", "ci95_low", "ci95_high", "p_value"]
BOOT_COLUMNS = ["boot_ci95_low", "boot_ci95_high"]
LADDER = ("scratch", "probe", "partial", "finetune")  # the order of the paper's ladder
STRATEGY_KEY = "strategy.name"
# Params that differ between runs of one configuration: they identify a replicate, not a group.
PER_RUN_LAST = {"device", "root", "output_dir", "run_dir", "out_dir", "num_workers", "job_num", "job_id"}
PER_RUN_PREFIXES = ("tracking.", "hydra.")
N_BOOT = 10_000
BOOT_SEED = 0


class ReportError(ValueError):
    """The report cannot be made; the message says what is wrong and what to do."""


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


def make_report(tracking_uri: str | None = None, sweep: str | None = None, metric: str = "final_val_acc",
                by: list[str] | None = None, out: str | os.PathLike | None = None, ci: str = "t",
                reference: str | None = None, experiment: str = EXPERIMENT) -> Report:
    """Summarise one sweep of `experiment` and write tables and figures to `out`.

    `sweep` is a parent run id or name (None: the latest sweep); `out` defaults to
    reports/<sweep name>/; `ci` is "t" or "bootstrap"; `reference` is "key=value" or a bare value.
    """
    if ci not in ("t", "bootstrap"):
        raise ReportError(f"ci={ci!r} is not known: use ci=t or ci=bootstrap")
    uri = default_tracking_uri(tracking_uri)
    client, exp_id = _open_store(uri, experiment)
    parent = _find_parent(client, exp_id, sweep, uri)
    sweep_name = parent.data.tags.get("tlsweep.sweep_name") or parent.info.run_name or parent.info.run_id
    runs, params = _tables(_children(client, exp_id, parent.info.run_id))

    by = _resolve_keys([by] if isinstance(by, str) else by, params) if by is not None else _design_keys(params)
    # Pairs share their seeds and every design param outside `by`; a seed param that never varies
    # (data.shots_seed) pairs nothing, so only the varying ones count, or `seed` when none varies.
    seeds = [k for k in params.columns if _is_seed(k) and params[k].nunique() > 1] or \
        [k for k in params.columns if k == "seed"]
    pair_keys = [k for k in dict.fromkeys(seeds + _design_keys(params)) if k not in by]

    finished = runs["status"] == "FINISHED"
    if not finished.any():
        raise ReportError(f"sweep {sweep_name!r} has no finished runs ({len(runs)} runs: "
                          f"{', '.join(sorted(set(runs['status'])))}); nothing to report")
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

    summary = _summary(data, by)
    ref = _reference(reference, by, summary)
    gaps = _gaps(data, by, pair_keys, ref, summary, bootstrap=ci == "bootstrap")

    from tlsweep import figures  # imports matplotlib: not needed until the data has checked out

    out_dir = Path(out) if out is not None else Path("reports") / sweep_name.replace(os.sep, "_")
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.p[dn][fg]"):  # a figure this sweep no longer supports must not linger
        if stale.stem in figures.NAMES:
            stale.unlink()
    summary.to_csv(out_dir / "summary.csv", index=False)
    gaps.to_csv(out_dir / "gaps.csv", index=False)
    runs_out = pd.concat([runs[["run_name", "status"]], params[by + pair_keys],
                          runs[metric].rename(metric)], axis=1).assign(used=used)
    runs_out.rename_axis("run_id").to_csv(out_dir / "runs.csv")

    notes = _notes(metric, ref, ci, failed, pair_keys)
    title = f"**{sweep_name}** ({parent.info.run_id}): {metric}, {int(used.sum())} of {len(runs)} runs"
    markdown = _markdown(title, summary, gaps, by, metric, ref, ci, notes, failed)
    (out_dir / "summary.md").write_text(markdown)
    (out_dir / "summary.tex").write_text(_latex(summary, gaps, by, metric, ref, notes, sweep_name))
    files = [out_dir / f for f in ("summary.csv", "gaps.csv", "runs.csv", "summary.md", "summary.tex")]

    history = _history(client, data.index, "val_acc")
    files += figures.make_all(out_dir, data, summary, history, by, metric, _is_fraction(metric))
    return Report(summary=summary, gaps=gaps, out_dir=out_dir, failed=failed,
                  parent_run_id=parent.info.run_id, sweep_name=sweep_name, metric=metric, by=by,
                  markdown=markdown, files=files)


# ---- reading the store -------------------------------------------------------------------------

def _open_store(uri: str, experiment: str):
    """Client and experiment id; refuses to create a store that is not there."""
    path = _local_path(uri)
    if path is not None and not path.exists():
        raise ReportError(f"no MLflow store at {path} (tracking URI {uri}): the file does not exist. "
                          "Pass tracking_uri=<uri> or set MLFLOW_TRACKING_URI, or run a sweep first.")
    if path is not None and path.is_file() and path.stat().st_size == 0:
        raise ReportError(f"the MLflow store {path} is an empty file; run a sweep first")
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
    except MlflowException as e:
        raise ReportError(f"cannot read the MLflow store {uri}: {e.message}") from e
    if exp is None:
        raise ReportError(f"the MLflow store {uri} has no experiment {experiment!r}: it holds no sweeps. "
                          "Run a sweep first, or pass tracking_uri=/experiment= for another store.")
    return client, exp.experiment_id


def _local_path(uri: str) -> Path | None:
    """The file or folder a local tracking URI points to (None for servers and in-memory SQLite)."""
    if uri.startswith("sqlite:///"):
        rest = uri[len("sqlite:///"):].split("?")[0]  # sqlite:////abs/x.db keeps the leading "/"
        return Path(rest) if rest and rest != ":memory:" else None
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(parsed.path)
    if parsed.scheme == "" or re.fullmatch(r"[a-zA-Z]", parsed.scheme):  # a bare path (or C:\ on Windows)
        return Path(uri)
    return None


def _search(client, exp_id: str, filter_string: str, max_results: int | None = None) -> list:
    """Every active run matching `filter_string` (or the first `max_results`), oldest first, across result pages."""
    runs, token = [], None
    while True:
        page = client.search_runs([exp_id], filter_string=filter_string, order_by=["attributes.start_time ASC"],
                                  max_results=min(1000, max_results or 1000), page_token=token)
        runs += list(page)
        token = page.token
        if not token or (max_results and len(runs) >= max_results):
            return runs


def _children(client, exp_id: str, parent_id: str, max_results: int | None = None) -> list:
    return _search(client, exp_id, f"tags.mlflow.parentRunId = '{parent_id}'", max_results)


def _find_parent(client, exp_id: str, sweep: str | None, uri: str):
    """The parent run whose id or name is `sweep`; None picks the latest sweep with children.

    Only sweeps' parent runs and one sweep's children are read, never every run in the store.
    """
    from mlflow.exceptions import MlflowException

    if sweep is not None:  # a run id: any parent run of this experiment, tlsweep's or not
        try:
            run = client.get_run(str(sweep))
            if run.info.lifecycle_stage == "active" and run.info.experiment_id == exp_id:
                return run
        except MlflowException:
            pass  # not a run id: a name
    parents = _search(client, exp_id, "tags.`tlsweep.role` = 'sweep'")[::-1]  # latest first
    if sweep is None:
        for run in parents:
            if _children(client, exp_id, run.info.run_id, max_results=1):
                return run
        raise ReportError(f"the MLflow store {uri} holds no sweep (no sweep run has child runs); "
                          "run a multirun (-m) first")
    sweep = str(sweep)
    matches = [r for r in parents if sweep in (r.info.run_name, r.data.tags.get("tlsweep.sweep_name"))]
    if not matches:
        known = ", ".join(f"{r.info.run_name} ({r.info.run_id})" for r in parents[:10]) or "none"
        raise ReportError(f"no sweep {sweep!r} in {uri}: pass a parent run id or name. "
                          f"Latest sweeps: {known}")
    if len(matches) > 1:
        log.warning("%d sweeps are named %r; using the latest, %s", len(matches), sweep, matches[0].info.run_id)
    return matches[0]


def _tables(found: list) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs: name, status, error and final metrics; params as logged, strings), indexed by run id."""
    rows = [{"run_name": r.info.run_name, "status": r.info.status, "start_time": r.info.start_time,
             "error": r.data.tags.get("tlsweep.error", ""), **r.data.metrics} for r in found]
    index = pd.Index([r.info.run_id for r in found], name="run_id")
    params = pd.DataFrame([r.data.params for r in found], index=index, dtype=object)
    return pd.DataFrame(rows, index=index), params


def _history(client, run_ids, key: str) -> pd.DataFrame:
    """Long table run_id, step, value of one metric's history (empty when not logged)."""
    rows = [(rid, m.step, m.value) for rid in run_ids for m in client.get_metric_history(rid, key)]
    return pd.DataFrame(rows, columns=["run_id", "step", "value"])


# ---- groups and statistics --------------------------------------------------------------------

def _is_seed(key: str) -> bool:
    return key.rsplit(".", 1)[-1].endswith("seed")


def _is_per_run(key: str) -> bool:
    return _is_seed(key) or key.rsplit(".", 1)[-1] in PER_RUN_LAST or key.startswith(PER_RUN_PREFIXES)


def _design_keys(params: pd.DataFrame) -> list[str]:
    """Params that vary across the sweep's children, except per-run keys and keys that another one
    determines (strategy.backbone_lr_scale follows strategy.name). `strategy.name` first, then by name.
    """
    # Unset values are ignored: a job that crashed before logging its params varies nothing.
    varying = [k for k in params.columns if not _is_per_run(k) and params[k].nunique() > 1]
    varying.sort(key=lambda k: (k != STRATEGY_KEY, not k.endswith(".name"), k))  # a choice beats its details
    kept: list[str] = []
    for k in varying:
        if not any((params.groupby(j)[k].nunique() <= 1).all() for j in kept):
            kept.append(k)
    return sorted(kept, key=lambda k: (k != STRATEGY_KEY, k))


def _resolve_keys(keys: list[str], params: pd.DataFrame) -> list[str]:
    """Param names as logged; "strategy" is short for "strategy.name", "lr" for the one "*.lr"."""
    resolved = []
    for key in map(str, keys):
        if key in params.columns:
            resolved.append(key)
        elif f"{key}.name" in params.columns:
            resolved.append(f"{key}.name")
        elif len(hits := [k for k in params.columns if k.endswith("." + key)]) == 1:
            resolved.append(hits[0])
        else:
            raise ReportError(f"no run of the sweep has a param {key!r}; "
                              f"params that vary: {', '.join(_design_keys(params)) or 'none'}; "
                              f"all params: {', '.join(params.columns)}")
    return list(dict.fromkeys(resolved))


def as_number(value) -> float | None:
    """The float a logged param string stands for, or None ("None", "adamw")."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _sort_key(key: str, value: str) -> tuple:
    """Strategies in ladder order, numbers numerically ("3e-4" < "0.01"), then text ("None" last)."""
    if key == STRATEGY_KEY and value in LADDER:
        return (0, LADDER.index(value), "")
    x = as_number(value)
    return (1, x, "") if x is not None and math.isfinite(x) else (2, 0.0, str(value))


def _t_interval(x: np.ndarray) -> tuple[float, float, float, float]:
    """(std, sem, low, high) of the mean from Student's t; NaN when n < 2."""
    n = len(x)
    if n < 2:
        return (math.nan,) * 4
    std = float(np.std(x, ddof=1))
    sem = std / math.sqrt(n)
    half = float(stats.t.ppf(0.975, n - 1)) * sem
    mean = float(np.mean(x))
    return std, sem, mean - half, mean + half


def _summary(data: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    rows = []
    for group, part in _groups(data, by):
        x = part["value"].to_numpy()
        std, sem, low, high = _t_interval(x)
        rows.append({**dict(zip(by, group)), "n": len(x), "mean": float(x.mean()), "std": std, "sem": sem,
                     "ci95_low": low, "ci95_high": high, "min": float(x.min()), "max": float(x.max())})
    return pd.DataFrame(rows, columns=by + STAT_COLUMNS)


def _groups(data: pd.DataFrame, by: list[str]):
    """(values tuple, rows) per group, in report order."""
    if not by:
        return [((), data)]
    groups = [((g,) if not isinstance(g, tuple) else g, part) for g, part in data.groupby(by, sort=False)]
    return sorted(groups, key=lambda gp: [_sort_key(k, v) for k, v in zip(by, gp[0])])


def _reference(reference: str | None, by: list[str], summary: pd.DataFrame) -> dict[str, str]:
    """The values that define each group's reference: {key: value} over some `by` keys."""
    if not by:
        return {}
    values = {k: set(summary[k]) for k in by}
    if reference is None:
        if STRATEGY_KEY in by:
            strategy = "scratch" if "scratch" in values[STRATEGY_KEY] else summary[STRATEGY_KEY].iloc[0]
            return {STRATEGY_KEY: strategy}
        return dict(zip(by, summary[by].iloc[0]))
    key, sep, value = str(reference).partition("=")
    if sep:
        try:
            key = _resolve_keys([key], pd.DataFrame(columns=by))[0]
        except ReportError:
            raise ReportError(f"reference={reference!r}: {key!r} is not a grouping key; "
                              f"grouping keys: {', '.join(by)}") from None
        if value not in values[key]:
            raise ReportError(f"reference={reference!r}: no finished run has {key}={value}; "
                              f"values: {', '.join(sorted(values[key]))}")
        return {key: value}
    value = key
    keys = [k for k in by if value in values[k]]
    if len(keys) != 1:
        raise ReportError(f"reference={reference!r} matches {len(keys)} grouping keys; write key=value "
                          f"(quoted for Hydra: 'reference=\"strategy.name=scratch\"')")
    return {keys[0]: value}


def _gaps(data: pd.DataFrame, by: list[str], pair_keys: list[str], ref: dict[str, str],
          summary: pd.DataFrame, bootstrap: bool) -> pd.DataFrame:
    columns = by + GAP_COLUMNS + (BOOT_COLUMNS if bootstrap else [])
    if not by:
        return pd.DataFrame(columns=columns)
    label = ",".join(f"{k}={v}" for k, v in ref.items())
    groups = dict(_groups(data, by))
    rows = []
    for group in map(tuple, summary[by].itertuples(index=False)):
        ref_group = tuple(ref.get(k, v) for k, v in zip(by, group))
        if ref_group == group:
            continue
        row = {**dict(zip(by, group)), "reference": label, "n_pairs": 0, "mean_diff": math.nan,
               "ci95_low": math.nan, "ci95_high": math.nan, "p_value": math.nan}
        if bootstrap:
            row |= {"boot_ci95_low": math.nan, "boot_ci95_high": math.nan}
        if ref_group in groups and pair_keys:
            paired = pd.concat([_by_pair(groups[group], pair_keys, group),
                                _by_pair(groups[ref_group], pair_keys, ref_group)], axis=1, join="inner")
            x, r = paired.iloc[:, 0].to_numpy(), paired.iloc[:, 1].to_numpy()
            d = x - r
            row["n_pairs"] = len(d)
            if len(d):
                row["mean_diff"] = float(d.mean())
                _, _, row["ci95_low"], row["ci95_high"] = _t_interval(d)
            if len(d) > 1:
                with warnings.catch_warnings():  # identical differences: scipy warns, returns p=0 or NaN
                    warnings.simplefilter("ignore", RuntimeWarning)
                    row["p_value"] = float(stats.ttest_rel(x, r).pvalue)
                if bootstrap:
                    row["boot_ci95_low"], row["boot_ci95_high"] = _bootstrap(d)
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def _by_pair(part: pd.DataFrame, pair_keys: list[str], group: tuple) -> pd.Series:
    values = part.groupby(pair_keys)["value"]
    if (values.size() > 1).any():
        log.warning("group %s has several runs per %s; averaging them", group, pair_keys)
    return values.mean()


def _bootstrap(d: np.ndarray) -> tuple[float, float]:
    """Percentile bootstrap 95% CI of the mean (Efron & Tibshirani), fixed seed per row."""
    rng = np.random.default_rng(BOOT_SEED)
    means = d[rng.integers(0, len(d), size=(N_BOOT, len(d)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


# ---- tables for humans -----------------------------------------------------------------------

def _is_fraction(metric: str) -> bool:
    return "acc" in metric


def _lower_is_better(metric: str) -> bool:
    return any(w in metric for w in ("loss", "err", "seconds", "time"))


def _fmt(x: float, fraction: bool, signed: bool = False) -> str:
    if fraction:
        return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"
    return f"{x:+.4g}" if signed else f"{x:.4g}"


def _cells(summary, gaps, by, metric, ref, ci, bold) -> tuple[list[str], list[list[str]]]:
    """Header and rows shared by the Markdown and LaTeX tables; `bold` wraps a string."""
    frac = _is_fraction(metric)
    unit = " (%)" if frac else ""
    best = summary["mean"].map(lambda m: _fmt(m, frac))
    target = best[summary["mean"].idxmin() if _lower_is_better(metric) else summary["mean"].idxmax()]
    ref_label = ref.get(STRATEGY_KEY) if list(ref) == [STRATEGY_KEY] else ", ".join(f"{k}={v}" for k, v in ref.items())
    header = (by or ["group"]) + ["n", f"{metric}{unit}"]
    if by:
        header += [f"Δ vs {ref_label}" + (" (pp)" if frac else ""), "p"]
        if ci == "bootstrap":
            header += ["Δ bootstrap 95% CI"]
    gap_rows = {tuple(r[by]): r for _, r in gaps.iterrows()} if by else {}
    rows = []
    for i, s in summary.iterrows():
        mean = bold(best[i]) if best[i] == target else best[i]
        if s["n"] < 2:
            cell = f"{mean} (n=1, no CI)"
        else:
            cell = f"{mean} ± {_fmt(s['ci95_high'] - s['mean'], frac)}"
        row = [str(s[k]) for k in by] or ["all"]
        row += [str(int(s["n"])), cell]
        if by:
            g = gap_rows.get(tuple(s[by]))
            if g is None:
                row += ["reference", ""]
            elif g["n_pairs"] == 0:
                row += ["no pairs", ""]
            else:
                diff = _fmt(g["mean_diff"], frac, signed=True)
                if g["n_pairs"] < 2:
                    row += [f"{diff} (1 pair, no CI)", ""]
                else:
                    row += [f"{diff} [{_fmt(g['ci95_low'], frac, True)}, {_fmt(g['ci95_high'], frac, True)}]",
                            _fmt_p(g["p_value"])]
            if ci == "bootstrap":
                row += [f"[{_fmt(g['boot_ci95_low'], frac, True)}, {_fmt(g['boot_ci95_high'], frac, True)}]"
                        if g is not None and g["n_pairs"] > 1 else ""]
        rows.append(row)
    return header, rows


def _fmt_p(p: float) -> str:
    if math.isnan(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _notes(metric: str, ref: dict, ci: str, failed: list[dict], pair_keys: list[str]) -> list[str]:
    """The method, in sentences both tables carry."""
    notes = [f"Mean ± 95% CI half-width of {metric} over seeds (Student's t, n-1 dof)"
             + (", in %." if _is_fraction(metric) else ".") + " n=1: no interval."]
    if ref:
        ref_label = ", ".join(f"{k}={v}" for k, v in ref.items())
        notes.append(f"Δ: mean paired difference to the reference ({ref_label}, same values of the other "
                     f"grouping keys), runs paired on {', '.join(pair_keys) or 'nothing (no seed param)'}; "
                     "95% t-interval and paired t-test p-value over the pairs"
                     + (" (pp = percentage points)." if _is_fraction(metric) else "."))
    if ci == "bootstrap":
        notes.append(f"Bootstrap: percentile 95% CI of the mean difference, {N_BOOT:,} resamples, seed {BOOT_SEED}.")
    if metric == "best_val_acc":
        notes.append("best_val_acc is the best epoch selected on the same validation set it is scored on, "
                     "so it is biased upward; final_val_acc is not.")
    notes.append("Best mean in bold.")
    if failed:
        notes.append(f"{len(failed)} run(s) left out of the statistics (failed or without the metric).")
    return notes


def _markdown(title, summary, gaps, by, metric, ref, ci, notes, failed) -> str:
    header, rows = _cells(summary, gaps, by, metric, ref, ci, bold=lambda s: f"**{s}**")
    lines = [title, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += [""] + notes
    if failed:
        lines += ["", "Left out:"]
        lines += [f"- {f['run_name']} ({f['run_id']}) {f['status']}: {f['reason'] or 'no error logged'}"
                  for f in failed]
    return "\n".join(lines) + "\n"


def _tex_escape(s: str) -> str:
    return re.sub(r"([_%&#$\{\}])", r"\\\1", s).replace("~", r"\textasciitilde{}").replace("^", r"\^{}")


def _latex(summary, gaps, by, metric, ref, notes, sweep_name) -> str:
    header, rows = _cells(summary, gaps, by, metric, ref, "t", bold=lambda s: f"@B{s}@E")

    def cell(s: str) -> str:  # escape first, then swap in the LaTeX that must stay unescaped
        s = _tex_escape(s).replace("±", r"$\pm$").replace("Δ", r"$\Delta$")
        return s.replace("@B", r"\textbf{").replace("@E", "}")

    n_key = len(by) or 1
    caption = " ".join(cell(n) for n in notes)
    label = re.sub(r"[^A-Za-z0-9:-]", "-", sweep_name)
    lines = [r"% needs \usepackage{booktabs}", r"\begin{table}[t]", r"\centering",
             rf"\caption{{{caption}}}", rf"\label{{tab:{label}}}",
             r"\begin{tabular}{" + "l" * n_key + "r" * (len(header) - n_key) + "}", r"\toprule",
             " & ".join(cell(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(cell(c) for c in r) + r" \\" for r in rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


# ---- command line ----------------------------------------------------------------------------

@hydra.main(version_base=None, config_path="../conf", config_name="report")
def main(cfg: DictConfig) -> None:
    """`python -m tlsweep.report key=value ...`: print the summary table, exit 2 on a ReportError."""
    try:
        report = make_report(**OmegaConf.to_container(cfg, resolve=True))
    except ReportError as e:  # a user error: the message says it all, a traceback would bury it
        print(f"tlsweep.report: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(report.markdown)
    print(f"Report written to {report.out_dir}/")


if __name__ == "__main__":
    main()
