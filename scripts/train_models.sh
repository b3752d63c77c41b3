#!/usr/bin/env bash
# The commands that produce the shipped models, as one resumable queue (CPU: 2 cores; docs/training.md).
# The recipe is data: configs/segmenter.json and configs/classifier.json (the typed configs of brainseg.config).
# Every stage checkpoints each epoch and is started with --resume auto: rerunning this script after an
# interruption continues the unfinished stage and skips finished ones, so a queue may span sessions.
# Usage: bash scripts/train_models.sh [DATA_DIR] [RUNS_DIR]     (or: make train; run it under nohup)
#        PRECISION=fp32 bash scripts/train_models.sh ...        (fp32 outright; the recipe's auto trains in bf16 where
#                                                               the CPU has it natively and a timed step is faster)
# Cost of the shipped v4 models (2 cores, bf16 autocast, an Intel Xeon VM with amx_bf16, 2026-12-06): a fold
# 21-31 min (segmenter) + 4-8 min (classifier), the all-88 pair 27 + 6.5 min. Then: bash scripts/ship_models.sh
set -euo pipefail
DATA=${1:-../shared/data/lgg/kaggle_3m}
RUNS=${2:-runs}
PY=${PYTHON:-python}
PREC=(${PRECISION:+--precision "$PRECISION"})
FOLDS=splits/lgg_dev_4fold_seed42.json   # 4 folds of 22 patients, stratified by institution (brainseg.data.make_folds)

segmenter_fold() {
    $PY train.py configs/segmenter.json --data "$DATA" --folds $FOLDS --fold "$1" --out "$RUNS/cv/segmenter_$1" \
        --resume auto "${PREC[@]}"
}
classifier_fold() {  # the classifier of fold f starts from the encoder of segmenter f (the same training patients)
    $PY train.py configs/classifier.json --data "$DATA" --folds $FOLDS --fold "$1" --out "$RUNS/cv/classifier_$1" \
        --init-encoder-from "$RUNS/cv/segmenter_$1" --resume auto "${PREC[@]}"
}

# 1. Cross-validation by patient: the recipe's figures with their spread over folds, and the out-of-fold
#    predictions on which every threshold, temperature and fusion weight is fitted (brainseg.calibrate --cv).
for f in 0 1; do segmenter_fold $f; classifier_fold $f; done
# 2. The shipped models: the same recipe on all 88 cases (no validation cases: nothing is chosen on them).
$PY train.py configs/segmenter.json --data "$DATA" --val-fraction 0 --out "$RUNS/segmenter" --resume auto "${PREC[@]}"
$PY train.py configs/classifier.json --data "$DATA" --val-fraction 0 --out "$RUNS/classifier" \
    --init-encoder-from "$RUNS/segmenter" --resume auto "${PREC[@]}"
# 3. The rest of the cross-validation.
for f in 2 3; do segmenter_fold $f; classifier_fold $f; done
