#!/usr/bin/env bash
# The GPU check: about 5 minutes on one GPU, offline (synthetic data, random weights). It runs
#   1. the CUDA tests (pytest -k cuda),
#   2. a short bf16 (--amp) training on the synthetic set with validation, then evaluate.py on its best checkpoint,
#   3. the same training under torchrun with one process, which must use NCCL,
#   4. bench.py at its full sizes on CUDA (16 frames at 480x480, bf16, TF32),
# writes the figures to DIR (summary.md, bench.json, bench.md, train_log.jsonl, eval.json, torchrun_log.jsonl,
# cuda_tests.txt) and prints the summary. Any failing step stops it with a non-zero status.
#
#     experiments/gpu_check.sh [DIR]          # DIR: default $OUT if set, else runs/gpu_check
#     experiments/gpu_check.sh --cpu [DIR]    # the same steps on the CPU at small sizes, to check the script itself
set -euo pipefail
cd "$(dirname "$0")/.."
cpu=0
if [ "${1:-}" = "--cpu" ]; then cpu=1; shift; fi
dir=${1:-${OUT:-runs/gpu_check}}
mkdir -p "$dir"
work=$(mktemp -d)  # checkpoints and logs that are not figures
trap 'rm -rf "$work"' EXIT
trap 'echo "gpu_check: FAILED at: $BASH_COMMAND" >&2' ERR
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
step() { echo; echo "== gpu_check $(date +%T): $*"; }

if [ $cpu = 1 ]; then
    device=cpu; amp=""; backend=gloo
    bench_flags=(--device cpu --threads 1 --frames 2 --size 64 --min-blocks 2 --budget 0 --mem-frames 2 6 --mem-size 64
                 --clips 2)
else
    device=cuda; amp=--amp; backend=nccl
    bench_flags=(--device cuda)
    python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible to torch'"
fi
train_flags=(--device $device $amp --clip-len 8 --batch-size 2 --log-every 5 --val-videos 4 --overwrite)

step "1/4 CUDA tests"
python3 -m pytest -q -rs tests -k cuda 2>&1 | tee "$dir/cuda_tests.txt"

step "2/4 synthetic training ($device ${amp:-fp32}), validation every 20 steps, then evaluate.py"
python3 train.py "${train_flags[@]}" --max-steps 40 --eval-every 20 --out "$work/train" > "$work/train.out" 2>&1 \
    || { tail -20 "$work/train.out"; false; }
cp "$work/train/log.jsonl" "$dir/train_log.jsonl"
python3 evaluate.py --checkpoint "$work/train/best" --data synthetic --device $device $amp --max-videos 4
cp "$work/train/eval-synthetic-val-first4.json" "$dir/eval.json"

step "3/4 torchrun, 1 process ($backend)"
python3 -m torch.distributed.run --standalone --nproc_per_node 1 train.py "${train_flags[@]}" --max-steps 6 \
    --eval-every 3 --out "$work/torchrun" > "$work/torchrun.out" 2>&1 || { tail -20 "$work/torchrun.out"; false; }
grep -q "\"backend\": \"$backend\"" "$work/torchrun.out" || { echo "torchrun did not use $backend" >&2; false; }
cp "$work/torchrun/log.jsonl" "$dir/torchrun_log.jsonl"

step "4/4 bench.py ${bench_flags[*]}"
python3 bench.py "${bench_flags[@]}" --json > "$dir/bench.json"

python3 - "$dir" "$device" <<'EOF'
"""Check the figures and write DIR/bench.md and DIR/summary.md."""
import json
import sys
from pathlib import Path

import torch

import bench

out, device = Path(sys.argv[1]), sys.argv[2]
rep = json.loads((out / "bench.json").read_text())
(out / "bench.md").write_text(bench.markdown(rep) + "\n")
logs = {name: [json.loads(line) for line in (out / f"{name}_log.jsonl").read_text().splitlines()]
        for name in ("train", "torchrun")}
evaluation = json.loads((out / "eval.json").read_text())["results"]
for name, log in logs.items():
    losses = [line["loss"] for line in log if "loss" in line]
    assert losses and all(loss == loss and abs(loss) < float("inf") for loss in losses), f"{name}: bad losses"
    assert any("val" in line for line in log), f"{name}: no validation"
if device == "cuda":
    assert all(m["forward_peak_mib"] and m["train_step_peak_mib"] for m in rep["models"]), "no CUDA peak memory"
tests = (out / "cuda_tests.txt").read_text().strip().splitlines()[-1]
card = torch.cuda.get_device_name() if device == "cuda" else "none (--cpu)"
train = logs["train"]
lines = [f"# GPU check: {card}", "", f"torch {torch.__version__}; CUDA tests: {tests}", "",
         f"- synthetic training, 40 steps: loss {train[0]['loss']:.3f} (step {train[0]['step']}) -> "
         f"{[x for x in train if 'loss' in x][-1]['loss']:.3f}, "
         f"{[x for x in train if 'loss' in x][-1]['frames_per_s']:.0f} frames/s; validation mIoU "
         f"{100 * [x for x in train if 'val' in x][-1]['val']['miou']:.2f}",
         f"- evaluate.py on its best checkpoint, first 4 videos: mIoU {100 * evaluation['miou']:.2f}",
         f"- torchrun, 1 process: {len([x for x in logs['torchrun'] if 'loss' in x])} logged steps, validated", "",
         bench.markdown(rep)]
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
echo
echo "gpu_check: passed; figures in $dir"
