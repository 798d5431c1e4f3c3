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
    for key, value in _leaves(text):
        assert OmegaConf.select(cfg, key) == value, (key, value, OmegaConf.select(cfg, key))
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
                 "strategy: auto_rgn, bitfit, finetune, gradual, l2sp, llrd, lpft, norm, partial, probe, scratch",
                 "model: ", "mlruns/mlflow.db"):
        assert want in p.stdout, want
