"""Is this an axial brain MRI slice like the training data, with its channels in the expected order?

The Predictor runs :class:`InputCheck` on every slice (and :meth:`InputCheck.check_case` on every
case) and reports the outcome beside the verdict: ``ok``, ``warn`` (the answer is shown, with the
reasons and a lowered-trust label) or ``refuse`` (no verdict). Three questions, each cheap:

- *How far from the training slices?* Two Mahalanobis distances (scikit-learn ``LedoitWolf``): one
  on the classifier's 512-d pooled features, read from the forward pass the Predictor already
  makes (:class:`FeatureTap`), one on :func:`image_stats` (foreground, border, per-channel
  intensity and texture). Each is divided by its warn threshold, chosen on held-out folds by
  patient, so ``score`` >= 1 warns (and a larger one, per distance, refuses).
- *Which channel is which?* A logistic regression on per-channel statistics
  (:func:`channel_stats`) scores every order of the three channels; an upload whose likely order
  is not (pre-contrast, FLAIR, post-contrast), or a single channel that does not look like FLAIR,
  is warned about.
- *Is it a picture of a head at all?* Rules no MRI slice breaks: a blank image, a bright
  background (an inverted or photographic image), a foreground touching most of the border.

The fitted statistics ship as ``input_check.safetensors`` beside the classifier whose features
they describe (its config, with the classifier's weights fingerprint, in the file's metadata).
Fitting: ``python -m brainseg.fit_input_check``.
"""
import json
import threading
from dataclasses import asdict, dataclass, field
from itertools import permutations
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np
import torch

from .config import CHANNEL_ORDER

FILENAME = "input_check.safetensors"
STATUSES = ("ok", "warn", "refuse")
SIZE = 128  # statistics are computed at this size: cheap, and independent of the upload's size
ORDERS = list(permutations(range(3)))  # ORDERS[0] is the expected one
QUANTILES = (5, 25, 50, 75, 95)


@dataclass
class InputCheckConfig:
    """What the fitted check needs beside its arrays; saved in the safetensors file's metadata.

    ``feature_warn``/``image_warn``: the squared Mahalanobis distances that warn (quantile
    ``warn_quantile`` of held-out real slices); ``feature_refuse``/``image_refuse``: the scores (in units
    of the warn distance) that refuse; ``entropy_min``: the fewest grey levels (bits) a channel may have; ``channel_margin``: the log-likelihood by which another channel order
    must beat the expected one to warn; ``flair_min``: the FLAIR probability a single-channel upload
    needs. ``classifier_sha256`` ties the feature statistics to the classifier they were fitted on.
    """

    feature_warn: float = float("inf")
    image_warn: float = float("inf")
    feature_refuse: float = 2.0
    image_refuse: float = 4.0
    entropy_min: float = 0.0
    warn_quantile: float = 0.995
    channel_margin: float = 2.0
    flair_min: float = 0.5
    case_warn_fraction: float = 0.2
    case_refuse_fraction: float = 0.5
    case_min_coherence: float = 0.5
    classifier_sha256: str = ""
    channel_order: List[str] = field(default_factory=lambda: list(CHANNEL_ORDER))
    fitted_on: str = ""


@dataclass
class CheckResult:
    """One slice's or case's outcome: ``status`` (ok/warn/refuse), the ``reasons`` in words, and
    ``score`` (distance from the training slices in units of the warn threshold; 0 when not scored)."""

    status: str = "ok"
    reasons: List[str] = field(default_factory=list)
    score: float = 0.0
    channel_order: Optional[List[str]] = None  # the order the channel check finds most likely

    def as_dict(self) -> Dict:
        out = {"status": self.status, "reasons": list(self.reasons), "score": round(float(self.score), 3)}
        if self.channel_order is not None:
            out["likely_channel_order"] = list(self.channel_order)
        return out

    def add(self, status: str, reason: str) -> None:
        """Add a reason; the status becomes the worse of the two."""
        self.reasons.append(reason)
        if STATUSES.index(status) > STATUSES.index(self.status):
            self.status = status


# ---------------------------------------------------------------- statistics of a slice

def _small(image: np.ndarray) -> np.ndarray:
    """HxWxC (any dtype) -> SIZExSIZEx3 float32 (a single channel replicated)."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[..., None]
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


def slice_stats(image: np.ndarray) -> SliceStats:
    """Statistics of one slice (HxW, HxWx1 or HxWx3; uint8, uint16 or float), at SIZE x SIZE.

    The foreground is what lies above 5 % of the range over the darkest value, as the head does on
    the black background of an MRI slice. Intensities are read relative to each channel's 99th
    percentile inside its foreground, so 8-bit, 16-bit and float copies agree. Per channel: quantiles,
    skew, dark and saturated shares, texture (Laplacian), grey-level entropy (a drawing or a phantom
    has few grey levels), the share of edge pixels, and how bright the rim is against the inside.
    """
    a = _small(image)
    flat = a.reshape(-1, 3)
    lo, hi = flat.min(0), flat.max(0)
    rel = (a - lo) / np.maximum(hi - lo, 1e-6)  # 0 = the channel's darkest value, 1 its brightest
    fg_c = rel > 0.05
    fg = fg_c.any(-1)
    border_rel = np.concatenate([rel[:3].reshape(-1, 3), rel[-3:].reshape(-1, 3), rel[:, :3].reshape(-1, 3),
                                 rel[:, -3:].reshape(-1, 3)])
    border = np.concatenate([fg[:3].ravel(), fg[-3:].ravel(), fg[:, :3].ravel(), fg[:, -3:].ravel()])
    replicated = bool(np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 1], a[..., 2]))
    if float((hi - lo).max()) <= 1e-6 * max(1.0, float(np.abs(hi).max())) or fg.mean() < 0.02 or \
            min(fg_c[..., c].mean() for c in range(3)) < 0.005:
        return SliceStats(np.zeros(N_IMAGE_STATS), np.zeros((3, N_CHANNEL_STATS)), True, False,
                          float(border.mean()), replicated)
    inner = cv2.erode(fg.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    rim = fg & ~inner
    rows = []
    for c in range(3):
        x = rel[..., c]
        v = x[fg_c[..., c]]
        v = v / max(float(np.percentile(v, 99)), 1e-6)
        q = np.percentile(v, QUANTILES)
        z = (v - v.mean()) / (v.std() + 1e-6)
        hist = np.histogram(np.clip(v, 0, 1), bins=32, range=(0, 1))[0] / v.size
        entropy = -float((hist[hist > 0] * np.log2(hist[hist > 0])).sum())
        smooth = cv2.GaussianBlur(x, (0, 0), 1.0)
        grad = np.hypot(cv2.Sobel(smooth, cv2.CV_32F, 1, 0), cv2.Sobel(smooth, cv2.CV_32F, 0, 1))[fg_c[..., c]]
        lap = float(np.abs(cv2.Laplacian(x, cv2.CV_32F))[fg_c[..., c]].mean()) / (float(x[fg_c[..., c]].mean()) + 1e-6)
        rim_ratio = (float(x[rim].mean()) if rim.any() else 1.0) / (float(x[inner].mean()) + 1e-6 if inner.any() else 1.0)
        rows.append([*q, float((z ** 3).mean()), float((v < 0.2).mean()), float((v > 0.95).mean()),
                     np.log(lap + 1e-3), np.log(rim_ratio + 1e-3), entropy, float((grad > 0.1).mean())])
    channels = np.array(rows)
    c = np.corrcoef(rel[fg].T) if not replicated else np.ones((3, 3))
    corr = np.nan_to_num(np.array([c[0, 1], c[0, 2], c[1, 2]]), nan=1.0)
    bright_border = bool(np.median(border_rel.max(-1)) > 0.5)
    image_vec = np.concatenate([[float(fg.mean()), float(border.mean()), np.log(fg.sum() / max(inner.sum(), 1))],
                                channels.ravel(), corr])
    return SliceStats(image_vec, channels, False, bright_border, float(border.mean()), replicated,
                      joint_stats(rel[fg]))


def joint_stats(px: np.ndarray) -> np.ndarray:
    """(3, 3, 3): the mean of channel j over the foreground pixels where channel i is in its lowest
    quarter, highest quarter and highest 5 %: how the channels' contrasts relate (FLAIR and T1 disagree)."""
    v = px / np.maximum(np.percentile(px, 99, axis=0), 1e-6)
    out = np.zeros((3, 3, 3))
    for i in range(3):
        q25, q75, q95 = np.percentile(v[:, i], [25, 75, 95])
        for k, sel in enumerate((v[:, i] <= q25, v[:, i] >= q75, v[:, i] >= q95)):
            out[i, :, k] = v[sel].mean(0)
    return out


N_CHANNEL_STATS = len(QUANTILES) + 7
N_IMAGE_STATS = 3 + 3 * N_CHANNEL_STATS + 3
ENTROPY = N_CHANNEL_STATS - 2  # the column of channel_stats holding the grey-level entropy


# ---------------------------------------------------------------- the classifier's features

class FeatureTap:
    """The classifier's pooled features of the calling thread's last forward pass (a forward hook on its
    global pool), so the check reads what the Predictor's classifier already computed: no second pass."""

    def __init__(self, classifier: torch.nn.Module):
        self._local = threading.local()
        pool = getattr(getattr(classifier, "backbone", None), "global_pool", None)
        self.available = pool is not None
        if pool is not None:
            pool.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        self._local.features = output.detach().float().flatten(1).cpu().numpy()

    def reset(self) -> None:
        self._local.features = None

    def take(self) -> Optional[np.ndarray]:
        """The last pass's (N, F) features (then forgotten), or None when the classifier did not run."""
        out = getattr(self._local, "features", None)
        self._local.features = None
        return out


# ---------------------------------------------------------------- the fitted check

class Gaussian:
    """Mean and precision matrix of a Ledoit-Wolf fit; :meth:`distance` is the squared Mahalanobis distance."""

    def __init__(self, mean: np.ndarray, precision: np.ndarray):
        self.mean, self.precision = np.asarray(mean, np.float64), np.asarray(precision, np.float64)

    @classmethod
    def fit(cls, x: np.ndarray) -> "Gaussian":
        from sklearn.covariance import LedoitWolf

        lw = LedoitWolf().fit(np.asarray(x, np.float64))
        return cls(lw.location_, lw.precision_)

    def distance(self, x: np.ndarray) -> np.ndarray:
        d = np.atleast_2d(np.asarray(x, np.float64)) - self.mean
        return np.einsum("ij,jk,ik->i", d, self.precision, d)


class Linear:
    """A fitted multinomial logistic regression on standardised inputs; :meth:`log_probs` per class."""

    def __init__(self, coef, intercept, mean, scale):
        self.coef, self.intercept = np.asarray(coef, np.float64), np.asarray(intercept, np.float64)
        self.mean, self.scale = np.asarray(mean, np.float64), np.asarray(scale, np.float64)

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray) -> "Linear":
        from sklearn.linear_model import LogisticRegression

        mean, scale = x.mean(0), x.std(0) + 1e-6
        lr = LogisticRegression(C=1.0, max_iter=3000).fit((x - mean) / scale, y)
        return cls(lr.coef_, lr.intercept_, mean, scale)

    def log_probs(self, x: np.ndarray) -> np.ndarray:
        logits = ((np.atleast_2d(x) - self.mean) / self.scale) @ self.coef.T + self.intercept
        return logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)

    def arrays(self, prefix: str) -> Dict[str, np.ndarray]:
        return {f"{prefix}_{k}": getattr(self, k) for k in ("coef", "intercept", "mean", "scale")}


def ordered(stats: SliceStats, order: Sequence[int] = (0, 1, 2)) -> np.ndarray:
    """The channel-order regression's input for ``stats`` with its channels taken in ``order``: each
    channel's statistics, then the three correlations (which channel differs from the other two)."""
    order = list(order)
    ch = stats.channels[order]
    c = np.ones((3, 3))
    i, j = np.triu_indices(3, 1)
    c[i, j] = c[j, i] = stats.image[-3:]
    c = c[np.ix_(order, order)]
    joint = stats.joint[np.ix_(order, order)][~np.eye(3, dtype=bool)]
    return np.concatenate([ch.ravel(), c[i, j], joint.ravel()])


class InputCheck:
    """The fitted check: two Gaussians (classifier features, image statistics) and the channel models.

    Args:
        config: an :class:`InputCheckConfig` (thresholds).
        features: a :class:`Gaussian` of the classifier's pooled features, or None (image statistics only).
        image: a :class:`Gaussian` of :func:`slice_stats` ``.image``.
        order: a :class:`Linear` over :func:`ordered` whose classes are ``ORDERS`` (which order the
            upload's channels are in).
        single: a :class:`Linear` over one channel's statistics, classes in ``config.channel_order``.
    """

    def __init__(self, config: InputCheckConfig, features: Optional[Gaussian], image: Gaussian,
                 order: Linear, single: Linear):
        self.config, self.features, self.image, self.order, self.single = config, features, image, order, single

    # ------------------------------------------------------------ one slice

    def scores(self, stats: SliceStats, features: Optional[np.ndarray]) -> Dict[str, float]:
        """The two distances in units of their warn thresholds (``features``: one slice's pooled features)."""
        out = {"image": float(self.image.distance(stats.image)[0] / self.config.image_warn)}
        if self.features is not None and features is not None:
            out["features"] = float(self.features.distance(features)[0] / self.config.feature_warn)
        return out

    def check(self, image: np.ndarray, features: Optional[np.ndarray] = None,
              stats: Optional[SliceStats] = None) -> CheckResult:
        """The outcome for one slice (HxW, HxWx1 or HxWx3 in the model's channel order).

        ``features``: the classifier's pooled features of this slice (:class:`FeatureTap`); without
        them only the image statistics are scored.
        """
        s = stats if stats is not None else slice_stats(image)
        r, cfg = CheckResult(), self.config
        if s.blank:
            r.add("refuse", "the image is blank (one value, or almost nothing above the background)")
            return r
        if s.bright_border:
            r.add("refuse", "the background is bright, not black: an inverted-contrast image, or not an MRI slice")
        entropy = float(s.channels[:, ENTROPY].min())
        if entropy < cfg.entropy_min:
            r.add("refuse", f"too few grey levels for an MRI slice (entropy {entropy:.1f} bits, real slices have "
                            f"{cfg.entropy_min:.1f} or more): a drawing, a logo or a phantom?")
        sc = self.scores(s, features)
        r.score = max(sc.values())
        names = {"features": "what the classifier sees", "image": "its intensity and texture statistics"}
        refuse = {"features": cfg.feature_refuse, "image": cfg.image_refuse}
        for k, v in sorted(sc.items(), key=lambda kv: -kv[1]):
            if v >= refuse[k]:
                r.add("refuse", f"this does not look like an axial brain MRI slice: {names[k]} lie far outside "
                                f"the training slices ({v:.1f}x the warn distance)")
            elif v >= 1.0:
                r.add("warn", f"unusual input: {names[k]} lie outside {100 * cfg.warn_quantile:g} % of real slices "
                              f"({v:.1f}x the warn distance); trust the answer less")
        if r.status != "refuse":
            self._check_channels(s, r)
        return r

    def _check_channels(self, s: SliceStats, r: CheckResult) -> None:
        names = self.config.channel_order
        if s.replicated:
            p = np.exp(self.single.log_probs(s.channels[0])[0])
            p_flair = float(p[names.index("FLAIR")])
            if p_flair < self.config.flair_min:
                r.add("warn", f"a single channel that looks like {names[int(np.argmax(p))]}, not FLAIR "
                              f"(P(FLAIR) = {p_flair:.2f}); the models read FLAIR alone")
            return
        ll = self.order.log_probs(ordered(s))[0]
        best = int(np.argmax(ll))
        r.channel_order = [names[j] for j in ORDERS[best]]
        if best != 0 and ll[best] - ll[0] >= self.config.channel_margin:
            r.add("warn", f"the channels look like ({', '.join(r.channel_order)}), not the expected "
                          f"({', '.join(names)}): set the channel order")

    # ------------------------------------------------------------ a case

    def check_case(self, images: Sequence[np.ndarray], slices: Sequence[CheckResult]) -> CheckResult:
        """The outcome for a stack: its slices' outcomes summed up, and whether neighbours look like
        neighbours (the head's outline changes little from one axial slice to the next)."""
        r = CheckResult(score=max((s.score for s in slices), default=0.0))
        n = len(slices)
        if not n:
            return r
        refused = sum(s.status == "refuse" for s in slices)
        warned = sum(s.status == "warn" for s in slices)
        cfg = self.config
        if refused / n >= cfg.case_refuse_fraction:
            r.add("refuse", f"{refused} of {n} slices do not look like axial brain MRI slices")
        elif (refused + warned) / n >= cfg.case_warn_fraction:
            r.add("warn", f"{refused + warned} of {n} slices were warned about or refused")
        coherence = stack_coherence(images)
        if coherence is not None and coherence < cfg.case_min_coherence:
            r.add("warn", f"neighbouring slices do not look like neighbours (median outline overlap {coherence:.2f}):"
                          f" the slice order, or the volume's axis, may be wrong; the 3-D case rule may mislead")
        return r

    # ------------------------------------------------------------ storage

    def save(self, path) -> Path:
        """Write the arrays (float32) and the config (metadata) as one safetensors file."""
        from safetensors.numpy import save_file

        arrays = {"image_mean": self.image.mean, "image_precision": self.image.precision,
                  **self.order.arrays("order"), **self.single.arrays("single")}
        if self.features is not None:
            arrays.update(feature_mean=self.features.mean, feature_precision=self.features.precision)
        path = Path(path)
        save_file({k: np.ascontiguousarray(v, np.float32) for k, v in arrays.items()}, str(path),
                  metadata={"config": json.dumps(asdict(self.config))})
        return path

    @classmethod
    def load(cls, path) -> "InputCheck":
        from safetensors import safe_open

        with safe_open(str(path), "numpy") as f:
            meta = f.metadata() or {}
            a = {k: f.get_tensor(k).astype(np.float64) for k in f.keys()}
        try:
            config = InputCheckConfig(**json.loads(meta["config"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: no valid input-check config in its metadata ({e})") from None
        lin = lambda p: Linear(*(a[f"{p}_{k}"] for k in ("coef", "intercept", "mean", "scale")))  # noqa: E731
        feats = Gaussian(a["feature_mean"], a["feature_precision"]) if "feature_mean" in a else None
        return cls(config, feats, Gaussian(a["image_mean"], a["image_precision"]), lin("order"), lin("single"))


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


# ---------------------------------------------------------------- what the user says about the channels

CHANNEL_NAMES = {"pre": "pre-contrast", "flair": "FLAIR", "post": "post-contrast"}


def parse_channels(spec) -> Optional[List[str]]:
    """The upload's channels, in its order: 'pre,flair,post' (the default), any order of the three, or
    'flair' (FLAIR alone: a single channel, or the named one of three with the others 'none', as in
    'none,flair,none'). None or '' is the default. Raises ValueError saying what to write."""
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return None
    parts = [t.strip().lower() for t in (spec.split(",") if isinstance(spec, str) else spec)]
    parts = [{"pre-contrast": "pre", "post-contrast": "post", "-": "none"}.get(t, t) for t in parts]
    ok = all(t in (*CHANNEL_NAMES, "none") for t in parts) and parts.count("flair") == 1 and (
        len(parts) == 1 or (len(parts) == 3 and all(parts.count(t) <= 1 for t in ("pre", "post"))))
    if not ok:
        raise ValueError(f"channels {spec!r}: name each channel of the upload in order, e.g. 'pre,flair,post' or "
                         f"'flair,pre,post', or 'flair' for FLAIR alone ('none' for a channel to ignore)")
    return parts


def map_channels(image: np.ndarray, spec) -> np.ndarray:
    """``image`` (HxW or HxWxC, in the upload's channel order ``spec``) in the models' order (pre-contrast,
    FLAIR, post-contrast); FLAIR alone (or any channel 'none') becomes FLAIR replicated. None: as it is."""
    parts = parse_channels(spec)
    if parts is None or parts == ["pre", "flair", "post"]:
        return image
    a = np.asarray(image)
    a = a[..., None] if a.ndim == 2 else a
    if a.shape[-1] != len(parts):
        if len(parts) == 1:  # 'flair' for a 3-channel upload: its channels must be one grey image
            if not (np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 1], a[..., 2])):
                raise ValueError(f"channels 'flair' names one channel, but the upload has {a.shape[-1]} different "
                                 f"ones: say which is FLAIR, e.g. 'none,flair,none'")
            return a[..., :1]
        raise ValueError(f"channels names {len(parts)} channels, the upload has {a.shape[-1]}")
    if "none" in parts or len(parts) == 1:
        return a[..., parts.index("flair"):parts.index("flair") + 1]
    return a[..., [parts.index(t) for t in ("pre", "flair", "post")]]


def load_beside(source, classifier_sha256: str = "") -> Optional[InputCheck]:
    """The input check shipped beside a classifier (``input_check.safetensors`` in its folder or Hub repo),
    or None when there is none. Fitted on another classifier's features, only its image statistics are used."""
    import logging

    path = None
    if getattr(source, "local", True):
        p = Path(str(getattr(source, "location", source))) / FILENAME
        path = p if p.is_file() else None
    else:
        from huggingface_hub import hf_hub_download

        try:
            path = Path(hf_hub_download(source.location, FILENAME, revision=source.revision))
        except Exception:  # noqa: BLE001  (a repo without one, or offline: no check, said in the log)
            path = None
    if path is None:
        logging.getLogger("brainseg").warning("no %s beside the classifier %s: inputs are not checked", FILENAME, source)
        return None
    check = InputCheck.load(path)
    if classifier_sha256 and check.config.classifier_sha256 and check.config.classifier_sha256 != classifier_sha256:
        logging.getLogger("brainseg").warning("%s was fitted on another classifier: its features are not scored", path)
        check.features = None
    return check
