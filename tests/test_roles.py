"""Split roles: a dataset with official val and test splits trains on train, selects on val and is
scored on test; the run's metrics carry the scored split's real name, and the report follows."""
from __future__ import annotations

import dataclasses

import pytest
from mlflow import MlflowClient

from tlsweep.data import pipeline as D
from tlsweep.config.errors import DataError
from tlsweep.report import make_report
from tlsweep.run import run


@pytest.fixture
def with_test_split(monkeypatch):
    """imagefolder as a dataset with an official val (selects) and test (scores): val/ plays both here,
    which is enough to check the roles' plumbing."""
    def load(cfg):
        folder = D.image_folder(cfg.root)
        return dataclasses.replace(folder, name="withtest", scored="test", select=folder.val,
                                   select_from="the official val split", val_from="the official test split")
    monkeypatch.setitem(D.DATASETS, "imagefolder", load)


def test_a_test_split_is_scored_and_named_so(make_cfg, store_uri, with_test_split):
    cfg = make_cfg("model=timm", "model.arch=resnet10t", "model.weights=null", "strategy=probe", "epochs=2",
                   "tracking.sweep_name=roles")
    result = run(cfg)
    assert "final_test_acc" in result and "final_val_acc" not in result and "best_test_acc" in result
    client = MlflowClient(store_uri)
    exp = client.get_experiment_by_name("tlsweep")
    r = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
    m = r.data.metrics
    assert {"final_test_acc", "best_test_acc", "test_acc", "test_loss", "select_acc"} <= set(m)
    assert not {"final_val_acc", "val_acc", "val_loss"} & set(m)
    assert [h.step for h in client.get_metric_history(r.info.run_id, "test_acc")] == [1, 2]
    # val selects, test scores (the same images in this fixture, so the same accuracy)
    assert m["select_acc"] == pytest.approx(m["test_acc"])
    assert r.data.tags["tlsweep.data.select"] == "the official val split"


def test_select_fraction_is_refused_when_the_dataset_has_its_own_selection_split(make_cfg, with_test_split):
    with pytest.raises(DataError, match="has its own selection split"):
        D.load(make_cfg("data.select_fraction=0.2").data)


def test_the_report_scores_the_test_split_by_default(make_cfg, store_uri, with_test_split, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for strategy in ("probe", "finetune"):
        run(make_cfg("model=timm", "model.arch=resnet10t", "model.weights=null", f"strategy={strategy}"))
    client = MlflowClient(store_uri)
    exp = client.get_experiment_by_name("tlsweep")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=2)
    parent = client.create_run(exp.experiment_id, run_name="roles-sweep", tags={"tlsweep.role": "sweep"}).info.run_id
    for r in runs:
        client.set_tag(r.info.run_id, "mlflow.parentRunId", parent)
    client.set_terminated(parent)
    rep = make_report(store_uri, sweep="roles-sweep", out=tmp_path / "rep")
    assert rep.metric == "final_test_acc" and "final test accuracy" in rep.markdown
