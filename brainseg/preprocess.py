"""The one preprocessing function: any slice array -> normalised float tensor, driven by config.

Training, evaluation, the CLI and the app all call :func:`preprocess`, so they cannot drift.
"""
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from .config import FLAIR_INDEX, PreprocessConfig

ArrayLike = Union[np.ndarray, torch.Tensor]


def to_chw_float(image: ArrayLike) -> torch.Tensor:
    """HxWxC (numpy, any dtype) or CxHxW (tensor) -> float32 CxHxW tensor, values unchanged."""
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim != 3:
            raise ValueError(f"Expected an HxWxC slice, got an array of shape {image.shape}")
        return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)
    if image.ndim != 3:
        raise ValueError(f"Expected a CxHxW tensor, got shape {tuple(image.shape)}")
    return image.float()


def brain_pixels(x: torch.Tensor) -> torch.Tensor:
    """Brain pixels of a CxHxW slice, flattened (bool, H*W): above the slice's minimum in any channel."""
    flat = x.reshape(x.shape[0], -1)
    return flat.amax(0) > flat.min()


def brain_area_px(image: ArrayLike) -> int:
    """How many pixels of a slice (HxWxC array or CxHxW tensor, at its own size) are brain, by the rule
    the normalisation uses: the figure behind "% of the brain"."""
    return int(brain_pixels(to_chw_float(image)).sum())


def normalize_slice(x: torch.Tensor, clip: float = 5.0, eps: float = 1e-6) -> torch.Tensor:
    """Standardise each channel of one CxHxW slice with the statistics of its brain pixels.

    Brain pixels are those above the slice's minimum in any channel (the background is the
    darkest value); slices with almost no brain fall back to all pixels. Using the slice's own
    statistics makes 8-bit, 16-bit and float copies of a scan, and brightness or contrast
    changes per channel, give the same tensor, and needs nothing beyond the slice itself.
    """
    flat = x.reshape(x.shape[0], -1)
    brain = brain_pixels(x)
    if brain.sum() < 0.01 * brain.numel():
        brain = torch.ones_like(brain)
    px = flat[:, brain]
    mean = px.mean(1, keepdim=True)
    std = px.std(1, keepdim=True) if px.shape[1] > 1 else torch.ones_like(mean)
    out = (flat - mean) / (std + eps * (1 + mean.abs()))
    return out.clamp_(-clip, clip).reshape_as(x)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear (antialiased) resize of a CxHxW tensor to size x size; a no-op at that size."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


def preprocess(image: ArrayLike, cfg: PreprocessConfig) -> torch.Tensor:
    """One slice (HxWxC array in the config's channel order, any dtype) -> model input CxSxS.

    Args:
        image: HxWxC numpy array or CxHxW tensor; uint8, uint16 or float.
        cfg: the checkpoint's config (``image_size``, ``in_chans``, ``normalization``, ``clip``).
    Returns:
        float32 tensor of shape (in_chans, image_size, image_size).
    """
    x = to_chw_float(image)
    if x.shape[0] != cfg.in_chans:
        raise ValueError(f"Expected {cfg.in_chans} channels ({', '.join(cfg.channel_order)}), got {x.shape[0]}")
    x = resize(x, cfg.image_size)
    if cfg.normalization != "slice_zscore":
        raise ValueError(f"Unknown normalization {cfg.normalization!r}; this version knows 'slice_zscore'")
    return normalize_slice(x, cfg.clip)


def context_offsets(k: int):
    """The neighbours a 2.5-D input holds, as offsets in the stack: ``-k .. -1, 1 .. k``."""
    return [o for o in range(-k, k + 1) if o]


def add_context(x: torch.Tensor, k: int, neighbours: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Preprocessed slices (N, C, S, S) -> (N, C + 2k, S, S): each slice, then its neighbours' FLAIR.

    ``neighbours`` (N, 2k, C, S, S), each slice's neighbours at :func:`context_offsets`, already
    preprocessed (each with its own statistics, as it would be alone); None: the slice stands in for
    every neighbour (a single slice). ``k = 0`` returns ``x``.
    """
    if k == 0:
        return x
    if neighbours is None:
        flair = x[:, FLAIR_INDEX:FLAIR_INDEX + 1].expand(-1, 2 * k, -1, -1)
    else:
        flair = neighbours[:, :, FLAIR_INDEX]
    return torch.cat([x, flair], 1)


def neighbour_indices(n: int, k: int) -> np.ndarray:
    """(n, 2k) stack indices of each slice's neighbours at :func:`context_offsets`, clamped at the ends of the
    stack (a case's first slice stands in for the one below it)."""
    return np.clip(np.arange(n)[:, None] + np.array(context_offsets(k), dtype=np.int64)[None], 0, n - 1)


def preprocess_stack(images, cfg: PreprocessConfig) -> torch.Tensor:
    """One case's slices in stack order -> the segmenter's inputs (N, model_in_chans, S, S), a 2.5-D
    model's neighbours included (each slice preprocessed once, alone, then stacked)."""
    x = torch.stack([preprocess(im, cfg) for im in images])
    k = getattr(cfg, "context_slices", 0)
    return add_context(x, k, x[torch.from_numpy(neighbour_indices(len(x), k))]) if k else x
