"""The advisor as tlsweep runs it: the study's space and overrides, the adapter from MLflow runs to the results
table (plain objects, no store), the final report's parts, and in the slow tier a whole study through the CLI.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from tests.conftest import CONF
from tlsweep.advisor import next_step, report, space, table
from tlsweep.advisor.runs import Space, fixed_params, results
from tlsweep.advisor.study import Job
from tlsweep.config.errors import ConfigError
from tlsweep.config.keys import Tag
from tlsweep.report import stats

FIXED = {"data.name": "imagefolder", "batch_size": "4"}


def run(backbone="a", strategy="probe", lr="0.001", epochs="3", seed="0", status="FINISHED", metrics=None,
        tags=None, start=1_000_000, end=1_012_000, **params):
    """An MLflow run as the adapter reads it: params, metrics, tags, status and times (ms)."""
    p = {"model.name": backbone, "strategy.name": strategy, "optim.lr": lr, "epochs": epochs, "seed": seed,
         **FIXED, **params}
    m = {"select_acc": 0.8, "final_val_acc": 0.7, "epoch_seconds": 3.0} if metrics is None else metrics
    return SimpleNamespace(info=SimpleNamespace(status=status, start_time=start, end_time=end),
                           data=SimpleNamespace(params=p, metrics=m, tags=tags or {}))


SPACE = Space("model.name", {(b, s): FIXED for b in ("a", "b") for s in ("probe", "finetune")})


def test_a_finished_run_becomes_a_row_with_its_key_status_accuracies_and_times():
    t = results([run(metrics={"select_acc": 0.8, "final_test_acc": 0.75, "epoch_seconds": 3.0,
                              "score/logme": 1.5, "select_images": 49.0})], SPACE)
    r = t.iloc[0]
    assert (r.backbone, r.strategy, r.lr, r.epochs, r.seed) == ("a", "probe", 1e-3, 3, 0)
    assert r.status == "finished" and r.select_acc == 0.8 and r[table.SCORED] == 0.75
    assert r.job_seconds == 12.0 and r.epoch_seconds == 3.0 and r.score_logme == 1.5
    assert r[table.SELECT_IMAGES] == 49 and table.visible(t)[table.SELECT_IMAGES].tolist() == [49.0]
    assert table.visible(t).columns.tolist()[:len(table.DECISION_COLUMNS)] == list(table.DECISION_COLUMNS)


def test_a_computed_feature_pass_is_timed_and_a_cache_read_is_not():
    t = results([run(seed="0", metrics={"select_acc": 0.8, "seconds/features": 18.5},
                     tags={Tag.FEATURES: "on: frozen prefix below head run once (computed, 4 BatchNorms folded)"}),
                 run(seed="1", metrics={"select_acc": 0.8, "seconds/features": 0.03},
                     tags={Tag.FEATURES: "on: frozen prefix below head run once (memory)"})], SPACE)
    assert dict(zip(t["seed"], t[table.FEATURE_SECONDS].fillna(-1))) == {0: 18.5, 1: -1}


def test_statuses_diverged_failed_and_unended_runs():
    t = results([run(seed="0", status="FAILED", tags={Tag.DIVERGED: "epoch 1, lr 1, train loss nan"}),
                 run(seed="1", status="FAILED"), run(seed="2", status="KILLED"), run(seed="3", status="RUNNING")],
                SPACE)
    assert dict(zip(t["seed"], t["status"])) == {0: "diverged", 1: "failed"}  # a killed config runs again
    assert t["select_acc"].isna().all()


def test_runs_of_other_configs_are_not_the_studys():
    t = results([run(backbone="c"), run(strategy="lora"), run(batch_size="8"), run(**{"data.name": "digits"}),
                 run(lr="0.01", **{"tracking.uri": "elsewhere"})], SPACE)
    assert t[["backbone", "lr"]].values.tolist() == [["a", 0.01]]  # where it logged is not the experiment


def test_a_config_run_twice_keeps_its_finished_run():
    t = results([run(status="FAILED", end=2_000_000), run(end=1_500_000, metrics={"select_acc": 0.6}),
                 run(end=1_600_000, metrics={"select_acc": 0.7})], SPACE)
    assert len(t) == 1 and t.iloc[0].select_acc == 0.7  # the latest finished


def test_fixed_params_leave_out_the_varied_keys_and_where_a_run_logs():
    flat = {"optim.lr": "1", "epochs": "3", "seed": "0", "tracking.uri": "x", "advise.budget": "30m",
            "optim.name": "adamw", "batch_size": "4"}
    assert fixed_params(flat, ("tracking.", "advise")) == {"optim.name": "adamw", "batch_size": "4"}
    # a seed's draw of the selection split follows the seed: a resplit study's seed-1 run is the same config
    assert fixed_params({**flat, "data.select_seed": "1"}, ("tracking.", "advise")) == fixed_params(
        flat, ("tracking.", "advise"))


def test_the_study_from_advise_keys_and_its_defaults():
    s = space.study({"budget": "30m"}, epochs=9, base_lr=1e-3, parallel=1, importable=lambda m: m == "peft")
    assert s.budget == 1800 and s.backbones == ("efficientnet_lite0",)
    assert s.strategies == ("probe", "partial", "finetune", "lpft", "lora", "dora")
    assert s.grid["finetune"] == (0.00033, 0.001, 0.003) and s.keep == 2 and s.margin == 0.01
    s = space.study({"budget": "2h", "backbones": ["x"], "strategies": ["finetune"], "lrs": {"finetune": [0.1]},
                     "wall": "1h"}, epochs=9, base_lr=1e-3, parallel=2, importable=lambda m: True)
    assert s.grid == {"finetune": (0.1,)} and s.wall == 3600 and s.parallel == 2
    with pytest.raises(ConfigError, match="advise.budget is required"):
        space.study({}, epochs=9, base_lr=1e-3, parallel=1, importable=bool)
    with pytest.raises(ConfigError, match="30m for minutes"):
        space.study({"budget": "30"}, epochs=9, base_lr=1e-3, parallel=1, importable=bool)


def test_the_short_rung_outlasts_a_strategys_probe_phase():
    s = space.study({"budget": "1h", "strategies": ["finetune", "lpft"]}, epochs=3, base_lr=1e-3, parallel=1,
                    importable=bool)
    assert s.short == 1 and space.with_short_floor(s, {"lpft": 2}).short == 3  # lpft's 2 probe epochs, then 1
    assert space.with_short_floor(s, {"lpft": 0}) is s


def test_a_jobs_overrides_pick_a_model_option_or_a_timm_arch():
    job = Job("resnet10t", "probe", 1 / 3000, 3, 2, "", 0.0, "")
    assert space.overrides(job, "timm") == ["model.arch=resnet10t", "strategy=probe", "optim.lr=0.0003333333333",
                                            "epochs=3", "seed=2"]
    assert space.overrides(job, "resnet18")[0] == "model=resnet10t"
    assert space.swept("timm")[0] == "model.arch" and space.param_key("resnet18") == "model.name"
    assert table.lr_key("0.0003333333333") == table.lr_key(1 / 3000)  # the param reads back as the job's LR
    assert space.parallel_slots({"n_jobs": -1}, 8) == 8 and space.parallel_slots({}, 8) == 1


def test_a_resplit_study_gives_each_seed_past_the_first_its_own_draw_of_the_selection_split():
    seed = lambda k: Job("a", "finetune", 1e-3, 3, k, "", 0.0, "")  # noqa: E731
    assert space.overrides(seed(0), "x", resplit=True) == space.overrides(seed(0), "x")  # the screen's draw
    assert space.overrides(seed(2), "x", resplit=True) == space.overrides(seed(2), "x") + ["data.select_seed=2"]
    assert not space.resplits(None, "") and space.resplits(None, "the selection split has 49 images: ...")
    assert space.resplits(True, "") and not space.resplits(False, "the selection split has 49 images: ...")


def test_the_report_shows_the_recommendation_the_trace_and_the_race(tmp_path):
    s = space.study({"budget": "2h", "backbones": ["a"], "strategies": ["probe", "finetune"], "lrs": [1e-3],
                     "max_seeds": 3}, epochs=3, base_lr=1e-3, parallel=1, importable=bool)
    rows = [run(strategy=st, seed=str(k), end=1_000_000 + 10_000 * i,
                metrics={"select_acc": acc + k / 100, "final_val_acc": acc, "epoch_seconds": 1.0})
            for i, (st, acc, k) in enumerate([(st, a, k) for st, a in (("probe", 0.6), ("finetune", 0.8))
                                              for k in range(3)])]
    rows.append(run(strategy="finetune", epochs="1", end=900_000, metrics={"select_acc": 0.7}))
    t = results(rows, SPACE)
    step = next_step(t, s)
    assert step.verdict is not None
    block = report.recommendation(step, t, s, "0.2 of train held out")
    assert "strategy   finetune" in block and "scored     0.8000" in block and "runner-up  a/probe" in block
    assert "selection split: 0.2 of train" in block and "of an estimated full grid" in block
    assert report.markdown(step.trace).splitlines()[0] == "| round | stage | candidate | action | evidence |"
    assert report.race(t, step, tmp_path / "race.png").stat().st_size > 0


def test_the_finalists_show_their_seeds_intervals_and_paired_gap_to_the_recommendation():
    s = space.study({"budget": "2h", "backbones": ["a"], "strategies": ["probe", "finetune"], "lrs": [1e-3],
                     "max_seeds": 3}, epochs=3, base_lr=1e-3, parallel=1, importable=bool)
    noise = {0: 0.0, 1: 0.02, 2: -0.01}
    rows = [run(strategy=st, seed=str(k), end=1_000_000 + 10_000 * i,
                metrics={"select_acc": acc + noise[k] * (st == "probe"), "final_val_acc": acc - 0.05,
                         "epoch_seconds": 1.0})
            for i, (st, acc, k) in enumerate([(st, a, k) for st, a in (("probe", 0.6), ("finetune", 0.8))
                                              for k in range(3)])]
    rows.append(run(strategy="finetune", epochs="1", end=900_000, metrics={"select_acc": 0.7}))  # short: not final
    t = results(rows, SPACE)
    step = next_step(t, s)
    f = report.finalists(t, step, s)
    assert list(f["candidate"]) == ["a/finetune lr=0.001 (recommended)", "a/probe lr=0.001"]
    assert list(f["seeds"]) == ["0,1,2", "0,1,2"]
    probe = f.iloc[1]
    gaps = np.array([-0.2, -0.18, -0.21])  # probe minus finetune, seed by seed
    want = stats.t_interval(gaps)
    assert probe["gap_to_recommended"] == pytest.approx(gaps.mean())
    assert (probe["gap_low"], probe["gap_high"]) == pytest.approx(want[2:])
    assert probe["scored_acc"] == pytest.approx(0.55) and np.isnan(f.iloc[0]["gap_to_recommended"])
    md = report.finalists_markdown(f)
    assert md.splitlines()[0].startswith("| finalist | seeds | selection (95% CI) |")
    assert "a/finetune lr=0.001 (recommended) | 0,1,2 | 0.8000" in md


def test_a_selection_split_coarser_than_the_margin_is_a_caution_in_the_report():
    """One image of a 49-image split is 0.0204 of select_acc: coarser than a 1-point margin, so the report says so;
    a 200-image split (0.005 per image) and a table without the size say nothing."""
    s = space.study({"budget": "2h", "backbones": ["a"], "strategies": ["probe", "finetune"], "lrs": [1e-3],
                     "max_seeds": 3}, epochs=3, base_lr=1e-3, parallel=1, importable=bool)
    def table_of(n):
        rows = [run(strategy=st, seed=str(k), end=1_000_000 + 10_000 * i,
                    metrics={"select_acc": acc + k / 100, "final_val_acc": acc, "epoch_seconds": 1.0,
                             **({"select_images": n} if n else {})})
                for i, (st, acc, k) in enumerate([(st, a, k) for st, a in (("probe", 0.6), ("finetune", 0.8))
                                                  for k in range(3)])]
        return results(rows, SPACE)
    coarse = report.resolution(table_of(49), s.margin)
    assert coarse.startswith("the selection split has 49 images: one image moves a selection accuracy by 0.0204")
    assert "advise.margin=0.01" in coarse
    assert report.resolution(table_of(200), s.margin) == report.resolution(table_of(None), s.margin) == ""
    assert report.resolution(table_of(49), 0.05) == ""  # a margin of 5 points: one image of 49 is finer
    t = table_of(49)
    assert f"  caution    {coarse}" in report.recommendation(next_step(t, s), t, s).splitlines()
    t = table_of(200)
    assert "caution" not in report.recommendation(next_step(t, s), t, s)


@pytest.mark.slow
def test_a_study_runs_to_a_recommendation_under_one_parent_and_resumes_by_name(tmp_path):
    from mlflow.tracking import MlflowClient

    from tests.conftest import write_image_folder
    from tlsweep.tracking import runs as tracking
    from tlsweep.tracking.read import children

    root = write_image_folder(tmp_path / "images", per_split={"train": 15, "val": 5})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "tlsweep", "-m", "experiment=advise", f"data.root={root}", "advise.budget=2h",
           "model=timm", "model.weights=null", "advise.backbones=[resnet10t,resnet14t]",
           "advise.strategies=[probe,finetune]", "advise.lrs=[0.001,0.01]", "advise.max_seeds=3", "epochs=3",
           "data.image_size=32", "data.num_workers=0", "batch_size=8", "device=cpu", f"tracking.uri={uri}",
           f"cache_dir={tmp_path / 'cache'}", "tracking.sweep_name=advised"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    first = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    out = first.stdout + first.stderr
    assert first.returncode == 0, out[-4000:]
    assert "== tlsweep advise: recommendation ==" in out, out[-4000:]
    assert any(f"stopped    {why}:" in out for why in ("decided", "equivalent", "max_seeds")), out[-4000:]
    client = MlflowClient(uri)
    exp_id = client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id
    (parent,) = client.search_runs([exp_id], "tags.`tlsweep.role` = 'sweep'")
    jobs = children(client, exp_id, parent.info.run_id)
    assert len(jobs) >= 8 and all(r.info.status == "FINISHED" for r in jobs)
    assert parent.data.tags["tlsweep.advise.recommendation"] != "none"
    # 6 selection images (0.2 of 30): one is 0.1667 of select_acc, coarser than the 1-point margin
    assert first.stdout.count("[tlsweep] advise: caution: the selection split has 6 images") == 1, out[-4000:]
    assert parent.data.tags["tlsweep.advise.caution"].startswith("the selection split has 6 images")
    # on so coarse a split each seed past the first draws its own: its jobs say so, seed 0's keep the fixed draw
    assert "each seed past the first holds out its own draw of the selection split" in first.stdout
    draws = {r.data.params.get("seed"): r.data.params.get("data.select_seed") for r in jobs}
    assert draws.get("0") == "None" and all(v == k for k, v in draws.items() if k != "0"), draws
    assert any(k != "0" for k in draws), draws  # the study reached its seeds stage
    # the decision, not a grid's summary: the finalists, and no per-key sweep report
    assert "== the finalists: full length, paired seeds ==" in first.stdout
    assert "the study's decision and finalists: reports/advised/advise/" in first.stdout
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "advise")} >= {
        "advise/recommendation.txt", "advise/trace.csv", "advise/trace.md", "advise/race.png",
        "advise/finalists.csv", "advise/finalists.md"}
    trace = pd.read_csv(client.download_artifacts(parent.info.run_id, "advise/trace.csv", str(tmp_path / "dl")))
    assert "recommend" in set(trace["action"]) and {"screen", "verdict"} <= set(trace["stage"])
    assert any(r.info.run_name.startswith("probe arch=resnet10t lr=0.001 epochs=3") for r in jobs)
    # replayed on its own runs as a grid (each seed as the study ran it), the policy reaches the same verdict: what
    # the tabular benchmark (tlsweep.advisor.replay) rests on
    from tlsweep.advisor.replay import Grid, advise

    pairs = {(r.data.params["model.arch"], r.data.params["strategy.name"]) for r in jobs}
    rows = results(jobs, Space("model.arch", {p: {} for p in pairs})).drop(columns="ended")
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=[a for a in cmd[4:] if not a.startswith(("tracking.", "cache_dir"))])
    study = space.study(dict(cfg.advise), epochs=cfg.epochs, base_lr=cfg.optim.lr, parallel=1,
                        importable=lambda m: True)
    replayed = advise(Grid(rows), study, order=None)
    (said,) = trace.loc[trace["action"] == "recommend", "candidate"]
    assert said.startswith(f"{replayed.pick[0]}/{replayed.pick[1]} lr={replayed.pick[2]:g} "), (said, replayed)
    assert parent.data.tags[Tag.ADVISE_STOPPED].startswith(replayed.why), (parent.data.tags, replayed)
    assert replayed.jobs == len(jobs)
    # the UI's saved view groups the study's runs by what it decided between (tlsweep.tracking.views)
    view = json.loads(client.get_experiment(exp_id).tags[f"mlflow.sharedViewState.{parent.info.run_id}"])
    assert [k["groupByData"] for k in json.loads(view["state"])["groupBy"]["groupByKeys"]] == \
        ["model.arch", "strategy.name"]
    assert f"viewStateShareKey={parent.info.run_id}&workflowType=machine_learning" in first.stdout

    second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, (second.stdout + second.stderr)[-4000:]
    assert "(resumed:" in second.stdout
    again = children(client, exp_id, parent.info.run_id)
    assert len(again) == len(jobs)  # every config has its row: nothing is proposed again
    assert second.stdout.count("== tlsweep advise: recommendation ==") == 1


def test_the_preset_selects_the_advisor_and_a_selection_split_and_help_shows_it():
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=["experiment=advise", "data.root=my_images", "advise.budget=30m"],
                      return_hydra_config=True)
    assert cfg.hydra.sweeper._target_ == "hydra_plugins.tlsweep_advisor.AdviseSweeper" and cfg.hydra.sweeper.adaptive
    assert (cfg.data.name, cfg.data.select_fraction, cfg.data.root) == ("imagefolder", 0.2, "my_images")
    assert (cfg.advise.budget, cfg.advise.keep, cfg.advise.margin, cfg.advise.backbones) == ("30m", 2, 0.01, None)
    assert "python -m tlsweep -m experiment=advise data.root=my_images advise.budget=30m" in cfg.hydra.help.template


def test_the_advisors_keys_leave_a_jobs_config_key_as_a_grid_run_by_hand_has_it():
    from tlsweep.tracking.runs import config_key

    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        by_hand = compose("config", overrides=["data=imagefolder", "data.root=x", "data.select_fraction=0.2"])
        advised = compose("config", overrides=["experiment=advise", "data.root=x", "advise.budget=30m"])
    assert advised.advise.budget == "30m" and by_hand.advise is None
    assert config_key(by_hand) == config_key(advised)


def test_the_advisor_and_its_sweeper_module_load_no_torch_no_mlflow():
    """Hydra imports every hydra_plugins module at start, also for one run; the advisor stays a pure core."""
    code = ("import sys, hydra_plugins.tlsweep_advisor, tlsweep.advisor.runs, tlsweep.advisor.space, "
            "tlsweep.advisor.report; print(sorted({'torch', 'mlflow', 'matplotlib'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr
