#!/usr/bin/env bash
# The commands that produce the shipped models, as one resumable queue (CPU: 2 cores; docs/training.md).
# The recipe is data: configs/segmenter.json and configs/classifier.json (the typed configs of brainseg.config).
# Every stage checkpoints each epoch and is started with --resume auto: rerunning this script after an
# interruption continues the unfinished stage and skips finished ones, so a queue may span sessions.
# Usage: bash scripts/train_models.sh [DATA_DIR] [RUNS_DIR]     (or: make train; run it under nohup)
#        PRECISION=fp32 bash scripts/train_models.sh ...        (fp32 outright; the recipe's auto trains in bf16 where
#                                                               the CPU has it natively and a timed step is faster)
# Cost of the shipped v4 models (2 cores, bf16 autocast, an Intel Xeon VM with amx_bf16, 2026-12-06): a fold
# 21-31 min (segmenter) + 4-8 min (classifier), the all-88 pair 27 + 6.5 min (train_seconds_total in each
# metrics.json); in fp32 (v2, 2026-12-02) a fold took 67-75 + 15-17 min. Then: bash scripts/ship_models.sh
# The v4 runs used this recipe with --precision bf16 (PRECISION=bf16), the folds under other --out names
# (runs/abl/dark05_F, runs/abl/clf_F), the all-88 pair as runs/v4/segmenter and runs/v4/classifier.
# CPUs differ: at 128, bf16 was 2.7x faster on one AMD EPYC, 10x slower on another (docs/training.md).
set -euo pipefail
DATA=${1:-../shared/data/lgg/kaggle_3m}
RUNS=${2:-runs}
PY=${PYTHON:-python}
PREC=(${PRECISION:+--precision "$PRECISION"})
FOLDS=splits/lgg_dev_4fold_seed42.json   # 4 folds of 22 patients, stratified by institution (brainseg.data.make_folds)

# The recipe (configs/*.json): fixed schedules, the last epoch's weight average kept (nothing is chosen on
# validation cases). Both models run at 128x128: ground-truth masks keep a per-case Dice of 0.993 through 128
# and back, a step is about 6x cheaper than at 256, and on fold 0 neither training at 256 nor a 192 fine-tune
# beat 128. What the 128 segmenter lacked was a longer schedule (16 epochs: per-case Dice 0.740 on its 22
# held-out cases, 40 epochs: 0.787) and decoder width: the shipped decoder [256, 128, 64, 32, 16] gave 0.765
# against 0.740 for [128, 64, 32, 16, 16] at 16 epochs (docs/training.md).
# v2 was trained at commit eed25e2, which augmented each slice at 256 before the resize; since 0369ddd train.py
# resizes first (fold 0, 16 epochs, AMD EPYC: 5.2 against 4.2 images/s, per-case Dice 0.743-0.745 against 0.732).
# v4 was trained with today's pipeline; bf16 on a CPU is not bit-for-bit repeatable, so a rerun reproduces the
# recipe and its figures within run-to-run noise (about 0.01 per-case Dice on one fold), not the weights.
# deep_supervision 3 (1x1 heads on three coarser decoder stages, unused at inference): on fold 0 it was ahead by
# +0.014 per-case Dice at 16 epochs and +0.014 +- 0.040 (13 of 22 cases) at 40 (docs/training.md).
# dark_interior 0.5 (a dark core painted into half the large tumours, the mask unchanged): segmenter alone
# +0.004 +- 0.056 over 88 out-of-fold cases; the pipeline with its rules chosen on those 88 cases, 0.824 against
# 0.811 without it (+0.012 +- 0.056, ahead on 54; README "Results").

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
#    Two folds give 44 held-out cases, enough to choose on; the all-case models are trained next so that they
#    can ship from there, and folds 2 and 3 complete the cross-validation (ship again: scripts/ship_models.sh).
for f in 0 1; do segmenter_fold $f; classifier_fold $f; done
# 2. The shipped models: the same recipe on all 88 cases (no validation cases: nothing is chosen on them).
$PY train.py configs/segmenter.json --data "$DATA" --val-fraction 0 --out "$RUNS/segmenter" --resume auto "${PREC[@]}"
$PY train.py configs/classifier.json --data "$DATA" --val-fraction 0 --out "$RUNS/classifier" \
    --init-encoder-from "$RUNS/segmenter" --resume auto "${PREC[@]}"
# 3. The rest of the cross-validation.
for f in 2 3; do segmenter_fold $f; classifier_fold $f; done
