"""run(cfg) end to end on tiny data: every model x strategy, MLflow records, failures."""
from __future__ import annotations

import math
from pathlib import Path
import os
import subprocess
import sys

import matplotlib.image
import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

import tlsweep
from tlsweep import run as run_mod
from tlsweep.config.errors import Diverged
from tlsweep.run import run
from tlsweep.training.recipes import NAMES
from tests.conftest import model_spec

# the six offline-buildable presets (the foundation-backbone presets are the same timm path)
MODELS = ["resnet18", "resnet50", "efficientnet_lite0", "mobilenet_v3_large", "convnext_tiny", "vit_b_16"]


def _last_run(store_uri):
    client = MlflowClient(store_uri)
    exp = client.get_experiment_by_name("tlsweep")
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]


RUNGS = NAMES[:4]  # every model runs the ladder; the strategies beyond it run on a timm and a torchvision model
# the strategies beyond the ladder that train: `score` trains nothing and logs no accuracy (tests/test_scores_run.py)
BEYOND = [s for s in NAMES[4:] if s != "score"]
PHASED = {"lpft": ["epochs=2", "strategy.probe_epochs=1"], "gradual": ["epochs=2"]}  # so that both phases run


def _matrix():
    """Every preset x rung, and the strategies beyond the ladder on a timm and a torchvision CNN; the
    default tier keeps each model once and each strategy once, the full tier runs them all."""
    # (torchvision's vit_b_16 has no DoRA in peft: a clear error, tested in test_adapters.py)
    cases = [(m, s) for s in RUNGS for m in MODELS] + [(m, s) for s in BEYOND
                                                       for m in ("efficientnet_lite0", "mobilenet_v3_large")]
    first = {(m, RUNGS[i % len(RUNGS)]) for i, m in enumerate(MODELS)} | {("efficientnet_lite0", s) for s in BEYOND}
    return [c if c in first else pytest.param(*c, marks=pytest.mark.slow) for c in cases]


@pytest.mark.parametrize("model,strategy", _matrix())
def test_every_model_and_strategy_trains(make_cfg, store_uri, fake_torchvision_download, fake_hub, model, strategy):
    cfg = make_cfg(f"model={model}", f"strategy={strategy}", "data.image_size=32", "data.shots=2",
                   *PHASED.get(strategy, []))
    result = run(cfg)
    assert 0.0 <= result["final_val_acc"] <= 1.0 and 1 <= result["best_epoch"] <= cfg.epochs
    r = _last_run(store_uri)
    assert r.info.status == "FINISHED"
    assert r.data.params["model.name"] == model and r.data.params["strategy.name"] == strategy
    assert r.data.metrics["trainable_params"] == result["trainable_params"] <= r.data.metrics["total_params"]
    # what trains, as the run records it: its parameter groups (one tag each) add up to the trainable count
    groups = {k: v for k, v in r.data.tags.items() if k.startswith("tlsweep.group.")}
    assert sum(int(v.split()[0].removeprefix("params=")) for v in groups.values()) == result["trainable_params"]
    assert "tlsweep.group.head" in groups and (strategy != "probe" or list(groups) == ["tlsweep.group.head"]), groups
    losses = _history(store_uri, r.info.run_id, "train_loss")
    assert len(losses) == cfg.epochs and all(math.isfinite(v) for v in losses)
    if strategy == "probe":
        spec = model_spec(model, image_size=32)
        with torch.device("meta"):  # the head's width only: no weights, no init
            head = spec.head_module(spec.build())
        assert result["trainable_params"] == head.in_features * 2 + 2
    expect_download = strategy != "scratch" and model != "efficientnet_lite0"  # lite0's weights are packaged
    assert bool(fake_torchvision_download + fake_hub) == expect_download


def test_a_run_records_what_a_reader_needs(make_cfg, store_uri):
    cfg = make_cfg("model=efficientnet_lite0", "strategy=finetune", "epochs=2")
    result = run(cfg)
    r = _last_run(store_uri)
    p, m, t = r.data.params, r.data.metrics, r.data.tags
    assert {"seed", "optim.lr", "strategy.name", "model.name", "data.name", "strategy.backbone_lr_scale",
            "data.shots", "epochs"} <= set(p)
    assert p["optim.lr"] == "0.001" and p["strategy.backbone_lr_scale"] == "0.1"
    for key in ("best_val_acc", "best_epoch", "final_val_acc", "trainable_params", "total_params", "train_seconds"):
        assert key in m
    client = MlflowClient(store_uri)
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr/backbone", "lr/head", "epoch_seconds",
                "trainable_params"):  # one meaning per key: no summary value at step 0 beside the epochs'
        assert [h.step for h in client.get_metric_history(r.info.run_id, key)] == [1, 2], key
    lrs = [h.value for h in client.get_metric_history(r.info.run_id, "lr/head")]
    assert lrs == pytest.approx([1e-3, 5e-4])  # cosine over 2 epochs: full LR, then half
    assert m["final_val_acc"] == result["final_val_acc"]
    # where the time went, in disjoint parts that add up to the job's time (the benchmark reports them)
    parts = {k: v for k, v in m.items() if k.startswith("seconds/")}
    assert set(parts) == {f"seconds/{k}" for k in ("mlflow", "model", "data", "features", "train")}
    assert min(parts.values()) >= 0 and parts["seconds/train"] < m["train_seconds"]
    assert sum(parts.values()) == pytest.approx(m["prep_seconds"] + m["train_seconds"], rel=0.05)
    assert t["tlsweep.device"] == "cpu" and "tlsweep.weights" in t and "tlsweep.preprocess" in t
    # which checkpoint DEFAULT meant, and its file's hash
    from tlsweep.models import PACKAGED, file_sha256

    assert t["tlsweep.weights"] == PACKAGED["tf_efficientnet_lite0"][0]
    assert t["tlsweep.weights.sha256"] == file_sha256(PACKAGED["tf_efficientnet_lite0"][2]())
    assert "tlsweep.overrides" in t
    assert t["tlsweep.version"] == tlsweep.__version__  # which tlsweep ran it
    text = mlflow.artifacts.load_text(f"runs:/{r.info.run_id}/config.yaml")
    assert "name: efficientnet_lite0" in text


def _history(store_uri, run_id, key):
    """Per-epoch values (steps 1..; run() logs its final metrics at step 0)."""
    history = MlflowClient(store_uri).get_metric_history(run_id, key)
    return [h.value for h in sorted(history, key=lambda h: h.step) if h.step > 0]


def test_gradual_logs_what_trains_each_epoch_and_caches_what_is_still_frozen(make_cfg, store_uri):
    run(make_cfg("model=efficientnet_lite0", "strategy=gradual", "epochs=3", "optim.scheduler=none"))
    r = _last_run(store_uri)
    trainable = _history(store_uri, r.info.run_id, "trainable_params")
    assert len(trainable) == 3 and trainable[0] < trainable[1] < trainable[2] == r.data.metrics["trainable_params"]
    assert trainable[0] == 1280 * 2 + 2  # the head alone
    assert _history(store_uri, r.info.run_id, "lr/blocks.6") == pytest.approx([0.0, 1e-3 * 0.385, 1e-3 * 0.385])
    assert _history(store_uri, r.info.run_id, "lr/blocks.5") == pytest.approx([0.0, 0.0, 1e-3 * 0.385 ** 2])
    how = r.data.tags["tlsweep.fast.features"]
    # each phase caches the stages still frozen: the whole backbone, then all but blocks.6, then blocks.5 too
    assert how.startswith("epochs 1-1: on: frozen prefix below head")  # the head's own dropout trains
    assert "epochs 2-2: on: frozen prefix below blocks.6" in how
    assert "epochs 3-3: on: frozen prefix below blocks.5" in how


def test_lpft_probes_on_cached_features_then_fine_tunes(make_cfg, store_uri):
    result = run(make_cfg("model=efficientnet_lite0", "strategy=lpft", "epochs=3", "optim.scheduler=none"))
    r = _last_run(store_uri)
    assert r.data.tags["tlsweep.fast.features"].startswith("epochs 1-2: on: frozen prefix below head")
    assert "epochs 3-3: off" in r.data.tags["tlsweep.fast.features"]
    assert _history(store_uri, r.info.run_id, "lr/backbone") == pytest.approx([0.0, 0.0, 1e-4])
    trainable = _history(store_uri, r.info.run_id, "trainable_params")
    assert trainable[:2] == [1280 * 2 + 2] * 2 and trainable[2] == result["trainable_params"] == \
        r.data.metrics["total_params"]
    assert len(_history(store_uri, r.info.run_id, "val_acc")) == 3


def test_l2sp_logs_its_penalty_every_epoch(make_cfg, store_uri):
    run(make_cfg("model=efficientnet_lite0", "strategy=l2sp", "epochs=2"))
    r = _last_run(store_uri)
    reg = _history(store_uri, r.info.run_id, "reg_loss")
    assert len(reg) == 2 and all(v > 0 for v in reg)


def test_same_config_same_seed_same_numbers(make_cfg, store_uri):
    def once(*extra):
        run(make_cfg("model=resnet18", "strategy=finetune", "model.weights=null", "epochs=2", *extra))
        metrics = _last_run(store_uri).data.metrics  # losses too: tiny data reaches accuracy 1.0 easily
        return {k: v for k, v in metrics.items() if "seconds" not in k}

    a, b = once(), once()
    assert a == b
    assert once("seed=1")["train_loss"] != a["train_loss"]


def test_nan_loss_ends_the_run_failed_with_the_error(make_cfg, store_uri):
    cfg = make_cfg("model=resnet18", "strategy=scratch", "optim.lr=1e30", "optim=sgd", "batch_size=2")
    with pytest.raises(Diverged):
        run(cfg)
    r = _last_run(store_uri)
    assert r.info.status == "FAILED" and "non-finite training loss" in r.data.tags["tlsweep.error"]


def test_ctrl_c_marks_the_run_killed(make_cfg, store_uri, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_mod, "fit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(make_cfg("model=resnet18", "model.weights=null"))
    assert _last_run(store_uri).info.status == "KILLED"


def _cli(*args, cwd, env=None):
    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; the CLI must find its default store instead
    clean = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run([sys.executable, "-m", "tlsweep", *args], cwd=cwd, capture_output=True, text=True,
                          env={**clean, **(env or {})}, timeout=600)


@pytest.mark.slow
def test_a_torchvision_built_for_another_torch_says_what_to_reinstall(tmp_path):
    """pip's fallback to a mismatched pair fails at `import torchvision` ("operator torchvision::nms
    does not exist"); a stand-in torchvision that fails the same way takes its place here."""
    fake = tmp_path / "shadow" / "torchvision"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    p = _cli("epochs=1", cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "shadow")})
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "was built for another torch" in p.stderr and 'pip install --force-reinstall "torch==' in p.stderr


@pytest.mark.parametrize("args,message", [
    # the default tier keeps one CLI smoke (an error raised inside run(), through Hydra): no traceback
    (["strategy=partial", "strategy.unfreeze=[layer5]"], "valid stages"),
    *[pytest.param(a, m, marks=pytest.mark.slow) for a, m in [
        (["model=resnet19"], "Available options in 'model'"),
        (["strategy=probe2"], "Available options in 'strategy'"),
        (["data.root=/no/such/folder", "data.download=false"], "does not exist"),
        (["data=imagefolder"], "data.root"),
        (["data=imagefolder", "data.root=/no/such/folder", "epochs=0"], "epochs=0: must be an integer >= 1")]],
])
def test_bad_input_exits_nonzero_and_says_what_to_fix(tmp_path, args, message):
    p = _cli("model.weights=null", "epochs=1", *args, cwd=tmp_path)
    assert p.returncode == 2  # bad config or data
    assert message in p.stderr + p.stdout
    assert "Traceback" not in p.stderr + p.stdout  # an expected failure is one message, not a stack


@pytest.mark.slow
@pytest.mark.parametrize("model,message,fix", [
    ("mobilenet_v3_large", "could not download the torchvision weights", "model.weights=/path/to/state_dict.pth"),
    ("resnet18", "could not load timm's pretrained weights", "model.weights=/path/to/model.safetensors")])
def test_offline_download_fails_every_job_plainly_with_a_summary(tmp_path, tiny_root, model, message, fix):
    """Offline (the download goes through a proxy that refuses), a sweep over a torchvision model or a
    timm model from the hub prints the message, no traceback, and a summary line; each run is FAILED
    with the message."""
    offline = {"https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9", "no_proxy": "",
               "TORCH_HOME": str(tmp_path / "torch"), "HF_HOME": str(tmp_path / "hf")}
    p = _cli("-m", f"model={model}", "strategy=probe,finetune", "data=imagefolder", f"data.root={tiny_root}",
             "data.image_size=32", "epochs=1", "device=cpu", cwd=tmp_path, env=offline)
    assert p.returncode == 1
    assert "Traceback" not in p.stderr + p.stdout
    assert f"WeightsUnavailable: {message}" in p.stderr
    assert f"[tlsweep] 2 of 2 jobs failed: WeightsUnavailable: {message}" in p.stdout
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("tlsweep").experiment_id])
    children = [r for r in runs if r.data.tags.get("tlsweep.role") == "job"]
    assert len(children) == 2 and all(r.info.status == "FAILED" for r in children)
    assert all(fix in r.data.tags["tlsweep.error"] for r in children)


@pytest.mark.slow
def test_a_reader_that_goes_away_fails_no_job(tmp_path, tiny_root):
    """`python -m tlsweep -m ... | head -1`: the pipe closes after the first line. Printing to it must not
    fail a job, and no run (the parent included) may be left RUNNING."""
    clean = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    p = subprocess.Popen([sys.executable, "-m", "tlsweep", "-m", "model=timm", "model.arch=resnet10t",
                          "model.weights=null", "strategy=probe,finetune", "data=imagefolder", f"data.root={tiny_root}",
                          "data.image_size=32", "epochs=2", "device=cpu", "hydra.callbacks.tlsweep.report=false"],
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=clean)
    p.stdout.readline()
    p.stdout.close()  # what `head -1` does after its line
    assert p.wait(timeout=600) == 0
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("tlsweep").experiment_id])
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}, [(r.info.run_name, r.info.status) for r in runs]


@pytest.mark.slow
def test_full_error_shows_the_traceback(tmp_path):
    p = _cli("data=imagefolder", cwd=tmp_path, env={"HYDRA_FULL_ERROR": "1"})
    assert p.returncode == 1 and "Traceback" in p.stderr and "ConfigError: data.root is required" in p.stderr


@pytest.mark.slow
def test_multirun_makes_one_parent_with_every_child(tmp_path, tiny_root):
    p = _cli("-m", "model=efficientnet_lite0", "strategy=probe,finetune", "seed=0,1", "optim.lr=3e-4",
             "data=imagefolder", f"data.root={tiny_root}", "data.image_size=32", "data.shots=2",
             "data.num_workers=0", "epochs=1", "batch_size=4", "device=cpu", "tracking.sweep_name=tiny-sweep",
             cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"  # the default store lives under the launch directory
    assert f"mlflow ui --backend-store-uri {uri}" in p.stdout
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tlsweep")
    # the UI opens the experiment in its "Model training" layout, and tlsweep prints the sweep's saved view
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("tlsweep.role") == "sweep"]
    assert len(parents) == 1 and parents[0].info.run_name == "tiny-sweep"
    parent = parents[0]
    assert (f"http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs?viewStateShareKey={parent.info.run_id}"
            "&workflowType=machine_learning") in p.stdout
    assert parent.info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4 == len(runs) - 1
    assert {(r.data.params["strategy.name"], r.data.params["seed"]) for r in children} == \
        {(s, k) for s in ("probe", "finetune") for k in ("0", "1")}
    for r in children:
        assert r.info.status == "FINISHED"
        assert not math.isnan(r.data.metrics["final_val_acc"])
        assert [a.path for a in client.list_artifacts(r.info.run_id)] == ["config.yaml"]
        assert "strategy=" in r.data.tags["tlsweep.overrides"]
        assert r.data.tags["tlsweep.version"] == tlsweep.__version__
    assert parent.data.tags["tlsweep.version"] == tlsweep.__version__
    # children are named by what the sweep varies (not optim.lr: one value)
    assert {r.info.run_name for r in children} == {f"{s} seed={k}" for s in ("probe", "finetune") for k in (0, 1)}
    # the parent shows the result: the report's table as its description, each strategy's mean as a
    # metric, and the config its jobs share as params (nothing the sweep varies)
    assert parent.data.tags["mlflow.note.content"].startswith("**tiny-sweep**")
    assert "| probe" in parent.data.tags["mlflow.note.content"]
    means = {s: sum(r.data.metrics["final_val_acc"] for r in children if r.data.params["strategy.name"] == s) / 2
             for s in ("probe", "finetune")}
    assert {k: v for k, v in parent.data.metrics.items() if k.startswith("final_val_acc/")} == \
        pytest.approx({f"final_val_acc/{s}": m for s, m in means.items()})
    # the sweep's fixed cost: its wall time and the part of it its jobs' runs took, both logged and printed
    cost = {k: v for k, v in parent.data.metrics.items() if k.startswith("sweep/")}
    assert set(cost) == {"sweep/wall_seconds", "sweep/in_jobs_seconds", "sweep/around_jobs_seconds"}
    assert cost["sweep/wall_seconds"] == pytest.approx(cost["sweep/in_jobs_seconds"] + cost["sweep/around_jobs_seconds"])
    assert 0 < cost["sweep/in_jobs_seconds"] < cost["sweep/wall_seconds"]
    assert f"[tlsweep] 4 runs: {cost['sweep/in_jobs_seconds']:.1f} s in jobs" in p.stdout
    shared = parent.data.params
    assert shared["optim.lr"] == "0.0003" and shared["model.name"] == "efficientnet_lite0" and shared["epochs"] == "1"
    assert "seed" not in shared and not any(k.startswith("strategy.") for k in shared)
    assert all(r.data.params[k] == v for r in children for k, v in shared.items())
    # the sweep's report is made at its end and logged to the parent run
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    for name in ("summary.csv", "gaps.csv", "summary.md", "summary.tex", "ladder.pdf", "ladder.png",
                 "curves.pdf", "curves.png"):
        assert f"report/{name}" in logged, (name, logged)
    local = Path(client.download_artifacts(parent.info.run_id, "report", str(tmp_path / "dl")))
    assert (local / "ladder.pdf").read_bytes()[:5] == b"%PDF-"
    assert matplotlib.image.imread(local / "ladder.png").ndim == 3
    assert "| probe" in p.stdout and "finetune" in p.stdout  # the summary table on the console


@pytest.mark.slow
def test_a_failing_job_fails_alone(tmp_path, tiny_root):
    """Hydra runs the other jobs, exits non-zero; the failed child is FAILED, the parent is closed FAILED. (A job
    that diverges is no failure in a sweep: tests/test_process_faults.py.)"""
    p = _cli("-m", "model=resnet18", "model.weights=null", "strategy=scratch", "optim=sgd",
             "optim.lr=1e-3,0", "data=imagefolder", f"data.root={tiny_root}", "data.image_size=32",
             "data.num_workers=0", "epochs=1", "batch_size=2", "device=cpu", cwd=tmp_path)
    assert p.returncode != 0
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("tlsweep").experiment_id])
    status = {r.data.params.get("optim.lr", "parent"): r.info.status for r in runs}
    assert status == {"0.001": "FINISHED", "0.0": "FAILED", "parent": "FAILED"}
    assert {r.info.run_name for r in runs if "optim.lr" in r.data.params} == {"scratch lr=0.001", "scratch lr=0.0"}
    assert all(r.info.status != "RUNNING" for r in runs)
    assert "Traceback" not in p.stderr + p.stdout
    assert "[tlsweep] 1 of 2 jobs failed: ConfigError: optim.lr=0" in p.stdout


@pytest.mark.slow
def test_parallel_launcher_shares_one_store(tmp_path, tiny_root):
    """Jobs in worker processes (joblib) find the store and the parent run made before they start."""
    p = _cli("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model=resnet18", "model.weights=null",
             "strategy=probe,scratch", "data=imagefolder", f"data.root={tiny_root}", "data.image_size=32",
             "data.num_workers=0", "epochs=1", "batch_size=4", "device=cpu", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("tlsweep").experiment_id])
    parent = [r for r in runs if r.data.tags.get("tlsweep.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert len(parent) == 1 and len(children) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert {r.info.run_name for r in children} == {"probe", "scratch"}  # the workers saw the swept keys


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_gpu_path(make_cfg, store_uri):
    """bf16 autocast, channels_last, data and augmentation resident on the GPU."""
    for strategy in ("probe", "finetune"):
        result = run(make_cfg("model=resnet18", "model.weights=null", f"strategy={strategy}", "device=cuda",
                              "bf16=auto"))
        r = _last_run(store_uri)
        assert r.info.status == "FINISHED" and r.data.tags["tlsweep.device"].startswith("cuda")
        assert r.data.tags["tlsweep.fast.bf16"] == "on (cuda native bf16)"  # bf16=auto, on a GPU with bf16 units
        if strategy == "probe":  # trains on cached features: the images only fed the prefix pass
            assert r.data.tags["tlsweep.fast.features"].startswith("on:")
        else:
            assert r.data.tags["tlsweep.fast.decode_once"].endswith("batches built on cuda")
        assert 0 <= result["final_val_acc"] <= 1


def test_a_failing_store_call_while_failing_still_closes_the_run(make_cfg, store_uri, monkeypatch):
    """If recording the error (set_tag) and the fluent end_run both raise, the run still ends
    FAILED through the client, and the user sees the job's own error."""
    calls = []
    real_set_terminated = MlflowClient.set_terminated

    def flaky_set_terminated(self, *a, **k):  # the store refuses once (inside mlflow.end_run), then works
        calls.append(a)
        if len(calls) == 1:
            raise mlflow.exceptions.MlflowException("store went away")
        return real_set_terminated(self, *a, **k)

    def broken(*a, **k):
        raise mlflow.exceptions.MlflowException("store went away")

    def boom(*a, **k):
        raise RuntimeError("the job's own error")

    monkeypatch.setattr(run_mod, "fit", boom)
    monkeypatch.setattr(mlflow, "set_tag", broken)
    monkeypatch.setattr(MlflowClient, "set_terminated", flaky_set_terminated)
    with pytest.raises(RuntimeError, match="the job's own error"):
        run(make_cfg("model=resnet18", "model.weights=null"))
    monkeypatch.undo()
    assert len(calls) == 2 and mlflow.active_run() is None
    assert _last_run(store_uri).info.status == "FAILED"


def test_epochs_below_one_is_recorded_failed(make_cfg, store_uri):
    """A config error is recorded in MLflow as FAILED with its message, like any other failure."""
    from tlsweep.config.errors import ConfigError

    with pytest.raises(ConfigError, match="epochs=0: must be an integer >= 1"):
        run(make_cfg("model=resnet18", "model.weights=null", "epochs=0"))
    r = _last_run(store_uri)
    assert r.info.status == "FAILED" and "epochs=0" in r.data.tags["tlsweep.error"]
