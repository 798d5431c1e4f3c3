"""The advisor: which backbone, strategy and LR for a dataset, within a compute budget, with evidence.

Pure decisions over tables (pandas, numpy, scipy.special through tlsweep.report.stats): no torch, no
MLflow, no Hydra, so every rule is tested on synthetic tables. A Hydra sweeper is the shell around it: it
turns `next_step`'s jobs into tlsweep runs and the finished runs back into the results table.

    table     the results table's columns (one place) and `visible`, the view a decision may read
    study     StudyConfig, Job, Config, Verdict, Step
    budget    budget strings, each job's estimated cost, what was spent, what fits
    policy    next_step: screen, successive halving, paired seeds, verdict
    simulate  the policy's loop against a synthetic truth
    replay    the policy's loop on a measured grid (each job answered by its row), and regret against the grid
    baselines random search, one-epoch top-k, successive halving, the default habit, the full grid, on a grid
"""
from tlsweep.advisor.budget import parse_duration
from tlsweep.advisor.policy import next_step
from tlsweep.advisor.study import Config, Job, Step, StudyConfig, Verdict
from tlsweep.advisor.table import COLUMNS, empty

__all__ = ["COLUMNS", "Config", "Job", "Step", "StudyConfig", "Verdict", "empty", "next_step", "parse_duration"]
