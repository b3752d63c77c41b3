"""Typed configuration: the one source of defaults, saved into each checkpoint's ``config.json``.

A checkpoint carries everything needed to use it (encoder, input size, channel order,
normalisation, decision threshold), so training, evaluation and the app cannot drift apart.
"""
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

CHANNEL_ORDER = ["pre-contrast", "FLAIR", "post-contrast"]
PRECISIONS = ("auto", "fp32", "bf16")  # the segmenter's arithmetic: auto picks bf16 where the hardware has it
FLAIR_INDEX = 1


@dataclass
class PreprocessConfig:
    """How a slice becomes a tensor; shared by both models so one function serves them all.

    ``normalization="slice_zscore"`` standardises each channel with the mean and standard
    deviation of that slice's brain pixels (non-zero), so a single slice is enough at inference
    and 8-bit, 16-bit and float inputs of the same scan give the same tensor.
    """

    image_size: int = 256
    in_chans: int = 3
    channel_order: List[str] = field(default_factory=lambda: list(CHANNEL_ORDER))
    normalization: str = "slice_zscore"
    clip: float = 5.0

    @property
    def model_in_chans(self) -> int:
        """The model's input channels: a slice's ``in_chans``."""
        return self.in_chans


@dataclass
class SegmenterConfig(PreprocessConfig):
    """ResUNet: a timm encoder (``features_only``), a residual decoder, a 1-channel head.

    Post-processing, chosen on validation cases (:mod:`brainseg.calibrate`) and applied by
    :func:`brainseg.postprocess.postprocess_mask`, the one rule:

    - ``threshold``: the *pixel* threshold (``Predictor.pixel_threshold``): a pixel is tumour when its
      probability is >= this; the app's slider and every ``threshold=`` argument move this one;
    - ``min_component_px``: connected components smaller than this are dropped, counted at the model's
      input size (``image_size``) and scaled to the slice's own size;
    - the mask is drawn iff the slice is detected, at the classifier's detection threshold (one gate).
    - ``case_rule`` / ``case_min_voxels``: where the input is a whole case
      (:meth:`Predictor.predict_case`: whole-case analysis and evaluation), 3-D connected components
      across its slices are judged (:mod:`brainseg.volume`: ``"none"``, ``"largest"``, ``"min_voxels"``;
      voxels counted at ``image_size``). A slice the rule leaves without a mask is no longer detected.
    """

    encoder: str = "resnet34"
    decoder_channels: List[int] = field(default_factory=lambda: [256, 128, 64, 32, 16])
    pretrained: bool = False
    threshold: float = 0.5
    min_component_px: int = 0
    tta_flip: bool = False
    case_rule: str = "none"
    case_min_voxels: int = 0
    deep_supervision: int = 0  # training only: side heads on this many of the coarser decoder stages


@dataclass
class ClassifierConfig(PreprocessConfig):
    """Slice-level tumour classifier: a timm ResNet with one logit.

    ``temperature`` divides the logit before the sigmoid (set by calibration on validation
    cases), so the probability the app shows means what it says; ``threshold`` is the *detection*
    threshold of the classifier alone (used when ``fusion_weights`` is None).

    Beside the segmenter, detection is a logistic fusion of the two models' evidence, fitted
    on the validation cases: ``sigmoid(w0 * classifier_logit + w1 * segmenter_evidence + b)``
    with ``fusion_weights = [w0, w1, b]`` and the segmenter evidence the logit of the mean of
    its ``fusion_top_k`` highest pixel probabilities (at its input size); ``fusion_threshold``
    is then the *detection* threshold. ``fusion_weights=None`` keeps the classifier alone.
    ``Predictor.detection_threshold`` says which one applies; a slice is detected iff its
    probability is >= it, and only a detected slice has a mask.
    """

    image_size: int = 128
    encoder: str = "resnet18"
    pretrained: bool = False
    threshold: float = 0.5
    temperature: float = 1.0
    drop_rate: float = 0.0
    fusion_weights: Optional[List[float]] = None
    fusion_top_k: int = 50
    fusion_threshold: float = 0.5


@dataclass
class TrainConfig:
    """Training hyper-parameters for ``train.py``; saved beside the checkpoint in metrics.json.

    Everything needed to rerun a checkpoint's training is here (encoder and input size live in the
    model config), so a card can quote the command instead of rebuilding it.
    """

    task: str = "segmenter"
    data: str = ""
    out: str = "runs/segmenter"
    split: Optional[str] = None
    val_fraction: float = 0.2
    folds: Optional[str] = None  # a k-fold file (splits/*fold*.json); with ``fold`` it sets the split
    fold: Optional[int] = None
    seed: int = 42
    epochs: int = 20
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.5
    empty_fraction: float = 0.3
    augment: bool = True
    dark_interior: float = 0.0  # segmenter: share of slices whose large tumour gets a dark core (data.RandomDarkInterior)
    precision: str = "auto"  # "auto": bf16 autocast where the CPU has native bf16 and a timed step is faster, fp16 AMP on CUDA, else fp32
    ema_decay: float = 0.0  # per-step decay of the weight average that is validated and saved (0: none)
    select: str = "best"  # which epoch is saved: "best" on validation, or "last" (a fixed schedule: nothing chosen)
    workers: int = 2
    max_steps: int = 0
    max_val_cases: int = 0
    resume: Optional[str] = None
    init_from: Optional[str] = None
    init_encoder_from: Optional[str] = None
    threads: int = 0


RECIPES = Path(__file__).resolve().parent.parent / "configs"  # the shipped recipes: configs/<task>.json


def load_recipe(recipe: Union[str, Path], overrides: Sequence[str] = (), **values
                ) -> Tuple[str, PreprocessConfig, TrainConfig]:
    """A training recipe -> (task, model config, train config): the shipped models' recipe is data, not flags.

    Args:
        recipe: a JSON file ``{"task": ..., "model": {SegmenterConfig or ClassifierConfig fields},
            "train": {TrainConfig fields}}``, or ``"segmenter"`` / ``"classifier"`` for ``configs/<task>.json``.
        overrides: ``"field=value"`` strings (value as JSON, else a string) for any model or train field
            (``train.py --set``).
        values: typed values of model or train fields, applied last (``train.py``'s own options).
    Raises:
        ValueError naming the file and the field, for an unknown task or field or a bad value.
    """
    path = RECIPES / f"{recipe}.json" if str(recipe) in ("segmenter", "classifier") else Path(recipe)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable recipe ({e})") from None
    task = data.get("task")
    if task not in ("segmenter", "classifier") or set(data) - {"task", "model", "train"}:
        raise ValueError(f"{path}: a recipe holds task ('segmenter' or 'classifier'), model and train, got "
                         f"{sorted(data)} with task {task!r}")
    model_cls = SegmenterConfig if task == "segmenter" else ClassifierConfig
    parts = {"model": dict(data.get("model") or {}), "train": dict(data.get("train") or {}, task=task)}
    names = {"model": {f.name for f in fields(model_cls)}, "train": {f.name for f in fields(TrainConfig)}}
    for item in overrides:
        key, sep, value = item.partition("=")
        part = next((k for k in ("model", "train") if key in names[k]), None)
        if not sep or part is None:
            raise ValueError(f"--set {item}: expected FIELD=VALUE with a field of {model_cls.__name__} or TrainConfig")
        try:
            parts[part][key] = json.loads(value)
        except ValueError:
            parts[part][key] = value
    for key, value in values.items():
        parts["model" if key in names["model"] else "train"][key] = value  # an unknown one is refused below
    for part, cls in (("model", model_cls), ("train", TrainConfig)):
        unknown = sorted(set(parts[part]) - names[part])
        if unknown:
            raise ValueError(f"{path}: {part} fields {cls.__name__} does not have: {', '.join(unknown)}")
    return task, model_cls(**parts["model"]), TrainConfig(**parts["train"])


# ---------------------------------------------------------------- checked at load

class ConfigError(ValueError):
    """A model's config.json holds a value this version cannot use; the message names the file and the field."""


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _encoder(v) -> bool:
    import timm

    return isinstance(v, str) and timm.is_model(v)


def _probability(v) -> bool:
    return _num(v) and 0 <= v <= 1


NORMALIZATIONS = ("slice_zscore",)
CASE_RULES = ("none", "largest", "min_voxels")  # brainseg.volume applies them
# field -> (test, what the value must be); a field not named here only has to have its declared type
_RULES = {
    "image_size": (lambda v: _int(v) and 32 <= v <= 2048 and v % 32 == 0, "an integer multiple of 32 from 32 to 2048"),
    "in_chans": (lambda v: v in (1, 3) and _int(v), "1 (FLAIR) or 3"),
    "channel_order": (lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v), "a list of channel names"),
    "normalization": (lambda v: v in NORMALIZATIONS, f"one of {', '.join(NORMALIZATIONS)}"),
    "clip": (lambda v: _num(v) and v > 0, "a positive number"),
    "encoder": (_encoder, "the name of a timm model"),
    "decoder_channels": (lambda v: isinstance(v, list) and 0 < len(v) <= 8 and all(_int(c) and 0 < c <= 4096 for c in v),
                         "a list of 1 to 8 positive integers"),
    "pretrained": (lambda v: isinstance(v, bool), "true or false"),
    "tta_flip": (lambda v: isinstance(v, bool), "true or false"),
    "threshold": (_probability, "a number from 0 to 1"),
    "fusion_threshold": (_probability, "a number from 0 to 1"),
    "min_component_px": (lambda v: _int(v) and v >= 0, "an integer >= 0"),
    "case_rule": (lambda v: v in CASE_RULES, f"one of {', '.join(CASE_RULES)}"),
    "case_min_voxels": (lambda v: _int(v) and v >= 0, "an integer >= 0"),
    "deep_supervision": (lambda v: _int(v) and 0 <= v <= 8, "an integer from 0 to 8"),
    "temperature": (lambda v: _num(v) and v > 0, "a positive number"),
    "drop_rate": (lambda v: _num(v) and 0 <= v < 1, "a number from 0 to below 1"),
    "fusion_weights": (lambda v: v is None or (isinstance(v, list) and len(v) == 3 and all(_num(w) for w in v)),
                       "null or a list of 3 numbers"),
    "fusion_top_k": (lambda v: _int(v) and 1 <= v <= 2**22, "a positive integer"),
}


def validate_config(cfg, where: str) -> None:
    """Every field of a model config checked (types, ranges, enums) before a model is built from it.

    A bad value would otherwise surface later as a traceback, a 120 GB allocation, or every request
    failing as if the user's upload were at fault. Raises :class:`ConfigError`: ``<where>: field F ...``.
    """
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        test, what = _RULES.get(f.name, (None, None))
        if test is not None and not test(value):
            raise ConfigError(f"{where}: field {f.name} must be {what}, got {value!r}. Fix the file or ship the model "
                              f"again")
    if len(cfg.channel_order) != cfg.in_chans:
        raise ConfigError(f"{where}: field channel_order names {len(cfg.channel_order)} channels but in_chans is "
                          f"{cfg.in_chans}")
