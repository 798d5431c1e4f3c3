"""The training loop stops a run whose loss is not finite, on the training or the validation side."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tlsweep.errors import Diverged
from tlsweep.train import fit


class NanInEval(nn.Module):
    """Finite logits while training, NaN in eval: a run that only the validation loss exposes."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        out = self.fc(x)
        return out if self.training else out * float("nan")


def _loader():
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 4, generator=g), torch.randint(0, 2, (8,), generator=g)) for _ in range(2)]


def test_a_nan_validation_loss_fails_the_run():
    model = NanInEval()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(Diverged, match="non-finite validation loss"):
        fit(model, _loader(), _loader(), opt, None, epochs=2, device=torch.device("cpu"))


def test_a_finite_run_is_not_stopped():
    model = nn.Linear(4, 2)
    result = fit(model, _loader(), _loader(), torch.optim.SGD(model.parameters(), lr=0.1), None, epochs=2,
                 device=torch.device("cpu"))
    assert 0 <= result["final_val_acc"] <= 1
