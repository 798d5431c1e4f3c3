"""The manual holds to the code: the generated pages equal what `python -m tlsweep.manual` makes from the schema,
conf/ and the committed result files; every key has its help; the strategy table's learning rates are the recipes';
docs/ holds only what its pages use; the prose names no process; the site builds strictly."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import fields

import pytest
from hydra import compose, initialize_config_dir

from tlsweep.manual import pages as manual, reference
from tlsweep.config.advise import AdviseConf
from tlsweep.config.data import DATA_SCHEMAS
from tlsweep.config.keys import STRATEGIES
from tlsweep.config.rules import at_least, fraction, help_of, one_of
from tlsweep.config.schema import AnyStrategy, Config, ModelConf, SgdConf, TrackingConf

REPO, CONF, DOCS = manual.REPO, reference.CONF, manual.DOCS  # not conftest's: this file needs no torch but in one test
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]


def test_every_generated_page_is_what_the_code_and_the_result_files_make():
    stale = [str(p.relative_to(REPO)) for p in manual.stale()]
    assert not stale, f"stale: {', '.join(stale)}; regenerate with `{manual.REGENERATE}` and commit the pages"


def test_every_measured_table_on_a_page_is_rendered_from_a_result_file():
    """A generated part names a table of the code or a file that exists; the pages have one per measured sweep."""
    parts = [(p, m.group("name")) for p in PAGES for m in manual.BLOCK.finditer(p.read_text())]
    for page, name in parts:
        if name not in manual.TABLES:
            assert (page.parent / name.partition("#")[0]).is_file(), (page.name, name)
    files = {name.partition("#")[0].removeprefix("docs/") for _, name in parts}
    for sweep in ("quickstart", "ladder", "flowchart", "eleven", "select-lr", "backbones"):
        assert any(f.startswith(f"results/{sweep}/") for f in files), sweep


def test_every_key_has_a_one_line_help():
    groups = {"": [Config], "tracking.": [TrackingConf], "model.": [ModelConf], "strategy.": [AnyStrategy],
              "optim.": [SgdConf], "data.": list(DATA_SCHEMAS.values()), "advise.": [AdviseConf]}
    missing = []
    for prefix, schemas in groups.items():
        helped: dict[str, bool] = {}
        for f in (f for s in schemas for f in fields(s)):  # a subclass that redefines a key keeps its base's help
            helped[f.name] = helped.get(f.name, False) or bool(help_of(f))
        missing += [prefix + k for k, ok in helped.items() if not ok and not (prefix == "" and k in reference.GROUP_FIELDS)]
    assert not missing, f"keys without help (tlsweep.config.rules.key(default, help, rule)): {missing}"


def test_the_strategy_tables_learning_rates_are_the_recipes():
    from tlsweep.training import recipes  # torch

    values = reference.composed("strategy")
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        for name in STRATEGIES:
            recipe = recipes.Recipe.of(compose("config", overrides=[f"strategy={name}"]).strategy)
            for k in (1, 2, 3, 7):
                assert reference.lr_multiplier(values[name], k) == pytest.approx(recipe.lr_scale(k)), (name, k)
    assert set(values) == set(STRATEGIES)


def test_a_rule_refuses_what_its_text_says():
    shots = at_least(1, null="every training image")
    assert shots.text == "an integer >= 1 or null (null: every training image)"
    assert shots.ok(None) and shots.ok(1) and not shots.ok(0)
    assert not at_least(1).ok(None)
    assert fraction().ok(None) and fraction().ok(0.5) and not fraction().ok(0) and not fraction().ok(1)
    assert one_of(None, "lora", "dora").text == "null, lora or dora"


def test_docs_holds_only_what_its_pages_use():
    text = "\n".join(p.read_text() for p in [*PAGES, REPO / "mkdocs.yml"])
    unused = [str(f.relative_to(DOCS)) for f in DOCS.rglob("*") if f.is_file() and f.suffix != ".md"
              and f.relative_to(DOCS).as_posix() not in text and f.parent.relative_to(DOCS).as_posix() + "/" not in text]
    assert not unused, f"files under docs/ that no page uses: {unused}"


# a commit hash: 7 to 40 hex digits with a letter and a digit, as a word (not a run id inside a result file)
HASH = re.compile(r"(?<![\w/.-])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}(?![\w/.-])")
PROCESS = re.compile(r"\bsessions?\b|\bissue #?[0-9]", re.IGNORECASE)


def test_the_project_names_no_process():
    """The docs, benchmarks and code state what is, not which session or issue made it: git keeps the history."""
    found = []
    for root in ("README.md", "docs", "benchmarks", "tlsweep", "hydra_plugins", "conf"):
        paths = [REPO / root] if (REPO / root).is_file() else (REPO / root).rglob("*")
        for path in paths:
            if path.suffix not in (".md", ".py", ".yaml", ".sh", ".txt") or "results" in path.parts:
                continue
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if PROCESS.search(line) or HASH.search(line.split("://")[0]):
                    found.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
    assert not found, "\n".join(found)


# a machine named in prose, a date, a path of one machine's disk
MACHINE = re.compile(r"\bdev (CPU|machine|box)\b|(?<![\w.])/(work|root|home/\w+)/", re.IGNORECASE)
DATE = re.compile(r"\b20\d\d-[01]\d-[0-3]\d\b")


def test_code_names_no_machine_and_no_day():
    """Code, configs, tests and benchmark scripts say why, not on which machine or day a number was seen: a measured
    number lives in docs/ with its date, machine and command, and the comment names that page. The docs name no
    private machine either; their measured tables carry their dates."""
    found = []
    for root in ("tlsweep", "hydra_plugins", "conf", "tests", "benchmarks", "docs", "README.md"):
        paths = [REPO / root] if (REPO / root).is_file() else (REPO / root).rglob("*")
        for path in paths:
            if path.suffix not in (".md", ".py", ".yaml", ".sh", ".txt") or "results" in path.parts:
                continue
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if MACHINE.search(line) or (path.suffix in (".py", ".yaml", ".sh") and DATE.search(line)):
                    found.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
    assert not found, "\n".join(found)


@pytest.mark.skipif(shutil.which("mkdocs") is None, reason='the docs extra: pip install -e ".[docs]"')
def test_the_site_builds_strictly(tmp_path):
    """No broken link, missing page or anchor, no page outside the nav (mkdocs.yml); offline, about a second."""
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "configuration" / "index.html").is_file()
