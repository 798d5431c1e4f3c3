"""The README's quickstart numbers come from the code as it is: one quickstart run, checked to the
digit against the line the README prints for this CPU (a change that moves it must update both together).

fp32 is not the same number on every CPU: oneDNN picks its convolution kernels, and so the order of its sums, by
the CPU's instruction sets and caches, and a 5-epoch fine-tune carries a last-bit difference into a different
trajectory. So the README gives one line per CPU it was measured on, and a CPU it names none for is skipped, saying
so."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from tests.conftest import CONF, REPO
from tlsweep.run import run

pytestmark = pytest.mark.slow

# the lines of README.md that this test holds to the code: the number, then the CPU it was measured on
GOLDEN = re.compile(r"final_val_acc = (\d\.\d{4}) on a 2-core ([A-Za-z0-9 -]+ with [A-Z0-9-]+)")


def this_cpu() -> str | None:
    """The README's name of this CPU, where the golden number was measured on one like it (2 threads)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    if torch.get_num_threads() != 2:
        return None
    if "GenuineIntel" in info and "amx_bf16" in flags:
        return "Intel Xeon with AMX-BF16"
    if "AuthenticAMD" in info and "avx512_bf16" in flags and "amx_bf16" not in flags:
        return "AMD EPYC with AVX512-BF16"
    return None


def test_the_quickstart_number_in_the_readme_is_what_the_code_gives(tmp_path):
    lines = {cpu: number for number, cpu in GOLDEN.findall((REPO / "README.md").read_text())}
    assert set(lines) == {"Intel Xeon with AMX-BF16", "AMD EPYC with AVX512-BF16"}, \
        f"README.md lost a golden quickstart line: {lines}"
    cpu = this_cpu()
    if cpu is None:
        pytest.skip(f"the golden number is measured on 2 threads of: {', '.join(lines)}; this CPU is none of them")
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=["experiment=quickstart", "strategy=finetune", "seed=0", "device=cpu",
                                           "bf16=false",  # fp32: bf16=auto would differ between CPUs
                                           f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", "cache_dir=null"])
    assert cfg.epochs == 5 and cfg.data.name == "digits" and cfg.model.name == "efficientnet_lite0"
    assert f"{run(cfg)['final_val_acc']:.4f}" == lines[cpu], cpu
