"""Segmentation and classification losses."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class BCEDiceLoss(nn.Module):
    """BCE plus soft Dice over the batch; Dice keeps small tumours from drowning in background."""

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
        dice = (2 * (p * t).sum() + self.smooth) / (p.sum() + t.sum() + self.smooth)
        return self.bce_weight * bce + self.dice_weight * (1 - dice)


class WeightedBCELoss(nn.Module):
    """BCE with ``pos_weight = n_negative / n_positive`` so the rarer class counts as much."""

    def __init__(self, pos_weight: float = 1.0):
        super().__init__()
        self.register_buffer("pos_weight", torch.tensor([float(pos_weight)]))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=self.pos_weight)
