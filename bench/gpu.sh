#!/usr/bin/env bash
# The GPU benchmark run recorded in bench/README.md: one script, run once on a CUDA machine from the repo root.
#   OUT=some/folder bash bench/gpu.sh
#   STACK_ONLY=1 OUT=some/folder bash bench/gpu.sh   # only the data and the stacked sweep (~6 min), for a short lease
# Needs torch (any CUDA build), numpy, safetensors, tqdm; uses src/ directly (no install).
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1
OUT=${OUT:-bench/.out}
DATA=bench/.data/synth
mkdir -p "$OUT"
run() { echo "### $*"; "$@"; echo "### exit $?"; }
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
[ -z "${STACK_ONLY:-}" ] && run timeout 90 python bench/gpu_checks.py graphs
run timeout 120 python -c "import sys; sys.path.insert(0, 'bench'); from train import prepare_data; from pathlib import Path; prepare_data(Path('$DATA'), 10000, 0)"
if [ -z "${STACK_ONLY:-}" ]; then
run timeout 150 python bench/train.py --device cuda --videos 10000 --epochs 2 --batch-sizes 16,64 --models mgn,han
run timeout 60 python bench/train.py --device cuda --videos 10000 --epochs 2 --batch-sizes 16 --models mgn,han --cuda-graphs
run timeout 60 python bench/inference.py --device cuda --precision fp32
run timeout 40 python bench/inference.py --device cuda --precision bf16
echo "### full recipe: MGN, 40 epochs on 10,000 videos, validation each epoch, CUDA graphs, bf16"
start=$(date +%s.%N)
timeout 200 python -m avvp train --model mgn --features "$DATA/packs" --annotations "$DATA" --out "$OUT/recipe" \
  --device cuda --cuda-graphs 2>&1 | grep -v "it/s\]\|step/s\]\|video/s\]" | tail -8
echo "### full recipe wall seconds: $(python -c "import time; print(round(time.time() - $start, 1))")"
run timeout 40 python bench/gpu_checks.py precision "$OUT/recipe" "$DATA"
fi
echo "### stacked sweep: the seeds of a row as one stacked model vs one run at a time"
run timeout 300 python bench/sweep.py --device cuda --data "$DATA" --train 10000 --val 649 --test 1200 \
  --max-train-videos 2000 --dim 0 --configs mgn-3-3-6 --seeds 1,2,3,4 --epochs 3 --arms workers1,stack \
  --out "$OUT/sweeps"
} 2>&1 | tee "$OUT/gpu_log.txt"
cp "$OUT"/recipe/metrics.jsonl "$OUT"/recipe_metrics.jsonl 2>/dev/null
rm -rf "$OUT"/recipe
