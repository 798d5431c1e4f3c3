"""Transferability scores on every frozen pass, and the `score` rung that computes only them."""
from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient
from torchvision.transforms import InterpolationMode

from tlsweep.features import scores as feature_scores, cache as features, measures as scores
from tlsweep.models import Preprocess
from tlsweep.run import run
from tlsweep.runtime import Runtime

SCORE_METRICS = {f"{p}{n}" for p in (feature_scores.PREFIX, feature_scores.SECONDS_PREFIX)
                 for n in feature_scores.NAMES}


def _last_run(store_uri):
    client = MlflowClient(store_uri)
    exp = client.get_experiment_by_name("tlsweep")
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]


@pytest.fixture
def counted(monkeypatch, tmp_path):
    """Fresh memos and cache folder, and a count of LogME's calls (feature_scores looks it up per call)."""
    monkeypatch.setattr(feature_scores, "_MEMO", {})
    monkeypatch.setattr(features, "_MEMO", {})  # else the features of an earlier test come from memory, unsaved
    calls = []
    real = scores.logme

    def logme(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(scores, "logme", logme)
    return calls, f"cache_dir={tmp_path / 'cache'}"


def test_score_trains_nothing_and_logs_the_three_scores(make_cfg, store_uri, counted, monkeypatch):
    calls, cache = counted
    stepped = []
    monkeypatch.setattr(torch.optim.Optimizer, "step", lambda *a, **k: stepped.append(1))
    result = run(make_cfg("model=efficientnet_lite0", "strategy=score", "epochs=3", cache))
    r = _last_run(store_uri)
    m = r.data.metrics
    assert r.info.status == "FINISHED" and r.data.params["strategy.name"] == "score"
    assert SCORE_METRICS <= set(m) and SCORE_METRICS <= set(result)
    assert not stepped and len(calls) == 1
    assert m["trainable_params"] == 0 and not any("acc" in k and not k.startswith("score") for k in m), sorted(m)
    assert -1e3 < m["score/logme"] < 1e3 and 0 <= m["score/knn_acc"] <= 1 and 0 <= m["score/ncc_acc"] <= 1
    assert all(m[f"score_seconds/{n}"] >= 0 for n in feature_scores.NAMES)
    assert "seconds/scores" in m and "seconds/train" not in m
    assert r.data.tags["tlsweep.scores"].startswith("computed")
    assert "train, leave-one-out" in r.data.tags["tlsweep.scores"]  # the tiny data has no selection split
    # one augmented view: no epoch will read a second one
    assert "1 augmented train views" in r.data.tags["tlsweep.fast.features"]


def test_a_probe_logs_the_scores_and_its_next_seeds_reuse_them(make_cfg, store_uri, counted):
    calls, cache = counted
    first = run(make_cfg("model=efficientnet_lite0", "strategy=probe", "seed=0", cache))
    assert len(calls) == 1 and SCORE_METRICS <= set(_last_run(store_uri).data.metrics)
    second = run(make_cfg("model=efficientnet_lite0", "strategy=probe", "seed=1", "optim.lr=3e-3", cache))
    assert len(calls) == 1 and _last_run(store_uri).data.tags["tlsweep.scores"].startswith("memory")
    feature_scores._MEMO.clear()  # another process of the sweep: the file beside the features
    third = run(make_cfg("model=efficientnet_lite0", "strategy=probe", "seed=2", cache))
    r = _last_run(store_uri)
    assert len(calls) == 1 and r.data.tags["tlsweep.scores"].startswith("disk")
    for key in SCORE_METRICS:  # the same numbers, including what computing them took
        assert first[key] == second[key] == third[key] == r.data.metrics[key]


def test_with_a_selection_split_knn_and_ncc_are_scored_on_it(make_cfg, store_uri, counted):
    _, cache = counted
    run(make_cfg("model=efficientnet_lite0", "strategy=score", "data.select_fraction=0.5", cache))
    assert "scored on the selection split" in _last_run(store_uri).data.tags["tlsweep.scores"]


def test_a_feature_entry_saved_without_scores_still_loads(make_cfg, store_uri, counted, tmp_path):
    calls, cache = counted
    run(make_cfg("model=efficientnet_lite0", "strategy=probe", cache))
    for f in (tmp_path / "cache").glob("scores-*.pt"):  # as an entry written before scores existed
        f.unlink()
    feature_scores._MEMO.clear()
    features._MEMO.clear()
    run(make_cfg("model=efficientnet_lite0", "strategy=probe", "seed=1", cache))
    r = _last_run(store_uri)
    assert "run once (disk)" in r.data.tags["tlsweep.fast.features"] and len(calls) == 2
    assert list((tmp_path / "cache").glob("scores-*.pt"))


def test_a_run_cut_below_a_stage_has_no_head_features_to_score(make_cfg, store_uri, counted):
    calls, cache = counted
    run(make_cfg("model=efficientnet_lite0", "strategy=partial", cache))  # cached below its last stage only
    assert not calls and not SCORE_METRICS & set(_last_run(store_uri).data.metrics)


def test_the_cache_key_of_an_entry_on_disk_is_unchanged(monkeypatch):
    """An fp32 entry written before the key became `entry_key` must still be found: the same parts, the same
    hash (torch's version is one of the parts, pinned here so that the golden value holds on any install)."""
    monkeypatch.setattr(torch, "__version__", "2.14.1")
    pp = Preprocess(resize=256, crop=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                    interpolation=InterpolationMode.BICUBIC)
    key = features.entry_key(["efficientnet_lite0", "tf_efficientnet_lite0", "w", "head", 10, "bf16=False", "a", "b"],
                             5, pp, Runtime(torch.device("cpu")))
    assert key == "744d8d87d24cb1574ccc582686e37ad7bf64a932d922ab52c45785bf01a8d586"  # the inline hash's, before


def test_scores_of_a_selection_split_are_scored_on_it():
    rng = torch.Generator().manual_seed(0)
    train, select = torch.randn(40, 8, generator=rng), torch.randn(10, 8, generator=rng)
    y, sy = torch.arange(40) % 2, torch.arange(10) % 2
    s = feature_scores.of(feature_scores.HeadInputs("k-select", train, y, select, sy), None)
    assert s.scored_on == "the selection split" and s.source == "computed"
    assert s.values["knn_acc"] == scores.knn_acc(train.numpy(), y.numpy(), select.numpy(), sy.numpy())
    assert s.values["logme"] == scores.logme(train.numpy(), y.numpy())
