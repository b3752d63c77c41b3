"""Case-level (3-D) post-processing: connected components across the slices of one case.

A lower-grade glioma is usually one connected FLAIR abnormality, while false positives are
small blobs on a few slices. Where the input is a whole case, components can therefore be judged
in 3-D (the published U-Net of Buda et al. keeps the largest). Which rule to apply is a choice
made on out-of-fold predictions (see the README); this module only applies it.
"""
import numpy as np
from scipy import ndimage

from .config import CASE_RULES  # the one list; config.json is checked against it at load
from .postprocess import scaled_min_component_px


def label_3d(masks: np.ndarray) -> tuple:
    """Label the 26-connected components of a (slices, H, W) stack: (labels, sizes in voxels, index 0 unused)."""
    masks = np.asarray(masks, bool)
    if masks.ndim != 3:
        raise ValueError(f"Expected a (slices, H, W) stack of masks, got shape {masks.shape}")
    labels, n = ndimage.label(masks, structure=np.ones((3, 3, 3), bool))
    return labels, np.bincount(labels.ravel(), minlength=n + 1)


def filter_components_3d(masks: np.ndarray, rule: str = "none", min_voxels: int = 0) -> np.ndarray:
    """Apply a case-level rule to a (slices, H, W) stack of binary masks; returns uint8 0/1 of the same shape.

    Args:
        masks: the per-slice masks of one case, in slice order.
        rule: ``"none"`` (unchanged), ``"largest"`` (keep the largest 3-D component only) or
            ``"min_voxels"`` (drop 3-D components of fewer than ``min_voxels`` voxels).
        min_voxels: the size limit of ``"min_voxels"``, counted at the masks' resolution.

    Example:
        >>> m = np.zeros((3, 8, 8), np.uint8); m[0:2, 1:4, 1:4] = 1; m[2, 6, 6] = 1
        >>> int(filter_components_3d(m, "largest").sum())
        18
    """
    if rule not in CASE_RULES:
        raise ValueError(f"Unknown case rule {rule!r}: use one of {', '.join(CASE_RULES)}")
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"Expected a (slices, H, W) stack of masks, got shape {masks.shape}")
    if rule == "none" or not masks.any():
        return (masks > 0).astype(np.uint8)
    labels, sizes = label_3d(masks > 0)
    sizes[0] = 0
    if rule == "largest":
        keep = np.zeros(len(sizes), bool)
        keep[int(np.argmax(sizes))] = True
    else:
        keep = sizes >= max(int(min_voxels), 1)
        keep[0] = False
    return keep[labels].astype(np.uint8)


def apply_case_rule(masks: np.ndarray, rule: str, min_voxels: int, model_size: int) -> tuple:
    """The case rule as the product applies it (:meth:`Predictor.predict_case`, ``brainseg.calibrate``) on a
    (slices, H, W) stack: ``min_voxels`` is counted at the model's ``model_size`` x ``model_size`` input and
    scaled to the masks' size, as ``min_component_px`` is. Returns (the kept masks, uint8 0/1, and a bool per
    slice: it had a mask and the rule left it none, so the slice is no longer detected)."""
    masks = np.asarray(masks)
    kept = filter_components_3d(masks, rule, scaled_min_component_px(min_voxels, model_size, masks.shape[1:]))
    removed = masks.reshape(len(masks), -1).any(1) & ~kept.reshape(len(kept), -1).any(1)
    return kept, removed

