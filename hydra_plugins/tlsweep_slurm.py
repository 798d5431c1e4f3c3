"""The `slurm` launcher preset's class: hydra-submitit-launcher's, waiting for every job.

hydra-submitit-launcher 1.2.0 collects a sweep's results with `[j.results()[0] for j in jobs]`,
which raises at the first job that SLURM ended badly (cancelled, killed, out of memory,
past its time limit) while the jobs after it are still queued or running. The launching
process would then close the sweep's parent run and make its report without them, and mark
their runs KILLED while they still run. This launcher submits the same job array, waits until
every job has ended, and then raises the first failure, as Hydra's basic and joblib launchers do.

Hydra instantiates launchers only from the `hydra_plugins` package, hence this module's place.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

try:
    from hydra_plugins.hydra_submitit_launcher import submitit_launcher
except ImportError:  # no cluster extra: Hydra imports every plugin module at start, so stay quiet
    submitit_launcher = None

log = logging.getLogger(__name__)

if submitit_launcher is not None:
    from hydra.core.singleton import Singleton
    from hydra.core.utils import JobReturn, filter_overrides
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    class SlurmLauncher(submitit_launcher.SlurmLauncher):
        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            import submitit  # imported late, as the plugin does, to keep Hydra's plugin discovery fast

            # as BaseSubmititLauncher.launch in hydra-submitit-launcher 1.2.0, up to its last line
            params = dict(self.params)
            executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=params.pop("submitit_folder"),
                                             **{f"{self._EXECUTOR}_max_num_timeout": params.pop("max_num_timeout")})
            base = set(OmegaConf.structured(BaseQueueConf).keys())
            executor.update_parameters(**{k if k in base else f"{self._EXECUTOR}_{k}": v for k, v in params.items()})
            log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {self.config.hydra.sweep.dir}")
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            sweep_dir.mkdir(parents=True, exist_ok=True)
            if "mode" in self.config.hydra.sweep:
                os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
            jobs_args: list[tuple[Any, ...]] = []
            for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
                log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
                jobs_args.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}",
                                  Singleton.get_state()))
            jobs = executor.map_array(self, *zip(*jobs_args))
            try:
                for job in jobs:  # the change: every job ends before the first failure is raised
                    job.wait()
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM on the launcher ends the sweep, on the cluster too
                for job in jobs:
                    if not job.done():
                        job.cancel(check=False)
                log.warning(f"cancelled the sweep's unfinished jobs (array {jobs[0].job_id.split('_')[0]})")
                raise
            return [job.results()[0] for job in jobs]
