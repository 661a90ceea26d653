#!/bin/bash
# LPIPS-Sat v4 (issue 16): pretrain (warm start from v3; protocol v4 adds sparse detector striping; SR-scale ranking
# triplets keep blur's magnitude) -> calibrate on v3's judgments plus SR-scale judgments, heads chosen by a CV that
# also leaves out the real-pair and SR-scale judgments (v1, v2, v3 scored side by side) -> the same calibration on v3's
# backbone (lever: what the v4 pretraining adds) -> real checks -> worked example -> ship + model card.
# Run from the repository root. The shipped run used DATA=/work/shared/data RUNS=/work/runs/v4 (its lever run read v3's
# backbone from the v3 run folder; weights/lpips-sat-s2-rn18-v3.safetensors holds the same backbone tensors).
# Each step resumes: pretraining from its checkpoint (--resume), calibration from its featurised-judgment cache.
set -euo pipefail
RUNS=${RUNS:-runs/v4}
source "$(dirname "$0")/recipe_data.sh"

python -m lpips_sat.train.pretrain "${TRAIN[@]}" \
  --pairs $DATA/naip:naip:moments --pair-fraction 0.375 --pair-min-corr 0.8 \
  --protocol v4 --input-norm per-image --init lpips-sat-s2-rn18-v3 --rank-weight 1.0 --rank-margin 0.5 --rank-form lpips+texture \
  --sr-triplets 8 --sr-margin 0.15 \
  --threads 1 --checkpoint-every 10 --out $RUNS/pretrain --steps 4000 --batch 32 --lr 5e-4 \
  --time-budget 50 --time-schedule --resume

CAL=("${TRAIN[@]}" "${HELD[@]}" --protocol v2 --compare lpips-sat-s2-rn18 --compare lpips-sat-s2-rn18-v2 --compare lpips-sat-s2-rn18-v3
     --n-train 3000 --n-val 800 --threads 1 --pairs $DATA/naip:naip:moments --n-pairs 1000 --form lpips+texture
     --n-sr 600 --n-sr-val 300 --cv-groups all --name lpips-sat-s2-rn18-v4 --reuse-judgments)
# lever first: v3's backbone with the v4 calibration recipe (its cache then serves the main run: same judgments, checked)
python -m lpips_sat.train.calibrate --backbone weights/lpips-sat-s2-rn18-v3.safetensors "${CAL[@]}" --out $RUNS/cal_v3backbone
mkdir -p $RUNS/calibrate/cache && cp -n $RUNS/cal_v3backbone/cache/* $RUNS/calibrate/cache/
python -m lpips_sat.train.calibrate --backbone $RUNS/pretrain/backbone.safetensors "${CAL[@]}" --out $RUNS/calibrate

# real checks: v1, v2, v3, v4 and the pixel baselines on the same patches
python -m lpips_sat.train.realcheck --weights lpips-sat-s2-rn18 --weights lpips-sat-s2-rn18-v2 --weights lpips-sat-s2-rn18-v3 \
  --weights $RUNS/calibrate/lpips-sat-s2-rn18-v4.fp32.safetensors --pairs $DATA/naip:naip:moments "${HELD[@]}" \
  --threads 2 --max-pairs 400 --n-gain 256 --out $RUNS/realcheck.json

LEVER=(--lever "v3 backbone, v4 calibration=$RUNS/cal_v3backbone")
python scripts/ship_weights.py $RUNS/pretrain $RUNS/calibrate --name lpips-sat-s2-rn18-v4 --realcheck $RUNS/realcheck.json "${LEVER[@]}"
for w in lpips-sat-s2-rn18 lpips-sat-s2-rn18-v3 lpips-sat-s2-rn18-v4; do python scripts/gap_example.py --out $RUNS/gap_example_$w --weights $w; done
python scripts/ship_weights.py $RUNS/pretrain $RUNS/calibrate --name lpips-sat-s2-rn18-v4 --realcheck $RUNS/realcheck.json "${LEVER[@]}" \
  --gap-example "v1=$RUNS/gap_example_lpips-sat-s2-rn18" --gap-example "v3=$RUNS/gap_example_lpips-sat-s2-rn18-v3" \
  --gap-example "v4=$RUNS/gap_example_lpips-sat-s2-rn18-v4"
