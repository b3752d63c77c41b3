"""What a model card's tables and lists say, from a Hub-format folder's config, metrics and evaluation JSON.

:mod:`brainseg.cards` puts them into the template; here: the metrics of each kind of model, the
columns of the Evaluation table (one per source of numbers that exists), the model-index entries,
the Configuration rows, the split, and the training command. Values that do not exist read
"not measured"; none is invented.
"""
import contextlib
import json
import math
import shlex
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from .hub_meta import MODEL_CLASSES, PIPELINE_TAGS, PROJECT_ROOT

DATASET_ID = "mateuszbuda/lgg-mri-segmentation"
DATASET_NAME = "LGG MRI Segmentation (kaggle_3m)"
DATASET_CASES = 110
EVAL_GLOB = "eval*.json"
NOT_MEASURED = "not measured"
@dataclass(frozen=True)
class CardMetric:
    """One metric of a card: its key in the evaluation / metrics JSON, Hub metric type, display name."""

    key: str
    type: str
    name: str
    in_index: bool = True  # False: table only, not in the Hub model-index


KINDS = {
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


def read_json(path: Path) -> Optional[dict]:
    return json.loads(path.read_text()) if path.is_file() else None


def find_eval_json(model_dir: Union[str, Path]) -> Optional[Path]:
    """The evaluation JSON saved in a model folder (``eval_val.json`` first, else the first ``eval*.json``)."""
    model_dir = Path(model_dir)
    preferred = model_dir / "eval_val.json"
    if preferred.is_file():
        return preferred
    found = sorted(model_dir.glob(EVAL_GLOB))
    return found[0] if found else None


def number(v: Any) -> Optional[float]:
    """A finite number, or None (missing, NaN, or not a number)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return v


def fmt(v: Any, digits: int = 3) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.{digits}f}" if math.isfinite(v) else "undefined on these cases"
    return NOT_MEASURED if v is None else str(v)


def count_of(v: Any) -> Optional[int]:
    """Cases or slices given as a number or as a list of names."""
    if isinstance(v, (list, tuple, dict)):
        return len(v)
    return int(v) if number(v) is not None else None


def calibration_report(*sources: Optional[dict]) -> Optional[dict]:
    for src in sources:
        if src and isinstance(src.get("calibration"), dict):
            return src["calibration"]
    return None


def weights_summary(path: Path) -> Optional[str]:
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


def metric_columns(kind: str, metrics: Optional[dict], eval_metrics: Optional[dict], eval_name: str,
                    calibration: Optional[dict], cv: Optional[dict] = None) -> List[Column]:
    """One column for each source of numbers that exists: final evaluation, classifier alone, training."""
    spec = KINDS[kind]
    cols = []
    if eval_metrics:
        block = dict(eval_metrics.get(spec["eval_block"]) or {})
        if kind == "classifier" and block.get("ece") is None:
            block["ece"] = eval_metrics.get("ece")
            if block["ece"] is None and calibration:
                after = [k for k in ("ece_after", "ece_calibrated", "ece") if k in calibration]
                block["ece"] = calibration[after[0]] if after else None
        cases, slices = count_of(eval_metrics.get("cases")), count_of(eval_metrics.get("slices"))
        where = (f"{fmt(cases)} cases, {fmt(slices)} slices" if cases is not None else "cases not recorded")
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
                         f"({fmt(alone.get('threshold'), 3)}), no fusion (from the calibration report); the "
                         "model-index carries these.",
                         {m.key: alone.get(m.key) for m in spec["metrics"]}))
    val = (metrics or {}).get("val")
    if val and (metrics or {}).get("val_cases") != 0:  # a run on every case has no validation to show
        epochs = ((metrics.get("train_config") or {}).get("epochs"))
        at = ("pixel threshold 0.5, no post-processing" if kind == "segmenter"
              else f"before temperature calibration, threshold {fmt(val.get('threshold', 0.5), 2)}")
        how = (f"`train.py`'s validation at the best epoch ({fmt(metrics.get('best_epoch'))}"
               + (f" of {epochs}" if epochs else "") + f") on {fmt(metrics.get('val_cases'))} validation cases "
               f"({fmt(metrics.get('val_slices'))} slices), at the model's input size, {at}.")
        cols.append(("Training-time validation", how, {m.key: val.get(m.key) for m in spec["metrics"]}))
    return cols


def _oof_how(cv: dict, eval_name: str, where: str, recorded: Optional[str] = None) -> str:
    """How out-of-fold figures were made (``brainseg.calibrate --cv --eval-json``), in a card's words."""
    means, k = cv.get("dice_per_case_mean_by_fold") or [], cv.get("folds")
    sd = number(cv.get("dice_per_case_sd_over_folds"))
    spread = (f"; per-case Dice by fold {', '.join(fmt(m) for m in means)}, "
              f"mean {fmt(cv.get('dice_per_case_mean_over_folds'))}"
              + (f", sd {fmt(sd)} over folds" if sd is not None else ""))
    return (f"`python -m brainseg.calibrate --cv`, saved as `{eval_name}`: {where}, each predicted by the fold "
            f"model that did not train on its patient ({fmt(k)} fold{'' if k == 1 else 's'} of the same "
            f"recipe{spread}); the "
            "full inference pipeline with the rules of this config, which were chosen on these same pooled "
            "predictions" + (f" (recorded in `{recorded}` when they were chosen; the fold runs were not kept)."
                             if recorded else "."))


def index_column(columns: Sequence[Column]) -> Optional[Column]:
    """The column the model-index reports: this model's own figures, never the fused ones."""
    own = [c for c in columns if c[0] != FUSED_COLUMN]
    return own[0] if own else None


def eval_results(kind: str, column: Optional[Column], n_cases: Optional[int], oof: bool = False):
    """Hub model-index entries for the metric values that exist in ``column`` (none are invented)."""
    from huggingface_hub import EvalResult

    if column is None:
        return []
    spec = KINDS[kind]
    what = "cases, out-of-fold" if oof else "validation cases"
    dataset = DATASET_NAME + (f", {n_cases} {what}" if n_cases else f", {what}")
    out = []
    for m in spec["metrics"]:
        v = number(column[2].get(m.key))
        if m.in_index and v is not None:
            out.append(EvalResult(task_type=PIPELINE_TAGS[kind], task_name=spec["task_name"], dataset_type=DATASET_ID,
                                  dataset_name=dataset, dataset_split="cross-validation" if oof else "validation",
                                  metric_type=m.type,
                                  metric_name=f"{m.name} ({column[0].lower()})", metric_value=round(float(v), 4)))
    return out


def config_rows(kind: str, cfg: dict, weights: Optional[str], oof: bool = False) -> List[Tuple[str, str]]:
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
        rows += [("Pixel threshold", fmt(cfg.get("threshold"))),
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
        rows += [("Decision threshold", f"{fmt(cfg.get('threshold'))} on the calibrated probability"),
                 ("Temperature", f"{fmt(cfg.get('temperature'))}: probability = sigmoid(logit / temperature)")]
        w = cfg.get("fusion_weights")
        if w:
            rows += [("Detection with the segmenter",
                      f"probability = sigmoid({fmt(w[0])} x logit + {fmt(w[1])} x evidence + ({fmt(w[2])})), "
                      f"evidence = logit of the mean of the segmenter's {cfg.get('fusion_top_k')} highest pixel "
                      f"probabilities; fitted on the {'out-of-fold predictions' if oof else 'validation cases'} "
                      "(what `Predictor` and the app report)"),
                     ("Fused decision threshold", fmt(cfg.get("fusion_threshold")))]
    return rows


def split_lines(metrics: Optional[dict], cv: Optional[dict] = None) -> List[str]:
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
            lines.append(f"- Its figures are those of the same recipe under {fmt(cv.get('folds'))}-fold "
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
            split = read_json(path)
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


def reconstruct_train_command(metrics: Optional[dict], model_dir: Path) -> List[str]:
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


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    return (["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
            + ["| " + " | ".join(r) + " |" for r in rows])


def calibration_tables(calibration: dict) -> List[str]:
    """The calibration report as tables: its scalars, then one row per nested result (e.g. each candidate rule)."""
    lines = []
    scalars = [[str(k), fmt(v, 4)] for k, v in calibration.items() if not isinstance(v, (dict, list))]
    if scalars:
        lines += table(["Quantity", "Value"], scalars) + [""]
    nested = {k: v for k, v in calibration.items() if isinstance(v, dict)}
    cols = list(dict.fromkeys(c for v in nested.values() for c, x in v.items() if not isinstance(x, (dict, list))))
    if nested and cols:
        lines += table([""] + cols, [[k] + [fmt(v.get(c), 4) if c in v else "" for c in cols]
                                      for k, v in nested.items()]) + [""]
    return lines[:-1] if lines else lines
