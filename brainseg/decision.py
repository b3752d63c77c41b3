"""One slice's answer from the models' outputs, decided once: the rules the Predictor applies to every slice
and that :mod:`brainseg.calibrate` scores its candidates with (issue 9.2: "one answer, not two").

- the slice's tumour probability is the fused detection (classifier logit + segmenter evidence), else the
  classifier's, else the segmenter's highest pixel;
- ``detected = probability >= detection_threshold`` (``None``, no verdict, where the input check refused the slice);
- the mask is :func:`brainseg.postprocess.postprocess_mask` of the pixel map at the input's size, drawn iff detected.
"""
import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .postprocess import postprocess_mask


def tidy(value: float) -> float:
    """A threshold as people read it: 0.4000000059604645 (a float32 stored as JSON) becomes 0.4."""
    return round(float(value), 6)


def check_threshold(value, what: str = "pixel threshold") -> float:
    """``value`` as a probability threshold in [0, 1] (tidied), or a ValueError naming the value."""
    if isinstance(value, bool):
        raise ValueError(f"The {what} must be a number between 0 and 1, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"The {what} must be a number between 0 and 1, got {value!r}") from None
    if not math.isfinite(v) or not 0.0 <= v <= 1.0:
        raise ValueError(f"The {what} must be a finite number between 0 and 1, got {v!r}")
    return tidy(v)


@dataclass
class Prediction:
    """One slice's answer; whatever is shown about the slice comes from here.

    ``probability`` is the slice's tumour probability, ``detected`` the verdict
    (``probability >= detection_threshold``), ``mask`` uint8 0/1 at the input's height and width,
    drawn iff detected (a Prediction that breaks this rule cannot be built). ``prob_map`` holds the
    segmenter's pixel probabilities at its input size (None where the segmenter did not run: a
    slice the classifier alone called tumour-free, or when not asked for). ``pixel_threshold`` and
    ``detection_threshold`` are the thresholds used, tidied (0.4, not 0.4000000059604645).
    ``removed_by_case_rule``: the slice was detected on its own, but its whole mask lay outside what
    the case rule keeps (:meth:`Predictor.predict_case`), so it is not detected in the case's answer.
    ``input_check``: :meth:`brainseg.input_check.CheckResult.as_dict` (status ok/warn/refuse, reasons,
    score); a refused slice has no verdict (``detected`` None, empty mask). ``review``: why the answer
    is uncertain ("uncertain - review"), empty when it is not (:mod:`brainseg.uncertainty`).
    """

    probability: float
    detected: bool
    mask: np.ndarray
    input_shape: List[int] = field(default_factory=list)
    channels_replicated: bool = False
    prob_map: Optional[np.ndarray] = None
    pixel_threshold: Optional[float] = None
    detection_threshold: Optional[float] = None
    removed_by_case_rule: bool = False
    input_check: Optional[dict] = None
    review: List[str] = field(default_factory=list)

    def __post_init__(self):
        self.mask = np.asarray(self.mask).astype(np.uint8, copy=False)
        self.detected = None if self.detected is None else bool(self.detected)
        if not self.detected and self.mask.any():
            raise ValueError("A slice not detected as tumour cannot have a tumour mask: the mask is drawn iff "
                             "the slice is detected")

    @property
    def tumor_area_px(self) -> int:
        return int(self.mask.sum())

    @property
    def label(self) -> str:
        """The verdict in words, as the app shows it."""
        if self.detected is None:
            return "no verdict"
        return "tumour" if self.detected else "no tumour"

    @property
    def status(self) -> str:
        """The input check's outcome: 'ok', 'warn' or 'refuse' ('ok' when no check ran)."""
        return (self.input_check or {}).get("status", "ok")


def segmenter_evidence(probs: torch.Tensor, top_k: int) -> torch.Tensor:
    """Logit of the mean of each slice's ``top_k`` highest pixel probabilities, (N,).

    How sure the segmenter is that some tumour is there; unlike the single maximum it is not
    decided by one noisy pixel, and unlike the area it does not wait for the threshold.
    """
    flat = probs.flatten(1).float()
    top = flat.topk(min(int(top_k), flat.shape[1]), dim=1).values.mean(1)
    return torch.logit(top, eps=1e-4)


def fuse_detection(classifier_logits: torch.Tensor, evidence: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """Tumour probability from both models: ``sigmoid(w0 * classifier_logit + w1 * evidence + b)``."""
    w0, w1, b = (float(w) for w in weights)
    return torch.sigmoid(w0 * classifier_logits.float() + w1 * evidence + b)


def classifier_probability(logits, temperature: float):
    """The classifier's calibrated tumour probability, ``sigmoid(logit / temperature)``; an array gives an array."""
    p = torch.sigmoid(torch.as_tensor(logits) / temperature)
    return p.numpy() if isinstance(logits, np.ndarray) else p


def is_detected(probability, detection_threshold: float):
    """The slice verdict: ``probability >= detection_threshold`` (a float or an array of them)."""
    return probability >= detection_threshold


def upsample(prob_maps: torch.Tensor, size: Tuple[int, int]) -> np.ndarray:
    """Pixel maps (N, S, S) at the model's size -> (N, H, W) float32 at the slices' own size (bilinear)."""
    full = F.interpolate(prob_maps[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False)
    return full[:, 0].cpu().numpy()


def draw_mask(full_map: Optional[np.ndarray], detected: bool, size: Tuple[int, int], pixel_threshold: float,
              min_component_px: int, model_size: int) -> np.ndarray:
    """A slice's mask (uint8, ``size``): :func:`brainseg.postprocess.postprocess_mask` of ``full_map`` (:func:`upsample`
    of its pixel map; None where the segmenter did not run) at the pixel threshold, drawn iff ``detected``."""
    if not detected or full_map is None:
        return np.zeros(size, np.uint8)
    return postprocess_mask(full_map, pixel_threshold, min_component_px, model_size, detected)


def decide(probability: float, full_map: Optional[np.ndarray], size: Tuple[int, int], pixel_threshold: float,
           detection_threshold: float, min_component_px: int, model_size: int) -> Tuple[bool, np.ndarray]:
    """One slice's (verdict, mask) from the models' outputs: the rule the Predictor applies to every slice
    (:func:`is_detected`, then :func:`draw_mask`). :mod:`brainseg.calibrate` scores its candidates with the same two."""
    detected = bool(is_detected(probability, detection_threshold))
    return detected, draw_mask(full_map, detected, size, pixel_threshold, min_component_px, model_size)


def as_three_channels(image: np.ndarray, in_chans: int = 3):
    """HxW or HxWx1 (a FLAIR channel alone) -> HxWx3 by replication; returns (image, replicated)."""
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3:
        raise ValueError(f"Expected an HxW or HxWxC image, got shape {image.shape}")
    if image.shape[-1] == 1 and in_chans > 1:
        return np.repeat(image, in_chans, axis=-1), True
    if image.shape[-1] != in_chans:
        raise ValueError(f"Expected {in_chans} channels (pre-contrast, FLAIR, post-contrast) or 1 (FLAIR), "
                         f"got {image.shape[-1]}")
    return image, False
