"""Evaluate a segmenter and a classifier on a kaggle_3m-layout folder: a table and a JSON file.

    python -m brainseg.evaluate ../shared/data/lgg/kaggle_3m --split splits/lgg_dev_seed42.json --json eval.json
    python -m brainseg.evaluate DATA --segmenter runs/segmenter --classifier user/brainseg-classifier@v1
    python -m brainseg.evaluate DATA --cases 'TCGA_CS_*' TCGA_DU_7010_19860307   # a subset of cases
    python -m brainseg.evaluate --data DATA ...   # the data folder as train.py and calibrate spell it

A bar over the cases (done, slices seen, time left) goes to stderr; ``--quiet`` hides it.

Conventions (see :mod:`brainseg.metrics`):

- Masks are compared at each slice's original resolution: the :class:`~brainseg.inference.Predictor`
  maps its mask back to the input's size, exactly as the app does, so the figures describe what a
  user gets, post-processing from the segmenter's config included (small components dropped,
  the classifier gate).
- Per-case Dice is computed over the whole stack of a case's slices, 2|P∩G| / (|P|+|G|) with the
  sums taken over every slice, then averaged over cases (the metric of the dataset's papers).
  A case where both the prediction and the ground truth are empty scores 1 (nothing to find,
  nothing found); a case where exactly one is empty scores 0. IoU follows the same rules.
- ``dice_tumor_slices_mean`` is the mean Dice of single slices whose ground truth holds tumour;
  ``false_positive_slices`` counts slices with an empty ground truth and a non-empty prediction.
- Detection is per slice: positive = the ground-truth mask is not empty; the score is the
  Predictor's tumour probability (the fusion of both models when the classifier config holds
  fusion weights, else the classifier's calibrated probability) at its detection threshold.
- Each case goes through :meth:`Predictor.predict_case`, as in whole-case analysis: the segmenter
  config's 3-D ``case_rule`` applies, and a slice it leaves without a mask counts as not detected
  (accuracy, sensitivity and specificity are those verdicts; AUROC ranks the probabilities).
- ``seconds_per_slice`` is the wall time of :meth:`Predictor.predict_case` (both models, pre- and
  post-processing) divided by the number of slices; reading the files is not counted.
"""
import argparse
import fnmatch
import json
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
from tqdm import tqdm

from .data import Case, find_cases, load_split, read_image, read_mask, select_cases, slice_number
from .cli import (add_data_arg, add_model_args, add_runtime_args, data_arg, entry_point, predictor_from_args,
                  write_output)
from .metrics import CaseDiceAggregator, detection_metrics, expected_calibration_error

PathLike = Union[str, Path]


def select_eval_cases(data_dir: PathLike, split: Optional[Union[PathLike, Dict]] = None,
                      only: Optional[Sequence[str]] = None) -> List[Case]:
    """Every case under ``data_dir`` (sorted), or only the split's ``"val"`` cases, or only those named.

    Args:
        data_dir: a folder in the kaggle_3m layout.
        split: None, a split JSON path (see :func:`brainseg.data.load_split`) or an already loaded split dict.
        only: case names or shell patterns (``"TCGA_CS_*"``); a case is kept when one matches.
    Raises:
        FileNotFoundError naming the path when the folder is missing or holds no case;
        KeyError when the split names a case the folder lacks, or a name or pattern matches no case.
    """
    cases = find_cases(data_dir)
    if split is not None:
        cases = select_cases(cases, (split if isinstance(split, dict) else load_split(split))["val"])
    if only:
        unmatched = [pat for pat in only if not any(fnmatch.fnmatchcase(c.name, pat) for c in cases)]
        if unmatched:
            raise KeyError(f"No case in {data_dir}{' (split val cases)' if split is not None else ''} matches "
                           f"{', '.join(map(repr, unmatched))}")
        cases = [c for c in cases if any(fnmatch.fnmatchcase(c.name, pat) for pat in only)]
    return cases


def evaluate(data_dir: PathLike, predictor, split: Optional[Union[PathLike, Dict]] = None,
             threshold: Optional[float] = None, batch_size: int = 16, keep_slices: bool = False,
             progress: bool = False, only: Optional[Sequence[str]] = None) -> Dict:
    """Segmentation and detection metrics of ``predictor`` on the cases of a kaggle_3m folder.

    Args:
        data_dir: a folder in the kaggle_3m layout (case folders of ``<case>_<n>.tif`` + ``_mask.tif``).
        predictor: a :class:`brainseg.inference.Predictor` (e.g. ``Predictor.from_sources(seg, clf)``).
        split: None for every case, else a split file path or dict whose ``"val"`` cases are evaluated.
        threshold: pixel probability threshold; None uses the segmenter config's.
        batch_size: slices per forward pass.
        keep_slices: also return ``"slices_detail"``: per-slice case, slice number, probability and
            label (what a calibration step needs).
        progress: show a tqdm bar over cases on stderr (cases done, slices seen, time left).
        only: evaluate only these cases (names or shell patterns, see :func:`select_eval_cases`).
    Returns:
        ``{"cases", "slices", "seg": {...}, "det": {...}, "seconds_per_slice", "per_case", "ece",
        "sources"}``. Per-case Dice is over the whole stack; empty-vs-empty counts 1 (see module doc).
        Undefined values (AUROC with one class present, sensitivity without tumour slices) are NaN.

    Example:
        >>> from brainseg.inference import Predictor
        >>> p = Predictor.from_sources("runs/segmenter", "runs/classifier")
        >>> r = evaluate("../shared/data/lgg/kaggle_3m", p, split="splits/lgg_dev_seed42.json")
        >>> r["seg"]["dice_per_case_mean"], r["det"]["auroc"]
    """
    cases = select_eval_cases(data_dir, split, only)
    agg = CaseDiceAggregator()
    probs: List[float] = []
    verdicts: List[bool] = []
    labels: List[int] = []
    detail: List[Dict] = []
    seconds = 0.0
    checked = {"warn": 0, "refuse": 0, "uncertain": 0}  # the input check and "not sure" marks, counted
    bar = tqdm(cases, desc="evaluating", unit="case", file=sys.stderr, disable=not progress)
    for case in bar:
        bar.set_postfix_str(f"{case.name}, {len(labels) + len(case)} slices", refresh=False)
        images = [read_image(p) for p in case.images]
        truths = [read_mask(p) for p in case.masks]
        t0 = time.perf_counter()
        preds = predictor.predict_case(images, threshold=threshold, batch_size=batch_size)
        seconds += time.perf_counter() - t0
        agg.update(case.name, np.stack([p.mask for p in preds]), np.stack(truths))
        for path, pred, truth in zip(case.images, preds, truths):
            checked[pred.status] = checked.get(pred.status, 0) + 1
            checked["uncertain"] += bool(pred.review)
            probs.append(pred.probability)
            verdicts.append(bool(pred.detected))  # a refused slice (no verdict) counts as not detected
            labels.append(int(truth.any()))
            if keep_slices:
                detail.append({"case": case.name, "slice": slice_number(path), "probability": pred.probability,
                               "label": labels[-1], "pred_px": pred.tumor_area_px, "true_px": int(truth.sum())})

    pixel_threshold, det_threshold = predictor.thresholds(threshold)  # the Predictor's, as its verdicts used
    result = evaluation_record(
        agg, {c.name: len(c) for c in cases}, probs, labels, det_threshold, pixel_threshold, verdicts,
        seconds_per_slice=seconds / max(len(labels), 1),
        sources={k: str(v) for k, v in getattr(predictor, "sources", {}).items()},
        precision=getattr(predictor, "precision", "fp32"), data_dir=str(data_dir),
        split=None if split is None or isinstance(split, dict) else str(split), case_rule=predictor.seg_cfg.case_rule)
    result["input_check"] = {"warned_slices": checked["warn"], "refused_slices": checked["refuse"],
                             "uncertain_slices": checked["uncertain"]}
    if keep_slices:
        result["slices_detail"] = detail
    return result


def evaluation_record(agg: CaseDiceAggregator, case_slices: Dict[str, int], probs: Sequence[float],
                      labels: Sequence[int], det_threshold: float, pixel_threshold: float,
                      verdicts: Optional[Sequence[bool]], *, seconds_per_slice: Optional[float], sources,
                      precision: str, data_dir: Optional[str], split: Optional[str], case_rule: str,
                      cross_validation: Optional[Dict] = None) -> Dict:
    """The one layout of an evaluation's figures (this command's ``--json``, calibrate's held-out figures, the
    cards read both). ``case_slices``: slices per case, in order; ``verdicts``: the slices' final verdicts
    (None: the detection threshold alone); ``cross_validation`` marks out-of-fold figures. Write it with
    :func:`to_json` (undefined figures, NaN, become null)."""
    labels = np.asarray(labels)
    seg = agg.compute()
    seg["pixel_threshold"] = pixel_threshold
    return {
        "cases": len(case_slices),
        "slices": int(len(labels)),
        "seg": seg,
        "det": detection_metrics(probs, labels, det_threshold, verdicts),
        "seconds_per_slice": seconds_per_slice,
        "ece": expected_calibration_error(probs, labels),
        "tumor_slices": int(labels.sum()),
        "per_case": {name: dict(v, slices=case_slices[name]) for name, v in agg.per_case().items()},
        "sources": sources,
        "precision": precision,
        "data_dir": data_dir,
        "split": split,
        "case_rule": case_rule,
        **({"cross_validation": cross_validation} if cross_validation else {}),
    }


def _fmt(v) -> str:
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.4f}"
    return str(v)


def format_table(result: Dict) -> str:
    """The result as a plain-text table: per-case Dice, then the summary figures."""
    lines = [f"{'case':<28} {'slices':>6} {'dice':>7} {'iou':>7} {'true px':>9} {'pred px':>9}"]
    for name, v in result["per_case"].items():
        lines.append(f"{name:<28} {v['slices']:>6} {v['dice']:>7.4f} {v['iou']:>7.4f} "
                     f"{v['gt_voxels']:>9} {v['pred_voxels']:>9}")
    lines.append("")
    lines.append(f"{result['cases']} cases, {result['slices']} slices ({result['tumor_slices']} with tumour)")
    lines.append("segmentation (masks at original resolution)")
    for k in ("dice_per_case_mean", "dice_per_case_median", "dice_tumor_slices_mean", "iou_per_case_mean",
              "false_positive_slices", "pixel_threshold"):
        lines.append(f"  {k:<26} {_fmt(result['seg'][k])}")
    lines.append("detection (per slice)")
    for k in ("auroc", "accuracy", "sensitivity", "specificity", "threshold"):
        lines.append(f"  {k:<26} {_fmt(result['det'][k])}")
    lines.append(f"  {'ece':<26} {_fmt(result['ece'])}")
    lines.append(f"seconds per slice            {result['seconds_per_slice']:.4f}")
    if "input_check" in result:
        c = result["input_check"]
        lines.append(f"input check                  {c['warned_slices']} slices warned, {c['refused_slices']} refused "
                     f"(no verdict; counted as not detected), {c['uncertain_slices']} marked uncertain")
    for k, v in result["sources"].items():
        lines.append(f"{k:<28} {v}")
    return "\n".join(lines)


def to_json(result: Dict) -> str:
    """JSON text of a result; NaN (an undefined metric) is written as null so any parser reads it."""
    def clean(o):
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        if isinstance(o, np.generic):
            return clean(o.item())
        return o
    return json.dumps(clean(result), indent=2, allow_nan=False) + "\n"


def run(argv: Optional[Sequence[str]] = None) -> Dict:
    """Parse ``argv``, run, print; returns the figures (what :func:`main` prints and writes)."""
    p = argparse.ArgumentParser(prog="python -m brainseg.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arg(p, "kaggle_3m-layout folder")
    add_model_args(p)
    p.add_argument("--split", help="split JSON: evaluate only its 'val' cases")
    p.add_argument("--cases", nargs="+", metavar="NAME",
                   help="evaluate only these cases: names or shell patterns such as 'TCGA_CS_*' (quote them)")
    p.add_argument("--json", dest="json_out", help="write the metrics here as JSON")
    p.add_argument("--threshold", type=float, help="pixel probability threshold (default: the segmenter config's)")
    p.add_argument("--batch-size", type=int, default=16)
    add_runtime_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    args = p.parse_args(argv)
    data_dir = data_arg(p, args)

    try:
        cases = select_eval_cases(data_dir, args.split, args.cases)  # fail on a bad folder before loading models
        if not args.quiet:
            print(f"{len(cases)} case{'s' if len(cases) != 1 else ''}, {sum(len(c) for c in cases)} slices to "
                  f"evaluate", file=sys.stderr)
        predictor = predictor_from_args(args)
        result = evaluate(data_dir, predictor, split=args.split, threshold=args.threshold,
                          batch_size=args.batch_size, progress=not args.quiet, only=args.cases)
    except (FileNotFoundError, KeyError, ValueError, OSError) as e:
        p.error(str(e.args[0]) if e.args else str(e))  # exit status 2, the message (naming the path) on stderr
    print(format_table(result))
    if args.json_out:
        write_output(args.json_out, to_json(result))
        print(f"wrote {args.json_out}")
    return result


main = entry_point(run)


if __name__ == "__main__":
    raise SystemExit(main())
