"""The names runs, sweeps and the report share (tlsweep/config/keys.py): one rule each, torch-free."""
from __future__ import annotations

import subprocess
import sys

from tlsweep.config.keys import STRATEGIES, is_seed, short_labels


def test_the_seed_rule_is_a_seed_key_not_any_word_ending_in_seed():
    assert [k for k in ("seed", "data.shots_seed", "optim.seed", "data.reseed", "linseed", "seeds")
            if is_seed(k)] == ["seed", "data.shots_seed", "optim.seed"]


def test_labels_show_a_choice_bare_and_a_shared_last_part_in_full():
    assert short_labels([("model.name", "resnet18"), ("optim.lr", 0.001), ("strategy.alpha", 0.1),
                         ("optim.alpha", 0.9)]) == ["resnet18", "lr=0.001", "strategy.alpha=0.1", "optim.alpha=0.9"]
    assert short_labels([("optim.lr", "3e-4")], " ") == ["lr 3e-4"]


def test_the_ladder_comes_first_and_no_strategy_twice():
    assert STRATEGIES[:4] == ("scratch", "probe", "partial", "finetune")
    assert len(set(STRATEGIES)) == len(STRATEGIES)


def test_the_shared_names_load_without_torch_or_pandas():
    code = "import sys, tlsweep.config.keys; print(sorted(m for m in ('torch', 'pandas', 'mlflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
