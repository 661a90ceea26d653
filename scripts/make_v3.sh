#!/bin/bash
# LPIPS-Sat v3 (issue 16): pretrain (warm start from v2) -> calibrate with the texture form and real judgments (v1, v2
# scored side by side) -> the same calibration on v2's backbone (lever: what the further pretraining adds) -> real
# checks -> ship + model card. Run from the repository root. The shipped run used DATA=/work/shared/data RUNS=/work/runs/v3.
# Each step resumes: pretraining from its checkpoint (--resume), calibration from its featurised-judgment cache.
set -euo pipefail
RUNS=${RUNS:-runs/v3}
source "$(dirname "$0")/recipe_data.sh"

python -m lpips_sat.train.pretrain "${TRAIN[@]}" \
  --pairs $DATA/naip:naip:moments --pair-fraction 0.375 --pair-min-corr 0.8 \
  --protocol v2 --input-norm per-image --init lpips-sat-s2-rn18-v2 --rank-weight 1.0 --rank-margin 0.5 --rank-form lpips+texture \
  --threads 1 --checkpoint-every 10 --out $RUNS/pretrain --steps 4000 --batch 32 --lr 5e-4 \
  --time-budget 55 --time-schedule --resume

CAL=("${TRAIN[@]}" "${HELD[@]}" --protocol v2 --compare lpips-sat-s2-rn18 --compare lpips-sat-s2-rn18-v2 --n-train 3000 --n-val 800
     --threads 1 --pairs $DATA/naip:naip:moments --n-pairs 1000 --form lpips+texture --name lpips-sat-s2-rn18-v3 --reuse-judgments)
python -m lpips_sat.train.calibrate --backbone $RUNS/pretrain/backbone.safetensors "${CAL[@]}" --out $RUNS/calibrate
# lever: v2's backbone (no further pretraining) with the v3 form and judgments; the same judgments (cache shared, checked)
mkdir -p $RUNS/cal_v2backbone/cache && cp -n $RUNS/calibrate/cache/* $RUNS/cal_v2backbone/cache/
python -m lpips_sat.train.calibrate --backbone weights/lpips-sat-s2-rn18-v2.safetensors "${CAL[@]}" --out $RUNS/cal_v2backbone

# real checks: v1, v2, v3 and the pixel baselines on the same patches
python -m lpips_sat.train.realcheck --weights lpips-sat-s2-rn18 --weights lpips-sat-s2-rn18-v2 \
  --weights $RUNS/calibrate/lpips-sat-s2-rn18-v3.fp32.safetensors --pairs $DATA/naip:naip:moments "${HELD[@]}" \
  --threads 2 --max-pairs 400 --n-gain 256 --out $RUNS/realcheck.json

# the worked domain-gap example with each weights (v3 from its calibrate file, registered by the ship step below: run it after)
for w in lpips-sat-s2-rn18 lpips-sat-s2-rn18-v2; do python scripts/gap_example.py --out $RUNS/gap_example_$w --weights $w; done

python scripts/ship_weights.py $RUNS/pretrain $RUNS/calibrate --name lpips-sat-s2-rn18-v3 --realcheck $RUNS/realcheck.json \
  --lever "v2 backbone, v3 form and judgments=$RUNS/cal_v2backbone"
python scripts/gap_example.py --out $RUNS/gap_example_lpips-sat-s2-rn18-v3 --weights lpips-sat-s2-rn18-v3
python scripts/ship_weights.py $RUNS/pretrain $RUNS/calibrate --name lpips-sat-s2-rn18-v3 --realcheck $RUNS/realcheck.json \
  --lever "v2 backbone, v3 form and judgments=$RUNS/cal_v2backbone" \
  --gap-example "v1=$RUNS/gap_example_lpips-sat-s2-rn18" --gap-example "v2=$RUNS/gap_example_lpips-sat-s2-rn18-v2" \
  --gap-example "v3=$RUNS/gap_example_lpips-sat-s2-rn18-v3"
