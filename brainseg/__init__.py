"""brainseg: brain MRI tumour detection and segmentation (ResUNet + slice classifier) in Hub format.

    >>> import brainseg
    >>> model = brainseg.from_pretrained("models/segmenter")           # ResUNet or TumorClassifier
    >>> predictor = brainseg.Predictor.from_sources()                  # both shipped models
    >>> pred = predictor.predict(brainseg.load_slice("slice.tif"))     # pre-contrast, FLAIR, post-contrast

Names are imported on first use, so ``import brainseg`` stays cheap (no torch until a model is needed).
"""
import importlib
from typing import Any

__version__ = "0.3.0"

# public name -> the module that defines it
_EXPORTS = {
    "from_pretrained": "sources", "load_model": "sources", "parse_source": "sources", "ModelSource": "sources",
    "SourceNotFoundError": "sources",
    "ResUNet": "models", "TumorClassifier": "models", "CheckpointError": "models",
    "SegmenterConfig": "config", "ClassifierConfig": "config", "PreprocessConfig": "config",
    "Predictor": "inference", "Prediction": "decision",
    "load_slice": "images", "load_mask": "images", "decode_image": "images",
    "build_model_card": "cards", "write_model_card": "cards",
}
__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'brainseg' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
