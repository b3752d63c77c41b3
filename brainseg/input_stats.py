"""The statistics the input check reads from a slice or a stack (no model: numpy and OpenCV at 128 px)."""
from dataclasses import dataclass, field
from typing import Optional, Sequence

import cv2
import numpy as np

SIZE = 128  # statistics are computed at this size: cheap, and independent of the upload's size
QUANTILES = (5, 25, 50, 75, 95)
# An integer image whose brightest value is this low is near-black (the empty slices above the head: noise of
# a few grey levels), so no part of it is a bright background. The largest such real slice that the
# bright-background rule refused on folds 0, 2 and 3 had a range of 12.25; 16 is 1/16 of the 8-bit range.
FAINT_MAX = 16


def _small(image: np.ndarray) -> np.ndarray:
    """HxWxC (any dtype) -> SIZExSIZEx3 float32 (a single channel replicated), OpenCV's area average."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[..., None]
    f = a.shape[0] // SIZE
    if a.dtype == np.uint8 and a.shape[0] == a.shape[1] == f * SIZE and 1 < f <= 16:
        # an 8-bit slice f times the size (256 x 256 is kaggle_3m's): scaled by f*f, each block's mean is its sum,
        # exact in 16 bits, so the same figures come from a 16-bit resize without a float copy of the upload
        a = a.astype(np.uint16)
        a *= f * f
        a = cv2.resize(a, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
        a = a.astype(np.float32) * np.float32(1 / (f * f))
    else:
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
    faint: bool = False  # near-black (FAINT_MAX): few grey levels and no bright background are expected
    small: Optional[np.ndarray] = None  # the slice at SIZE x SIZE x 3, float32: the input CNNs start from it


def slice_stats(image: np.ndarray, joint: bool = True) -> SliceStats:
    """Statistics of one slice (HxW, HxWx1 or HxWx3; uint8, uint16 or float), at SIZE x SIZE.

    The foreground is what lies above 5 % of the range over the darkest value, as the head does on
    the black background of an MRI slice. Intensities are read relative to each channel's 99th
    percentile inside its foreground, so 8-bit, 16-bit and float copies agree. Per channel: quantiles,
    skew, dark and saturated shares, texture (Laplacian), grey-level entropy (a drawing or a phantom
    has few grey levels), the share of edge pixels, and how bright the rim is against the inside.
    ``joint=False`` skips :func:`joint_stats` (only the channel regressions read it, not the input CNN).
    """
    # one 2-D plane a channel: per-channel work runs on contiguous memory, and each array stays small
    # (64 kB: a (SIZE, SIZE, 3) temporary is past malloc's mmap threshold, and paying its page faults
    # a dozen times a call cost more than the statistics themselves)
    small = _small(image)
    planes = cv2.split(small)
    ranges = [cv2.minMaxLoc(x)[:2] for x in planes]
    lo, hi = np.array([r[0] for r in ranges]), np.array([r[1] for r in ranges])
    # 0 = darkest, 1 = brightest, per channel
    rel = [(x - np.float32(a)) / np.float32(max(b - a, 1e-6)) for x, (a, b) in zip(planes, ranges)]
    flat_rel = [x.ravel() for x in rel]
    fg_c = [x > 0.05 for x in flat_rel]
    rel_max = np.maximum(np.maximum(rel[0], rel[1]), rel[2])
    fg = rel_max > 0.05  # above the background in any channel
    edges = lambda x: np.concatenate([x[:3].ravel(), x[-3:].ravel(), x[:, :3].ravel(), x[:, -3:].ravel()])  # noqa: E731
    border = edges(fg)
    replicated = bool(np.array_equal(planes[0], planes[1]) and np.array_equal(planes[1], planes[2]))
    share_c = np.array([m.mean() for m in fg_c])
    if float((hi - lo).max()) <= 1e-6 * max(1.0, float(np.abs(hi).max())) or fg.mean() < 0.02 or share_c.min() < 0.005:
        return SliceStats(np.zeros(N_IMAGE_STATS), np.zeros((3, N_CHANNEL_STATS)), True, False,
                          float(border.mean()), replicated, small=small)
    inner = cv2.erode(fg.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    rim = fg & ~inner
    rows = []
    for c in range(3):
        x, sel = rel[c], fg_c[c]
        xv = np.sort(flat_rel[c][sel])  # sorted once: the quantiles and the dark and saturated shares read it
        p = _percentiles(xv, (99, *QUANTILES))
        p99 = max(float(p[0]), 1e-6)
        v = xv / p99
        q = p[1:] / p99
        d = v - v.mean()
        d2 = d * d
        skew = float((d2 * d).mean()) / (float(np.sqrt(d2.mean())) + 1e-6) ** 3
        hist = np.bincount(np.minimum((np.clip(v, 0, 1) * 32).astype(np.int64), 31), minlength=32) / v.size
        entropy = -float((hist[hist > 0] * np.log2(hist[hist > 0])).sum())
        texture = float(np.abs(cv2.Laplacian(x, cv2.CV_32F).ravel()[sel]).mean()) / (float(xv.mean()) + 1e-6)
        smooth = cv2.GaussianBlur(x, (0, 0), 1.0)  # edge pixels: |gradient| > 0.1 after a light blur
        grad = cv2.magnitude(cv2.Sobel(smooth, cv2.CV_32F, 1, 0), cv2.Sobel(smooth, cv2.CV_32F, 0, 1)).ravel()[sel]
        rim_ratio = (float(x[rim].mean()) if rim.any() else 1.0) / \
            (float(x[inner].mean()) + 1e-6 if inner.any() else 1.0)
        dark, saturated = np.searchsorted(v, 0.2, "left") / v.size, 1 - np.searchsorted(v, 0.95, "right") / v.size
        rows.append([*q, skew, dark, saturated, np.log(texture + 1e-3), np.log(rim_ratio + 1e-3), entropy,
                     float((grad > 0.1).mean())])
    channels = np.array(rows)
    keep = fg.ravel()
    px = np.stack([f[keep] for f in flat_rel])  # (3, N)
    corr = np.ones(3) if replicated else _correlations(px)
    faint = np.issubdtype(np.asarray(image).dtype, np.integer) and float(hi.max()) <= FAINT_MAX
    bright_border = bool(_median(edges(rel_max)) > 0.5) and not faint
    image_vec = np.concatenate([[float(fg.mean()), float(border.mean()), np.log(fg.sum() / max(inner.sum(), 1))],
                                channels.ravel(), corr])
    return SliceStats(image_vec, channels, False, bright_border, float(border.mean()), replicated,
                      joint_stats(px) if joint else np.zeros((3, 3, 3)), faint, small)


def _median(x: np.ndarray) -> float:
    """``np.median`` of a 1-D array, without its overhead (a few hundred values)."""
    s = np.sort(x)
    k = s.size // 2
    return float(s[k]) if s.size % 2 else float((s[k - 1] + s[k]) / 2)


def _percentiles(s: np.ndarray, q) -> np.ndarray:
    """``np.percentile(s, q)`` (its default linear interpolation) of an already sorted 1-D ``s``: a sort is
    several times faster than numpy's multi-quantile partition on a slice's ~10 k pixels."""
    pos = np.asarray(q, np.float64) / 100 * (s.size - 1)
    lo = np.floor(pos).astype(np.int64)
    a, b = s[lo].astype(np.float64), s[np.minimum(lo + 1, s.size - 1)].astype(np.float64)
    return a + (b - a) * (pos - lo)


def _correlations(px: np.ndarray) -> np.ndarray:
    """The (0,1), (0,2), (1,2) correlations of the rows of (3, N) ``px`` (1 for a constant row)."""
    d = px - px.mean(1, keepdims=True)
    cov = np.array([[float(np.dot(d[i], d[j])) for j in range(3)] for i in range(3)])  # 1-D dots beat a gemm here
    sd = np.sqrt(np.diag(cov))
    with np.errstate(divide="ignore", invalid="ignore"):
        c = cov / np.outer(sd, sd)
    return np.nan_to_num(np.array([c[0, 1], c[0, 2], c[1, 2]]), nan=1.0)


def joint_stats(px: np.ndarray) -> np.ndarray:
    """(3, 3, 3) from the (3, N) foreground pixels: the mean of channel j over the pixels where channel i is
    in its lowest quarter, highest quarter and highest 5 %: how the channels' contrasts relate (FLAIR and T1
    disagree)."""
    px = px.astype(np.float64)
    p = np.percentile(px, [99, 25, 75, 95], axis=1)  # (4, 3); the quantiles of v = px / p99 are p / p99
    p99 = np.maximum(p[0], 1e-6)
    v = px / p99[:, None]
    q = p[1:] / p99
    sel = np.concatenate([v <= q[0][:, None], v >= q[1][:, None], v >= q[2][:, None]]).astype(np.float64)  # (9, N)
    means = (sel @ v.T) / sel.sum(1)[:, None]  # (9, 3): row k * 3 + i, column j
    return means.reshape(3, 3, 3).transpose(1, 2, 0)


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
