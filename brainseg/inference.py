"""Predictor: both models behind one call, and every decision about a slice made here, once.

Preprocessing comes from each checkpoint's config; the segmenter and classifier run in batches; the input
check (:mod:`brainseg.input_check`) reads the classifier features of the same pass; then the rules of
:mod:`brainseg.decision` turn the outputs into one answer a slice (a refused slice gets no verdict). Where
the input is a whole case, :meth:`Predictor.predict_case` then applies the segmenter config's 3-D case rule
(a slice it leaves without a mask is not detected) and the case's own input check.

Label, bars, text, mask and case counts all come from :class:`~brainseg.decision.Prediction`, so they cannot
disagree. Callers pass at most a pixel threshold; :meth:`Predictor.thresholds` is the one place where the
default is filled in and bad values (NaN, inf, outside [0, 1]) are refused.
"""
import copy
import hashlib
import os
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .decision import (Prediction, as_three_channels, check_threshold, classifier_probability, decide,
                       fuse_detection, is_detected, segmenter_evidence, tidy, upsample)
from .precision import inference_autocast, inference_precision
from .preprocess import preprocess
from .channels import map_channels
from .input_check import CheckResult, FeatureTap, load_beside
from .uncertainty import review_reasons
from .volume import apply_case_rule

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ImageOrPath = Union[np.ndarray, str, os.PathLike]


def _display_source(src) -> Tuple[str, Optional[str]]:
    """(source, revision) to show: a local folder relative to the project (or its name alone), never a full path."""
    if src is None:
        return "unknown", None
    source = str(getattr(src, "location", src))
    if getattr(src, "local", False):
        path = Path(source).resolve()
        source = str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else path.name
    return source, getattr(src, "revision", None)


def weights_sha256(model: torch.nn.Module) -> str:
    """Fingerprint of a model's loaded weights (names and values), first 12 hex digits of the sha256."""
    sha = hashlib.sha256()
    for name, t in model.state_dict().items():
        sha.update(name.encode())
        sha.update(t.detach().cpu().contiguous().numpy().tobytes())
    return sha.hexdigest()[:12]


class Predictor:
    """Both models behind one call; thresholds, post-processing and gating are decided here only.

    The segmenter runs in channels-last layout and, with ``precision='bf16'``, under bf16 autocast:
    about 2x faster on a 2-core CPU with AMX, slower on some that report AVX512-BF16 alone, so the
    default (``"auto"``) keeps bf16 only where the CPU claims it and :func:`faster_precision` finds
    it faster; the Dice in both is in the README. The classifier always runs in fp32 (it is cheap, and its logit
    feeds the calibrated fusion).

    Example:
        >>> p = Predictor.from_sources()            # the shipped models
        >>> pred = p.predict("TCGA_CS_4941_19960909_22.tif")   # a path, or an HxWx3 array
        >>> pred.probability, pred.detected, pred.mask.shape
    """

    def __init__(self, segmenter, classifier=None, device: str = "cpu", sources: Optional[dict] = None,
                 precision: Optional[str] = None, input_check=None):
        self.device = torch.device(device)
        self.segmenter = segmenter.to(self.device).eval()
        self.classifier = classifier.to(self.device).eval() if classifier is not None else None
        for m in (self.segmenter, self.classifier):
            if m is not None:
                m.to(memory_format=torch.channels_last)
        self.precision = inference_precision(precision, self.device, self.segmenter)
        self.sources = sources or {}
        self._description: Optional[Dict[str, dict]] = None
        self.input_check = input_check  # brainseg.input_check.InputCheck, or None: no check
        self._tap = FeatureTap(self.classifier) if self.classifier is not None else None

    @classmethod
    def from_sources(cls, segmenter: Optional[str] = None, classifier: Optional[str] = None,
                     device: str = "cpu", precision: Optional[str] = None, *,
                     segmenter_revision: Optional[str] = None,
                     classifier_revision: Optional[str] = None, input_check: bool = True) -> "Predictor":
        """Load from folders or Hub repo ids (None: env var, else the shipped default).

        Each revision (Hub branch, tag or commit) goes with its own repo, as ``user/repo@rev`` does;
        see :func:`brainseg.sources.parse_source`. ``input_check``: also load the input check shipped
        beside the classifier (:func:`brainseg.input_check.load_beside`), when there is one.
        """
        from . import sources

        seg, seg_src = sources.load_model("segmenter", segmenter, segmenter_revision)
        clf, clf_src = sources.load_model("classifier", classifier, classifier_revision)
        check = load_beside(clf_src, weights_sha256(clf)) if input_check else None
        return cls(seg, clf, device, {"segmenter": seg_src, "classifier": clf_src}, precision, check)

    # ------------------------------------------------------------ the rules, from the configs

    @property
    def seg_cfg(self):
        return self.segmenter.config

    @property
    def fused(self) -> bool:
        """True when detection fuses both models (the classifier config holds fusion weights)."""
        return self.classifier is not None and bool(self.classifier.config.fusion_weights)

    @property
    def pixel_threshold(self) -> float:
        """The segmenter config's ``threshold``: a pixel is tumour when its probability is >= this."""
        return tidy(self.seg_cfg.threshold)

    @property
    def detection_threshold(self) -> float:
        """The slice verdict's threshold: the config's ``fusion_threshold`` when fused, else the
        classifier's ``threshold``; without a classifier, the pixel threshold (on the highest pixel)."""
        if self.classifier is None:
            return self.pixel_threshold
        cfg = self.classifier.config
        return tidy(cfg.fusion_threshold if self.fused else cfg.threshold)

    def thresholds(self, threshold: Optional[float] = None) -> Tuple[float, float]:
        """(pixel, detection) thresholds a call with this ``threshold`` argument uses.

        The one place the default is filled in: None takes the segmenter config's. The argument
        moves the pixel threshold only, except without a classifier, where the segmenter's highest
        pixel decides detection at the same threshold. Raises ValueError for NaN, inf or outside [0, 1].
        """
        pixel = self.pixel_threshold if threshold is None else check_threshold(threshold)
        return pixel, (pixel if self.classifier is None else self.detection_threshold)

    def describe(self) -> Dict[str, dict]:
        """Which models answer: per kind its source (folder or Hub repo), revision, encoder, precision
        and a fingerprint of the loaded weights (hashed once, on the first call)."""
        if self._description is None:
            out = {}
            for kind, model in (("segmenter", self.segmenter), ("classifier", self.classifier)):
                if model is None:
                    continue
                source, revision = _display_source(self.sources.get(kind))
                out[kind] = {"source": source, "revision": revision, "weights_sha256": weights_sha256(model),
                             "encoder": getattr(model.config, "encoder", None),
                             "precision": self.precision if kind == "segmenter" else "fp32"}
            self._description = out
        return copy.deepcopy(self._description)

    # ------------------------------------------------------------ the models

    def _batch(self, images: Sequence[np.ndarray], cfg) -> torch.Tensor:
        x = torch.stack([preprocess(im, cfg) for im in images]).to(self.device)
        return x.contiguous(memory_format=torch.channels_last)

    def _segment_logits(self, x: torch.Tensor) -> torch.Tensor:
        with inference_autocast(self.device, self.precision):
            return self.segmenter(x).float()

    @torch.no_grad()
    def segment_passes(self, images: Sequence[np.ndarray], flipped: bool = True
                       ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The segmenter's pixel probabilities at its input size, (N, S, S): the plain pass, and (``flipped``) the
        mirrored pass mirrored back (None otherwise); :meth:`segment_probs` combines them as the config says."""
        x = self._batch(images, self.seg_cfg)
        plain = torch.sigmoid(self._segment_logits(x))[:, 0]
        return plain, torch.sigmoid(self._segment_logits(x.flip(-1))).flip(-1)[:, 0] if flipped else None

    @staticmethod
    def combine_passes(plain: torch.Tensor, flipped: Optional[torch.Tensor], tta_flip: bool) -> torch.Tensor:
        """The pixel map flip TTA gives: the mean of both passes when ``tta_flip``, else the plain pass."""
        return 0.5 * (plain + flipped) if tta_flip else plain

    @torch.no_grad()
    def segment_probs(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Pixel tumour probabilities at the model's input size, (N, S, S); with ``tta_flip`` the mean
        of the plain pass and the mirrored pass mirrored back."""
        tta = self.seg_cfg.tta_flip
        return self.combine_passes(*self.segment_passes(images, flipped=tta), tta)

    @torch.no_grad()
    def classifier_logits(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """The classifier's raw logits, (N,): before temperature, as calibration fits it."""
        if self.classifier is None:
            raise RuntimeError("This Predictor has no classifier")
        return self.classifier.logits(self._batch(images, self.classifier.config)).float()

    @torch.no_grad()
    def classify(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """The classifier's own calibrated slice tumour probabilities, (N,) (no fusion)."""
        if self.classifier is None:
            raise RuntimeError("This Predictor has no classifier")
        return classifier_probability(self.classifier_logits(images), self.classifier.config.temperature).cpu().numpy()

    def classifier_features(self, images: Sequence[np.ndarray]) -> Optional[np.ndarray]:
        """The classifier's pooled features of HxWx3 slices, (N, F) (None without a classifier)."""
        if self._tap is None:
            return None
        self._tap.reset()
        self.classify(images)
        return self._tap.take()

    @torch.no_grad()
    def detect(self, images: Sequence[np.ndarray], seg_probs: torch.Tensor) -> np.ndarray:
        """Slice tumour probabilities, (N,): fused when configured, else the classifier's, else the
        segmenter's highest pixel probability. ``seg_probs`` is :meth:`segment_probs` of the same slices."""
        if self.classifier is None:
            return seg_probs.flatten(1).amax(1).float().cpu().numpy()
        if not self.fused:
            return self.classify(images)
        cfg = self.classifier.config
        det = fuse_detection(self.classifier.logits(self._batch(images, cfg)),
                             segmenter_evidence(seg_probs, cfg.fusion_top_k),
                             cfg.fusion_weights)
        return det.cpu().numpy()

    def run_models(self, images: Sequence[np.ndarray], detection_threshold: float
                   ) -> Tuple[np.ndarray, List[Optional[torch.Tensor]]]:
        """The models' part for HxWx3 arrays: slice tumour probabilities (N,) and pixel maps (S, S).

        Each slice is classified once. With a classifier alone deciding (no fusion), the segmenter
        runs only on the slices at or over ``detection_threshold`` (their map is None elsewhere):
        the others get an empty mask whatever it says, and most slices of a case hold no tumour.
        Tests stand in for the models by overriding this method (``tests/conftest.py``).
        """
        if self.classifier is not None and not self.fused:
            det = self.classify(images)
            maps: List[Optional[torch.Tensor]] = [None] * len(images)
            run = [i for i, d in enumerate(det) if is_detected(d, detection_threshold)]
            if run:
                for i, p in zip(run, self.segment_probs([images[i] for i in run])):
                    maps[i] = p
            return det, maps
        probs = self.segment_probs(images)
        return self.detect(images, probs), list(probs)

    # ------------------------------------------------------------ the answer

    def predict_batch(self, images: Sequence[ImageOrPath], threshold: Optional[float] = None,
                      batch_size: int = 16, prob_maps: bool = True, channels: Optional[str] = None) -> List[Prediction]:
        """Predict slices of any size (each HxWx3, or HxW / HxWx1 FLAIR); masks come back at each input's size.

        Args:
            images: arrays in the checkpoint's channel order (pre-contrast, FLAIR, post-contrast),
                uint8, uint16 or float; or paths, read with :func:`brainseg.images.load_slice`.
            threshold: pixel probability threshold; None uses the segmenter config's.
            batch_size: slices per forward pass.
            prob_maps: keep each slice's pixel map in ``Prediction.prob_map`` (False saves memory on a case).
            channels: the images' channel order when it is not the checkpoint's, e.g. ``"flair,pre,post"``,
                or ``"flair"`` for FLAIR alone (:func:`brainseg.channels.map_channels`).
        Returns:
            one :class:`Prediction` a slice, in order.
        """
        pixel_thr, det_thr = self.thresholds(threshold)
        cfg = self.seg_cfg
        out: List[Prediction] = []
        read_one = lambda im: as_three_channels(map_channels(_as_array(im), channels), cfg.in_chans)  # noqa: E731
        for start in range(0, len(images), batch_size):
            chunk = [read_one(im) for im in images[start:start + batch_size]]
            if self._tap is not None:
                self._tap.reset()
            det, maps = self.run_models([c[0] for c in chunk], det_thr)
            checks = self.check_inputs([c[0] for c in chunk])
            for (im, replicated), d, p, chk in zip(chunk, det, maps, checks):
                h, w = im.shape[:2]
                if chk is not None and chk.status == "refuse":  # not an input the models know: no verdict
                    detected, mask = None, np.zeros((h, w), np.uint8)
                else:
                    full = None if p is None else upsample(p[None], (h, w))[0]
                    detected, mask = decide(float(d), full, (h, w), pixel_thr, det_thr, cfg.min_component_px,
                                            cfg.image_size)
                keep = p.float().cpu().numpy() if (prob_maps and p is not None) else None
                review = [] if detected is None else review_reasons(float(d), det_thr, p, pixel_thr, detected)
                out.append(Prediction(float(d), detected, mask, [h, w, int(im.shape[2])], replicated, keep,
                                      pixel_thr, det_thr, input_check=None if chk is None else chk.as_dict(),
                                      review=review))
        return out

    def check_inputs(self, images: Sequence[np.ndarray]) -> list:
        """The input check of HxWx3 slices just run through the models (their classifier features come from
        that pass): a :class:`brainseg.input_check.CheckResult` a slice, None each without a check."""
        feats = self._tap.take() if self._tap is not None else None
        if self.input_check is None:
            return [None] * len(images)
        return [self.input_check.check(im, None if feats is None else feats[i]) for i, im in enumerate(images)]

    def predict_case(self, images: Sequence[ImageOrPath], threshold: Optional[float] = None,
                     batch_size: int = 16, prob_maps: bool = False, channels: Optional[str] = None) -> "CasePrediction":
        """The slices of one case, in stack order: :meth:`predict_batch`, then the segmenter config's
        ``case_rule`` on the 3-D connected components of the case's masks (:mod:`brainseg.volume`).

        Where the input is a whole case, a region that connects to nothing across slices is more
        likely a false alarm; the rule was chosen on out-of-fold predictions (``brainseg.calibrate``).
        A slice whose every pixel the rule removes is reported not detected (``removed_by_case_rule``),
        so a detected slice keeps its outline. The slices must share one height and width.
        The list's ``input_check`` is the case's (:meth:`brainseg.input_check.InputCheck.check_case`).
        """
        images = [map_channels(_as_array(im), channels) for im in images]  # once, for the models and the case check
        preds = self.predict_batch(images, threshold=threshold, batch_size=batch_size, prob_maps=prob_maps)
        check = None
        if self.input_check is not None:
            slices = [CheckResult(p.input_check["status"], p.input_check["reasons"], p.input_check["score"],
                                  p.input_check.get("likely_channel_order")) for p in preds]
            check = self.input_check.check_case(images, slices).as_dict()
        cfg = self.seg_cfg
        if cfg.case_rule == "none" or not preds:
            return CasePrediction(preds, check)
        shapes = {p.mask.shape for p in preds}
        if len(shapes) > 1:
            raise ValueError(f"The slices of a case must share one size for the case rule, got {sorted(shapes)}")
        kept, removed = apply_case_rule(np.stack([p.mask for p in preds]), cfg.case_rule, cfg.case_min_voxels,
                                        cfg.image_size)
        return CasePrediction([replace(p, mask=m, detected=p.detected and not r, removed_by_case_rule=bool(r))
                               for p, m, r in zip(preds, kept, removed)], check)

    def predict(self, image: ImageOrPath, threshold: Optional[float] = None, channels: Optional[str] = None) -> Prediction:
        """One slice: an array (see :meth:`predict_batch`) or the path of a slice file."""
        return self.predict_batch([image], threshold, channels=channels)[0]


class CasePrediction(list):
    """A case's :class:`Prediction` list (stack order), with the case's ``input_check`` dict (None: no check)."""

    def __init__(self, predictions, input_check: Optional[dict] = None):
        super().__init__(predictions)
        self.input_check = input_check


def _as_array(image: ImageOrPath) -> np.ndarray:
    if isinstance(image, (str, os.PathLike)):
        from .images import load_slice

        return load_slice(image)
    return np.asarray(image)
