#!/bin/bash
# LPIPS-Sat v2 (issue 16): pretrain -> calibrate (v1 scored side by side) -> real checks -> ship + model card.
# Run from the repository root. The shipped run used DATA=/work/shared/data RUNS=/work/runs/metric2 (same files).
# Each step resumes: pretraining from its checkpoint (--resume), calibration from its featurised-judgment cache.
# (Re-running the last step now writes the v2 card to docs/model_card.md; the card as shipped is docs/model_card_v2.md.)
set -euo pipefail
RUNS=${RUNS:-runs/v2}
source "$(dirname "$0")/recipe_data.sh"

python -m lpips_sat.train.pretrain "${TRAIN[@]}" \
  --pairs $DATA/naip:naip:moments --pair-fraction 0.25 --pair-min-corr 0.8 \
  --protocol v2 --input-norm per-image --init lpips-sat-s2-rn18 --rank-weight 1.0 --rank-margin 0.5 \
  --threads 1 --checkpoint-every 10 --out $RUNS/pretrain --steps 4000 --batch 32 --lr 1e-3 \
  --time-budget 75 --time-schedule --resume

CAL=("${TRAIN[@]}" "${HELD[@]}" --protocol v2 --compare lpips-sat-s2-rn18 --n-train 800 --n-val 160 --threads 2
     --name lpips-sat-s2-rn18-v2 --reuse-judgments)
python -m lpips_sat.train.calibrate --backbone $RUNS/pretrain/backbone.safetensors "${CAL[@]}" --out $RUNS/calibrate

# real checks: v1 and the pixel baselines, then v2 merged into the same JSON (same patches)
RC=(--pairs $DATA/naip:naip:moments "${HELD[@]}" --threads 1 --max-pairs 150 --n-gain 128 --out $RUNS/realcheck.json)
python -m lpips_sat.train.realcheck --weights lpips-sat-s2-rn18 "${RC[@]}"
python -m lpips_sat.train.realcheck --weights $RUNS/calibrate/lpips-sat-s2-rn18-v2.fp32.safetensors --no-baselines "${RC[@]}"

LEVERS=()
# lever (optional, LEVER=1): v1's backbone with the v2 input standardisation and no further training
if [ "${LEVER:-0}" = 1 ]; then  # not run for the shipped card (CPU time)
  python -m lpips_sat.train.pretrain "${TRAIN[@]}" --protocol v2 --input-norm per-image --init lpips-sat-s2-rn18 --out $RUNS/step0 --steps 0
  mkdir -p $RUNS/calibrate_step0/cache && cp -n $RUNS/calibrate/cache/* $RUNS/calibrate_step0/cache/ || true  # shared judgments
  python -m lpips_sat.train.calibrate --backbone $RUNS/step0/backbone.safetensors "${CAL[@]}" --out $RUNS/calibrate_step0
  LEVERS=(--lever "v1 backbone + per-image input=$RUNS/calibrate_step0")
fi

python scripts/ship_weights.py $RUNS/pretrain $RUNS/calibrate --name lpips-sat-s2-rn18-v2 --realcheck $RUNS/realcheck.json "${LEVERS[@]}"
