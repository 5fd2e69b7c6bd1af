#!/usr/bin/env bash
# The paper's Tables 1-2 re-run on the built-in synthetic benchmark (see README, "The experiment").
#
# Protocol, as in the paper (Sec. 4.2.1): an image model is trained first, then every variant is fine-tuned from it.
#   1. per seed: train the frame-by-frame model (--shift 0) with the default synthetic recipe (10 epochs, 960 steps)
#   2. per seed: fine-tune 13 variants from its last checkpoint for 5 epochs (480 steps) each: the frame-by-frame
#      baseline (--shift 0) and 1/128 ... 1/4 of the 256 query channels, each with and without matching
#   3. evaluate every variant's last checkpoint (no selection on the validation set) on the fixed validation world,
#      whole 24-frame videos, and tabulate mean ± std over the seeds.
#
#   bash experiments/synthetic_table.sh                  # SEEDS="0 1 2" JOBS=2 OUT=runs/synthetic
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/synthetic}
SEEDS=${SEEDS:-"0 1 2"}
JOBS=${JOBS:-2}            # runs at once; each uses one thread, which beats two threads a run on small models
BASE_STEPS=${BASE_STEPS:-960}
FINETUNE_STEPS=${FINETUNE_STEPS:-480}
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
mkdir -p "$OUT"
start=$(date +%s)

base() {  # seed
  [ -e "$OUT/seed$1/base/last" ] || python train.py --shift 0 --seed "$1" --max-steps "$BASE_STEPS" \
    --out "$OUT/seed$1/base" --overwrite > "$OUT/seed$1-base.log" 2>&1
}
finetune() {  # seed shift match|no-match; train.py only glances at val (4 videos): evaluate.py scores `last` on all
  local run="$OUT/seed$1/shift$2-$3"
  [ -e "$run/eval-synthetic-val.json" ] && return
  python train.py --model "$OUT/seed$1/base/last" --shift "$2" --"$3" --seed "$1" --max-steps "$FINETUNE_STEPS" \
    --val-videos 4 \
    --out "$run" --overwrite > "$run.log" 2>&1
  python evaluate.py --checkpoint "$run/last" --data synthetic >> "$run.log" 2>&1
}
export -f base finetune
export OUT BASE_STEPS FINETUNE_STEPS

for seed in $SEEDS; do mkdir -p "$OUT/seed$seed"; echo "$seed"; done | xargs -P "$JOBS" -I{} bash -c 'base {}'
echo "bases done in $(( ($(date +%s) - start) / 60 )) min"
for seed in $SEEDS; do
  echo "$seed 0 no-match"
  for k in 128 64 32 16 8 4; do echo "$seed $k no-match"; echo "$seed $k match"; done
done | xargs -P "$JOBS" -L1 bash -c 'finetune $0 $1 $2'
python evaluate.py --table "$OUT"/seed*/shift*/ --out "$OUT/table.md"
echo "all done in $(( ($(date +%s) - start) / 60 )) min"
