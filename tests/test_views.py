"""The sweep's saved view in the MLflow UI: its state, the keys it groups by, the version check and the links;
in the full tier, a real sweep's printed links opened in headless Chromium on a real MLflow server."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import open_dict

from tests import services
from tests.conftest import CONF
from tlsweep import sweep
from tlsweep.tracking import views
from tlsweep.advisor import space

# What MLflow 3.17's UI reads from a view's state, and what it drops (EXPERIMENT_PAGE_UI_STATE_FIELDS, the search
# facets' keys, and the fields useSharedExperimentViewState omits): a key outside these would be lost unseen.
UI_FIELDS = {"selectedColumns", "columnOrder", "columnWidths", "runsExpanded", "runsPinned", "runsHidden",
             "runsVisibilityMap", "runsHiddenMode", "compareRunCharts", "compareRunSections", "viewMaximized",
             "runListHidden", "isAccordionReordered", "groupBy", "groupsExpanded", "autoRefreshEnabled",
             "useGroupedValuesInCharts", "hideEmptyCharts", "globalLineChartConfig", "chartsSearchFilter"}
DROPPED = {"runsExpanded", "runsPinned", "runsHidden", "runsVisibilityMap", "autoRefreshEnabled"}
SEARCH_FACETS = {"searchFilter", "orderByKey", "orderByAsc", "startTime", "lifecycleFilter", "datasetsFilter",
                 "modelVersionFilter"}


def _config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def test_the_view_groups_by_what_the_sweep_varies_less_the_seeds():
    cfg = _config("model=timm", "data=imagefolder")
    swept = ["model.arch", "strategy", "optim.lr", "data", "data.shots_seed", "seed", "experiment"]
    # a config group by its option's param; the seeds are a group's runs; experiment= logs no param
    assert views.group_keys(swept, cfg) == ["model.arch", "strategy.name", "optim.lr", "data.name"]
    # the advisor's study: the backbone, strategy, LR and epochs its jobs set
    assert views.group_keys(space.swept("efficientnet_lite0"), _config("model=efficientnet_lite0")) == \
        ["model.name", "strategy.name", "optim.lr", "epochs"]


def test_the_state_opens_the_sweeps_runs_grouped_with_the_scored_metric():
    state = views.state("abc123", ["strategy.name", "optim.lr"], "final_val_acc")
    assert state["searchFilter"] == "tags.mlflow.parentRunId = 'abc123'"  # the jobs, not the parent
    assert state["orderByKey"] == "metrics.`final_val_acc`" and state["orderByAsc"] is False
    assert state["selectedColumns"] == ["metrics.`final_val_acc`", "params.`strategy.name`", "params.`optim.lr`"]
    assert state["groupBy"] == {"aggregateFunction": "average", "groupByKeys": [
        {"mode": "param", "groupByData": "strategy.name"}, {"mode": "param", "groupByData": "optim.lr"}]}
    (chart,) = state["compareRunCharts"]
    assert (chart["type"], chart["metricKey"]) == ("BAR", "final_val_acc")
    first, *folded = state["compareRunSections"]
    assert chart["metricSectionId"] == first["uuid"] and first["display"]
    assert [s["name"] for s in folded] == ["Model metrics", "System metrics", "lr", "seconds", "score",
                                           "score_seconds"] and not any(s["display"] for s in folded)
    assert state["useGroupedValuesInCharts"] is True and state["chartsSearchFilter"] == ""
    assert set(state) <= (UI_FIELDS - DROPPED) | SEARCH_FACETS
    assert views.state("abc123", [], "final_val_acc")["groupBy"] is None  # a sweep over seeds only


def test_the_tag_holds_mlflows_envelope_with_the_state_as_a_json_string():
    state = views.state("p", ["strategy.name"], "final_test_acc")
    value = json.loads(views.envelope("s: mean final_test_acc by strategy.name", state, 1000, 2000))
    assert value == {"name": "s: mean final_test_acc by strategy.name", "createdAt": 1000, "updatedAt": 2000,
                     "state": json.dumps(state)}
    assert views.created(json.dumps(value)) == 1000
    assert views.created("not json") is None and views.created(None) is None and views.created('{"a": 1}') is None


def test_the_links_open_the_view_on_its_table_and_on_its_charts():
    assert views.links("http://127.0.0.1:5000/", "7", "abc") == {
        "compare, table": "http://127.0.0.1:5000/#/experiments/7/runs?viewStateShareKey=abc"
                          "&workflowType=machine_learning",
        "compare, chart": "http://127.0.0.1:5000/#/experiments/7/runs?viewStateShareKey=abc"
                          "&workflowType=machine_learning&compareRunsMode=CHART"}


def test_the_view_uses_the_metric_the_report_scores():
    from tlsweep.report import make

    assert views.SCORED_METRIC == make.DEFAULT_METRIC


def test_only_mlflow_3_gets_a_view(capsys):
    assert views.supported("3.17.2") and not views.supported("2.22.1") and not views.supported("4.0.0")
    calls = []
    client = SimpleNamespace(get_experiment=calls.append, set_experiment_tag=lambda *a: calls.append(a))
    assert views.save(client, "1", "p", "s", ["strategy.name"], "final_val_acc", "2.22.1") is None
    assert calls == []
    assert capsys.readouterr().out == "[tlsweep] MLflow 2.22.1 is not 3.x: no saved view of sweep s in its UI\n"


def test_a_view_rewritten_keeps_when_it_was_made(store_uri):
    client = MlflowClient(store_uri)
    exp_id = client.create_experiment("views-rewrite")
    parent = client.create_run(exp_id).info.run_id
    assert views.save(client, exp_id, parent, "s", ["strategy.name"], "final_val_acc", "3.17.2") == parent
    first = json.loads(client.get_experiment(exp_id).tags[f"mlflow.sharedViewState.{parent}"])
    views.save(client, exp_id, parent, "s", ["strategy.name"], "final_test_acc", "3.17.2")
    again = json.loads(client.get_experiment(exp_id).tags[f"mlflow.sharedViewState.{parent}"])
    assert again["createdAt"] == first["createdAt"] <= again["updatedAt"]
    assert json.loads(again["state"])["compareRunCharts"][0]["metricKey"] == "final_test_acc"


def test_a_sweep_prints_its_views_links_instead_of_the_runs_table(tmp_path, monkeypatch, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # the callback sets it for its jobs; restored after
    cfg = _config(f"tracking.uri={uri}", "tracking.sweep_name=viewed")
    with open_dict(cfg):
        cfg.hydra.overrides.task = [f"tracking.uri={uri}", "strategy=probe,finetune", "seed=0,1"]
    cb = sweep.SweepCallback(report=False)
    cb.on_multirun_start(cfg)
    out = capsys.readouterr().out
    tag = json.loads(MlflowClient(uri).get_experiment(cb.exp_id).tags[f"mlflow.sharedViewState.{cb.parent}"])
    assert tag["name"] == "viewed: mean final_val_acc by strategy.name"
    table = (f"http://127.0.0.1:5000/#/experiments/{cb.exp_id}/runs?viewStateShareKey={cb.parent}"
             "&workflowType=machine_learning")
    assert f"[tlsweep] compare, table: {table}\n[tlsweep] compare, chart: {table}&compareRunsMode=CHART\n" in out
    assert "runs table" not in out
    cb.finish()


# ---- the full tier: a real sweep's link, opened as a user opens it ------------------------------------------

def _chromium() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


def _rendered(url: str, profile: Path) -> str:
    """The page's DOM once the MLflow UI has rendered it: virtual time runs on only while no request is
    pending, so the budget counts the UI's own timers, not the server's answers."""
    return subprocess.run([_chromium(), "--headless", "--no-sandbox",  # as root (CI) Chromium has no sandbox
                           "--disable-gpu", f"--user-data-dir={profile}", "--window-size=1400,900",
                           "--virtual-time-budget=30000", "--dump-dom", url],
                          capture_output=True, text=True, timeout=240).stdout


@contextlib.contextmanager
def _mlflow_server(root: Path):
    port = services.free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # fewer workers, a faster start
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = services.start([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                           f"sqlite:///{root / 'server.db'}", "--artifacts-destination", str(root / "artifacts"),
                           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                          root / "mlflow.log", env=env, cwd=root, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        services.wait_until(lambda: urllib.request.urlopen(f"{uri}/health", timeout=5).status == 200,
                            "mlflow server", 180, [root / "mlflow.log"], [proc])
        yield uri
    finally:
        services.stop([proc])
        with contextlib.suppress(ProcessLookupError):  # a worker the server left behind, in its process group
            os.killpg(proc.pid, 9)


@pytest.mark.slow
@pytest.mark.services
def test_a_sweeps_links_open_its_runs_grouped_in_a_real_browser(tmp_path, tiny_root):
    """Two strategies x two seeds into an MLflow server; the printed table link opens one group row per
    strategy, and the chart link one bar per strategy, each at the mean of its seeds."""
    services.require([] if _chromium() else ["chromium"], "apt-get install chromium")
    with _mlflow_server(tmp_path) as uri:
        cmd = [sys.executable, "-m", "tlsweep", "-m", "model=timm", "model.arch=resnet10t", "model.weights=null",
               "strategy=probe,finetune", "seed=0,1", "data=imagefolder", f"data.root={tiny_root}",
               "data.image_size=32", "data.num_workers=0", "epochs=1", "batch_size=4", "device=cpu",
               f"tracking.uri={uri}", "tracking.sweep_name=viewed", "cache_dir=null"]
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        links = dict(re.findall(r"\[tlsweep\] compare, (table|chart): (\S+)", p.stdout))
        assert links["chart"] == links["table"] + "&compareRunsMode=CHART", p.stdout[-3000:]

        client = MlflowClient(uri)
        exp_id = client.get_experiment_by_name("tlsweep").experiment_id
        accs: dict[str, list[float]] = {}
        for r in client.search_runs([exp_id], "tags.`tlsweep.role` = 'job'"):
            accs.setdefault(r.data.params["strategy.name"], []).append(r.data.metrics["final_val_acc"])
        means = sorted(sum(a) / len(a) for a in accs.values())

        table = _rendered(links["table"], tmp_path / "profile")
        assert "viewing a shared view" in table, table[-3000:]  # the view was found and read, not refused
        assert sorted(re.findall(r">Group: (\w+)<", table)) == ["finetune", "probe"], table[-3000:]
        assert re.search(r"<strong>4</strong> matching runs", table)  # the jobs, not the parent

        chart = _rendered(links["chart"], tmp_path / "profile")
        first = chart.split('class="trace bars"')[1]  # the first bar chart, up to the next: the scored metric's
        bars = sorted(map(float, re.findall(r'class="bartext[^"]*"[^>]*data-unformatted="([\d.]+)"', first)))
        assert len(bars) == 2 and all(abs(b - m) < 0.0051 for b, m in zip(bars, means)), (bars, means)  # 2 decimals
