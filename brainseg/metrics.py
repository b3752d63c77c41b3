"""Per-case Dice/IoU, slice detection metrics, AUROC and calibration error.

Conventions (the dataset papers' own):
- Per-case Dice is computed over the whole stack of a case's slices, 2|P∩G| / (|P|+|G|), then
  averaged over cases. When both prediction and ground truth are empty the Dice (and IoU) is 1
  (nothing to find, nothing found); when exactly one is empty it is 0.
- Detection is per slice: positive = the ground-truth mask is not empty.
"""
from typing import Dict, Optional, Sequence

import numpy as np


def dice_score(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice of two binary arrays of the same shape; 1.0 when both are empty."""
    pred, target = np.asarray(pred).astype(bool), np.asarray(target).astype(bool)
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {pred.shape} != target shape {target.shape}")
    denom = pred.sum() + target.sum()
    if denom == 0:
        return 1.0
    return float(2.0 * np.logical_and(pred, target).sum() / denom)


def iou_score(pred: np.ndarray, target: np.ndarray) -> float:
    """Intersection over union of two binary arrays; 1.0 when both are empty."""
    pred, target = np.asarray(pred).astype(bool), np.asarray(target).astype(bool)
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {pred.shape} != target shape {target.shape}")
    union = np.logical_or(pred, target).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(pred, target).sum() / union)


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve (Mann-Whitney U with ties counted half); NaN with one class only."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    n_pos, n_neg = y.sum(), (~y).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # average ranks over ties
    uniq, start = np.unique(sorted_s, return_index=True)
    ends = np.append(start[1:], len(s))
    for a, b in zip(start, ends):
        ranks[order[a:b]] = (a + b + 1) / 2.0
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def detection_metrics(probs: Sequence[float], labels: Sequence[int], threshold: float = 0.5,
                      predicted: Optional[Sequence[bool]] = None) -> Dict[str, float]:
    """Slice-level AUROC, accuracy, sensitivity, specificity at ``threshold`` (prob >= threshold is positive).

    ``predicted``: the verdicts themselves, where a rule beyond the threshold made them (a whole case's 3-D
    rule, :meth:`brainseg.inference.Predictor.predict_case`); AUROC still ranks ``probs``.
    """
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(labels).astype(bool)
    pred = p >= threshold if predicted is None else np.asarray(predicted, bool)
    tp, tn = int((pred & y).sum()), int((~pred & ~y).sum())
    fp, fn = int((pred & ~y).sum()), int((~pred & y).sum())
    return {
        "auroc": auroc(p, y),
        "accuracy": (tp + tn) / max(len(y), 1),
        "sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
        "specificity": tn / (tn + fp) if tn + fp else float("nan"),
        "threshold": float(threshold),
    }


def expected_calibration_error(probs: Sequence[float], labels: Sequence[int], bins: int = 10) -> float:
    """ECE: the |confidence - frequency| gap over equal-width probability bins, weighted by bin size."""
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if len(p) == 0:
        return float("nan")
    idx = np.clip((p * bins).astype(int), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            ece += sel.mean() * abs(p[sel].mean() - y[sel].mean())
    return float(ece)


class CaseDiceAggregator:
    """Accumulates slices per case and reports per-case Dice/IoU and tumour-slice Dice.

    Feed slices with :meth:`update` (any order, any batch); :meth:`compute` sums each case's
    stack before the ratio, as the per-case Dice convention requires.
    """

    def __init__(self):
        self.inter, self.psum, self.gsum, self.union = {}, {}, {}, {}
        self.tumor_slice_dice = []
        self.false_positive_slices = 0
        self.slices = 0

    def update(self, case: str, pred: np.ndarray, target: np.ndarray) -> None:
        """pred/target: binary arrays (H, W) for one slice or (N, H, W) for N slices of ``case``."""
        pred, target = np.asarray(pred).astype(bool), np.asarray(target).astype(bool)
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {pred.shape} != target shape {target.shape}")
        if pred.ndim == 2:
            pred, target = pred[None], target[None]
        for p, g in zip(pred, target):
            self.update_counts(case, int((p & g).sum()), int(p.sum()), int(g.sum()))

    def update_counts(self, case: str, inter: int, pred_px: int, gt_px: int) -> None:
        """One slice given as its counts: |P∩G|, |P| and |G| (what :meth:`update` computes)."""
        self.inter[case] = self.inter.get(case, 0) + inter
        self.psum[case] = self.psum.get(case, 0) + pred_px
        self.gsum[case] = self.gsum.get(case, 0) + gt_px
        self.union[case] = self.union.get(case, 0) + pred_px + gt_px - inter
        if gt_px > 0:
            self.tumor_slice_dice.append(2 * inter / (pred_px + gt_px))
        elif pred_px > 0:
            self.false_positive_slices += 1
        self.slices += 1

    def per_case(self) -> Dict[str, Dict[str, float]]:
        out = {}
        for c in self.inter:
            d = self.psum[c] + self.gsum[c]
            out[c] = {"dice": 1.0 if d == 0 else 2 * self.inter[c] / d,
                      "iou": 1.0 if self.union[c] == 0 else self.inter[c] / self.union[c],
                      "gt_voxels": self.gsum[c], "pred_voxels": self.psum[c]}
        return out

    def compute(self) -> Dict[str, float]:
        pc = self.per_case()
        dice = np.array([v["dice"] for v in pc.values()]) if pc else np.array([np.nan])
        iou = np.array([v["iou"] for v in pc.values()]) if pc else np.array([np.nan])
        return {
            "dice_per_case_mean": float(dice.mean()),
            "dice_per_case_median": float(np.median(dice)),
            "dice_tumor_slices_mean": float(np.mean(self.tumor_slice_dice)) if self.tumor_slice_dice else float("nan"),
            "iou_per_case_mean": float(iou.mean()),
            "false_positive_slices": int(self.false_positive_slices),
        }
