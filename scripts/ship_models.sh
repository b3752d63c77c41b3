#!/usr/bin/env bash
# Ship the models of scripts/train_models.sh: choose every rule on the out-of-fold predictions of the 4 fold runs
# (temperature, fused detection, thresholds, post-processing, TTA), write them into the all-case models, store
# fp16 weights in models/, record the held-out figures as eval_oof.json, and regenerate the cards.
# Usage: bash scripts/ship_models.sh [DATA_DIR] [RUNS_DIR]
set -euo pipefail
DATA=${1:-../shared/data/lgg/kaggle_3m}
RUNS=${2:-runs}
PY=${PYTHON:-python}

$PY -m brainseg.calibrate --data "$DATA" --cv "$RUNS/cv" --segmenter "$RUNS/segmenter" --classifier "$RUNS/classifier" \
    --out-segmenter models/segmenter --out-classifier models/classifier --fp16 \
    --eval-json models/segmenter/eval_oof.json | tee models/calibration.log
# The all-case models have no held-out cases of their own: their figures are the recipe's out-of-fold ones.
rm -f models/segmenter/eval_val.json models/classifier/eval_val.json
cp models/segmenter/eval_oof.json models/classifier/eval_oof.json
for kind in segmenter classifier; do
    $PY -m brainseg.hub card models/$kind --train-script scripts/train_models.sh
done
