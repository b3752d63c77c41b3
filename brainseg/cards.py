"""What a model card says: the Hub metadata (defined here once) and a card from ``templates/model_card.md``.

:func:`build_model_card` fills the template (``huggingface_hub.ModelCard.from_template``, as
segmentation_models_pytorch's Hub mixin does) from a Hub-format folder's ``config.json``,
``metrics.json`` and evaluation JSON; :func:`write_model_card` saves it as the folder's README.md.
``python -m brainseg.hub card DIR`` does it from the shell.
"""
import contextlib
import json
import math
import re
import shlex
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .hub_meta import (BASE_TAGS, LIBRARY_NAME, LICENSE, MODEL_CLASSES, PIPELINE_TAGS,  # noqa: F401
                       PROJECT_ROOT, REPO_URL, mixin_metadata)

DATASET_ID = "mateuszbuda/lgg-mri-segmentation"
DATASET_NAME = "LGG MRI Segmentation (kaggle_3m)"
DATASET_CASES = 110
EVAL_GLOB = "eval*.json"
NOT_MEASURED = "not measured"
TEMPLATE = Path(__file__).with_name("templates") / "model_card.md"
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
        task_tag="segmentation", eval_block="seg", title="ResUNet segmenter for lower-grade glioma on brain MRI slices",
        task_name="Brain tumour (FLAIR abnormality) segmentation",
        metrics=[CardMetric("dice_per_case_mean", "dice", "Dice per case, mean"),
                 CardMetric("dice_per_case_median", "dice", "Dice per case, median"),
                 CardMetric("dice_tumor_slices_mean", "dice", "Dice on tumour slices, mean"),
                 CardMetric("iou_per_case_mean", "iou", "IoU per case, mean"),
                 CardMetric("false_positive_slices", "false_positive_slices",
                            "Empty slices with a predicted mask (count)", in_index=False)]),
    "classifier": dict(
        task_tag="image-classification", eval_block="det",
        title="Slice-level tumour classifier for lower-grade glioma on brain MRI",
        task_name="Slice-level brain tumour detection",
        metrics=[CardMetric("auroc", "roc_auc", "AUROC"),
                 CardMetric("accuracy", "accuracy", "Accuracy"),
                 CardMetric("sensitivity", "recall", "Sensitivity (recall)"),
                 CardMetric("specificity", "specificity", "Specificity"),
                 CardMetric("ece", "ece", "Expected calibration error (10 bins)")]),
}
FUSED_COLUMN, ALONE_COLUMN = "With the segmenter (fused)", "Classifier alone"
Column = Tuple[str, str, Dict[str, Any]]  # (title, how it was measured, {metric key: value})


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
    try:
        with open(path, "rb") as f:
            header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    except (struct.error, ValueError, OverflowError, MemoryError):
        return f"{path.name} is unreadable (truncated or not safetensors)"
    names = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}
    floats = [t for k, t in header.items() if k != "__metadata__" and t["dtype"] in names]
    n = sum(math.prod(t["shape"]) for t in floats)  # weights and BatchNorm statistics; no step counters
    stored = "/".join(sorted({names[t["dtype"]] for t in floats}))
    note = " (loaded as float32)" if stored != "float32" else ""
    return f"{n / 1e6:.2f} M parameters, stored as {stored}{note}, {path.stat().st_size / 1e6:.1f} MB"


def _metric_columns(kind: str, metrics: Optional[dict], eval_metrics: Optional[dict], eval_name: str,
                    calibration: Optional[dict], cv: Optional[dict] = None) -> List[Column]:
    """One column for each source of numbers that exists: final evaluation, classifier alone, training."""
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
        how = (_oof_how(cv, eval_name, where, eval_metrics.get("recorded_in")) if cv else
               f"`python -m brainseg.evaluate`, saved as `{eval_name}`: {where}; the full inference pipeline "
               f"(preprocessing, thresholds and post-processing from this config"
               + ((", this model's logit fused with the segmenter's evidence, at the fused threshold; these need "
                   "the segmenter too, so they are not in this card's model-index" if fused
                   else ", calibrated probabilities at the stored threshold") if kind == "classifier" else "") + ").")
        cols.append((FUSED_COLUMN if fused else ("Out-of-fold" if cv else "Final evaluation"), how,
                     {m.key: block.get(m.key) for m in spec["metrics"]}))
        if fused and isinstance(calibration.get("at_threshold"), dict):
            alone = dict(calibration["at_threshold"], ece=calibration.get("ece_after"))
            cols.append((ALONE_COLUMN, f"the same {'held-out' if cv else 'validation'} slices, this model's "
                         "temperature-calibrated probability at its own threshold "
                         f"({_fmt(alone.get('threshold'), 3)}), no fusion (from the calibration report); the "
                         "model-index carries these.",
                         {m.key: alone.get(m.key) for m in spec["metrics"]}))
    val = (metrics or {}).get("val")
    if val and (metrics or {}).get("val_cases") != 0:  # a run on every case has no validation to show
        epochs = ((metrics.get("train_config") or {}).get("epochs"))
        at = ("pixel threshold 0.5, no post-processing" if kind == "segmenter"
              else f"before temperature calibration, threshold {_fmt(val.get('threshold', 0.5), 2)}")
        how = (f"`train.py`'s validation at the best epoch ({_fmt(metrics.get('best_epoch'))}"
               + (f" of {epochs}" if epochs else "") + f") on {_fmt(metrics.get('val_cases'))} validation cases "
               f"({_fmt(metrics.get('val_slices'))} slices), at the model's input size, {at}.")
        cols.append(("Training-time validation", how, {m.key: val.get(m.key) for m in spec["metrics"]}))
    return cols


def _oof_how(cv: dict, eval_name: str, where: str, recorded: Optional[str] = None) -> str:
    """How out-of-fold figures were made (``brainseg.calibrate --cv --eval-json``), in a card's words."""
    means, k = cv.get("dice_per_case_mean_by_fold") or [], cv.get("folds")
    sd = _number(cv.get("dice_per_case_sd_over_folds"))
    spread = (f"; per-case Dice by fold {', '.join(_fmt(m) for m in means)}, "
              f"mean {_fmt(cv.get('dice_per_case_mean_over_folds'))}"
              + (f", sd {_fmt(sd)} over folds" if sd is not None else ""))
    return (f"`python -m brainseg.calibrate --cv`, saved as `{eval_name}`: {where}, each predicted by the fold "
            f"model that did not train on its patient ({_fmt(k)} fold{'' if k == 1 else 's'} of the same "
            f"recipe{spread}); the "
            "full inference pipeline with the rules of this config, which were chosen on these same pooled "
            "predictions" + (f" (recorded in `{recorded}` when they were chosen; the fold runs were not kept)."
                             if recorded else "."))


def _index_column(columns: Sequence[Column]) -> Optional[Column]:
    """The column the model-index reports: this model's own figures, never the fused ones."""
    own = [c for c in columns if c[0] != FUSED_COLUMN]
    return own[0] if own else None


def _eval_results(kind: str, column: Optional[Column], n_cases: Optional[int], oof: bool = False):
    """Hub model-index entries for the metric values that exist in ``column`` (none are invented)."""
    from huggingface_hub import EvalResult

    if column is None:
        return []
    spec = _KINDS[kind]
    what = "cases, out-of-fold" if oof else "validation cases"
    dataset = DATASET_NAME + (f", {n_cases} {what}" if n_cases else f", {what}")
    out = []
    for m in spec["metrics"]:
        v = _number(column[2].get(m.key))
        if m.in_index and v is not None:
            out.append(EvalResult(task_type=PIPELINE_TAGS[kind], task_name=spec["task_name"], dataset_type=DATASET_ID,
                                  dataset_name=dataset, dataset_split="cross-validation" if oof else "validation",
                                  metric_type=m.type,
                                  metric_name=f"{m.name} ({column[0].lower()})", metric_value=round(float(v), 4)))
    return out


def _config_rows(kind: str, cfg: dict, weights: Optional[str], oof: bool = False) -> List[Tuple[str, str]]:
    s = cfg.get("image_size")
    rows = [("Architecture", f"`{MODEL_CLASSES[kind]}`: timm encoder `{cfg.get('encoder')}`"
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
        rows += [("Pixel threshold", _fmt(cfg.get("threshold"))),
                 ("Small components dropped", f"under {cfg.get('min_component_px', 0)} px at {s} x {s}"
                  if cfg.get("min_component_px") else "off"),
                 # gate_threshold of older configs is read and ignored: the detection verdict is the only gate
                 ("Mask drawn", "iff the slice is detected: its tumour probability >= the detection threshold "
                  "(the classifier's `fusion_threshold` when fused, else its `threshold`); a detected slice "
                  "always gets a mask, an undetected one none"),
                 ("Flip test-time augmentation", "on" if cfg.get("tta_flip") else "off")]
        rule = cfg.get("case_rule", "none")
        if rule != "none":  # older configs have none: their cards stay as they were
            kept = ("the largest region connected across slices is kept" if rule == "largest" else
                    f"regions connected across slices under {cfg.get('case_min_voxels', 0)} voxels at {s} x {s} "
                    "are dropped")
            rows.append(("Whole cases (3-D rule)", f"{kept}; a slice left without a mask is not detected "
                         "(`Predictor.predict_case`: whole-case analysis and `brainseg.evaluate`)"))
    else:
        rows += [("Decision threshold", f"{_fmt(cfg.get('threshold'))} on the calibrated probability"),
                 ("Temperature", f"{_fmt(cfg.get('temperature'))}: probability = sigmoid(logit / temperature)")]
        w = cfg.get("fusion_weights")
        if w:
            rows += [("Detection with the segmenter",
                      f"probability = sigmoid({_fmt(w[0])} x logit + {_fmt(w[1])} x evidence + ({_fmt(w[2])})), "
                      f"evidence = logit of the mean of the segmenter's {cfg.get('fusion_top_k')} highest pixel "
                      f"probabilities; fitted on the {'out-of-fold predictions' if oof else 'validation cases'} "
                      "(what `Predictor` and the app report)"),
                     ("Fused decision threshold", _fmt(cfg.get("fusion_threshold")))]
    return rows


def _split_lines(metrics: Optional[dict], cv: Optional[dict] = None) -> List[str]:
    """The patient-level split, from metrics.json and the split file it names (when readable)."""
    if not metrics or metrics.get("train_cases") is None:
        return [f"- Split: {NOT_MEASURED} (no metrics.json beside the weights)."]
    tcfg = metrics.get("train_config") or {}
    n_train, n_val = metrics["train_cases"], metrics.get("val_cases")
    if not n_val:
        lines = [f"- Trained on **all {n_train} development cases**, with no validation cases: the recipe's fixed "
                 "schedule ends where it ends (the last epoch is kept), so nothing was chosen on held-out cases of "
                 "this run."]
        if cv:
            lines.append(f"- Its figures are those of the same recipe under {_fmt(cv.get('folds'))}-fold "
                         "cross-validation by patient (each fold's held-out patients were not among its training "
                         "cases; see Evaluation).")
        if n_train < DATASET_CASES:
            lines.append(f"- The other {DATASET_CASES - n_train} of the dataset's {DATASET_CASES} cases were held out: "
                         "not used for training, model selection or calibration.")
        return lines
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
        the model-index (for the classifier: its own figures, not the fused ones); the rest read
        "not measured".
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
    calibration = _calibration(cfg, metrics, eval_metrics)
    cv = (eval_metrics or {}).get("cross_validation")  # out-of-fold figures (calibrate --cv --eval-json)
    columns = _metric_columns(kind, metrics, eval_metrics, eval_name, calibration, cv)
    n_val = _count((eval_metrics or {}).get("cases")) if eval_metrics else (metrics or {}).get("val_cases")
    results = _eval_results(kind, _index_column(columns), n_val, oof=bool(cv))
    data = ModelCardData(
        license=LICENSE, library_name=LIBRARY_NAME, pipeline_tag=PIPELINE_TAGS[kind], datasets=[DATASET_ID],
        tags=[*BASE_TAGS, spec["task_tag"], "lgg", "pytorch", "timm", "model_hub_mixin", "pytorch_model_hub_mixin"],
        model_name=repos[kind].split("/")[-1] if results else None, eval_results=results or None)
    commands = ([train_command] if isinstance(train_command, str) else list(train_command or [])
                ) or _reconstruct_train_command(metrics, model_dir)
    rows = [[m.name] + ([_fmt(c[2].get(m.key)) for c in columns] or [NOT_MEASURED]) for m in spec["metrics"]]
    used = [repos[k] for k in ("segmenter", "classifier")]
    card = ModelCard.from_template(
        data, template_path=str(TEMPLATE), kind=kind, title=spec["title"], model_class=MODEL_CLASSES[kind],
        order=", ".join(cfg.get("channel_order") or []), size=cfg.get("image_size"), repo=repos[kind], repos=repos,
        other_repo=repos["classifier" if kind == "segmenter" else "segmenter"], fused=bool(cfg.get("fusion_weights")),
        calibrated=("a temperature-calibrated" if calibration or cfg.get("temperature", 1.0) != 1.0
                    else "an uncalibrated (temperature 1)"),
        dataset_id=DATASET_ID, dataset_name=DATASET_NAME, dataset_cases=DATASET_CASES, not_measured=NOT_MEASURED,
        split_lines="\n".join(_split_lines(metrics, cv)), oof=bool(cv),
        oof_folds=_fmt((cv or {}).get("folds")),
        eval_table="\n".join(_table(["Metric"] + ([c[0] for c in columns] or ["Value"]), rows)),
        columns=columns, evaluated=bool(eval_metrics), speed=_number((eval_metrics or {}).get("seconds_per_slice")),
        precision=(eval_metrics or {}).get("precision"),
        calibration_tables="\n".join(_calibration_tables(calibration)) if calibration else "",
        config_table="\n".join(_table(["Setting", "Value"],
                                      _config_rows(kind, cfg, _weights_summary(model_dir / "model.safetensors"),
                                                   oof=bool(cv)))),
        commands="\n".join(commands),
        rebuilt=train_command is None and bool(commands) and (PROJECT_ROOT / "scripts" / "train_models.sh").is_file(),
        placeholders=any(r.startswith("USER/") for r in used))
    return ModelCard(re.sub(r"\n{3,}", "\n\n", card.content).rstrip("\n") + "\n")


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


def card_commands(text: str) -> List[str]:
    """The training commands a card shows (its ``## Training`` bash block)."""
    m = re.search(r"^## Training\n.*?^```bash\n(.*?)^```", text, re.S | re.M)
    return m.group(1).rstrip("\n").split("\n") if m else []


def stale_card_reason(model_dir: Union[str, Path], kind: str, repo_ids: Optional[Mapping[str, str]] = None
                      ) -> Optional[str]:
    """None when the folder's README.md is what :func:`build_model_card` writes today, else why not.

    The card is regenerated with the training commands it already shows and compared as text, so
    checkout times (a fresh clone) do not matter; edited metrics, config or evaluation JSON do.
    """
    model_dir = Path(model_dir)
    text = (model_dir / "README.md").read_text(encoding="utf-8")
    commands = card_commands(text)
    metrics = _read_json(model_dir / "metrics.json")
    given = None if commands == _reconstruct_train_command(metrics, model_dir) else commands
    for ids in ({}, dict(repo_ids or {})):
        if str(build_model_card(model_dir, kind, train_command=given, repo_ids=ids)) == fill_repo_ids(text, ids):
            return None
    return (f"{model_dir / 'README.md'} differs from the card its config.json, metrics.json and evaluation JSON "
            f"give now: regenerate it with python -m brainseg.hub card {model_dir}")
