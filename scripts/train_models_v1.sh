#!/usr/bin/env bash
# The commands that produced the shipped models in models/ (CPU, 2 cores; see README "Training").
# Usage: bash scripts/train_models_v1.sh [DATA_DIR] [RUNS_DIR]   (make train runs the next recipe, train_models.sh)
set -euo pipefail
DATA=${1:-../shared/data/lgg/kaggle_3m}
RUNS=${2:-runs}
PY=${PYTHON:-python}
SPLIT=splits/lgg_dev_seed42.json   # patient-level, stratified by institution, seed 42: 71 train / 17 val cases

# Segmenter, stage 1: resnet18 ResUNet at 128x128 (4x cheaper per step), 20% empty slices per epoch.
$PY train.py segmenter --data "$DATA" --split $SPLIT --out "$RUNS/segmenter_128" \
    --encoder resnet18 --image-size 128 --epochs 16 --batch-size 16 --lr 1e-3 --empty-fraction 0.2 --workers 1
# Segmenter, stage 2: the same weights fine-tuned at the full 256x256 resolution.
$PY train.py segmenter --data "$DATA" --split $SPLIT --out "$RUNS/segmenter" --init-from "$RUNS/segmenter_128" \
    --encoder resnet18 --image-size 256 --epochs 5 --batch-size 16 --lr 3e-4 --empty-fraction 0.2 --workers 1
# Segmenter, stage 3 (session 2): 9 more epochs at 256x256 from stage 2, lower peak rate; the best epoch is shipped.
$PY train.py segmenter --data "$DATA" --split $SPLIT --out "$RUNS/segmenter_s3" --init-from "$RUNS/segmenter" \
    --encoder resnet18 --image-size 256 --epochs 9 --batch-size 16 --lr 2e-4 --empty-fraction 0.2 --workers 1
# Classifier: resnet18 at 128x128 from scratch, all slices, class-weighted BCE.
$PY train.py classifier --data "$DATA" --split $SPLIT --out "$RUNS/classifier" \
    --encoder resnet18 --image-size 128 --epochs 10 --batch-size 32 --lr 1e-3 --workers 1
