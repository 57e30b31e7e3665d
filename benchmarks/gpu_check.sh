#!/usr/bin/env bash
# The checks that need a GPU, prepared to run at once whenever a CUDA machine is lent (at most about 10 minutes on one
# H100): the tests marked `cuda`, the training-step benchmark (ViT-B/16: AdaptFormer-64 vs full fine-tuning and the
# other methods, bf16 autocast, batch 64), the segmentation training step (ViT-B/16 + UperNet at 512 x 512, batch 16:
# AdaptFormer-64 vs full fine-tuning, its GEMM floor, sliding-window evaluation), the multi-task forward at N = 1, 8,
# 64 tasks, and the serving load test.
# Writes OUT/gpu_check.json and OUT/gpu_check.md (one table), plus each step's own JSON and log.
#
#   bash benchmarks/gpu_check.sh [OUT]           # default OUT: reports/gpu_check
#   bash benchmarks/gpu_check.sh --quick OUT     # the same steps with tiny models on whatever device there is (CPU
#                                                # here): checks the script itself; its numbers mean nothing
#
# A step that fails or runs past its time limit is recorded as such in the report, and the others still run.
set -uo pipefail
cd "$(dirname "$0")/.."
quick=()
expect=(--expect-cuda)
if [ "${1:-}" = "--quick" ]; then quick=(--quick); expect=(); shift; fi
out=${1:-reports/gpu_check}
mkdir -p "$out"
py=${PYTHON:-.venv/bin/python}
[ -x "$py" ] || py=python3

step() {  # step NAME SECONDS COMMAND...: run it with a time limit, keep its log and exit status
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  echo "{\"exit\": $?, \"seconds\": $((SECONDS - start))}" >"$out/$name.status.json"
}

if [ ${#quick[@]} -eq 0 ]; then
  device=(--device cuda)
  step cuda_tests 60 "$py" -m pytest -q -m cuda -p no:cacheprovider --junitxml "$out/cuda_tests.xml" tests/test_cuda.py
  step train_step 150 "$py" benchmarks/bench.py --only image --precisions bf16 --batch 64 "${device[@]}" \
    --json "$out/train_step.json"
  step segmentation_step 120 "$py" benchmarks/segmentation.py --batch 16 --rounds 5 --precision bf16 "${device[@]}" \
    --json "$out/segmentation_step.json"
  step multitask 210 "$py" benchmarks/multitask.py --tasks 1,8,64 --batch 64 --precision bf16 "${device[@]}" \
    --json "$out/multitask.json"
  step serve_load 60 "$py" benchmarks/serve_load.py --backbone vit_base_patch16_224 --precision bf16 \
    --json "$out/serve_load.json"
else
  step cuda_tests 120 "$py" -m pytest -q -m cuda -p no:cacheprovider --junitxml "$out/cuda_tests.xml" tests/test_cuda.py
  step train_step 120 "$py" benchmarks/bench.py --quick --only image --precisions bf16 --json "$out/train_step.json"
  step segmentation_step 120 "$py" benchmarks/segmentation.py --quick --json "$out/segmentation_step.json"
  step multitask 120 "$py" benchmarks/multitask.py --quick --json "$out/multitask.json"
  step serve_load 120 "$py" benchmarks/serve_load.py --quick --json "$out/serve_load.json"
fi
"$py" benchmarks/gpu_report.py "${expect[@]}" "$out"
