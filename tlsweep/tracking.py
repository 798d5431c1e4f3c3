"""Everything tlsweep says to MLflow: the store, the sweep's parent run, each job's run.

A multirun gets one parent run, created (with the store) in the launching process before
any job starts; jobs find it through $TLSWEEP_PARENT_RUN_ID, which launchers that spawn
worker processes pass on. The parent is closed, and the sweep's report logged to it, when
the sweep ends, also when a job failed (Hydra then skips `on_multirun_end`, so an atexit
hook does it).
"""
from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import subprocess
import time
from datetime import datetime
from pathlib import Path

import mlflow
from filelock import FileLock
from hydra.experimental.callback import Callback
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH
from omegaconf import DictConfig, ListConfig, OmegaConf

EXPERIMENT = "tlsweep"
PARENT_ENV = "TLSWEEP_PARENT_RUN_ID"
SWEPT_ENV = "TLSWEEP_SWEPT_KEYS"  # JSON list of the keys a multirun sweeps, for the jobs' run names
# What MLflow 3's UI writes on an experiment made in its "Model training" mode. UIs before workflow-based
# navigation pick the layout from it; 3.17 ignores it and follows ?workflowType= (default: GenAI, an
# empty traces dashboard), hence the URL that `announce` prints (useExperimentKind, ExperimentKindUtils.ts).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default (--host 127.0.0.1, --port 5000)

log = logging.getLogger(__name__)


def default_tracking_uri(uri: str | None = None, base_dir: str | os.PathLike | None = None) -> str:
    """The store to use: `uri` if given, else $MLFLOW_TRACKING_URI, else SQLite under ./mlruns.

    MLflow 3.x refuses the plain file store, so the default is an SQLite file inside
    `mlruns/` of the directory the command was launched from.
    """
    if uri:
        return str(uri)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = Path(base_dir or os.getcwd()).resolve() / "mlruns"
    return f"sqlite:///{root / 'mlflow.db'}"


def setup_store(uri: str | None = None, experiment: str = EXPERIMENT) -> tuple[str, str]:
    """Create (or open) the store and the experiment; returns (uri, experiment id).

    Opening a fresh SQLite store runs its schema migration, which crashes, and can break the
    store for good, when several processes do it at once (measured: at most 1 of 4, or of 8,
    survived). So on SQLite, creating the store and the experiment happens under a file lock
    beside the db.
    A server serializes its own writes; there only the experiment's create race remains,
    settled by create-or-get. Callers log by the id returned, never by name: racing
    `mlflow.set_experiment` sends the losers' runs to the Default experiment.
    """
    uri = default_tracking_uri(uri)
    artifacts, lock = None, contextlib.nullcontext()
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///").split("?")[0])
        db.parent.mkdir(parents=True, exist_ok=True)
        artifacts = (db.parent / "artifacts").as_uri()  # keep artifacts beside the db, not in ./mlartifacts
        lock = FileLock(f"{db}.lock")  # flock: released by the OS also when its holder dies
    mlflow.set_tracking_uri(uri)
    with lock:
        client = MlflowClient(uri)  # opens the store: creates or migrates its schema
        return uri, _experiment_id(client, experiment, artifacts)


def _experiment_id(client: MlflowClient, name: str, artifacts: str | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=artifacts, tags=EXPERIMENT_KIND)
        except mlflow.exceptions.MlflowException:  # another process created it since
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    for key, value in EXPERIMENT_KIND.items():  # a store made before tlsweep set it; a kind a user chose stays
        if key not in exp.tags:
            client.set_experiment_tag(exp.experiment_id, key, value)
    return exp.experiment_id


def ui_url(uri: str, experiment_id: str) -> str:
    """The experiment's runs table in the MLflow UI, in its "Model training" layout."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else UI
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def announce(uri: str, experiment_id: str) -> None:
    lines = [f"[tlsweep] MLflow store: {uri}"]
    if not uri.startswith(("http://", "https://")):  # a server is already serving its UI
        lines.append(f"[tlsweep] browse it with: mlflow ui --backend-store-uri {uri}")
    lines.append(f"[tlsweep] runs table: {ui_url(uri, experiment_id)}")
    print("\n".join(lines), flush=True)


def flatten(cfg: DictConfig) -> dict[str, str]:
    """The resolved config as dotted keys (`optim.lr`, `strategy.name`, ...)."""
    out = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = str(node)

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def git_commit() -> tuple[str, bool] | None:
    """The commit of the code that runs, and whether the tree had uncommitted changes."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip() != ""
        return sha, dirty
    except (OSError, subprocess.SubprocessError):
        return None


def hydra_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _group_choices() -> dict:
    from hydra.core.hydra_config import HydraConfig

    return dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}


def swept_keys(task_overrides: list[str], sweeper_params: dict | None = None) -> list[str]:
    """The keys a multirun varies, in sweep order: sweeps among `hydra.sweeper.params` (what a preset
    sweeps) and the command line's overrides, the command line winning, as in Hydra's BasicSweeper."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = [f"{k}={v}" for k, v in (sweeper_params or {}).items()] + list(task_overrides)
    swept: dict[str, bool] = {}
    for o in OverridesParser.create().parse_overrides(lines):
        swept[o.key_or_group] = o.is_sweep_override()  # a later plain `seed=0` ends the preset's seed sweep
    return [k for k, is_sweep in swept.items() if is_sweep]


def _is_seed(key: str) -> bool:
    last = key.rsplit(".", 1)[-1]
    return last == "seed" or last.endswith("_seed")


def _value(node) -> str:
    if isinstance(node, ListConfig):
        return "[" + ",".join(_value(v) for v in node) + "]"
    return str(node)  # as the runs' params show it: 3e-4 -> 0.0003


def _labels(pairs: list[tuple[str, str]], sep: str) -> list[str]:
    """`lr=0.0003` for (optim.lr, 0.0003); a config group's option bare (`resnet18`). The last part of
    a key stands for it unless two keys share it."""
    last = [k.rsplit(".", 1)[-1] for k, _ in pairs]
    return [v if key.endswith(".name") else f"{short if last.count(short) == 1 else key}{sep}{v}"
            for (key, v), short in zip(pairs, last)]


def run_name(cfg: DictConfig, swept: list[str] | None = None) -> str:
    """A job's run name: the strategy, then what the sweep varies, seeds last (`probe lr=0.0003 seed=1`).

    `swept` defaults to the sweep's keys from $TLSWEEP_SWEPT_KEYS; outside a sweep, the model, the
    strategy and the seed (`efficientnet_lite0 probe seed=0`).
    """
    if swept is None:
        swept = json.loads(os.environ.get(SWEPT_ENV, "[]"))
    if not swept:
        return f"{cfg.model.name} {cfg.strategy.name} seed={cfg.seed}"
    pairs = []
    for key in sorted((k for k in swept if k != "strategy"), key=_is_seed):  # stable: sweep order, seeds last
        node = OmegaConf.select(cfg, key.replace("/", "."), default=None)
        if isinstance(node, DictConfig) and "name" in node:  # a config group: its option's name
            pairs.append((f"{key}.name", str(node.name)))
        elif node is None and key in _group_choices():  # a group with no node of its own (experiment=)
            pairs.append((f"{key}.name", str(_group_choices()[key])))
        else:
            pairs.append((key, _value(node)))
    return " ".join([str(cfg.strategy.name), *_labels(pairs, "=")])


@contextlib.contextmanager
def job_run(cfg: DictConfig, run_name: str):
    """One MLflow run for one job, ended FINISHED, FAILED (error as a tag) or KILLED (Ctrl-C)."""
    uri, exp_id = setup_store(cfg.tracking.uri, cfg.tracking.experiment)
    parent = os.environ.get(PARENT_ENV)
    if not parent:
        announce(uri, exp_id)
    tags = {"tlsweep.role": "job", "tlsweep.overrides": " ".join(hydra_overrides())}
    if os.environ.get("TLSWEEP_SWEEP_NAME"):
        tags["tlsweep.sweep_name"] = os.environ["TLSWEEP_SWEEP_NAME"]
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"], tags["tlsweep.git_dirty"] = commit[0], str(commit[1])
    run = mlflow.start_run(experiment_id=exp_id, run_name=run_name, parent_run_id=parent or None, tags=tags)
    try:
        mlflow.log_params(flatten(cfg))
        mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        yield run
    except KeyboardInterrupt:
        _close(run.info.run_id, "KILLED", "KeyboardInterrupt")
        raise
    except BaseException as err:
        _close(run.info.run_id, "FAILED", f"{type(err).__name__}: {err}"[:5000])
        raise
    else:
        mlflow.end_run()


def _close(run_id: str, status: str, error: str) -> None:
    """End a failed run with its error, whatever else goes wrong: the run must not stay RUNNING.

    Runs while an exception propagates; if the store refuses the tag or the fluent end_run (a
    server gone for a moment, a second Ctrl-C), the run is still closed through the client, and
    the original exception, not this one, is what the user sees.
    """
    try:
        mlflow.set_tag("tlsweep.error", error)
    except Exception as tag_err:  # noqa: BLE001 - the run's status matters more than its tag
        print(f"[tlsweep] could not record the error on run {run_id}: {tag_err}", flush=True)
    try:
        mlflow.end_run(status)  # pops the run off the fluent stack before it asks the store
    except Exception:  # noqa: BLE001
        try:
            MlflowClient().set_terminated(run_id, status)
        except Exception as end_err:  # noqa: BLE001
            print(f"[tlsweep] could not close run {run_id} as {status}: {end_err}; the sweep's end closes it",
                  flush=True)


def summary_line(children: list) -> str:
    """One line on how a sweep's jobs ended, naming the first error and the runs that did not finish."""
    bad = [c for c in children if c.info.status != "FINISHED"]
    if not bad:
        return f"[tlsweep] {len(children)} of {len(children)} jobs finished"
    first = bad[0].data.tags.get("tlsweep.error", bad[0].info.status).splitlines()[0][:300]
    runs = ", ".join(f"{c.info.run_name} ({c.info.status})" for c in bad)
    return f"[tlsweep] {len(bad)} of {len(children)} jobs failed: {first}; runs: {runs}"


def shared_params(children: list, swept: list[str]) -> dict[str, str]:
    """The config every job of a sweep shares: params with one value across `children`, less what the
    sweep varies (a swept key, or everything under a swept config group)."""
    params = [r.data.params for r in children if r.data.params]
    if not params:
        return {}
    varied = tuple(k.replace("/", ".") for k in swept)
    return {k: v for k, v in params[0].items()
            if all(p.get(k) == v for p in params[1:]) and not any(k == s or k.startswith(s + ".") for s in varied)}


def group_metrics(summary, by: list[str], metric: str) -> dict[str, float]:
    """Each group's mean of `metric`, keyed `final_val_acc/probe lr 0.0003`. MLflow's metric keys take
    only letters, digits, `_-. /` (and `:` except on Windows): no `=`."""
    out = {}
    for _, row in summary.iterrows():
        label = " ".join(_labels([(k, str(row[k])) for k in by], " ")) or "all runs"
        out[f"{metric}/" + re.sub(r"[^\w.\- ]", "_", label)] = float(row["mean"])
    return out


@contextlib.contextmanager
def _or_warn(what: str):
    """Decorating the parent must never keep it from closing: a failure is a warning."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 -- any failure here only costs the parent's extras
        log.warning("could not %s: %s: %s", what, type(err).__name__, err)


class SweepCallback(Callback):
    """Hydra callback: the parent run of a multirun, and the sweep's report at its end.

    At the end the parent also gets what the MLflow UI shows without opening artifacts: the report's
    table as its description, each group's mean as a metric, the config its jobs share as params.
    """

    def __init__(self, report: bool = True):
        self.report = report
        self.parent: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        uri, exp_id = setup_store(config.tracking.uri, config.tracking.experiment)
        name = config.tracking.get("sweep_name") or f"sweep-{datetime.now():%Y-%m-%d_%H-%M-%S}"
        overrides = list(config.hydra.overrides.task)
        sweeper_params = config.hydra.sweeper.get("params")
        self.swept = swept_keys(overrides, OmegaConf.to_container(sweeper_params) if sweeper_params else None)
        run = MlflowClient(uri).create_run(exp_id, run_name=name, tags={
            "tlsweep.role": "sweep", "tlsweep.sweep_name": name, "tlsweep.overrides": " ".join(overrides),
            "tlsweep.swept": " ".join(self.swept), "mlflow.runName": name})
        self.uri, self.parent, self.name = uri, run.info.run_id, name
        os.environ[PARENT_ENV], os.environ["TLSWEEP_SWEEP_NAME"] = self.parent, name
        os.environ[SWEPT_ENV] = json.dumps(self.swept)
        announce(uri, exp_id)
        print(f"[tlsweep] sweep {name}: parent run {self.parent}", flush=True)
        atexit.register(self.finish)  # Hydra skips on_multirun_end when a job raised

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        self.finish()

    def finish(self) -> None:
        """Close the parent: FINISHED if every job finished, else FAILED (KILLED after Ctrl-C)."""
        if self.parent is None:
            return
        parent, self.parent = self.parent, None
        for var in (PARENT_ENV, "TLSWEEP_SWEEP_NAME", SWEPT_ENV):
            os.environ.pop(var, None)
        client = MlflowClient(self.uri)
        status = "FAILED"
        try:
            exp_id = client.get_run(parent).info.experiment_id
            children = client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent}'", max_results=50000)
            for child in children:  # a worker that died hard cannot close its own run
                if child.info.status == "RUNNING":
                    client.set_tag(child.info.run_id, "tlsweep.error", "job process ended without closing its run")
                    client.set_terminated(child.info.run_id, "KILLED")
            children = client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent}'", max_results=50000,
                                          order_by=["attributes.start_time ASC"])
            statuses = {c.info.status for c in children}
            status = "KILLED" if "KILLED" in statuses else "FAILED" if statuses - {"FINISHED"} else "FINISHED"
            print(summary_line(children), flush=True)
            with _or_warn(f"log the shared config of sweep {self.name} as its parent's params"):
                shared = shared_params(children, self.swept)
                client.log_batch(parent, params=[Param(k, v) for k, v in shared.items()])
            if self.report and "FINISHED" in statuses:
                with _or_warn(f"report sweep {self.name}"):
                    self._report(client, parent)
        finally:  # whatever failed above, the parent is never left RUNNING
            client.set_terminated(parent, status)

    def _report(self, client: MlflowClient, parent: str) -> None:
        from .report import ReportError, make_report

        try:
            rep = make_report(self.uri, sweep=parent, out=Path("reports") / self.name)
        except ReportError as err:
            print(f"[tlsweep] no report for sweep {self.name}: {err}", flush=True)
            return
        print(rep.markdown, flush=True)
        with _or_warn(f"show the report of sweep {self.name} on its parent run"):
            note = rep.markdown + "\nTables and figures: this run's artifacts, `report/`.\n"
            if len(note) > MAX_TAG_VAL_LENGTH:  # MLflow cuts longer tags; say where the rest is
                note = note[:MAX_TAG_VAL_LENGTH - 80] + "\n\n... (cut; the whole table is report/summary.md)\n"
            client.log_batch(parent, metrics=[Metric(k, v, int(time.time() * 1000), 0) for k, v in
                                              group_metrics(rep.summary, rep.by, rep.metric).items()],
                             tags=[RunTag("mlflow.note.content", note)])
        client.log_artifacts(parent, str(rep.out_dir), "report")
        print(f"[tlsweep] report: {rep.out_dir} (also logged to the parent run under report/)", flush=True)
