"""The statistics the input check reads from a slice or a stack (no model: numpy and OpenCV at 128 px)."""
from dataclasses import dataclass, field
from typing import Optional, Sequence  # noqa: F401

import cv2
import numpy as np

SIZE = 128  # statistics are computed at this size: cheap, and independent of the upload's size
QUANTILES = (5, 25, 50, 75, 95)


def _small(image: np.ndarray) -> np.ndarray:
    """HxWxC (any dtype) -> SIZExSIZEx3 float32 (a single channel replicated)."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[..., None]
    a = cv2.resize(np.ascontiguousarray(a, dtype=np.float32), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    a = a.reshape(SIZE, SIZE, -1)
    return np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a[..., :3]


@dataclass
class SliceStats:
    """The statistics the check reads from one slice (see :func:`slice_stats`)."""

    image: np.ndarray  # image_stats(): the vector the image distance is computed on
    channels: np.ndarray  # (3, k) channel_stats(): what tells FLAIR from the T1 channels
    blank: bool
    bright_border: bool
    border_foreground: float
    replicated: bool
    joint: np.ndarray = field(default_factory=lambda: np.zeros((3, 3, 3)))  # see joint_stats()


def slice_stats(image: np.ndarray) -> SliceStats:
    """Statistics of one slice (HxW, HxWx1 or HxWx3; uint8, uint16 or float), at SIZE x SIZE.

    The foreground is what lies above 5 % of the range over the darkest value, as the head does on
    the black background of an MRI slice. Intensities are read relative to each channel's 99th
    percentile inside its foreground, so 8-bit, 16-bit and float copies agree. Per channel: quantiles,
    skew, dark and saturated shares, texture (Laplacian), grey-level entropy (a drawing or a phantom
    has few grey levels), the share of edge pixels, and how bright the rim is against the inside.
    """
    a = _small(image)
    flat = a.reshape(-1, 3)
    lo, hi = flat.min(0), flat.max(0)
    rel = (a - lo) / np.maximum(hi - lo, 1e-6)  # 0 = the channel's darkest value, 1 its brightest
    fg_c = rel > 0.05
    fg = fg_c.any(-1)
    border_rel = np.concatenate([rel[:3].reshape(-1, 3), rel[-3:].reshape(-1, 3), rel[:, :3].reshape(-1, 3),
                                 rel[:, -3:].reshape(-1, 3)])
    border = np.concatenate([fg[:3].ravel(), fg[-3:].ravel(), fg[:, :3].ravel(), fg[:, -3:].ravel()])
    replicated = bool(np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 1], a[..., 2]))
    if float((hi - lo).max()) <= 1e-6 * max(1.0, float(np.abs(hi).max())) or fg.mean() < 0.02 or \
            min(fg_c[..., c].mean() for c in range(3)) < 0.005:
        return SliceStats(np.zeros(N_IMAGE_STATS), np.zeros((3, N_CHANNEL_STATS)), True, False,
                          float(border.mean()), replicated)
    inner = cv2.erode(fg.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    rim = fg & ~inner
    rows = []
    for c in range(3):
        x = rel[..., c]
        v = x[fg_c[..., c]]
        v = v / max(float(np.percentile(v, 99)), 1e-6)
        q = np.percentile(v, QUANTILES)
        z = (v - v.mean()) / (v.std() + 1e-6)
        hist = np.histogram(np.clip(v, 0, 1), bins=32, range=(0, 1))[0] / v.size
        entropy = -float((hist[hist > 0] * np.log2(hist[hist > 0])).sum())
        smooth = cv2.GaussianBlur(x, (0, 0), 1.0)
        grad = np.hypot(cv2.Sobel(smooth, cv2.CV_32F, 1, 0), cv2.Sobel(smooth, cv2.CV_32F, 0, 1))[fg_c[..., c]]
        lap = float(np.abs(cv2.Laplacian(x, cv2.CV_32F))[fg_c[..., c]].mean()) / (float(x[fg_c[..., c]].mean()) + 1e-6)
        rim_ratio = (float(x[rim].mean()) if rim.any() else 1.0) / (float(x[inner].mean()) + 1e-6 if inner.any() else 1.0)
        rows.append([*q, float((z ** 3).mean()), float((v < 0.2).mean()), float((v > 0.95).mean()),
                     np.log(lap + 1e-3), np.log(rim_ratio + 1e-3), entropy, float((grad > 0.1).mean())])
    channels = np.array(rows)
    c = np.corrcoef(rel[fg].T) if not replicated else np.ones((3, 3))
    corr = np.nan_to_num(np.array([c[0, 1], c[0, 2], c[1, 2]]), nan=1.0)
    bright_border = bool(np.median(border_rel.max(-1)) > 0.5)
    image_vec = np.concatenate([[float(fg.mean()), float(border.mean()), np.log(fg.sum() / max(inner.sum(), 1))],
                                channels.ravel(), corr])
    return SliceStats(image_vec, channels, False, bright_border, float(border.mean()), replicated,
                      joint_stats(rel[fg]))


def joint_stats(px: np.ndarray) -> np.ndarray:
    """(3, 3, 3): the mean of channel j over the foreground pixels where channel i is in its lowest
    quarter, highest quarter and highest 5 %: how the channels' contrasts relate (FLAIR and T1 disagree)."""
    v = px / np.maximum(np.percentile(px, 99, axis=0), 1e-6)
    out = np.zeros((3, 3, 3))
    for i in range(3):
        q25, q75, q95 = np.percentile(v[:, i], [25, 75, 95])
        for k, sel in enumerate((v[:, i] <= q25, v[:, i] >= q75, v[:, i] >= q95)):
            out[i, :, k] = v[sel].mean(0)
    return out


N_CHANNEL_STATS = len(QUANTILES) + 7
N_IMAGE_STATS = 3 + 3 * N_CHANNEL_STATS + 3
ENTROPY = N_CHANNEL_STATS - 2  # the column of channel_stats holding the grey-level entropy


def stack_coherence(images: Sequence[np.ndarray]) -> Optional[float]:
    """Median Dice of the head outlines of neighbouring slices (None under 3 slices)."""
    if len(images) < 3:
        return None
    masks = []
    for im in images:
        a = _small(im)
        rel = (a - a.reshape(-1, 3).min(0)) / np.maximum(np.ptp(a.reshape(-1, 3), 0), 1e-6)
        masks.append(rel.max(-1) > 0.05)
    d = [2 * (m1 & m2).sum() / max(m1.sum() + m2.sum(), 1) for m1, m2 in zip(masks, masks[1:])]
    return float(np.median(d))
