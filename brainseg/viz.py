"""Figures: overlays and outlines, a case's probability plot, montage and viewer frames, training curves.

Everything here draws; nothing decides. Masks, probabilities and verdicts come from the
Predictor and the case analysis, so a figure cannot disagree with the numbers beside it.
Matplotlib is used through ``Figure`` (no pyplot), which is safe in a server's worker threads.
"""
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import cv2
import numpy as np

from .config import FLAIR_INDEX

PathLike = Union[str, Path]
PRED_RGB = (255, 0, 0)       # predicted tumour: red tint and outline
TRUTH_RGB = (0, 255, 0)      # ground truth: green outline
DEFAULT_ALPHA = 0.35


def _figure(size):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_curves(history: List[Dict], path: PathLike, metric: str) -> None:
    """Training and validation loss, and the validation ``metric``, per epoch, as a PNG."""
    ep = [h["epoch"] for h in history]
    fig = _figure((9, 3.5))
    a, b = fig.subplots(1, 2)
    a.plot(ep, [h["train_loss"] for h in history], "o-", label="train loss")
    a.set_xlabel("epoch"), a.set_title("loss"), a.legend()
    b.plot(ep, [h["val"][metric] for h in history], "o-", color="C1")
    b.set_xlabel("epoch"), b.set_title(f"validation {metric}")
    fig.tight_layout()
    fig.savefig(path)


def to_display(channel: np.ndarray) -> np.ndarray:
    """Any-dtype 2-D channel -> uint8 for display, stretched between its 1st and 99.5th percentiles."""
    c = channel.astype(np.float32)
    lo, hi = np.percentile(c, [1, 99.5]) if c.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1
    return (np.clip((c - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def flair_of(image: np.ndarray) -> np.ndarray:
    """The FLAIR channel of an HxWx3 slice (pre, FLAIR, post), or the slice itself when it is FLAIR alone."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] >= 3:
        return image[..., FLAIR_INDEX]
    return image.reshape(image.shape[:2])


def overlay(flair: np.ndarray, pred: Optional[np.ndarray], truth: Optional[np.ndarray] = None,
            alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """RGB uint8: FLAIR in grey, predicted tumour tinted red (``alpha``: 0 none, 1 solid) with a red
    outline, truth outlined green. The outlines stay at any ``alpha`` so the mask is never hidden."""
    alpha = float(np.clip(alpha, 0.0, 1.0))
    grey = to_display(flair)
    rgb = np.stack([grey] * 3, -1)
    thick = max(1, round(max(grey.shape) / 256))
    if pred is not None and pred.any():
        p = pred.astype(bool)
        rgb[p] = ((1 - alpha) * rgb[p] + alpha * np.array(PRED_RGB)).astype(np.uint8)
        cs, _ = cv2.findContours(p.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(rgb, cs, -1, (255, 40, 40), thick)
    if truth is not None and truth.any():
        cs, _ = cv2.findContours(truth.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(rgb, cs, -1, TRUTH_RGB, thick)
    return rgb


def fit(image: np.ndarray, max_side: int, nearest: bool = False) -> np.ndarray:
    """``image`` shrunk so its longer side is at most ``max_side`` (never enlarged: the page does that)."""
    h, w = image.shape[:2]
    s = max_side / max(h, w)
    if s >= 1:
        return image
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return cv2.resize(image, size, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)


def slice_overlay(image: np.ndarray, pred: Optional[np.ndarray], truth: Optional[np.ndarray] = None,
                  alpha: float = DEFAULT_ALPHA, max_side: Optional[int] = None) -> np.ndarray:
    """:func:`overlay` on a slice's FLAIR, first shrunk with :func:`fit` when ``max_side`` is given
    (a large slice stays quick to send)."""
    flair = to_display(flair_of(image))
    if max_side:
        flair = fit(flair, max_side)
        size = flair.shape[1], flair.shape[0]
        if pred is not None:
            pred = cv2.resize(np.asarray(pred, np.uint8), size, interpolation=cv2.INTER_NEAREST)
        if truth is not None:
            truth = cv2.resize(np.asarray(truth, np.uint8), size, interpolation=cv2.INTER_NEAREST)
    return overlay(flair, pred, truth, alpha)


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


# ---------------------------------------------------------------- a case

def case_frame(case_input, result, index: int, alpha: float = DEFAULT_ALPHA,
               max_side: Optional[int] = None) -> np.ndarray:
    """One slice of a case (at full size, or fitted as :func:`fit`): FLAIR, predicted tumour in red,
    ground truth outlined green."""
    truth = case_input.masks[index] if case_input.masks is not None else None
    rgb = slice_overlay(case_input.slices[index], result.masks[index], truth, alpha, max_side)
    m = getattr(result, "measurements", None)
    if m and m.get("measured_slice_index") == index and m.get("longest_ends_px"):
        draw_diameters(rgb, m, rgb.shape[0] / result.masks[index].shape[0])
    return rgb


def draw_diameters(rgb: np.ndarray, m: dict, scale: float = 1.0) -> np.ndarray:
    """The longest diameter (yellow) and the longest perpendicular (cyan) of the measured slice, in place."""
    thick = max(1, round(max(rgb.shape[:2]) / 256))
    for key, colour in (("longest_ends_px", (255, 220, 0)), ("perpendicular_ends_px", (0, 220, 255))):
        (r0, c0), (r1, c1) = m[key]
        cv2.line(rgb, (round(c0 * scale), round(r0 * scale)), (round(c1 * scale), round(r1 * scale)), colour, thick,
                 cv2.LINE_AA)
    return rgb


def case_montage(case_input, result, cols: Optional[int] = None, tile: int = 128) -> np.ndarray:
    """RGB montage of every slice of a case (as :func:`case_frame`), each tile marked with its slice number."""
    n = len(case_input.slices)
    cols = cols or (8 if n <= 64 else 12)
    grid = montage([case_frame(case_input, result, i) for i in range(n)], cols=cols, tile=tile)
    cols = min(cols, n)
    for i, num in enumerate(result.slice_numbers):
        r, c = divmod(i, cols)
        cv2.putText(grid, str(num), (c * tile + 3, r * tile + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 0), 1,
                    cv2.LINE_AA)
    return grid


def plot_probabilities(result, path: PathLike) -> Path:
    """PNG of :func:`case_figure`: tumour probability along the stack (top), tumour area per slice (bottom)."""
    case_figure(result).savefig(str(path))
    return Path(path)


def case_figure(result):
    """The case plot as a matplotlib Figure.

    Names are drawn as plain text (a ``$`` in a file name is not maths) and slices are whole
    numbers on the axis. ``result`` is a case analysis result (slice_numbers, probabilities,
    detected, areas_px, detection_threshold, volume and optional truth areas and Dice).
    """
    from matplotlib.ticker import MaxNLocator

    x = np.asarray(result.slice_numbers)
    fig = _figure((8, 4.8))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    probs = np.asarray(result.probabilities, float)
    det = np.asarray(result.detected, bool)
    thr = float(result.detection_threshold)
    top.plot(x, probs, "-", color="C0", lw=1.5)
    top.scatter(x[det], probs[det], color="C3", s=18, zorder=3, label="tumour detected")
    top.scatter(x[~det], probs[~det], color="C0", s=12, zorder=3, label="no tumour")
    top.axhline(thr, color="grey", ls="--", lw=1, label=f"detection threshold {thr:.2f}")
    top.set_ylim(-0.03, 1.03)
    top.set_ylabel("tumour probability")
    volume = f"{result.volume_voxels:,} tumour voxels"
    if getattr(result, "volume_ml", None) is not None:
        volume += f" ({result.volume_ml:.2f} mL)"
    dice = getattr(result, "dice", None)
    title = f"{result.case}: {len(x)} slices, {volume}" + (f", Dice {dice:.3f}" if dice is not None else "")
    top.set_title(title, fontsize=10, parse_math=False)
    top.legend(fontsize=8, loc="upper right")
    areas = np.asarray(result.areas_px)
    truth = getattr(result, "truth_areas_px", None)
    bottom.bar(x, areas, color="C3", width=0.8, label="predicted")
    if truth is not None:
        bottom.step(x, truth, where="mid", color="C2", lw=1.5, label="ground truth")
        bottom.legend(fontsize=8, loc="upper right")
    largest = getattr(result, "largest_area_slice", None)
    if largest is not None:
        bottom.annotate(f"largest: slice {largest}", (largest, int(areas.max())), fontsize=8, ha="center",
                        va="bottom")
    bottom.set_ylim(0, max(int(areas.max(initial=0)), max(truth or [0])) * 1.25 + 1)
    bottom.set_ylabel("tumour area (px)")
    bottom.set_xlabel("slice")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig


def channel_strip(image: np.ndarray, tile: int) -> np.ndarray:
    """The three channels of an HxWx3 slice side by side, labelled, RGB: a wrong channel order shows."""
    tiles = []
    for c in range(3):
        t = cv2.cvtColor(fit(to_display(image[..., c]), tile), cv2.COLOR_GRAY2RGB)
        cv2.putText(t, f"channel {c + 1}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 0), 1, cv2.LINE_AA)
        tiles.append(t)
    return np.concatenate(tiles, axis=1)
