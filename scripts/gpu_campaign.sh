#!/usr/bin/env bash
# A slice of the real CIFAR-10 table on the GPU, time-boxed: `bash scripts/gpu_campaign.sh OUT_DIR [--dry-run]`.
#
# ResNet-20, SNGM against MSGD at batch 4096, each over the same lr_factor grid around its own LR
# (optimizer.lr at batch 128, scaled to the batch by its own rule: SNGM sqrt, MSGD linear), at a SHORT protocol: experiment=paper_cifar10 with epochs=$EPOCHS
# (default 15 instead of 200; warmup and poly decay as in the paper protocol, the decay ending at
# the last epoch), bf16 + channels_last + compile, seed 0. One Hydra sweep in one process per grid, in
# $WORK/multirun/$NAME; its order puts batch sizes outermost and the LRs before the optimizers, so
# a cut-off sweep still pairs SNGM and MSGD at every LR it reached, the middle of the grid first.
#
# Each sweep stops itself 50 s before BUDGET_S (default 240 s; max_minutes, a shared deadline): the
# run in progress checkpoints and the rest wait; SIGTERM 20 s before BUDGET_S is the fallback, and
# SIGKILL at BUDGET_S ends a sweep whatever it does. The packing then ends by BUDGET_S + 40 s. Into
# OUT_DIR (at most 7 files): summary.md, log.txt, runs.tar.gz (every run folder without its
# checkpoint, for results/), when a run was cut off checkpoints.tar.gz (its checkpoint), and
# table.md, .csv and .tex (sngm-bench-report). CONTINUE_FROM=DIR (a folder holding
# those two archives from an earlier call) unpacks them first, so the same command trains only
# what is missing, on this machine or a fresh one.
#
# Measured on an H200 (2026-11-27, results/cifar10_short_15ep): the 8 runs of the default grid
# took 72 s in one sweep, about 5 s of training each (185,000 images/s) plus one compilation.
# SEEDS (e.g. 1,2), LR_FACTORS (e.g. 0.125,0.0625), BATCHES and OPTIMIZERS change that grid; the runs
# land in the same sweep folder, so their run folders join results/cifar10_short_15ep/runs.
# GRIDS replaces it by several grids, separated by ';' (e.g. 'optimizer=msgd lr_factor=0.125 ;
# optimizer=sngm lr_factor=1,2 seed=1,2'), swept one after another into that folder within the one
# time box: the LRs worth more seeds differ per optimizer, which one grid cannot express. A grid
# without batch_size= gets BATCHES (default 4096); a dry run scales a grid's own batch sizes as
# 4096 -> 200 (its 1000 images hold no batch of 8192), so the GPU's GRIDS dry-run as they are. A grid
# that sets one of the fixed settings (e.g. `precision=fp32 channels_last=false compile=false`)
# overrides it.

TITLE="GPU campaign slice (scripts/gpu_campaign.sh)"
GPU_BUDGET_S=240 DRY_BUDGET_S=900
source "$(dirname "$0")/gpu_lib.sh"  # reads OUT_DIR [--dry-run] from this script's arguments
EPOCHS=${EPOCHS:-$([ "$MODE" = gpu ] && echo 15 || echo 2)}
NAME=${NAME:-cifar10_short_${EPOCHS}ep}

if [ "$MODE" = gpu ]; then
    BATCHES=${BATCHES:-4096} LR_FACTORS=${LR_FACTORS:-1,0.5,2,0.25}
    EXTRA="device=cuda precision=bf16 channels_last=true compile=true"
else  # tiny sizes, the same command line
    BATCHES=${BATCHES:-200} LR_FACTORS=${LR_FACTORS:-1,0.5}
    EXTRA="device=cpu precision=bf16 channels_last=true compile=false dataset.subset=1000 model.width=4 eval_batch_size=2000"
    LIMIT_SCALE=${LIMIT_SCALE:-5}
fi
IFS=';' read -ra GRID_LIST <<<"${GRIDS:-lr_factor=$LR_FACTORS optimizer=${OPTIMIZERS:-sngm,msgd}${SEEDS:+ seed=$SEEDS}}"
dry_batches() {  # a GPU grid's batch sizes at the dry run's scale (its 1000 images hold no batch of 8192): 4096 -> 200
    awk -v sizes="$1" 'BEGIN { n = split(sizes, b, ","); for (i = 1; i <= n; i++) {
        size = int(b[i] * 200 / 4096); printf "%s%d", (i > 1 ? "," : ""), (size < 1 ? 1 : size) } }'
}
extra_for() {  # EXTRA less the keys the grid "$1" sets: Hydra takes a key's last value, and the grid's must win
    local kept=() setting
    for setting in $EXTRA; do
        [[ " $1 " == *" ${setting%%=*}="* ]] || kept+=("$setting")
    done
    echo "${kept[*]}"
}
for i in "${!GRID_LIST[@]}"; do  # a grid without its own batch_size takes BATCHES, not the experiment's 128
    if ! [[ ${GRID_LIST[$i]} =~ batch_size=([0-9,]+) ]]; then
        GRID_LIST[$i]="batch_size=$BATCHES ${GRID_LIST[$i]}"
    elif [ "$MODE" != gpu ]; then
        GRID_LIST[$i]=${GRID_LIST[$i]/batch_size=${BASH_REMATCH[1]}/batch_size=$(dry_batches "${BASH_REMATCH[1]}")}
    fi
done
echo "GPU campaign: mode $MODE, results in $OUT, runs in $WORK/multirun/$NAME; $ENVIRONMENT"

if [ -n "${CONTINUE_FROM:-}" ]; then
    for archive in "$CONTINUE_FROM/runs.tar.gz" "$CONTINUE_FROM/checkpoints.tar.gz"; do
        [ -f "$archive" ] && step "unpack $(basename "$archive")" 30 tar -xzf "$archive" -C "$WORK"
    done
fi

# The time box: each sweep's max_minutes deadline is 50 s before the budget's end, and the sweep ends
# there: the run in progress finishes its step (or its evaluation) and checkpoints. The fallback is
# SIGTERM 30 s later, which stops a sweep the way a preemption does (TIMEOUT below), then SIGKILL at
# the end. So every sweep is over by the budget's end, and the packing after it ends 40 s later,
# runs.tar.gz first: a device call limited to bootstrap + BUDGET_S + 60 s brings it back however the
# sweeps ended. A grid the budget no longer covers is skipped.
STEPS_END_S=$(( START_S + BUDGET_S - 20 ))
for i in "${!GRID_LIST[@]}"; do
    LEFT_S=$(( START_S + BUDGET_S - $(date +%s) ))
    SWEEP="-m experiment=paper_cifar10 name=$NAME epochs=$EPOCHS max_minutes=$(awk "BEGIN { print ($LEFT_S - 50) / 60 }") ${GRID_LIST[$i]} $(extra_for "${GRID_LIST[$i]}")"
    note "Sweep $((i + 1)) of ${#GRID_LIST[@]} (short protocol: paper_cifar10 at $EPOCHS epochs, not the paper's 200): \`sngm-bench $SWEEP\`"
    if [ "$LEFT_S" -lt 60 ]; then
        ROWS+=("| sweep $((i + 1)) | skipped: budget spent | 0 | $LEFT_S | \`sngm-bench $SWEEP\` |")
        FAILED=1
        continue
    fi
    KILL_AFTER_S=20 step "sweep $((i + 1)) (time-boxed)" "$LEFT_S" bash -c "cd '$WORK' && '$PY' -m sngm_bench $SWEEP"
done
STEPS_END_S=$(( START_S + BUDGET_S + 40 ))  # the packing, after the time box; each step also has its own limit
# Not for results/: checkpoints, locks, logs, and what a run killed mid-write left (.NAME.tmp, records.temporary_path).
step "archive runs" 20 tar -czf "$OUT/runs.tar.gz" -C "$WORK" --exclude=checkpoint.pt --exclude=checkpoint.prev.pt --exclude=.lock --exclude=train.log --exclude=.started_runs.txt --exclude='.*.tmp' "multirun/$NAME"
UNFINISHED=$(cd "$WORK" && timeout 20 "$PY" "$ROOT/scripts/gpu_report.py" unfinished "multirun/$NAME")
if [ -n "$UNFINISHED" ]; then
    step "archive checkpoints of unfinished runs" 20 tar -czf "$OUT/checkpoints.tar.gz" -C "$WORK" $UNFINISHED
fi
REPORT="from sngm_bench.report import main; main()"
step "report" 40 bash -c "cd '$WORK' && '$PY' -c '$REPORT' multirun/$NAME --out report && cp report/table.* '$OUT/'"
[ -f "$OUT/table.md" ] && note "$(cat "$OUT/table.md")"
echo "GPU campaign done in $(( $(date +%s) - START_S )) s; see $OUT/summary.md"
cat "$OUT/summary.md"
exit $FAILED
