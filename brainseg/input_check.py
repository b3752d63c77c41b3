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
  background (an inverted or photographic image), a foreground touching most of the border, a shape
  more than twice as wide as high (a banner or a strip of panels, not one slice).

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

import numpy as np
import torch

from .config import CHANNEL_ORDER
from .input_stats import ENTROPY, SliceStats, slice_stats, stack_coherence

FILENAME = "input_check.safetensors"
STATUSES = ("ok", "warn", "refuse")
NOT_SQUARE = "an axial brain MRI slice is about square"  # in the shape rule's reason; a case counts it
ORDERS = list(permutations(range(3)))  # ORDERS[0] is the expected one


@dataclass
class InputCheckConfig:
    """What the fitted check needs beside its arrays; saved in the safetensors file's metadata.

    ``feature_warn``/``image_warn``: the squared Mahalanobis distances that warn (quantile
    ``warn_quantile`` of held-out real slices); ``feature_refuse``/``image_refuse``: the scores (in units
    of the warn distance) that refuse; ``entropy_min``: the fewest grey levels (bits) a channel may have;
    ``few_levels_refuse``: a slice outside a warn distance with a channel under this entropy (bits) is refused
    (phantoms are; on fold 0 no real slice was that was not refused already), unless near-black (the empty
    slices above the head); ``channel_margin``: the log-likelihood by which another channel order
    must beat the expected one to warn; ``flair_min``: the FLAIR probability a single-channel upload
    needs. With the input CNN (:mod:`brainseg.input_net`): an MRI logit under ``net_mri_refuse`` refuses,
    another channel order more likely by ``net_margin`` (log-odds) warns, and a single channel under
    ``net_flair_min`` P(FLAIR) warns; chosen on fold 0's held-out slices (the benchmark reports fold 1). A grey upload
    read by the single-channel net (:class:`brainseg.input_net.SingleChannelNet`) warns under ``single_flair_min``
    P(FLAIR): the 1 % quantile of fold 0's held-out FLAIR channels alone (a net trained without fold 0), so about
    1 % of FLAIR-alone uploads are warned. An image more than ``max_aspect`` times as wide as high (or high as
    wide) is refused: an axial section of a head is about square (kaggle_3m's are 256 x 256; scanners' fields of
    view run to about 1.3 : 1), a banner, a strip of panels or a page is not one slice. ``classifier_sha256`` ties
    the feature statistics to the classifier they were fitted on.
    """

    feature_warn: float = float("inf")
    image_warn: float = float("inf")
    feature_refuse: float = 2.0
    image_refuse: float = 4.0
    entropy_min: float = 0.0
    few_levels_refuse: float = 2.0
    warn_quantile: float = 0.995
    channel_margin: float = 2.0
    flair_min: float = 0.5
    net_mri_refuse: float = -1.5
    net_margin: float = 4.0
    net_flair_min: float = 0.05
    single_flair_min: float = 0.025
    case_warn_fraction: float = 0.2
    case_refuse_fraction: float = 0.5
    case_min_coherence: float = 0.5
    max_aspect: float = 2.0
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
        return ((d @ self.precision) * d).sum(1)  # a BLAS product: einsum's three-operand loop is slower


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
                 order: Linear, single: Linear, net=None, single_net=None):
        self.config, self.features, self.image, self.order, self.single = config, features, image, order, single
        self.net = net  # brainseg.input_net.InputNet, or None: the channel regressions decide
        self.single_net = single_net  # brainseg.input_net.SingleChannelNet for grey uploads, or None

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
        s = stats if stats is not None else slice_stats(image, joint=self.net is None)  # the CNN needs no joint
        r, cfg = CheckResult(), self.config
        if s.blank:
            r.add("refuse", "the image is blank (one value, or almost nothing above the background)")
            return r
        h, w = np.shape(image)[:2]
        if max(h, w) > cfg.max_aspect * min(h, w):
            r.add("refuse", f"the image is {w} x {h} pixels, {max(h, w) / min(h, w):.1f} times as "
                            f"{'wide as high' if w > h else 'high as wide'}: {NOT_SQUARE} (crop one slice)")
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
        if r.score >= 1.0 and cfg.entropy_min <= entropy < cfg.few_levels_refuse and not s.faint:
            r.add("refuse", f"this does not look like an axial brain MRI slice: unusual, and with few grey levels "
                            f"(entropy {entropy:.1f} bits): a drawing or a phantom?")
        for k, v in sorted(sc.items(), key=lambda kv: -kv[1]):
            if v >= refuse[k]:
                r.add("refuse", f"this does not look like an axial brain MRI slice: {names[k]} lie far outside "
                                f"the training slices ({v:.1f}x the warn distance)")
            elif v >= 1.0:
                r.add("warn", f"unusual input: {names[k]} lie outside {100 * cfg.warn_quantile:g} % of real slices "
                              f"({v:.1f}x the warn distance); trust the answer less")
        if self.net is not None:
            self._check_net(image, s, r)
        elif r.status != "refuse":
            self._check_channels(s, r)
        return r

    def _check_net(self, image: np.ndarray, s: SliceStats, r: CheckResult) -> None:
        from .input_net import net_input, predict

        small = s.small if s.small is not None else image  # the statistics' 128 px copy: no second resize of the upload
        lp, mri = predict(self.net, net_input(small)[None])
        lp, mri, cfg, names = lp[0], float(mri[0]), self.config, self.config.channel_order
        if mri < cfg.net_mri_refuse:
            r.add("refuse", f"this does not look like an MRI slice (the input model's MRI score {mri:.1f} is under "
                            f"{cfg.net_mri_refuse:g})")
        if r.status == "refuse":  # not an MRI slice: which channel is which means nothing, and a case does not count it
            return
        if s.replicated:
            if self.single_net is not None:
                from .input_net import predict_single, single_input

                single, least = predict_single(self.single_net, single_input(small)[None])[0], cfg.single_flair_min
            else:
                single, least = np.exp(lp[len(ORDERS):] - np.logaddexp.reduce(lp[len(ORDERS):])), cfg.net_flair_min
            r.channel_order = [names[int(np.argmax(single))]]
            if single[1] < least:
                r.add("warn", f"a single channel that looks like {r.channel_order[0]}, not FLAIR "
                              f"(P(FLAIR) = {single[1]:.2f}); the models read FLAIR alone")
            return
        orders = lp[:len(ORDERS)]
        best = int(np.argmax(orders))
        r.channel_order = [names[j] for j in ORDERS[best]]
        if best != 0 and orders[best] - orders[0] >= cfg.net_margin:
            r.add("warn", f"the channels look like ({', '.join(r.channel_order)}), not the expected "
                          f"({', '.join(names)}): set the channel order")

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
            shape = sum(any(NOT_SQUARE in t for t in s.reasons) for s in slices)
            hint = (f" ({shape} are far from square: a volume read along the wrong axis gives one image row per "
                    f"axial slice; check its header)") if shape / n >= cfg.case_refuse_fraction else ""
            r.add("refuse", f"{refused} of {n} slices do not look like axial brain MRI slices{hint}")
        elif (refused + warned) / n >= cfg.case_warn_fraction:
            r.add("warn", f"{refused + warned} of {n} slices were warned about or refused")
        votes = [tuple(s.channel_order) for s in slices if s.channel_order]
        if votes:  # one slice may be misread; most of a case's slices rarely are (a grey case votes for one name)
            top = max(set(votes), key=votes.count)
            if top not in (tuple(cfg.channel_order), ("FLAIR",)) and votes.count(top) > len(votes) / 2:
                r.add("warn", f"most slices ({votes.count(top)} of {len(votes)}) look like channels ({', '.join(top)}), "
                              f"not ({', '.join(cfg.channel_order)}): set the channel order")
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
        for prefix, net in (("net", self.net), ("single_net", self.single_net)):
            if net is not None:
                arrays.update({f"{prefix}.{k}": v.detach().float().numpy() for k, v in net.state_dict().items()})
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
        from .input_net import InputNet, SingleChannelNet

        nets = {}
        for prefix, kind in (("net", InputNet), ("single_net", SingleChannelNet)):
            state = {k[len(prefix) + 1:]: torch.from_numpy(v) for k, v in a.items() if k.startswith(prefix + ".")}
            if state:
                nets[prefix] = kind()
                nets[prefix].load_state_dict(state)
                nets[prefix].eval()
        return cls(config, feats, Gaussian(a["image_mean"], a["image_precision"]), lin("order"), lin("single"),
                   nets.get("net"), nets.get("single_net"))


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
