"""The benchmark's rows and tables: each workload's sides against each other and against its bound."""
from __future__ import annotations

import statistics

from benchmarks.bounds import bound_line, finetune_bound_line


def _acc(runs) -> dict:
    v = [r["final_val_acc"] for r in runs]
    if not v:
        return {"mean": None, "std": None, "n": 0, "min": None, "max": None}
    return {"mean": statistics.mean(v), "std": statistics.stdev(v) if len(v) > 1 else None, "n": len(v),
            "min": min(v), "max": max(v)}


def _f(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def summarize(name: str, naive: dict, fast: dict, bound_: dict | None = None) -> dict:
    """One row: tlsweep (one launcher setting) against the naive sweep, and against the bound."""
    row = {"workload": name, "n_jobs": fast.get("n_jobs"), "tlsweep_command": fast["command"]}
    if "error" in fast:
        return {**row, "error": fast["error"]}
    naive_wall = naive["wall_s"] if naive["complete"] else naive.get("wall_s_estimate")

    def epoch(side):
        return statistics.mean(s for r in side["runs"] for s in r["epoch_seconds"])

    by_config = {}
    for s, lr in sorted({(r["strategy"], r["lr"]) for r in fast["runs"]}):
        a = _acc([r for r in naive["runs"] if (r["strategy"], r["lr"]) == (s, lr)])
        b = _acc([r for r in fast["runs"] if (r["strategy"], r["lr"]) == (s, lr)])
        # "within the naive loop's seed spread": tlsweep's mean over seeds inside the naive runs' range
        by_config[f"{s} lr={lr:g}"] = {"naive": a, "tlsweep": b,
                                       "within_naive_range": a["n"] > 0 and a["min"] <= b["mean"] <= a["max"]}
    row.update({
        "naive_wall_s": naive["wall_s"], "naive_complete": naive["complete"],
        "naive_runs": f"{len(naive['runs'])}/{naive['planned']}", "naive_wall_s_full": naive_wall,
        "tlsweep_wall_s": fast["wall_s"], "tlsweep_in_jobs_s": fast["in_jobs_s"],
        "tlsweep_outside_jobs_s": fast["outside_jobs_s"], "tlsweep_job_parts_s": fast["job_parts_s"],
        "tlsweep_fixed_cost_s": fast.get("fixed_cost_s"),
        "speedup_end_to_end": naive_wall / fast["wall_s"] if naive_wall else None,
        "naive_epoch_s": epoch(naive) if naive["runs"] else None, "tlsweep_epoch_s": epoch(fast),
        "naive_acc_mean_std": [_acc(naive["runs"])["mean"], _acc(naive["runs"])["std"]] if naive["runs"] else None,
        "tlsweep_acc_mean_std": [_acc(fast["runs"])["mean"], _acc(fast["runs"])["std"]],
        "acc_by_config": by_config, "tlsweep_feature_cache": fast["features_cache"], "tlsweep_bf16": fast.get("bf16"),
        **_bound_fields(bound_, fast)})
    if naive["runs"]:  # the inverse of the speedups, as tlsweep/bound reads: the smaller the better
        row["tlsweep_over_naive_per_epoch"] = row["tlsweep_epoch_s"] / row["naive_epoch_s"]
    if naive_wall:
        row["tlsweep_over_naive_end_to_end"] = fast["wall_s"] / naive_wall
    speed = (f"{row['speedup_end_to_end']:.1f}x end to end" + ("" if naive["complete"] else
             f" (naive side estimated from {row['naive_runs']} runs)")) if naive_wall else "n/a (too few naive runs)"
    if name == "finetune" and naive["runs"]:  # a probe's epochs on cached features take milliseconds: not here
        speed += (f"; per epoch {row['naive_epoch_s']:.1f} / {row['tlsweep_epoch_s']:.1f} s (tlsweep/naive = "
                  f"{row['tlsweep_over_naive_per_epoch']:.2f}x per epoch)")
    parts = ", ".join(f"{k} {v:.1f}" for k, v in fast["job_parts_s"].items())
    print(f"\n== {name}, tlsweep with {fast['n_jobs'] or 1} job(s) at a time"
          f"\n  naive   : {naive['wall_s']:8.1f} s wall for {row['naive_runs']} runs"
          f"\n  tlsweep : {fast['wall_s']:8.1f} s wall; inside the jobs {fast['in_jobs_s']:.1f} s ({parts})"
          f"\n  speedup : {speed}"
          f"\n  bf16    : tlsweep {', '.join(fast.get('bf16') or ['?'])}; naive fp32 (the tutorial's)"
          f"\n  fixed   : {fixed_line(fast)}"
          + "".join(f"\n  acc {k}: naive {_f(v['naive']['mean'])} (n={v['naive']['n']}, "
                    f"{_f(v['naive']['min'])}..{_f(v['naive']['max'])}), tlsweep {_f(v['tlsweep']['mean'])} "
                    f"(n={v['tlsweep']['n']})" for k, v in by_config.items())
          + (f"\n  {row['bound_line']}" if _measured(bound_) else "")
          + f"\n  command : python {row['tlsweep_command']}", flush=True)
    return row


def fixed_line(fast: dict) -> str:
    """The sweep's fixed cost, as it logged it on its parent run."""
    if fast.get("fixed_cost_s") is None:
        return "not split (jobs overlapped)"
    return (f"{fast['fixed_cost_s']:.1f} s of the {fast['wall_s']:.1f} s wall around the jobs (start-up, imports, "
            "store, Hydra, exit; no report, as the naive side makes none)")


def _measured(b: dict | None) -> bool:
    return bool(b) and "error" not in b


def _bound_fields(b: dict | None, fast: dict) -> dict:
    if not b:
        return {}
    if "error" in b:
        return {"bound": b}
    out = {"bound": b, "bound_s": b["seconds"], "sweep_over_bound": fast["wall_s"] / b["seconds"]}
    if b.get("kind") == "finetune":  # per epoch too: an epoch of the run against an epoch of the bound
        epoch = statistics.mean(s for r in fast["runs"] for s in r["epoch_seconds"])
        return {**out, "epoch_over_bound": epoch / b["per_epoch_s"],
                "bound_line": finetune_bound_line(b, fast["wall_s"], epoch)}
    return {**out, "bound_line": bound_line(b, fast["wall_s"])}


def summarize_uncached(name: str, cached: dict, uncached: dict, bound_: dict | None = None) -> dict:
    """One row: tlsweep with its feature cache against tlsweep without it, and against the bound."""
    row = {"workload": name, "n_jobs": cached.get("n_jobs"), "cached_command": cached["command"],
           "uncached_command": uncached["command"]}
    if "error" in cached or "error" in uncached:
        return {**row, "error": "; ".join(f"{k}: {side['error']}" for k, side in
                                          (("cached", cached), ("uncached", uncached)) if "error" in side)}
    acc = {k: _acc(side["runs"]) for k, side in (("cached", cached), ("uncached", uncached))}
    row.update({
        "cached_wall_s": cached["wall_s"], "uncached_wall_s": uncached["wall_s"],
        "uncached_over_cached": uncached["wall_s"] / cached["wall_s"],
        "cached_in_jobs_s": cached["in_jobs_s"], "uncached_in_jobs_s": uncached["in_jobs_s"],
        "cached_job_parts_s": cached["job_parts_s"], "uncached_job_parts_s": uncached["job_parts_s"],
        "cached_acc_mean_std": [acc["cached"]["mean"], acc["cached"]["std"]],
        "uncached_acc_mean_std": [acc["uncached"]["mean"], acc["uncached"]["std"]],
        "cached_features": cached["features_tags"], "uncached_features": uncached["features_tags"],
        "cached_feature_passes": cached["feature_passes"], "cached_fixed_cost_s": cached.get("fixed_cost_s"),
        **_bound_fields(bound_, cached)})

    def side(s):
        parts = ", ".join(f"{k} {v:.1f}" for k, v in s["job_parts_s"].items())
        return f"{s['wall_s']:8.1f} s wall; inside the jobs {s['in_jobs_s']:.1f} s ({parts})"

    def pm(a):
        return f"{_f(a['mean'])} ± {_f(a['std'])} (n={a['n']})"

    print(f"\n== {name}, tlsweep with {cached['n_jobs'] or 1} job(s) at a time"
          f"\n  cached  : {side(cached)}; feature pass computed {cached['feature_passes']}x"
          f"\n  uncached: {side(uncached)}"
          f"\n  uncached/cached: {row['uncached_over_cached']:.2f}x"
          f"\n  fixed   : {fixed_line(cached)} (cached)"
          f"\n  acc     : cached {pm(acc['cached'])}, uncached {pm(acc['uncached'])}"
          + (f"\n  {bound_line(bound_, cached['wall_s'])} (sweep: the cached one; uncached/bound = "
             f"{uncached['wall_s'] / bound_['seconds']:.1f}x)" if _measured(bound_) else "")
          + f"\n  command : python {row['cached_command']}"
          f"\n  command : python {row['uncached_command']}", flush=True)
    return row


# The speed bars: the ratio each workload must reach against the naive loop in the same invocation.
BARS = {"probe": ("end to end", 10.0), "finetune": ("per epoch", 1.25), "ladder": ("end to end", 10.0)}


def bars(rows: list[dict]) -> list[dict]:
    """Each measured workload's ratio against its bar (and vit-probe's uncached/cached, which has none)."""
    out = []
    for row in rows:
        name = row["workload"]
        if "error" in row:
            out.append({"workload": name, "n_jobs": row.get("n_jobs"), "error": row["error"]})
            continue
        if name == "vit-probe":
            out.append({"workload": name, "n_jobs": row["n_jobs"], "measure": "uncached / cached, end to end",
                        "ratio": row["uncached_over_cached"], "bar": None, "fixed_cost_s": row["cached_fixed_cost_s"]})
            continue
        measure, bar = BARS[name]
        ratio = row["speedup_end_to_end"] if measure == "end to end" else \
            (row["naive_epoch_s"] / row["tlsweep_epoch_s"] if row["naive_epoch_s"] else None)
        out.append({"workload": name, "n_jobs": row["n_jobs"], "measure": f"naive / tlsweep, {measure}",
                    "ratio": ratio, "bar": bar, "met": None if ratio is None else ratio >= bar,
                    "naive_complete": row["naive_complete"], "fixed_cost_s": row["tlsweep_fixed_cost_s"],
                    "over_bound": row.get("epoch_over_bound", row.get("sweep_over_bound")),
                    "bound_measure": "per epoch" if "epoch_over_bound" in row else "end to end"})
    return out


def bars_table(rows: list[dict]) -> str:
    lines = ["\n== bars (this invocation)", "| workload | jobs at a time | measure | ratio | bar | met | fixed cost "
             "| tlsweep / bound |", "|---|---|---|---|---|---|---|---|"]
    for b in rows:
        if "error" in b:
            lines.append(f"| {b['workload']} | {b['n_jobs'] or 1} | error: {b['error'][:80]} | | | | | |")
            continue
        ratio = "n/a" if b["ratio"] is None else f"{b['ratio']:.2f}x" + ("" if b.get("naive_complete", True) else
                                                                         " (naive side estimated)")
        met = "" if b["bar"] is None or b["met"] is None else ("yes" if b["met"] else "NO")
        fixed = "" if b["fixed_cost_s"] is None else f"{b['fixed_cost_s']:.1f} s"
        bar = "" if b["bar"] is None else f"≥ {b['bar']:g}x"
        over = "" if b.get("over_bound") is None else f"{b['over_bound']:.2f}x {b['bound_measure']}"
        lines.append(f"| {b['workload']} | {b['n_jobs'] or 1} | {b['measure']} | {ratio} | {bar} | {met} | {fixed} "
                     f"| {over} |")
    return "\n".join(lines)
