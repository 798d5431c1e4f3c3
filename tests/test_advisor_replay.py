"""The advisor and its baselines replayed on measured grids (tlsweep.advisor.replay, tlsweep.advisor.baselines):
pure functions over tables, tested on synthetic grids whose truth is known."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tlsweep.advisor import baselines
from tlsweep.advisor.replay import Grid, Unmeasured, advise, claim, draws, regret, study_for, summary
from tlsweep.advisor.simulate import run, simulate
from tlsweep.advisor.study import Job, StudyConfig
from tlsweep.advisor.table import COLUMNS, SCORED

LRS = {"probe": (1e-3, 1e-2, 1e-1), "finetune": (1e-5, 1e-4, 1e-3)}


def truth(best: dict | None = None, backbones=("a", "b"), noise: float = 0.005) -> pd.DataFrame:
    """Every candidate near 0.6 (two points lower per LR step off the middle), `best` above it."""
    rows = []
    for b in backbones:
        for s, grid in LRS.items():
            for i, lr in enumerate(grid):
                rows.append(dict(backbone=b, strategy=s, lr=lr, mean=(best or {}).get((b, s, lr), 0.6 - 0.02 * abs(i - 1)),
                                 noise=noise, rate=1.0, epoch_seconds=1.0 if s == "probe" else 10.0,
                                 overhead_seconds=5.0))
    return pd.DataFrame(rows)


def grid_of(t: pd.DataFrame, lengths=(1, 3, 9), seeds=(0, 1, 2), sim_seed: int = 0) -> pd.DataFrame:
    """A measured grid drawn from a truth: every candidate at every length and seed."""
    rows = [run(r, Job(r.backbone, r.strategy, r.lr, e, s, "", 0.0, ""), max(lengths), sim_seed)
            for _, r in t.iterrows() for e in lengths for s in seeds]
    return pd.DataFrame(rows, columns=list(COLUMNS))


def test_the_grid_scores_a_pick_by_its_full_length_truth_and_says_what_it_lacks():
    rows = pd.DataFrame([
        dict(backbone="a", strategy="probe", lr=0.01, epochs=9, seed=s, status="finished", select_acc=0.5,
             **{SCORED: acc}, job_seconds=10.0, epoch_seconds=1.0) for s, acc in ((0, 0.70), (1, 0.72))] + [
        dict(backbone="a", strategy="finetune", lr=1e-4, epochs=9, seed=s, status=st, select_acc=0.9,
             **{SCORED: acc}, job_seconds=30.0, epoch_seconds=3.0)
        for s, st, acc in ((0, "finished", 0.80), (1, "diverged", math.nan))])
    g = Grid(rows)
    assert g.epochs == 9 and g.seeds == (0, 1) and g.cost == 80.0
    assert g.truth[("a", "probe", 0.01)] == pytest.approx(0.71)
    assert g.truth[("a", "finetune", 1e-4)] == pytest.approx(0.40)  # its diverged seed gave nothing
    assert regret(g, ("a", "probe", 0.01)) == 0.0
    assert regret(g, ("a", "finetune", 1e-4)) == pytest.approx(31.0)
    assert regret(g, None) == pytest.approx(100 * (0.71 - min(g.truth)))
    with pytest.raises(Unmeasured, match="3 epochs"):
        g.row("a", "probe", 0.01, 3, 0)
    with pytest.raises(ValueError, match="twice"):
        Grid(pd.concat([rows, rows.iloc[:1]]))


def test_a_replay_of_a_live_studys_own_rows_reaches_its_verdict():
    """What a study ran, replayed as a grid with its seeds in their order, gives the same recommendation for the
    same job-seconds: the replay answers exactly as the live runs did."""
    s = StudyConfig(("a", "b"), ("probe", "finetune"), LRS, 9, budget=2000.0, prior_epoch_seconds=10.0,
                    prior_overhead_seconds=5.0, short_epochs=3)
    t = truth({("b", "finetune", 1e-4): 0.8})
    live = simulate(t, s, seed_sd=0.01)
    out = advise(Grid(live.results.drop(columns="batch")), s, order=None)
    assert out.pick == (live.verdict.recommendation.backbone, live.verdict.recommendation.strategy,
                        live.verdict.recommendation.lr)
    assert out.spent == pytest.approx(live.spent) and out.jobs == live.jobs and out.why == live.verdict.stopped


def test_the_documented_live_study_replays_on_its_committed_rows_to_the_verdict_it_printed():
    """docs/advisor.md's live study (benchmarks/advisor/advise.sh on digits): its runs, committed as a small grid,
    replayed under the same config with the seeds in their order, reach the recommendation, the stop and the number
    of jobs its committed trace shows. A change of the policy that changes that study fails here: rerun it."""
    import re

    from hydra import compose, initialize_config_dir

    from tests.conftest import CONF, REPO
    from tlsweep.advisor import space

    results = REPO / "docs" / "results" / "advisor"
    rows = pd.read_csv(results / "live-digits-all.csv")
    said = [line for line in (results / "trace-digits-all.md").read_text().splitlines() if "| recommend |" in line]
    assert len(said) == 1
    (candidate, why), = re.findall(r"\| verdict \| (.+?) \| recommend \| (\w+):", said[0])
    with initialize_config_dir(config_dir=str(CONF), version_base=None):  # advise.sh's command for this study
        cfg = compose("config", overrides=["experiment=advise", "data=digits", "data.shots=null", "epochs=10",
                                           "bf16=false", "advise.budget=5m", "advise.backbones=[efficientnet_lite0]",
                                           "advise.strategies=[probe,partial,finetune,lpft]"])
    study = space.study(dict(cfg.advise), epochs=cfg.epochs, base_lr=cfg.optim.lr, parallel=1,
                        importable=lambda m: True)
    out = advise(Grid(rows.drop(columns=["task", "draw"])), study, order=None)
    assert out.pick is not None and candidate == f"{out.pick[0]}/{out.pick[1]} lr={out.pick[2]:g} {cfg.epochs}ep"
    assert out.why == why and out.jobs == len(rows)


def test_the_advisor_replayed_finds_a_clear_best_within_its_budget():
    g = Grid(grid_of(truth({("b", "finetune", 1e-4): 0.8})))
    study = study_for(g, budget=0.5 * g.cost, short_epochs=3, prior_epoch_seconds=10.0, prior_overhead_seconds=5.0)
    assert study.max_seeds == 3 and study.epochs == 9 and set(study.backbones) == {"a", "b"}
    for order in range(3):
        out = advise(g, study, order=order)
        assert out.pick == ("b", "finetune", 1e-4) and regret(g, out.pick) == 0.0
        assert out.spent <= study.budget


def test_a_study_that_asks_for_more_seeds_than_the_grid_measured_is_refused():
    g = Grid(grid_of(truth(), seeds=(0, 1)))
    study = study_for(g, budget=10 * g.cost, short_epochs=3, max_seeds=5, min_seeds=3)
    with pytest.raises(Unmeasured, match="seed 2"):
        advise(g, study, order=None)


@pytest.mark.parametrize("method", ["random_search", "one_epoch_top_k", "successive_halving"])
@pytest.mark.parametrize("share", [0.05, 0.2, 0.5])
def test_a_budgeted_baseline_never_spends_more_than_its_budget(method, share):
    g = Grid(grid_of(truth({("a", "finetune", 1e-3): 0.75})))
    for order in range(5):
        out = getattr(baselines, method)(g, share * g.cost, np.random.default_rng(order))
        assert out.spent <= share * g.cost + 1e-9
        assert out.pick is None or out.pick in g.candidates


def test_random_search_with_the_whole_grid_runs_every_candidate_once_and_keeps_the_best_select():
    g = Grid(grid_of(truth({("b", "probe", 1e-2): 0.9})))
    out = baselines.random_search(g, g.cost, np.random.default_rng(0))
    assert out.jobs == len(g.candidates) and out.pick == ("b", "probe", 1e-2)
    assert baselines.random_search(g, 1.0, np.random.default_rng(0)).pick is None  # not even one run fits


def test_one_epoch_top_k_ranks_on_one_epoch_then_trains_the_best_in_rank_order():
    rows = grid_of(truth({("a", "probe", 0.1): 0.9, ("b", "finetune", 1e-4): 0.85}))
    g = Grid(rows)
    one = rows[rows["epochs"] == 1]
    first_pass = float(one.groupby(["backbone", "strategy", "lr"])["job_seconds"].first().sum())
    # room for the one-epoch pass and one full run: the best one-epoch candidate is the one trained
    out = baselines.one_epoch_top_k(g, first_pass + 20.0, np.random.default_rng(0))
    assert out.jobs == len(g.candidates) + 1
    assert out.pick == ("a", "probe", 0.1)
    with pytest.raises(ValueError, match="no 2-epoch runs"):
        baselines.one_epoch_top_k(g, g.cost, np.random.default_rng(0), epochs=2)


def test_successive_halving_promotes_the_top_third_of_each_rung():
    g = Grid(grid_of(truth({("b", "finetune", 1e-4): 0.9})))
    out = baselines.successive_halving(g, 10 * g.cost, np.random.default_rng(0), eta=3)
    n = len(g.candidates)  # 12 on the 1-epoch rung, then 4 at 3 epochs, then 2 at full length
    assert out.jobs == n + math.ceil(n / 3) + math.ceil(math.ceil(n / 3) / 3)
    assert out.pick == ("b", "finetune", 1e-4)


def test_a_strategy_that_cannot_run_one_epoch_starts_the_one_epoch_rule_and_halving_at_its_least_length():
    """lpft's probe phase takes 2 epochs: its 1-epoch runs fail as configs. Both baselines then run it first at
    its least valid length (3 here), rank it there beside the others' 1-epoch runs, and never run it twice at
    one length."""
    rows = grid_of(truth({("b", "finetune", 1e-4): 0.9}))
    short = (rows["strategy"] == "finetune") & (rows["epochs"] == 1)
    rows.loc[short, ["status", "select_acc", SCORED]] = ["failed", math.nan, math.nan]
    g = Grid(rows)
    least = {"finetune": 3}
    assert baselines.one_epoch_top_k(g, g.cost, np.random.default_rng(0)).pick[1] == "probe"  # finetune never ranks
    out = baselines.one_epoch_top_k(g, 10 * g.cost, np.random.default_rng(0), least=least)
    assert out.pick == ("b", "finetune", 1e-4) and out.jobs == 2 * len(g.candidates)
    sh = baselines.successive_halving(g, 10 * g.cost, np.random.default_rng(0), least=least)
    assert sh.pick == ("b", "finetune", 1e-4)
    n = len(g.candidates)  # 12 first runs; the top 4 at 3 epochs, of which finetune's already ran there; 2 at 9
    assert sh.jobs < n + math.ceil(n / 3) + 2


def test_the_default_habit_fine_tunes_at_the_middle_lr_and_the_full_grid_reads_every_seed():
    g = Grid(grid_of(truth({("a", "finetune", 1e-3): 0.8})))
    habit = baselines.default_habit(g, np.random.default_rng(0))
    assert habit.pick == ("a", "finetune", 1e-4) and habit.jobs == 1
    assert baselines.default_habit(g, np.random.default_rng(0), lr=1e-3).pick == ("a", "finetune", 1e-3)
    full = baselines.full_grid(g)
    assert full.pick == ("a", "finetune", 1e-3) and full.spent == g.cost and full.jobs == len(g.candidates) * 3


def test_the_claim_pairs_methods_by_task_with_an_interval_and_holms_adjustment():
    rng = np.random.default_rng(0)
    rows = []
    for task in range(8):
        for rep in range(3):
            rows.append(dict(method="advisor", task=task, budget_share=0.3, replay=rep, regret=rng.uniform(0, 0.5)))
            rows.append(dict(method="random_search", task=task, budget_share=0.3, replay=rep,
                             regret=2 + rng.uniform(0, 0.5)))
            rows.append(dict(method="one_epoch_top_k", task=task, budget_share=0.3, replay=rep,
                             regret=rng.uniform(0, 0.5)))
    res = pd.DataFrame(rows)
    c = claim(res, 0.3).set_index("baseline")
    assert c.loc["random_search", "difference"] == pytest.approx(-2, abs=0.3)
    assert c.loc["random_search", "high"] < 0 and c.loc["random_search", "p_holm"] < 0.01
    assert c.loc["one_epoch_top_k", "low"] < 0 < c.loc["one_epoch_top_k", "high"]
    assert (c["p_holm"] >= c["p"]).all() and (c["tasks"] == 8).all()
    s = summary(res).set_index("method")
    assert s.loc["random_search", "tasks"] == 8 and s.loc["random_search", "worst"] <= 2.5


def test_a_resplit_grid_answers_seeds_past_the_first_from_their_own_draws_and_keeps_the_truth_on_the_fixed_one():
    """The rows a resplit study meets: seed 0 and every short run as measured on the fixed draw, seeds 1 and 2 at
    full length from their own draws; the fixed grid alone scores picks, so both replays share one truth."""
    fixed = grid_of(truth()).assign(draw="fixed", task="t")
    own = fixed[(fixed["epochs"] == 9) & (fixed["seed"] > 0)].assign(draw="per_seed", select_acc=0.123)
    grid, resplit = draws(pd.concat([fixed, own], ignore_index=True))
    assert len(resplit.rows) == len(grid.rows) == len(fixed)
    assert grid.row("a", "probe", 1e-2, 9, 1)["select_acc"] != 0.123
    assert resplit.row("a", "probe", 1e-2, 9, 1)["select_acc"] == 0.123
    assert resplit.row("a", "probe", 1e-2, 9, 0)["select_acc"] == grid.row("a", "probe", 1e-2, 9, 0)["select_acc"]
    assert resplit.row("a", "probe", 1e-2, 3, 2)["select_acc"] == grid.row("a", "probe", 1e-2, 3, 2)["select_acc"]
    assert draws(fixed)[1] is None and draws(fixed.drop(columns="draw"))[0].cost == grid.cost
