"""Everything tlsweep says to MLflow: the store, the sweep's parent run, each job's run.

A multirun gets one parent run, created (with the store) in the launching process before
any job starts; jobs find the store, the experiment and the parent through
$MLFLOW_TRACKING_URI, $TLSWEEP_EXPERIMENT_ID and $TLSWEEP_PARENT_RUN_ID, which launchers
that spawn worker processes pass on (joblib's workers inherit them, sbatch exports the
environment to SLURM jobs). The parent is closed, and the sweep's report logged to it, when
the sweep ends, also when a job failed (Hydra then skips `on_multirun_end`, so an atexit
hook does it).
"""
from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
from datetime import datetime
from pathlib import Path

import mlflow
from hydra.experimental.callback import Callback
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

EXPERIMENT = "tlsweep"
PARENT_ENV = "TLSWEEP_PARENT_RUN_ID"
EXPERIMENT_ENV = "TLSWEEP_EXPERIMENT_ID"


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

    Opening a fresh SQLite store runs its schema migration, which crashes when several
    processes do it at once: sweeps call this once in the launcher before jobs start.
    """
    uri = default_tracking_uri(uri)
    artifacts = None
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        artifacts = (db.parent / "artifacts").as_uri()  # keep artifacts beside the db, not in ./mlartifacts
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        try:
            return uri, client.create_experiment(experiment, artifact_location=artifacts)
        except mlflow.exceptions.MlflowException:  # another process created it first
            exp = client.get_experiment_by_name(experiment)
    return uri, exp.experiment_id


def announce(uri: str) -> None:
    print(f"[tlsweep] MLflow store: {uri}\n[tlsweep] browse it with: mlflow ui --backend-store-uri {uri}", flush=True)


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


@contextlib.contextmanager
def job_run(cfg: DictConfig, run_name: str):
    """One MLflow run for one job, ended FINISHED, FAILED (error as a tag) or KILLED (Ctrl-C)."""
    parent = os.environ.get(PARENT_ENV)
    if parent and os.environ.get(EXPERIMENT_ENV):
        # a sweep's job logs where its parent is, by id: a job on another node or in another
        # directory resolves a relative store differently, and a name can race or be renamed
        uri, exp_id = os.environ["MLFLOW_TRACKING_URI"], os.environ[EXPERIMENT_ENV]
        mlflow.set_tracking_uri(uri)
    else:
        uri, exp_id = setup_store(cfg.tracking.uri, cfg.tracking.experiment)
    if not parent:
        announce(uri)
    tags = {"tlsweep.role": "job", "tlsweep.overrides": " ".join(hydra_overrides())}
    if os.environ.get("TLSWEEP_SWEEP_NAME"):
        tags["tlsweep.sweep_name"] = os.environ["TLSWEEP_SWEEP_NAME"]
    if os.environ.get("SLURM_JOB_ID"):
        # an array task as squeue, sacct and submitit's log folders name it (12_3): the plain id of
        # an array's last task is the array's own, and `scancel` on that cancels every task
        array = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
        tags["tlsweep.slurm_job_id"] = "_".join(array) if all(array) else os.environ["SLURM_JOB_ID"]
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"], tags["tlsweep.git_dirty"] = commit[0], str(commit[1])
    run = mlflow.start_run(experiment_id=exp_id, run_name=run_name, parent_run_id=parent or None, tags=tags)
    try:
        mlflow.log_params(flatten(cfg))
        mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        yield run
    except KeyboardInterrupt:
        mlflow.set_tag("tlsweep.error", "KeyboardInterrupt")
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException as err:
        mlflow.set_tag("tlsweep.error", f"{type(err).__name__}: {err}"[:5000])
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    else:
        mlflow.end_run()


class SweepCallback(Callback):
    """Hydra callback: the parent run of a multirun, and the sweep's report at its end."""

    def __init__(self, report: bool = True):
        self.report = report
        self.parent: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        uri, exp_id = setup_store(config.tracking.uri, config.tracking.experiment)
        name = config.tracking.get("sweep_name") or f"sweep-{datetime.now():%Y-%m-%d_%H-%M-%S}"
        overrides = " ".join(config.hydra.overrides.task)
        run = MlflowClient(uri).create_run(exp_id, run_name=name, tags={
            "tlsweep.role": "sweep", "tlsweep.sweep_name": name, "tlsweep.overrides": overrides,
            "mlflow.runName": name})
        self.uri, self.parent, self.name = uri, run.info.run_id, name
        os.environ[PARENT_ENV], os.environ["TLSWEEP_SWEEP_NAME"] = self.parent, name
        os.environ["MLFLOW_TRACKING_URI"], os.environ[EXPERIMENT_ENV] = uri, exp_id  # for the jobs
        announce(uri)
        print(f"[tlsweep] sweep {name}: parent run {self.parent}", flush=True)
        atexit.register(self.finish)  # Hydra skips on_multirun_end when a job raised

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        self.finish()

    def finish(self) -> None:
        """Close the parent: FINISHED if every job finished, else FAILED (KILLED after Ctrl-C)."""
        if self.parent is None:
            return
        parent, self.parent = self.parent, None
        os.environ.pop(PARENT_ENV, None)
        os.environ.pop("TLSWEEP_SWEEP_NAME", None)
        os.environ.pop(EXPERIMENT_ENV, None)
        client = MlflowClient(self.uri)
        children = client.search_runs([client.get_run(parent).info.experiment_id],
                                      f"tags.mlflow.parentRunId = '{parent}'", max_results=50000)
        for child in children:  # a worker that died hard cannot close its own run
            if child.info.status == "RUNNING":
                client.set_tag(child.info.run_id, "tlsweep.error", "job process ended without closing its run")
                client.set_terminated(child.info.run_id, "KILLED")
        statuses = {c.info.status for c in client.search_runs(
            [client.get_run(parent).info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'", max_results=50000)}
        status = "KILLED" if "KILLED" in statuses else "FAILED" if statuses - {"FINISHED"} else "FINISHED"
        if self.report and "FINISHED" in statuses:
            self._report(client, parent)
        client.set_terminated(parent, status)

    def _report(self, client: MlflowClient, parent: str) -> None:
        from .report import ReportError, make_report

        try:
            rep = make_report(self.uri, sweep=parent, out=Path("reports") / self.name)
        except ReportError as err:
            print(f"[tlsweep] no report for sweep {self.name}: {err}", flush=True)
            return
        client.log_artifacts(parent, str(rep.out_dir), "report")
        print(rep.markdown, flush=True)
        print(f"[tlsweep] report: {rep.out_dir} (also logged to the parent run under report/)", flush=True)
