"""Statistics over many tasks (`across=`) against hand computations: synthetic tables for each number,
one small MLflow store for the files and the markdown."""
from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from scipy import stats as sps

from tlsweep.config.errors import ReportError
from tlsweep.report import across, across_figures, across_tables

# Six tasks, four methods, no ties; the ranks (1 = best) chosen by hand, row by row:
RANKS = {"t1": [1, 2, 3, 4], "t2": [1, 3, 2, 4], "t3": [2, 1, 3, 4],
         "t4": [1, 2, 4, 3], "t5": [1, 2, 3, 4], "t6": [2, 1, 4, 3]}
METHODS = ["a", "b", "c", "d"]
# rank sums a 8, b 11, c 19, d 22 over N=6 tasks
MEAN_RANKS = {"a": 8 / 6, "b": 11 / 6, "c": 19 / 6, "d": 22 / 6}
# Friedman by Demšar's formula (no ties): 12N/(k(k+1)) * (sum of squared mean ranks - k(k+1)^2/4)
CHI2 = 12 * 6 / (4 * 5) * (sum(r * r for r in MEAN_RANKS.values()) - 4 * 5 ** 2 / 4)


def _task_means() -> pd.DataFrame:
    """Tasks x methods: each task on its own level (0.3 to 0.8), the methods 0.05 apart in rank order."""
    return pd.DataFrame([[0.3 + 0.1 * i - 0.05 * r for r in ranks] for i, ranks in enumerate(RANKS.values())],
                        index=list(RANKS), columns=METHODS)


def _runs(task_means: pd.DataFrame, seeds: int = 3) -> pd.DataFrame:
    """One row per run: seeds spread symmetrically around each cell's mean, so the cell means stay exact."""
    offsets = np.linspace(-0.01, 0.01, seeds)
    rows = [(m, t, s, task_means.loc[t, m] + offsets[s]) for t in task_means.index for m in task_means.columns
            for s in range(seeds)]
    return pd.DataFrame(rows, columns=["strategy.name", "data.name", "seed", "value"])


def test_iqm_is_the_mean_of_the_middle_half():
    assert across.iqm(np.arange(1, 9)) == pytest.approx(4.5)  # 1, 2 and 7, 8 cut: mean(3, 4, 5, 6)
    assert across.iqm([0, 1, 2, 3, 4, 5, 6, 7, 8, 100]) == pytest.approx(4.5)  # int(2.5) = 2 cut at each end


def test_the_three_conventions_differ_on_the_same_runs():
    cells = [np.array([0.2, 0.4]), np.array([0.9]), np.array([0.5, 0.5, 0.8])]  # task means 0.3, 0.9, 0.6
    got = {k: float(v[0]) for k, v in across.conventions([c[None] for c in cells], ["g1", "g2", "g2"]).items()}
    assert got["mean_of_task_means"] == pytest.approx(0.6)
    assert got["iqm_of_runs"] == pytest.approx((0.4 + 0.5 + 0.5 + 0.8) / 4)  # .2 .4 .5 .5 .8 .9: one cut each end
    assert got["mean_of_group_means"] == pytest.approx((0.3 + (0.9 + 0.6) / 2) / 2)
    assert "mean_of_group_means" not in across.conventions([c[None] for c in cells])


def test_the_bootstrap_resamples_within_each_task():
    rng = np.random.default_rng(0)
    one, two = np.array([0.5]), np.array([0.1, 0.9])
    draws = across.resample([one, two], 500, rng)
    assert np.all(draws[0] == 0.5) and set(np.unique(draws[1])) == {0.1, 0.9}  # never a value of the other task
    means = across.conventions(draws)["mean_of_task_means"]
    # the one-run task adds the same 0.5 to every resample: only (0.5 + mean of two draws) / 2 can occur
    assert set(np.round(means, 9)) == {0.3, 0.5, 0.7}
    # a method whose tasks have no spread within them has a zero-width interval, however far apart the tasks are
    flat = pd.DataFrame([("a", "t1", 0, 0.5)] + [("a", "t2", s, 0.9) for s in range(3)]
                        + [("b", t, s, 0.2 + 0.1 * s) for t in ("t1", "t2") for s in range(3)],
                        columns=["strategy.name", "data.name", "seed", "value"])
    agg = across.analyse(flat, ["data.name"], ["strategy.name"]).aggregates.set_index(["strategy.name", "convention"])
    a = agg.loc[("a", "mean_of_task_means")]
    assert [a["estimate"], a["ci95_low"], a["ci95_high"]] == pytest.approx([0.7] * 3)
    assert agg.loc[("b", "mean_of_task_means"), "ci95_high"] > agg.loc[("b", "mean_of_task_means"), "ci95_low"]


def test_aggregates_are_deterministic_and_contain_the_estimate():
    rng = np.random.default_rng(1)
    frame = pd.DataFrame([(m, f"t{t}", s, float(rng.uniform(0.3, 0.9))) for m in METHODS for t in range(4)
                          for s in range(3)], columns=["strategy.name", "data.name", "seed", "value"])
    first = across.analyse(frame, ["data.name"], ["strategy.name"], reps=500)
    again = across.analyse(frame, ["data.name"], ["strategy.name"], reps=500)
    pd.testing.assert_frame_equal(first.aggregates, again.aggregates)
    agg = first.aggregates
    assert set(agg["convention"]) == {"mean_of_task_means", "iqm_of_runs"}  # t0..t3 are not VTAB-1k tasks
    assert ((agg["ci95_low"] <= agg["estimate"]) & (agg["estimate"] <= agg["ci95_high"])).all()
    assert (agg["ci95_high"] > agg["ci95_low"]).all()
    a = frame[frame["strategy.name"] == "a"]
    assert agg.iloc[0]["estimate"] == pytest.approx(a.groupby("data.name")["value"].mean().mean())
    assert agg.iloc[1]["estimate"] == pytest.approx(sps.trim_mean(a["value"], 0.25))
    # a method seeds its own resamples: another method added leaves its interval as it was
    more = pd.concat([frame, frame[frame["strategy.name"] == "a"].assign(**{"strategy.name": "e"})])
    grown = across.analyse(more, ["data.name"], ["strategy.name"], reps=500).aggregates
    pd.testing.assert_frame_equal(grown[grown["strategy.name"] == "b"].reset_index(drop=True),
                                  agg[agg["strategy.name"] == "b"].reset_index(drop=True))


def test_probability_of_improvement_counts_pairs_and_halves_ties():
    a, b = [1, 2, 3], [2, 2, 0]
    # 1 beats 0 only (1); 2 beats 0 and ties the two 2s (1 + 2 x 1/2); 3 beats all three (3): 6 of 9 pairs
    assert across.probability_of_improvement([a], [b]) == pytest.approx(6 / 9)
    assert sps.mannwhitneyu(a, b).statistic == 6
    assert across.probability_of_improvement([b], [a]) == pytest.approx(3 / 9)
    # averaged over tasks, not pooled: a second task A=[0] vs B=[1] gives 0
    assert across.probability_of_improvement([a, [0]], [b, [1]]) == pytest.approx((6 / 9 + 0) / 2)


def test_improvement_table_mirrors_and_brackets():
    result = across.analyse(_runs(_task_means()), ["data.name"], ["strategy.name"], reps=300)
    table = result.improvement.set_index(["a", "b"])
    assert len(table) == 4 * 3
    # a beats c in all six tasks, run for run (0.05 apart per rank, seeds within +-0.01)
    assert table.loc[("a", "c"), "p_improvement"] == 1.0 and table.loc[("c", "a"), "p_improvement"] == 0.0
    # a vs b: a ahead in t1, t2, t4, t5, behind in t3, t6
    assert table.loc[("a", "b"), "p_improvement"] == pytest.approx(4 / 6)
    for (x, y), row in table.iterrows():
        back = table.loc[(y, x)]
        assert row["p_improvement"] + back["p_improvement"] == pytest.approx(1)
        assert (row["ci95_low"], row["ci95_high"]) == pytest.approx((1 - back["ci95_high"], 1 - back["ci95_low"]))
        assert row["ci95_low"] <= row["p_improvement"] <= row["ci95_high"]
    # Wilcoxon on the six task means of a and c: all six differences one sign, exact two-sided p = 2/64
    assert table.loc[("a", "c"), "wilcoxon_p"] == pytest.approx(2 / 64)
    # a loss: lower is better, so "a > c" (a better) never happens, and a ranks last but one
    loss = across.analyse(_runs(_task_means()), ["data.name"], ["strategy.name"], higher_is_better=False, reps=50)
    assert loss.improvement.set_index(["a", "b"]).loc[("a", "c"), "p_improvement"] == 0.0
    assert loss.ranks.set_index("strategy.name").loc["a", "mean_rank"] == pytest.approx(5 - MEAN_RANKS["a"])


def test_average_ranks_friedman_and_cliques_by_hand():
    means = _task_means()
    ranks = across.average_ranks(means)
    assert ranks.to_dict() == pytest.approx(MEAN_RANKS)
    assert across.average_ranks(means, higher_is_better=False).to_dict() == pytest.approx(
        {m: 5 - r for m, r in MEAN_RANKS.items()})
    tied = pd.DataFrame([[0.5, 0.5, 0.3]], columns=["x", "y", "z"])
    assert across.average_ranks(tied).tolist() == [1.5, 1.5, 3.0]  # ties share the average rank
    chi2, p = across.friedman(means)
    assert chi2 == pytest.approx(CHI2) and CHI2 == pytest.approx(13.0)
    assert p == pytest.approx(sps.chi2.sf(13.0, 3))
    cd = across.critical_difference(4, 6)
    # a..c span 1.83 < CD 1.91, a..d 2.33 does not; b..d 1.83 does
    assert across.cliques(ranks, cd) == [["a", "b", "c"], ["b", "c", "d"]]
    result = across.analyse(_runs(means), ["data.name"], ["strategy.name"], reps=200)
    assert result.ranks.set_index("strategy.name")["mean_rank"].to_dict() == pytest.approx(MEAN_RANKS)
    assert (result.friedman_chi2, result.cd, result.no_cd) == (pytest.approx(CHI2), pytest.approx(cd), "")


@pytest.mark.parametrize("k, q", [(2, 1.960), (4, 2.569), (10, 3.164)])
def test_critical_difference_matches_demsars_table(k, q):
    # Demšar 2006, Table 5(a): q_0.05 for the Nemenyi test
    assert across.critical_difference(k, 6) == pytest.approx(q * math.sqrt(k * (k + 1) / 36), abs=1e-3)
    if k == 4:
        assert across.critical_difference(4, 6) == pytest.approx(1.915, abs=1e-3)


def test_autorank_agrees_where_installed():
    autorank = pytest.importorskip("autorank")
    means = _task_means().reset_index(drop=True)
    with contextlib.redirect_stdout(io.StringIO()):  # autorank prints when forced to its nonparametric path
        result = autorank.autorank(means, alpha=0.05, verbose=False, force_mode="nonparametric")
    assert result.omnibus == "friedman"
    assert result.rankdf["meanrank"].to_dict() == pytest.approx(across.average_ranks(means).to_dict())
    assert result.pvalue == pytest.approx(across.friedman(means)[1])
    assert result.cd == pytest.approx(across.critical_difference(4, 6), abs=1e-3)  # statsmodels' qsturng table


def test_fewer_than_five_tasks_say_so_and_draw_no_cd(tmp_path):
    means = _task_means().iloc[:4]
    result = across.analyse(_runs(means), ["data.name"], ["strategy.name"], reps=100)
    assert "4 tasks" in result.no_cd and "at least 5" in result.no_cd
    assert math.isnan(result.cd) and math.isnan(result.friedman_p) and result.improvement["wilcoxon_p"].isna().all()
    assert "No critical-difference diagram: 4 tasks" in across_tables.markdown(result, "final_val_acc")
    (tmp_path / "across_cd.pdf").write_text("from an earlier report with more tasks")
    files = across_figures.make_all(tmp_path, result, "final_val_acc")
    assert not (tmp_path / "across_cd.pdf").exists() and not any("across_cd" in f.name for f in files)
    assert {f.name for f in files} == {f"{n}.{e}" for n in ("across_aggregates", "across_improvement",
                                                            "across_profiles") for e in ("pdf", "png")}


def test_tasks_missing_a_method_are_left_out_and_one_task_is_refused():
    frame = _runs(_task_means())
    gap = frame[~((frame["strategy.name"] == "d") & (frame["data.name"] == "t3"))]
    result = across.analyse(gap, ["data.name"], ["strategy.name"], reps=50)
    assert result.tasks == ["t1", "t2", "t4", "t5", "t6"] and result.dropped == ["t3 (no run of d)"]
    with pytest.raises(ReportError, match="needs two or more"):
        across.analyse(frame[frame["data.name"] == "t1"], ["data.name"], ["strategy.name"])


def test_profiles_count_runs_above_each_threshold():
    result = across.analyse(_runs(_task_means(), seeds=2), ["data.name"], ["strategy.name"], reps=200)
    prof = result.profiles
    a = prof[prof["strategy.name"] == "a"]
    runs = _runs(_task_means(), seeds=2)
    values = runs.loc[runs["strategy.name"] == "a", "value"].to_numpy()
    for tau, fraction in zip(a["tau"].iloc[::10], a["fraction"].iloc[::10]):
        assert fraction == pytest.approx(np.mean(values > tau))
    assert a["fraction"].is_monotonic_decreasing and (a["ci95_low"] <= a["fraction"] + 1e-12).all()
    assert a["fraction"].iloc[-1] == 0.0 and len(a) == across.N_TAUS


def test_groups_vtab_and_a_given_mapping():
    assert len(across.VTAB1K_GROUPS) == 19
    assert sorted(pd.Series(across.VTAB1K_GROUPS).value_counts().items()) == [
        ("natural", 7), ("specialized", 4), ("structured", 8)]
    assert across.task_groups([("dtd",), ("/data/vtab/eurosat",)]) == ["natural", "specialized"]  # a root's folder
    assert across.task_groups([("dtd",), ("digits",)]) is None  # not all VTAB-1k: no group convention
    assert across.task_groups([("dtd", "10"), ("digits", "10")], {"dtd": "x", "digits": "y"}) == ["x", "y"]
    with pytest.raises(ReportError, match="names no group for task.*digits"):
        across.task_groups([("dtd",), ("digits",)], {"dtd": "x"})


# --- end to end: a small store, make_report(across=...) ---------------------------------------------------

TASKS = ["caltech101", "dtd", "eurosat", "resisc45", "dmlab"]  # five VTAB-1k tasks, all three groups


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("across")
    uri = f"sqlite:///{tmp}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("tlsweep")
    parent = client.create_run(exp, run_name="sweep-tasks", tags={"tlsweep.role": "sweep",
                                                                  "tlsweep.sweep_name": "sweep-tasks"})
    rng = np.random.default_rng(0)
    for i, task in enumerate(TASKS):
        for j, strategy in enumerate(("scratch", "probe", "finetune")):
            for seed in (0, 1):
                run = client.create_run(exp, run_name=f"{task}-{strategy}-{seed}",
                                        tags={"mlflow.parentRunId": parent.info.run_id, "tlsweep.role": "job"})
                params = {"strategy.name": strategy, "data.name": task, "seed": seed, "model.name": "resnet18"}
                value = 0.4 + 0.05 * i + 0.1 * j + float(rng.uniform(-0.02, 0.02))
                client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()],
                                 metrics=[Metric("final_val_acc", value, 0, 3)])
                client.set_terminated(run.info.run_id, "FINISHED")
    client.set_terminated(parent.info.run_id, "FINISHED")
    return uri


def test_make_report_across_writes_and_returns_every_file(store_uri, tmp_path):
    from tlsweep.report import make_report

    report = make_report(store_uri, sweep="sweep-tasks", across="data", out=tmp_path)  # "data" -> data.name
    assert report.by == ["strategy.name", "data.name"]  # the main table as before: one row per strategy x task
    assert len(report.summary) == 15
    cross = report.across
    assert cross.keys == ["data.name"] and cross.method_keys == ["strategy.name"]  # the task key is not a method
    assert cross.methods == ["scratch", "probe", "finetune"] and len(cross.tasks) == 5
    names = {f.name for f in report.files}
    expected = {f"{n}.{e}" for n in across_figures.NAMES for e in ("pdf", "png")} | set(across_tables.FILES)
    assert expected <= names and all(f.exists() and f.stat().st_size > 0 for f in report.files)
    assert all(f.parent == tmp_path for f in report.files)
    assert (tmp_path / "across_cd.pdf").read_bytes().startswith(b"%PDF")
    aggregates = pd.read_csv(tmp_path / "across_aggregates.csv")
    assert list(aggregates.columns) == ["strategy.name"] + across.AGGREGATE_COLUMNS
    assert set(aggregates["convention"]) == set(across.CONVENTIONS)  # VTAB-1k tasks: the group convention too
    ranks = pd.read_csv(tmp_path / "across_ranks.csv").set_index("strategy.name")
    assert ranks["mean_rank"].to_dict() == {"finetune": 1.0, "probe": 2.0, "scratch": 3.0}
    md = (tmp_path / "summary.md").read_text()
    assert md == report.markdown and "### Across tasks: dataset (5 tasks)" in md
    for convention in ("mean of task means", "IQM of runs", "mean of group means", "P(A > B)", "Friedman chi²"):
        assert convention in md
    assert "| finetune | scratch | 1.00 [1.00, 1.00] |" in md


def test_make_report_across_errors_are_user_errors(store_uri, tmp_path):
    from tlsweep.report import make_report

    with pytest.raises(ReportError, match="no run of the sweep has a param 'nope'"):
        make_report(store_uri, sweep="sweep-tasks", across="nope", out=tmp_path)
    with pytest.raises(ReportError, match="only one method"):
        make_report(store_uri, sweep="sweep-tasks", by=["data.name"], across="data.name", out=tmp_path)
    with pytest.raises(ReportError, match="names no group"):
        make_report(store_uri, sweep="sweep-tasks", across="data.name", across_groups={"dtd": "natural"},
                    out=tmp_path)
