"""Segmentation and classification losses."""
import math

import pytest
import torch

import torch.nn.functional as F

from brainseg.losses import BCEDiceLoss, DeepSupervisionLoss, WeightedBCELoss


def _target():
    t = torch.zeros(2, 1, 8, 8)
    t[0, 0, 2:5, 2:5] = 1
    t[1, 0, 6:, :3] = 1
    return t


def test_bce_dice_near_zero_for_perfect_logits():
    t = _target()
    assert BCEDiceLoss()(t * 40 - 20, t).item() < 1e-3


def test_bce_dice_large_for_inverted_logits():
    t = _target()
    loss = BCEDiceLoss()(20 - t * 40, t).item()
    assert loss > 10  # BCE about 20 plus Dice about 1


def test_bce_dice_weights():
    t, logits = _target(), torch.zeros(2, 1, 8, 8)
    bce_only = BCEDiceLoss(bce_weight=1, dice_weight=0)(logits, t).item()
    assert bce_only == pytest.approx(math.log(2), rel=1e-5)  # sigmoid(0) = 0.5 everywhere
    dice_only = BCEDiceLoss(bce_weight=0, dice_weight=1, smooth=0)(logits, t).item()
    n_pos, n = t.sum().item(), t.numel()
    assert dice_only == pytest.approx(1 - 2 * 0.5 * n_pos / (0.5 * n + n_pos), rel=1e-5)


def test_bce_dice_refuses_255_masks():
    with pytest.raises(ValueError, match="binarise"):
        BCEDiceLoss()(torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 255.0))


def test_bce_dice_refuses_shape_mismatch():
    with pytest.raises(ValueError, match=r"\(1, 1, 4, 4\).*\(1, 4, 4\)"):
        BCEDiceLoss()(torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 4))


def test_weighted_bce_scales_positives():
    logits, pos, neg = torch.zeros(1, 1), torch.ones(1, 1), torch.zeros(1, 1)
    loss = WeightedBCELoss(pos_weight=4.0)
    assert loss(logits, pos).item() == pytest.approx(4 * math.log(2), rel=1e-5)
    assert loss(logits, neg).item() == pytest.approx(math.log(2), rel=1e-5)


def test_deep_supervision_loss_weighs_the_side_outputs_against_pooled_masks():
    base, t = BCEDiceLoss(), _target()
    logits = torch.randn(2, 1, 8, 8)
    side = torch.randn(2, 1, 4, 4, requires_grad=True)
    ds = DeepSupervisionLoss(base)
    assert torch.allclose(ds((logits, []), t), base(logits, t))  # no sides: the base loss itself
    want = (base(logits, t) + 0.5 * base(side, F.avg_pool2d(t, 2))) / 1.5
    got = ds((logits, [side]), t)
    assert torch.allclose(got, want)
    got.backward()
    assert side.grad is not None and side.grad.abs().sum() > 0
    perfect = (t * 40 - 20)
    pooled = F.avg_pool2d(t, 2)  # soft targets at the coarser stage: exact logits of them score best
    exact = torch.logit(pooled.clamp(1e-4, 1 - 1e-4))
    assert ds((perfect, [exact]), t) < ds((perfect, [-exact]), t)


def test_the_dice_term_is_dice_and_prices_a_miss_like_a_false_alarm():
    t = _target()
    logits = torch.randn(2, 1, 8, 8)
    dice = BCEDiceLoss(bce_weight=0, smooth=0)(logits, t)
    p = torch.sigmoid(logits)
    assert dice.item() == pytest.approx(1 - 2 * (p * t).sum().item() / (p.sum() + t.sum()).item(), rel=1e-5)
    miss, extra = t.clone(), t.clone()
    miss[0, 0, 2, 2], extra[0, 0, 0, 0] = 0, 1
    as_logits = lambda m: m * 40 - 20
    assert (BCEDiceLoss(bce_weight=0)(as_logits(miss), t) / BCEDiceLoss(bce_weight=0)(as_logits(extra), t)).item() < 1.1
