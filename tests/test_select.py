"""Model selection that never touches the scored split: the selection split, its metrics, `report select=`."""
from __future__ import annotations

import math
import shutil
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from tests.test_report import _assert_row, _expected_gap, _expected_stats
from tlsweep.data import pipeline as D
from tlsweep.report import ReportError, make_report
from tlsweep.run import run


def test_selection_split_is_held_out_of_train_stratified_and_fixed(make_cfg):
    full = D.load(make_cfg().data)
    assert full.select is None  # default: the ladder keeps its training set
    cfg = make_cfg("data.select_fraction=0.5", "seed=3")
    data = D.load(cfg.data)
    sel, train, val = set(data.select.items), set(data.train.items), set(data.val.items)
    assert sel and not sel & train and not sel & val  # never trained on, never scored
    assert sel | train == set(full.train.items)
    assert Counter(data.select.targets) == {0: 3, 1: 3}  # 6 per class, half of each held out
    assert all(full.train.targets[full.train.items.index(p)] == t for p, t in zip(data.select.items, data.select.targets))
    for seed in (0, 7):  # the run's seed does not move it
        assert D.load(make_cfg("data.select_fraction=0.5", f"seed={seed}").data).select.items == data.select.items
    assert "0.5 of train held out" in data.select_from and f"seed {D.SELECT_SEED}" in data.select_from


def test_a_selection_draw_per_run_seed_pairs_configs_by_seed_and_keeps_seed_0s_draw(make_cfg):
    """data.select_seed=${seed}: each seed holds out its own draw (stratified, disjoint from train and val), the
    same for every config of that seed, and seed 0's is the fixed draw, so runs made without it stay comparable."""
    fixed = D.load(make_cfg("data.select_fraction=0.5").data)
    draws = {}
    for seed in (0, 1, 2):
        data = D.load(make_cfg("data.select_fraction=0.5", "data.select_seed=${seed}", f"seed={seed}",
                               "optim.lr=0.01").data)
        assert Counter(data.select.targets) == {0: 3, 1: 3} and not set(data.select.items) & set(data.train.items)
        assert set(data.select.items) | set(data.train.items) == set(fixed.select.items) | set(fixed.train.items)
        assert f"seed {seed}" in data.select_from
        draws[seed] = data.select.items
        again = D.load(make_cfg("data.select_fraction=0.5", "data.select_seed=${seed}", f"seed={seed}",
                                "strategy=probe").data)
        assert again.select.items == data.select.items  # another config, the same seed: paired on the same draw
    assert draws[0] == fixed.select.items
    assert draws[1] != draws[0] and draws[2] not in (draws[0], draws[1])


def test_selection_split_comes_before_shots(make_cfg):
    data = D.load(make_cfg("data.select_fraction=0.5", "data.shots=2").data)
    assert Counter(data.train.targets) == {0: 2, 1: 2} and len(data.select.items) == 6
    assert not set(data.select.items) & set(data.train.items)


@pytest.mark.parametrize("overrides, path", [
    (["strategy=probe"], "features"),  # cached frozen-prefix features
    (["strategy=finetune"], "images"),  # decoded images
    (["strategy=finetune", "data.cache=false"], "streaming"),  # plain DataLoaders
])
def test_select_metrics_are_logged_each_epoch_and_at_the_end(make_cfg, store_uri, overrides, path):
    cfg = make_cfg("model=efficientnet_lite0", "epochs=2", "data.select_fraction=0.5", *overrides)
    result = run(cfg)
    client = MlflowClient(store_uri)
    exp = client.get_experiment_by_name("tlsweep")
    r = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
    tags = r.data.tags
    assert tags["tlsweep.fast.features"].startswith("on") == (path == "features")
    assert tags["tlsweep.fast.decode_once"].startswith("on") == (path != "streaming")
    assert "0.5 of train held out" in tags["tlsweep.data.select"]
    history = {k: [(m.step, m.value) for m in client.get_metric_history(r.info.run_id, k)]
               for k in ("select_acc", "select_loss", "val_acc")}
    for key in ("select_acc", "select_loss"):
        assert [s for s, _ in history[key]] == [1, 2], key
    assert all(math.isfinite(v) for _, v in history["select_loss"])
    # 6 selection images: an accuracy is a multiple of 1/6, and the run says how many (the advisor's caution)
    assert r.data.metrics["select_images"] == 6
    assert all(abs(v * 6 - round(v * 6)) < 1e-9 for _, v in history["select_acc"])
    assert result["select_acc"] == r.data.metrics["select_acc"] == dict(history["select_acc"])[2]


def test_no_selection_split_logs_no_select_metrics(make_cfg, store_uri):
    result = run(make_cfg("model=efficientnet_lite0", "strategy=probe"))
    assert "select_acc" not in result
    client = MlflowClient(store_uri)
    exp = client.get_experiment_by_name("tlsweep")
    r = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert "select_acc" not in r.data.metrics and "null" in r.data.tags["tlsweep.data.select"]
    assert "select_images" not in r.data.metrics


# --- the report ---------------------------------------------------------------------------------
# strategy x lr x 3 seeds. The selection split prefers lr 0.01 for finetune and 1e-3 for probe;
# the scored split would prefer the other one, so selecting on val gives a different answer.
SELECT = {("finetune", "0.01"): 0.80, ("finetune", "1e-3"): 0.70,
          ("probe", "0.01"): 0.60, ("probe", "1e-3"): 0.65,
          ("scratch", "0.01"): 0.50, ("scratch", "1e-3"): 0.55}
SCORED = {("finetune", "0.01"): 0.72, ("finetune", "1e-3"): 0.78,
          ("probe", "0.01"): 0.69, ("probe", "1e-3"): 0.62,
          ("scratch", "0.01"): 0.58, ("scratch", "1e-3"): 0.52}
_rng = np.random.default_rng(11)
RUNS = [(s, lr, seed, SELECT[s, lr] + float(_rng.normal(0, 0.01)), SCORED[s, lr] + float(_rng.normal(0, 0.02)))
        for s, lr in SELECT for seed in range(3)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("select")
    uri = f"sqlite:///{tmp}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("tlsweep")
    for k, (name, with_split) in enumerate([("no-split", False), ("with-split", True)]):
        parent = client.create_run(exp, run_name=name, start_time=1_790_000_000_000 + k * 3_600_000,
                                   tags={"tlsweep.role": "sweep", "tlsweep.sweep_name": name})
        for i, (s, lr, seed, sel, scored) in enumerate(RUNS):
            run_ = client.create_run(exp, run_name=f"{name}-{i}", tags={"mlflow.parentRunId": parent.info.run_id})
            metrics = [Metric("final_val_acc", scored, 0, 3)] + ([Metric("select_acc", sel, 0, 3)] if with_split else [])
            params = {"strategy.name": s, "optim.lr": lr, "seed": seed, "data.select_fraction": 0.2 if with_split else None}
            client.log_batch(run_.info.run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()])
            client.set_terminated(run_.info.run_id, "FINISHED")
        client.set_terminated(parent.info.run_id, "FINISHED")
    yield uri, tmp
    shutil.rmtree(tmp, ignore_errors=True)


def _scored(strategy, lr):
    return [scored for s, lr_, seed, _, scored in RUNS if (s, lr_) == (strategy, lr)]


def test_select_picks_per_group_on_the_selection_split(store):
    uri, tmp = store
    report = make_report(uri, sweep="with-split", select=["lr"], out=tmp / "sel")
    chosen = {"scratch": "1e-3", "probe": "1e-3", "finetune": "0.01"}  # best mean select_acc, not final_val_acc
    selected = pd.read_csv(tmp / "sel" / "selected.csv", dtype={"optim.lr": str})
    assert list(selected.columns) == ["strategy.name", "optim.lr", "selection_mean", "selection_n",
                                      "selection_metric", "selected_on"]
    assert dict(zip(selected["strategy.name"], selected["optim.lr"])) == chosen
    for _, row in selected.iterrows():
        sel = [v for s, lr, _, v, _ in RUNS if (s, lr) == (row["strategy.name"], row["optim.lr"])]
        assert row["selection_mean"] == pytest.approx(np.mean(sel)) and row["selection_n"] == 3
    assert set(selected["selection_metric"]) == {"select_acc"} and set(selected["selected_on"]) == {"select"}

    assert report.by == ["strategy.name"]
    summary = report.summary.set_index("strategy.name")
    for s, lr in chosen.items():  # the scored metric at the selected value, with its interval
        assert summary.loc[s, "optim.lr"] == lr
        _assert_row(summary.loc[s], _expected_stats(_scored(s, lr)))
    gaps = report.gaps.set_index("strategy.name")  # each group at its own selected value, paired by seed
    for s in ("probe", "finetune"):
        _assert_row(gaps.loc[s], _expected_gap(_scored(s, chosen[s]), _scored("scratch", chosen["scratch"])))
    assert "p_holm" in gaps.columns
    md = report.markdown
    assert "| strategy | learning rate | n |" in md and "| finetune | 0.01 | 3 |" in md
    assert "on the selection split" in md and "optimistic" not in md
    assert "9 of 18 runs" in md
    runs = pd.read_csv(tmp / "sel" / "runs.csv")
    assert runs["used"].sum() == 9 and "select_acc" in runs.columns


def test_select_without_a_selection_split_refuses_unless_select_on_val(store):
    uri, tmp = store
    with pytest.raises(ReportError, match=r"data.select_fraction.*select_on=val"):
        make_report(uri, sweep="no-split", select=["optim.lr"], out=tmp / "refused")
    assert not (tmp / "refused").exists()
    report = make_report(uri, sweep="no-split", select=["optim.lr"], select_on="val", out=tmp / "on-val")
    chosen = {"scratch": "0.01", "probe": "0.01", "finetune": "1e-3"}  # the best scored mean: optimistic
    assert dict(zip(report.selected["strategy.name"], report.selected["optim.lr"])) == chosen
    assert "optimistic" in report.markdown and "optimistic" in (tmp / "on-val" / "summary.tex").read_text()
    with pytest.raises(ReportError, match="select_on='test'"):
        make_report(uri, sweep="with-split", select=["optim.lr"], select_on="test", out=tmp / "bad")


@pytest.mark.slow
def test_select_cli_writes_its_own_folder(store, tmp_path, monkeypatch):
    import subprocess
    import sys

    uri, _ = store
    p = subprocess.run([sys.executable, "-m", "tlsweep.report", f"tracking.uri={uri}", "sweep=with-split",
                        "select=[optim.lr]"], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "reports" / "with-split" / "final_val_acc_select_optim.lr" / "selected.csv").is_file()
    p = subprocess.run([sys.executable, "-m", "tlsweep.report", f"tracking.uri={uri}", "sweep=no-split",
                        "select=[optim.lr]"], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 2 and "select_on=val" in p.stderr and "Traceback" not in p.stderr
