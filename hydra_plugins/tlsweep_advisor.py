"""The advisor's sweeper (experiment=advise): the shell around tlsweep.advisor's pure policy, as Optuna's and Ax's
sweepers are around theirs.

Each round it reads the store's finished runs into the results table (tlsweep.advisor.runs), asks
`next_step(table, study)` for the next batch, and launches it as ordinary tlsweep jobs through the configured
launcher (basic, joblib, submitit), `launcher.launch(batch, initial_job_idx)` as BasicSweeper does; until the
policy answers with a verdict. Every job is a run under the sweep's one parent (tlsweep.sweep.SweepCallback).
The policy keeps no state, so the same command with the same tracking.sweep_name resumes: every finished run
of the study's configs in the store counts, and no config with a row is proposed again.

Hydra imports every module of `hydra_plugins` at start, also for a single run: the advisor, pandas and MLflow
are imported when a study starts.
"""
from __future__ import annotations

import copy
import importlib.util
import logging
import os
import time
from pathlib import Path

from hydra.core.utils import JobStatus
from hydra.errors import CompactHydraException
from omegaconf import OmegaConf, open_dict

from hydra_plugins.tlsweep_sweeper import TlsweepSweeper

log = logging.getLogger(__name__)


class AdviseError(CompactHydraException):
    """A study that cannot start or go on: Hydra prints the message alone, as for tlsweep's user errors."""


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


class AdviseSweeper(TlsweepSweeper):
    def __init__(self, max_batch_size: int | None = None, params: dict | None = None, adaptive: bool = True):
        super().__init__(max_batch_size=max_batch_size, params=params)
        if params:
            raise AdviseError(f"experiment=advise chooses its jobs; hydra.sweeper.params={dict(params)} has no place")
        self.adaptive = adaptive  # the callback reads it from the config: no job count is planned

    def sweep(self, arguments: list[str]) -> list:
        import pandas as pd

        from tlsweep.advisor import next_step, report, space
        from tlsweep.config.errors import ConfigError
        from tlsweep.config.keys import Tag
        from tlsweep.tracking.runs import EXPERIMENT_ENV, PARENT_ENV, SWEEP_NAME_ENV

        from tlsweep.advisor import runs as store

        started, cfg = time.time(), self.config
        try:
            study = space.study(OmegaConf.to_container(cfg.advise, resolve=True) if cfg.get("advise") else {},
                                epochs=cfg.epochs, base_lr=cfg.optim.lr, importable=_importable,
                                parallel=space.parallel_slots(OmegaConf.to_container(cfg.hydra.launcher),
                                                              os.cpu_count() or 1))
        except ConfigError as err:
            raise AdviseError(f"tlsweep: {err}") from err
        model = str(cfg.model.name)
        base = self._base(arguments, space.swept(model))
        where, probe_epochs = self._space(study, base, model)
        study = space.with_short_floor(study, probe_epochs)
        uri, exp_id, parent = (os.environ["MLFLOW_TRACKING_URI"], os.environ[EXPERIMENT_ENV],
                               os.environ[PARENT_ENV])
        print(f"[tlsweep] advise: {len(study.backbones)} backbones ({', '.join(study.backbones)}) x strategies "
              f"{', '.join(study.strategies)}; LRs {dict((s, list(g)) for s, g in study.grid.items())}; "
              f"{study.short} then {study.epochs} epochs; budget {study.budget:,.0f} job-seconds"
              + (f", wall {study.wall:,.0f} s" if study.wall else "") + f"; {study.parallel} at once", flush=True)
        if cfg.data.get("select_fraction"):
            print(f"[tlsweep] advise: decisions read a selection split of data.select_fraction="
                  f"{cfg.data.select_fraction} of train, held out stratified by class; the scored split is read "
                  "only for the final report", flush=True)
        returns, job_idx, shown, log_rows, batch_no, cautioned = [], 0, set(), [], 0, False
        setting, resplit = cfg.advise.get("resplit") if cfg.get("advise") else None, False
        if any(a.lstrip("+~").startswith("data.select_seed=") for a in base):
            setting = False  # the user chose the draws (data.select_seed=${seed} resplits every seed already)
        while True:
            found = store.search(uri, exp_id, str(cfg.data.name))
            table = store.results(found, where)
            self._check_selection(table, study)
            caution = "" if cautioned else report.resolution(table, study.margin)
            if caution:  # once, as soon as a run has logged the split's size
                print(f"[tlsweep] advise: caution: {caution}", flush=True)
                cautioned = True
            if not resplit and space.resplits(setting, caution):
                resplit = True
                print("[tlsweep] advise: each seed past the first holds out its own draw of the selection split "
                      "(data.select_seed=<seed>; advise.resplit)", flush=True)
            step = next_step(table, study, wall_elapsed=time.time() - started)
            for row in step.trace.itertuples(index=False, name=None):
                if row not in shown:  # each decision once, with the evidence as it stood then
                    shown.add(row)
                    log_rows.append((batch_no, *row))
                    print(f"[tlsweep] advise round {row[0]} {row[1]}: {row[2]}: {row[3]} ({row[4]})", flush=True)
            if step.verdict is not None:
                break
            print(f"[tlsweep] advise: {len(step.jobs)} jobs; {step.progress}"
                  + (f"; {step.note}" if step.note else ""), flush=True)
            batch_no += 1
            batch = [base + space.overrides(j, model, resplit) for j in step.jobs]
            size = self.max_batch_size or len(batch)
            for i in range(0, len(batch), size):
                chunk = batch[i:i + size]
                self.validate_batch_is_legal(chunk)
                results = self.launcher.launch(chunk, initial_job_idx=job_idx)
                job_idx += len(chunk)
                returns.append(results)
                failed = [r for r in results if r.status == JobStatus.FAILED]
                if failed and len(failed) == len(results):  # nothing ran: a fault to show, not a lost candidate
                    _ = failed[0].return_value  # raises the first job's error, as BasicSweeper does
            self._check_landed(step.jobs, store.results(store.search(uri, exp_id, str(cfg.data.name)), where))
        mine = table[study.in_space(table)] if len(table) else table
        select_from = next((r.data.tags.get(Tag.DATA_SELECT, "") for r in found if store.row(r, where)), "")
        trace = pd.DataFrame(log_rows, columns=["after_batch", *step.trace.columns])
        self._finish(step, trace, mine, study, select_from, parent, uri, os.environ.get(SWEEP_NAME_ENV, "advise"))
        return returns

    def _base(self, arguments: list[str], varied: list[str]) -> list[str]:
        """The command line's overrides less the keys each job sets; a sweep among them is refused."""
        from hydra.core.override_parser.overrides_parser import OverridesParser

        keep = []
        for line, o in zip(arguments, OverridesParser.create().parse_overrides(list(arguments))):
            if o.is_sweep_override():
                raise AdviseError(f"tlsweep: experiment=advise chooses the jobs; {line} sweeps (give one value, or "
                                  "the candidates as advise.backbones/strategies/lrs)")
            if o.key_or_group not in varied:
                keep.append(line)
        return keep

    def _space(self, study, base: list[str], model: str):
        """Which runs are the study's: per (backbone, strategy), the params its jobs log, composed as a job is;
        and each strategy's probe phase (strategy.probe_epochs), which its short runs must outlast."""
        from tlsweep.advisor import space
        from tlsweep.advisor.runs import Space, fixed_params
        from tlsweep.advisor.study import Job
        from tlsweep.tracking.runs import NOT_THE_EXPERIMENT, flatten

        loader = self.hydra_context.config_loader
        loader = getattr(loader, "loader", loader)  # the real one, not the compose-once cache the launcher reads
        strategies = dict.fromkeys(study.strategies + (("probe",) if study.probing else ()))
        fixed, probe_epochs = {}, {}
        for b in study.backbones:
            for s in strategies:
                job = Job(b, s, study.grid[s][0], study.epochs, 0, "", 0.0, "")
                job_cfg = copy.deepcopy(loader.load_sweep_config(self.config, base + space.overrides(job, model)))
                with open_dict(job_cfg):
                    del job_cfg["hydra"]  # as Hydra hands a job its config
                fixed[b, s] = fixed_params(flatten(job_cfg), NOT_THE_EXPERIMENT)
                probe_epochs[s] = int(job_cfg.strategy.get("probe_epochs") or 0)
        return Space(space.param_key(model), fixed), probe_epochs

    @staticmethod
    def _check_selection(table, study) -> None:
        ok = table[study.in_space(table) & (table["status"] == "finished")] if len(table) else table
        if len(ok) and ok["select_acc"].isna().all():
            raise AdviseError("tlsweep: the study's runs logged no select_acc: the data has no selection split; "
                              "give data.select_fraction=0.2 (a stratified part of train)")

    @staticmethod
    def _check_landed(jobs, table) -> None:
        """Every launched job has a row now; one that has none (killed, or logged other params than the study
        composed) would be proposed again and again."""
        have = set(table[["backbone", "strategy", "lr", "epochs", "seed"]].itertuples(index=False, name=None))
        missing = [j for j in jobs if j.key not in have]
        if missing:
            raise AdviseError(f"tlsweep: {len(missing)} of the batch's {len(jobs)} jobs left no ended run of the "
                              f"study's config in the store (first: {missing[0].config} seed {missing[0].seed}); "
                              "their runs are under the sweep's parent run")

    def _finish(self, step, trace, results, study, select_from: str, parent: str, uri: str, name: str) -> None:
        """Print the recommendation; log it, the trace (every decision as this launch met it: `after_batch` 0,
        those replayed from the store before its first batch) and the race figure to the parent run."""
        from mlflow.tracking import MlflowClient

        from tlsweep.advisor import report
        from tlsweep.config.keys import Tag

        out = Path("reports") / name / "advise"
        out.mkdir(parents=True, exist_ok=True)
        block = report.recommendation(step, results, study, select_from)
        (out / "recommendation.txt").write_text(block + "\n")
        trace.to_csv(out / "trace.csv", index=False)
        (out / "trace.md").write_text(report.markdown(trace))
        finalists = report.finalists(results, step, study) if len(results) else None
        files = [out / "recommendation.txt", out / "trace.csv", out / "trace.md"]
        if finalists is not None and len(finalists):
            finalists.to_csv(out / "finalists.csv", index=False)
            (out / "finalists.md").write_text(report.finalists_markdown(finalists))
            files += [out / "finalists.csv", out / "finalists.md"]
        if len(results):
            try:
                files.append(report.race(results, step, out / "race.png"))
            except Exception as err:  # noqa: BLE001 -- a figure that fails must not lose the verdict
                log.warning("could not draw the race figure: %s: %s", type(err).__name__, err)
        print(block, flush=True)
        if finalists is not None and len(finalists):
            print("\n== the finalists: full length, paired seeds ==\n" + report.finalists_markdown(finalists), flush=True)
        print(f"[tlsweep] advise: decision trace {out / 'trace.md'} ({len(trace)} rows), race figure "
              f"{out / 'race.png'}; logged to the parent run under advise/", flush=True)
        client = MlflowClient(uri)
        v = step.verdict
        client.set_tag(parent, Tag.ADVISE_RECOMMENDATION, str(v.recommendation) if v.recommendation else "none")
        client.set_tag(parent, Tag.ADVISE_STOPPED, f"{v.stopped}: {v.why}"[:5000])
        caution = report.resolution(results, study.margin)
        if caution:
            client.set_tag(parent, Tag.ADVISE_CAUTION, caution)
        for f in files:
            client.log_artifact(parent, str(f), "advise")
