"""What the MLflow UI shows: run names from the sweep, the experiment's kind, a parent that always closes;
a new store started from an empty one of this MLflow's schema."""
from __future__ import annotations

import logging
import sqlite3

import mlflow
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from tests.conftest import CONF
from tlsweep import sweep
from tlsweep.tracking import runs as tracking, views


def test_run_name_shows_what_the_sweep_varies(make_cfg):
    cfg = make_cfg("model=efficientnet_lite0", "strategy=probe", "optim.lr=3e-4", "seed=1")
    # the strategy first and bare, then the swept keys in sweep order, seeds last
    assert tracking.run_name(cfg, ["seed", "strategy", "optim.lr"]) == "probe lr=0.0003 seed=1"
    # a swept config group shows its option bare; lists and nulls as written
    assert tracking.run_name(cfg, ["model", "strategy.unfreeze", "data.shots"]) == \
        "probe efficientnet_lite0 unfreeze=[] shots=None"
    # outside a sweep: model, strategy, seed
    assert tracking.run_name(cfg, []) == "efficientnet_lite0 probe seed=1"


def test_run_name_spells_out_keys_that_share_a_last_part(make_cfg):
    cfg = make_cfg("strategy=finetune", "+optim.seed=4", "seed=2")
    assert tracking.run_name(cfg, ["optim.seed", "seed", "optim.lr"]) == "finetune lr=0.001 optim.seed=4 seed=2"


def test_jobs_read_the_swept_keys_from_the_environment(make_cfg, monkeypatch):
    cfg = make_cfg("strategy=partial", "optim.lr=0.01")
    monkeypatch.setenv(tracking.SWEPT_ENV, '["strategy", "optim.lr"]')
    assert tracking.run_name(cfg) == "partial lr=0.01"
    monkeypatch.delenv(tracking.SWEPT_ENV)
    assert tracking.run_name(cfg) == "resnet18 partial seed=0"


def _preset_sweep(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=["experiment=quickstart", *overrides], return_hydra_config=True)
    return dict(cfg.hydra.sweeper.params)


def test_swept_keys_come_from_the_command_line_and_the_presets_sweeper_params(make_cfg):
    params = _preset_sweep()
    assert tracking.swept_keys(["experiment=quickstart"], params) == ["strategy", "seed"]
    assert tracking.swept_keys(["experiment=quickstart", "optim.lr=1e-3,3e-4"], params) == \
        ["strategy", "seed", "optim.lr"]
    # a plain value on the command line ends the preset's sweep of that key, as in Hydra's sweeper
    assert tracking.swept_keys(["experiment=quickstart", "seed=0"], params) == ["strategy"]
    # every sweep syntax counts; a plain override or an added key that is not swept does not
    assert tracking.swept_keys(["strategy=glob(p*)", "seed=range(3)", "+x=choice(1,2)", "optim=sgd", "+y=1"]) == \
        ["strategy", "seed", "x"]
    cfg = make_cfg("experiment=quickstart", "strategy=scratch", "seed=2")
    assert tracking.run_name(cfg, tracking.swept_keys(["experiment=quickstart"], params)) == "scratch seed=2"


def test_experiment_opens_in_the_model_training_layout(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _, new = tracking.setup_store(uri, "fresh")
    client = MlflowClient(uri)
    assert client.get_experiment(new).tags["mlflow.experimentKind"] == "custom_model_development"
    old = client.create_experiment("made-before")  # a store from an earlier tlsweep: the tag is added
    mine = client.create_experiment("chosen", tags={"mlflow.experimentKind": "genai_development"})
    assert tracking.setup_store(uri, "made-before")[1] == old
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
    tracking.setup_store(uri, "chosen")  # a kind someone chose stays
    assert client.get_experiment(mine).tags["mlflow.experimentKind"] == "genai_development"
    assert views.ui_url(uri, new) == f"http://127.0.0.1:5000/#/experiments/{new}/runs?workflowType=machine_learning"
    assert views.ui_url("http://host:8080/", "7") == \
        "http://host:8080/#/experiments/7/runs?workflowType=machine_learning"


def test_the_parent_closes_when_describing_it_fails(tmp_path, monkeypatch, caplog):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=[f"tracking.uri={uri}", "tracking.sweep_name=broken"],
                      return_hydra_config=True)
    callback = sweep.SweepCallback(report=True)
    callback.on_multirun_start(cfg)
    with mlflow.start_run(experiment_id=tracking.setup_store(uri)[1], parent_run_id=callback.parent):
        mlflow.log_params({"seed": "0"})

    def broken(*args, **kwargs):
        raise RuntimeError("store went away")

    monkeypatch.setattr(sweep, "shared_params", broken)
    monkeypatch.setattr("tlsweep.report.make_report", broken)
    parent = callback.parent
    with caplog.at_level(logging.WARNING, logger="tlsweep.sweep"):
        callback.finish()
    assert MlflowClient(uri).get_run(parent).info.status == "FINISHED"
    assert "could not log the shared config of sweep broken" in caplog.text
    assert "could not report sweep broken: RuntimeError: store went away" in caplog.text


def _schema(db) -> tuple[list, list]:
    """(every table and index, as the first line of its SQL and its other lines sorted: MLflow's own
    migrations order the tables, indexes and a table's constraints differently run to run; the Alembic
    revision)"""
    with sqlite3.connect(db) as con:
        sql = sorted((lines[0], sorted(line.strip().rstrip(",") for line in lines[1:]))
                     for (text,) in con.execute("select sql from sqlite_master where sql is not null")
                     for lines in [text.splitlines()])
        return sql, con.execute("select version_num from alembic_version").fetchall()


def test_a_new_store_is_a_copy_of_an_empty_store_of_this_mlflow(tmp_path, monkeypatch):
    """The copy has MLflow's schema at its current revision, as MLflow builds it itself, and its own
    experiments; the empty store is made once and kept in the user's cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    first, second, own = (tmp_path / name / "mlflow.db" for name in ("first", "second", "mlflows-own"))
    tracking.setup_store(f"sqlite:///{first}", "tlsweep")
    template = tracking.schema_cache() / f"mlflow-{mlflow.__version__}.db"
    assert template.is_file() and template.parent.is_relative_to(tmp_path / "cache")
    import mlflow.store.db.utils as db_utils

    def no_migration(engine):
        raise AssertionError("the second store ran MLflow's migrations")

    monkeypatch.setattr(db_utils, "_initialize_tables", no_migration)
    _, exp = tracking.setup_store(f"sqlite:///{second}", "tlsweep")
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    MlflowClient(f"sqlite:///{own}").search_experiments()  # MLflow builds this one the slow way
    assert _schema(second) == _schema(own)
    client = MlflowClient(f"sqlite:///{second}")
    assert client.get_experiment(exp).artifact_location == (second.parent / "artifacts").as_uri()
    default, made_by_mlflow = client.get_experiment("0"), MlflowClient(f"sqlite:///{own}").get_experiment("0")
    assert default.artifact_location == made_by_mlflow.artifact_location  # nothing of the empty store's place
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "acc", 0.5)
    assert client.get_run(run.info.run_id).data.metrics == {"acc": 0.5}
    assert [e.name for e in MlflowClient(f"sqlite:///{first}").search_experiments()] == ["tlsweep", "Default"]


def test_without_a_cache_to_keep_the_empty_store_mlflow_builds_the_store(tmp_path, monkeypatch, caplog):
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "not-a-folder"))
    db = tmp_path / "store" / "mlflow.db"
    with caplog.at_level(logging.WARNING, logger="tlsweep.tracking.runs"):
        _, exp = tracking.setup_store(f"sqlite:///{db}", "tlsweep")
    assert "could not start" in caplog.text and "MLflow creates it" in caplog.text
    assert MlflowClient(f"sqlite:///{db}").get_experiment(exp).name == "tlsweep"
    assert not list(tmp_path.glob("store/*.part"))


def test_an_empty_store_that_fails_half_way_leaves_no_part_file(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    import mlflow.store.db.utils as db_utils

    def broken(engine):
        raise RuntimeError("migration stopped")

    monkeypatch.setattr(db_utils, "_initialize_tables", broken)
    with caplog.at_level(logging.WARNING, logger="tlsweep.tracking.runs"), \
            pytest.raises(Exception):  # MLflow's own creation of the store runs the same broken migration
        tracking.setup_store(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}", "tlsweep")
    assert "migration stopped" in caplog.text
    assert not list((tmp_path / "cache").rglob("*.part")) and not list(tmp_path.glob("store/*.part"))
