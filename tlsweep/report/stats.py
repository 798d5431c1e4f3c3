"""The report's statistics, from a plain table of runs: per-group t-intervals, paired gaps, bootstrap.

Input is `data`: one row per run, the `by` and pair-key columns (param values as logged, strings)
and `value`, the metric. Pure pandas/numpy/scipy: no store needed to check a number.
"""
from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
# t quantiles and tails: scipy.stats's import would come with every report (docs/speed.md, Fixed cost)
from scipy import special

from tlsweep.config.errors import ReportError
from tlsweep.config.keys import STRATEGY_KEY, short_labels
from tlsweep.report.columns import UNSET, resolve_keys, sort_key

log = logging.getLogger(__name__)

STAT_COLUMNS = ["n", "mean", "std", "sem", "ci95_low", "ci95_high", "min", "max"]
GAP_COLUMNS = ["reference", "n_pairs", "mean_diff", "ci95_low", "ci95_high", "p_value", "p_holm"]
BOOT_COLUMNS = ["boot_ci95_low", "boot_ci95_high"]
N_BOOT = 10_000
BOOT_SEED = 0


def t_interval(x: np.ndarray) -> tuple[float, float, float, float]:
    """(std, sem, low, high) of the 95% CI of the mean from Student's t, n-1 dof; NaN when n < 2."""
    n = len(x)
    if n < 2:
        return (math.nan,) * 4
    std = float(np.std(x, ddof=1))
    sem = std / math.sqrt(n)
    half = float(special.stdtrit(n - 1, 0.975)) * sem  # scipy.stats.t.ppf(0.975, n - 1) calls the same
    mean = float(np.mean(x))
    return std, sem, mean - half, mean + half


def groups(data: pd.DataFrame, by: list[str]) -> list[tuple[tuple, pd.DataFrame]]:
    """(values tuple, rows) per group, in report order (ladder, then numbers, then text)."""
    if not by:
        return [((), data)]
    found = [((g,) if not isinstance(g, tuple) else g, part) for g, part in data.groupby(by, sort=False)]
    return sorted(found, key=lambda gp: [sort_key(k, v) for k, v in zip(by, gp[0])])


def summary(data: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """One row per group: the `by` values, then STAT_COLUMNS over its runs."""
    rows = []
    for group, part in groups(data, by):
        x = part["value"].to_numpy()
        std, sem, low, high = t_interval(x)
        rows.append({**dict(zip(by, group)), "n": len(x), "mean": float(x.mean()), "std": std, "sem": sem,
                     "ci95_low": low, "ci95_high": high, "min": float(x.min()), "max": float(x.max())})
    return pd.DataFrame(rows, columns=by + STAT_COLUMNS)


def select_best(data: pd.DataFrame, group_keys: list[str], select_keys: list[str],
                higher_is_better: bool = True) -> pd.DataFrame:
    """Per group of `group_keys`, the `select_keys` values whose runs have the best mean `selection`.

    One row per group, in report order: the group and select keys, `selection_mean` and
    `selection_n` (runs averaged). A tie goes to the first candidate in report order.
    """
    sign = 1.0 if higher_is_better else -1.0
    rows = []
    for group, part in groups(data, group_keys):
        best = None
        for values, runs in groups(part, select_keys):
            x = runs["selection"].to_numpy(dtype=float)
            x = x[np.isfinite(x)]
            if len(x) and (best is None or sign * x.mean() > sign * best["selection_mean"]):
                best = {**dict(zip(select_keys, values)), "selection_mean": float(x.mean()), "selection_n": len(x)}
        if best is None:
            raise ReportError(f"no run of group {dict(zip(group_keys, group))} logged a finite selection metric")
        rows.append({**dict(zip(group_keys, group)), **best})
    return pd.DataFrame(rows, columns=group_keys + select_keys + ["selection_mean", "selection_n"])


def reference(reference: str | None, by: list[str], summary: pd.DataFrame) -> dict[str, str]:
    """The values that define each group's reference: {key: value} over some `by` keys.

    None: strategy.name=scratch, else the first group's strategy, else the whole first group.
    """
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
            key = resolve_keys([key], pd.DataFrame(columns=by))[0]
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


def gaps(data: pd.DataFrame, by: list[str], pair_keys: list[str], ref: dict[str, str],
         summary: pd.DataFrame, bootstrap: bool) -> pd.DataFrame:
    """Each group against its reference: the group's values with `ref` swapped in.

    Runs are paired on `pair_keys`; per group the mean paired difference, its 95% t-interval and
    the paired t-test p-value (and a percentile bootstrap CI when `bootstrap`).
    """
    columns = by + GAP_COLUMNS + (BOOT_COLUMNS if bootstrap else [])
    if not by:
        return pd.DataFrame(columns=columns)
    label = ",".join(f"{k}={v}" for k, v in ref.items())
    by_group = dict(groups(data, by))
    # A key the reference never has (scratch has no strategy.probe_epochs: unset in all its runs)
    # matches any value of it: lpft at probe_epochs=3 is compared with scratch, not with nothing.
    is_ref = np.logical_and.reduce([summary[k] == v for k, v in ref.items()]) if ref else np.zeros(len(summary), bool)
    unset_in_ref = {k for k in by if k not in ref and is_ref.any() and set(summary.loc[is_ref, k]) == {UNSET}}
    rows = []
    for group in map(tuple, summary[by].itertuples(index=False)):
        ref_group = tuple(ref.get(k, UNSET if k in unset_in_ref else v) for k, v in zip(by, group))
        if ref_group == group:
            continue
        row = {**dict(zip(by, group)), "reference": label, "n_pairs": 0, "mean_diff": math.nan,
               "ci95_low": math.nan, "ci95_high": math.nan, "p_value": math.nan, "p_holm": math.nan}
        if bootstrap:
            row |= {"boot_ci95_low": math.nan, "boot_ci95_high": math.nan}
        if ref_group in by_group and pair_keys:
            x, r = paired(by_group[group], by_group[ref_group], pair_keys, group)
            d = x - r
            row["n_pairs"] = len(d)
            if len(d):
                row["mean_diff"] = float(d.mean())
                _, _, row["ci95_low"], row["ci95_high"] = t_interval(d)
            if len(d) > 1:
                row["p_value"] = paired_p(x, r)
                if bootstrap:
                    row["boot_ci95_low"], row["boot_ci95_high"] = bootstrap_ci(d)
        rows.append(row)
    table = pd.DataFrame(rows, columns=columns)
    table["p_holm"] = holm(table["p_value"].to_numpy(dtype=float))  # the family: every gap of this table
    return table


def paired_p(x: np.ndarray, r: np.ndarray) -> float:
    """Two-sided paired t-test p-value; NaN when the differences have no spread.

    Accuracy moves in steps of one image, so pairs that all differ by exactly the same count happen
    (three seeds, each 2 of 153 images apart). scipy then returns p=0 from an infinite t: a
    certainty the data cannot give. No spread, no test: the tables say so.
    """
    d = np.asarray(x, dtype=float) - np.asarray(r, dtype=float)
    if len(d) < 2 or np.ptp(d) == 0:
        return math.nan
    t = float(np.mean(d)) / math.sqrt(float(np.var(d, ddof=1)) / len(d))  # scipy.stats.ttest_rel's statistic
    return float(2 * special.stdtr(len(d) - 1, -abs(t)))  # and its two-sided p: 2 * t.sf(|t|)


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979), over the non-NaN entries; NaN stays NaN.

    The i-th smallest of m p-values becomes max over j <= i of min(1, (m - j + 1) * p_(j)): it
    controls the family-wise error rate under any dependence (scipy's false_discovery_control is
    Benjamini-Hochberg, which controls the false discovery rate instead).
    """
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, math.nan)
    finite = np.flatnonzero(~np.isnan(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m = len(order)
    out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return out


def paired(a: pd.DataFrame, b: pd.DataFrame, pair_keys: list[str], group: tuple) -> tuple[np.ndarray, np.ndarray]:
    """The values of runs `a` and `b` that share their `pair_keys` (the seeds), aligned pair by pair."""
    both = pd.concat([_by_pair(a, pair_keys, group), _by_pair(b, pair_keys, group)], axis=1, join="inner")
    return both.iloc[:, 0].to_numpy(), both.iloc[:, 1].to_numpy()


def _by_pair(part: pd.DataFrame, pair_keys: list[str], group: tuple) -> pd.Series:
    values = part.groupby(pair_keys)["value"]
    if (values.size() > 1).any():
        log.warning("group %s has several runs per %s; averaging them", group, pair_keys)
    return values.mean()


def bootstrap_ci(d: np.ndarray) -> tuple[float, float]:
    """Percentile bootstrap 95% CI of the mean (Efron & Tibshirani), fixed seed per row."""
    rng = np.random.default_rng(BOOT_SEED)
    means = d[rng.integers(0, len(d), size=(N_BOOT, len(d)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


DECISION_COLUMNS = ["best", "best_mean", "runner_up", "runner_up_mean", "n_pairs", "mean_diff", "p_value",
                    "p_holm", "significant", "verdict"]
ALPHA = 0.05


def decide(data: pd.DataFrame, cell_keys: list[str], candidate_keys: list[str], pair_keys: list[str],
           higher_is_better: bool = True, alpha: float = ALPHA) -> pd.DataFrame:
    """Per cell of `cell_keys` (e.g. dataset x shots), the candidate (a value of `candidate_keys`,
    e.g. a strategy) with the best mean, and whether it is significantly ahead of the runner-up.

    Best and runner-up are paired on `pair_keys` (the seeds) and compared by a paired t-test; the
    p-values are Holm-adjusted over every cell that has a test (the family: one figure). The verdict
    names the best alone only when its adjusted p is below `alpha` and it is ahead; else "best ≈
    runner-up". A cell with one candidate names it alone; one without two pairs is never significant.
    """
    sign = 1.0 if higher_is_better else -1.0
    rows = []
    for cell, part in groups(data, cell_keys):
        ranked = sorted(groups(part, candidate_keys), key=lambda gp: -sign * gp[1]["value"].mean())
        names = [_candidate(candidate_keys, values) for values, _ in ranked]
        row = {**dict(zip(cell_keys, cell)), "best": names[0], "best_mean": float(ranked[0][1]["value"].mean()),
               "runner_up": "", "runner_up_mean": math.nan, "n_pairs": 0, "mean_diff": math.nan,
               "p_value": math.nan}
        if len(ranked) > 1:
            row |= {"runner_up": names[1], "runner_up_mean": float(ranked[1][1]["value"].mean())}
            x, r = paired(ranked[0][1], ranked[1][1], pair_keys, cell) if pair_keys else ([], [])
            row["n_pairs"] = len(x)
            if len(x):
                row["mean_diff"] = float((x - r).mean())
                row["p_value"] = paired_p(x, r)
        rows.append(row)
    table = pd.DataFrame(rows, columns=cell_keys + DECISION_COLUMNS[:-3])
    table["p_holm"] = holm(table["p_value"].to_numpy(dtype=float))
    ahead = sign * table["mean_diff"].fillna(0.0) > 0  # paired means can disagree with the group means
    table["significant"] = (table["p_holm"] < alpha) & ahead
    table["verdict"] = [r.best if (r.significant or not r.runner_up) else f"{r.best} ≈ {r.runner_up}"
                        for r in table.itertuples()]
    return table


def _candidate(keys: list[str], values: tuple) -> str:
    """A candidate's name: the strategy alone, other keys as key=value ("finetune, lr=0.001")."""
    pairs = [(k, v) for k, v in zip(keys, values) if v != UNSET]
    return (str(pairs[0][1]) if len(keys) == 1 and pairs else ", ".join(short_labels(pairs))) or "all"
