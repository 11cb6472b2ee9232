#!/usr/bin/env bash
# bf16 against fp32 at the demo's scale (docs/training.md, "bf16 against fp32 on LLP-Synth"): HAN and MGN at their
# default configurations, the demo's recipe (3,000 LLP-Synth videos, at most 13 epochs, StepLR x0.1 after 11,
# early stopping 3 from epoch 4), training seeds 1 and 2, two runs at a time with one thread each.
#   bash bench/bf16_vs_fp32.sh [WORK_DIR]       (default: bench/.data/bf16; about an hour on a quiet 2-core CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-bench/.data/bf16}
AVVP=${AVVP:-.venv/bin/avvp}
if [ ! -d "$WORK/data/packs" ]; then
  "$AVVP" synth --out "$WORK/data" --seed 0
  "$AVVP" pack --features "$WORK/data/feats" --annotations "$WORK/data" --out "$WORK/data/packs"
fi
RECIPE=(--features "$WORK/data/packs" --annotations "$WORK/data" --epochs 13 --lr-step 11 --patience 3 --min-epochs 4
        --batch-size 16 --seeds 1,2 --device cpu --workers 2)
for precision in fp32 bf16; do
  "$AVVP" sweep models --configs han,mgn --out "$WORK/$precision" --precision "$precision" "${RECIPE[@]}"
done
