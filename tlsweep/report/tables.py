"""The summary table for humans: Markdown for the console and MLflow, LaTeX (booktabs) for a paper.

Both come from one set of cells; headers use the readable labels of `keys`, cells the logged values.
"""
from __future__ import annotations

import math
import re

import pandas as pd

from tlsweep.config.keys import SHOTS_KEY, STRATEGY_KEY
from tlsweep.report.columns import is_fraction, label, lower_is_better, metric_label, sort_key
from tlsweep.report.stats import BOOT_SEED, N_BOOT


def _fmt(x: float, fraction: bool, signed: bool = False) -> str:
    if fraction:
        return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"
    return f"{x:+.4g}" if signed else f"{x:.4g}"


def _fmt_p(p: float) -> str:
    if math.isnan(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _ref_label(ref: dict[str, str]) -> str:
    if list(ref) == [STRATEGY_KEY]:
        return ref[STRATEGY_KEY]
    return ", ".join(f"{label(k)}={v}" for k, v in ref.items())


def cells(summary: pd.DataFrame, gaps: pd.DataFrame, by: list[str], metric: str, ref: dict[str, str],
          ci: str, bold) -> tuple[list[str], list[list[str]]]:
    """Header and rows shared by the Markdown and LaTeX tables; `bold` wraps a string."""
    frac = is_fraction(metric)
    best = summary["mean"].map(lambda m: _fmt(m, frac))
    target = best[summary["mean"].idxmin() if lower_is_better(metric) else summary["mean"].idxmax()]
    header = [label(k) for k in by] or ["group"]
    header += ["n", metric_label(metric)]
    if by:
        header += [f"Δ vs {_ref_label(ref)}" + (" (pp)" if frac else ""), "p", "p (Holm)"]
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
        lost = int(s.get("n_diverged", 0))  # runs of the group that diverged: not in n, nor in the mean
        row += [str(int(s["n"])) + (f" (+{lost} diverged)" if lost else ""), cell]
        if by:
            g = gap_rows.get(tuple(s[by]))
            if g is None:
                row += ["reference", "", ""]
            elif g["n_pairs"] == 0:
                row += ["no pairs", "", ""]
            else:
                diff = _fmt(g["mean_diff"], frac, signed=True)
                if g["n_pairs"] < 2:
                    row += [f"{diff} (1 pair, no CI)", "", ""]
                else:
                    # every pair differs by the same amount: a t-test would claim p=0 (stats.paired_p)
                    no_spread = math.isnan(g["p_value"])
                    row += [f"{diff} [{_fmt(g['ci95_low'], frac, True)}, {_fmt(g['ci95_high'], frac, True)}]",
                            "no spread" if no_spread else _fmt_p(g["p_value"]),
                            "" if no_spread else _fmt_p(g["p_holm"])]
            if ci == "bootstrap":
                row += [f"[{_fmt(g['boot_ci95_low'], frac, True)}, {_fmt(g['boot_ci95_high'], frac, True)}]"
                        if g is not None and g["n_pairs"] > 1 else ""]
        rows.append(row)
    return header, rows


def method_notes(metric: str, ref: dict, ci: str, failed: list[dict], pair_keys: list[str],
                 n_gaps: int = 0, n_flat: int = 0, n_diverged: int = 0) -> list[str]:
    """The method, in sentences both tables carry; raw keys in parentheses match the CSVs."""
    frac = is_fraction(metric)
    out = [f"Mean ± 95% CI half-width of {label(metric)} ({metric}) over seeds (Student's t, n-1 dof)"
           + (", in %." if frac else ".") + " n=1: no interval."]
    if ref:
        ref_text = ", ".join(f"{k}={v}" for k, v in ref.items())
        out.append(f"Δ: mean paired difference to the reference ({ref_text}, same values of the other "
                   f"grouping keys), runs paired on {', '.join(pair_keys) or 'nothing (no seed param)'}; "
                   "95% t-interval and paired t-test p-value over the pairs"
                   + (" (pp = percentage points)" if frac else "")
                   + f"; p (Holm, p_holm): Holm-adjusted over the {n_gaps} gap(s) of this table.")
        if n_flat:
            out.append(f"\"no spread\" ({n_flat} gap(s)): every pair differs by exactly the same amount, so there "
                       "is no variance to test against (a t-test would give p=0); no p-value is claimed.")
    if ci == "bootstrap":
        out.append(f"Bootstrap: percentile 95% CI of the mean difference, {N_BOOT:,} resamples, seed {BOOT_SEED}.")
    if metric == "best_val_acc":
        out.append("best_val_acc is the best epoch selected on the same validation set it is scored on, "
                   "so it is biased upward; final_val_acc is not.")
    out.append("Best mean in bold.")
    if failed:
        out.append(f"{len(failed)} run(s) left out of the statistics (failed or without the metric).")
    if n_diverged:
        out.append(f"{n_diverged} run(s) diverged (a NaN or infinite loss): left out of the statistics, not "
                   "averaged in; a group's n says how many of its runs diverged; listed under Diverged.")
    return out


def decision_note(choice: pd.DataFrame, metric: str) -> str:
    tested = int(choice["p_value"].notna().sum())
    return (f"Decision (decision.csv, decision.pdf): per cell the best mean {label(metric)}; \"A ≈ B\" when A is not "
            "significantly ahead of the runner-up B (paired t-test on the seeds, Holm-adjusted over the "
            f"{tested} cell(s) with a test, 0.05). Best and runner-up are ranked on the same runs that are tested, "
            "which makes the test somewhat optimistic, more so with many candidates.")


def decision_markdown(choice: pd.DataFrame, row_key: str | None, metric: str, rows_label: str = "") -> str:
    """The decision grid as a Markdown table: rows datasets, columns shots, cells the verdict."""
    frac = is_fraction(metric)
    cols = sorted(dict.fromkeys(choice[SHOTS_KEY]), key=lambda v: sort_key(SHOTS_KEY, v))
    header = [label(row_key) if row_key else "dataset"] + [f"{'all' if c == 'None' else c} shots" for c in cols]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row, part in (choice.groupby(row_key, sort=False) if row_key else [(rows_label or "all", choice)]):
        verdicts = {r[SHOTS_KEY]: f"{r['verdict']} ({_fmt(r['best_mean'], frac)}"
                    + (f", p (Holm) {_fmt_p(r['p_holm'])})" if r["runner_up"] else ")")
                    for _, r in part.iterrows()}
        lines.append("| " + " | ".join([str(row)] + [verdicts.get(c, "") for c in cols]) + " |")
    return "Best strategy by mean:\n\n" + "\n".join(lines) + "\n"


def markdown(title: str, summary, gaps, by, metric, ref, ci, notes: list[str], failed: list[dict],
             diverged: list[dict] = ()) -> str:
    header, rows = cells(summary, gaps, by, metric, ref, ci, bold=lambda s: f"**{s}**")
    lines = [title, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += [""] + notes
    if diverged:
        lines += ["", "Diverged:"]
        lines += [f"- {d['run_name']} ({d['run_id']}): {d['how']}" for d in diverged]
    if failed:
        lines += ["", "Left out:"]
        lines += [f"- {f['run_name']} ({f['run_id']}) {f['status']}: {f['reason'] or 'no error logged'}"
                  for f in failed]
    return "\n".join(lines) + "\n"


def _tex_escape(s: str) -> str:
    return re.sub(r"([_%&#$\{\}])", r"\\\1", s).replace("~", r"\textasciitilde{}").replace("^", r"\^{}")


def latex(summary, gaps, by, metric, ref, notes: list[str], sweep_name: str) -> str:
    header, rows = cells(summary, gaps, by, metric, ref, "t", bold=lambda s: f"@B{s}@E")

    def cell(s: str) -> str:  # escape first, then swap in the LaTeX that must stay unescaped
        s = _tex_escape(s).replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace("≈", r"$\approx$")
        return s.replace("@B", r"\textbf{").replace("@E", "}")

    n_key = len(by) or 1
    caption = " ".join(cell(n) for n in notes)
    tex_label = re.sub(r"[^A-Za-z0-9:-]", "-", sweep_name)
    lines = [r"% needs \usepackage{booktabs}", r"\begin{table}[t]", r"\centering",
             rf"\caption{{{caption}}}", rf"\label{{tab:{tex_label}}}",
             r"\begin{tabular}{" + "l" * n_key + "r" * (len(header) - n_key) + "}", r"\toprule",
             " & ".join(cell(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(cell(c) for c in r) + r" \\" for r in rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"
