"""The lifecycle of a sweep: its parent run, resuming it, and closing it with its report.

A multirun gets one MLflow parent run, created (with the store) in the launching process before
any job starts; jobs find it through the environment (`tracking.PARENT_ENV` and friends), which
launchers that spawn workers pass on (joblib's workers inherit it, sbatch exports it). The parent
is closed, and the sweep's report logged to it, when the sweep ends, also when a job failed
(Hydra then skips `on_multirun_end`, so an atexit hook does it).

Resume: the same command with the same `tracking.sweep_name` continues that sweep under the same
parent; each job whose config already has a FINISHED (or diverged) run there is skipped
(`tracking.finished_run`). One process at a time runs a sweep name: a second launcher is refused
(`owner`), on a local store by a file lock that dies with its holder, so a resume after a kill works.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from . import STARTED, __version__
from .tracking import owner, faults as stores, views
from .config.errors import StoreError, end_command
from .imports import heavy
from .config.keys import Tag, diverged, short_labels
from .tracking.read import children

with heavy():  # MLflow (docs/speed.md, Fixed cost)
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient
    from mlflow.utils.validation import MAX_TAG_VAL_LENGTH
    from mlflow.version import VERSION as MLFLOW_VERSION

    from .tracking.runs import (EXPERIMENT, EXPERIMENT_ENV, PARENT_ENV, SWEEP_NAME_ENV, SWEPT_ENV, current,
                                planned_jobs, setup_store, swept_keys)

log = logging.getLogger(__name__)
_ended_early: str | None = None  # how the launching process ended, when the sweep did not run to its end


def mark_ended_early(status: str) -> None:
    """The CLI saw Ctrl-C/SIGTERM (KILLED) or the launcher failing (FAILED): the parent closes so even if
    every run made so far finished. A job cancelled before it started leaves no run to say so."""
    global _ended_early
    _ended_early = status


class SweepBusy(SystemExit):
    """Another live process runs this sweep name: the process exits 1 with the one line. A SystemExit, since
    Hydra turns a callback's Exception into a warning and launches the jobs anyway."""


def lost(run) -> bool:
    """A job that diverged: FAILED with a tlsweep.diverged tag. Its config counts as done (a lost candidate)."""
    return run.info.status == "FAILED" and diverged(run.data.tags)


def diverged_part(children: list) -> str:
    """The summary line's part on runs that diverged ("; 1 diverged: probe lr=1e+06 (epoch 1)"), or ""."""
    gone = [c for c in children if lost(c)]
    if not gone:
        return ""
    return f"; {len(gone)} diverged: " + ", ".join(
        f"{c.info.run_name} ({c.data.tags[Tag.DIVERGED].split(',')[0]})" for c in gone)


def find_sweep(client: MlflowClient, exp_id: str, name: str):
    """The latest parent run of a sweep named `name` in the experiment, or None."""
    found = client.search_runs([exp_id], f"tags.`tlsweep.role` = 'sweep' and tags.`tlsweep.sweep_name` = '{name}'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    return found[0] if found else None


def summary_line(children: list, planned: int | None = None) -> str:
    """One line on how a sweep's jobs ended: failures grouped by their error (first line), the runs
    that did not finish, and how many of the `planned` jobs never started (an interrupt, a cancel)."""
    total = max(planned or 0, len(children))
    never = f"; {total - len(children)} of {total} never started" if total > len(children) else ""
    if not children:
        return f"[tlsweep] no job of this sweep made a run{never}"
    bad = [c for c in children if c.info.status != "FINISHED" and not lost(c)]
    gone = diverged_part(children)
    if not bad:
        return f"[tlsweep] {sum(c.info.status == 'FINISHED' for c in children)} of {total} jobs finished{gone}{never}"
    kinds = Counter(c.data.tags.get(Tag.ERROR, f"{c.info.status} (no error recorded)").splitlines()[0][:300]
                    for c in bad)
    errors = next(iter(kinds)) if len(kinds) == 1 else ", ".join(f"{n} x {e}" for e, n in kinds.most_common())
    runs = ", ".join(f"{c.info.run_name} ({c.info.status})" for c in bad)
    return f"[tlsweep] {len(bad)} of {total} jobs failed: {errors}{gone}{never}; runs: {runs}"


@dataclass
class FixedCost:
    line: str
    metrics: dict[str, float]


def fixed_cost(children: list, started: float, now: float) -> FixedCost:
    """What a sweep cost around its jobs: the process's wall time (imports, store, parent run, the report)
    minus the time its jobs' runs were open. Only the runs this process started count (a resumed sweep's
    earlier runs do not); jobs that overlapped (a parallel launcher) leave no such split."""
    ours = [c for c in children if c.info.end_time and (c.info.start_time or 0) >= started * 1000]
    in_jobs = sum(c.info.end_time - c.info.start_time for c in ours) / 1000
    spans = sorted((c.info.start_time, c.info.end_time) for c in ours)
    overlap = any(b[0] < a[1] for a, b in zip(spans, spans[1:]))
    wall = now - started
    metrics = {"sweep/wall_seconds": wall, "sweep/in_jobs_seconds": in_jobs}
    if overlap:
        return FixedCost(f"[tlsweep] {len(ours)} runs: {in_jobs:.1f} s in jobs that overlapped, {wall:.1f} s wall",
                         metrics)
    metrics["sweep/around_jobs_seconds"] = wall - in_jobs
    return FixedCost(f"[tlsweep] {len(ours)} runs: {in_jobs:.1f} s in jobs, {wall - in_jobs:.1f} s around them",
                     metrics)


def sweep_status(children: list) -> str:
    """The parent's status from its current runs: KILLED after a kill, FAILED if any did not finish
    or none ran at all, else FINISHED. A run that diverged ended as it should: a lost candidate."""
    statuses = {"FINISHED" if lost(c) else c.info.status for c in children}
    return "KILLED" if "KILLED" in statuses else "FAILED" if not statuses or statuses - {"FINISHED"} else "FINISHED"


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
        label = " ".join(short_labels([(k, str(row[k])) for k in by], " ")) or "all runs"
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
        self.planned: int | None = None
        self.advised = False  # experiment=advise: its own end shows the decision, the finalists and the trace
        self.claim: owner.LocalClaim | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        try:
            uri, exp_id = setup_store(config.tracking.uri, config.tracking.experiment)
        except StoreError as err:  # before any job starts: the sweep ends here, with one line
            end_command(err)
        client = MlflowClient(uri)
        asked = config.tracking.get("sweep_name")
        name = asked or f"sweep-{datetime.now():%Y-%m-%d_%H-%M-%S}"
        overrides = list(config.hydra.overrides.task)
        sweeper_params = config.hydra.sweeper.get("params")
        params = OmegaConf.to_container(sweeper_params) if sweeper_params else None
        self.swept = swept_keys(overrides, params)
        self.planned = planned_jobs(overrides, params)
        if config.hydra.sweeper.get("adaptive"):  # experiment=advise: the jobs are decided as results come in
            from .advisor.space import swept as advised

            self.swept, self.planned = advised(str(config.model.name)), None
            self.advised = True
        self._claim(uri, asked)  # before the parent is looked up: the loser of a race must not see it free
        previous = find_sweep(client, exp_id, asked) if asked else None
        # who runs the sweep now, and which tlsweep
        launcher = {**owner.identity(), Tag.LAUNCHED: owner.launched(), Tag.VERSION: __version__}
        if previous is not None:  # the same name again: continue that sweep, under the same parent
            parent = previous.info.run_id
            if self.claim is None:  # a server store: no lock all launchers reach, so the parent's owner tags.
                # Not atomic: two launchers that read the parent within the same moment both find it free.
                busy = owner.refusal(asked, previous.info.status, previous.data.tags, owner.host(), owner.pid_alive)
                if busy:
                    raise SweepBusy(busy)
            client.update_run(parent, status="RUNNING")
            client.log_batch(parent, tags=[RunTag(k, v) for k, v in launcher.items()])
            done = len(children(client, exp_id, parent, status="FINISHED"))
            gone = sum(map(lost, children(client, exp_id, parent, status="FAILED")))
            how = (f"resumed: {done} finished runs kept" + (f", {gone} diverged" if gone else "")
                   + "; jobs whose config finished" + (" or diverged" if gone else "") + " are skipped")
        else:
            parent = client.create_run(exp_id, run_name=name, tags={
                Tag.ROLE: "sweep", Tag.SWEEP_NAME: name, Tag.OVERRIDES: " ".join(overrides),
                Tag.SWEPT: " ".join(self.swept), Tag.RUN_NAME: name, **launcher}).info.run_id
            how = "new"
        self.uri, self.exp_id, self.parent, self.name = uri, exp_id, parent, name
        self.experiment = config.tracking.experiment
        # a study's view groups by what it decided between, backbone x strategy (its LRs, lengths and seeds are
        # the means it took there); a grid's by every key it sweeps
        self.by = views.group_keys(self.swept[:2] if self.advised else self.swept, config)
        self.view = self._save_view(client, parent, views.SCORED_METRIC)
        # for the jobs: by id, since a job on another node or in another directory resolves a relative
        # store differently, and a name can race (set_experiment's losers log into Default)
        os.environ.update({PARENT_ENV: parent, SWEEP_NAME_ENV: name, SWEPT_ENV: json.dumps(self.swept),
                           EXPERIMENT_ENV: exp_id, "MLFLOW_TRACKING_URI": uri})
        views.announce(uri, exp_id, self._links())
        print(f"[tlsweep] sweep {name} ({how}): parent run {parent}", flush=True)
        atexit.register(self._finish_at_exit)  # Hydra skips on_multirun_end when a job raised

    def __getstate__(self) -> dict:
        # joblib and submitit pickle the callbacks into every job: the claim (a held lock) stays in the launcher
        return {**self.__dict__, "claim": None}

    def _claim(self, uri: str, name: str | None) -> None:
        """On a local SQLite store, hold sweep `name` for this process's life (SweepBusy if another holds it)."""
        db = stores.sqlite_file(uri) if name else None
        if db is None:  # a sweep named by the clock, or a server store (see on_multirun_start)
            return
        claim = owner.LocalClaim(db, name)
        busy = claim.acquire()
        if busy:
            raise SweepBusy(busy)
        self.claim = claim

    def _save_view(self, client: MlflowClient, parent: str, metric: str) -> str | None:
        """Write the sweep's saved view in the MLflow UI (tlsweep.tracking.views) on `metric`; its id, or None."""
        self.metric = metric
        with _or_warn(f"save the MLflow view of sweep {self.name}"):  # it costs the links only
            return views.save(client, self.exp_id, parent, self.name, self.by, metric, MLFLOW_VERSION)
        return None

    def _links(self) -> dict[str, str] | None:
        return views.links(views.ui_base(self.uri), self.exp_id, self.view) if self.view else None

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        self.finish()

    def _finish_at_exit(self) -> None:
        with contextlib.suppress(KeyboardInterrupt):  # the process ends anyway; finish said what was cut short
            self.finish()

    @contextlib.contextmanager
    def _report_interruptible(self):
        """Ctrl-C while the report is made: say how to make it later, then let the interrupt end the process.
        The runs stay as they are and `finish` still closes the parent."""
        try:
            yield
        except KeyboardInterrupt:
            again = f"python -m tlsweep.report sweep={self.name}"
            if self.uri != f"sqlite:///{Path('mlruns/mlflow.db').resolve()}":  # not where the report looks first
                again += f" tracking.uri={self.uri}"
            if self.experiment != EXPERIMENT:
                again += f" tracking.experiment={self.experiment}"
            print(f"[tlsweep] report of sweep {self.name} interrupted; its runs are kept. Make it with: {again}",
                  flush=True)
            raise

    def finish(self) -> None:
        """Close the parent: FINISHED if every config finished, else FAILED (KILLED after Ctrl-C).

        Whatever fails on the way (the store, the report), the parent is never left RUNNING.
        """
        if self.parent is None:
            return
        parent, self.parent = self.parent, None
        for var in (PARENT_ENV, SWEEP_NAME_ENV, SWEPT_ENV, EXPERIMENT_ENV):
            os.environ.pop(var, None)
        client = MlflowClient(self.uri)
        status = "FAILED"
        if _ended_early:  # an interrupt may have cut one of this process's writes short, holding the lock
            stores.release(self.uri)
        down = stores.fault_now(self.uri)  # a store failing at the end: one line now, not minutes of retries
        try:
            if down is not None:
                print(stores.left_open(self.name, parent, down), flush=True)
                return
            runs = children(client, self.exp_id, parent)  # listed once, every page of them
            for i, child in enumerate(runs):  # a worker that died hard cannot close its run
                if child.info.status == "RUNNING":
                    client.set_tag(child.info.run_id, Tag.ERROR, "job process ended without closing its run")
                    client.set_terminated(child.info.run_id, "KILLED")
                    runs[i] = client.get_run(child.info.run_id)
            jobs = current(runs)
            status = sweep_status(jobs)
            if _ended_early and status == "FINISHED" or _ended_early == "KILLED":
                status = _ended_early
            print(summary_line(jobs, self.planned), flush=True)
            if stores.failed_line(self.name):
                print(stores.failed_line(self.name), flush=True)
            with _or_warn(f"log the shared config of sweep {self.name} as its parent's params"):
                known = client.get_run(parent).data.params  # a resumed parent has them already
                shared = {k: v for k, v in shared_params(jobs, self.swept).items() if k not in known}
                client.log_batch(parent, params=[Param(k, v) for k, v in shared.items()])
            if self.advised:  # a grid's report groups every LR, length and seed the study tried apart
                print(f"[tlsweep] the study's decision and finalists: reports/{self.name}/advise/; every run "
                      f"as a grid: python -m tlsweep.report sweep={self.name}", flush=True)
            elif self.report and any(c.info.status == "FINISHED" for c in jobs):
                with _or_warn(f"report sweep {self.name}"), self._report_interruptible():
                    self._report(client, parent, runs)
            if self.view:  # the start's lines have scrolled away by now
                print("\n".join(f"[tlsweep] {what}: {url}" for what, url in self._links().items()), flush=True)
            with _or_warn(f"log the fixed cost of sweep {self.name}"):
                cost = fixed_cost(jobs, STARTED, time.time())
                print(cost.line, flush=True)
                client.log_batch(parent, metrics=[Metric(k, v, int(time.time() * 1000), 0)
                                                  for k, v in cost.metrics.items()])
        except Exception as err:
            down = stores.fault(err, self.uri)  # the store failed half-way through: say so, in one line
            if down is None:
                raise
            print(stores.left_open(self.name, parent, down), flush=True)
        finally:
            try:
                if down is None:
                    client.set_terminated(parent, status)
            finally:
                if self.claim is not None:  # after the parent closed: a next launcher finds it ended
                    self.claim.release()
                    self.claim = None

    def _report(self, client: MlflowClient, parent: str, runs: list) -> None:
        with heavy("tlsweep.report.make"):  # the report's modules
            from .report import ReportError, make_report

        try:
            rep = make_report(self.uri, sweep=parent, out=Path("reports") / self.name, experiment=self.experiment,
                              child_runs=runs)  # listed once, in finish
        except ReportError as err:
            print(f"[tlsweep] no report for sweep {self.name}: {err}", flush=True)
            return
        print(rep.markdown, flush=True)
        if self.view and rep.metric != self.metric:  # the runs were scored on a test split: final_test_acc
            self.view = self._save_view(client, parent, rep.metric) or self.view
        with _or_warn(f"show the report of sweep {self.name} on its parent run"):
            note = rep.markdown + "\nTables and figures: this run's artifacts, `report/`.\n"
            if len(note) > MAX_TAG_VAL_LENGTH:  # MLflow cuts longer tags; say where the rest is
                note = note[:MAX_TAG_VAL_LENGTH - 80] + "\n\n... (cut; the whole table is report/summary.md)\n"
            client.log_batch(parent, metrics=[Metric(k, v, int(time.time() * 1000), 0) for k, v in
                                              group_metrics(rep.summary, rep.by, rep.metric).items()],
                             tags=[RunTag(Tag.NOTE, note)])
        for f in rep.files:  # this report's files only: reports/<sweep>/ may hold other metrics' subfolders
            client.log_artifact(parent, str(f), "report")
        print(f"[tlsweep] report: {rep.out_dir} (also logged to the parent run under report/)", flush=True)
