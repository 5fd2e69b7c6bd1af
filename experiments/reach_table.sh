#!/usr/bin/env bash
# Temporal reach (docs/reach.md): how far does each configuration carry a class cue that is missing for several
# frames in a row? The protocol of experiments/synthetic_table.sh (per seed an image model, 960 steps frame by frame,
# then every row fine-tuned from it for 1440 steps; last checkpoints evaluated on the fixed validation world, whole
# videos), in four synthetic worlds, each with image models of its own:
#   hide_run=3 (cues hidden in runs of 3 frames), hide_run=3,speed=8 (and blobs 8x faster), hide_run=2, and the
#   default world (runs of 1), in this order; about the same number of hidden frames in each.
# evaluate.py scores hidden-cue accuracy by distance: d1 at the ends of a run, d2 in the middle of a run of 3, d>=3
# only where a run touches a video's first or last frame. Resumable as synthetic_table.sh: kept results are skipped.
#
#   bash experiments/reach_table.sh          # SEEDS="0 1 2" JOBS=2; OUT=runs/reach; RESULTS=experiments/reach
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/reach}
RESULTS=${RESULTS:-experiments/reach}
WORLDS=${WORLDS:-"hide_run=3 hide_run=3,speed=8 hide_run=2 hide_run=1"}
ROWS=${ROWS:-"queries 0 no-match
pixels 4 no-match reach3
backbone 4 no-match reach2
pixels 4 no-match reach2
pixels 4 no-match
backbone 8 no-match
backbone,pixels 8 no-match
queries 4 masks
pixels 4 no-match causal reach3"}
for world in $WORLDS; do
  name=${world//=/}
  name=${name//,/-}  # hide_run3-speed8
  echo "== world $world"
  WORLD=$world OUT="$OUT/$name" RESULTS="$RESULTS/$name" ROWS="$ROWS" bash experiments/synthetic_table.sh
done
