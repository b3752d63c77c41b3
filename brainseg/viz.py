"""Overlays, outlines, montages and training curves."""
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import cv2
import numpy as np


def plot_curves(history: List[Dict], path: Union[str, Path], metric: str) -> None:
    """Training and validation loss, and the validation ``metric``, per epoch, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(ep, [h["train_loss"] for h in history], "o-", label="train loss")
    a.set_xlabel("epoch"), a.set_title("loss"), a.legend()
    b.plot(ep, [h["val"][metric] for h in history], "o-", color="C1")
    b.set_xlabel("epoch"), b.set_title(f"validation {metric}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def to_display(channel: np.ndarray) -> np.ndarray:
    """Any-dtype 2-D channel -> uint8 for display, stretched between its 1st and 99.5th percentiles."""
    c = channel.astype(np.float32)
    lo, hi = np.percentile(c, [1, 99.5]) if c.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1
    return (np.clip((c - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def overlay(flair: np.ndarray, pred: Optional[np.ndarray], truth: Optional[np.ndarray] = None,
            alpha: float = 0.35) -> np.ndarray:
    """RGB uint8: FLAIR in grey, predicted tumour tinted red with a red outline, truth outlined green."""
    grey = to_display(flair)
    rgb = np.stack([grey] * 3, -1)
    thick = max(1, round(max(grey.shape) / 256))
    if pred is not None and pred.any():
        p = pred.astype(bool)
        rgb[p] = ((1 - alpha) * rgb[p] + alpha * np.array([255, 0, 0])).astype(np.uint8)
        cs, _ = cv2.findContours(p.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(rgb, cs, -1, (255, 40, 40), thick)
    if truth is not None and truth.any():
        cs, _ = cv2.findContours(truth.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(rgb, cs, -1, (0, 255, 0), thick)
    return rgb


def montage(images: Sequence[np.ndarray], cols: int = 8, tile: int = 128) -> np.ndarray:
    """Grid of RGB tiles (resized to ``tile``), for a case's overlays."""
    if not images:
        raise ValueError("montage needs at least one image")
    rows = (len(images) + cols - 1) // cols
    cols = min(cols, len(images))
    grid = np.zeros((rows * tile, cols * tile, 3), np.uint8)
    for k, im in enumerate(images):
        r, c = divmod(k, cols)
        grid[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = cv2.resize(im, (tile, tile), interpolation=cv2.INTER_AREA)
    return grid
