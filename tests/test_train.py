"""The training loop: it learns what a strategy lets train, reports every split it is given, and stops a
run whose loss is not finite, on the training or the validation side."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tlsweep.config.errors import Diverged
from tlsweep.runtime import Loaders
from tlsweep.training.loop import fit


class NanInEval(nn.Module):
    """Finite logits while training, NaN in eval: a run that only the validation loss exposes."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        out = self.fc(x)
        return out if self.training else out * float("nan")


def _loader(seed: int = 0, batches: int = 2):
    """Two separable classes: the label is the sign of the first feature."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batches):
        x = torch.randn(8, 4, generator=g)
        out.append((x, (x[:, 0] > 0).long()))
    return out


def test_a_nan_validation_loss_fails_the_run():
    model = NanInEval()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(Diverged, match="non-finite validation loss"):
        fit(model, Loaders(_loader(), _loader(1)), opt, None, epochs=2)


def test_a_finite_run_learns_and_reports_each_epoch_and_split():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    logged = {}
    result = fit(model, Loaders(_loader(0, 8), _loader(1), _loader(2)), torch.optim.SGD(model.parameters(), lr=0.5),
                 None, epochs=5, first_epoch=3, on_epoch=lambda e, m: logged.__setitem__(e, m))
    assert list(logged) == [3, 4, 5, 6, 7]  # numbered from first_epoch, as a phased strategy's later segment
    losses = [m["train_loss"] for m in logged.values()]
    assert losses[-1] < 0.5 * losses[0], losses  # it learned the rule...
    assert result["final_val_acc"] >= 0.9 and result["select_acc"] >= 0.9, result  # ...and it holds on held-out data
    assert result["final_val_acc"] == logged[7]["val_acc"] and result["select_acc"] == logged[7]["select_acc"]
    assert result["best_val_acc"] == max(m["val_acc"] for m in logged.values())
    assert logged[3]["lr/0"] == 0.5  # an unnamed param group logs its LR by index
