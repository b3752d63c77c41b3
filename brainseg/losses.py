"""Segmentation and classification losses."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class BCEDiceLoss(nn.Module):
    """BCE plus soft Dice over the batch's pooled pixels; Dice keeps small tumours from drowning in background."""

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0):
        super().__init__()
        self.bce_weight, self.dice_weight, self.smooth = bce_weight, dice_weight, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape != target.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
        if target.max() > 1:
            raise ValueError("Target mask has values above 1: binarise masks (0/255 on disk) before the loss")
        bce = F.binary_cross_entropy_with_logits(logits, target)
        p = torch.sigmoid(logits).flatten(1)
        t = target.flatten(1)
        tp, fp, fn = (p * t).sum(), (p * (1 - t)).sum(), ((1 - p) * t).sum()
        dice = (tp + self.smooth / 2) / (tp + 0.5 * fp + 0.5 * fn + self.smooth / 2)
        return self.bce_weight * bce + self.dice_weight * (1 - dice)


class DeepSupervisionLoss(nn.Module):
    """``base`` on the full-size logits plus on each side head's coarser logits (``ResUNet(x, sides=True)``).

    The side targets are the mask area-averaged to each stage's size (soft, in [0, 1]); stage k (finest
    first) weighs 2^-(k+1) against 1 for the full-size output, and the sum is divided by the total weight
    so that the loss keeps the scale of ``base``. Gradients then reach the deep decoder blocks directly:
    with ~70 training patients that is a regulariser, not a change of what the model outputs.
    """

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base

    def forward(self, outputs, target: torch.Tensor) -> torch.Tensor:
        logits, sides = outputs
        total, weight = self.base(logits.float(), target), 1.0
        for k, side in enumerate(sides):
            w = 0.5 ** (k + 1)
            total = total + w * self.base(side.float(), F.adaptive_avg_pool2d(target, side.shape[-2:]))
            weight += w
        return total / weight


class WeightedBCELoss(nn.Module):
    """BCE with ``pos_weight = n_negative / n_positive`` so the rarer class counts as much."""

    def __init__(self, pos_weight: float = 1.0):
        super().__init__()
        self.register_buffer("pos_weight", torch.tensor([float(pos_weight)]))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=self.pos_weight)
