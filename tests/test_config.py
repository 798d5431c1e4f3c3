"""The real config composes, presets come through whole, and `--help` is tlsweep's own."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tests.conftest import CONF, REPO

PRESETS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def _leaves(node, prefix=""):
    """(dotted key, value) of every leaf a preset sets, sweeper params as whole strings."""
    if isinstance(node, dict) and not prefix.endswith("sweeper.params."):
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}{k}.")
    elif isinstance(node, dict):  # hydra.sweeper.params: key -> sweep string
        for k, v in node.items():
            yield f"{prefix}{k}", v
    else:
        yield prefix[:-1], node


@pytest.mark.parametrize("preset", PRESETS)
def test_every_key_a_preset_sets_comes_through(preset):
    """With `_self_` after the preset in the defaults list, config.yaml silently won over the
    preset's `epochs: 5`. Every key and every group override of each preset must survive."""
    text = yaml.safe_load((CONF / "experiment" / f"{preset}.yaml").read_text())
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=[f"experiment={preset}"], return_hydra_config=True)
    checked = 0
    for entry in text.pop("defaults", []):
        for key, option in entry.items():  # "override /data": digits
            group = key.removeprefix("override ").strip("/")
            assert cfg.hydra.runtime.choices[group] == option, (group, option)
            assert OmegaConf.select(cfg, f"{group}.name") == option  # the group's config is the option's
            checked += 1
    swept = "hydra.sweeper.params."
    for key, value in _leaves(text):
        # a swept key is itself dotted (data.shots): look it up whole, not as a path
        found = cfg.hydra.sweeper.params.get(key.removeprefix(swept)) if key.startswith(swept) else \
            OmegaConf.select(cfg, key)
        assert found == value, (key, value, found)
        checked += 1
    assert checked >= 2


def test_quickstart_runs_its_own_epochs():
    """The defect that started this: the quickstart said 5 epochs and ran 10."""
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        assert compose("config", overrides=["experiment=quickstart"]).epochs == 5
        assert compose("config").epochs == 10


def test_help_is_tlsweeps_own():
    p = subprocess.run([sys.executable, "-m", "tlsweep", "--help"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert "powered by Hydra" not in p.stdout
    for want in ("transfer-learning", "python -m tlsweep -m experiment=quickstart", "python -m tlsweep.report",
                 "strategy: auto_rgn, bitfit, dora, finetune, gradual, l2sp, llrd, lora, lpft, norm, partial, probe, score, scratch",
                 "experiment=advise",
                 "model: clip_vitb16, convnext_tiny, convnextv2_tiny, dinov2_vits14, efficientnet_lite0",
                 "model=timm model.arch=", 'pip install -e ".[peft]"', "mlruns/mlflow.db"):
        assert want in p.stdout, want


def test_the_flowchart_sweeps_datasets_with_one_data_root():
    """`experiment=flowchart data.root=...` must compose for every dataset the preset sweeps: a
    dataset config without a `root` key would fail those jobs only, mid-sweep."""
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        params = compose("config", overrides=["experiment=flowchart"], return_hydra_config=True).hydra.sweeper.params
        datasets = params["data"].split(",")
        assert len(datasets) >= 2 and "hymenoptera" in datasets and len(params["data.shots"].split(",")) >= 2
        for dataset in datasets:
            cfg = compose("config", overrides=["experiment=flowchart", f"data={dataset}", "data.root=/elsewhere",
                                               "data.shots=10"])
            assert (cfg.data.name, cfg.data.root, cfg.data.shots) == (dataset, "/elsewhere", 10)


def test_help_and_composing_import_no_heavy_module():
    """`--help`, composing a config and refusing a bad one must not pay for torch, timm or MLflow (seconds
    each): the job's code loads when the first job starts."""
    code = ("import sys, runpy; sys.argv = ['tlsweep', '--help']\n"
            "try:\n    runpy.run_module('tlsweep', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'torchvision', 'timm', 'mlflow', 'matplotlib', 'pandas', 'scipy')"
            " if m in sys.modules), file=sys.stderr)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "tlsweep: how much does transfer learning buy" in p.stdout  # the help was printed
    assert p.stderr.strip().splitlines()[-1] == "[]", p.stderr[-2000:]
