"""The table run.sh prints last: what ran where, how each step ended, and the benchmark's numbers.

Reads $OUT/steps.tsv, $OUT/pytest-gpu.xml and $OUT/{ladder,probe}.json (whatever exists: a
step cut by the time limit leaves what it finished), writes $OUT/summary.json and
$OUT/summary.txt, and prints the text.

    python benchmarks/device/summarize.py "$OUT"
"""
from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

WORKLOADS = ("ladder", "probe")


def steps(out: Path) -> list[dict]:
    rows = []
    path = out / "steps.tsv"
    for line in path.read_text().splitlines() if path.exists() else []:
        name, rc, seconds, note = (line.split("\t") + [""] * 4)[:4]
        status = {"0": "ok", "124": "stopped at its time limit", "137": "killed at its time limit",
                  "skipped": "skipped: no time left"}.get(rc, f"failed (exit {rc})")
        rows.append({"step": name, "rc": rc, "status": status, "seconds": int(seconds or 0), "note": note})
    return rows


def pytest_counts(out: Path) -> dict | None:
    path = out / "pytest-gpu.xml"
    if not path.exists():
        return None
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    n["passed"] = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    return n


def _f(x, fmt=".1f", none="-"):
    return none if x is None else format(x, fmt)


def _acc(a: dict | None) -> str:
    if not a or not a["n"]:
        return "-"
    return f"{100 * a['mean']:.1f} ± {_f(None if a['std'] is None else 100 * a['std'])} (n={a['n']})"


def table(out: Path) -> tuple[str, dict]:
    results = {w: json.loads((out / f"{w}.json").read_text()) for w in WORKLOADS if (out / f"{w}.json").exists()}
    env = next((r["env"] for r in results.values()), {})
    st, tests = steps(out), pytest_counts(out)
    lines = [f"device: {env.get('gpu') or env.get('device', '?')}; torch {env.get('torch', '?')} "
             f"(CUDA {env.get('cuda') or '-'}), torchvision {env.get('torchvision', '?')}, "
             f"Python {env.get('python', '?')}, {env.get('cpu_cores', '?')} CPU cores"]
    for s in st:
        extra = ""
        if s["step"] == "pytest -m gpu" and tests:
            extra = f" ({tests['passed']} passed, {tests['failures'] + tests['errors']} failed, {tests['skipped']} skipped)"
        lines.append(f"step {s['step']}: {s['status']}, {s['seconds']} s{extra}{'; ' + s['note'] if s['note'] else ''}")
    head = ("| workload | tlsweep jobs at once | naive s | tlsweep s | speedup | naive acc % | tlsweep acc % "
            "| tlsweep: start-up+exit | data+model | feature pass | training | MLflow |")
    lines += ["", head, "|" + "---|" * (head.count("|") - 1)]
    accs = []
    for w, res in results.items():
        side = res["sides"].get(w, {})
        naive = side.get("naive") or {}
        for fast in side.get("tlsweep", []):
            row = next((r for r in res["rows"] if r["n_jobs"] == fast.get("n_jobs")), None)
            size = f"{w} ({side.get('grid')} runs x {side.get('epochs')} ep)"
            if "error" in fast or row is None:
                why = fast.get("error", "no naive run finished")
                lines.append(f"| {size} | {fast.get('n_jobs') or 1} | {_f(naive.get('wall_s'))} | "
                             f"{_f(fast.get('wall_s'))} | - | - | - | {why.splitlines()[0][:80]} | | | | |")
                continue
            p = row["tlsweep_job_parts_s"]
            par = "" if row["tlsweep_outside_jobs_s"] is not None else "*"  # job-seconds of overlapping jobs
            naive_s = _f(row["naive_wall_s"]) + ("" if row["naive_complete"] else
                                                 f" ({row['naive_runs']} runs; full ~{_f(row['naive_wall_s_full'])})")
            lines.append(
                f"| {size} | {fast['n_jobs'] or 1} | {naive_s} | {_f(row['tlsweep_wall_s'])} | "
                f"{_f(row['speedup_end_to_end'])}x | {_acc(dict(zip(('mean', 'std'), row['naive_acc_mean_std']), n=len(naive['runs'])))} | "
                f"{_acc(dict(zip(('mean', 'std'), row['tlsweep_acc_mean_std']), n=len(fast['runs'])))} | "
                f"{_f(row['tlsweep_outside_jobs_s'])} | {_f(p.get('data', 0) + p.get('model', 0))}{par} | "
                f"{_f(p.get('features'))}{par} | {_f(p.get('train'))}{par} | {_f(p.get('mlflow'))}{par} |")
            if fast.get("n_jobs", 0) == res["rows"][0]["n_jobs"]:  # accuracy per configuration, once per workload
                accs += [f"| {w} | {k} | {_acc(v['naive'])} | {_acc(v['tlsweep'])} | "
                         f"{'yes' if v['within_naive_range'] else 'NO'} |" for k, v in row["acc_by_config"].items()]
    lines += ["", "seconds; speedup = naive wall / tlsweep wall, one invocation; acc = final val acc, mean ± std over "
              "seeds. start-up+exit: tlsweep's wall outside its jobs (interpreter, imports, Hydra, store, exit). "
              "* with parallel jobs: summed over jobs that overlap."]
    if accs:
        lines += ["", "| workload | config | naive acc % | tlsweep acc % | tlsweep mean within naive min..max |",
                  "|---|---|---|---|---|", *accs]
    summary = {"env": env, "steps": st, "pytest_gpu": tests, "rows": [r for res in results.values() for r in res["rows"]]}
    return "\n".join(lines), summary


def main() -> None:
    out = Path(sys.argv[1])
    text, summary = table(out)
    (out / "summary.txt").write_text(text + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(text)


if __name__ == "__main__":
    main()
