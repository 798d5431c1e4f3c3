"""What a small sweep costs around its jobs: start-up, imports, the store, the report, exit.

Measures, each in a fresh temporary directory with nothing else running:
- `python -m tlsweep --help` (wall seconds);
- `python -c "import tlsweep.run"` (wall seconds), and which of matplotlib, scipy, pandas and torch._dynamo
  that import loads;
- a 4-run probe sweep (lite0, 2 LRs x 2 seeds x 3 epochs on hymenoptera) on a fresh store and a
  cold cache: wall seconds, the seconds inside its jobs (the sum of its child runs' open time in MLflow) and the
  rest, the fixed cost;
- `python -m tlsweep.report` on that sweep's store (wall seconds);
- with `--floor`, the import floor: one more (untimed) sweep under `python -X importtime` lists every module
  it loads; a fresh process then imports those that are not tlsweep's own (torch, torchvision, timm, MLflow
  and SQLAlchemy, Hydra, pandas, matplotlib, ...), with the collector off, and nothing else. Its wall (the
  interpreter's start and exit included) is what the sweep's fixed cost cannot go below while it uses these
  libraries; the fixed cost less the floor is what Hydra's work, the store's queries, the report's drawing
  and tlsweep's own bookkeeping take. The same for `python -m tlsweep.report`.

    python benchmarks/fixed_cost.py                          # this checkout, 3 repeats of the short commands
    python benchmarks/fixed_cost.py --sweeps 3               # and the sweep 3 times (medians)
    python benchmarks/fixed_cost.py --repo ../old-checkout   # another checkout's code (its own conf/), same steps
    python benchmarks/fixed_cost.py --floor                  # and the import floor beside the fixed cost
    python benchmarks/fixed_cost.py --first-store            # the store as on a machine's first sweep: no empty
                                                             # store of this MLflow kept in the user's cache yet
    python benchmarks/fixed_cost.py --out fixed.json

`--repo` puts that checkout first on PYTHONPATH, so the same installed packages run another version of
tlsweep: before/after numbers on one machine, interleaved (a VM's speed drifts within the hour).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = (REPO / ".." / "shared" / "data" / "hymenoptera_data").resolve()
SWEEP = ["-m", "model=efficientnet_lite0", "strategy=probe", "seed=0,1", "optim.lr=1e-3,3e-4", "epochs=3"]
WATCHED = ("matplotlib", "scipy", "pandas", "torch._dynamo")
IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|( *)(\S+)$")  # indent: depth in the tree
# what a sweep loads that is tlsweep itself or the interpreter's own entry modules, not a library it uses
NOT_LIBRARIES = ("tlsweep", "hydra_plugins.tlsweep_sweeper", "__main__", "__mp_main__", "sitecustomize")
FLOOR = """
import gc, importlib, sys
gc.disable()  # as tlsweep's heavy imports run (tlsweep.imports.heavy)
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception:  # what the sweep only tried (a Windows module, an optional extra) fails here too
        pass
gc.freeze()  # as heavy() leaves them: the final collection at exit walks none of them
"""
LINE = re.compile(r"\[tlsweep\] (\d+) runs: ([\d.]+) s in jobs, ([\d.]+) s around them")


def timed(cmd: list[str], cwd: Path, env: dict, timeout: float = 900) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stderr[-3000:]}")
    return wall, p


def in_jobs(db: Path) -> tuple[int, float]:
    """(child runs, seconds they were open) from the store itself, for any tlsweep version."""
    with sqlite3.connect(db) as con:
        rows = con.execute("select r.start_time, r.end_time from runs r join tags t on t.run_uuid = r.run_uuid "
                           "where t.key = 'mlflow.parentRunId'").fetchall()
    return len(rows), sum(end - start for start, end in rows) / 1000


def loaded_modules(importtime_stderr: str) -> list[str]:
    """The libraries a process imported, as the outermost imports of `python -X importtime`'s tree, in order,
    with tlsweep's own modules replaced by what they imported: the same imports in the same order, so that a
    fresh process running them does the same work, less tlsweep's. (The tree comes children first: a module's
    line follows the lines of what it imported, indented one step more.)"""
    pending: list[tuple[int, str, list]] = []  # (depth, name, children) not yet claimed by a parent
    for line in importtime_stderr.splitlines():
        m = IMPORT_LINE.match(line)
        if not m:
            continue
        depth = len(m.group(1))
        children = []
        while pending and pending[-1][0] > depth:
            children.insert(0, pending.pop())
        pending.append((depth, m.group(2), children))

    def libraries(nodes) -> list[str]:
        out = []
        for _, name, children in nodes:
            if any(name == x or name.startswith(x + ".") for x in NOT_LIBRARIES):
                out += libraries(children)
            else:
                out.append(name)
        return out

    return list(dict.fromkeys(libraries(pending)))


def import_floor(args: list[str], cwd: Path, tmp: Path, env: dict, repeat: int) -> tuple[list[str], list[float]]:
    """(the libraries `python *args` loads, the wall seconds of fresh processes importing just them)."""
    _, p = timed([sys.executable, "-X", "importtime", *args], cwd, env)
    modules = loaded_modules(p.stderr)
    return modules, [timed([sys.executable, "-c", FLOOR, *modules], tmp, env)[0] for _ in range(repeat)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, default=REPO, help="the checkout whose tlsweep runs (default: this one)")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each short command (the median is reported)")
    ap.add_argument("--sweeps", type=int, default=1, help="runs of the sweep (the median is reported)")
    ap.add_argument("--first-store", action="store_true",
                    help="an empty user cache (XDG_CACHE_HOME): the store is built as on a machine's first sweep")
    ap.add_argument("--floor", action="store_true",
                    help="also measure the import floor: the libraries the sweep loads, imported and nothing else")
    ap.add_argument("--out", type=Path, help="also write the numbers as JSON")
    args = ap.parse_args()
    repo = args.repo.resolve()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = str(repo) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    out: dict = {"repo": str(repo), "commit": commit, "python": sys.version.split()[0], "cpu_cores": os.cpu_count()}
    print(f"tlsweep at {repo} ({commit}), {os.cpu_count()} CPU cores", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        help_s = [timed([sys.executable, "-m", "tlsweep", "--help"], tmp, env)[0] for _ in range(args.repeat)]
        out["help_s"] = statistics.median(help_s)
        probe = ("import sys, tlsweep.run; print(' '.join(m for m in %r if m in sys.modules))" % (WATCHED,))
        runs = [timed([sys.executable, "-c", probe], tmp, env) for _ in range(args.repeat)]
        out["import_run_s"] = statistics.median(w for w, _ in runs)
        out["import_run_loads"] = runs[0][1].stdout.split()
        print(f"--help: {out['help_s']:.2f} s; import tlsweep.run: {out['import_run_s']:.2f} s "
              f"(loads {', '.join(out['import_run_loads']) or 'none'} of {', '.join(WATCHED)})", flush=True)

        sweeps = []
        for i in range(args.sweeps):  # each in its own folder: a fresh store and a cold cache
            work = tmp / f"sweep{i}"
            work.mkdir()
            if args.first_store:
                env["XDG_CACHE_HOME"] = str(tmp / f"user-cache{i}")
            wall, p = timed([sys.executable, "-m", "tlsweep", *SWEEP, f"data.root={args.data}"], work, env)
            n, jobs = in_jobs(work / "mlruns" / "mlflow.db")
            line = LINE.search(p.stdout)
            sweeps.append({"runs": n, "wall_s": wall, "in_jobs_s": jobs, "around_jobs_s": wall - jobs,
                           "printed": line.group(0) if line else None})
            print(f"sweep: {n} runs, {wall:.1f} s wall, {jobs:.1f} s in jobs, {wall - jobs:.1f} s around them "
                  f"(the process's wall, from outside); it printed: {line.group(0) if line else 'no such line'}",
                  flush=True)
        out["sweep"] = {"command": "python -m tlsweep " + " ".join(SWEEP) + f" data.root={args.data}",
                        "first_store": args.first_store, "runs": sweeps,
                        **{f"median_{k}": statistics.median(s[k] for s in sweeps)
                           for k in ("wall_s", "in_jobs_s", "around_jobs_s")}}
        if len(sweeps) > 1:
            print(f"sweep, median of {len(sweeps)}: {out['sweep']['median_wall_s']:.1f} s wall, "
                  f"{out['sweep']['median_in_jobs_s']:.1f} s in jobs, {out['sweep']['median_around_jobs_s']:.1f} s "
                  "around them", flush=True)

        if args.floor:
            work = tmp / "floor-sweep"
            work.mkdir()
            modules, floor_s = import_floor(["-m", "tlsweep", *SWEEP, f"data.root={args.data}"], work, tmp, env,
                                            args.repeat)
            around = out["sweep"]["median_around_jobs_s"]
            out["floor"] = {"modules": len(modules), "import_floor_s": statistics.median(floor_s),
                            "around_jobs_less_floor_s": around - statistics.median(floor_s)}
            print(f"import floor: {out['floor']['import_floor_s']:.2f} s (runs: "
                  f"{', '.join(f'{s:.2f}' for s in floor_s)}; {len(modules)} modules the sweep loaded outside "
                  f"tlsweep, imported in a fresh process with the collector off); the fixed cost less the floor: "
                  f"{out['floor']['around_jobs_less_floor_s']:.2f} s", flush=True)

        report_s = [timed([sys.executable, "-m", "tlsweep.report", "out=report-cli"], tmp / "sweep0", env)[0]
                    for _ in range(args.repeat)]
        out["report_cli_s"] = statistics.median(report_s)
        print(f"python -m tlsweep.report: {out['report_cli_s']:.2f} s "
              f"(runs: {', '.join(f'{s:.2f}' for s in report_s)})", flush=True)
        if args.floor:
            modules, floor_s = import_floor(["-m", "tlsweep.report", "out=report-floor"], tmp / "sweep0", tmp, env,
                                            args.repeat)
            out["report_cli_floor"] = {"modules": len(modules), "import_floor_s": statistics.median(floor_s),
                                       "cli_less_floor_s": out["report_cli_s"] - statistics.median(floor_s)}
            print(f"its import floor: {statistics.median(floor_s):.2f} s (runs: "
                  f"{', '.join(f'{s:.2f}' for s in floor_s)}); the report CLI less the floor: "
                  f"{out['report_cli_floor']['cli_less_floor_s']:.2f} s", flush=True)
    if args.out:
        args.out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
