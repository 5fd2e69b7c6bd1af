#!/usr/bin/env bash
# The paper's Tables 1-2 re-run on the built-in synthetic benchmark, with the other places a shift can act
# (see docs/experiment.md).
#
# Protocol, as in the paper (Sec. 4.2.1): an image model is trained first, then every variant is fine-tuned from it.
#   1. per seed: train the frame-by-frame image model (--shift 0) with the default synthetic recipe (960 steps)
#   2. per seed: fine-tune every row of ROWS from its last checkpoint for FINETUNE_STEPS steps (1440: 15 epochs)
#   3. evaluate every fine-tuned model's last checkpoint (no selection on the validation set) on the fixed validation
#      world, whole 24-frame videos, and tabulate mean ± std over the seeds.
# Each run's config.json and evaluation are kept in RESULTS (committed: the table is made from them), and a run found
# there is skipped, so the table resumes where it stopped, in another sitting too (the image models are retrained if
# OUT is gone). Runs are deterministic on one kind of CPU only: PyTorch's kernels for another instruction set
# (AVX2 against AVX-512; try ATEN_CPU_CAPABILITY=avx2) round differently, and 40 steps in two such runs already
# score differently. So finish a table on the kind of machine that began it. Rows run in the order given, the most
# telling first, each for every seed.
#
#   bash experiments/synthetic_table.sh       # SEEDS="0 1 2" JOBS=2 OUT=runs/t1440 RESULTS=experiments/t1440 MODEL=tiny
#   MODEL=tiny-mask2former OUT=runs/m2f RESULTS=experiments/m2f ROWS="..." bash experiments/synthetic_table.sh
#   WORLD=hide_run=3 OUT=... RESULTS=... ROWS="..." bash experiments/synthetic_table.sh   # another synthetic world,
#                                                   # for the image models and the fine-tunes (experiments/reach_table.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/t1440}
RESULTS=${RESULTS:-experiments/t1440}
SEEDS=${SEEDS:-"0 1 2"}
JOBS=${JOBS:-2}            # runs at once; each uses one thread, which beats two threads a run on small models
MODEL=${MODEL:-tiny}
BASE_STEPS=${BASE_STEPS:-960}
FINETUNE_STEPS=${FINETUNE_STEPS:-1440}
WORLD=${WORLD:-}           # train.py's --world knobs, e.g. hide_run=3,speed=8; empty: the default world
# a row: placement(s) shift-fraction matching [causal] [reachR]; matching is match (Eq. 2), masks (by predicted masks)
# or no-match; reachR: --reach R. "backbone 16" is absent: 1/16 of the tiny model's first backbone map (16 channels)
# is 1 channel.
ROWS=${ROWS:-"queries 0 no-match
pixels 4 no-match
queries 16 match
queries 4 match
queries 4 masks
backbone 4 no-match
pixels 8 no-match
pixels 16 no-match
queries 8 masks
queries 16 masks
backbone 8 no-match
queries,pixels 8 match
pixels 4 no-match causal
queries 128 no-match
queries 128 match
queries 64 no-match
queries 64 match
queries 32 no-match
queries 32 match
queries 16 no-match
queries 8 no-match
queries 8 match
queries 4 no-match"}
for dir in "$OUT" "$RESULTS"; do  # both end up in the kept config.json and eval files: no machine's absolute path
  case "$dir" in /*) echo "synthetic_table.sh: OUT and RESULTS must be relative to the project root: $dir" >&2; exit 2;;
  esac
done
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
mkdir -p "$OUT"
start=$(date +%s)

base() {  # seed
  [ -e "$OUT/seed$1/base/last" ] || python train.py --model "$MODEL" --shift 0 --seed "$1" --max-steps "$BASE_STEPS" \
    ${WORLD:+--world "$WORLD"} --out "$OUT/seed$1/base" --overwrite > "$OUT/seed$1-base.log" 2>&1
  mkdir -p "$RESULTS/seed$1/base" && cp "$OUT/seed$1/base/config.json" "$RESULTS/seed$1/base/"
}
record() {  # seed name: the run's evaluation and config.json, its model pointing at the kept image model's config
  mkdir -p "$RESULTS/seed$1/$2"
  cp "$OUT/seed$1/$2"/eval-*val.json "$RESULTS/seed$1/$2/"
  python -c 'import json, sys; c = json.load(open(sys.argv[1])); c["model"] = sys.argv[3]
open(sys.argv[2], "w").write(json.dumps(c, indent=2) + "\n")' "$OUT/seed$1/$2/config.json" \
    "$RESULTS/seed$1/$2/config.json" "$RESULTS/seed$1/base/last"
}
finetune() {  # seed placement shift matching [causal] [reachR]; train.py only glances at val (4 videos): evaluate.py
  local name="$2-shift$3-$4${5:+-$5}${6:+-$6}" matching extra=(--no-causal) word  # scores all of it
  name=${name//,/+}
  local run="$OUT/seed$1/$name"
  compgen -G "$RESULTS/seed$1/$name/eval-*val.json" > /dev/null && return
  compgen -G "$run/eval-*val.json" > /dev/null && { record "$1" "$name"; return; }
  case "$4" in match) matching=(--match --match-by queries);; masks) matching=(--match --match-by masks);;
               *) matching=(--no-match);; esac
  for word in ${5:-} ${6:-}; do
    case "$word" in causal) extra[0]=--causal;; reach*) extra+=(--reach "${word#reach}");; esac
  done
  python train.py --model "$OUT/seed$1/base/last" --shift-at "$2" --shift "$3" "${matching[@]}" "${extra[@]}" \
    ${WORLD:+--world "$WORLD"} --seed "$1" --max-steps "$FINETUNE_STEPS" --val-videos 4 \
    --out "$run" --overwrite > "$run.log" 2>&1
  python evaluate.py --checkpoint "$run/last" --data synthetic >> "$run.log" 2>&1
  record "$1" "$name"
}
export -f base record finetune
export OUT RESULTS MODEL BASE_STEPS FINETUNE_STEPS WORLD

for seed in $SEEDS; do mkdir -p "$OUT/seed$seed"; echo "$seed"; done | xargs -P "$JOBS" -I{} bash -c 'base {}'
echo "image models done in $(( ($(date +%s) - start) / 60 )) min"
while read -r row; do
  for seed in $SEEDS; do echo "$seed $row"; done
done <<< "$ROWS" | xargs -P "$JOBS" -L1 bash -c 'finetune $0 $1 $2 $3 $4 $5'
python experiments/tables.py "$RESULTS"/seed*/*shift*/ --out "$RESULTS/table.md"
echo "all done in $(( ($(date +%s) - start) / 60 )) min"
