"""Statistics over many tasks: which strategy is better across datasets (or dataset x shots cells).

Input is `frame`: one row per run with the method keys (the grouping keys less the `across` keys,
normally strategy.name), the task keys (`across`) and `value`. A task is one value of the task keys;
its runs are the seeds. Pure numpy/scipy/pandas, no MLflow and no matplotlib: across_tables writes the
CSVs and the summary's section, across_figures draws.

Recipes, each named where the report shows it:
- Aggregates with 95% CIs from a stratified bootstrap: each resample draws every task's runs with
  replacement within that task (Agarwal et al., NeurIPS 2021, "Deep RL at the Edge of the Statistical
  Precipice", as rliable). Three conventions, which differ by points on the same numbers: the mean of
  per-task means, the interquartile mean (IQM) of all runs pooled, and for a suite with groups
  (VTAB-1k) the mean of the group means.
- Probability of improvement P(A > B): per task the Mann-Whitney U statistic over n_A n_B (a tie
  counts 1/2), averaged over tasks, with the same bootstrap (as rliable).
- Average ranks of the task means, the Friedman test and the Nemenyi critical difference (Demšar,
  JMLR 2006, as autorank), and pairwise Wilcoxon signed-rank tests on the task means, Holm-adjusted.
- Performance profiles: the fraction of runs, all tasks pooled, that score above each threshold.
rliable and autorank are not imported at run time; docs/reports.md says why, and tests/test_across.py
checks these numbers against hand computations and, where it is installed, against autorank.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from pathlib import PurePath

import numpy as np
import pandas as pd
from scipy import stats as sps

from tlsweep.config.errors import ReportError
from tlsweep.config.keys import short_labels
from tlsweep.report import stats

# VTAB-1k's 19 tasks by their usual folder names (cifar is CIFAR-100), in its three groups
# (Zhai et al. 2019, "A Large-scale Study of Representation Learning with the Visual Task Adaptation Benchmark")
VTAB1K_GROUPS = {
    **dict.fromkeys(("caltech101", "cifar", "dtd", "oxford_flowers102", "oxford_iiit_pet", "svhn", "sun397"),
                    "natural"),
    **dict.fromkeys(("patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy"), "specialized"),
    **dict.fromkeys(("clevr_count", "clevr_dist", "dmlab", "kitti", "dsprites_loc", "dsprites_ori",
                     "smallnorb_azi", "smallnorb_ele"), "structured"),
}
# raw name (the CSVs' `convention` column) -> what tables and figures call it
CONVENTIONS = {"mean_of_task_means": "mean of task means", "iqm_of_runs": "IQM of runs",
               "mean_of_group_means": "mean of group means"}
MIN_TASKS = 5  # the floor of Demšar's procedure in autorank; fewer tasks: no Friedman test, no CD diagram
MIN_METHODS = 3  # scipy's friedmanchisquare needs three (two: the probability of improvement says it)
ALPHA = 0.05
N_BOOT = 2_000
BOOT_SEED = 0
N_TAUS = 101

AGGREGATE_COLUMNS = ["convention", "estimate", "ci95_low", "ci95_high", "n_tasks", "n_runs"]
IMPROVEMENT_COLUMNS = ["a", "b", "p_improvement", "ci95_low", "ci95_high", "n_tasks", "wilcoxon_p",
                       "wilcoxon_p_holm"]
RANK_COLUMNS = ["mean_rank", "mean_of_task_means", "n_tasks", "friedman_chi2", "friedman_p", "cd", "alpha"]
PROFILE_COLUMNS = ["tau", "fraction", "ci95_low", "ci95_high"]


@dataclass
class Across:
    """What `analyse` found; `across_tables.write` turns the tables into across_*.csv."""

    keys: list[str]         # the task keys (`across`)
    method_keys: list[str]  # the grouping keys less the task keys
    methods: list[str]      # each method's name ("finetune", or "finetune, lr=0.001"), in report order
    tasks: list[str]        # the tasks every method ran, as labels ("caltech101", "caltech101, shots=10")
    dropped: list[str]      # tasks left out: some method has no run there
    groups: dict[str, str] | None  # task label -> group, when the suite has groups
    aggregates: pd.DataFrame
    improvement: pd.DataFrame
    ranks: pd.DataFrame
    profiles: pd.DataFrame
    friedman_chi2: float = math.nan
    friedman_p: float = math.nan
    cd: float = math.nan
    cliques: list[list[str]] = field(default_factory=list)  # methods Nemenyi cannot tell apart
    no_cd: str = ""  # why there is no Friedman test or CD diagram ("" when there is)
    higher_is_better: bool = True
    reps: int = N_BOOT
    seed: int = BOOT_SEED


def iqm(x) -> float:
    """Interquartile mean: the mean of the middle 50% (scipy's trim_mean, a quarter cut at each end)."""
    return float(sps.trim_mean(np.asarray(x, dtype=float), 0.25))


def conventions(cells: list[np.ndarray], groups: list[str] | None = None) -> dict[str, np.ndarray]:
    """Each convention over tasks given as (rows, runs of the task) arrays: one value per row.

    A row is the data itself (one row) or one bootstrap resample; `groups` names each task's group.
    """
    means = np.stack([c.mean(axis=1) for c in cells], axis=1)  # rows x tasks
    out = {"mean_of_task_means": means.mean(axis=1),
           "iqm_of_runs": sps.trim_mean(np.concatenate(cells, axis=1), 0.25, axis=1)}
    if groups is not None:
        labels = np.array(groups)
        out["mean_of_group_means"] = np.mean([means[:, labels == g].mean(axis=1) for g in dict.fromkeys(groups)],
                                             axis=0)
    return out


def resample(cells: list[np.ndarray], reps: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A stratified bootstrap: each task's runs drawn with replacement within that task, (reps, n_t) each.

    A task with one run contributes the same value to every resample.
    """
    return [x[rng.integers(0, len(x), size=(reps, len(x)))] for x in cells]


def _rng(seed: int, *names: str) -> np.random.Generator:
    # seeded by the method's name, not its position: adding a strategy leaves the others' intervals as they were
    return np.random.default_rng([seed, *(zlib.crc32(n.encode()) for n in names)])


def percentile_ci(boot: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(boot, [2.5, 97.5])
    return float(low), float(high)


def improvement(a: list[np.ndarray], b: list[np.ndarray]) -> np.ndarray:
    """P(A > B) per row of (rows, runs) arrays, one pair per task: per task U / (n_A n_B), ties 1/2,
    averaged over tasks (rliable's probability of improvement)."""
    per_task = []
    for x, y in zip(a, b):
        x, y = x[:, :, None], y[:, None, :]
        per_task.append((x > y).mean(axis=(1, 2)) + 0.5 * (x == y).mean(axis=(1, 2)))
    return np.mean(per_task, axis=0)


def probability_of_improvement(a: list, b: list) -> float:
    """P(A > B) from each task's runs of A and of B (lists of 1-D arrays, task by task)."""
    return float(improvement([np.asarray(x, float)[None] for x in a], [np.asarray(y, float)[None] for y in b])[0])


def average_ranks(task_means: pd.DataFrame, higher_is_better: bool = True) -> pd.Series:
    """Mean over tasks (rows) of each method's (column's) rank in its task: 1 is best, ties share the
    average of their ranks."""
    x = task_means.to_numpy(dtype=float)
    return pd.Series(sps.rankdata(-x if higher_is_better else x, axis=1).mean(axis=0), index=task_means.columns)


def friedman(task_means: pd.DataFrame) -> tuple[float, float]:
    """Friedman's chi-square statistic and p-value, methods as columns, tasks as blocks (scipy)."""
    result = sps.friedmanchisquare(*task_means.to_numpy(dtype=float).T)
    return float(result.statistic), float(result.pvalue)


def critical_difference(k: int, n: int, alpha: float = ALPHA) -> float:
    """The Nemenyi test's critical difference of average ranks for k methods on n tasks (Demšar 2006):
    q_alpha * sqrt(k (k + 1) / (6 n)), q_alpha the studentized range quantile (infinite dof) over sqrt(2)."""
    q = sps.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2)
    return float(q * math.sqrt(k * (k + 1) / (6 * n)))


def cliques(ranks: pd.Series, cd: float) -> list[list[str]]:
    """Maximal runs of methods, in rank order, whose mean ranks span less than `cd`: the Nemenyi test
    tells none of them apart (the bars of a CD diagram)."""
    order = ranks.sort_values(kind="stable")
    names, r = list(order.index), order.to_numpy()
    spans: list[tuple[int, int]] = []
    for i in range(len(r)):
        j = i
        while j + 1 < len(r) and r[j + 1] - r[i] < cd:
            j += 1
        if j > i and (not spans or j > spans[-1][1]):  # not inside the previous run
            spans.append((i, j))
    return [names[i:j + 1] for i, j in spans]


def wilcoxon_holm(task_means: pd.DataFrame) -> dict[tuple[str, str], tuple[float, float]]:
    """Each pair of methods: the two-sided Wilcoxon signed-rank p-value over tasks, and Holm's adjustment
    over all pairs (Benavoli et al., JMLR 2016, in place of the Nemenyi test). No spread: NaN."""
    pairs, p = [], []
    for i, a in enumerate(task_means.columns):
        for b in task_means.columns[i + 1:]:
            d = task_means[a].to_numpy(float) - task_means[b].to_numpy(float)
            pairs.append((a, b))
            p.append(math.nan if np.all(d == 0) else float(sps.wilcoxon(d).pvalue))
    return dict(zip(pairs, zip(p, stats.holm(np.array(p)))))


def profile(cells: list[np.ndarray], taus: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """Per row of (rows, runs) arrays, the fraction of all runs (tasks pooled) scoring above each tau."""
    sign = 1.0 if higher_is_better else -1.0
    runs = np.concatenate(cells, axis=1)
    return (sign * runs[:, :, None] > sign * taus[None, None, :]).mean(axis=1)


def _profile_boot(cells: list[np.ndarray], taus: np.ndarray, reps: int, rng, higher_is_better: bool) -> np.ndarray:
    """`profile` over stratified resamples without materialising them: per task, multinomial counts of
    each run times its indicator, so memory is reps x taus whatever the number of runs."""
    sign = 1.0 if higher_is_better else -1.0
    total = np.zeros((reps, len(taus)))
    for x in cells:
        counts = rng.multinomial(len(x), np.full(len(x), 1.0 / len(x)), size=reps)
        total += counts @ (sign * x[:, None] > sign * taus[None, :]).astype(float)
    return total / sum(len(x) for x in cells)


def task_groups(tasks: list[tuple], mapping: dict | None = None) -> list[str] | None:
    """Each task's group: the first of its values, or a path's last part, that `mapping` names.

    No mapping: VTAB-1k's groups when they name every task, else None (no group convention). A mapping
    that misses a task is an error.
    """
    table = VTAB1K_GROUPS if mapping is None else {str(k): str(v) for k, v in mapping.items()}
    names = [[n for v in task for n in (v, PurePath(v).name)] for task in tasks]  # data.root=/vtab/dtd: dtd
    found = [next((table[n] for n in task if n in table), None) for task in names]
    if None not in found:
        return found
    if mapping is None:
        return None
    missing = [", ".join(t) for t, g in zip(tasks, found) if g is None]
    raise ReportError(f"across_groups names no group for task(s) {'; '.join(missing)}; it names: "
                      f"{', '.join(sorted(table)) or 'nothing'}")


def analyse(frame: pd.DataFrame, keys: list[str], method_keys: list[str], groups: dict | None = None,
            higher_is_better: bool = True, reps: int = N_BOOT, seed: int = BOOT_SEED) -> Across:
    """Aggregates, probability of improvement, average ranks and profiles of the methods across tasks.

    `groups` maps a task (a value of a task key, e.g. a data.name) to its group; None: VTAB-1k's groups
    when every task is one of its 19. Tasks where some method has no run are left out (and listed).
    """
    methods = stats.groups(frame, method_keys)
    if len(methods) < 2:
        raise ReportError(f"across={keys}: only one method to compare ({', '.join(method_keys) or 'no grouping key'}"
                          " left after the across keys); group by another key too, e.g. by=[strategy.name]")
    names = [stats._candidate(method_keys, values) for values, _ in methods]
    found = [task for task, _ in stats.groups(frame, keys)]
    cells = {name: {task: part["value"].to_numpy(dtype=float) for task, part in stats.groups(runs, keys)}
             for name, (_, runs) in zip(names, methods)}
    tasks = [t for t in found if all(t in cells[n] for n in names)]
    task_label = {t: ", ".join(short_labels(list(zip(keys, t)))) for t in found}
    dropped = [f"{task_label[t]} (no run of {', '.join(n for n in names if t not in cells[n])})"
               for t in found if t not in tasks]
    if len(tasks) < 2:
        raise ReportError(f"across={keys}: {len(found)} task(s) ({', '.join(task_label.values())}) and "
                          f"{len(tasks)} that every method ran; a comparison across tasks needs two or more"
                          + (f". Left out: {'; '.join(dropped)}" if dropped else ""))
    group_of = task_groups(tasks, groups)
    data = {n: [cells[n][t] for t in tasks] for n in names}
    keyed = {n: dict(zip(method_keys, values)) for n, (values, _) in zip(names, methods)}
    task_means = pd.DataFrame({n: [x.mean() for x in data[n]] for n in names})
    labels = [task_label[t] for t in tasks]
    if len(tasks) < MIN_TASKS:
        no_cd = (f"{len(tasks)} tasks: the Friedman test and the critical-difference diagram need at least "
                 f"{MIN_TASKS} (Demšar 2006; autorank refuses fewer); the ranks above are descriptive only.")
    elif len(names) < MIN_METHODS:
        no_cd = (f"{len(names)} methods: the Friedman test needs at least {MIN_METHODS}; "
                 "the probability of improvement compares the two.")
    else:
        no_cd = ""
    chi2, p = friedman(task_means) if not no_cd else (math.nan, math.nan)
    cd = critical_difference(len(names), len(tasks)) if not no_cd else math.nan
    mean_ranks = average_ranks(task_means, higher_is_better)
    return Across(keys=keys, method_keys=method_keys, methods=names, tasks=labels, dropped=dropped,
                  groups=dict(zip(labels, group_of)) if group_of else None,
                  aggregates=_aggregates(data, keyed, method_keys, group_of, reps, seed),
                  improvement=_improvement(data, task_means, higher_is_better, reps, seed,
                                           tested=len(tasks) >= MIN_TASKS),
                  ranks=pd.DataFrame([{**keyed[n], "mean_rank": float(mean_ranks[n]),
                                       "mean_of_task_means": float(task_means[n].mean()), "n_tasks": len(tasks),
                                       "friedman_chi2": chi2, "friedman_p": p, "cd": cd, "alpha": ALPHA}
                                      for n in names], columns=method_keys + RANK_COLUMNS),
                  profiles=_profiles(data, keyed, method_keys, higher_is_better, reps, seed),
                  friedman_chi2=chi2, friedman_p=p, cd=cd, cliques=cliques(mean_ranks, cd) if not no_cd else [],
                  no_cd=no_cd, higher_is_better=higher_is_better, reps=reps, seed=seed)


def _aggregates(data: dict, keyed: dict, method_keys: list[str], group_of: list[str] | None, reps: int,
                seed: int) -> pd.DataFrame:
    rows = []
    for n, cells in data.items():
        point = conventions([x[None] for x in cells], group_of)
        boot = conventions(resample(cells, reps, _rng(seed, n)), group_of)
        for conv, estimate in point.items():
            low, high = percentile_ci(boot[conv])
            rows.append({**keyed[n], "convention": conv, "estimate": float(estimate[0]), "ci95_low": low,
                         "ci95_high": high, "n_tasks": len(cells), "n_runs": sum(map(len, cells))})
    return pd.DataFrame(rows, columns=method_keys + AGGREGATE_COLUMNS)


def _improvement(data: dict, task_means: pd.DataFrame, higher_is_better: bool, reps: int, seed: int,
                 tested: bool) -> pd.DataFrame:
    sign = 1.0 if higher_is_better else -1.0  # "A > B": A better, whichever way the metric points
    signed = {n: [sign * x for x in cells] for n, cells in data.items()}
    wilcoxon = wilcoxon_holm(task_means) if tested else {}
    names, rows = list(data), []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            point = float(improvement([x[None] for x in signed[a]], [y[None] for y in signed[b]])[0])
            rng = _rng(seed, a, b)
            low, high = percentile_ci(improvement(resample(signed[a], reps, rng), resample(signed[b], reps, rng)))
            p, p_holm = wilcoxon.get((a, b), (math.nan, math.nan))
            common = {"n_tasks": len(task_means), "wilcoxon_p": p, "wilcoxon_p_holm": p_holm}
            # P(B > A) = 1 - P(A > B) in every resample: the reverse pair is the mirror image
            rows.append({"a": a, "b": b, "p_improvement": point, "ci95_low": low, "ci95_high": high, **common})
            rows.append({"a": b, "b": a, "p_improvement": 1 - point, "ci95_low": 1 - high, "ci95_high": 1 - low,
                         **common})
    return pd.DataFrame(rows, columns=IMPROVEMENT_COLUMNS)


def _profiles(data: dict, keyed: dict, method_keys: list[str], higher_is_better: bool, reps: int,
              seed: int) -> pd.DataFrame:
    every = np.concatenate([x for cells in data.values() for x in cells])
    taus = np.linspace(every.min(), every.max(), N_TAUS)  # one grid for every method: the curves compare
    parts = []
    for n, cells in data.items():
        point = profile([x[None] for x in cells], taus, higher_is_better)[0]
        boot = _profile_boot(cells, taus, reps, _rng(seed, n, "profile"), higher_is_better)
        low, high = np.percentile(boot, [2.5, 97.5], axis=0)
        parts.append(pd.DataFrame({**keyed[n], "tau": taus, "fraction": point, "ci95_low": low, "ci95_high": high}))
    return pd.concat(parts, ignore_index=True)[method_keys + PROFILE_COLUMNS]
