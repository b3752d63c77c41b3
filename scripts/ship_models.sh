#!/usr/bin/env bash
# Ship the models of scripts/train_models.sh: choose every rule on the out-of-fold predictions of the fold runs
# (temperature, fused detection, thresholds, post-processing, TTA, the 3-D case rule), write them into the
# all-case models, store fp16 weights in models/, record the rules with their held-out figures (rules.json)
# and those figures as eval_oof.json, and regenerate the cards (which records the sha256 of each model.safetensors
# in its metrics.json: every load checks the weights against it). The golden figures (tests/golden.json) stay:
# rerun python tests/test_golden.py after shipping, and check what moved.
# Usage: bash scripts/ship_models.sh [DATA_DIR] [RUNS_DIR] [MODELS_DIR]   (MODELS_DIR: models)
#        CV=DIR bash scripts/ship_models.sh ...      (the fold runs to choose on; default RUNS_DIR/cv, every fold finished)
#        RULES=FILE bash scripts/ship_models.sh ...  (choose nothing: apply a rules.json recorded by an earlier
#                                                    choice, when its fold runs are gone)
set -euo pipefail
DATA=${1:-../shared/data/lgg/kaggle_3m}
RUNS=${2:-runs}
PY=${PYTHON:-python}
OUT=${3:-models}
CV=${CV:-$RUNS/cv}
mkdir -p "$OUT"

if [[ -n "${RULES:-}" ]]; then
    CHOOSE=(--rules "$RULES")
else
    CHOOSE=(--data "$DATA" --cv "$CV")
fi
$PY -m brainseg.calibrate "${CHOOSE[@]}" --segmenter "$RUNS/segmenter" --classifier "$RUNS/classifier" \
    --out "$OUT" --fp16 --json "$OUT/segmenter/eval_oof.json" | tee "$OUT/calibration.log"
# The all-case models have no held-out cases of their own: their figures are the recipe's out-of-fold ones.
rm -f "$OUT/segmenter/eval_val.json" "$OUT/classifier/eval_val.json"
cp "$OUT/segmenter/eval_oof.json" "$OUT/classifier/eval_oof.json"
for kind in segmenter classifier; do
    $PY -m brainseg.hub card "$OUT/$kind" --train-script scripts/train_models.sh
done
