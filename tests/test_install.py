"""tlsweep as a user installs it: the package carries its config, runs from any folder, and searches the user's own
presets first. The default tier checks the pieces in-process; the full tier builds the wheel, installs it into a
fresh virtual environment and runs the CLI from an empty folder, as .ci/run does."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

import tlsweep
from tlsweep.config import searchpath
from tests.conftest import CONF, REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _preset(folder: Path, rel: str, text: str) -> Path:
    path = folder / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---- the package: what the wheel holds ---------------------------------------------------------------------

def test_the_package_list_names_every_module_folder_and_every_config_group():
    """pyproject lists its packages (a find cannot map conf/ to tlsweep.conf): a new subpackage or config group left
    out of the list would be missing from the wheel, and only from the wheel."""
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    modules = {str(p.parent.relative_to(REPO)).replace("/", ".") for p in (REPO / "tlsweep").rglob("*.py")
               if "__pycache__" not in p.parts}
    groups = {".".join(("tlsweep", "conf", *d.relative_to(CONF).parts)) for d in [CONF, *CONF.rglob("*")]
              if d.is_dir()}
    assert modules | groups | {"hydra_plugins"} == listed
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"tlsweep.conf": "conf"}


def test_the_version_is_written_once_and_the_cli_prints_it(monkeypatch, capsys):
    assert PYPROJECT["project"]["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "tlsweep.__version__"}
    assert "version" not in PYPROJECT["project"]
    from tlsweep.__main__ import cli

    monkeypatch.setattr(sys, "argv", ["tlsweep", "--version"])
    cli()  # returns before Hydra, which would print its own version
    assert capsys.readouterr().out == f"tlsweep {tlsweep.__version__}\n"
    changelog = (REPO / "CHANGELOG.md").read_text()
    assert f"## {tlsweep.__version__} (" in changelog  # the release has its entry


def test_the_metadata_is_ready_to_publish():
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert (REPO / "LICENSE").read_text().split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert {"Programming Language :: Python :: 3.11", "Programming Language :: Python :: 3.12"} <= \
        set(project["classifiers"])


# ---- the user's presets -------------------------------------------------------------------------------------

def test_the_clone_s_own_conf_is_not_searched_twice(monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.delenv(searchpath.ENV, raising=False)
    assert searchpath.user_conf() == CONF.resolve() and searchpath.user_searched() is None
    assert "the package's own conf/" in searchpath.describe()


def test_a_preset_beside_the_data_adds_an_option_and_replaces_one_of_the_package(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(searchpath.ENV, raising=False)
    _preset(tmp_path / "conf", "data/xray.yaml", "defaults: [imagefolder]\nroot: /data/xray\nshots: 5\n")
    # the package's quickstart, replaced: another dataset and length
    _preset(tmp_path / "conf", "experiment/quickstart.yaml",
            "# @package _global_\ndefaults:\n  - override /data: xray\nepochs: 2\n")
    assert searchpath.user_searched() == tmp_path / "conf"
    assert f"1. your presets: {tmp_path / 'conf'}" in searchpath.describe() and "searched first" in \
        searchpath.describe()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=["data=xray", "strategy=finetune"])
        assert (cfg.data.name, cfg.data.root, cfg.data.shots) == ("imagefolder", "/data/xray", 5)
        quick = compose("config", overrides=["experiment=quickstart"])
        assert (quick.epochs, quick.data.root) == (2, "/data/xray")
    # without the folder, the package's own quickstart
    monkeypatch.chdir(REPO)
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        assert compose("config", overrides=["experiment=quickstart"]).epochs == 5


def test_the_folder_can_be_named_and_another_app_is_left_alone(tmp_path, monkeypatch):
    presets = _preset(tmp_path / "presets", "model/mine.yaml",
                      "defaults: [efficientnet_lite0]\nweights: null\n").parents[1]
    monkeypatch.setenv(searchpath.ENV, str(presets))
    monkeypatch.chdir(tmp_path)
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=["model=mine"])
    assert (cfg.model.arch, cfg.model.weights) == ("tf_efficientnet_lite0", None)
    other = _preset(tmp_path / "other", "app.yaml", "x: 1\n").parent
    from hydra._internal.utils import create_config_search_path

    paths = [e.path for e in create_config_search_path(str(other)).get_path()]
    assert not any(str(presets) in p for p in paths)  # a Hydra app that is not tlsweep gets no tlsweep folder


@pytest.mark.parametrize("text, error, key", [
    ("defaults: [imagefolder]\nroot: /x\nimage_size: big\n", "ValidationError", "data.image_size"),
    ("defaults: [imagefolder]\nroot: /x\ncolour: red\n", "ConfigKeyError", "data.colour"),
])
def test_a_user_preset_that_fails_the_schema_is_refused_naming_the_key_and_the_file(tmp_path, monkeypatch, text,
                                                                                      error, key):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(searchpath.ENV, raising=False)
    path = _preset(tmp_path / "conf", "data/xray.yaml", text)
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        with pytest.raises(ConfigCompositionException) as refused:
            compose("config", overrides=["data=xray"])
    assert str(refused.value).startswith(f"In 'data/xray': {error} raised") and f"full_key: {key}\n" in \
        str(refused.value)
    # the CLI adds the file to Hydra's message
    assert searchpath.presets_in_play(["-m", "data=xray,digits", "seed=1"]) == \
        [f"tlsweep: data=xray is your preset {path}"]


def test_a_preset_that_replaces_a_default_is_named_too(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(searchpath.ENV, raising=False)
    path = _preset(tmp_path / "conf", "model/resnet18.yaml", "arch: 3\n")
    assert searchpath.default_choices()["model"] == "resnet18"
    assert searchpath.presets_in_play(["strategy=probe"]) == [f"tlsweep: model=resnet18 is your preset {path}"]
    assert searchpath.presets_in_play(["model=resnet50"]) == []


def test_a_folder_that_would_replace_the_primary_config_is_refused(tmp_path):
    folder = tmp_path / "conf"
    _preset(folder, "config.yaml", "lr: 1\n")
    refused = searchpath.clash(folder)
    assert str(folder) in refused and "config.yaml" in refused and searchpath.ENV in refused
    assert searchpath.clash(tmp_path / "nothing") is None


# ---- the installed wheel, from an empty folder (full tier) ------------------------------------------------

def _wheel(tmp_path: Path) -> Path:
    """The wheel .ci/run built (TLSWEEP_WHEEL), else one built here."""
    if os.environ.get("TLSWEEP_WHEEL"):
        return Path(os.environ["TLSWEEP_WHEEL"])
    out, src = tmp_path / "dist", tmp_path / "src"
    # built from a copy: setuptools leaves build/ and an .egg-info in the tree it builds
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", ".cache", "mlruns",
                                                             "outputs", "reports", "__pycache__", ".device"))
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(src)], check=True,
                   capture_output=True)
    return next(out.glob("tlsweep-*.whl"))


@pytest.mark.slow
def test_the_wheel_installed_elsewhere_runs_the_quickstart_a_user_preset_and_the_report(tmp_path):
    wheel = _wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    conf_files = {f"tlsweep/conf/{p.relative_to(CONF)}" for p in CONF.rglob("*") if p.is_file()}
    assert conf_files and conf_files <= set(names)  # every file under conf/
    assert {"hydra_plugins/tlsweep_sweeper.py", "hydra_plugins/tlsweep_slurm.py", "hydra_plugins/tlsweep_advisor.py",
            "hydra_plugins/tlsweep_searchpath.py"} <= set(names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)

    # a fresh environment that reuses the installed torch and the rest; tlsweep itself only from the wheel
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", str(wheel)], check=True)
    work = tmp_path / "project"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TLSWEEP_", "MLFLOW_", "PYTHONPATH"))}
    env["PATH"] = f"{env_dir / 'bin'}:{env['PATH']}"

    def tlsweep_cli(*args: str) -> subprocess.CompletedProcess:
        p = subprocess.run([str(env_dir / "bin" / "tlsweep"), *args], cwd=work, env=env, capture_output=True,
                           text=True, timeout=600)
        assert p.returncode == 0, (args, p.stdout[-2000:], p.stderr[-3000:])
        return p

    where = subprocess.run([py, "-c", "import tlsweep, hydra_plugins.tlsweep_sweeper as s, tlsweep.config.searchpath as c;"
                            "print(tlsweep.__file__, s.__file__, c.CONF, sep='\\n')"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(w.startswith(str(env_dir)) for w in where), where  # nothing from the clone

    assert tlsweep_cli("--version").stdout == f"tlsweep {tlsweep.__version__}\n"
    help_text = tlsweep_cli("--help").stdout
    assert f"1. your presets: {work / 'conf'}" in help_text and f"2. tlsweep's own: {where[2]}" in help_text

    quick = tlsweep_cli("-m", "experiment=quickstart", "epochs=1", "seed=0", "tracking.sweep_name=quick")
    uri = f"sqlite:///{work}/mlruns/mlflow.db"
    assert f"mlflow ui --backend-store-uri {uri}" in quick.stdout  # the store sits where the user runs
    assert (work / "reports" / "quick").is_dir() and (work / "outputs").is_dir()

    # a data preset and an experiment preset of the user's, beside the data
    _preset(work / "conf", "data/mydigits.yaml", "defaults: [digits]\nshots: 10\n")
    _preset(work / "conf", "experiment/mine.yaml",
            "# @package _global_\ndefaults:\n  - override /data: mydigits\n  - override /model: efficientnet_lite0\n"
            "  - override /strategy: probe\nepochs: 1\n")
    tlsweep_cli("experiment=mine")

    report = subprocess.run([py, "-m", "tlsweep.report", "sweep=quick"], cwd=work, env=env, capture_output=True,
                            text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "| probe" in report.stdout and f"{work / 'reports' / 'quick'}" in report.stdout.replace(
        "Report written to reports/", f"Report written to {work}/reports/")

    runs = subprocess.run([py, "-c", "import mlflow, json; print(json.dumps([{**r.data.params, **r.data.tags} "
                           "for r in mlflow.search_runs(search_all_experiments=True, output_format='list')]))"],
                          cwd=work, env={**env, "MLFLOW_TRACKING_URI": uri}, capture_output=True, text=True,
                          check=True).stdout
    import json

    rows = json.loads(runs)
    assert len(rows) == 6  # the quickstart's parent and its 4 jobs, the preset's run
    assert {r.get("tlsweep.version") for r in rows} == {tlsweep.__version__}  # the parent's too
    assert not any("mlflow.source.git.commit" in r for r in rows)  # a wheel has no commit of its own to record
    jobs = [r for r in rows if r.get("tlsweep.role") == "job"]
    assert sorted((r["strategy.name"], r["data.shots"]) for r in jobs) == \
        [("finetune", "None"), ("partial", "None"), ("probe", "10"), ("probe", "None"), ("scratch", "None")]
