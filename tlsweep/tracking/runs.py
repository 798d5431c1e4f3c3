"""The MLflow adapter: the store and experiment, each job's run, its name and its config key.

A sweep's jobs find the store and the parent run (made by `tlsweep.sweep` in the launching
process) through $TLSWEEP_PARENT_RUN_ID and friends, which launchers that spawn worker
processes pass on. This module imports nothing of the sweep's lifecycle or the report.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
from pathlib import Path

from filelock import FileLock
from omegaconf import DictConfig, ListConfig, OmegaConf

from .. import __version__
from . import owner, views, faults as stores
from ..config.errors import StoreError, why
from ..imports import heavy
from ..config.keys import Tag, diverged, is_seed, short_labels
from .read import opening

with heavy():  # MLflow (docs/speed.md, Fixed cost)
    import mlflow
    from mlflow.tracking import MlflowClient

stores.configure()  # bounded HTTP retries, before the first request of any process that tracks
log = logging.getLogger(__name__)
EXPERIMENT = "tlsweep"
PARENT_ENV = "TLSWEEP_PARENT_RUN_ID"
SWEPT_ENV = "TLSWEEP_SWEPT_KEYS"  # JSON list of the keys a multirun sweeps, for the jobs' run names
SWEEP_NAME_ENV = "TLSWEEP_SWEEP_NAME"
EXPERIMENT_ENV = "TLSWEEP_EXPERIMENT_ID"
# Keys that say where a run logs, caches or reads with how many workers, not what it computes: two runs
# that differ only here are the same experiment (resume skips the second).
# `advise` (the advisor's study, null outside experiment=advise) says which jobs to run, not what one computes
NOT_THE_EXPERIMENT = ("tracking.", "cache_dir", "data.num_workers", "advise")
# What MLflow 3's UI writes on an experiment made in its "Model training" mode. UIs before workflow-based
# navigation pick the layout from it; 3.17 ignores it and follows ?workflowType= (default: GenAI, an
# empty traces dashboard), hence the URL that `views.announce` prints (useExperimentKind, ExperimentKindUtils.ts).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


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
    A store that cannot be used (a server down, a path that cannot be written, a db locked past
    `stores.LOCK_WAIT_S`) raises StoreError first, in one line, before MLflow's retries.
    """
    uri = default_tracking_uri(uri)
    stores.check(uri)
    artifacts, lock = None, contextlib.nullcontext()
    db = stores.sqlite_file(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        artifacts = (db.parent / "artifacts").as_uri()  # keep artifacts beside the db, not in ./mlartifacts
        lock = FileLock(f"{db}.lock")  # flock: released by the OS also when its holder dies
    mlflow.set_tracking_uri(uri)
    with stores.translated(uri), lock, opening(uri):
        if db is not None and not db.exists():
            _copy_empty_store(db)
        client = MlflowClient(uri)  # opens the store: creates or migrates its schema
        return uri, _experiment_id(client, experiment, artifacts)


def schema_cache() -> Path:
    """Where the empty store of each MLflow version is kept: the user's cache ($XDG_CACHE_HOME, ~/.cache)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tlsweep" / "mlflow-schema"


def _copy_empty_store(db: Path) -> None:
    """Start a new SQLite store as a copy of an empty one of this MLflow's schema.

    MLflow builds a new store by creating its first schema and then running every Alembic migration since
    (docs/speed.md, "Fixed cost", measures it, for each new store); a copy takes milliseconds. The empty store is made
    once per MLflow version, by MLflow's own initialisation, and holds tables only: on open, MLflow adds
    its Default experiment with this store's artifact path, as for a new file. Any failure here leaves
    the store to MLflow, as before.
    """
    parts = []  # written whole, then renamed: a reader never sees half a file
    try:
        template = schema_cache() / f"mlflow-{mlflow.__version__}.db"  # no home folder: Path.home() raises
        if not template.exists():
            import sqlalchemy
            from mlflow.store.db.utils import _initialize_tables  # what SqlAlchemyStore runs on an empty db

            template.parent.mkdir(parents=True, exist_ok=True)
            parts.append(template.with_name(f"{template.name}.{os.getpid()}.part"))
            engine = sqlalchemy.create_engine(f"sqlite:///{parts[-1]}")
            try:
                _initialize_tables(engine)
            finally:
                engine.dispose()
            os.replace(parts[-1], template)
        parts.append(db.with_name(f"{db.name}.{os.getpid()}.part"))
        shutil.copyfile(template, parts[-1])
        os.replace(parts[-1], db)
    except Exception as err:  # noqa: BLE001 -- a speed-up only: MLflow creates the store itself
        for part in parts:
            with contextlib.suppress(OSError):
                part.unlink(missing_ok=True)
        full = isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)
        if full and parts and parts[-1].parent == db.parent:  # the store's own disk: MLflow could not write it either
            raise StoreError(stores.store_path(db, why(err), "create")) from err
        log.warning("could not start %s from an empty store (%s: %s); MLflow creates it", db, type(err).__name__, err)


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


def flatten(cfg: DictConfig) -> dict[str, str]:
    """The resolved config as dotted keys (`optim.lr`, `strategy.name`, ...)."""
    out = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = str(node)

    walk(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), "")
    return out


def git_commit() -> tuple[str, bool] | None:
    """The commit of the code that runs, and whether the tree had uncommitted changes; None for an installed wheel.

    Only a clone of tlsweep counts: a wheel inside a virtual environment inside the user's own repository would
    otherwise record that repository's commit as tlsweep's."""
    here = Path(__file__).resolve().parents[1]  # the tlsweep package
    try:
        top, sha = subprocess.run(["git", "-C", str(here), "rev-parse", "--show-toplevel", "HEAD"],
                                  capture_output=True, text=True, timeout=10, check=True).stdout.splitlines()
        if Path(top).resolve() != here.parent:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip() != ""
        return sha, dirty
    except (OSError, subprocess.SubprocessError, ValueError):
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


def planned_jobs(task_overrides: list[str], sweeper_params: dict | None = None) -> int:
    """How many jobs the multirun launches: the product of each key's number of values, the last
    override of a key winning, as for `swept_keys`."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = [f"{k}={v}" for k, v in (sweeper_params or {}).items()] + list(task_overrides)
    counts: dict[str, int] = {}
    for o in OverridesParser.create().parse_overrides(lines):
        counts[o.key_or_group] = len(list(o.sweep_string_iterator())) if o.is_sweep_override() else 1
    return math.prod(counts.values())


def _value(node) -> str:
    if isinstance(node, ListConfig):
        return "[" + ",".join(_value(v) for v in node) + "]"
    return str(node)  # as the runs' params show it: 3e-4 -> 0.0003


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
    for key in sorted((k for k in swept if k != "strategy"), key=is_seed):  # stable: sweep order, seeds last
        node = OmegaConf.select(cfg, key.replace("/", "."), default=None)
        if isinstance(node, DictConfig) and "name" in node:  # a config group: its option's name
            pairs.append((f"{key}.name", str(node.name)))
        elif node is None and key in _group_choices():  # a group with no node of its own (experiment=)
            pairs.append((f"{key}.name", str(_group_choices()[key])))
        else:
            pairs.append((key, _value(node)))
    return " ".join([str(cfg.strategy.name), *short_labels(pairs)])


def config_key(cfg: DictConfig) -> str:
    """What identifies a run's experiment: a hash of its resolved config, without `NOT_THE_EXPERIMENT`."""
    items = sorted((k, v) for k, v in flatten(cfg).items() if not k.startswith(NOT_THE_EXPERIMENT))
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


def _store(cfg: DictConfig) -> tuple[str, str]:
    """(uri, experiment id): a sweep's job takes its parent's by id from the environment (a job on another
    node or in another directory would resolve a relative store differently, and a name can race)."""
    if os.environ.get(PARENT_ENV) and os.environ.get(EXPERIMENT_ENV) and os.environ.get("MLFLOW_TRACKING_URI"):
        uri = os.environ["MLFLOW_TRACKING_URI"]
        if stores.failed_before():  # an earlier job of this process found the store failing: if it still does,
            stores.check(uri, lock_wait=stores.MLFLOW_BUSY_S)  # fail in seconds, before any work, not after retries
        mlflow.set_tracking_uri(uri)
        return uri, os.environ[EXPERIMENT_ENV]
    return setup_store(cfg.tracking.uri, cfg.tracking.experiment)


def finished_run(cfg: DictConfig, name: str):
    """The run that settled this config in the current sweep (a resumed one), or None; None outside a sweep:
    a FINISHED run, else a FAILED one that diverged (a lost candidate: rerunning it would diverge again).
    `name`: the job's run name, for the line a store fault prints."""
    parent = os.environ.get(PARENT_ENV)
    if not parent:
        return None
    with stores.translated(os.environ.get("MLFLOW_TRACKING_URI", ""), name):
        uri, exp_id = _store(cfg)
        found = MlflowClient(uri).search_runs(  # a search has no OR on status: a config's few attempts, sorted here
            [exp_id], f"tags.mlflow.parentRunId = '{parent}' and tags.`{Tag.CONFIG_KEY}` = '{config_key(cfg)}'",
            max_results=100)
    done = ([r for r in found if r.info.status == "FINISHED"]
            or [r for r in found if r.info.status == "FAILED" and diverged(r.data.tags)])
    return done[0] if done else None


def skipped(name: str, done) -> dict:
    """A config that already settled in this sweep (`finished_run`): say so, and hand back its metrics."""
    how = (f"diverged in this sweep ({done.data.tags[Tag.DIVERGED]}; delete run {done.info.run_id} to run it "
           "again)" if done.info.status == "FAILED" else f"already FINISHED in this sweep (run {done.info.run_id})")
    print(f"[tlsweep] {name}: skipped, {how}", flush=True)
    return dict(done.data.metrics)


@contextlib.contextmanager
def job_run(cfg: DictConfig, run_name: str):
    """One MLflow run for one job, ended FINISHED, FAILED (error as a tag) or KILLED (Ctrl-C). A store
    that fails raises StoreError; the run then ends FAILED if the store answers again at once, else it
    stays RUNNING, and a resume of the sweep by name runs the config again."""
    uri, exp_id = _store(cfg)
    parent = os.environ.get(PARENT_ENV)
    if not parent:
        views.announce(uri, exp_id)
    tags = {Tag.ROLE: "job", Tag.OVERRIDES: " ".join(hydra_overrides()), Tag.CONFIG_KEY: config_key(cfg),
            Tag.VERSION: __version__, **owner.identity()}  # host, pid, its start: the report tells an orphan (a SIGKILLed job) from a live run
    if os.environ.get(SWEEP_NAME_ENV):
        tags[Tag.SWEEP_NAME] = os.environ[SWEEP_NAME_ENV]
    if os.environ.get("SLURM_JOB_ID"):
        # an array task as squeue, sacct and submitit's log folders name it (12_3): the plain id of
        # an array's last task is the array's own, and `scancel` on that cancels every task
        array = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
        tags[Tag.SLURM_JOB_ID] = "_".join(array) if all(array) else os.environ["SLURM_JOB_ID"]
    commit = git_commit()
    if commit:
        tags[Tag.GIT_COMMIT], tags[Tag.GIT_DIRTY] = commit[0], str(commit[1])
    with stores.translated(uri, run_name):
        run = mlflow.start_run(experiment_id=exp_id, run_name=run_name, parent_run_id=parent or None, tags=tags)
    try:
        mlflow.log_params(flatten(cfg))
        mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        yield run
    except KeyboardInterrupt:
        stores.release(uri)  # the interrupt may have cut a write of this run short, holding the lock
        _close(run.info.run_id, "KILLED", "KeyboardInterrupt")
        raise
    except BaseException as err:
        found = stores.fault(err, uri)
        if found is not None:
            stores.end_after_fault(run.info.run_id, run_name, found)
            if found is not err:
                raise found from err
            raise
        _close(run.info.run_id, "FAILED", f"{type(err).__name__}: {err}"[:5000])
        raise
    else:
        with stores.translated(uri, run_name):
            mlflow.end_run()  # pops the run first: a failure leaves it RUNNING in the store, for a resume to rerun


def log_result(metrics: dict[str, float]) -> None:
    """Log a finished job's metrics, the last thing its run takes. If the store refuses them, they are printed
    first as one JSON line of the job's output, so they are not lost, and the error goes on: the run does
    not end FINISHED, and a resume runs its config again."""
    try:
        mlflow.log_metrics(metrics)
    except Exception as err:
        uri = mlflow.get_tracking_uri()
        if stores.fault(err, uri) is None:
            raise
        run = mlflow.active_run()
        stores.unlogged(uri, run and run.info.run_id, run and run.info.run_name, run.data.tags if run else {},
                        metrics)
        raise


def _close(run_id: str, status: str, error: str) -> None:
    """End a failed run with its error, whatever else goes wrong: the run must not stay RUNNING.

    Runs while an exception propagates; if the store refuses the tag or the fluent end_run (a
    server gone for a moment, a second Ctrl-C), the run is still closed through the client, and
    the original exception, not this one, is what the user sees.
    """
    try:
        mlflow.set_tag(Tag.ERROR, error)
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


def current(children: list) -> list:
    """One run per config, the one that counts: a FINISHED run if the config has one, else its latest.

    A resumed sweep holds the FAILED or KILLED runs of the first attempt beside their reruns; those
    are history, not the sweep's outcome. Runs without a config key (made before tlsweep kept one)
    each count alone. `children` must be ordered by start time.
    """
    by_key: dict[str, object] = {}
    for run in children:
        key = run.data.tags.get(Tag.CONFIG_KEY) or run.info.run_id
        kept = by_key.get(key)
        if kept is None or kept.info.status != "FINISHED":
            by_key[key] = run
    return list(by_key.values())
