#!/usr/bin/env bash
# The advisor's reference grid, one sweep per task into one store: EfficientNet-Lite0 x probe, partial, finetune,
# lpft x 3 LRs (the advisor's default: 1e-3 x {1/3, 1, 3}) x 3 seeds, 10 epochs, a stratified 20% of train held
# out as the selection split (as experiment=advise carves it), in fp32 (bf16=false) as measured.
#   benchmarks/advisor/grid.sh <out dir> <hymenoptera root> hymenoptera-all digits-10 ...
# A task is <data>-<shots per class | all>. Torch jobs take every core: run one of these at a time.
set -uo pipefail
out=$(realpath "$1"); hym=$(realpath "$2"); shift 2
mkdir -p "$out/logs"; cd "$out"
for task in "$@"; do
    ds=${task%-*}; shots=${task#*-}; [ "$shots" = all ] && shots=null
    extra=(); [ "$ds" = hymenoptera ] && extra=(data.root="$hym" data.download=false)
    start=$(date +%s)
    python -m tlsweep -m model=efficientnet_lite0 data="$ds" "${extra[@]}" data.select_fraction=0.2 \
        data.shots="$shots" epochs=10 bf16=false strategy=probe,partial,finetune,lpft optim.lr=0.00033,0.001,0.003 seed=0,1,2 \
        tracking.uri="sqlite:///$out/mlflow.db" tracking.sweep_name="grid-$task" cache_dir="$out/cache" \
        > "logs/$task.log" 2>&1
    echo "$task rc=$? $(( $(date +%s) - start )) s" | tee -a times.txt
done
