#!/usr/bin/env bash
# The advisor on the grid's tasks, each in a fresh store (else it would reuse the grid's runs at no cost):
#   benchmarks/advisor/advise.sh <out dir> <hymenoptera root> <budget> <backbones> hymenoptera-all digits-10 ...
# e.g. budget 8m, backbones [efficientnet_lite0] (the grid's) or [efficientnet_lite0,efficientnet_lite1,efficientnet_lite2].
set -uo pipefail
out=$(realpath "$1"); hym=$(realpath "$2"); budget=$3; backbones=$4; shift 4
for task in "$@"; do
    ds=${task%-*}; shots=${task#*-}; [ "$shots" = all ] && shots=null
    extra=(); [ "$ds" = hymenoptera ] && extra=(data.root="$hym" data.download=false)
    dir="$out/$task"; mkdir -p "$dir"; cd "$dir"
    start=$(date +%s)
    python -m tlsweep -m experiment=advise data="$ds" "${extra[@]}" data.shots="$shots" epochs=10 bf16=false \
        advise.budget="$budget" "advise.backbones=$backbones" "advise.strategies=[probe,partial,finetune,lpft]" \
        tracking.uri="sqlite:///$dir/mlflow.db" tracking.sweep_name="advise-$task" cache_dir="$dir/cache" \
        > advise.log 2>&1
    echo "$task rc=$? $(( $(date +%s) - start )) s" | tee -a "$out/times.txt"
done
