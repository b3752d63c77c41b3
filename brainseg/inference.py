"""Predictor: preprocessing from each checkpoint's config, batched forward, threshold, map back to input size."""
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .preprocess import preprocess


@dataclass
class Prediction:
    """One slice's answer. ``mask`` is uint8 0/1 at the input's height and width."""

    tumor_probability: float
    tumor_detected: bool
    mask: np.ndarray
    input_shape: List[int]
    channels_replicated: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def tumor_area_px(self) -> int:
        return int(self.mask.sum())


def remove_small_components(mask: np.ndarray, min_px: int) -> np.ndarray:
    """Drop 8-connected components smaller than ``min_px`` pixels."""
    if min_px <= 0 or not mask.any():
        return mask
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = np.zeros(n, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_px
    return keep[labels].astype(np.uint8)


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


class Predictor:
    """Both models behind one call. Thresholds and post-processing come from the checkpoints' configs.

    Example:
        >>> p = Predictor.from_sources()            # the shipped models
        >>> pred = p.predict(image)                 # image: HxWx3, any dtype
        >>> pred.tumor_probability, pred.mask.shape
    """

    def __init__(self, segmenter, classifier=None, device: str = "cpu", sources: Optional[dict] = None):
        self.device = torch.device(device)
        self.segmenter = segmenter.to(self.device).eval()
        self.classifier = classifier.to(self.device).eval() if classifier is not None else None
        self.sources = sources or {}

    @classmethod
    def from_sources(cls, segmenter: Optional[str] = None, classifier: Optional[str] = None,
                     device: str = "cpu") -> "Predictor":
        """Load from folders or Hub repo ids (None: env var, else the shipped default)."""
        from .hub import load_model

        seg, seg_src = load_model("segmenter", segmenter)
        clf, clf_src = load_model("classifier", classifier)
        return cls(seg, clf, device, {"segmenter": seg_src, "classifier": clf_src})

    @property
    def seg_cfg(self):
        return self.segmenter.config

    @torch.no_grad()
    def segment_probs(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Pixel tumour probabilities at the model's input size, (N, S, S)."""
        x = torch.stack([preprocess(im, self.seg_cfg) for im in images]).to(self.device)
        p = torch.sigmoid(self.segmenter(x))
        if self.seg_cfg.tta_flip:
            p = 0.5 * (p + torch.sigmoid(self.segmenter(x.flip(-1))).flip(-1))
        return p[:, 0]

    @torch.no_grad()
    def classify(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Calibrated slice tumour probabilities, (N,)."""
        if self.classifier is None:
            raise RuntimeError("This Predictor has no classifier")
        x = torch.stack([preprocess(im, self.classifier.config) for im in images]).to(self.device)
        return self.classifier.predict_proba(x).cpu().numpy()

    def predict_batch(self, images: Sequence[np.ndarray], threshold: Optional[float] = None,
                      batch_size: int = 16) -> List[Prediction]:
        """Predict slices of any size (each HxWx3, or HxW / HxWx1 FLAIR); masks come back at each input's size.

        Args:
            images: slices in the checkpoint's channel order; uint8, uint16 or float.
            threshold: pixel probability threshold; None uses the segmenter config's.
        """
        cfg = self.seg_cfg
        thr = cfg.threshold if threshold is None else float(threshold)
        out: List[Prediction] = []
        for start in range(0, len(images), batch_size):
            chunk = [as_three_channels(np.asarray(im), cfg.in_chans) for im in images[start:start + batch_size]]
            arrays = [c[0] for c in chunk]
            probs = self.segment_probs(arrays)
            det = self.classify(arrays) if self.classifier is not None else probs.flatten(1).amax(1).cpu().numpy()
            det_thr = self.classifier.config.threshold if self.classifier is not None else thr
            for (im, replicated), p, d in zip(chunk, probs, det):
                h, w = im.shape[:2]
                scale = (h * w) / float(cfg.image_size ** 2)
                full = F.interpolate(p[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
                mask = (full >= thr).cpu().numpy().astype(np.uint8)
                mask = remove_small_components(mask, int(round(cfg.min_component_px * scale)))
                if cfg.gate_threshold > 0 and d < cfg.gate_threshold:
                    mask[:] = 0
                out.append(Prediction(float(d), bool(d >= det_thr), mask, [h, w, int(im.shape[2])], replicated))
        return out

    def predict(self, image: np.ndarray, threshold: Optional[float] = None) -> Prediction:
        return self.predict_batch([image], threshold)[0]
