"""The classifier in transformers' ``image-classification`` pipeline, with brainseg's own preprocessing.

``pipeline("image-classification", model=folder_or_id)`` alone builds transformers' TimmWrapper
image processor from config.json's ``pretrained_cfg``: timm's eval transform (resize to 128, scale
to 0-1, one fixed mean and std per channel). The classifier was trained on each slice's own z-score
(:func:`brainseg.preprocess.preprocess`), which no fixed mean and std reproduce, so that score is an
approximation (measured in the card). :func:`classification_pipeline` hands the same pipeline
:class:`SliceImageProcessor`, which preprocesses as brainseg does: its score is the classifier's
sigmoid(logit), which the Predictor divides by the temperature first (1.004 for the shipped model).

Example:
    >>> pipe = classification_pipeline("models/classifier")
    >>> pipe("examples/TCGA_CS_4943_20000902_17.png")   # [{'label': 'tumour', 'score': 0.999...}]
"""
from typing import List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from transformers import pipeline
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

from .config import ClassifierConfig
from .preprocess import preprocess



def brain_pixel_statistics(images: Sequence[np.ndarray]) -> tuple:
    """(mean, std) per channel, 0-1 scale, averaged over slices, of each uint8 slice's brain pixels: how
    :data:`brainseg.hub_meta.PIPELINE_MEAN` and ``PIPELINE_STD`` were computed."""
    from .preprocess import brain_pixels, to_chw_float

    means, stds = [], []
    for image in images:
        x = to_chw_float(image) / 255.0
        brain = brain_pixels(x)
        if brain.sum() >= 0.01 * brain.numel():  # slice_zscore's own fallback: too little brain, all pixels
            px = x.reshape(x.shape[0], -1)[:, brain]
            means.append(px.mean(1))
            stds.append(px.std(1))
    return tuple(torch.stack(means).mean(0).tolist()), tuple(torch.stack(stds).mean(0).tolist())


class SliceImageProcessor(BaseImageProcessor):
    """transformers image processor that calls :func:`brainseg.preprocess.preprocess` with the checkpoint's
    config (resize to its size, slice z-score over the brain pixels, clip), so the pipeline sees what the
    classifier was trained on."""

    model_input_names = ["pixel_values"]

    def __init__(self, slice_config: Union[ClassifierConfig, Mapping, None] = None, **kwargs):
        super().__init__(**kwargs)
        fields = ClassifierConfig.__dataclass_fields__
        if isinstance(slice_config, Mapping):
            slice_config = ClassifierConfig(**{k: v for k, v in slice_config.items() if k in fields})
        self.slice_config = slice_config or ClassifierConfig()

    def preprocess(self, images, return_tensors: Optional[str] = "pt", **kwargs) -> BatchFeature:
        """One slice or a list: PIL images, HxWx3 arrays (pre-contrast, FLAIR, post-contrast) or CxHxW tensors."""
        batch: List = list(images) if isinstance(images, (list, tuple)) else [images]
        x = torch.stack([preprocess(im if isinstance(im, torch.Tensor) else np.asarray(im), self.slice_config)
                         for im in batch])
        return BatchFeature({"pixel_values": x}, tensor_type=return_tensors)


def classification_pipeline(model: str, revision: Optional[str] = None, **kwargs):
    """``transformers.pipeline("image-classification", model=...)`` with :class:`SliceImageProcessor`.

    Args:
        model: the classifier's folder or Hub repo id (as for ``pipeline``).
        revision: Hub branch, tag or commit.
        kwargs: passed on to ``transformers.pipeline`` (e.g. ``device``).
    """
    from .sources import parse_source, read_config

    cfg = read_config(parse_source(model, revision))
    return pipeline("image-classification", model=model, revision=revision,
                    image_processor=SliceImageProcessor(cfg), **kwargs)
