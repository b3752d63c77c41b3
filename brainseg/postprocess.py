"""From a slice's pixel probabilities to its mask: the one rule, shared by the Predictor and calibration.

    mask = (prob >= pixel_threshold), minus 8-connected components under ``min_component_px``
           (counted at the model's input size, so scaled to the map's size), emptied unless detected

The detection verdict is decided elsewhere (:class:`brainseg.inference.Predictor`) and passed in;
this module never re-decides it, so a slice's mask is drawn iff the slice is called tumour. A
detected slice always gets a mask: where the rule above leaves nothing (the segmenter's region is
under ``min_component_px``, or no pixel reaches the pixel threshold) it is :func:`evidence_region`.
"""
import cv2
import numpy as np


def remove_small_components(mask: np.ndarray, min_px: int) -> np.ndarray:
    """Drop 8-connected components smaller than ``min_px`` pixels; uint8 0/1 out."""
    mask = np.asarray(mask).astype(np.uint8)
    if min_px <= 0 or not mask.any():
        return mask
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = np.zeros(n, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_px
    return keep[labels].astype(np.uint8)


def scaled_min_component_px(min_component_px: int, model_size: int, shape) -> int:
    """``min_component_px`` (chosen at the model's ``model_size`` x ``model_size`` input) at a map of ``shape``:
    the same fraction of the slice, so a 512 px copy of a slice loses the same regions as the 256 px one."""
    h, w = int(shape[0]), int(shape[1])
    return int(round(min_component_px * (h * w) / float(model_size ** 2)))


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a 0/1 mask (empty in, empty out)."""
    mask = np.asarray(mask).astype(np.uint8)
    if not mask.any():
        return mask
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    return (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)


def evidence_region(prob: np.ndarray, pixel_threshold: float) -> np.ndarray:
    """Where a detected slice's tumour is, when the usual mask is empty: the largest region at the pixel
    threshold whatever its size; if no pixel reaches it, the region around the most likely pixel at half
    that pixel's probability (its full width at half maximum). Never empty unless ``prob`` is all zero."""
    region = largest_component(prob >= pixel_threshold)
    if region.any():
        return region
    peak = float(prob.max())
    if peak <= 0:
        return region
    n, labels = cv2.connectedComponents((prob >= 0.5 * peak).astype(np.uint8), connectivity=8)
    y, x = np.unravel_index(int(np.argmax(prob)), prob.shape)
    return (labels == labels[y, x]).astype(np.uint8)


def postprocess_mask(prob: np.ndarray, pixel_threshold: float, min_component_px: int, model_size: int,
                     detected: bool = True) -> np.ndarray:
    """One slice's probability map (HxW, any size) -> uint8 0/1 mask of the same size.

    Args:
        prob: pixel tumour probabilities, already at the size the mask is wanted.
        pixel_threshold: a pixel is tumour when its probability is >= this.
        min_component_px: smallest kept component, in pixels at the model's input size.
        model_size: the model's input side (the config's ``image_size``).
        detected: the slice's detection verdict; False empties the mask (the gate), True guarantees
            one (:func:`evidence_region` where the threshold and component rule leave nothing).
    Example:
        >>> postprocess_mask(np.full((4, 4), 0.9), 0.5, 0, 4).sum()
        16
    """
    prob = np.asarray(prob)
    if prob.ndim != 2:
        raise ValueError(f"Expected an HxW probability map, got shape {prob.shape}")
    if not detected:
        return np.zeros(prob.shape, np.uint8)
    mask = (prob >= pixel_threshold).astype(np.uint8)
    mask = remove_small_components(mask, scaled_min_component_px(min_component_px, model_size, prob.shape))
    return mask if mask.any() else evidence_region(prob, pixel_threshold)
