"""Model sources ("folder" or "user/repo@revision"), loading, model cards and upload helpers.

Three parts, in the order a checkpoint lives through them:

* sources: :func:`parse_source`, :func:`resolve_source`, :func:`load_model`;
* model cards: :func:`build_model_card` / :func:`write_model_card` turn a Hub-format folder's
  ``config.json``, ``metrics.json`` and evaluation JSON into its ``README.md``;
* uploads: :func:`plan_model_upload`, :func:`plan_space_upload` describe what goes where
  (:class:`UploadPlan`), :func:`format_plans` prints a plan for ``--dry-run`` and :func:`push`
  carries it out through an ``HfApi`` (or a stand-in in tests).
"""
import contextlib
import fnmatch
import glob
import json
import math
import os
import re
import shlex
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Type, Union

from huggingface_hub.errors import EntryNotFoundError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS = {"segmenter": PROJECT_ROOT / "models" / "segmenter",
                  "classifier": PROJECT_ROOT / "models" / "classifier"}
ENV_VARS = {"segmenter": "BRAINSEG_SEGMENTER", "classifier": "BRAINSEG_CLASSIFIER"}


@dataclass
class ModelSource:
    """Where a model came from: a local folder, or a Hub repo id with an optional revision."""

    location: str
    revision: Optional[str] = None
    local: bool = True

    def __str__(self) -> str:
        return self.location + (f"@{self.revision}" if self.revision else "")


def parse_source(spec: str) -> ModelSource:
    """``"models/segmenter"`` -> local folder; ``"user/repo@abc123"`` -> Hub repo at a revision.

    An existing folder always wins, so a local path that happens to look like a repo id works.
    """
    if os.path.isdir(spec):
        return ModelSource(str(Path(spec)), None, True)
    repo, _, rev = spec.partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ValueError(f"Model source {spec!r} is neither an existing folder nor a Hub repo id 'user/name[@revision]'")
    return ModelSource(repo, rev or None, False)


def resolve_source(kind: str, spec: Optional[str] = None) -> ModelSource:
    """The source to use for ``kind`` ('segmenter' or 'classifier'): argument, env var, else shipped default."""
    spec = spec or os.environ.get(ENV_VARS[kind]) or str(DEFAULT_MODELS[kind])
    return parse_source(spec)


def load_model(kind: str, spec: Optional[str] = None) -> Tuple[object, ModelSource]:
    """Load a segmenter or classifier from a folder or the Hub (safetensors only, strict)."""
    from .models import ResUNet, TumorClassifier

    cls: Type = {"segmenter": ResUNet, "classifier": TumorClassifier}[kind]
    src = resolve_source(kind, spec)
    if src.local and not (Path(src.location) / "config.json").exists():
        raise FileNotFoundError(f"No config.json in model folder {src.location}: is it a Hub-format checkpoint?")
    try:
        model = cls.from_pretrained(src.location, revision=src.revision)
    except EntryNotFoundError as e:  # a Hub file missing remotely, or from the cache when offline
        raise FileNotFoundError(
            f"Could not get the {kind} files from Hub repo {src}: {e}. brainseg loads only config.json + "
            f"model.safetensors (never pickled .bin weights); offline (HF_HUB_OFFLINE=1) they must already be "
            f"in the Hub cache. Push a Hub-format folder with push_to_hub.py, or pass a local folder.") from e
    return model.eval(), src


# ---------------------------------------------------------------- model cards

LICENSE = "cc-by-nc-sa-4.0"
LIBRARY_NAME = "brainseg"
DATASET_ID = "mateuszbuda/lgg-mri-segmentation"
DATASET_NAME = "LGG MRI Segmentation (kaggle_3m)"
DATASET_CASES = 110
EVAL_GLOB = "eval*.json"
NOT_MEASURED = "not measured"
# Repo ids written into cards before the real ones are known; push_to_hub.py fills in the real ones.
PLACEHOLDER_REPOS = {"segmenter": "USER/brainseg-segmenter", "classifier": "USER/brainseg-classifier",
                     "space": "USER/brainseg"}


@dataclass(frozen=True)
class CardMetric:
    """One metric of a card: its key in the evaluation / metrics JSON, Hub metric type, display name."""

    key: str
    type: str
    name: str
    in_index: bool = True  # False: table only, not in the Hub model-index


_KINDS = {
    "segmenter": dict(
        cls="ResUNet", pipeline_tag="image-segmentation", task_tag="segmentation", eval_block="seg",
        title="ResUNet segmenter for lower-grade glioma on brain MRI slices",
        task_name="Brain tumour (FLAIR abnormality) segmentation",
        metrics=[CardMetric("dice_per_case_mean", "dice", "Dice per case, mean"),
                 CardMetric("dice_per_case_median", "dice", "Dice per case, median"),
                 CardMetric("dice_tumor_slices_mean", "dice", "Dice on tumour slices, mean"),
                 CardMetric("iou_per_case_mean", "iou", "IoU per case, mean"),
                 CardMetric("false_positive_slices", "false_positive_slices",
                            "Empty slices with a predicted mask (count)", in_index=False)]),
    "classifier": dict(
        cls="TumorClassifier", pipeline_tag="image-classification", task_tag="image-classification",
        eval_block="det", title="Slice-level tumour classifier for lower-grade glioma on brain MRI",
        task_name="Slice-level brain tumour detection",
        metrics=[CardMetric("auroc", "roc_auc", "AUROC"),
                 CardMetric("accuracy", "accuracy", "Accuracy"),
                 CardMetric("sensitivity", "recall", "Sensitivity (recall)"),
                 CardMetric("specificity", "specificity", "Specificity"),
                 CardMetric("ece", "ece", "Expected calibration error (10 bins)")]),
}

_CITATION = """@article{buda2019association,
  title   = {Association of genomic subtypes of lower-grade gliomas with shape features
             automatically extracted by a deep learning algorithm},
  author  = {Buda, Mateusz and Saha, Ashirbani and Mazurowski, Maciej A.},
  journal = {Computers in Biology and Medicine},
  volume  = {109},
  pages   = {218--225},
  year    = {2019},
  doi     = {10.1016/j.compbiomed.2019.05.002}
}"""


def _read_json(path: Path) -> Optional[dict]:
    return json.loads(path.read_text()) if path.is_file() else None


def find_eval_json(model_dir: Union[str, Path]) -> Optional[Path]:
    """The evaluation JSON saved in a model folder (``eval_val.json`` first, else the first ``eval*.json``)."""
    model_dir = Path(model_dir)
    preferred = model_dir / "eval_val.json"
    if preferred.is_file():
        return preferred
    found = sorted(model_dir.glob(EVAL_GLOB))
    return found[0] if found else None


def _number(v: Any) -> Optional[float]:
    """A finite number, or None (missing, NaN, or not a number)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return v


def _fmt(v: Any, digits: int = 3) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.{digits}f}" if math.isfinite(v) else "undefined on these cases"
    return NOT_MEASURED if v is None else str(v)


def _count(v: Any) -> Optional[int]:
    """Cases or slices given as a number or as a list of names."""
    if isinstance(v, (list, tuple, dict)):
        return len(v)
    return int(v) if _number(v) is not None else None


def _calibration(*sources: Optional[dict]) -> Optional[dict]:
    for src in sources:
        if src and isinstance(src.get("calibration"), dict):
            return src["calibration"]
    return None


def _weights_summary(path: Path) -> Optional[str]:
    """Parameter count, storage dtype and size from a safetensors header (no tensor is read)."""
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    names = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}
    floats = [t for k, t in header.items() if k != "__metadata__" and t["dtype"] in names]
    n = sum(math.prod(t["shape"]) for t in floats)  # weights and BatchNorm statistics; no step counters
    stored = "/".join(sorted({names[t["dtype"]] for t in floats}))
    note = " (loaded as float32)" if stored != "float32" else ""
    return f"{n / 1e6:.2f} M parameters, stored as {stored}{note}, {path.stat().st_size / 1e6:.1f} MB"


def _metric_columns(kind: str, metrics: Optional[dict], eval_metrics: Optional[dict], eval_name: str,
                    calibration: Optional[dict]) -> List[Tuple[str, str, Dict[str, Any]]]:
    """(column title, how it was measured, {metric key: value}) for each source of numbers that exists."""
    spec = _KINDS[kind]
    cols = []
    if eval_metrics:
        block = dict(eval_metrics.get(spec["eval_block"]) or {})
        if kind == "classifier" and block.get("ece") is None:
            block["ece"] = eval_metrics.get("ece")
            if block["ece"] is None and calibration:
                after = [k for k in ("ece_after", "ece_calibrated", "ece") if k in calibration]
                block["ece"] = calibration[after[0]] if after else None
        cases, slices = _count(eval_metrics.get("cases")), _count(eval_metrics.get("slices"))
        where = (f"{_fmt(cases)} cases, {_fmt(slices)} slices" if cases is not None else "cases not recorded")
        fused = kind == "classifier" and bool((calibration or {}).get("fusion"))
        how = (f"`python -m brainseg.evaluate`, saved as `{eval_name}`: {where}; the full inference pipeline "
               f"(preprocessing, thresholds and post-processing from this config"
               + ((", this model's logit fused with the segmenter's evidence, at the fused threshold" if fused
                   else ", calibrated probabilities at the stored threshold") if kind == "classifier" else "") + ").")
        cols.append(("Final evaluation", how, {m.key: block.get(m.key) for m in spec["metrics"]}))
        if fused and isinstance(calibration.get("at_threshold"), dict):
            alone = dict(calibration["at_threshold"], ece=calibration.get("ece_after"))
            cols.append(("Classifier alone", "the same validation slices, this model's temperature-calibrated "
                         f"probability at its own threshold ({_fmt(alone.get('threshold'), 3)}), no fusion "
                         "(from the calibration report).", {m.key: alone.get(m.key) for m in spec["metrics"]}))
    val = (metrics or {}).get("val")
    if val:
        epochs = ((metrics.get("train_config") or {}).get("epochs"))
        at = (f"pixel threshold 0.5, no post-processing" if kind == "segmenter"
              else f"before temperature calibration, threshold {_fmt(val.get('threshold', 0.5), 2)}")
        how = (f"`train.py`'s validation at the best epoch ({_fmt(metrics.get('best_epoch'))}"
               + (f" of {epochs}" if epochs else "") + f") on {_fmt(metrics.get('val_cases'))} validation cases "
               f"({_fmt(metrics.get('val_slices'))} slices), at the model's input size, {at}.")
        cols.append(("Training-time validation", how, {m.key: val.get(m.key) for m in spec["metrics"]}))
    return cols


def _eval_results(kind: str, model_name: str, column: Optional[Tuple[str, str, Dict[str, Any]]],
                  n_cases: Optional[int]):
    """Hub model-index entries for the metric values that exist in ``column`` (none are invented)."""
    from huggingface_hub import EvalResult

    if column is None:
        return []
    spec = _KINDS[kind]
    dataset = DATASET_NAME + (f", {n_cases} validation cases" if n_cases else ", validation cases")
    out = []
    for m in spec["metrics"]:
        v = _number(column[2].get(m.key))
        if m.in_index and v is not None:
            out.append(EvalResult(task_type=spec["pipeline_tag"], task_name=spec["task_name"], dataset_type=DATASET_ID,
                                  dataset_name=dataset, dataset_split="validation", metric_type=m.type,
                                  metric_name=f"{m.name} ({column[0].lower()})", metric_value=round(float(v), 4)))
    return out


def _config_rows(kind: str, cfg: dict, weights: Optional[str]) -> List[Tuple[str, str]]:
    s = cfg.get("image_size")
    rows = [("Architecture", f"`{_KINDS[kind]['cls']}`: timm encoder `{cfg.get('encoder')}`"
             + (f", residual decoder {cfg.get('decoder_channels')}, 1-channel head" if kind == "segmenter"
                else ", one logit"))]
    if "pretrained" in cfg:
        rows.append(("Encoder initialisation",
                     "ImageNet weights (timm)" if cfg["pretrained"] else "random (from scratch)"))
    if weights:
        rows.append(("Weights", weights))
    rows.append(("Input size", f"{s} x {s}: slices are resized to it and the mask is mapped back to the input size"
                 if kind == "segmenter" else f"{s} x {s}: slices are resized to it"))
    order = cfg.get("channel_order") or []
    rows.append(("Channels", f"{cfg.get('in_chans', len(order))}, in this order: {', '.join(order)} "
                 "(the kaggle_3m TIFF order); a FLAIR-only slice is replicated to 3 channels"))
    norm = cfg.get("normalization")
    rows.append(("Normalisation", f"`slice_zscore`: per slice and channel, z-score over the brain (non-background) "
                 f"pixels, clipped to +-{cfg.get('clip')}" if norm == "slice_zscore" else f"`{norm}`"))
    if kind == "segmenter":
        gate = cfg.get("gate_threshold") or 0
        rows += [("Pixel threshold", _fmt(cfg.get("threshold"))),
                 ("Small components dropped", f"under {cfg.get('min_component_px', 0)} px at {s} x {s}"
                  if cfg.get("min_component_px") else "off"),
                 ("Detection gate", f"mask emptied when the slice's detection probability is below {_fmt(gate)}"
                  if gate > 0 else "off"),
                 ("Flip test-time augmentation", "on" if cfg.get("tta_flip") else "off")]
    else:
        rows += [("Decision threshold", f"{_fmt(cfg.get('threshold'))} on the calibrated probability"),
                 ("Temperature", f"{_fmt(cfg.get('temperature'))}: probability = sigmoid(logit / temperature)")]
        w = cfg.get("fusion_weights")
        if w:
            rows += [("Detection with the segmenter",
                      f"probability = sigmoid({_fmt(w[0])} x logit + {_fmt(w[1])} x evidence + ({_fmt(w[2])})), "
                      f"evidence = logit of the mean of the segmenter's {cfg.get('fusion_top_k')} highest pixel "
                      "probabilities; fitted on the validation cases (what `Predictor` and the app report)"),
                     ("Fused decision threshold", _fmt(cfg.get("fusion_threshold")))]
    return rows


def _split_lines(metrics: Optional[dict]) -> List[str]:
    """The patient-level split, from metrics.json and the split file it names (when readable)."""
    if not metrics or metrics.get("train_cases") is None:
        return [f"- Split: {NOT_MEASURED} (no metrics.json beside the weights)."]
    tcfg = metrics.get("train_config") or {}
    n_train, n_val = metrics["train_cases"], metrics.get("val_cases")
    split, split_file = None, metrics.get("split")
    if split_file:
        path = Path(split_file) if Path(split_file).is_absolute() else PROJECT_ROOT / split_file
        with contextlib.suppress(OSError, ValueError):
            split = _read_json(path)
    seed = (split or {}).get("seed", tcfg.get("seed"))
    strat = (split or {}).get("stratified_by", "institution")
    lines = [f"- Patient-level split: **{n_train} training cases** and **{n_val} validation cases**; "
             f"no patient has slices on both sides. Validation cases are drawn per {strat} "
             f"(stratified), seed {seed}" + (f", split file `{split_file}`." if split_file else ".")]
    if split and split.get("val"):
        from .data import institution_of

        per_inst: Dict[str, List[int]] = {}
        for side, i in (("train", 0), ("val", 1)):
            for name in split.get(side, []):
                per_inst.setdefault(institution_of(name), [0, 0])[i] += 1
        lines.append("- Cases per institution (train / val): "
                     + ", ".join(f"{k} {v[0]}/{v[1]}" for k, v in sorted(per_inst.items())) + ".")
        lines.append("- Validation cases: " + ", ".join(f"`{n}`" for n in split["val"]) + ".")
    used = n_train + (n_val or 0)
    if used < DATASET_CASES:
        lines.append(f"- The other {DATASET_CASES - used} of the dataset's {DATASET_CASES} cases were held out: "
                     "not used for training, model selection or calibration.")
    return lines


def _reconstruct_train_command(metrics: Optional[dict], model_dir: Path) -> List[str]:
    """The ``train.py`` command recorded in metrics.json (its last stage only)."""
    if not metrics or not metrics.get("train_config"):
        return []
    t, m = metrics["train_config"], metrics.get("model_config") or {}
    cmd = ["python", "train.py", t.get("task", metrics.get("task", "?")), "--data", t.get("data") or "DATA",
           "--split", t.get("split") or metrics.get("split") or "SPLIT.json", "--out", t.get("out") or str(model_dir)]
    for flag, value in (("--encoder", m.get("encoder")), ("--image-size", m.get("image_size")),
                        ("--epochs", t.get("epochs")), ("--batch-size", t.get("batch_size")), ("--lr", t.get("lr")),
                        ("--weight-decay", t.get("weight_decay")), ("--empty-fraction", t.get("empty_fraction")),
                        ("--seed", t.get("seed"))):
        if value is not None:
            cmd += [flag, str(value)]
    cmd += (["--pretrained"] if m.get("pretrained") else []) + ([] if t.get("augment", True) else ["--no-augment"])
    return [shlex.join(cmd)]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    return (["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
            + ["| " + " | ".join(r) + " |" for r in rows])


def _calibration_tables(calibration: dict) -> List[str]:
    """The calibration report as tables: its scalars, then one row per nested result (e.g. each candidate rule)."""
    lines = []
    scalars = [[str(k), _fmt(v, 4)] for k, v in calibration.items() if not isinstance(v, (dict, list))]
    if scalars:
        lines += _table(["Quantity", "Value"], scalars) + [""]
    nested = {k: v for k, v in calibration.items() if isinstance(v, dict)}
    cols = list(dict.fromkeys(c for v in nested.values() for c, x in v.items() if not isinstance(x, (dict, list))))
    if nested and cols:
        lines += _table([""] + cols, [[k] + [_fmt(v.get(c), 4) if c in v else "" for c in cols]
                                      for k, v in nested.items()]) + [""]
    return lines[:-1] if lines else lines


def build_model_card(model_dir: Union[str, Path], kind: str, metrics: Optional[dict] = None,
                     eval_metrics: Union[dict, str, Path, None] = None,
                     train_command: Union[str, Sequence[str], None] = None,
                     repo_ids: Optional[Mapping[str, str]] = None):
    """A :class:`huggingface_hub.ModelCard` for a Hub-format folder, from its config and metrics.

    Args:
        model_dir: folder with ``config.json`` (and ideally ``model.safetensors``, ``metrics.json``).
        kind: ``"segmenter"`` or ``"classifier"``.
        metrics: ``train.py``'s metrics dict; None reads ``metrics.json`` from the folder if present.
        eval_metrics: ``brainseg.evaluate``'s dict or a path to its JSON; None uses ``eval_val.json`` /
            ``eval*.json`` in the folder if present.
        train_command: the command(s) that produced the weights; None rebuilds the last stage from
            metrics.json.
        repo_ids: Hub ids for ``"segmenter"``, ``"classifier"``, ``"space"`` to write into the usage
            snippets; missing ones stay as :data:`PLACEHOLDER_REPOS`.

    Returns:
        The card; ``str(card)`` is the README text. Only metric values that exist are shown or put in
        the model-index; the rest read "not measured".
    """
    from huggingface_hub import ModelCard, ModelCardData

    if kind not in _KINDS:
        raise ValueError(f"kind must be 'segmenter' or 'classifier', got {kind!r}")
    model_dir, spec = Path(model_dir), _KINDS[kind]
    cfg = _read_json(model_dir / "config.json")
    if cfg is None:
        raise FileNotFoundError(f"No config.json in {model_dir}: save the model with save_pretrained() first")
    metrics = metrics if metrics is not None else _read_json(model_dir / "metrics.json")
    eval_name = "eval_val.json"
    if isinstance(eval_metrics, (str, Path)):
        eval_name, eval_metrics = Path(eval_metrics).name, _read_json(Path(eval_metrics))
    elif eval_metrics is None and find_eval_json(model_dir):
        path = find_eval_json(model_dir)
        eval_name, eval_metrics = path.name, _read_json(path)
    repos = {**PLACEHOLDER_REPOS, **(repo_ids or {})}
    repo = repos[kind]
    calibration = _calibration(cfg, metrics, eval_metrics)
    columns = _metric_columns(kind, metrics, eval_metrics, eval_name, calibration)
    n_val = _count((eval_metrics or {}).get("cases")) if eval_metrics else (metrics or {}).get("val_cases")
    results = _eval_results(kind, repo.split("/")[-1], columns[0] if columns else None, n_val)
    data = ModelCardData(
        license=LICENSE, library_name=LIBRARY_NAME, pipeline_tag=spec["pipeline_tag"], datasets=[DATASET_ID],
        tags=["medical-imaging", "mri", "brain-tumor", spec["task_tag"], "lgg", "pytorch", "timm",
              "model_hub_mixin", "pytorch_model_hub_mixin"],
        model_name=repo.split("/")[-1] if results else None, eval_results=results or None)

    if isinstance(train_command, str):
        commands = [train_command]
    elif train_command:
        commands = list(train_command)
    else:
        commands = _reconstruct_train_command(metrics, model_dir)
    cls, other = spec["cls"], "classifier" if kind == "segmenter" else "segmenter"
    calibrated = ("a temperature-calibrated" if calibration or cfg.get("temperature", 1.0) != 1.0
                  else "an uncalibrated (temperature 1)")
    order = ", ".join(cfg.get("channel_order") or [])
    L: List[str] = [f"# brainseg {kind}: {spec['title']}", ""]
    if kind == "segmenter":
        L.append(f"`{cls}` outlines lower-grade glioma (the FLAIR abnormality) on single axial brain MRI slices "
                 f"({order}). It is one half of brainseg; the other half, the slice classifier "
                 f"[`{repos[other]}`](https://huggingface.co/{repos[other]}), gives the detection probability "
                 "(fused with this model's evidence when the classifier's config holds fusion weights).")
    else:
        L.append(f"`{cls}` answers one question per axial brain MRI slice ({order}): does it show lower-grade "
                 f"glioma? It gives {calibrated} probability. It is one half of brainseg; the other half, "
                 f"the segmenter [`{repos[other]}`](https://huggingface.co/{repos[other]}), outlines the tumour."
                 + (" Used together, brainseg's detection probability fuses this model's logit with the "
                    "segmenter's evidence (weights in the Configuration table), which detects better than "
                    "either alone (Evaluation)." if cfg.get("fusion_weights") else ""))
    L += ["", "> **This is NOT a medical device.** It is a research and teaching model, not cleared or approved by "
          "any regulator. It must not be used for diagnosis, treatment or any other clinical decision.", "",
          "## Intended use", "",
          "- Research, teaching and demos of tumour segmentation and detection on brain MRI slices like those of "
          "the LGG kaggle_3m dataset.",
          f"- Input: one axial slice as an H x W x 3 array in the channel order {order} (uint8, uint16 or "
          "float; any size).",
          ("- Output: a per-pixel tumour probability and a binary mask at the input's size."
           if kind == "segmenter" else f"- Output: {calibrated} probability that the slice contains tumour."),
          "- Out of scope: any clinical use; other tumour types, sequences or modalities (CT, T2-only, DWI); "
          "3D volumes as such; images of other body parts.", "",
          "## Training data", "",
          f"[{DATASET_NAME}](https://www.kaggle.com/datasets/{DATASET_ID}), released on Kaggle by Mateusz Buda "
          f"under CC BY-NC-SA 4.0: {DATASET_CASES} patients with lower-grade glioma from The Cancer Genome Atlas, "
          "whose images come from The Cancer Imaging Archive (TCIA) TCGA-LGG collection; pre-contrast, FLAIR and "
          "post-contrast slices with manual FLAIR-abnormality masks. The model inherits the non-commercial, "
          "share-alike terms.", "",
          "- Buda M., Saha A., Mazurowski M. A. Association of genomic subtypes of lower-grade gliomas with shape "
          "features automatically extracted by a deep learning algorithm. *Computers in Biology and Medicine* 109 "
          "(2019) 218-225. doi:[10.1016/j.compbiomed.2019.05.002](https://doi.org/10.1016/j.compbiomed.2019.05.002)",
          "- Mazurowski M. A. et al. Radiogenomics of lower-grade glioma: algorithmically-assessed tumor shape is "
          "associated with tumor genomic subtypes and patient outcomes in a multi-institutional study with The "
          "Cancer Genome Atlas data. *Journal of Neuro-Oncology* 133 (2017) 27-35.",
          "- Images: TCGA-LGG collection, The Cancer Imaging Archive (TCIA).", "", "### Split", ""]
    L += _split_lines(metrics)
    L += ["", "## Evaluation", ""]
    names = [c[0] for c in columns] or ["Value"]
    rows = [[m.name] + ([_fmt(c[2].get(m.key)) for c in columns] or [NOT_MEASURED]) for m in spec["metrics"]]
    L += _table(["Metric"] + names, rows)
    L.append("")
    if not columns:
        L.append(f"No metrics were measured for this checkpoint: every value above is {NOT_MEASURED}.")
    for title, how, _ in columns:
        L.append(f"- **{title}**: {how}")
    if columns:
        tuned = (", the thresholds and the post-processing" if kind == "segmenter"
                 else ", the thresholds, the temperature and the fusion weights" if cfg.get("fusion_weights")
                 else ", the threshold and the temperature")
        L.append("- The same validation cases chose the best epoch" + (tuned if eval_metrics else "")
                 + ", so expect somewhat lower numbers on new patients.")
    if kind == "segmenter":
        L.append("- Per-case Dice pools all slices of a case before the ratio (a case with no tumour and no "
                 "prediction scores 1); tumour-slice Dice averages over slices that contain tumour.")
    speed = _number((eval_metrics or {}).get("seconds_per_slice"))
    if speed is not None:
        prec = (eval_metrics or {}).get("precision")
        L.append(f"- Speed: {speed:.3f} s per slice, as `brainseg.evaluate` measured it on its machine"
                 + (f" (segmenter in {prec})." if prec else "."))
    if calibration:
        L += ["", "### Calibration on the validation cases" if kind == "classifier"
              else "### Decision rules chosen on the validation cases", ""]
        L += _calibration_tables(calibration)
    L += ["", "## Configuration", "", "Everything a user of the weights needs is in `config.json`:", ""]
    L += _table(["Setting", "Value"], _config_rows(kind, cfg, _weights_summary(model_dir / "model.safetensors")))
    L += ["", "## How to use", "",
          "With the `brainseg` package (the project repository, also bundled in the demo Space):", "",
          "```python", f"from brainseg.models import {cls}",
          f"model = {cls}.from_pretrained(\"{repo}\")  # strict, safetensors only",
          "# pin a version: from_pretrained(\"%s\", revision=\"<commit>\")" % repo, "```", "",
          "Both models behind one call, with the preprocessing, thresholds and post-processing of their configs:",
          "", "```python", "from brainseg.inference import Predictor",
          f"predictor = Predictor.from_sources(\"{repos['segmenter']}\", \"{repos['classifier']}\")",
          f"pred = predictor.predict(image)  # H x W x 3: {order}",
          "pred.tumor_probability, pred.tumor_detected, pred.mask  # mask: uint8 0/1 at H x W", "```", "",
          "## Training", ""]
    if commands:
        L += ["The command(s) that produced these weights (CPU or GPU; see the project README):", "", "```bash"]
        L += commands + ["```"]
        if train_command is None and (PROJECT_ROOT / "scripts" / "train_models.sh").is_file():
            L += ["", "Rebuilt from metrics.json, which records the last stage only; `scripts/train_models.sh` "
                  "holds every stage (e.g. a smaller-size warm-up passed on with `--init-from`)."]
    else:
        L.append(f"Training command: {NOT_MEASURED} (no metrics.json beside the weights).")
    L += ["", "## Limitations", "",
          "- 2D: each slice is judged alone, with no context from neighbouring slices or the 3D volume.",
          f"- One dataset: {DATASET_CASES} lower-grade glioma patients from a handful of TCGA institutions and "
          "their scanners and protocols (mostly 1990s-2000s); other hospitals, scanners, field strengths and "
          "tumour types (e.g. glioblastoma, metastases) are untested.",
          f"- Exactly 3 channels in a fixed order ({order}), skull not stripped, axial orientation as in "
          "kaggle_3m; other sequences, orders, skull-stripped or resampled images are out of distribution.",
          "- Masks are FLAIR-abnormality outlines by one group's annotators; small or faint lesions at the edge "
          "of the tumour are the most uncertain.",
          "- Metrics come from the validation cases of one split (see above), a small sample with wide "
          "confidence intervals; they say nothing about clinical usefulness.", "",
          "## Citation", "", "If you use the data, please cite:", "", "```bibtex", _CITATION, "```", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(L))


def write_model_card(model_dir: Union[str, Path], kind: str, metrics: Optional[dict] = None,
                     eval_metrics: Union[dict, str, Path, None] = None,
                     train_command: Union[str, Sequence[str], None] = None,
                     repo_ids: Optional[Mapping[str, str]] = None) -> Path:
    """Write ``README.md`` (the model card) into a Hub-format folder, replacing the mixin's default card.

    Call it after ``save_pretrained`` and after ``metrics.json`` (and any evaluation JSON) are written;
    arguments as in :func:`build_model_card`. Returns the README path.

    Example:
        >>> write_model_card("models/segmenter", "segmenter",
        ...                  train_command="bash scripts/train_models.sh ../shared/data/lgg/kaggle_3m")
    """
    card = build_model_card(model_dir, kind, metrics, eval_metrics, train_command, repo_ids)
    path = Path(model_dir) / "README.md"
    card.save(path)
    return path


def is_brainseg_card(text: str) -> bool:
    """True for a card written by :func:`write_model_card` (not the mixin's default card)."""
    return "NOT a medical device" in text and f"library_name: {LIBRARY_NAME}" in text


def fill_repo_ids(text: str, repo_ids: Mapping[str, str]) -> str:
    """Replace :data:`PLACEHOLDER_REPOS` in a card or README with the real repo ids."""
    for key, placeholder in PLACEHOLDER_REPOS.items():
        if repo_ids.get(key):
            text = text.replace(placeholder, repo_ids[key])
    return text


# ---------------------------------------------------------------- uploads

MODEL_FILE_PATTERNS = ("config.json", "model.safetensors", "README.md", "metrics.json", "*.png", EVAL_GLOB)
SPACE_REQUIRED_FILES = ("app.py", "requirements.txt")
SPACE_OPTIONAL_FILES = ("LICENSE", "LICENSE.md", "LICENSE.txt", "NOTICE", "packages.txt")
SPACE_DIRS = ("brainseg", "examples")
SPACE_EXCLUDED = {".venv", "venv", "runs", "tests", "__pycache__", ".git", ".pytest_cache", ".gradio", "flagged"}
SPACE_HEADER_FILE = Path("docs") / "space_header.yml"
# Last resort when neither README.md nor docs/space_header.yml carries the Spaces header.
SPACE_HEADER_DEFAULTS = {"title": "brainseg", "emoji": "🧠", "colorFrom": "indigo", "colorTo": "pink",
                         "sdk": "gradio", "sdk_version": "6.31.0", "app_file": "app.py", "pinned": False,
                         "license": LICENSE, "short_description": "Brain MRI tumour detection and segmentation"}
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.S)


@dataclass
class UploadFile:
    """One file of an upload: read from disk (``source``) or generated here (``content``)."""

    path_in_repo: str
    size: int
    source: Optional[Path] = None
    content: Optional[bytes] = None
    note: str = ""
    warning: str = ""  # shown by the dry run and before a push; the upload goes ahead


@dataclass
class UploadPlan:
    """Everything one commit to one Hub repo needs; the dry run prints it, :func:`push` carries it out."""

    repo_id: str
    repo_type: str  # "model" or "space"
    folder: Path
    files: List[UploadFile]
    private: bool = False
    revision: Optional[str] = None  # a branch, created when missing; None is the default branch
    space_sdk: Optional[str] = None
    commit_message: str = "Upload with brainseg push_to_hub.py"

    @property
    def url(self) -> str:
        from huggingface_hub import constants

        kind = "spaces/" if self.repo_type == "space" else "datasets/" if self.repo_type == "dataset" else ""
        return f"{constants.ENDPOINT}/{kind}{self.repo_id}" + (f"/tree/{self.revision}" if self.revision else "")

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def allow_patterns(self) -> List[str]:
        """The exact file list as ``upload_folder`` patterns (fnmatch specials escaped)."""
        return [glob.escape(f.path_in_repo) for f in self.files]

    @property
    def needs_staging(self) -> bool:
        """True when some file is generated or lands at another path than in ``folder``."""
        return any(f.content is not None or f.source is None or f.source != self.folder / f.path_in_repo
                   for f in self.files)


@dataclass
class PushResult:
    """What the Hub answered for one plan."""

    repo_id: str
    repo_type: str
    revision: Optional[str]
    repo_url: str
    commit_url: Optional[str]
    commit: Optional[str]


def check_repo_id(repo_id: str, what: str = "repo") -> str:
    """``user/name`` or raise ValueError saying what is wrong (no network)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ValueError(f"{what} {repo_id!r} is not a valid Hub repo id: {e}") from None
    if repo_id.count("/") != 1:
        raise ValueError(f"{what} {repo_id!r} needs a namespace: write it as USER/NAME (or ORG/NAME)")
    return repo_id


def _human(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _disk_file(path: Path, path_in_repo: str) -> UploadFile:
    return UploadFile(path_in_repo, path.stat().st_size, source=path)


def _text_file(path_in_repo: str, text: str, note: str) -> UploadFile:
    data = text.encode("utf-8")
    return UploadFile(path_in_repo, len(data), content=data, note=note)


def model_files(folder: Union[str, Path]) -> List[Path]:
    """The Hub-format files of a model folder (no training state such as ``last_state.pt``)."""
    folder = Path(folder)
    missing = [n for n in ("config.json", "model.safetensors") if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} is not a Hub-format model folder: {', '.join(missing)} missing. Train one "
            f"(python train.py ... --out {folder}) or point --segmenter-dir / --classifier-dir at one.")
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and any(fnmatch.fnmatchcase(p.name, pat) for pat in MODEL_FILE_PATTERNS))


def _model_upload_files(folder: Path, kind: str, repo_ids: Mapping[str, str], prefix: str = "") -> List[UploadFile]:
    """A model folder's files; its card gets the real repo ids, or is generated if it is the mixin's default."""
    out = []
    for path in model_files(folder):
        if path.name != "README.md":
            out.append(_disk_file(path, prefix + path.name))
            continue
        text = path.read_text(encoding="utf-8")
        if not is_brainseg_card(text):
            continue  # replaced below by a generated card
        filled = fill_repo_ids(text, repo_ids)
        card = (_text_file(prefix + path.name, filled, f"{path} with the repo ids filled in") if filled != text
                else _disk_file(path, prefix + path.name))
        newer = [p.name for p in [folder / "config.json", folder / "metrics.json", *folder.glob(EVAL_GLOB)]
                 if p.is_file() and p.stat().st_mtime > path.stat().st_mtime]
        if newer:
            card.warning = (f"{path} is older than {', '.join(newer)}: regenerate it with "
                            f"python -m brainseg.hub card {folder}")
        out.append(card)
    if not any(f.path_in_repo == prefix + "README.md" for f in out):
        card = str(build_model_card(folder, kind, repo_ids=repo_ids))
        out.append(_text_file(prefix + "README.md", card, f"model card from {folder}'s config and metrics; "
                              "its README.md is not a brainseg card"))
    return sorted(out, key=lambda f: f.path_in_repo)


def plan_model_upload(folder: Union[str, Path], repo_id: str, kind: str, *, private: bool = False,
                      revision: Optional[str] = None, repo_ids: Optional[Mapping[str, str]] = None) -> UploadPlan:
    """Plan the upload of one Hub-format model folder to a model repo (reads files, no network).

    Args:
        folder: e.g. ``models/segmenter``; only :data:`MODEL_FILE_PATTERNS` files go up.
        repo_id: ``USER/NAME``.
        kind: ``"segmenter"`` or ``"classifier"`` (for a generated card).
        repo_ids: all repo ids of this push, written into the model card's usage snippets.
    """
    check_repo_id(repo_id, f"{kind} repo")
    folder = Path(folder)
    files = _model_upload_files(folder, kind, {**(repo_ids or {}), kind: repo_id})
    return UploadPlan(repo_id, "model", folder, files, private, revision,
                      commit_message=f"Upload brainseg {kind} with push_to_hub.py")


def split_front_matter(text: str) -> Tuple[Optional[str], str]:
    """(YAML between the leading ``---`` lines or None, the rest of the text)."""
    m = _FRONT_MATTER.match(text)
    return (m.group(1), text[m.end():]) if m else (None, text)


def _pinned_version(requirements: Path, package: str) -> Optional[str]:
    if not requirements.is_file():
        return None
    m = re.search(rf"^\s*{package}\s*==\s*([^\s;#]+)", requirements.read_text(), re.M | re.I)
    return m.group(1) if m else None


def space_readme(root: Union[str, Path], repo_ids: Optional[Mapping[str, str]] = None) -> str:
    """The Space's README.md: the project README with a valid Spaces header.

    The header comes from README.md's own front matter, else ``docs/space_header.yml``, else
    :data:`SPACE_HEADER_DEFAULTS`; ``models`` lists the model repos of this push and ``sdk_version``
    follows the gradio pin in requirements.txt, so the Space builds the Gradio it was tested with.
    """
    import yaml

    root, repo_ids = Path(root), dict(repo_ids or {})
    readme = root / "README.md"
    header, body = split_front_matter(readme.read_text(encoding="utf-8") if readme.is_file() else "")
    for candidate in (root / SPACE_HEADER_FILE, PROJECT_ROOT / SPACE_HEADER_FILE):
        if header is None and candidate.is_file():
            header = split_front_matter(candidate.read_text(encoding="utf-8"))[0]
    meta = yaml.safe_load(header) if header else {}
    if not isinstance(meta, dict):
        raise ValueError(f"The Spaces header in {readme} is not a YAML mapping")
    meta = {**SPACE_HEADER_DEFAULTS, **meta}
    if meta.get("sdk") != "gradio" or not (root / meta["app_file"]).is_file():
        raise ValueError(f"The Spaces header must say sdk: gradio and name an existing app_file "
                         f"(got sdk={meta.get('sdk')!r}, app_file={meta.get('app_file')!r} in {root})")
    gradio = _pinned_version(root / "requirements.txt", "gradio")
    if gradio:
        meta["sdk_version"] = gradio
    models = [repo_ids[k] for k in ("segmenter", "classifier") if repo_ids.get(k)]
    if models:
        meta["models"] = models
    body = fill_repo_ids(body, repo_ids).lstrip("\n") or (
        "# brainseg\n\nBrain MRI tumour detection and segmentation on the LGG kaggle_3m data. "
        "NOT a medical device.\n")
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n" + body


def space_files(root: Union[str, Path]) -> List[Path]:
    """The app files a Space needs from the project (models excepted): app.py, brainseg/, examples/, ..."""
    root = Path(root)
    missing = [n for n in SPACE_REQUIRED_FILES if not (root / n).is_file()]
    missing += [] if (root / "brainseg").is_dir() else ["brainseg/"]
    if missing:
        raise FileNotFoundError(f"{root} lacks {', '.join(missing)}: a Gradio Space needs app.py, "
                                "requirements.txt and the brainseg package")
    out = [root / n for n in SPACE_REQUIRED_FILES + SPACE_OPTIONAL_FILES if (root / n).is_file()]
    for d in SPACE_DIRS:
        for p in sorted((root / d).rglob("*")) if (root / d).is_dir() else []:
            rel = p.relative_to(root)
            if p.is_file() and p.suffix not in (".pyc", ".pyo") and not any(
                    part in SPACE_EXCLUDED or part.startswith(".") for part in rel.parts):
                out.append(p)
    return out


def plan_space_upload(root: Union[str, Path], repo_id: str, model_dirs: Mapping[str, Union[str, Path]], *,
                      private: bool = False, revision: Optional[str] = None,
                      repo_ids: Optional[Mapping[str, str]] = None) -> UploadPlan:
    """Plan a Gradio Space of the demo that runs offline on the bundled models (reads files, no network).

    Args:
        root: the project folder (app.py, requirements.txt, brainseg/, examples/, README.md).
        repo_id: the Space, ``USER/NAME``.
        model_dirs: ``{"segmenter": folder, "classifier": folder}``, uploaded to ``models/<kind>/``
            where the app finds its default models.
        repo_ids: the model repos of this push (the header's ``models`` list and the usage snippets).
    """
    check_repo_id(repo_id, "Space")
    root, repo_ids = Path(root), {**(repo_ids or {}), "space": repo_id}
    files = [_disk_file(p, p.relative_to(root).as_posix()) for p in space_files(root)]
    files.append(_text_file("README.md", space_readme(root, repo_ids), "project README with the Spaces header"))
    for kind, folder in model_dirs.items():
        files += _model_upload_files(Path(folder), kind, repo_ids, prefix=f"models/{kind}/")
    files.sort(key=lambda f: f.path_in_repo)
    return UploadPlan(repo_id, "space", root, files, private, revision, space_sdk="gradio",
                      commit_message="Upload the brainseg demo with push_to_hub.py")


def format_plans(plans: Sequence[UploadPlan], cwd: Union[str, Path, None] = None) -> str:
    """The dry-run listing: every file with its repo type, repo id, path in the repo, size and origin."""
    cwd = Path(cwd or os.getcwd()).resolve()
    lines = []
    for plan in plans:
        where = f"branch {plan.revision} (created if missing)" if plan.revision else "default branch"
        lines += [f"{plan.repo_type} {plan.repo_id}: {len(plan.files)} files, {_human(plan.size)}, "
                  f"{'private' if plan.private else 'public'} if created, {where} -> {plan.url}"]
        width = max(len(f.path_in_repo) for f in plan.files)
        for f in plan.files:
            if f.source is not None:
                src = Path(f.source).resolve()
                origin = (str(src.relative_to(cwd)) if src.is_relative_to(cwd) else str(src)) + (
                    f" ({f.note})" if f.note else "")
            else:
                origin = f"(generated: {f.note})" if f.note else "(generated)"
            lines.append(f"  {plan.repo_type:<5}  {plan.repo_id}  {f.path_in_repo:<{width}}  {_human(f.size):>9}"
                         f"  <- {origin}")
        lines.append("")
    return "\n".join(lines + [f"warning: {w}" for w in plan_warnings(plans)])


def plan_warnings(plans: Sequence[UploadPlan]) -> List[str]:
    """Distinct warnings of the planned files (e.g. a model card older than its metrics)."""
    return list(dict.fromkeys(f.warning for plan in plans for f in plan.files if f.warning))


@contextlib.contextmanager
def _staged(plan: UploadPlan) -> Iterator[Path]:
    """The folder to upload from: the plan's own, or a temporary copy holding generated files."""
    if not plan.needs_staging:
        yield plan.folder
        return
    with tempfile.TemporaryDirectory(prefix="brainseg-upload-") as tmp:
        for f in plan.files:
            dest = Path(tmp) / f.path_in_repo
            dest.parent.mkdir(parents=True, exist_ok=True)
            if f.content is not None:
                dest.write_bytes(f.content)
            else:
                try:
                    os.link(f.source, dest)  # no copy of the weights when on the same disk
                except OSError:
                    shutil.copy2(f.source, dest)
        yield Path(tmp)


def hub_token() -> str:
    """The Hub token from ``HF_TOKEN`` or the cached login, or an error saying how to get one."""
    from huggingface_hub import get_token
    from huggingface_hub.errors import LocalTokenNotFoundError

    token = get_token()
    if not token:
        raise LocalTokenNotFoundError(
            "No Hugging Face token: set HF_TOKEN to a token with write access "
            "(https://huggingface.co/settings/tokens) or log in once with `hf auth login`. "
            "--dry-run shows the plan without one.")
    return token


def push(plans: Sequence[UploadPlan], api, log=print) -> List[PushResult]:
    """Create each repo if needed (and the branch), then upload its files in one commit.

    Args:
        plans: from :func:`plan_model_upload` / :func:`plan_space_upload`.
        api: a :class:`huggingface_hub.HfApi` (holding the token), or a stand-in with the same methods.

    Returns:
        One :class:`PushResult` per plan, with the repo URL and the commit id and URL.
    """
    results = []
    for plan in plans:
        extra = {"space_sdk": plan.space_sdk} if plan.repo_type == "space" else {}
        repo_url = api.create_repo(plan.repo_id, repo_type=plan.repo_type, private=plan.private, exist_ok=True,
                                   **extra)
        if plan.revision:
            api.create_branch(plan.repo_id, branch=plan.revision, repo_type=plan.repo_type, exist_ok=True)
        log(f"uploading {len(plan.files)} files ({_human(plan.size)}) to {plan.repo_type} {plan.repo_id}"
            + (f" on branch {plan.revision}" if plan.revision else "") + " ...")
        with _staged(plan) as folder:
            info = api.upload_folder(repo_id=plan.repo_id, repo_type=plan.repo_type, folder_path=str(folder),
                                     allow_patterns=plan.allow_patterns, revision=plan.revision,
                                     commit_message=plan.commit_message)
        results.append(PushResult(plan.repo_id, plan.repo_type, plan.revision, str(repo_url),
                                  getattr(info, "commit_url", None), getattr(info, "oid", None)))
    return results


# ---------------------------------------------------------------- command line: (re)write a model card

def infer_kind(model_dir: Union[str, Path]) -> str:
    """'segmenter' or 'classifier', from metrics.json's task or the fields of config.json."""
    model_dir = Path(model_dir)
    task = (_read_json(model_dir / "metrics.json") or {}).get("task")
    if task in _KINDS:
        return task
    cfg = _read_json(model_dir / "config.json") or {}
    if "decoder_channels" in cfg:
        return "segmenter"
    if "temperature" in cfg:
        return "classifier"
    raise ValueError(f"Cannot tell whether {model_dir} holds a segmenter or a classifier: pass --kind")


def script_commands(path: Union[str, Path]) -> List[str]:
    """A shell script's lines for a card's bash block (shebang and ``set`` lines dropped), headed by its path."""
    keep = [ln.rstrip() for ln in Path(path).read_text().splitlines()
            if ln.strip() and not ln.startswith("#!") and not ln.startswith("set ")]
    return [f"# {path}"] + keep


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m brainseg.hub card DIR [--kind K] [--eval JSON] [--train-command CMD]... [--train-script SH]``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m brainseg.hub", description="Write a Hub-format folder's model card "
                                "(README.md) from its config.json, metrics.json and evaluation JSON.")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("card", help="write DIR/README.md")
    c.add_argument("model_dir", type=Path)
    c.add_argument("--kind", choices=sorted(_KINDS), help="default: from metrics.json / config.json")
    c.add_argument("--eval", type=Path, help=f"evaluation JSON (default: DIR/{EVAL_GLOB} when present)")
    c.add_argument("--train-command", action="append", default=[], help="a command that produced the weights "
                   "(repeat for several stages)")
    c.add_argument("--train-script", type=Path, help="a script holding those commands, shown in the card")
    args = p.parse_args(argv)
    commands = list(args.train_command) + (script_commands(args.train_script) if args.train_script else [])
    kind = args.kind or infer_kind(args.model_dir)
    path = write_model_card(args.model_dir, kind, eval_metrics=args.eval, train_command=commands or None)
    print(f"wrote {path} ({kind})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
