"""Typed configuration: the one source of defaults, saved into each checkpoint's ``config.json``.

A checkpoint carries everything needed to use it (encoder, input size, channel order,
normalisation, decision threshold), so training, evaluation and the app cannot drift apart.
"""
from dataclasses import dataclass, field
from typing import List, Optional

CHANNEL_ORDER = ["pre-contrast", "FLAIR", "post-contrast"]
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


@dataclass
class SegmenterConfig(PreprocessConfig):
    """ResUNet: a timm encoder (``features_only``), a residual decoder, a 1-channel head.

    Post-processing, chosen on validation cases: ``threshold`` on the pixel probability,
    connected components under ``min_component_px`` (counted at the model's input size) dropped, and the mask emptied
    when the slice's detection probability is below ``gate_threshold`` (0 turns the gate off).
    """

    encoder: str = "resnet34"
    decoder_channels: List[int] = field(default_factory=lambda: [256, 128, 64, 32, 16])
    pretrained: bool = False
    threshold: float = 0.5
    min_component_px: int = 0
    gate_threshold: float = 0.0
    tta_flip: bool = False


@dataclass
class ClassifierConfig(PreprocessConfig):
    """Slice-level tumour classifier: a timm ResNet with one logit.

    ``temperature`` divides the logit before the sigmoid (set by calibration on validation
    cases), so the probability the app shows means what it says; ``threshold`` applies to it.

    Beside the segmenter, detection is a logistic fusion of the two models' evidence, fitted
    on the validation cases: ``sigmoid(w0 * classifier_logit + w1 * segmenter_evidence + b)``
    with ``fusion_weights = [w0, w1, b]`` and the segmenter evidence the logit of the mean of
    its ``fusion_top_k`` highest pixel probabilities (at its input size); ``fusion_threshold``
    is then the decision threshold. ``fusion_weights=None`` keeps the classifier alone.
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
    """Training hyper-parameters for ``train.py``; saved beside the checkpoint in metrics.json."""

    task: str = "segmenter"
    data: str = ""
    out: str = "runs/segmenter"
    split: Optional[str] = None
    val_fraction: float = 0.2
    seed: int = 42
    epochs: int = 20
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.5
    empty_fraction: float = 0.3
    augment: bool = True
    workers: int = 2
    max_steps: int = 0
    max_val_cases: int = 0
    resume: Optional[str] = None
    threads: int = 0
