"""The report against known answers: a store whose metric values we choose, checked against scipy."""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from scipy import stats

from tlsweep.report import ReportError, make_report

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_790_000_000_000  # ms; explicit start times make "the latest sweep" deterministic
PARAMS = {"trainable": {"scratch": 11_200_000, "probe": 5_130, "partial": 2_100_000, "finetune": 11_200_000},
          "lr_scale": {"scratch": "1.0", "probe": "0.0", "partial": "0.1", "finetune": "0.1"}}

# sweep-ladder (the latest): a group with n=1, a group of tied values, a group with a failed run,
# a finished run without the metric, and partial/finetune tied for the best mean.
LADDER = [  # strategy, seed, status, final_val_acc
    ("scratch", 0, "FINISHED", 0.612), ("scratch", 1, "FINISHED", 0.587), ("scratch", 2, "FINISHED", 0.641),
    ("probe", 0, "FINISHED", 0.70), ("probe", 1, "FINISHED", 0.70), ("probe", 2, "FINISHED", 0.70),
    ("probe", 3, "FINISHED", None),
    ("partial", 0, "FINISHED", 0.905), ("partial", 1, "FINISHED", 0.895), ("partial", 2, "FAILED", None),
    ("finetune", 0, "FINISHED", 0.90), ("finetune", 1, "KILLED", None), ("finetune", 2, "FAILED", None),
    ("finetune", 3, "CRASHED", None),  # died before logging its params
]
_rng = np.random.default_rng(7)
# sweep-grid: strategy x lr x shots x 2 seeds; "0.01" < "3e-4" and "20" < "5" as text, not as numbers.
GRID = [(s, lr, shots, seed, "FINISHED", float(_rng.uniform(0.3, 0.95)))
        for s in ("finetune", "scratch") for lr in ("0.01", "3e-4") for shots in ("None", "20", "5")
        for seed in (0, 1)]
# Later than both: a sweep whose jobs all failed and one with no jobs; "the latest sweep" skips them.
ALL_FAILED = [("scratch", 0, "FAILED", None), ("probe", 0, "KILLED", None), ("probe", 1, "FAILED", None)]
# Experiment "other": a small finished sweep; experiment "only-failed": sweeps with nothing finished.
OTHER = [(s, seed, "FINISHED", float(_rng.uniform(0.3, 0.95))) for s in ("scratch", "probe") for seed in (0, 1)]


@dataclass
class Store:
    uri: str
    empty_uri: str
    tmp: Path


def _log_run(client, exp_id, parent_id, name, start, params, status, value):
    strategy = params["strategy.name"]
    run = client.create_run(exp_id, run_name=name, start_time=start,
                            tags={"mlflow.parentRunId": parent_id, "tlsweep.role": "job"})
    params = {"epochs": "3", "batch_size": "32", "model.name": "resnet18",
              "model.weights": "None" if strategy == "scratch" else "imagenet",  # follows the strategy
              "strategy.backbone_lr_scale": PARAMS["lr_scale"][strategy],
              "device": f"cuda:{int(params['seed']) % 2}",  # per-run: must not become a group key
              "data.root": "/data", "tracking.uri": "sqlite:///x.db", **params}
    metrics = []
    if value is not None:
        metrics = [Metric("val_acc", value * f, 0, step) for step, f in [(1, 0.8), (2, 0.95), (3, 1.0)]]
        metrics += [Metric("final_val_acc", value, 0, 3), Metric("best_val_acc", value + 0.01, 0, 3),
                    Metric("trainable_params", PARAMS["trainable"][strategy], 0, 0)]
    elif status != "FINISHED":
        metrics = [Metric("val_acc", 0.3, 0, 1)]  # died after one epoch
    if status == "CRASHED":
        params, status = {}, "FAILED"
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()], metrics=metrics)
    if status != "FINISHED":
        client.set_tag(run.info.run_id, "tlsweep.error", "CUDA out of memory")
    client.set_terminated(run.info.run_id, status, end_time=start + 1000)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    """One SQLite store for the module (creating one takes seconds), plus a copy with no experiment."""
    tmp = tmp_path_factory.mktemp("report")
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    client.search_experiments()  # creates the schema
    shutil.copy(tmp / "mlflow.db", tmp / "empty.db")
    exps = {name: client.create_experiment(name) for name in ("tlsweep", "other", "only-failed")}
    sweeps = [("tlsweep", "sweep-grid", GRID), ("tlsweep", "sweep-ladder", LADDER),
              ("tlsweep", "sweep-all-failed", ALL_FAILED), ("tlsweep", "sweep-no-jobs", []),
              ("other", "sweep-other", OTHER),
              ("only-failed", "sweep-crashed", ALL_FAILED), ("only-failed", "sweep-empty", [])]
    for k, (experiment, name, runs) in enumerate(sweeps):
        start, exp = T0 + k * 3_600_000, exps[experiment]
        parent = client.create_run(exp, run_name=name, start_time=start,
                                   tags={"tlsweep.role": "sweep", "tlsweep.sweep_name": name})
        for i, run in enumerate(runs):
            if name == "sweep-grid":
                s, lr, shots, seed, status, value = run
            else:
                (s, seed, status, value), lr, shots = run, "1e-3", "None"
            params = {"strategy.name": s, "optim.lr": lr, "data.shots": shots, "seed": seed}
            _log_run(client, exp, parent.info.run_id, f"{name}-{i}", start + i + 1, params, status, value)
        client.set_terminated(parent.info.run_id, "FINISHED")
    return Store(uri=f"sqlite:///{tmp}/mlflow.db", empty_uri=f"sqlite:///{tmp}/empty.db", tmp=tmp)


@pytest.fixture(scope="module")
def ladder(store):
    return make_report(store.uri, out=store.tmp / "ladder")  # no sweep: the latest one


@pytest.fixture(scope="module")
def grid(store):
    return make_report(store.uri, sweep="sweep-grid", ci="bootstrap", out=store.tmp / "grid")


def _expected_stats(x) -> dict:
    x = np.asarray(x, dtype=float)
    n, mean = len(x), x.mean()
    if n == 1:
        return {"n": 1, "mean": mean, "std": math.nan, "sem": math.nan, "ci95_low": math.nan,
                "ci95_high": math.nan, "min": mean, "max": mean}
    sem = stats.sem(x)
    # scipy gives NaN for a zero-width scale; the interval of tied values is the point itself
    low, high = stats.t.interval(0.95, n - 1, loc=mean, scale=sem) if sem > 0 else (mean, mean)
    return {"n": n, "mean": mean, "std": np.std(x, ddof=1), "sem": sem, "ci95_low": low, "ci95_high": high,
            "min": x.min(), "max": x.max()}


def _expected_gap(x, r) -> dict:
    x, r = np.asarray(x, dtype=float), np.asarray(r, dtype=float)
    d = x - r
    if len(d) == 1:
        return {"n_pairs": 1, "mean_diff": d[0], "ci95_low": math.nan, "ci95_high": math.nan, "p_value": math.nan}
    low, high = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    # the paired t-test by hand, not the code's ttest_rel: t = mean(d) / (sd(d) / sqrt(n)), two-sided
    t = d.mean() / (np.std(d, ddof=1) / math.sqrt(len(d)))
    return {"n_pairs": len(d), "mean_diff": d.mean(), "ci95_low": low, "ci95_high": high,
            "p_value": 2 * stats.t.sf(abs(t), len(d) - 1)}


def _assert_row(row: pd.Series, expected: dict) -> None:
    for key, value in expected.items():
        assert row[key] == pytest.approx(value, rel=1e-9, abs=1e-12, nan_ok=True), key


def _read(path: Path) -> pd.DataFrame:
    """A report CSV with param values kept as logged ("None" stays a string) and numbers as floats."""
    numeric = ["n", "mean", "std", "sem", "ci95_low", "ci95_high", "min", "max", "n_pairs", "mean_diff",
               "p_value", "p_holm", "boot_ci95_low", "boot_ci95_high"]
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    return frame.apply(lambda c: c.map(lambda v: float(v) if v else math.nan) if c.name in numeric else c)


def _finished(runs, strategy):
    return {seed: v for s, seed, status, v in runs if s == strategy and status == "FINISHED" and v is not None}


def test_latest_sweep_grouped_by_what_varies(ladder):
    assert ladder.sweep_name == "sweep-ladder"
    # strategy.backbone_lr_scale and model.weights follow the strategy; device and seed are per run
    assert ladder.by == ["strategy.name"]
    summary = _read(ladder.out_dir / "summary.csv")
    assert list(summary.columns) == ["strategy.name", "n", "n_diverged", "mean", "std", "sem", "ci95_low",
                                     "ci95_high", "min", "max"]
    assert list(summary["strategy.name"]) == ["scratch", "probe", "partial", "finetune"]  # ladder order
    left_out = {(f["run_name"], f["status"]) for f in ladder.failed}
    assert left_out == {("sweep-ladder-6", "FINISHED"), ("sweep-ladder-9", "FAILED"),
                        ("sweep-ladder-11", "KILLED"), ("sweep-ladder-12", "FAILED"),
                        ("sweep-ladder-13", "FAILED")}


def test_summary_matches_scipy(ladder):
    summary = _read(ladder.out_dir / "summary.csv").set_index("strategy.name")
    for strategy in ("scratch", "probe", "partial", "finetune"):  # probe: ties; partial: a failed run; finetune: n=1
        _assert_row(summary.loc[strategy], _expected_stats(list(_finished(LADDER, strategy).values())))
    assert summary.loc["probe", "std"] == pytest.approx(0, abs=1e-12)


def test_gaps_match_scipy_paired_by_seed(ladder):
    gaps = _read(ladder.out_dir / "gaps.csv").set_index("strategy.name")
    assert list(gaps.columns) == ["reference", "n_pairs", "mean_diff", "ci95_low", "ci95_high", "p_value",
                                  "p_holm"]
    assert list(gaps.index) == ["probe", "partial", "finetune"]
    assert set(gaps["reference"]) == {"strategy.name=scratch"}
    ref = _finished(LADDER, "scratch")
    for strategy in gaps.index:
        runs = _finished(LADDER, strategy)
        seeds = sorted(set(runs) & set(ref))
        _assert_row(gaps.loc[strategy], _expected_gap([runs[s] for s in seeds], [ref[s] for s in seeds]))
    assert gaps.loc["finetune", "n_pairs"] == 1 and gaps.loc["partial", "n_pairs"] == 2
    # Holm over the two gaps with a p-value (finetune's single pair has none): 2 x the smaller,
    # then max(that, 1 x the larger)
    (small, p_small), (large, p_large) = sorted(gaps["p_value"].dropna().items(), key=lambda kv: kv[1])
    assert gaps.loc[small, "p_holm"] == pytest.approx(min(1.0, 2 * p_small))
    assert gaps.loc[large, "p_holm"] == pytest.approx(max(min(1.0, 2 * p_small), p_large))
    assert math.isnan(gaps.loc["finetune", "p_holm"])


def test_grid_sorts_numbers_and_compares_at_the_same_lr_and_shots(grid):
    assert grid.by == ["strategy.name", "data.shots", "optim.lr"]
    summary = _read(grid.out_dir / "summary.csv")
    keys = list(summary[grid.by].itertuples(index=False, name=None))
    assert keys == [(s, shots, lr) for s in ("scratch", "finetune") for shots in ("5", "20", "None")
                    for lr in ("3e-4", "0.01")]
    for row in summary.itertuples(index=False):
        x = [v for s, lr, shots, _, _, v in GRID if (s, shots, lr) == (row[0], row[1], row[2])]
        _assert_row(summary.iloc[keys.index((row[0], row[1], row[2]))], _expected_stats(x))

    gaps = _read(grid.out_dir / "gaps.csv")
    assert list(gaps.columns)[-4:] == ["p_value", "p_holm", "boot_ci95_low", "boot_ci95_high"]
    assert len(gaps) == 6 and set(gaps["strategy.name"]) == {"finetune"}
    for _, row in gaps.iterrows():
        pick = lambda s: [v for s_, lr, shots, _, _, v in GRID  # noqa: E731 - seeds 0, 1 in order
                          if (s_, shots, lr) == (s, row["data.shots"], row["optim.lr"])]
        _assert_row(row, _expected_gap(pick("finetune"), pick("scratch")))
        d = np.subtract(pick("finetune"), pick("scratch"))
        # two pairs: the resampled means are d1, (d1+d2)/2 or d2, so the percentiles are min and max
        assert (row["boot_ci95_low"], row["boot_ci95_high"]) == pytest.approx((d.min(), d.max()))


def test_bootstrap_and_pairing_over_keys_left_out_of_by(store):
    report = make_report(store.uri, sweep="sweep-grid", by=["strategy"], ci="bootstrap", reference="scratch",
                         out=store.tmp / "by-strategy")
    assert report.by == ["strategy.name"]
    gap = report.gaps.set_index("strategy.name").loc["finetune"]
    key = lambda r: (r[1], r[2], r[3])  # noqa: E731 - lr, shots, seed: a pair differs only in strategy
    ft = {key(r): r[5] for r in GRID if r[0] == "finetune"}
    sc = {key(r): r[5] for r in GRID if r[0] == "scratch"}
    x, r = np.array([ft[k] for k in sorted(ft)]), np.array([sc[k] for k in sorted(ft)])
    _assert_row(gap, _expected_gap(x, r))
    assert gap["n_pairs"] == 12
    boot = stats.bootstrap((x - r,), np.mean, n_resamples=10_000, method="percentile", rng=0).confidence_interval
    width = boot.high - boot.low
    assert gap["boot_ci95_low"] == pytest.approx(boot.low, abs=0.05 * width)
    assert gap["boot_ci95_high"] == pytest.approx(boot.high, abs=0.05 * width)
    again = make_report(store.uri, sweep="sweep-grid", by=["strategy"], ci="bootstrap", out=store.tmp / "again")
    assert again.gaps["boot_ci95_low"].iloc[0] == gap["boot_ci95_low"]  # fixed seed


def test_tables_for_humans(ladder):
    md = (ladder.out_dir / "summary.md").read_text()
    assert md == ladder.markdown
    assert "| strategy | n | final val accuracy (%) | Δ vs scratch (pp) | p | p (Holm) |" in md  # labels
    assert "| scratch | 3 | 61.3 ± 6.7 | reference |" in md
    assert "Holm-adjusted over the 2 gap(s)" in md
    assert "| probe | 3 | 70.0 ± 0.0 |" in md  # tied values: a true zero-width interval
    assert "| finetune | 1 | **90.0** (n=1, no CI) | +28.8 (1 pair, no CI) |" in md
    assert md.count("**90.0**") == 2  # partial and finetune tie for the best mean
    assert "95% CI half-width" in md and "paired" in md
    assert "sweep-ladder-9 (" in md and "CUDA out of memory" in md
    assert "biased upward" not in md
    tex = (ladder.out_dir / "summary.tex").read_text()
    for needle in [r"\toprule", r"\midrule", r"\bottomrule", r"\textbf{90.0} (n=1, no CI)",
                   r"61.3 $\pm$ 6.7", r"strategy & n & final val accuracy (\%)", "95\\% CI half-width"]:
        assert needle in tex
    assert tex.count(r"\textbf{") == 2


def test_sweep_by_parent_run_id_reads_only_its_children(store, grid):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store.uri)
    parent = client.search_runs([client.get_experiment_by_name("tlsweep").experiment_id],
                                "tags.`tlsweep.sweep_name` = 'sweep-grid'")[0]
    by_id = make_report(store.uri, sweep=parent.info.run_id, ci="bootstrap", out=store.tmp / "by-id")
    pd.testing.assert_frame_equal(_read(by_id.out_dir / "summary.csv"), _read(grid.out_dir / "summary.csv"))
    runs = pd.read_csv(by_id.out_dir / "runs.csv")
    assert runs["run_name"].str.startswith("sweep-grid-").all()  # none of the other sweep's runs


def test_figures_are_valid_pdf_and_png(ladder, grid):
    assert {p.stem for p in ladder.out_dir.glob("*.png")} == {"ladder", "curves"}  # lr and shots did not vary
    # the grid varies data.shots: a decision figure too, one column of cells per shots value
    assert {p.stem for p in grid.out_dir.glob("*.png")} == {"ladder", "curves", "lr", "shots", "decision"}
    for path in [*ladder.out_dir.glob("*.p[dn][fg]"), *grid.out_dir.glob("*.p[dn][fg]")]:
        head = path.read_bytes()[:8]
        if path.suffix == ".pdf":
            assert head.startswith(b"%PDF-"), path
        else:
            assert head == b"\x89PNG\r\n\x1a\n", path
            image = matplotlib.image.imread(path)
            # 3.3 in at 300 dpi: one paper column; the decision grid widens by its three shots columns
            assert image.shape[1] == (round(300 * (0.9 + 1.05 * 3)) if path.stem == "decision" else 990), path


def test_latest_sweep_is_the_latest_with_a_finished_run(store, ladder):
    # sweep-no-jobs and sweep-all-failed are later than sweep-ladder: a new user's failed sweep
    # must not hide the last one that worked
    assert ladder.sweep_name == "sweep-ladder"
    with pytest.raises(ReportError, match="sweep 'sweep-all-failed' has no finished runs.*CUDA out of memory"):
        make_report(store.uri, sweep="sweep-all-failed", out=store.tmp / "never")
    with pytest.raises(ReportError, match="sweep 'sweep-no-jobs' .* has no child runs"):
        make_report(store.uri, sweep="sweep-no-jobs", out=store.tmp / "never")


def test_no_finished_sweep_lists_the_sweeps_and_suggests_sweep(store):
    client = MlflowClient(store.uri)
    exp_id = client.get_experiment_by_name("only-failed").experiment_id
    ids = {r.info.run_name: r.info.run_id for r in client.search_runs([exp_id], "tags.`tlsweep.role` = 'sweep'")}
    with pytest.raises(ReportError) as err:
        make_report(store.uri, experiment="only-failed", out=store.tmp / "never")
    message = str(err.value)
    assert "no sweep in" in message and "has a finished run" in message and "sweep=" in message
    lines = message.splitlines()
    crashed = lines.index(f"  sweep-crashed ({ids['sweep-crashed']}): 2 FAILED, 1 KILLED")
    empty = lines.index(f"  sweep-empty ({ids['sweep-empty']}): no child runs")
    assert empty < crashed  # latest first
    assert not (store.tmp / "never").exists()


def test_reports_of_other_metrics_and_groupings_keep_their_own_files(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default out folder is relative to the launch directory
    default = make_report(store.uri, sweep="sweep-ladder")
    best = make_report(store.uri, sweep="sweep-ladder", metric="best_val_acc")
    by_lr = make_report(store.uri, sweep="sweep-grid", by=["strategy", "lr"])
    same = make_report(store.uri, sweep="sweep-grid", by=["strategy.name", "data.shots", "optim.lr"])
    root = Path("reports")
    assert default.out_dir == root / "sweep-ladder"  # where the end-of-sweep report writes
    assert best.out_dir == root / "sweep-ladder" / "best_val_acc"
    assert by_lr.out_dir == root / "sweep-grid" / "final_val_acc_by_strategy.name+optim.lr"
    assert same.out_dir == root / "sweep-grid"  # by spelled out as the default is the default table
    for report in (default, best, by_lr, same):
        assert (report.out_dir / "summary.md").read_text() == report.markdown
        assert {p.name for p in report.files} <= {p.name for p in report.out_dir.iterdir()}
    assert "final val accuracy (%)" in default.markdown and "best val accuracy (%)" in best.markdown
    assert _read(default.out_dir / "summary.csv")["mean"].tolist() != \
        _read(best.out_dir / "summary.csv")["mean"].tolist()  # best_val_acc = final + 0.01
    assert "optim.lr" in pd.read_csv(by_lr.out_dir / "summary.csv").columns  # CSVs keep the raw keys


@pytest.mark.parametrize("kwargs, message", [
    ({"sweep": "sweep-nope"}, "no sweep 'sweep-nope'.*sweep-ladder"),
    ({"by": ["optim.momentum"]}, "no run of the sweep has a param 'optim.momentum'"),
    ({"reference": "strategy.name=linear"}, "no finished run has strategy.name=linear"),
    ({"metric": "test_acc"}, "logged metric 'test_acc'"),
    ({"ci": "wald"}, "ci='wald'"),
])
def test_errors_say_what_is_wrong(store, kwargs, message):
    with pytest.raises(ReportError, match=message):
        make_report(store.uri, out=store.tmp / "never", **kwargs)


def test_missing_and_empty_stores(store, tmp_path):
    with pytest.raises(ReportError, match="does not exist.*Pass tracking.uri=<uri>"):
        make_report(f"sqlite:///{tmp_path}/missing.db")
    assert not (tmp_path / "missing.db").exists()  # not silently created
    with pytest.raises(ReportError, match="no experiment 'tlsweep'.*pass tracking.uri=<uri> / tracking.experiment="):
        make_report(store.empty_uri)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "tlsweep.report", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_prints_the_table_and_leaves_no_litter(store, tmp_path):
    done = _cli(f"tracking.uri={store.uri}", "sweep=sweep-ladder", "metric=best_val_acc", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "| strategy | n | best val accuracy (%) |" in done.stdout
    assert "biased upward" in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports"]  # no outputs/, .hydra or log file
    # another metric than the default: its own folder under the sweep's
    assert (tmp_path / "reports" / "sweep-ladder" / "best_val_acc" / "ladder.pdf").exists()


@pytest.mark.slow
def test_cli_reads_the_run_configs_tracking_keys(store, tmp_path):
    # `experiment=` would be Hydra's config group of conf/experiment/: the CLI takes the run config's keys
    done = _cli(f"tracking.uri={store.uri}", "tracking.experiment=other", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "**sweep-other**" in done.stdout and "| probe | 2 |" in done.stdout
    assert (tmp_path / "reports" / "sweep-other" / "summary.md").exists()


@pytest.mark.parametrize("args, message", [
    (["tracking.uri={uri}", "sweep=sweep-nope"], "no sweep 'sweep-nope'"),  # the default tier's CLI error smoke
    *[pytest.param(a, m, marks=pytest.mark.slow) for a, m in [
        (["tracking.uri=sqlite:///{tmp}/missing.db"], "Pass tracking.uri=<uri>"),
        (["tracking.uri={empty}"], "pass tracking.uri=<uri> / tracking.experiment=<name>"),
        (["tracking.uri={uri}", "by=[optim.momentum]"], "no run of the sweep has a param 'optim.momentum'")]],
])
def test_cli_errors_exit_nonzero_without_traceback(store, tmp_path, args, message):
    args = [a.format(tmp=tmp_path, empty=store.empty_uri, uri=store.uri) for a in args]
    done = _cli(*args, cwd=tmp_path)
    assert done.returncode != 0
    assert message in done.stderr and "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


# Experiment "flow": the flowchart as two sweeps, one per dataset, pooled by sweep=[a,b].
# hymenoptera: probe and finetune within noise of each other at both shots values; digits:
# finetune ahead of probe by 0.2 +- 0.005 at every seed. One digits config (finetune, 10 shots,
# seed 0) also ran, later and with another value, inside the hymenoptera sweep: it counts once.
FLOW_NOISE = {0: 0.004, 1: -0.006, 2: 0.001, 3: 0.003}
FLOW = {("hymenoptera", "probe"): 0.90, ("hymenoptera", "finetune"): 0.895,
        ("digits", "probe"): 0.60, ("digits", "finetune"): 0.80}


def _flow_value(dataset, strategy, shots, seed):
    base = FLOW[dataset, strategy] + (0.02 if shots == "None" else 0.0)
    if dataset == "hymenoptera" and strategy == "finetune":
        return base - 3 * FLOW_NOISE[seed]  # differences to probe swing both ways: no winner
    return base + FLOW_NOISE[seed] * (1.0 if strategy == "probe" else 0.5)


@pytest.fixture(scope="module")
def flow(store):
    client = MlflowClient(store.uri)
    exp = client.create_experiment("flow")
    start = T0 + 100 * 3_600_000
    for k, dataset in enumerate(("hymenoptera", "digits")):
        name = f"flow-{dataset}"
        parent = client.create_run(exp, run_name=name, start_time=start + k * 1000,
                                   tags={"tlsweep.role": "sweep", "tlsweep.sweep_name": name})
        jobs = [(dataset, s, shots, seed) for s in ("probe", "finetune") for shots in ("10", "None")
                for seed in FLOW_NOISE]
        if dataset == "hymenoptera":
            jobs.append(("digits", "finetune", "10", 0))  # the repeated config: started before digits' own
        for i, (ds, s, shots, seed) in enumerate(jobs):
            params = {"strategy.name": s, "optim.lr": "1e-3", "data.shots": shots, "seed": seed, "data.name": ds,
                      "data.image_size": "32" if ds == "digits" else "None"}  # follows the dataset
            value = _flow_value(ds, s, shots, seed) if i < 16 else 0.1  # the repeat: the earlier value counts
            _log_run(client, exp, parent.info.run_id, f"{name}-{i}", start + k * 1000 + i + 1, params,
                     "FINISHED", value)
        client.set_terminated(parent.info.run_id, "FINISHED")
    runs = client.search_runs([exp], "tags.`tlsweep.role` = 'job'")
    for run in runs:  # the config key as tlsweep.tracking.runs tags it: every param but the per-run ones
        p = run.data.params
        client.set_tag(run.info.run_id, "tlsweep.config_key",
                       "|".join(p[k] for k in ("data.name", "strategy.name", "data.shots", "seed")))
    return store


def test_several_sweeps_pool_into_one_decision(flow):
    report = make_report(flow.uri, experiment="flow", sweep=["flow-hymenoptera", "flow-digits"],
                         out=flow.tmp / "flow")
    assert report.sweep_name == "flow-hymenoptera+flow-digits" and report.parent_run_id.count(",") == 1
    assert report.by == ["strategy.name", "data.name", "data.shots"]  # image_size follows the dataset
    runs = pd.read_csv(report.out_dir / "runs.csv", dtype={"data.shots": str})
    assert len(runs) == 32  # 2 datasets x 2 strategies x 2 shots x 4 seeds: the repeated config once
    assert "1 configuration(s) ran in more than one" in report.markdown
    # the earliest finished run of the repeated config counts: the one in the hymenoptera sweep
    repeat = runs[(runs["data.name"] == "digits") & (runs["strategy.name"] == "finetune")
                  & (runs["data.shots"] == "10") & (runs["seed"] == 0)]
    assert repeat["final_val_acc"].tolist() == [0.1]

    table = pd.read_csv(report.out_dir / "decision.csv", dtype={"data.shots": str}, keep_default_na=False,
                        converters={"p_value": float, "p_holm": float})
    assert list(table[["data.name", "data.shots"]].itertuples(index=False, name=None)) == [
        ("digits", "10"), ("digits", "None"), ("hymenoptera", "10"), ("hymenoptera", "None")]
    # by hand: each cell's best and runner-up by mean, the paired t statistic, then Holm over the 4 cells
    p = []
    for ds, shots in table[["data.name", "data.shots"]].itertuples(index=False):
        vals = {s: np.array([0.1 if (ds, s, shots, seed) == ("digits", "finetune", "10", 0)
                             else _flow_value(ds, s, shots, seed) for seed in FLOW_NOISE])
                for s in ("probe", "finetune")}
        best, other = sorted(vals, key=lambda s: -vals[s].mean())
        row = table[(table["data.name"] == ds) & (table["data.shots"] == shots)].iloc[0]
        assert (row["best"], row["runner_up"]) == (best, other)
        d = vals[best] - vals[other]
        t = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
        p.append(2 * stats.t.sf(abs(t), len(d) - 1))
    order = np.argsort(p)
    holm = np.maximum.accumulate([min(1.0, (4 - i) * p[j]) for i, j in enumerate(order)])
    expected = np.empty(4)
    expected[order] = holm
    assert table["p_value"].to_numpy() == pytest.approx(p, rel=1e-9)
    assert table["p_holm"].to_numpy() == pytest.approx(expected, rel=1e-9)
    # digits at all shots: finetune ahead at every seed; with 10 shots its seed-0 run is the
    # repeated 0.1: still ahead by mean, behind at one seed, so not significantly; hymenoptera: a tie
    assert table["verdict"].tolist() == ["finetune ≈ probe", "finetune", "probe ≈ finetune", "probe ≈ finetune"]
    assert table["significant"].tolist() == [False, True, False, False]
    assert "| digits | finetune ≈ probe" in report.markdown and "| finetune (82.0, p (Holm)" in report.markdown
    assert {"decision.pdf", "decision.png", "decision.csv"} <= {p.name for p in report.files}
    assert matplotlib.image.imread(report.out_dir / "decision.png").shape[0] > 0
    # one sweep alone: one dataset, so one row, still a decision over shots
    alone = make_report(flow.uri, experiment="flow", sweep="flow-digits", out=flow.tmp / "flow-digits")
    assert alone.decision["data.shots"].tolist() == ["10", "None"] and "data.name" not in alone.decision
    assert alone.decision["verdict"].tolist() == ["finetune", "finetune"]


@pytest.mark.slow
def test_cli_takes_a_list_of_sweeps(flow, tmp_path):
    done = _cli(f"tracking.uri={flow.uri}", "tracking.experiment=flow", "sweep=[flow-hymenoptera,flow-digits]",
                cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "**flow-hymenoptera+flow-digits**" in done.stdout and "Best strategy by mean" in done.stdout
    assert (tmp_path / "reports" / "flow-hymenoptera+flow-digits" / "decision.pdf").exists()
    done = _cli(f"tracking.uri={flow.uri}", "tracking.experiment=flow", "sweep=[flow-hymenoptera,nope]", cwd=tmp_path)
    assert done.returncode == 2 and "no sweep 'nope'" in done.stderr
