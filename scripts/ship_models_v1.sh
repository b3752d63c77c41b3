#!/usr/bin/env bash
# Calibrate on the validation cases (temperature, fused detection, post-processing), write models/ (fp16 weights),
# evaluate, and generate the model cards.
# The shipping of the models now in models/ (recipe v1, scripts/train_models_v1.sh); kept for the record.
# Usage: bash scripts/ship_models_v1.sh [DATA_DIR] [RUNS_DIR]
set -euo pipefail
DATA=${1:-../shared/data/lgg/kaggle_3m}
RUNS=${2:-runs}
PY=${PYTHON:-python}
SPLIT=splits/lgg_dev_seed42.json

$PY -m brainseg.calibrate --data "$DATA" --split $SPLIT --segmenter "$RUNS/segmenter_s3" --classifier "$RUNS/classifier" \
    --out-segmenter models/segmenter --out-classifier models/classifier --fp16 | tee models/calibration.log
$PY -m brainseg.evaluate "$DATA" --split $SPLIT --segmenter models/segmenter --classifier models/classifier \
    --json models/segmenter/eval_val.json
cp models/segmenter/eval_val.json models/classifier/eval_val.json
for kind in segmenter classifier; do
    $PY -m brainseg.hub card models/$kind --train-script scripts/train_models.sh
done
