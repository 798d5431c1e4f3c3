"""The manual's generated parts, and which page holds which: the reference from the code (tlsweep/manual/reference.py:
docs/configuration.md, the strategy and model-preset tables), and every measured table from the result file
committed beside its page.

    python -m tlsweep.manual           # rewrite what is stale
    python -m tlsweep.manual --check   # name what is stale and exit 1 (tests/test_docs.py does the same)

docs/configuration.md is generated whole. Elsewhere a page marks a generated part as
`<!-- generated: NAME -->` ... `<!-- end: NAME -->`: NAME is a table of TABLES, or a result file relative to
the page (`results/ladder/summary.md`), whole or one part of it (`...summary.md#table`: its first table,
`#table-2` its second; `...summary.md#across-tasks`: the section under that heading), or the Backbones section
drawn again from a report's `backbones.csv`. A report's summary.md is inlined without its title line (the
sweep's name and run ids): the page says which sweep it was, when, where and with which command.

It reads the code and the files only, without torch or MLflow, so the test that holds the pages to it is quick.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Callable

from . import advisortables
from .benchtables import (bf16_bounds_table, depthwise_convs_table, depthwise_models_table, finetune_table,
                          parity_table, probe_bf16_table, scale_probe_table, scale_stream_table, scale_sweep_table)
from ..config.keys import SCORES
from .reference import REGENERATE, configuration, model_table, strategy_table

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
# the tables generated from the code, by the name a page's generated part gives
TABLES: dict[str, Callable[[], str]] = {"strategies": strategy_table, "model-presets": model_table,
                                        # docs/speed.md's, from benchmarks/results/*.json (tlsweep/manual/benchtables.py)
                                        "bench-finetune": finetune_table, "bench-probe-bf16": probe_bf16_table,
                                        "bench-bf16-bounds": bf16_bounds_table, "bench-bf16-parity": parity_table,
                                        "bench-depthwise-convs": depthwise_convs_table,
                                        "bench-depthwise-models": depthwise_models_table,
                                        "bench-scale-probe": scale_probe_table, "bench-scale-sweep": scale_sweep_table,
                                        "bench-scale-stream": scale_stream_table,
                                        # docs/advisor.md's, from the tabular benchmark and its replays
                                        "advisor-grids": advisortables.grids_table,
                                        "advisor-regret": advisortables.regret_table,
                                        "advisor-claim": advisortables.claim_table,
                                        "advisor-rankers": advisortables.rankers_table,
                                        "advisor-small-data": advisortables.small_data_table}


# ---- result files --------------------------------------------------------------------------------------------

def _slug(heading: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", heading.lstrip("#").split(":")[0].strip().lower()).strip("-")


def from_file(path: Path, part: str = "") -> str:
    """A result file's text for a page: a report's summary.md without its title, one table, or one section."""
    lines = path.read_text().rstrip("\n").splitlines()
    if lines and lines[0].startswith("**"):  # the report's title: the sweep's name and its run ids
        lines = lines[1:]
    if part.startswith("table"):  # "table": the first table; "table-2": the second
        starts = [i for i, l in enumerate(lines) if l.startswith("|") and (i == 0 or not lines[i - 1].startswith("|"))]
        start = starts[int(part.partition("-")[2] or 1) - 1]
        end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
        lines = lines[start:end]
    elif part:
        start = next(i for i, l in enumerate(lines) if l.startswith("#") and _slug(l) == part)
        level = len(lines[start]) - len(lines[start].lstrip("#"))
        end = next((i for i in range(start + 1, len(lines))
                    if lines[i].startswith("#") and len(lines[i]) - len(lines[i].lstrip("#")) <= level), len(lines))
        lines = lines[start + 1:end]
    while lines and not lines[0].strip():
        lines = lines[1:]
    return "\n".join(lines).rstrip("\n") + "\n"


def from_backbones_csv(path: Path) -> str:
    """The report's Backbones section, drawn again from its backbones.csv and the backbones_taus.csv beside it."""
    import pandas as pd

    from ..report import backbones

    table = pd.read_csv(path, keep_default_na=False, na_values=[""])  # model.weights "None" stays a name
    taus = pd.read_csv(path.with_name(path.name.replace("backbones.csv", "backbones_taus.csv")))
    scores = [c for c in table.columns if c.startswith("score/") and c.removeprefix("score/") in SCORES]
    result = backbones.Backbones(table=table, taus=taus, keys=[k for k in ("model.name", "model.weights", "model.arch")
                                                               if k in table.columns],
                                 task_key=None, scores=scores, metric="final_val_acc")
    return "\n".join(backbones.markdown(result).splitlines()[2:]) + "\n"  # the page has its own heading


def render(name: str, base: Path) -> str:
    if name in TABLES:
        return TABLES[name]()
    path, _, part = name.partition("#")
    if path.endswith("backbones.csv"):
        return from_backbones_csv(base / path)
    return from_file(base / path, part)


BLOCK = re.compile(r"(<!-- generated: (?P<name>[^>]+?) -->\n)(?P<body>.*?)(<!-- end: (?P=name) -->)", re.S)


def filled(page: Path) -> str:
    """The page with each generated part made again."""
    def part(m: re.Match) -> str:
        try:
            return m.group(1) + render(m.group("name"), page.parent) + m.group(4)
        except (OSError, StopIteration, IndexError) as err:
            raise SystemExit(f"{page.relative_to(REPO)}: its generated part {m.group('name')!r} cannot be made "
                             f"({type(err).__name__}: {err or 'no such part'})") from err
    return BLOCK.sub(part, page.read_text())


def pages() -> dict[Path, str]:
    """Every generated file and what it should hold."""
    out = {DOCS / "configuration.md": configuration()}
    for page in [REPO / "README.md", *sorted(DOCS.glob("*.md"))]:
        if page.name != "configuration.md" and "<!-- generated: " in page.read_text():
            out[page] = filled(page)
    return out


def stale() -> list[Path]:
    return [p for p, text in pages().items() if not p.exists() or p.read_text() != text]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tlsweep.manual", description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="name the stale pages and exit 1; write nothing")
    args = ap.parse_args(argv)
    if args.check:
        old = stale()
        for p in old:
            print(f"stale: {p.relative_to(REPO)} (regenerate: {REGENERATE})")
        return 1 if old else 0
    for p, text in pages().items():
        if not p.exists() or p.read_text() != text:
            p.write_text(text)
            print(f"wrote {p.relative_to(REPO)}")
    return 0

