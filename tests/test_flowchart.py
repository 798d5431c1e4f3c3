"""experiment=flowchart end to end, shrunk: a sweep over two datasets and two shots values ends
with the decision grid in its automatic report and in the parent run's artifacts."""
from __future__ import annotations

import pytest

import os
import subprocess
import sys

import pandas as pd
from mlflow.tracking import MlflowClient

from tlsweep.tracking import runs as tracking

pytestmark = pytest.mark.slow  # end-to-end: the full tier (.ci/run runs it)


def test_the_flowchart_preset_ends_with_a_decision(tmp_path, tiny_root):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.setup_store(uri)
    # the preset's sweep, its datasets swapped for two that need no download (the tiny ImageFolder
    # stands in for hymenoptera), two shots values, two strategies, two seeds, one epoch at 32 px
    cmd = [sys.executable, "-m", "tlsweep", "-m", "experiment=flowchart", "data=imagefolder,digits",
           f"data.root={tiny_root}", "data.shots=2,4", "strategy=probe,finetune", "seed=0,1", "epochs=1",
           "data.image_size=32", "data.num_workers=0", "batch_size=4", "device=cpu", f"tracking.uri={uri}",
           "tracking.sweep_name=flow"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[tlsweep] 16 of 16 jobs finished" in done.stdout
    assert "Best strategy by mean:" in done.stdout and "| dataset | 2 shots | 4 shots |" in done.stdout

    table = pd.read_csv(tmp_path / "reports" / "flow" / "decision.csv", dtype={"data.shots": str})
    assert list(table[["data.name", "data.shots"]].itertuples(index=False, name=None)) == [
        ("digits", "2"), ("digits", "4"), ("imagefolder", "2"), ("imagefolder", "4")]
    assert set(table["best"]) <= {"probe", "finetune"} and (table["n_pairs"] == 2).all()
    client = MlflowClient(uri)
    (parent,) = client.search_runs([client.get_experiment_by_name("tlsweep").experiment_id],
                                   "tags.`tlsweep.role` = 'sweep'")
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/decision.png", "report/decision.pdf", "report/decision.csv"} <= logged
