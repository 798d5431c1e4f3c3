"""Each part of the report alone, from hand-made tables: no MLflow store (test_report.py runs them together)."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from tlsweep.report import columns as keys, figures, stats, tables

ROOT = Path(__file__).resolve().parents[1]


def _data(rows) -> pd.DataFrame:
    """strategy, lr, seed, value -> the `data` table make_report hands to stats and figures."""
    frame = pd.DataFrame(rows, columns=["strategy.name", "optim.lr", "seed", "value"])
    frame.index = [f"run{i}" for i in range(len(frame))]
    return frame.assign(trainable_params=np.nan)


RNG = np.random.default_rng(3)
DATA = _data([(s, lr, str(seed), float(RNG.uniform(0.3, 0.95)))
              for s in ("finetune", "scratch", "probe") for lr in ("0.01", "3e-4") for seed in range(3)])
BY = ["strategy.name", "optim.lr"]


@pytest.mark.parametrize("x", [[0.612, 0.587, 0.641], [0.9, 0.91], list(RNG.uniform(0, 1, 7))])
def test_t_interval_matches_scipy(x):
    std, sem, low, high = stats.t_interval(np.array(x))
    assert std == pytest.approx(np.std(x, ddof=1))
    assert sem == pytest.approx(sps.sem(x))
    assert (low, high) == pytest.approx(sps.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=sps.sem(x)))


def test_t_tails_without_scipy_stats_match_it():
    """stats uses scipy.special (scipy.stats costs every report 0.4 s of import): the same quantile, and
    ttest_rel's two-sided p-value to 12 digits, over seeds-sized samples of accuracies."""
    rng = np.random.default_rng(0)
    for n in range(2, 40):
        x = np.arange(n, dtype=float)
        low = sps.t.interval(0.95, n - 1, loc=np.mean(x), scale=sps.sem(x))[0]
        assert stats.t_interval(x)[2] == pytest.approx(low, rel=1e-13)
    for _ in range(2000):
        n = int(rng.integers(2, 12))
        x, r = rng.integers(90, 153, n) / 153, rng.integers(90, 153, n) / 153
        if np.ptp(x - r) > 0:
            assert stats.paired_p(x, r) == pytest.approx(sps.ttest_rel(x, r).pvalue, rel=1e-12)


def test_one_value_has_no_interval():
    assert all(math.isnan(v) for v in stats.t_interval(np.array([0.7])))


def test_summary_orders_the_ladder_and_numbers():
    summary = stats.summary(DATA, BY)
    assert list(summary.columns) == BY + stats.STAT_COLUMNS
    assert list(map(tuple, summary[BY].itertuples(index=False))) == [
        (s, lr) for s in ("scratch", "probe", "finetune") for lr in ("3e-4", "0.01")]  # not text order
    for _, row in summary.iterrows():
        x = DATA[(DATA["strategy.name"] == row["strategy.name"]) & (DATA["optim.lr"] == row["optim.lr"])]["value"]
        assert row["n"] == 3 and row["mean"] == pytest.approx(x.mean())
        assert row["ci95_high"] == pytest.approx(sps.t.interval(0.95, 2, loc=x.mean(), scale=sps.sem(x))[1])


def test_gaps_pair_runs_by_seed_at_the_same_lr():
    summary = stats.summary(DATA, BY)
    ref = stats.reference(None, BY, summary)
    assert ref == {"strategy.name": "scratch"}
    gaps = stats.gaps(DATA, BY, ["seed"], ref, summary, bootstrap=True)
    assert len(gaps) == 4 and set(gaps["strategy.name"]) == {"probe", "finetune"}
    for _, row in gaps.iterrows():
        pick = lambda s: DATA[(DATA["strategy.name"] == s) & (DATA["optim.lr"] == row["optim.lr"])]  # noqa: E731
        x, r = pick(row["strategy.name"]).sort_values("seed")["value"], pick("scratch").sort_values("seed")["value"]
        d = x.to_numpy() - r.to_numpy()
        assert row["n_pairs"] == 3 and row["mean_diff"] == pytest.approx(d.mean())
        t = d.mean() / (d.std(ddof=1) / np.sqrt(len(d)))  # by hand, not the code's ttest_rel
        assert row["p_value"] == pytest.approx(2 * sps.t.sf(abs(t), len(d) - 1))
        # a resampled mean cannot leave [min, max] of the differences (up to float rounding)
        assert d.min() - 1e-12 <= row["boot_ci95_low"] < d.mean() < row["boot_ci95_high"] <= d.max() + 1e-12


def test_bootstrap_matches_scipys_percentile_bootstrap():
    d = RNG.normal(0.05, 0.1, 12)
    low, high = stats.bootstrap_ci(d)
    ref = sps.bootstrap((d,), np.mean, n_resamples=10_000, method="percentile", rng=0).confidence_interval
    width = ref.high - ref.low
    assert (low, high) == pytest.approx((ref.low, ref.high), abs=0.05 * width)  # both Monte Carlo
    assert stats.bootstrap_ci(d) == (low, high)  # fixed seed


def test_reference_errors_name_the_keys():
    summary = stats.summary(DATA, BY)
    with pytest.raises(keys.ReportError, match="no finished run has strategy.name=linear"):
        stats.reference("strategy.name=linear", BY, summary)
    assert stats.reference("probe", BY, summary) == {"strategy.name": "probe"}


def test_labels_one_mapping_with_a_fallback():
    assert keys.label("optim.lr") == "learning rate"
    assert keys.label("strategy.name") == "strategy"
    assert keys.label("data.shots") == "shots per class"
    assert keys.metric_label("final_val_acc") == "final val accuracy (%)"
    assert keys.metric_label("best_val_acc") == "best val accuracy (%)"
    assert keys.metric_label("train_seconds") == "training time (s)"  # not a fraction: no %
    assert keys.label("optim.momentum") == "optim momentum"  # unknown keys still read as words
    assert keys.label("model.weights") == "model weights"
    assert keys.label("loader.name") == "loader"


def test_tables_and_figures_use_the_labels():
    summary = stats.summary(DATA, BY)
    ref = stats.reference(None, BY, summary)
    gaps = stats.gaps(DATA, BY, ["seed"], ref, summary, bootstrap=False)
    notes = tables.method_notes("final_val_acc", ref, "t", [], ["seed"])
    md = tables.markdown("title", summary, gaps, BY, "final_val_acc", ref, "t", notes, [])
    assert "| strategy | learning rate | n | final val accuracy (%) | Δ vs scratch (pp) | p |" in md
    tex = tables.latex(summary, gaps, BY, "final_val_acc", ref, notes, "s")
    assert r"strategy & learning rate & n & final val accuracy (\%)" in tex

    ladder = figures.ladder(DATA, summary, BY, "final_val_acc")
    assert ladder.axes[0].get_ylabel() == "final val accuracy (%)"
    assert ladder.axes[0].get_xlabel() == "strategy"
    versus = figures.versus(DATA, summary, BY, "optim.lr", "best_val_acc")
    assert versus.get_supxlabel() == "learning rate" and versus.get_supylabel() == "best val accuracy (%)"


def test_the_parts_load_without_mlflow():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = ("import sys; import tlsweep.report.stats, tlsweep.report.tables, tlsweep.report.figures; "
            "print(sorted(m for m in ('mlflow', 'hydra') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_ladder_climbs_by_trainable_params_with_a_colour_per_strategy():
    """Fourteen strategies: fourteen distinct colours, scratch first, then left to right by what trains."""
    from tlsweep.config.keys import STRATEGIES

    size = {s: (i * 7919) % 101 * 1000 + 10 for i, s in enumerate(STRATEGIES)}  # an order unlike the names'
    size["scratch"] = 10**8  # trains the most, yet the baseline stays first
    rows = [{"strategy.name": s, "seed": str(k), "value": 0.5 + 0.01 * k, "trainable_params": size[s]}
            for s in STRATEGIES for k in range(3)]
    data = pd.DataFrame(rows, index=[f"r{i}" for i in range(len(rows))])
    fig = figures.ladder(data, stats.summary(data, ["strategy.name"]), ["strategy.name"], "final_val_acc")
    ax = fig.axes[0]
    ticks = [t.get_text().split()[0] for t in ax.get_xticklabels()]
    assert ticks == ["scratch"] + sorted((s for s in STRATEGIES if s != "scratch"), key=size.get)  # the baseline first
    from matplotlib.collections import PathCollection

    colours = {tuple(c.get_facecolor()[0]) for c in ax.collections if isinstance(c, PathCollection)}
    assert len(colours) == len(STRATEGIES) == 14


def test_every_seed_stays_visible_beside_the_mean():
    """n=3 must look like three dots: none under the mean marker, two equal values still two dots."""
    from matplotlib.collections import PathCollection

    rows = [{"strategy.name": "probe", "seed": str(k), "value": v, "trainable_params": 10}
            for k, v in enumerate([0.9412, 0.9608, 0.9412])]  # the middle seed is the mean's neighbour, two tie
    data = pd.DataFrame(rows, index=[f"r{i}" for i in range(len(rows))])
    ax = figures.ladder(data, stats.summary(data, ["strategy.name"]), ["strategy.name"], "final_val_acc").axes[0]
    (dots,) = [c for c in ax.collections if isinstance(c, PathCollection)]
    points = {tuple(p) for p in dots.get_offsets()}
    mean_x = ax.lines[0].get_xdata()[0]
    assert len(points) == 3 and all(x != mean_x for x, _ in points)


def test_holm_step_down_by_hand():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> raised to 0.06 (monotone)
    assert stats.holm(np.array([0.01, 0.04, 0.03, 0.005])) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # NaN (a gap without a test) is not counted in m, and stays NaN; adjusted values stop at 1
    assert stats.holm(np.array([np.nan, 0.2, 0.6])) == pytest.approx([np.nan, 0.4, 0.6], nan_ok=True)
    assert stats.holm(np.array([0.5, 0.7])) == pytest.approx([1.0, 1.0])
    assert len(stats.holm(np.array([]))) == 0


def test_gaps_carry_holm_over_the_table():
    gaps = stats.gaps(DATA, BY, ["seed"], {"strategy.name": "scratch"}, stats.summary(DATA, BY), bootstrap=False)
    p = gaps["p_value"].to_numpy()
    m, order = len(p), np.argsort(p)
    by_hand = np.empty(m)
    running = 0.0
    for i, j in enumerate(order):  # Holm 1979: step down from the smallest p-value
        running = max(running, min(1.0, (m - i) * p[j]))
        by_hand[j] = running
    assert gaps["p_holm"].to_numpy() == pytest.approx(by_hand)
    assert (gaps["p_holm"] >= gaps["p_value"]).all()


def test_pairs_that_all_differ_by_the_same_amount_get_no_p_value():
    """Seen on hymenoptera: probe vs finetune, three seeds, each 2 of 153 images apart. scipy's
    ttest_rel says p=0 (t is infinite); the report must not claim that."""
    x, r = np.array([0.954, 0.928, 0.935]), np.array([0.954, 0.928, 0.935]) - 2 / 153
    assert stats.paired_p(x, r) != stats.paired_p(x, r)  # NaN
    assert stats.paired_p(x, r + [0, 0.001, 0]) == pytest.approx(sps.ttest_rel(x, r + [0, 0.001, 0]).pvalue)
    data = pd.DataFrame({"strategy.name": ["probe"] * 3 + ["finetune"] * 3, "seed": ["0", "1", "2"] * 2,
                         "value": np.concatenate([x, r])})
    summary = stats.summary(data, ["strategy.name"])
    gaps = stats.gaps(data, ["strategy.name"], ["seed"], {"strategy.name": "probe"}, summary, bootstrap=False)
    assert gaps["n_pairs"].tolist() == [3] and np.isnan(gaps["p_value"]).all() and np.isnan(gaps["p_holm"]).all()
    md = tables.markdown("t", summary, gaps, ["strategy.name"], "final_val_acc", {"strategy.name": "probe"}, "t",
                         tables.method_notes("final_val_acc", {"strategy.name": "probe"}, "t", [], ["seed"], 0, 1), [])
    assert "| finetune | 3 | 92.6 ± 3.3 | -1.3 [-1.3, -1.3] | no spread |  |" in md and "no p-value is claimed" in md
    # the decision treats it as no evidence: the best is not named alone
    choice = stats.decide(data.assign(**{"data.shots": "10"}), ["data.shots"], ["strategy.name"], ["seed"])
    assert choice["verdict"].tolist() == ["probe ≈ finetune"]


def test_a_key_the_reference_never_has_pairs_with_it():
    """Pooled sweeps `strategy=scratch,finetune` and `strategy=lpft strategy.probe_epochs=1,3`: scratch
    has no probe_epochs (unset), so lpft at either value is compared with scratch, not with nothing.
    A key the reference does have (its own lr) still pairs on equal values only."""
    rows = [(s, pe, lr, seed, 0.5 + 0.1 * i + 0.01 * int(seed))
            for i, (s, pe) in enumerate([("scratch", keys.UNSET), ("finetune", keys.UNSET), ("lpft", "1"), ("lpft", "3")])
            for lr in ("0.001",) for seed in ("0", "1", "2")]
    rows += [("finetune", keys.UNSET, "0.01", seed, 0.9) for seed in ("0", "1", "2")]  # scratch never ran at 0.01
    data = pd.DataFrame(rows, columns=["strategy.name", "strategy.probe_epochs", "optim.lr", "seed", "value"])
    by = ["strategy.name", "strategy.probe_epochs", "optim.lr"]
    summary = stats.summary(data, by)
    gaps = stats.gaps(data, by, ["seed"], {"strategy.name": "scratch"}, summary, bootstrap=False)
    got = {tuple(r[by]): (r["n_pairs"], r["mean_diff"]) for _, r in gaps.iterrows()}
    assert got[("lpft", "1", "0.001")] == (3, pytest.approx(0.2)) and got[("lpft", "3", "0.001")] == (3, pytest.approx(0.3))
    assert got[("finetune", keys.UNSET, "0.001")] == (3, pytest.approx(0.1))
    assert got[("finetune", keys.UNSET, "0.01")][0] == 0  # no scratch at lr 0.01: no pairs, as before
    assert stats._candidate(by, ("scratch", keys.UNSET, "0.001")) == "scratch, lr=0.001"
