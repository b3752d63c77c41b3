"""When the answer is not sure: the "uncertain - review" marks the Predictor puts on a slice.

Two signals, both free (no extra forward pass):

- the slice's tumour probability lies near the detection threshold (within ``logit_margin`` in logit
  units), so a small change of the input could flip the verdict;
- the outline of a detected slice is unstable: moving the pixel threshold by ``pixel_shift`` either way
  changes the mask's area by more than ``area_ratio`` (most of the mask is borderline pixels).

The margins were chosen on the dev slices (``benchmarks/bench_input_check.py`` measures how the errors
concentrate in the marked slices); they live here, in one place, and the Predictor applies them.
"""
import math
from dataclasses import dataclass
from typing import List, Optional

import numpy as np


@dataclass
class ReviewConfig:
    """How close to the threshold, or how unstable an outline, marks a slice "uncertain - review"."""

    logit_margin: float = 1.0
    pixel_shift: float = 0.2
    area_ratio: float = 0.5


def _logit(p: float) -> float:
    p = min(max(float(p), 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def review_reasons(probability: float, detection_threshold: float, prob_map, pixel_threshold: float,
                   detected: Optional[bool], config: ReviewConfig = ReviewConfig()) -> List[str]:
    """Why this slice's answer is uncertain (empty: it is not). ``prob_map``: the segmenter's pixel
    probabilities at its input size (tensor or array), or None."""
    reasons = []
    gap = _logit(probability) - _logit(detection_threshold)
    if abs(gap) < config.logit_margin:
        reasons.append(f"probability {probability:.2f} is close to the detection threshold {detection_threshold:.2f}")
    if detected and prob_map is not None:
        m = np.asarray(prob_map, np.float32) if not hasattr(prob_map, "numpy") else prob_map.float().cpu().numpy()
        wide = int((m >= max(pixel_threshold - config.pixel_shift, 0.01)).sum())
        tight = int((m >= min(pixel_threshold + config.pixel_shift, 0.99)).sum())
        if wide and tight / wide < config.area_ratio:
            reasons.append(f"unstable outline: the tumour area changes {wide / max(tight, 1):.1f}x when the pixel "
                           f"threshold moves by {config.pixel_shift:g}")
    return reasons
