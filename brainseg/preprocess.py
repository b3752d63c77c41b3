"""The one preprocessing function: any slice array -> normalised float tensor, driven by config.

Training, evaluation, the CLI and the app all call :func:`preprocess`, so they cannot drift.
"""
from typing import Callable, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from .config import PreprocessConfig

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


def preprocess(image: ArrayLike, cfg: PreprocessConfig,
               augment: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """One slice (HxWxC array in the config's channel order, any dtype) -> model input CxSxS.

    Args:
        image: HxWxC numpy array or CxHxW tensor; uint8, uint16 or float.
        cfg: the checkpoint's config (``image_size``, ``in_chans``, ``normalization``, ``clip``).
        augment: training only: applied to the resized slice (values as read) before normalisation, so
            training augments exactly what inference would normalise (:class:`brainseg.data.SliceDataset`).
    Returns:
        float32 tensor of shape (in_chans, image_size, image_size).
    """
    x = to_chw_float(image)
    if x.shape[0] != cfg.in_chans:
        raise ValueError(f"Expected {cfg.in_chans} channels ({', '.join(cfg.channel_order)}), got {x.shape[0]}")
    if cfg.normalization != "slice_zscore":
        raise ValueError(f"Unknown normalization {cfg.normalization!r}; this version knows 'slice_zscore'")
    x = resize(x, cfg.image_size)
    if augment is not None:
        x = augment(x)
    return normalize_slice(x, cfg.clip)
