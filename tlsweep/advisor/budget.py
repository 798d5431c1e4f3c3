"""The study's costs: budget strings, each job's estimated job-seconds, what was spent, what fits.

Job-seconds are what a cluster charges: the sum of the jobs' durations, however many ran at once.
"""
from __future__ import annotations

import heapq
import math
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from tlsweep.advisor.study import PROBE, Job, StudyConfig
from tlsweep.advisor.table import FEATURE_SECONDS
from tlsweep.config.errors import ConfigError

_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
# An unmeasured strategy's epoch, in frozen feature passes of its backbone. Measured with EfficientNet-Lite0 on
# this project's 2-core CPU: a fine-tune epoch took 0.65 of the pass on hymenoptera (224 px), 0.71 on digits
# (32 px); 2 leaves room for heavier augmentation and slower strategies, and is corrected by the first measurement.
PASS_FACTOR = 2.0
# A probe's epoch trains a linear head on cached features: about 0.01 s on either task above. With nothing
# measured, the first probe is the study's measurement of the backbone; the overhead's prior covers its pass.
PROBE_PRIOR_EPOCH_SECONDS = 1.0
_DURATION = re.compile("".join(rf"(?:{_NUMBER}\s*{u}\s*)?" for u in _UNITS))


def parse_duration(value: object, key: str = "advise.budget") -> float:
    """Seconds in "30m", "2h", "90s", "1h30m", "1.5h", "2d": numbers with units d, h, m, s, largest first,
    each at most once. A bare number is refused: a Slurm user reads 30 as minutes, a Python user as
    seconds, and a budget read the wrong way is off by 60x."""
    text = str(value).strip().lower() if isinstance(value, str) else None
    if text is None or not text:
        hint = f" (write {value}m for minutes, {value}s for seconds)" if isinstance(value, (int, float)) \
            and not isinstance(value, bool) else ""
        raise ConfigError(f"{key}={value!r}: a duration with a unit, e.g. 30m, 2h, 90s, 1h30m{hint}")
    match = _DURATION.fullmatch(text)
    if match is None or not any(match.groups()):
        bare = re.fullmatch(_NUMBER, text)
        hint = f" ({text} has no unit: write {text}m for minutes, {text}s for seconds)" if bare else ""
        raise ConfigError(f"{key}={value!r}: a duration is numbers with units d, h, m, s, largest first, "
                          f"e.g. 30m, 2h, 90s, 1h30m{hint}")
    seconds = sum(float(n) * u for n, u in zip(match.groups(), _UNITS.values()) if n is not None)
    if seconds <= 0:
        raise ConfigError(f"{key}={value!r}: a budget must be more than zero")
    return seconds


class CostModel:
    """Estimated job-seconds of a job: epochs x seconds per epoch + the job's fixed overhead.

    Seconds per epoch: the largest measured for the same backbone and strategy (the largest, so that noise
    does not tip a job over the budget). A strategy not yet measured on a backbone: PASS_FACTOR x the
    backbone's frozen feature pass, where a probe computed one (`feature_seconds`); the pass runs the
    backbone forward over train, selection and scored split once, and an epoch runs forward and backward
    over train and forward over the other two. Else the prior. Either way no less than the largest epoch
    measured for the backbone under any strategy. The overhead (job minus epochs, from finished runs):
    the pair's, else the backbone's largest (a probe's includes its feature pass: an upper bound), else
    the prior. The budget is kept on these estimates: it holds on real seconds as long as no run is slower than
    those measured before it (docs/advisor.md shows one that was), and apart from the job that measures a backbone
    the priors would never start (tlsweep.advisor.policy).
    """

    def __init__(self, runs: pd.DataFrame, study: StudyConfig):
        self.study = study
        timed = runs[runs["status"].isin(("finished", "diverged")) & np.isfinite(runs["epoch_seconds"])]
        self._pair_epoch = timed.groupby(["backbone", "strategy"])["epoch_seconds"].max().to_dict()
        self._backbone_epoch = timed.groupby("backbone")["epoch_seconds"].max().to_dict()
        done = timed[(timed["status"] == "finished") & np.isfinite(timed["job_seconds"])]
        overhead = (done["job_seconds"] - done["epochs"] * done["epoch_seconds"]).clip(lower=0.0)
        self._pair_over = overhead.groupby([done["backbone"], done["strategy"]]).max().to_dict()
        self._backbone_over = overhead.groupby(done["backbone"]).max().to_dict()
        passes = runs[FEATURE_SECONDS] if FEATURE_SECONDS in runs.columns else pd.Series(dtype=float)
        passes = pd.to_numeric(passes, errors="coerce")
        self._backbone_pass = passes[np.isfinite(passes)].groupby(runs["backbone"]).max().to_dict()

    def measured(self, backbone: str) -> bool:
        """Whether a finished or diverged run of `backbone` timed its epochs: else its jobs are priced by the priors."""
        return backbone in self._backbone_epoch

    def estimate(self, backbone: str, strategy: str, epochs: int) -> tuple[float, str]:
        """(job-seconds, source of the epoch time: "measured", "feature pass", "backbone" or "prior")."""
        over = self._pair_over.get((backbone, strategy),
                                   self._backbone_over.get(backbone, self.study.prior_overhead_seconds))
        if (backbone, strategy) in self._pair_epoch:
            return epochs * self._pair_epoch[backbone, strategy] + over, "measured"
        measured = self._backbone_epoch.get(backbone, -math.inf)
        if backbone in self._backbone_pass:
            guess, source = PASS_FACTOR * self._backbone_pass[backbone], "feature pass"
        elif strategy == PROBE:  # a head on cached features: its cost is the pass, which the overhead bounds
            guess, source = PROBE_PRIOR_EPOCH_SECONDS, "prior"
        else:
            guess, source = self.study.prior_epoch_seconds, "prior"
        return epochs * max(guess, measured) + over, "backbone" if measured > guess else source


def spent(runs: pd.DataFrame, study: StudyConfig, costs: CostModel) -> float:
    """Job-seconds of the study's rows, whoever ran them; a row without a measured duration (a job killed
    before it could log one) counts as its estimate."""
    rows = runs[study.in_space(runs)]
    total = 0.0
    for b, s, e, sec in zip(rows["backbone"], rows["strategy"], rows["epochs"], rows["job_seconds"]):
        total += sec if math.isfinite(sec) else costs.estimate(b, s, e)[0]
    return total


def full_grid(study: StudyConfig, costs: CostModel) -> float:
    """Estimated job-seconds of the grid a user would run by hand: every backbone x strategy x LR at full
    length x `min_seeds` seeds (the fewest that give the finalists' first paired CI, so the grid is not
    inflated)."""
    return sum(len(study.grid[s]) * study.min_seeds * costs.estimate(b, s, study.epochs)[0]
               for b in study.backbones for s in study.strategies)


def makespan(costs: Sequence[float], parallel: int) -> float:
    """Wall-clock seconds of jobs on `parallel` slots, longest first to the least loaded slot (LPT)."""
    slots = [0.0] * min(parallel, max(1, len(costs)))
    for c in sorted(costs, reverse=True):
        heapq.heapreplace(slots, slots[0] + c)
    return max(slots)


def fit(units: Sequence[Sequence[Job]], remaining: float, wall_left: float, parallel: int) -> tuple[list[Job], int]:
    """The jobs of `units` (each all or nothing: a seed for both finalists) that fit, in order, within
    `remaining` job-seconds and `wall_left` wall-clock seconds; and how many jobs were left out."""
    chosen: list[Job] = []
    left = 0
    used = 0.0
    for unit in units:
        cost = sum(j.cost for j in unit)
        if used + cost <= remaining and makespan([j.cost for j in chosen + list(unit)], parallel) <= wall_left:
            chosen += unit
            used += cost
        else:
            left += len(unit)
    return chosen, left
