"""Metrics against values computed by hand, edge cases included."""
import math

import numpy as np
import pytest

from brainseg.metrics import (CaseDiceAggregator, auroc, detection_metrics, dice_score,
                              expected_calibration_error, iou_score)

# ---------------------------------------------------------------- Dice / IoU


def test_dice_iou_2x2():
    pred = np.array([[1, 1], [0, 0]])
    gt = np.array([[1, 0], [1, 0]])
    # |P∩G| = 1, |P| = |G| = 2, |P∪G| = 3
    assert dice_score(pred, gt) == pytest.approx(2 * 1 / 4)
    assert iou_score(pred, gt) == pytest.approx(1 / 3)


def test_dice_iou_3x3():
    pred = np.array([[1, 1, 1], [0, 0, 0], [0, 0, 0]])
    gt = np.array([[0, 1, 1], [0, 1, 1], [0, 0, 0]])
    # |P∩G| = 2, |P| = 3, |G| = 4, |P∪G| = 5
    assert dice_score(pred, gt) == pytest.approx(4 / 7)
    assert iou_score(pred, gt) == pytest.approx(2 / 5)


def test_dice_accepts_bool_and_0_255():
    gt = np.array([[0, 255], [255, 255]], np.uint8)
    assert dice_score(gt > 0, gt) == 1.0
    assert dice_score(np.array([[0, 1], [0, 0]], bool), gt) == pytest.approx(2 / 4)


def test_empty_vs_empty_is_one():
    z = np.zeros((3, 3))
    assert dice_score(z, z) == 1.0 and iou_score(z, z) == 1.0


@pytest.mark.parametrize("pred_empty", [True, False])
def test_one_empty_is_zero(pred_empty):
    z, one = np.zeros((2, 2)), np.array([[0, 1], [0, 0]])
    pred, gt = (z, one) if pred_empty else (one, z)
    assert dice_score(pred, gt) == 0.0 and iou_score(pred, gt) == 0.0


def test_shape_mismatch_quotes_shapes():
    with pytest.raises(ValueError, match=r"\(2, 2\).*\(2, 3\)"):
        dice_score(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"\(2, 2\).*\(3, 2\)"):
        iou_score(np.zeros((2, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"\(1, 2, 2\)"):
        CaseDiceAggregator().update("a", np.zeros((1, 2, 2)), np.zeros((2, 2)))


# ---------------------------------------------------------------- per-case aggregation

def _two_slice_case():
    """Slice 1: a perfect 2x2 square (Dice 1). Slice 2: a 1-pixel tumour missed (Dice 0)."""
    g1 = np.zeros((4, 4), np.uint8)
    g1[:2, :2] = 1
    g2 = np.zeros((4, 4), np.uint8)
    g2[3, 3] = 1
    return np.stack([g1, np.zeros_like(g2)]), np.stack([g1, g2])


def test_per_case_dice_sums_over_the_stack():
    pred, gt = _two_slice_case()
    agg = CaseDiceAggregator()
    agg.update("a", pred, gt)
    stack = 2 * 4 / (4 + 5)  # 8/9 over the whole stack
    slice_mean = (1.0 + 0.0) / 2
    assert agg.per_case()["a"]["dice"] == pytest.approx(stack)
    assert agg.per_case()["a"]["dice"] == pytest.approx(dice_score(pred, gt))
    assert stack != pytest.approx(slice_mean)
    assert agg.per_case()["a"]["iou"] == pytest.approx(4 / 5)
    out = agg.compute()
    assert out["dice_per_case_mean"] == pytest.approx(stack)
    assert out["dice_tumor_slices_mean"] == pytest.approx(slice_mean)
    assert agg.per_case()["a"]["gt_voxels"] == 5 and agg.per_case()["a"]["pred_voxels"] == 4


def test_slice_by_slice_equals_batched():
    pred, gt = _two_slice_case()
    a, b = CaseDiceAggregator(), CaseDiceAggregator()
    a.update("x", pred, gt)
    b.update("x", pred[1], gt[1])  # any order, one at a time
    b.update("x", pred[0], gt[0])
    assert a.per_case() == b.per_case() and a.slices == b.slices == 2


def test_mean_median_over_cases_and_false_positives():
    agg = CaseDiceAggregator()
    one = np.ones((1, 2, 2))
    agg.update("perfect", one, one)                                     # Dice 1
    agg.update("half", np.array([[[1, 1], [0, 0]]]), np.array([[[1, 0], [1, 0]]]))  # Dice 0.5
    agg.update("empty_both", np.zeros((1, 2, 2)), np.zeros((1, 2, 2)))  # Dice 1 by convention
    agg.update("false_alarm", np.array([[[0, 1], [0, 0]]]), np.zeros((1, 2, 2)))   # Dice 0, one FP slice
    out = agg.compute()
    assert out["dice_per_case_mean"] == pytest.approx((1 + 0.5 + 1 + 0) / 4)
    assert out["dice_per_case_median"] == pytest.approx(0.75)
    assert out["iou_per_case_mean"] == pytest.approx((1 + 1 / 3 + 1 + 0) / 4)
    assert out["false_positive_slices"] == 1
    assert out["dice_tumor_slices_mean"] == pytest.approx((1 + 0.5) / 2)  # only slices with tumour
    assert agg.slices == 4


def test_empty_aggregator_is_nan():
    out = CaseDiceAggregator().compute()
    assert math.isnan(out["dice_per_case_mean"]) and math.isnan(out["dice_tumor_slices_mean"])


# ---------------------------------------------------------------- AUROC and detection

def test_auroc_hand_values():
    # positives {0.35, 0.8} vs negatives {0.1, 0.4}: 3 of 4 pairs ordered
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0


def test_auroc_ties_count_half():
    # positives {0.5, 0.9} vs negatives {0.5, 0.2}: 0.5 + 1 + 1 + 1 of 4
    assert auroc([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1]) == pytest.approx(3.5 / 4)
    assert auroc([0.3, 0.3, 0.3], [1, 0, 1]) == pytest.approx(0.5)


@pytest.mark.parametrize("labels", [[1, 1, 1], [0, 0, 0]])
def test_auroc_one_class_is_nan(labels):
    assert math.isnan(auroc([0.1, 0.5, 0.9], labels))


def test_detection_counts():
    probs = [0.9, 0.6, 0.4, 0.2, 0.7]
    labels = [1, 1, 1, 0, 0]  # predicted 1,1,0,0,1: TP 2, FN 1, TN 1, FP 1
    out = detection_metrics(probs, labels, threshold=0.5)
    assert out["accuracy"] == pytest.approx(3 / 5)
    assert out["sensitivity"] == pytest.approx(2 / 3)
    assert out["specificity"] == pytest.approx(1 / 2)
    assert out["auroc"] == pytest.approx(auroc(probs, labels)) == pytest.approx(4 / 6)
    assert out["threshold"] == 0.5


def test_detection_threshold_is_inclusive_and_moves_counts():
    assert detection_metrics([0.5, 0.1], [1, 0], threshold=0.5)["sensitivity"] == 1.0
    out = detection_metrics([0.9, 0.6, 0.4, 0.2, 0.7], [1, 1, 1, 0, 0], threshold=0.8)
    assert out["sensitivity"] == pytest.approx(1 / 3) and out["specificity"] == 1.0


def test_detection_undefined_rates_are_nan():
    out = detection_metrics([0.2, 0.7], [0, 0])
    assert math.isnan(out["sensitivity"]) and math.isnan(out["auroc"]) and out["specificity"] == 0.5


# ---------------------------------------------------------------- calibration

def test_ece_hand_value():
    # bins of width 0.1: |0.05-0| + |0.15-1| + |0.85-1| + |0.95-1|, each weighted 1/4
    assert expected_calibration_error([0.05, 0.15, 0.95, 0.85], [0, 1, 1, 1]) == pytest.approx(0.275)


def test_ece_pools_within_a_bin_and_handles_1():
    # one bin [0.9, 1.0]: mean confidence 0.95 vs frequency 0.5
    assert expected_calibration_error([0.9, 1.0], [1, 0]) == pytest.approx(0.45)
    assert expected_calibration_error([0.0, 1.0], [0, 1]) == 0.0
    assert math.isnan(expected_calibration_error([], []))
