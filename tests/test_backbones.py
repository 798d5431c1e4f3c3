"""The backbone table against known answers: a store of score, probe and finetune runs whose values we choose."""
from __future__ import annotations

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from scipy import stats

from tlsweep.report import make_report
from tlsweep.report import backbones as bb

T0 = 1_800_000_000_000
SEEDS = (0, 1, 2)
# backbone (name, weights) -> per seed: LogME, k-NN, NCC (a random init differs per seed), probe and finetune accuracy
TRUTH = {
    ("efficientnet_lite0", "DEFAULT"): dict(logme=[0.50] * 3, knn=[0.90] * 3, ncc=[0.88] * 3,
                                            probe=[0.90, 0.92, 0.91], finetune=[0.93, 0.94, 0.92]),
    ("efficientnet_lite1", "DEFAULT"): dict(logme=[0.70] * 3, knn=[0.93] * 3, ncc=[0.90] * 3,
                                            probe=[0.93, 0.95, 0.94], finetune=[0.92, 0.93, 0.94]),
    ("efficientnet_lite2", "DEFAULT"): dict(logme=[0.60] * 3, knn=[0.95] * 3, ncc=[0.92] * 3,
                                            probe=[0.94, 0.96, 0.95], finetune=[0.95, 0.96, 0.97]),
    ("efficientnet_lite0", "None"): dict(logme=[-0.20, -0.25, -0.22], knn=[0.60, 0.55, 0.62], ncc=[0.58, 0.60, 0.57],
                                         probe=[0.60, 0.62, 0.58], finetune=[0.70, 0.68, 0.72]),
}
SCORE_KEYS = {"logme": "score/logme", "knn": "score/knn_acc", "ncc": "score/ncc_acc"}


def _sweep(client, exp, name, start, strategies):
    parent = client.create_run(exp, run_name=name, start_time=start,
                               tags={"tlsweep.role": "sweep", "tlsweep.sweep_name": name})
    i = 0
    for (model, weights), truth in TRUTH.items():
        for strategy in strategies:
            for seed in SEEDS:
                i += 1
                run = client.create_run(exp, run_name=f"{name}-{i}", start_time=start + i,
                                        tags={"mlflow.parentRunId": parent.info.run_id, "tlsweep.role": "job",
                                              "tlsweep.config_key": f"{model}-{weights}-{strategy}-{seed}"})
                params = {"model.name": model, "model.weights": weights, "strategy.name": strategy, "seed": seed,
                          "task": "hymenoptera", "data.name": "hymenoptera", "optim.lr": "0.001",
                          "strategy.feature_views": "1" if strategy == "score" else "None"}
                metrics = []
                if strategy in ("score", "probe"):  # every frozen pass at the head logs the scores
                    metrics += [Metric(key, truth[short][seed], 0, 0) for short, key in SCORE_KEYS.items()]
                    metrics += [Metric(key.replace("score/", "score_seconds/"), 0.01, 0, 0) for key in SCORE_KEYS.values()]
                if strategy != "score":
                    metrics.append(Metric("final_val_acc", truth[strategy][seed], 0, 3))
                client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()], metrics=metrics)
                client.set_terminated(run.info.run_id, "FINISHED", end_time=start + i + 1)
    client.set_terminated(parent.info.run_id, "FINISHED")


@pytest.fixture(scope="module")
def store(store_uri):
    """Two sweeps in their own experiment: one of score runs, one of probe and finetune runs."""
    client = MlflowClient(store_uri)
    exp = client.create_experiment("backbones")
    _sweep(client, exp, "bb-scores", T0, ["score"])
    _sweep(client, exp, "bb-ladder", T0 + 3_600_000, ["probe", "finetune"])
    return store_uri


def _truth(key: str) -> np.ndarray:
    return np.array([np.mean(t[key]) for t in TRUTH.values()])


def test_a_sweep_of_score_runs_reports_its_backbone_table(store, tmp_path):
    rep = make_report(store, experiment="backbones", sweep="bb-scores", out=tmp_path)
    t = rep.backbones.table
    assert rep.summary.empty and len(t) == 4 and t["probe_mean"].isna().all()  # no accuracy: nothing made up
    assert t["score/logme"].to_numpy() == pytest.approx(_truth("logme"))
    assert (tmp_path / "backbones.csv").exists() and (tmp_path / "backbones.png").exists()
    assert "| efficientnet_lite0, weights=None |" in rep.markdown and "transferability scores" in rep.markdown


def test_pooled_with_a_trained_sweep_ranks_and_correlates_as_scipy(store, tmp_path):
    rep = make_report(store, experiment="backbones", sweep=["bb-scores", "bb-ladder"], out=tmp_path)
    assert set(rep.summary["strategy.name"]) == {"probe", "finetune"}  # score runs average into no group
    assert "12 score run(s) (strategy=score) train nothing" in rep.markdown
    t = rep.backbones.table.set_index(["model.name", "model.weights"]).loc[list(TRUTH)]
    probe, finetune = _truth("probe"), _truth("finetune")
    best = np.maximum(probe, finetune)
    assert t["probe_mean"].to_numpy() == pytest.approx(probe)
    assert list(t["best_group"]) == ["finetune", "probe", "finetune", "finetune"]
    assert t["best_mean"].to_numpy() == pytest.approx(best)
    # the interval of stats.t_interval: Student's t over the three seeds
    x = np.array(TRUTH[("efficientnet_lite1", "DEFAULT")]["probe"])
    low, high = stats.t.interval(0.95, 2, loc=x.mean(), scale=stats.sem(x))
    assert t.loc[("efficientnet_lite1", "DEFAULT"), ["probe_ci95_low", "probe_ci95_high"]].tolist() == \
        pytest.approx([low, high])
    # ranks: 1 = best, as scipy's rankdata on the negated means
    assert t["probe_mean_rank"].tolist() == stats.rankdata(-probe).tolist()
    assert t["best_mean_rank"].tolist() == stats.rankdata(-best).tolist()
    assert t["score/logme_rank"].tolist() == stats.rankdata(-_truth("logme")).tolist()
    # a random init: the score differs per seed, so it has an interval; pretrained weights have none
    assert t.loc[("efficientnet_lite0", "None"), "score/knn_acc_ci95_low"] < _truth("knn")[3]
    assert np.isnan(t.loc[("efficientnet_lite0", "DEFAULT"), "score/knn_acc_ci95_low"]) or \
        t.loc[("efficientnet_lite0", "DEFAULT"), "score/knn_acc_ci95_low"] == pytest.approx(0.90)
    taus = rep.backbones.taus.set_index(["score", "target"])
    for short, key in SCORE_KEYS.items():
        for target, acc in (("probe", probe), ("best", best)):
            row = taus.loc[(key, target)]
            assert row["n_backbones"] == 4
            assert row["weighted_tau"] == pytest.approx(stats.weightedtau(_truth(short), acc)[0])
            assert row["spearman_rho"] == pytest.approx(stats.spearmanr(_truth(short), acc)[0])
    # the files: CSVs with raw keys, the figure as a real image
    assert "score/logme" in pd.read_csv(tmp_path / "backbones.csv").columns
    assert set(pd.read_csv(tmp_path / "backbones_taus.csv")["target"]) == {"probe", "best"}
    image = matplotlib.image.imread(tmp_path / "backbones.png")
    assert image.shape[0] > 300 and image.shape[1] > 600
    assert "### Backbones" in (tmp_path / "summary.md").read_text()


def test_backbones_false_leaves_the_table_out_and_says_where_score_runs_went(store, tmp_path):
    rep = make_report(store, experiment="backbones", sweep=["bb-scores", "bb-ladder"], out=tmp_path, backbones=False)
    assert rep.backbones is None and not (tmp_path / "backbones.png").exists()
    assert "backbones=true tabulates their scores" in rep.markdown


def test_with_fewer_than_three_backbones_there_is_no_rank_correlation():
    rows = [{"model.name": m, "strategy.name": "probe", "seed": str(s), "task": "t"} for m in ("a", "b") for s in SEEDS]
    params = pd.DataFrame(rows, dtype=object)
    runs = pd.DataFrame({"status": "FINISHED", "final_val_acc": np.linspace(0.5, 0.9, 6),
                         "score/logme": [0.1] * 3 + [0.2] * 3})
    result = bb.analyse(runs, params, "final_val_acc", ["strategy.name"])
    assert result.taus["weighted_tau"].isna().all() and list(result.table["score/logme_rank"]) == [2.0, 1.0]
    assert "No rank correlation: it needs at least 3 backbones (2 here)" in bb.markdown(result)


def test_a_static_ranking_stands_beside_the_scores_in_the_rank_correlations():
    """Runs that log the weights' ImageNet top-1 and the model's size get both as rankers: their taus against the
    accuracies, as scipy computes them, and a row each in the section, named static."""
    models = {"a": (75.1, 3e6, 0.6), "b": (76.7, 4e6, 0.9), "c": (77.6, 5e6, 0.7)}  # top-1, params, probe accuracy
    rows = [{"model.name": m, "strategy.name": "probe", "seed": str(s), "task": "t"} for m in models for s in SEEDS]
    params = pd.DataFrame(rows, dtype=object)
    runs = pd.DataFrame({"status": "FINISHED",
                         "final_val_acc": [models[m][2] + 0.01 * s for m in models for s in range(len(SEEDS))],
                         "score/logme": [models[m][2] for m in models for _ in SEEDS],
                         "imagenet_top1": [models[m][0] for m in models for _ in SEEDS],
                         "total_params": [models[m][1] for m in models for _ in SEEDS]})
    result = bb.analyse(runs, params, "final_val_acc", ["strategy.name"])
    taus = result.taus.set_index(["score", "target"])
    top1, acc = np.array([75.1, 76.7, 77.6]), np.array([0.61, 0.91, 0.71])
    assert taus.loc[("imagenet_top1", "probe"), "weighted_tau"] == pytest.approx(stats.weightedtau(top1, acc)[0])
    assert taus.loc[("score/logme", "probe"), "weighted_tau"] == pytest.approx(1.0)
    assert taus.loc[("total_params", "probe"), "spearman_rho"] == pytest.approx(0.5)
    md = bb.markdown(result)
    assert "| static: ImageNet top-1 | " in md
    assert "| static: parameters | " in md and result.scores == ["score/logme"]  # not a column of the table
