"""The advisor's policy on synthetic tables: screen, successive halving, paired seeds, budget, resume.

No torch: every table is made here or by tlsweep.advisor.simulate.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tlsweep.advisor import budget, table
from tlsweep.advisor.budget import CostModel, parse_duration
from tlsweep.advisor.policy import next_step
from tlsweep.advisor.simulate import random_truth, run, simulate, true_grid, truth_best
from tlsweep.advisor.study import ACTIONS, Config, Job, StudyConfig
from tlsweep.config.errors import ConfigError

LRS = {"probe": (1e-3, 1e-2, 1e-1), "partial": (1e-4, 1e-3, 1e-2), "finetune": (1e-5, 1e-4, 1e-3),
       "lora": (1e-4, 1e-3, 1e-2), "scratch": (1e-3, 1e-2, 1e-1)}


def study(**kw) -> StudyConfig:
    base = dict(backbones=("a", "b", "c"), strategies=("probe", "finetune", "lora"), lrs=LRS, epochs=9,
                budget=10 * 3600.0, prior_epoch_seconds=40.0, prior_overhead_seconds=20.0)
    return StudyConfig(**(base | kw))


def truth(s: StudyConfig, best: dict | None = None, default: float = 0.6, noise: float = 0.005,
          seconds: dict | None = None) -> pd.DataFrame:
    """Every config at `default` (a little lower away from the middle LR), `best` {(b, strategy, lr): mean}
    above it; `seconds` {(b, strategy): seconds per epoch}, else 10 (probe 1)."""
    best, seconds = best or {}, seconds or {}
    rows = []
    for b in s.backbones:
        for strategy, grid in s.grid.items():
            for i, lr in enumerate(grid):
                mean = best.get((b, strategy, lr), default - 0.02 * abs(i - 1))
                per = seconds.get((b, strategy), 1.0 if strategy == "probe" else 10.0)
                rows.append(dict(backbone=b, strategy=strategy, lr=lr, mean=mean, noise=noise, rate=1.0,
                                 epoch_seconds=per, overhead_seconds=15.0))
    return pd.DataFrame(rows)


def keys(results: pd.DataFrame) -> list[tuple]:
    return list(table.visible(results)[list(table.KEY)].itertuples(index=False, name=None))


# -- the decisions -------------------------------------------------------------------------------------------
def test_a_clear_winner_is_found_in_few_rounds_for_a_fraction_of_the_grid():
    s = study()
    t = truth(s, {("b", "finetune", 1e-4): 0.9, ("b", "probe", 1e-2): 0.7})
    sim = simulate(t, s, seed_sd=0.01)
    assert sim.verdict.stopped == "decided"
    assert sim.verdict.recommendation == Config("b", "finetune", 1e-4, 9)
    assert sim.verdict.ci[0] > 0 and sim.verdict.n_pairs >= s.min_seeds
    assert sim.rounds <= 6  # screen, rung 0, rung 1, seeds to min_seeds, at most two more
    assert sim.spent < 0.5 * sim.true_grid
    assert set(sim.log["action"]) <= set(ACTIONS) and "recommend" in set(sim.trace["action"])


def test_the_screen_keeps_the_best_backbones_by_probe_and_records_why():
    s = study(strategies=("finetune",))
    t = truth(s, {("c", "probe", 1e-2): 0.8, ("a", "probe", 1e-2): 0.75, ("b", "probe", 1e-2): 0.5})
    sim = simulate(t, s)
    screen = sim.trace[sim.trace["stage"] == "screen"].set_index("candidate")
    assert screen.loc["c", "action"] == "promote" and "rank 1 of 3" in screen.loc["c", "evidence"]
    assert screen.loc["b", "action"] == "drop" and "rank 3 of 3" in screen.loc["b", "evidence"]
    assert not (sim.results["backbone"].eq("b") & sim.results["strategy"].ne("probe")).any()


def test_two_candidates_within_the_margin_end_in_the_cheaper_one():
    s = study(strategies=("finetune", "lora"), backbones=("a",))
    t = truth(s, {("a", "finetune", 1e-4): 0.900, ("a", "lora", 1e-3): 0.901}, noise=0.002,
              seconds={("a", "finetune"): 30.0, ("a", "lora"): 10.0})
    sim = simulate(t, s, seed_sd=0.02)
    v = sim.verdict
    assert v.stopped == "equivalent"
    assert v.recommendation == Config("a", "lora", 1e-3, 9)  # 10 s an epoch against 30
    assert -s.margin <= v.ci[0] and v.ci[1] <= s.margin

    cheaper_finetune = simulate(truth(s, {("a", "finetune", 1e-4): 0.900, ("a", "lora", 1e-3): 0.901}, noise=0.002,
                                      seconds={("a", "finetune"): 5.0, ("a", "lora"): 10.0}), s, seed_sd=0.02)
    assert cheaper_finetune.verdict.recommendation == Config("a", "finetune", 1e-4, 9)


def test_a_pair_the_seeds_cannot_separate_ends_at_max_seeds():
    s = study(backbones=("a",), strategies=("finetune", "lora"), max_seeds=5)
    t = truth(s, {("a", "finetune", 1e-4): 0.800, ("a", "lora", 1e-3): 0.812}, noise=0.03)
    sim = simulate(t, s)
    v = sim.verdict
    assert v.stopped == "max_seeds" and v.n_pairs == 5 and v.ci[0] < 0 < v.ci[1] and v.ci[1] - v.ci[0] > 2 * s.margin
    adds = sim.log[(sim.log["action"] == "add seed") & sim.log["candidate"].str.contains(" vs ")]
    assert len(adds) == 5 - s.min_seeds  # one seed a batch once min_seeds pairs are in


def test_a_short_run_that_cannot_catch_the_incumbent_is_dropped_with_its_evidence():
    s = study(backbones=("a",), strategies=("finetune", "lora"))
    t = truth(s, {("a", "finetune", 1e-4): 0.9}, default=0.5)
    sim = simulate(t, s)
    row = sim.trace[(sim.trace["candidate"] == "a/lora") & (sim.trace["stage"] == "rung 1")].iloc[0]
    assert row["action"] == "drop" and "cannot catch up" in row["evidence"]
    assert "allowance 0.0500 (default" in row["evidence"]
    assert not ((sim.results["strategy"] == "lora") & (sim.results["epochs"] == 9)).any()
    # the best short run went first, alone: nothing ran at full length to compare with
    first = sim.log[(sim.log["action"] == "promote")].iloc[0]
    assert first["candidate"] == "a/finetune" and "nothing at full length yet" in first["evidence"]


@pytest.mark.parametrize("n_lrs, eta, promoted", [(6, 3, 2), (6, 2, 3), (3, 2, 2), (3, 3, 1), (2, 3, 1)])
def test_successive_halving_promotes_the_top_ceil_n_over_eta_of_the_lrs(n_lrs, eta, promoted):
    lrs = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3)[-n_lrs:]
    s = study(backbones=("a",), strategies=("finetune",), lrs={"finetune": lrs}, eta=eta)
    sim = simulate(truth(s), s)
    full_seed0 = sim.results[(sim.results["epochs"] == 9) & (sim.results["seed"] == 0)]
    assert len(full_seed0) == promoted
    # the promoted are the best short runs
    short = sim.results[sim.results["epochs"] == 3].sort_values("select_acc", ascending=False)
    assert set(full_seed0["lr"]) == set(short["lr"].head(promoted))
    assert (sim.results[sim.results["epochs"] == 3]["lr"].nunique()) == n_lrs


# -- the budget ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("draws", [10, pytest.param(50, marks=pytest.mark.slow)])  # the full tier: more truths
def test_the_budget_is_never_exceeded_on_random_truths(draws):
    """With priors that do not underestimate (the cost model's stated condition), real job-seconds
    stay within the budget whatever the truth, and every study ends in a verdict."""
    rng = np.random.default_rng(0)
    stops = set()
    for i in range(draws):
        base = study(strategies=("probe", "scratch", "partial", "finetune", "lora"), epochs=int(rng.integers(3, 16)))
        t = random_truth(rng, base)
        grid = true_grid(t, base)
        s = study(strategies=base.strategies, epochs=base.epochs, budget=float(rng.uniform(0.02, 0.6)) * grid,
                  prior_epoch_seconds=float(t["epoch_seconds"].max()),
                  prior_overhead_seconds=float(t["overhead_seconds"].max()), parallel=int(rng.integers(1, 5)))
        sim = simulate(t, s, seed=i, seed_sd=0.01)
        # over the budget only by the jobs that measure a backbone the priors would never start: its first
        measuring = sim.results.groupby("backbone", sort=False)["job_seconds"].first().sum()
        over = sim.log["evidence"].str.contains("run to measure the backbone").any()
        assert sim.spent <= s.budget + (measuring if over else 0) + 1e-6, (i, sim.spent, s.budget)
        assert sim.spent == pytest.approx(table.visible(sim.results)["job_seconds"].sum())
        stops.add(sim.verdict.stopped)
    assert "budget" in stops and stops & {"decided", "equivalent"}  # the draws reach both kinds of end


@pytest.mark.parametrize("budget_s,spent_s", [(60.0, 48.0), (30.0, 48.0)])
def test_a_budget_the_priors_would_refuse_any_job_measures_each_backbone_once_and_picks(budget_s, spent_s):
    """Priors of 109 s a probe against a budget of 60 s: no job would ever start, and the study would end with no
    pick. Each backbone's cheapest probe runs instead (24 s each, real), and the study goes on priced by what they
    measured: at 60 s it stops within the budget, at 30 s it overspends by those two jobs only."""
    s = study(backbones=("a", "b"), strategies=("probe", "finetune"), budget=budget_s, prior_overhead_seconds=100.0)
    t = truth(s, {("b", "probe", 1e-2): 0.8})
    first = next_step(table.empty(), s)
    assert [(j.backbone, j.strategy, j.lr) for j in first.jobs] == [("a", "probe", 1e-3), ("b", "probe", 1e-3)]
    measuring = "est. 109 s .prior.; over what the budget has left, run to measure"
    assert first.trace["evidence"].str.contains(measuring).all()
    sim = simulate(t, s)
    assert sim.spent == pytest.approx(spent_s) and sim.jobs == 2
    assert sim.verdict.stopped == "budget" and sim.verdict.recommendation is not None
    assert sim.verdict.recommendation.strategy == "probe"


def test_no_batch_is_estimated_over_the_remaining_budget():
    s = study(budget=900.0)
    t = truth(s, {("b", "finetune", 1e-4): 0.9})
    results = table.empty()
    for _ in range(50):
        step = next_step(results, s)
        if step.verdict:
            break
        assert sum(j.cost for j in step.jobs) <= s.budget - step.spent
        rows = [run(t.set_index(["backbone", "strategy", "lr"]).loc[(j.backbone, j.strategy, j.lr)], j, s.epochs)
                for j in step.jobs]
        results = pd.concat([results, pd.DataFrame(rows)], ignore_index=True)
    assert step.verdict.stopped == "budget" and "job-seconds" in step.verdict.why


def test_a_rung_the_budget_cannot_afford_drops_that_candidate_not_the_study():
    s = study(backbones=("a",), strategies=("probe", "finetune", "lora"), budget=327.0)
    row = dict(backbone="a", seed=0, status="finished")
    rows = [row | dict(strategy="probe", lr=lr, epochs=9, select_acc=0.6, job_seconds=24.0, epoch_seconds=1.0)
            for lr in LRS["probe"]]
    rows += [row | dict(strategy="lora", lr=lr, epochs=s.short, select_acc=acc, job_seconds=45.0, epoch_seconds=10.0)
             for lr, acc in zip(LRS["lora"], (0.7, 0.75, 0.65))]
    step = next_step(pd.DataFrame(rows), s)  # 120 s left: lora's full run (105 s) fits, finetune's short (135 s) not
    assert step.verdict is None and [(j.strategy, j.lr, j.epochs) for j in step.jobs] == [("lora", 1e-3, 9)]
    dropped = step.trace[(step.trace["action"] == "drop") & (step.trace["candidate"] == "a/finetune")]
    assert dropped["evidence"].str.contains("cannot be afforded: its cheapest job is est. 135 s").all() and len(dropped)


def test_the_wall_clock_limit_ends_the_study():
    s = study(wall=600.0, parallel=4)
    step = next_step(table.empty(), s, wall_elapsed=600.0)
    assert step.verdict.stopped == "budget" and "wall-clock" in step.verdict.why and step.verdict.recommendation is None
    first = next_step(table.empty(), s, wall_elapsed=0.0)
    assert budget.makespan([j.cost for j in first.jobs], 4) <= 600.0


def test_costs_come_from_the_same_backbone_and_strategy_else_the_backbone_else_the_prior():
    s = study()
    rows = pd.DataFrame([
        dict(backbone="a", strategy="finetune", lr=1e-4, epochs=9, seed=0, status="finished", select_acc=0.8,
             job_seconds=9 * 50 + 30, epoch_seconds=50.0),
        dict(backbone="b", strategy="probe", lr=1e-2, epochs=9, seed=0, status="finished", select_acc=0.7,
             job_seconds=9 * 2 + 100, epoch_seconds=2.0),
        dict(backbone="zz", strategy="lora", lr=5.0, epochs=1, seed=0, status="finished", select_acc=0.7,
             job_seconds=10_000, epoch_seconds=1.0)])
    costs = CostModel(table.visible(rows), s)
    assert costs.estimate("a", "finetune", 3) == (3 * 50 + 30, "measured")
    assert costs.estimate("a", "lora", 3) == (3 * 50 + 30, "backbone")  # a's slowest measured epoch
    # b's probe is faster than the prior: the prior (an upper guess) stands; b's overhead is measured
    assert costs.estimate("b", "finetune", 3) == (3 * 40 + 100, "prior")
    assert costs.estimate("c", "finetune", 3) == (3 * 40 + 20, "prior")
    # a first probe trains a head on cached features: its pass is in the overhead, its epochs cost next to nothing
    assert costs.estimate("c", "probe", 9) == (9 * budget.PROBE_PRIOR_EPOCH_SECONDS + 20, "prior")
    # spent counts the study's rows only: zz is nobody's job here
    assert budget.spent(table.visible(rows), s, costs) == 480 + 118


def test_an_unmeasured_strategy_is_costed_from_its_backbones_feature_pass():
    s = study()
    probe = dict(backbone="b", strategy="probe", lr=1e-2, epochs=9, seed=0, status="finished", select_acc=0.7,
                 job_seconds=9 * 0.1 + 14, epoch_seconds=0.1)
    passed = pd.DataFrame([probe | {"feature_seconds": 12.0}, probe | {"seed": 1, "feature_seconds": float("nan")}])
    costs = CostModel(table.visible(passed), s)
    # 2 passes an epoch, below the prior of 40; the probe's overhead (its pass included) bounds the job's
    assert costs.estimate("b", "finetune", 3) == (3 * budget.PASS_FACTOR * 12.0 + 14, "feature pass")
    assert costs.estimate("a", "finetune", 3) == (3 * 40 + 20, "prior")  # another backbone's pass is no guide
    read = CostModel(table.visible(passed.assign(feature_seconds=float("nan"))), s)
    assert read.estimate("b", "finetune", 3)[1] == "prior"  # features read from the cache time no pass


def test_spent_and_the_full_grid_are_reported():
    s = study()
    sim = simulate(truth(s, {("b", "finetune", 1e-4): 0.9}), s)
    assert 0 < sim.spent < sim.full_grid
    progress = next_step(sim.results, s).progress
    assert progress.startswith(f"spent {sim.spent:,.0f} job-seconds of an estimated full grid")
    assert sim.true_grid == pytest.approx(3 * 3 * 3 * s.min_seeds * 15 + 3 * 3 * s.min_seeds * 9 * (1 + 10 + 10))


@pytest.mark.parametrize("text, seconds", [("30m", 1800), ("2h", 7200), ("90s", 90), ("1h30m", 5400),
                                           ("1h 30m", 5400), ("1.5h", 5400), ("2d", 172800), (" 45M ", 2700)])
def test_budget_strings(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("value, says", [("30", "30 has no unit: write 30m"), (30, "write 30m for minutes"),
                                         ("", "a duration"), ("abc", "units d, h, m, s"), ("30min", "units"),
                                         ("30m1h", "largest first"), ("1h1h", "units"), ("0m", "more than zero"),
                                         ("-5m", "units"), (None, "a duration"), (True, "a duration")])
def test_budget_string_errors_name_the_key(value, says):
    with pytest.raises(ConfigError, match="advise.budget") as err:
        parse_duration(value)
    assert says in str(err.value)
    with pytest.raises(ConfigError, match="advise.wall"):
        parse_duration(value, key="advise.wall")


@pytest.mark.parametrize("change, key", [(dict(strategies=("finetune", "nope")), "advise.strategies"),
                                         (dict(lrs={"finetune": (1e-4,)}), "advise.lrs"),
                                         (dict(eta=1), "advise.eta"), (dict(budget=0), "advise.budget"),
                                         (dict(short_epochs=20), "advise.short_epochs"),
                                         (dict(min_seeds=5, max_seeds=3), "advise.min_seeds")])
def test_study_config_errors_name_the_key(change, key):
    with pytest.raises(ConfigError, match=key):
        study(**change)


# -- resume ------------------------------------------------------------------------------------------------
def test_a_resumed_study_reuses_its_finished_rows():
    s = study()
    t = truth(s, {("c", "lora", 1e-3): 0.85, ("c", "finetune", 1e-4): 0.84})
    whole = simulate(t, s, seed_sd=0.01)
    assert len(set(keys(whole.results))) == len(whole.results)  # never the same job twice
    for cut in range(1, whole.rounds):
        done = whole.results[whole.results["batch"] <= cut]
        step = next_step(done, s)
        assert not {j.key for j in step.jobs} & set(keys(done)), cut
        resumed = simulate(t, s, seed_sd=0.01, results=done)
        assert resumed.verdict == whole.verdict
        assert sorted(keys(resumed.results)) == sorted(keys(whole.results))
    again = next_step(whole.results, s)
    assert again.verdict == whole.verdict and not again.jobs


def test_a_grid_run_by_hand_is_reused_without_short_runs():
    s = study(backbones=("a", "b"), strategies=("finetune", "lora"), keep=2)
    t = truth(s, {("a", "lora", 1e-3): 0.8}).set_index(["backbone", "strategy", "lr"])
    jobs = [Job(b, st, lr, s.epochs, seed, "by hand", 0.0, "") for b in s.backbones for st in s.strategies
            for lr in s.grid[st] for seed in range(3)]
    grid = pd.DataFrame([run(t.loc[(j.backbone, j.strategy, j.lr)], j, s.epochs) for j in jobs])
    step = next_step(grid, s)
    assert step.verdict is not None and step.verdict.recommendation == Config("a", "lora", 1e-3, 9)
    assert step.verdict.stopped == "decided" and not step.jobs
    assert step.spent == pytest.approx(grid["job_seconds"].sum())


# -- what a decision may read --------------------------------------------------------------------------------
def test_the_scored_split_is_never_read():
    """Scored accuracies that rank every config the other way round change nothing: the same jobs, trace
    and verdict as with no scored column at all."""
    s = study()
    t = truth(s, {("b", "finetune", 1e-4): 0.9, ("b", "lora", 1e-3): 0.88, ("a", "probe", 1e-2): 0.7})
    flipped = t.assign(scored_mean=1.0 - t["mean"])
    honest, misled = simulate(t, s, seed_sd=0.01), simulate(flipped, s, seed_sd=0.01)
    assert misled.verdict == honest.verdict and misled.verdict.recommendation == Config("b", "finetune", 1e-4, 9)
    pd.testing.assert_frame_equal(misled.log, honest.log)
    assert keys(misled.results) == keys(honest.results)
    # the scored split would flip the choice: the worst select_acc has the best scored accuracy
    final = misled.results[misled.results["status"] == "finished"]
    by_scored = final.groupby(["backbone", "strategy", "lr", "epochs"])["scored_acc"].mean().idxmax()
    assert by_scored[:3] != ("b", "finetune", 1e-4)
    for scored in (None, "garbage"):
        other = misled.results.drop(columns="scored_acc") if scored is None else \
            misled.results.assign(scored_acc=scored)
        step = next_step(other, s)
        assert step.verdict == misled.verdict
        pd.testing.assert_frame_equal(step.trace, misled.trace)
    assert table.SCORED not in table.visible(misled.results).columns


def test_no_decision_module_names_the_scored_column():
    import inspect

    from tlsweep.advisor import budget as b, policy as p, study as st
    for module in (p, b, st):
        assert "scored_acc" not in inspect.getsource(module) and "SCORED" not in inspect.getsource(module)


# -- lost candidates ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", ["diverged", "failed"])
def test_diverged_and_failed_configs_are_dropped_never_averaged(status):
    s = study()
    win = Config("b", "finetune", 1e-4, 9)
    t = truth(s, {("b", "finetune", 1e-4): 0.9, ("b", "lora", 1e-3): 0.8, ("a", "probe", 1e-2): 0.7})
    sim = simulate(t, s, seed_sd=0.01)
    assert sim.verdict.recommendation == win
    # one seed of the winner diverged, after logging a select_acc that would only raise its mean
    lost = pd.DataFrame([dict(backbone="b", strategy="finetune", lr=1e-4, epochs=9, seed=8, status=status,
                              select_acc=0.99, scored_acc=0.99, job_seconds=100.0, epoch_seconds=10.0)])
    step = next_step(pd.concat([sim.results, lost], ignore_index=True), s)
    drop = step.trace[(step.trace["candidate"] == "b/finetune lr=0.0001") & (step.trace["action"] == "drop")]
    assert len(drop) == 1 and f"{status} at seed 8" in drop["evidence"].iloc[0]
    assert all(j.config != win for j in step.jobs)
    assert step.verdict is None or step.verdict.recommendation != win
    finals = step.trace[step.trace["stage"].isin(["seeds", "verdict"])]
    assert not finals["candidate"].str.contains(str(win), regex=False).any()


def test_a_diverged_lr_never_reaches_the_full_rung():
    s = study(backbones=("a",), strategies=("finetune",))
    t = truth(s, {("a", "finetune", 1e-3): 0.95}).assign(diverge=lambda d: np.where(d["lr"] == 1e-3, 1.0, 0.0))
    sim = simulate(t, s)
    assert sim.verdict.recommendation.lr != 1e-3
    assert not ((sim.results["lr"] == 1e-3) & (sim.results["epochs"] == 9)).any()
    assert sim.results.loc[sim.results["lr"] == 1e-3, "status"].eq("diverged").all()


def test_nothing_left_is_a_verdict():
    s = study(backbones=("a",), strategies=("finetune",))
    sim = simulate(truth(s).assign(diverge=1.0), s)
    assert sim.verdict.stopped == "nothing" and sim.verdict.recommendation is None


# -- the package ---------------------------------------------------------------------------------------------
def test_the_advisor_imports_no_torch_mlflow_or_hydra():
    code = ("import sys, tlsweep.advisor, tlsweep.advisor.simulate; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'mlflow', 'hydra', 'omegaconf', 'timm'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_truth_best_skips_configs_that_may_diverge():
    s = study()
    t = truth(s, {("a", "lora", 1e-2): 0.99, ("b", "lora", 1e-3): 0.9}).assign(
        diverge=lambda d: np.where((d["backbone"] == "a") & (d["lr"] == 1e-2), 0.5, 0.0))
    assert truth_best(t, s) == Config("b", "lora", 1e-3, 9)
