"""Predictor: both models behind one call, and every decision about a slice made here, once.

Preprocessing comes from each checkpoint's config; the segmenter and classifier run in batches;
then one rule turns their outputs into the answer (issue 9.2: "one answer, not two"):

- the slice's tumour probability is the fused detection (classifier logit + segmenter evidence,
  fitted on validation cases), else the classifier's, else the segmenter's highest pixel;
- ``detected = probability >= detection_threshold``;
- the mask is :func:`brainseg.postprocess.postprocess_mask` of the pixel map at the input's size
  (pixel threshold, small components dropped) and is drawn iff ``detected``.

Where the input is a whole case, :meth:`Predictor.predict_case` then applies the segmenter config's
3-D case rule (a slice it leaves without a mask is not detected).

Label, bars, text, mask and case counts all come from :class:`Prediction`, so they cannot disagree.
Callers pass at most a pixel threshold; :meth:`Predictor.thresholds` is the one place where the
default is filled in and bad values (NaN, inf, outside [0, 1]) are refused.
"""
import copy
import hashlib
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from .config import PRECISIONS  # noqa: F401  (also imported from here)
from .postprocess import postprocess_mask, remove_small_components  # noqa: F401  (old import path)
from .input_check import CheckResult, FeatureTap, load_beside, map_channels
from .preprocess import add_context, neighbour_indices, preprocess
from .uncertainty import review_reasons
from .volume import apply_case_rule

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ImageOrPath = Union[np.ndarray, str, os.PathLike]


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

    # The names before the rule had one place (kept one release for code that reads them).
    @property
    def tumor_probability(self) -> float:
        return self.probability

    @property
    def tumor_detected(self) -> Optional[bool]:
        return self.detected

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


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 in hardware (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: Optional[str], device: torch.device) -> str:
    """'auto' (or None: the ``BRAINSEG_PRECISION`` env var, else auto) becomes 'bf16' where the hardware
    runs it natively, else 'fp32'."""
    precision = (precision or os.environ.get("BRAINSEG_PRECISION") or "auto").lower()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def faster_of_fp32_and_bf16(step, runs: int = 2) -> str:
    """'bf16' or 'fp32': whichever ``step(precision)`` runs faster, timed over ``runs`` calls after one warm-up
    each (oneDNN picks its kernels on the first call); a tie keeps fp32. Inference and training both ask."""
    seconds = {}
    for precision in ("fp32", "bf16"):
        step(precision)
        start = time.perf_counter()
        for _ in range(runs):
            step(precision)
        seconds[precision] = time.perf_counter() - start
    return "bf16" if seconds["bf16"] < seconds["fp32"] else "fp32"


_FASTER: Dict[tuple, str] = {}  # (model class, its config, input size) -> the faster precision, per process


def faster_precision(model: torch.nn.Module, size: int, in_chans: int = 3, runs: int = 2) -> str:
    """'bf16' or 'fp32': whichever runs ``model`` faster on this CPU, timed at batch 1 (after one warm-up each).

    CPUs that report bf16 instructions differ: on some (AMX) bf16 autocast halves the segmenter's time,
    on others (AVX512-BF16 alone, as on this project's VMs in December 2026) it is slower than fp32.
    So ``precision="auto"`` measures instead of trusting the flags; the answer is cached per process.
    """
    config = getattr(model, "config", None)  # a model without a config is timed each time (nothing to key on)
    key = (type(model).__name__, repr(config), size) if config is not None else None
    if key is None or key not in _FASTER:
        x = torch.randn(1, in_chans, size, size).contiguous(memory_format=torch.channels_last)

        def step(precision):
            with torch.no_grad(), (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16"
                                   else nullcontext()):
                model(x)
        answer = faster_of_fp32_and_bf16(step, runs)
        if key is None:
            return answer
        _FASTER[key] = answer
    return _FASTER[key]


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
        requested = (precision or os.environ.get("BRAINSEG_PRECISION") or "auto").lower()
        self.precision = resolve_precision(precision, self.device)
        self.segmenter = segmenter.to(self.device).eval()
        self.classifier = classifier.to(self.device).eval() if classifier is not None else None
        for m in (self.segmenter, self.classifier):
            if m is not None:
                m.to(memory_format=torch.channels_last)
        if requested == "auto" and self.device.type == "cpu" and self.precision == "bf16":
            cfg = self.segmenter.config  # the CPU claims bf16: keep it only where it is faster here
            self.precision = faster_precision(self.segmenter, cfg.image_size, cfg.model_in_chans)
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
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            return self.segmenter(x).float()

    def stack_neighbours(self, images: Sequence[np.ndarray]) -> Optional[List[List[np.ndarray]]]:
        """For a 2.5-D segmenter, each slice's neighbours among ``images`` (one case, in stack order), as
        :meth:`segment_probs` reads them; None for a single-slice segmenter."""
        k = self.seg_cfg.context_slices
        return [[images[j] for j in row] for row in neighbour_indices(len(images), k)] if k else None

    @torch.no_grad()
    def segment_probs(self, images: Sequence[np.ndarray],
                      neighbours: Optional[Sequence[Sequence[np.ndarray]]] = None) -> torch.Tensor:
        """Pixel tumour probabilities at the model's input size, (N, S, S); with ``tta_flip`` the mean
        of the plain pass and the mirrored pass mirrored back.

        A 2.5-D segmenter (``context_slices`` k) also reads ``neighbours``: each slice's 2k neighbours in
        the stack (:func:`brainseg.preprocess.context_offsets`); None: each slice stands alone."""
        cfg = self.seg_cfg
        x = self._batch(images, cfg)
        if cfg.context_slices:
            nb = None
            if neighbours is not None:
                flat = self._batch([im for group in neighbours for im in group], cfg)
                nb = flat.reshape(len(images), 2 * cfg.context_slices, *flat.shape[1:])
            x = add_context(x, cfg.context_slices, nb).contiguous(memory_format=torch.channels_last)
        p = torch.sigmoid(self._segment_logits(x))
        if self.seg_cfg.tta_flip:
            p = 0.5 * (p + torch.sigmoid(self._segment_logits(x.flip(-1))).flip(-1))
        return p[:, 0]

    @torch.no_grad()
    def classify(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """The classifier's own calibrated slice tumour probabilities, (N,) (no fusion)."""
        if self.classifier is None:
            raise RuntimeError("This Predictor has no classifier")
        return self.classifier.predict_proba(self._batch(images, self.classifier.config)).cpu().numpy()

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

    def run_models(self, images: Sequence[np.ndarray], detection_threshold: float,
                   neighbours: Optional[Sequence[Sequence[np.ndarray]]] = None
                   ) -> Tuple[np.ndarray, List[Optional[torch.Tensor]]]:
        """The models' part for HxWx3 arrays: slice tumour probabilities (N,) and pixel maps (S, S);
        ``neighbours`` as in :meth:`segment_probs`.

        Each slice is classified once. With a classifier alone deciding (no fusion), the segmenter
        runs only on the slices at or over ``detection_threshold`` (their map is None elsewhere):
        the others get an empty mask whatever it says, and most slices of a case hold no tumour.
        Tests stand in for the models by overriding this method (``tests/conftest.py``).
        """
        if self.classifier is not None and not self.fused:
            det = self.classify(images)
            maps: List[Optional[torch.Tensor]] = [None] * len(images)
            run = [i for i, d in enumerate(det) if d >= detection_threshold]
            if run:
                nb = [neighbours[i] for i in run] if neighbours is not None else None
                for i, p in zip(run, self.segment_probs([images[i] for i in run], nb)):
                    maps[i] = p
            return det, maps
        probs = self.segment_probs(images, neighbours)
        return self.detect(images, probs), list(probs)

    # ------------------------------------------------------------ the answer

    def predict_batch(self, images: Sequence[ImageOrPath], threshold: Optional[float] = None,
                      batch_size: int = 16, prob_maps: bool = True, stack: bool = False,
                      channels: Optional[str] = None) -> List[Prediction]:
        """Predict slices of any size (each HxWx3, or HxW / HxWx1 FLAIR); masks come back at each input's size.

        Args:
            images: arrays in the checkpoint's channel order (pre-contrast, FLAIR, post-contrast),
                uint8, uint16 or float; or paths, read with :func:`brainseg.images.load_slice`.
            threshold: pixel probability threshold; None uses the segmenter config's.
            batch_size: slices per forward pass.
            prob_maps: keep each slice's pixel map in ``Prediction.prob_map`` (False saves memory on a case).
            stack: the images are one case's slices in stack order, so a 2.5-D segmenter reads each
                slice's neighbours (:meth:`predict_case`); otherwise every slice stands alone.
            channels: the images' channel order when it is not the checkpoint's, e.g. ``"flair,pre,post"``,
                or ``"flair"`` for FLAIR alone (:func:`brainseg.input_check.map_channels`).
        Returns:
            one :class:`Prediction` a slice, in order.
        """
        pixel_thr, det_thr = self.thresholds(threshold)
        cfg = self.seg_cfg
        out: List[Prediction] = []
        around = None
        read_one = lambda im: as_three_channels(map_channels(_as_array(im), channels), cfg.in_chans)  # noqa: E731
        if stack and cfg.context_slices:  # every slice read up front: a chunk's neighbours may lie in the next one
            read = [read_one(im) for im in images]
            around = self.stack_neighbours([r[0] for r in read])
        for start in range(0, len(images), batch_size):
            chunk = read[start:start + batch_size] if around else [read_one(im) for im in images[start:start + batch_size]]
            nb = around[start:start + len(chunk)] if around else None
            if self._tap is not None:
                self._tap.reset()
            det, maps = self.run_models([c[0] for c in chunk], det_thr, nb)
            checks = self.check_inputs([c[0] for c in chunk])
            for (im, replicated), d, p, chk in zip(chunk, det, maps, checks):
                h, w = im.shape[:2]
                detected = None if chk is not None and chk.status == "refuse" else bool(d >= det_thr)
                mask = np.zeros((h, w), np.uint8)
                if detected and p is not None:
                    full = F.interpolate(p[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)
                    mask = postprocess_mask(full[0, 0].cpu().numpy(), pixel_thr, cfg.min_component_px,
                                            cfg.image_size, detected)
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
        images = [_as_array(im) for im in images]
        preds = self.predict_batch(images, threshold=threshold, batch_size=batch_size, prob_maps=prob_maps,
                                   stack=True, channels=channels)
        check = None
        if self.input_check is not None:
            slices = [CheckResult(p.input_check["status"], p.input_check["reasons"], p.input_check["score"],
                                  p.input_check.get("likely_channel_order")) for p in preds]
            check = self.input_check.check_case([map_channels(im, channels) for im in images], slices).as_dict()
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
