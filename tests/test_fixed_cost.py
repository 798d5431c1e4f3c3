"""benchmarks/fixed_cost.py's import floor: the libraries a process imported, read from `python -X importtime`,
with tlsweep's own modules replaced by what they imported."""
from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import fixed_cost  # noqa: E402

LISTING = """\
import time: self [us] | cumulative | imported package
import time:        10 |         10 |   _io
import time:        50 |         60 | site
import time:        40 |         40 |       numpy._core
import time:        30 |         70 |     numpy
import time:        20 |         20 |     tlsweep.keys
import time:        25 |         25 |         yaml.reader
import time:        15 |         40 |       yaml
import time:         5 |         45 |     tlsweep.errors
import time:        10 |        195 |   tlsweep.report
import time:         5 |        200 | tlsweep
import time:         7 |          7 | numpy
import time:         9 |          9 | json
"""


def test_the_floor_keeps_the_outermost_libraries_and_opens_tlsweeps_modules():
    # site's and numpy's own imports load with them; numpy, imported by tlsweep and later again, once
    assert fixed_cost.loaded_modules(LISTING) == ["site", "numpy", "yaml", "json"]


def test_the_floor_of_a_real_import_loads_what_tlsweep_imported(tmp_path):
    p = subprocess.run([sys.executable, "-X", "importtime", "-c", "import tlsweep.report.stats"], cwd=REPO,
                       capture_output=True, text=True, check=True)
    libraries = fixed_cost.loaded_modules(p.stderr)
    assert not [m for m in libraries if m.split(".")[0] == "tlsweep"]
    probe = fixed_cost.FLOOR + "\nprint(sorted(m for m in sys.modules if m in ('scipy.special', 'tlsweep')))"
    out = subprocess.run([sys.executable, "-c", probe, *libraries], cwd=tmp_path, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "['scipy.special']"  # what stats imports (Student's t), and nothing of tlsweep
