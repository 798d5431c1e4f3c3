#!/usr/bin/env bash
# The tabular benchmark the advisor and its baselines are replayed on: per task, every candidate of the advisor's
# default space (EfficientNet-Lite0, -Lite1, -Lite2 x probe, partial, finetune, lpft x the default LRs 1e-3 x
# {1/3, 1, 3}) on 3 seeds, at every length a replayed method asks for: 1 epoch (the one-epoch rule), 3 (the
# advisor's short rung: a third of the full length, raised to lpft's 2 probe epochs plus one) and 6 (the full
# length). lpft cannot run 1 epoch (its probe phase takes 2): those runs fail at once, as they would for a user. A stratified 20% of train is held
# out as the selection split (as experiment=advise carves it); fp32 (bf16=false). One sweep per task, all in one
# store; then benchmarks/advisor/grids.py turns the store into the result file.
#   benchmarks/advisor/grid.sh <out dir> <hymenoptera root> <prepared data dir> hymenoptera-all digits-10 rsscn7-30 ...
# A task is hymenoptera-<train images per class | all> or digits-<...> (data.shots of the dataset, its selection
# split carved first), or a folder <prepared data dir>/<task> made by a script in benchmarks/advisor/data/ (e.g.
# rsscn7-30: 30 train images per class, a fifth of them held out as the selection split). Images are cropped to
# 64 px (digits: 32). Torch jobs take every core: run one of these at a time. GRID_BACKBONES, GRID_STRATEGIES, GRID_EPOCHS override the space.
# GRID_DRAW=per_seed measures what a resplit study (advise.resplit) runs past its first seed: seeds 1 and 2 at the
# full length, each on its own draw of the selection split (data.select_seed=<seed>; seed 0's is the fixed draw),
# as the sweep grid-<task>@resplit.
set -uo pipefail
out=$(realpath "$1"); hym=$(realpath "$2"); prepared=$(realpath "$3"); shift 3
backbones=${GRID_BACKBONES:-efficientnet_lite0,efficientnet_lite1,efficientnet_lite2}
strategies=${GRID_STRATEGIES:-probe,partial,finetune,lpft}
epochs=${GRID_EPOCHS:-1,3,6}
seeds=0,1,2; draw=(); suffix=
if [ "${GRID_DRAW:-fixed}" = per_seed ]; then
    seeds=1,2; draw=('data.select_seed=${seed}'); suffix=@resplit; epochs=${GRID_EPOCHS:-6}
fi
mkdir -p "$out/logs"; cd "$out"
for task in "$@"; do
    ds=${task%-*}; shots=${task#*-}; [ "$shots" = all ] && shots=null
    case $ds in
        hymenoptera) data=(data=hymenoptera data.root="$hym" data.download=false data.image_size=64) ;;
        digits) data=(data=digits) ;;
        *) data=(data=imagefolder data.root="$prepared/$task" data.image_size=64); shots=null ;;
    esac
    start=$(date +%s)
    python -m tlsweep -m "model=$backbones" "${data[@]}" data.select_fraction=0.2 data.shots="$shots" \
        "epochs=$epochs" bf16=false "strategy=$strategies" optim.lr=0.00033,0.001,0.003 "seed=$seeds" "${draw[@]}" \
        tracking.uri="sqlite:///$out/mlflow.db" tracking.sweep_name="grid-$task$suffix" cache_dir="$out/cache" \
        hydra.callbacks.tlsweep.report=false > "logs/$task$suffix.log" 2>&1
    echo "$task$suffix rc=$? $(( $(date +%s) - start )) s" | tee -a times.txt
done
