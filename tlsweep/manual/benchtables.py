"""docs/speed.md's measured tables, rendered from the benchmark's committed result files (benchmarks/results/*.json).

It reads the JSON only (benchmarks/summary.py, which wrote the rows, imports torch through benchmarks/bounds.py),
so tlsweep.manual's check of the page stays torch-free.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
# the probe rows' first cell: what each workload sweeps (the result file holds the commands, not this summary)
PROBE_LABELS = {"probe": "probe (lite0, 2 LRs x 2 seeds x 3 epochs)", "vit-probe": "vit-probe (vit_tiny, same shape)"}


def _files(prefix: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(RESULTS.glob(f"{prefix}-*.json"))]


def _precision(result: dict) -> str:
    return "bf16" if str(result["bf16"]).lower() == "true" else "fp32"


def _finetunes() -> list[tuple[dict, dict]]:
    """(result file, its fine-tune row) per model and precision, fp32 before bf16."""
    out = [(r, row) for r in _files("finetune") for row in r["rows"] if row["workload"] == "finetune"]
    return sorted(out, key=lambda x: (x[0]["model"], _precision(x[0]) != "fp32"))


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table of string cells, the one way the manual's measured tables are drawn."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def finetune_table() -> str:
    """Fine-tune: tlsweep against its bound and against the naive loop, one row per model and precision."""
    rows = []
    for result, row in _finetunes():
        weights = "random init" if "model.weights=null" in result["sides"]["finetune"]["model"] else "ImageNet weights"
        b = row["bound"]
        rows.append([f"{result['model']} ({weights})", _precision(result), str(result["sides"]["finetune"]["epochs"]),
                     f"{row['naive_epoch_s']:.1f}", f"{row['tlsweep_epoch_s']:.1f}", f"{b['per_epoch_s']:.1f}",
                     f"**{row['epoch_over_bound']:.2f}x**", f"{row['sweep_over_bound']:.2f}x",
                     f"**{row['tlsweep_over_naive_per_epoch']:.2f}x**", f"{row['tlsweep_over_naive_end_to_end']:.2f}x",
                     f"{b['ms_per_train_image']:.1f}", f"{b['ms_per_eval_image']:.1f}"])
    return markdown_table(["model", "precision", "epochs", "naive s/epoch (fp32)", "tlsweep s/epoch", "bound s/epoch",
                           "**tlsweep / bound** per epoch", "tlsweep / bound end to end",
                           "**tlsweep / naive** per epoch", "end to end", "bound train step ms/image",
                           "bound val forward ms/image"], rows)


def probe_bf16_table() -> str:
    """The probe sweeps in bf16: probe against the naive loop, vit-probe against itself uncached, both against
    their bounds."""
    rows = []
    for result in _files("probe"):
        if _precision(result) != "bf16":
            continue
        for row in result["rows"]:
            name, b = row["workload"], row["bound_s"]
            if name == "vit-probe":
                other = f"{row['uncached_wall_s']:.1f} s (`strategy.cache_features=false`)"
                wall, ratio = row["cached_wall_s"], f"**{row['uncached_over_cached']:.2f}x** uncached/cached"
                features, fixed = row["cached_job_parts_s"]["features"], row["cached_fixed_cost_s"]
            else:
                other = f"{row['naive_wall_s_full']:.1f} s (naive loop, fp32)"
                wall, ratio = row["tlsweep_wall_s"], f"**{row['speedup_end_to_end']:.2f}x** naive/tlsweep"
                features, fixed = row["tlsweep_job_parts_s"]["features"], row["tlsweep_fixed_cost_s"]
            rows.append([PROBE_LABELS.get(name, name), other, f"{wall:.1f} s", ratio, f"{features:.1f} s",
                         f"{b:.1f} s", f"{features / b:.2f}x", f"{row['sweep_over_bound']:.2f}x", f"{fixed:.1f} s"])
    return markdown_table(["workload", "naive / uncached", "tlsweep", "ratio", "feature pass", "bound",
                           "feature pass / bound", "sweep / bound", "fixed cost"], rows)


def bf16_bounds_table() -> str:
    """bf16 against fp32, per model: the fine-tune bound's train step and val forward, per image."""
    bounds: dict[str, dict[str, dict]] = {}
    for result, row in _finetunes():
        bounds.setdefault(result["model"], {})[_precision(result)] = row["bound"]
    rows = []
    for model, by in bounds.items():
        if not {"fp32", "bf16"} <= by.keys():
            continue
        f, h = by["fp32"], by["bf16"]
        train = f["ms_per_train_image"] / h["ms_per_train_image"]
        val = f["ms_per_eval_image"] / h["ms_per_eval_image"]
        rows.append([model, f"{f['ms_per_train_image']:.1f} → {h['ms_per_train_image']:.1f} ms (**{train:.2f}x"
                            + (": slower in bf16**)" if train < 1 else "**)"),
                     f"{f['ms_per_eval_image']:.1f} → {h['ms_per_eval_image']:.1f} ms ({val:.2f}x"
                     + (": slower in bf16)" if val < 1 else ")")])
    return markdown_table(["model", "train step fp32 → bf16", "val forward fp32 → bf16"], rows)


def parity_table() -> str:
    """bf16 against fp32 on the same runs (benchmarks/parity.py): per dataset, strategy and pair of arms (bf16 -
    fp32; fp32 NCHW - fp32, the noise floor of float rounding), the paired gaps over the seeds."""
    result = json.loads((RESULTS / "bf16-parity.json").read_text())
    rows = []
    for r in result["rows"]:
        ci = "n/a" if r["low"] is None else f"[{r['low']:+.2f}, {r['high']:+.2f}]"
        verdict = "n/a" if r["parity"] is None else ("yes" if r["parity"] else "**no**")
        loss = sum(r["val_loss_gaps"]) / len(r["val_loss_gaps"])
        spread = max(r["gaps"]) - min(r["gaps"])
        rows.append([r["data"], r["strategy"], r["compare"], str(len(r["seeds"])),
                     f"{r['first_acc']:.2f} / {r['second_acc']:.2f}", f"**{r['mean']:+.2f}**", ci, verdict,
                     f"{min(r['gaps']):+.2f} … {max(r['gaps']):+.2f} ({spread:.2f})",
                     f"{r['second_val_loss']:.4f} / {loss:+.4f}", f"{r['train_seconds_ratio']:.2f}x"])
    parity = f"parity (CI holds 0, \\|mean\\| ≤ {result['parity_points']:g})"
    return markdown_table(["data", "strategy", "arms (first - second)", "seeds", "acc % (first / second)",
                           "mean gap (points)", "95% t-interval", parity, "gaps per seed: min … max (range)",
                           "val loss (second) / mean gap", "train seconds first / second"], rows)


def depthwise_convs_table() -> str:
    """EfficientNet-Lite0's depthwise convs alone, forward + backward, fp32 against bf16 (benchmarks/depthwise.py)."""
    result = json.loads((RESULTS / "depthwise.json").read_text())
    rows = [[f"{c['channels']}", f"{c['kernel']}x{c['kernel']}", f"{c['stride']}", f"{c['side']}", f"{c['count']}",
             f"{c['fp32_ms']:.1f}", f"{c['bf16_ms']:.1f}", f"**{c['bf16_speedup']:.2f}x**"] for c in result["convs"]]
    return markdown_table(["channels", "kernel", "stride", "input side (px)", "convs of this shape", "fp32 ms",
                           "bf16 ms", "bf16 speed-up"], rows)


def depthwise_models_table() -> str:
    """Train step and eval forward per image: fp32, bf16, bf16 with the depthwise convs training in fp32."""
    result = json.loads((RESULTS / "depthwise.json").read_text())
    rows = []
    for arch, modes in result["models"].items():
        base = modes["fp32"]
        for mode, m in modes.items():
            train, infer = m["train_ms_per_image"], m["eval_ms_per_image"]
            rows.append([arch, mode, f"{train:.1f} ({base['train_ms_per_image'] / train:.2f}x)",
                         f"{infer:.1f} ({base['eval_ms_per_image'] / infer:.2f}x)"])
    return markdown_table(["model", "precision", "train step ms/image (speed-up on fp32)",
                           "eval forward ms/image (speed-up on fp32)"], rows)


def _scale(kind: str) -> list[dict]:
    path = RESULTS / "scale.json"
    return [r for r in json.loads(path.read_text())["rows"] if r["kind"] == kind] if path.exists() else []


def _size(command: str) -> str:
    return next((c.split("=")[1] + " px" for c in command.split() if c.startswith("data.image_size=")), "224 px")


def _where(features: str) -> str:
    """The feature cache's path, in a few words, from a run's tlsweep.fast.features tag."""
    if not features.startswith("on"):
        return "off"
    how = "streamed from the files" if "streamed" in features else "from the decoded images"
    return how + (", on disk" if "MB on disk" in features else ", in memory")


def _data(r: dict) -> str:
    return f"{r['images']:,}" + ("" if r.get("data", "generated") == "generated" else f" ({r['data']})")


def _gb(r: dict, key: str) -> str:
    return f"{r[key]:.2f}" if key in r else "-"


def scale_probe_table() -> str:
    """One probe run at each size and budget: its path, wall time and peak memory."""
    rows = [[_data(r), _size(r["command"]), f"{r['budget_mb']:.0f}",
             "decode once" if r["decode"].startswith("on") else "streamed", _where(r["features"]), f"{r['wall_s']:.0f}",
             _gb(r, "peak_rss_gb"), _gb(r, "peak_anon_gb"), f"{r['final_val_acc']:.3f}", r["date"]]
            for r in _scale("probe")]
    return markdown_table(["images", "crop", "data.cache_budget_mb", "images held", "feature cache", "wall s",
                           "peak RSS GB", "peak private GB", "val acc", "date (UTC)"], rows) + \
        _exponent(_scale("probe"), "wall_s") + _provenance("probe")


def _exponent(rows: list[dict], value: str) -> str:
    """b of value ~ images^b, least squares over the rows at the default budget (one per size)."""
    import math

    pts = sorted({r["images"]: r[value] for r in rows
                  if r["budget_mb"] == 4096 and r.get("data", "generated") == "generated"}.items())
    if len(pts) < 2:
        return ""
    xs, ys = [math.log(n) for n, _ in pts], [math.log(v) for _, v in pts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return (f"\nWall time grows as images^{b:.2f} over the default budget's rows of generated folders "
            f"({', '.join(f'{n:,}' for n, _ in pts)} images; least squares on the logs).\n")


def scale_sweep_table() -> str:
    """The 3-LR x 3-seed x 10-epoch probe sweep at each size: its wall against its data and feature passes plus
    its heads."""
    rows = [[_data(r), _size(r["command"]), f"{r['budget_mb']:.0f}", str(r["jobs"]), f"{r['wall_s']:.0f}",
             f"{r['passes_s']:.0f}", f"{r['heads_s']:.0f}", f"**{r['wall_over_parts']:.2f}x**",
             _gb(r, "peak_rss_gb"), _gb(r, "peak_anon_gb"), _where(r["features"][0]), r["date"]]
            for r in _scale("sweep")]
    return markdown_table(["images", "crop", "data.cache_budget_mb", "jobs", "wall s", "data + feature passes s",
                           "heads s", "**wall / (passes + heads)**", "peak RSS GB", "peak private GB", "feature cache",
                           "date (UTC)"], rows) + _exponent(_scale("sweep"), "wall_s") + _provenance("sweep")


def scale_stream_table() -> str:
    """One fine-tune epoch against its bound: streamed (over the budget), decoding with every core plus the train
    steps; from the decode-once store (under it), the train steps alone, the decode paid once before the epoch."""
    rows = []
    for r in _scale("stream"):
        once = r["decode"].startswith("on")
        bound = r["steps_s"] if once else r["bound_s"]
        rows.append([_data(r), _size(r["command"]), f"{r['budget_mb']:.0f}", "decode once" if once else "streamed",
                     f"{r['epoch_s']:.1f}", "paid once, before" if once else f"{r['decode_s']:.1f}",
                     f"{r['steps_s']:.1f}", f"**{r['epoch_s'] / bound:.2f}x**", f"{r['ms_per_image']:.2f}",
                     f"{r['wall_s']:.0f}" if "wall_s" in r else "-", _gb(r, "peak_rss_gb"), _gb(r, "peak_anon_gb"),
                     r["date"]])
    return markdown_table(["images per epoch (train + val)", "crop", "data.cache_budget_mb", "images held", "epoch s",
                           "bound: decode s", "bound: steps s", "**epoch / bound**", "ms / image", "run wall s",
                           "peak RSS GB", "peak private GB", "date (UTC)"], rows) + _provenance("stream")


def _provenance(kind: str) -> str:
    """The machines and commands of a scale table's rows, below it."""
    rows = _scale(kind)
    machines = sorted({r["machine"] for r in rows})
    # the folder's path is this machine's: DIR stands for it (`benchmarks/scale.py make --images N --root DIR`)
    commands = sorted({re.sub(r"data\.root=\S+", "data.root=DIR", r["command"]) for r in rows})
    real = sorted({r["data"] for r in rows if r.get("data", "generated") != "generated"})
    return ("\nMachine: " + "; ".join(machines) + ". Commands (`benchmarks/scale.py " + kind + "` ran them; DIR is the "
            "folder of N images that `benchmarks/scale.py make --images N --root DIR` wrote"
            + (f", or for {', '.join(real)} the folder its script in benchmarks/advisor/data/ prepared" if real else "")
            + "):\n\n" + "\n".join(f"- `{c}`" for c in commands) + "\n") if rows else "\nNot measured yet.\n"
