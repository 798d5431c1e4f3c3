"""The tables of the statistics over many tasks: the across_*.csv files and the summary's "Across tasks" section.

`across.analyse` computes; this module only writes what it found, in the report's labels and number format.
"""
from __future__ import annotations

from pathlib import Path

from tlsweep.report import stats, tables
from tlsweep.report.across import ALPHA, CONVENTIONS, MIN_TASKS, VTAB1K_GROUPS, Across
from tlsweep.report.columns import is_fraction, label, metric_label

FILES = ("across_aggregates.csv", "across_improvement.csv", "across_ranks.csv", "across_profiles.csv")


def write(result: Across, out_dir: Path) -> list[Path]:
    """The four tables as CSVs with the raw keys; returns their paths."""
    paths = [Path(out_dir) / f for f in FILES]
    for frame, path in zip((result.aggregates, result.improvement, result.ranks, result.profiles), paths):
        frame.to_csv(path, index=False)
    return paths


def markdown(result: Across, metric: str) -> str:
    """The cross-task section of summary.md: aggregates under each convention, P(A > B), ranks."""
    frac = is_fraction(metric)
    unit = " (%)" if frac else ""
    fmt = lambda x: tables._fmt(x, frac)  # noqa: E731
    name_of = lambda row: stats._candidate(result.method_keys, tuple(row[k] for k in result.method_keys))  # noqa: E731
    what = " x ".join(label(k) for k in result.keys)
    lines = [f"### Across tasks: {what} ({len(result.tasks)} tasks)", "",
             f"Tasks: the values of {', '.join(result.keys)} that every method ran ({_join(result.tasks)}); "
             f"runs: their seeds. Methods: {', '.join(result.method_keys)}; {label(metric)} ({metric})."]
    if result.dropped:
        lines.append(f"Left out: {'; '.join(result.dropped)}.")
    if result.groups:
        order = list(dict.fromkeys(VTAB1K_GROUPS.values()))  # VTAB-1k's groups in its order, others after
        grouped: dict[str, list[str]] = {}
        for task, g in sorted(result.groups.items(), key=lambda tg: (order.index(tg[1]) if tg[1] in order
                                                                      else len(order), tg[1])):
            grouped.setdefault(g, []).append(task)
        lines.append("Groups: " + ", ".join(f"{g} ({_join(ts)})" for g, ts in grouped.items()) + ".")

    convs = list(dict.fromkeys(result.aggregates["convention"]))
    lines += ["", f"Aggregates ({metric_label(metric)}, [stratified bootstrap 95% CI]):", "",
              "| " + " | ".join([" / ".join(label(k) for k in result.method_keys)] +
                                [CONVENTIONS[c] + unit for c in convs]) + " |", "|" + "---|" * (1 + len(convs))]
    table = result.aggregates.assign(method=[name_of(r) for _, r in result.aggregates.iterrows()])
    for n in result.methods:
        part = table[table["method"] == n].set_index("convention")
        lines.append("| " + " | ".join([n] + [f"{fmt(part.loc[c, 'estimate'])} [{fmt(part.loc[c, 'ci95_low'])}, "
                                              f"{fmt(part.loc[c, 'ci95_high'])}]" for c in convs]) + " |")
    notes = [f"Conventions (across_aggregates.csv, column convention): {CONVENTIONS['mean_of_task_means']} "
             "(mean_of_task_means) weighs every task alike; "
             f"{CONVENTIONS['iqm_of_runs']} (iqm_of_runs) is the mean of the middle 50% of all runs pooled "
             "(scipy's trim_mean, 0.25), so a task with more runs weighs more and outliers weigh nothing"]
    if "mean_of_group_means" in convs:
        notes.append(f"{CONVENTIONS['mean_of_group_means']} (mean_of_group_means) weighs every group alike, "
                     "each the mean of its tasks (VTAB-1k's convention)")
    lines += ["", "; ".join(notes) + ". The conventions differ by points on the same runs: compare a number only "
              "with one of the same convention. "
              f"CI: percentile, {result.reps:,} stratified bootstrap resamples (runs drawn within each task), "
              f"seed {result.seed}."]

    lines += ["", "Probability of improvement P(A > B) (per task the Mann-Whitney U / (n_A n_B), ties 1/2, averaged "
              "over tasks; [stratified bootstrap 95% CI]); A is the better of each pair, across_improvement.csv "
              "has both orders:", "",
              "| A | B | P(A > B) | Wilcoxon p (Holm) |", "|---|---|---|---|"]
    for _, r in result.improvement.iterrows():
        if r["p_improvement"] > 0.5 or (r["p_improvement"] == 0.5 and
                                         result.methods.index(r["a"]) < result.methods.index(r["b"])):
            lines.append(f"| {r['a']} | {r['b']} | {r['p_improvement']:.2f} [{r['ci95_low']:.2f}, "
                         f"{r['ci95_high']:.2f}] | {tables._fmt_p(r['wilcoxon_p_holm'])} |")
    lines += ["", "Wilcoxon p (Holm): two-sided signed-rank test on the task means, Holm-adjusted over the "
              f"{len(result.methods) * (len(result.methods) - 1) // 2} pairs"
              + (f" (needs {MIN_TASKS} or more tasks)." if len(result.tasks) < MIN_TASKS else
                 f"; with {len(result.tasks)} tasks no p-value is below {2 / 2 ** len(result.tasks):.3g} before the "
                 "adjustment (every task on one side, exact test).")]

    ranks = result.ranks.assign(method=[name_of(r) for _, r in result.ranks.iterrows()]).sort_values(
        "mean_rank", kind="stable")
    lines += ["", "Average rank of the task means (1 = best, ties share their average rank):", "",
              "| " + " / ".join(label(k) for k in result.method_keys) + f" | mean rank | mean of task means{unit} |",
              "|---|---|---|"]
    lines += [f"| {r['method']} | {r['mean_rank']:.2f} | {fmt(r['mean_of_task_means'])} |" for _, r in ranks.iterrows()]
    lines.append("")
    if result.no_cd:
        lines.append(f"No critical-difference diagram: {result.no_cd}")
    else:
        apart = ", ".join("[" + _join(c) + "]" for c in result.cliques) or "none"
        lines.append(f"Friedman chi² = {result.friedman_chi2:.2f} (k={len(result.methods)} methods, "
                     f"N={len(result.tasks)} tasks), p {_p_text(result.friedman_p)}; Nemenyi critical difference "
                     f"CD = {result.cd:.2f} at {ALPHA} (Demšar 2006; across_cd.pdf). Mean ranks closer than CD are "
                     f"not told apart: {apart}."
                     + ("" if result.friedman_p < ALPHA else " The Friedman test does not reject equal ranks, so no "
                        "pair is shown to differ."))
    lines += ["", "Performance profiles (across_profiles.pdf, across_profiles.csv): per method, the fraction of runs, "
              f"all tasks pooled, with {metric} {'above' if result.higher_is_better else 'below'} each threshold "
              "(raw scores, not normalised per task), with a stratified bootstrap 95% band."]
    return "\n".join(lines) + "\n"


def _p_text(p: float) -> str:
    """"= 0.012", "< 0.001" or "n/a"."""
    text = tables._fmt_p(p)
    return text.replace("<", "< ") if text.startswith("<") else ("= " + text if text != "n/a" else "n/a")


def _join(names: list[str]) -> str:
    """A list for a sentence: "a, b", or "dtd, shots=5; dtd, shots=10" when a name has a comma itself."""
    return ("; " if any("," in n for n in names) else ", ").join(names)
