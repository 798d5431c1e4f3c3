"""The README's quickstart numbers come from the code as it is: one quickstart run, checked to the
digit against the line the README prints (a change that moves it must update both together)."""
from __future__ import annotations

import re

import pytest
from hydra import compose, initialize_config_dir

from tests.conftest import CONF, REPO
from tlsweep.run import run

pytestmark = pytest.mark.slow

# the line of README.md "Expected numbers" that this test holds to the code
GOLDEN = re.compile(r"quickstart's `strategy=finetune seed=0` run ends at final_val_acc = (\d\.\d{4})")


def test_the_quickstart_number_in_the_readme_is_what_the_code_gives(tmp_path):
    found = GOLDEN.search((REPO / "README.md").read_text())
    assert found, "README.md lost its golden quickstart line"
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=["experiment=quickstart", "strategy=finetune", "seed=0", "device=cpu",
                                           "bf16=false",  # fp32: bf16=auto would differ between CPUs
                                           f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", "cache_dir=null"])
    assert cfg.epochs == 5 and cfg.data.name == "digits" and cfg.model.name == "efficientnet_lite0"
    assert f"{run(cfg)['final_val_acc']:.4f}" == found.group(1)
