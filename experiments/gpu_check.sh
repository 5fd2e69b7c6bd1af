#!/usr/bin/env bash
# The GPU check, experiments/gpu_check.py (docs/gpu-check.md): about 8 minutes on one GPU, offline. It writes
# DIR/gpu_check.json (rewritten after every figure) and DIR/logs/, and prints a line per part.
#
#     experiments/gpu_check.sh [DIR]               # DIR: default $OUT if set, else runs/gpu_check
#     experiments/gpu_check.sh --cpu [DIR]         # every part at tiny sizes on the CPU, to check the script itself
#     experiments/gpu_check.sh --parts 1,3 [DIR]   # some parts only (numbers or names)
#
# Exit status 0 when every part is ok, 1 otherwise, 2 for a bad flag or when torch sees no GPU (without --cpu).
set -uo pipefail
cd "$(dirname "$0")/.."
flags=()
while [ $# -gt 0 ]; do
    case "$1" in
        --parts|--fail) flags+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
        -*) flags+=("$1"); shift ;;
        *) flags+=(--out "$1"); shift ;;
    esac
done
exec "${PYTHON:-python3}" experiments/gpu_check.py ${flags[@]+"${flags[@]}"}
