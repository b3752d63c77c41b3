"""Hub metadata and the model kinds, defined once; imports nothing else of brainseg, so the model
classes (:mod:`brainseg.models`), the loaders (:mod:`brainseg.sources`) and the cards
(:mod:`brainseg.cards`) all read it without importing one another in a circle."""
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LICENSE = "cc-by-nc-sa-4.0"
LIBRARY_NAME = "brainseg"

# PLACEHOLDERS until published: the Hub repo ids and the code's address, defined here only. The cards, the
# README part and push_to_hub.py take them from here; push_to_hub.py writes the real ids into what it uploads
# and refuses to push to the placeholder namespace.
PLACEHOLDER_NAMESPACE = "USER"
HUB_IDS = {"segmenter": f"{PLACEHOLDER_NAMESPACE}/brainseg-segmenter",
           "classifier": f"{PLACEHOLDER_NAMESPACE}/brainseg-classifier",
           "space": f"{PLACEHOLDER_NAMESPACE}/brainseg"}
REPO_URL = "https://github.com/brainseg/brainseg"

# The classifier has one logit, the tumour's: timm and transformers read one label for it.
LABEL_NAMES = ("tumour",)
# The fixed mean and std (0-1 scale, per channel) in the classifier's pretrained_cfg, for timm's and transformers'
# own transforms: the average over development slices of each slice's brain-pixel mean and std, the statistics
# slice_zscore uses (hf_pipeline.brain_pixel_statistics over every 4th of the 3,133 kaggle_3m slices of the 88
# development cases). The nearest fixed stand-in for the per-slice z-score; the card says how near it comes.
PIPELINE_MEAN = (0.0991, 0.0905, 0.0924)
PIPELINE_STD = (0.1119, 0.1106, 0.1141)
BASE_TAGS = ("medical-imaging", "mri", "brain-tumor")
PIPELINE_TAGS = {"segmenter": "image-segmentation", "classifier": "image-classification"}
# The class each kind of checkpoint loads into; config.json names it under "model_class".
MODEL_CLASSES = {"segmenter": "ResUNet", "classifier": "TumorClassifier"}


def is_placeholder(repo_id: str) -> bool:
    """True for a ``USER/...`` repo id of :data:`HUB_IDS`, which is nobody's account."""
    return repo_id.split("/")[0] == PLACEHOLDER_NAMESPACE


def mixin_metadata(kind: str) -> dict:
    """The Hub mixin's class arguments for a model of ``kind`` (models.py); the cards use the same values.

    A new tag list each call: the mixin appends its own tags to the list it is given.
    """
    return dict(library_name=LIBRARY_NAME, license=LICENSE, repo_url=REPO_URL, tags=list(BASE_TAGS),
                pipeline_tag=PIPELINE_TAGS[kind])


def kind_of_config(cfg: dict, where: str = "config.json") -> str:
    """'segmenter' or 'classifier': from ``model_class``, else (configs saved before it) from the fields."""
    name = cfg.get("model_class")
    if name is not None:
        kinds = {v: k for k, v in MODEL_CLASSES.items()}
        if name not in kinds:
            raise ValueError(f"{where} names model_class {name!r}; brainseg knows {', '.join(kinds)}")
        return kinds[name]
    if "decoder_channels" in cfg:
        return "segmenter"
    if "temperature" in cfg or "fusion_weights" in cfg:
        return "classifier"
    raise ValueError(f"Cannot tell whether {where} is a segmenter's or a classifier's: it has no model_class")
