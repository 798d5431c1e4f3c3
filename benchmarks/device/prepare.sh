#!/usr/bin/env bash
# Build .device/ on the CPU machine: what the GPU machine needs to run benchmarks/device/run.sh.
#   .device/wheels/             cp312 manylinux x86-64 wheels of what the device image lacks (wheels.txt)
#   .device/hymenoptera_data/   hymenoptera, each image's short side resized to 256 px (JPEG)
# The device tool carries at most 64 MiB in all; this fails above 60 MiB.
#
#   bash benchmarks/device/prepare.sh [DATA]     # DATA: default ../shared/data/hymenoptera_data
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
DATA=${1:-$REPO/../shared/data/hymenoptera_data}
DEST=$REPO/.device
LIMIT_MIB=60
PY=${PYTHON:-python3}

[ -d "$DATA/train" ] && [ -d "$DATA/val" ] || { echo "prepare: no ImageFolder at $DATA (give its path)" >&2; exit 1; }
rm -rf "$DEST.new"
mkdir -p "$DEST.new/wheels"
cd "$REPO"

# pip matches manylinux_2_N tags exactly, so name every N a wheel here may carry
platforms=()
for n in 17 24 27 28 31 34 35 39; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
grep -v -e '^#' -e '^antlr4-python3-runtime' "$HERE/wheels.txt" >"$DEST.new/binary.txt"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$DEST.new/wheels" -r "$DEST.new/binary.txt"
# antlr4-python3-runtime 4.9.3 (what omegaconf 2.3 pins) is published as a source archive only;
# it is pure Python, so the py3 wheel built here installs on the device's 3.12
"$PY" -m pip wheel -q --no-deps --no-binary=:all: -w "$DEST.new/wheels" \
    "$(grep '^antlr4-python3-runtime' "$HERE/wheels.txt")"
rm "$DEST.new/binary.txt"
"$PY" "$HERE/check_wheels.py" "$DEST.new/wheels"

"$PY" "$HERE/shrink_data.py" "$DATA" "$DEST.new/hymenoptera_data"

rm -rf "$DEST"
mv "$DEST.new" "$DEST"
bytes=$(du -sb "$DEST" | cut -f1)
mib() { du -sb "$1" | awk '{printf "%.1f", $1 / 1048576}'; }
echo "prepare: $DEST holds $(ls "$DEST/wheels" | wc -l) wheels ($(mib "$DEST/wheels") MiB) and the data" \
     "($(mib "$DEST/hymenoptera_data") MiB): $(mib "$DEST") MiB in all (limit ${LIMIT_MIB} MiB)"
if [ "$bytes" -gt $((LIMIT_MIB * 1048576)) ]; then
    echo "prepare: over ${LIMIT_MIB} MiB: the device tool would not carry it" >&2
    exit 1
fi
