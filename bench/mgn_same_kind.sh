#!/usr/bin/env bash
# Table 2's lead, tested (docs/experiments.md): MGN (3/3/6) with a Hard-Softmax CUG and a Softmax MCG, trained with
# Table 1's recipe twice per seed: as the authors' code builds it (`mgn`: the audio CUG groups the audio segments
# with the visual ones through a Softmax assignment, the kind opposite to its Hard-Softmax class grouping) and as
# the bench variant `mgn-same-kind` (bench/mgn_variants.py: that grouping Hard-Softmax too). Same seed, same initial
# weights; the two runs of a seed train at once, one thread each.
#
#   bash bench/mgn_same_kind.sh DATA OUT [SEEDS]      # DATA: `avvp synth --out DATA --seed 0` plus DATA/packs
#
# Run folders: OUT/mgn-hard-soft-seedS and OUT/mgn-same-kind-hard-soft-seedS (config.json, metrics.jsonl,
# test_scores.json, best.safetensors); logs beside them. A finished run folder is left as it is.
set -euo pipefail
if [[ $# -lt 2 ]]; then
    echo "usage: bash bench/mgn_same_kind.sh DATA OUT [SEEDS (default 1,2,3)]" >&2
    exit 2
fi
DATA=$1 OUT=$2 SEEDS=${3:-1,2,3}
HERE=$(cd "$(dirname "$0")" && pwd)
AVVP=${AVVP:-$HERE/../.venv/bin/avvp}
mkdir -p "$OUT"
RECIPE=(--features "$DATA/packs" --annotations "$DATA" --epochs 20 --batch-size 16 --lr 0.0003 --lr-step 12
    --max-train-videos 3000 --patience 4 --min-epochs 4 --device cpu
    --model-arg depth_audio=3 --model-arg depth_visual=3 --model-arg depth_av=6
    --model-arg unimodal_assign=hard --model-arg crossmodal_assign=soft)

train() {  # MODEL NAME SEED
    local dir=$OUT/$2-seed$3
    if [[ -f $dir/test_scores.json ]]; then
        echo "$dir: finished, kept"
        return
    fi
    local resume=()
    [[ -f $dir/last.pt ]] && resume=(--resume)
    OMP_NUM_THREADS=1 PYTHONPATH=$HERE${PYTHONPATH:+:$PYTHONPATH} AVVP_PLUGINS=mgn_variants \
        "$AVVP" train --model "$1" "${RECIPE[@]}" --seed "$3" --out "$dir" "${resume[@]}" > "$dir.log" 2>&1
    echo "$dir: $(tail -n 1 "$dir.log")"
}

for seed in ${SEEDS//,/ }; do
    train mgn mgn-hard-soft "$seed" &
    train mgn-same-kind mgn-same-kind-hard-soft "$seed" &
    wait
done
