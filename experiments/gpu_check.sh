#!/usr/bin/env bash
# The GPU check: one command, about 8 minutes on one GPU, offline (synthetic data, random weights). Its parts, each in
# its own process under its own time budget (one that fails or runs out of time is recorded, and the next one runs):
#   1. host waits per training step (set_sync_debug_mode), HF's loss matcher against matcher.py's, 4 and 8 frames
#   2. matching's share of a Swin-T training step (torch.profiler): qshift.match_queries and the loss's matcher
#   3. streamed against whole-clip maps in fp32, TF32 and bf16, and the float32 islands under TF32
#   4. test_qshift.py's key equivalences with the model on the GPU
#   5. the CUDA tests (pytest -k cuda)
#   6. predict.py on a synthetic video on the GPU
#   7. train.py --amp bf16, and --amp fp16 stopped at step 10 and resumed to 20
#   8. bench.py --json, its time budgets scaled to fit
# It writes DIR/gpu_check.json (every figure; see docs/gpu-check.md), DIR/bench.json and DIR/logs/, and prints a
# summary; the exit status is 0 when every part is ok, 1 otherwise (2: no GPU visible).
#
#     experiments/gpu_check.sh [DIR]                 # DIR: default $OUT if set, else runs/gpu_check
#     experiments/gpu_check.sh --cpu [DIR]           # every part at tiny sizes on the CPU, to check the script itself
#     experiments/gpu_check.sh --parts 1,3 [DIR]     # some parts only (numbers or names); --total S: another budget
set -uo pipefail
cd "$(dirname "$0")/.."
dir=${OUT:-runs/gpu_check}
flags=()
while [ $# -gt 0 ]; do
    case "$1" in
        --parts|--total) flags+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
        -*) flags+=("$1"); shift ;;
        *) dir=$1; shift ;;
    esac
done
exec "${PYTHON:-python3}" experiments/gpu_check.py --out "$dir" ${flags[@]+"${flags[@]}"}
