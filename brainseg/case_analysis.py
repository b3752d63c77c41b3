"""What the app, the API and the CLI say about a slice or a case, built from the Predictor's answers only.

- :func:`analyze_slice`: one uploaded slice -> its :class:`~brainseg.decision.Prediction`, the
  ``/predict`` JSON and the text the app shows;
- :func:`analyze_case`: a stack (a :class:`brainseg.case_io.CaseInput`) -> a :class:`CaseResult`
  (per-slice probability and area, tumour volume, largest slice, Dice against known masks);
- :func:`summarize` / :func:`case_summary_text`: the ``/predict_case`` JSON and its short text;
- :func:`predict_case_files`: files in (read by :mod:`brainseg.case_io`), summary and files out.

Nothing here re-decides a threshold, a gate or a verdict: every figure comes from
``Prediction.detected`` and ``Prediction.mask`` (a slice counts as tumour iff it is detected), so
label, bars, text, masks and counts agree. Readers and writers are in :mod:`brainseg.case_io`,
figures in :mod:`brainseg.viz`.
"""
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from .case_io import load_case
from .exports import write_case_outputs
from .decision import Prediction
from .measure import add_measurements, measure_input, measurement_lines, measurements_json, volume_ml
from .metrics import CaseDiceAggregator, dice_score
from .preprocess import brain_area_px


# ---------------------------------------------------------------- one slice

def _pair(p: float, thr: float) -> Tuple[str, str]:
    """p and thr as text with enough digits that the comparison reads true (0.399 < 0.400, not 0.40 < 0.40)."""
    for digits in (2, 3, 4, 6):
        a, b = f"{p:.{digits}f}", f"{thr:.{digits}f}"
        if a != b or p == thr:
            return a, b
    return f"{p:.6f}", f"{thr:.6f}"


def check_text(check: Optional[Dict], review: Optional[List[str]] = None) -> str:
    """The input check and "not sure" marks in words, shown ABOVE the verdict ('' when all is well)."""
    lines = []
    status = (check or {}).get("status", "ok")
    if status == "refuse":
        lines.append("NO VERDICT: " + "; ".join(check["reasons"]))
    elif status == "warn":
        lines.append("WARNING, lower trust: " + "; ".join(check["reasons"]))
    if review:
        lines.append("Uncertain - review: " + "; ".join(review))
    return "\n".join(lines)


def verdict_text(pred: Prediction) -> str:
    """The verdict line: 'Tumour detected: probability 0.44 ≥ detection threshold 0.40'."""
    if pred.detected is None:
        return "No verdict: the input check refused this image"
    p, t = _pair(pred.probability, pred.detection_threshold)
    if pred.detected:
        return f"Tumour detected: probability {p} ≥ detection threshold {t}"
    return f"No tumour detected: probability {p} < detection threshold {t}"


@dataclass
class SliceAnalysis:
    """One analysed slice: the decoded image, the Predictor's answer, and what is shown about it."""

    image: object  # brainseg.images.DecodedImage
    prediction: Prediction
    brain_area_px: int
    result: Dict
    summary: str


def analyze_slice(predictor, source, threshold: Optional[float] = None,
                  models: Optional[Dict[str, dict]] = None, channels: Optional[str] = None) -> SliceAnalysis:
    """Decode one slice, predict, and build the ``/predict`` JSON and the summary text.

    Args:
        predictor: a :class:`~brainseg.inference.Predictor`.
        source: the file's bytes, or a :class:`brainseg.images.DecodedImage`.
        threshold: pixel probability threshold; None: the Predictor's default (it checks the value).
        models: :meth:`Predictor.describe` (echoed in the JSON); None asks the predictor.
        channels: the upload's channel order, e.g. ``"flair,pre,post"`` or ``"flair"`` (None: the models').
    Raises:
        brainseg.images.InvalidImageError for a bad file; ValueError for a bad threshold.

    Example:
        >>> a = analyze_slice(predictor, open("TCGA_CS_4941_19960909_22.tif", "rb").read())
        >>> a.result["tumor_detected"], a.result["tumor_area_px"], print(a.summary)
    """
    from .images import DecodedImage, decode_image

    image = source if isinstance(source, DecodedImage) else decode_image(source)
    pred = predictor.predict(image.array, threshold, channels=channels)
    brain = brain_area_px(image.array)
    area = pred.tumor_area_px
    pct = 100.0 * area / brain if brain else 0.0
    refused = pred.detected is None
    result = {
        "input_check": pred.input_check or {"status": "ok", "reasons": [], "score": 0.0},
        "uncertain": bool(pred.review), "review_reasons": list(pred.review),
        "tumor_probability": None if refused else round(pred.probability, 4),
        "tumor_detected": pred.detected,
        "tumor_area_px": area,
        "tumor_area_pct_brain": round(pct, 2),
        "brain_area_px": brain,
        "input_shape": list(image.shape),
        "input_dtype": str(image.array.dtype),
        "channels_replicated": bool(image.channels_replicated or pred.channels_replicated),
        "threshold": pred.pixel_threshold,
        "detection_threshold": pred.detection_threshold,
        "models": models if models is not None else predictor.describe(),
    }
    if image.multipage:
        result["tiff_multipage"] = True
    notes = [verdict_text(pred)]
    if not refused:  # a refused image has no verdict, and its "brain" would be whatever lies above its background
        notes.append(f"Area {area:,} px, {pct:.1f} % of the brain ({brain:,} px); "
                     f"pixel threshold {pred.pixel_threshold:.2f}")
    if image.channels_replicated or pred.channels_replicated:
        notes.append("FLAIR alone: its channel was replicated to the three input channels; the models are less "
                     "accurate on FLAIR alone than on three channels (docs/input_check.md).")
    if image.multipage:
        notes.append("Multi-page TIFF: only its first page was analysed.")
    if check_text(pred.input_check, pred.review):  # the app also shows it above the verdict
        notes.append(check_text(pred.input_check, pred.review))
    return SliceAnalysis(image, pred, brain, result, "\n".join(notes))


# ---------------------------------------------------------------- a case

@dataclass
class CaseResult:
    """A case's answer. ``masks`` is (N, H, W) uint8 0/1 in stack order; ``volume_voxels`` is their sum.

    ``threshold`` is the pixel threshold and ``detection_threshold`` the verdict's, as used
    (tidied). ``dice`` is the per-case Dice over the whole stack (empty prediction and empty truth
    score 1) when ground-truth masks are known, else None.
    """

    case: str
    slice_numbers: List[int]
    probabilities: List[float]
    detected: List[bool]
    masks: np.ndarray
    areas_px: List[int]
    volume_voxels: int
    volume_ml: Optional[float]
    largest_area_slice: Optional[int]
    largest_area_px: int
    threshold: float
    detection_threshold: float
    spacing: Optional[Tuple[float, float, float]] = None
    source_kind: str = "files"
    dice: Optional[float] = None
    slice_dice: Optional[List[float]] = None
    truth_areas_px: Optional[List[int]] = None
    seconds: float = 0.0
    removed_by_case_rule: Optional[List[bool]] = None
    case_rule: str = "none"
    case_min_voxels: int = 0
    measurements: Optional[Dict] = None  # brainseg.measure.CaseMeasurements.to_dict()
    ordering: Optional[str] = None  # how the slices were put in order (file numbers, DICOM positions)
    input_note: Optional[str] = None  # what was read (which DICOM series, FLAIR alone)
    input_check: Optional[Dict] = None  # the case's; per slice in slice_checks
    slice_checks: Optional[List[Optional[Dict]]] = None
    review: Optional[List[List[str]]] = None

    @property
    def tumor_slices(self) -> List[int]:
        """Slice numbers called tumour: the detected ones (each of them, and only they, may have a mask)."""
        return [n for n, d in zip(self.slice_numbers, self.detected) if d]


def analyze_case(predictor, case_input, threshold: Optional[float] = None, batch_size: int = 16,
                 channels: Optional[str] = None) -> CaseResult:
    """Predict a case with :meth:`Predictor.predict_case` (its 3-D case rule included) and sum the stack up.

    Args:
        predictor: a :class:`brainseg.inference.Predictor`.
        case_input: a :class:`brainseg.case_io.CaseInput` (from ``load_case``, or built by hand).
        threshold: pixel probability threshold; None uses the Predictor's default.
        batch_size: slices per forward pass (16, as ``brainseg.evaluate``, so results match it).
    Returns:
        a :class:`CaseResult`. With ground truth, ``dice`` is the per-case Dice of
        :class:`~brainseg.metrics.CaseDiceAggregator`, the figure ``brainseg.evaluate`` reports.
    """
    t0 = time.perf_counter()
    preds = predictor.predict_case(case_input.slices, threshold=threshold, batch_size=batch_size, channels=channels)
    seconds = time.perf_counter() - t0
    thr, det_thr = (preds[0].pixel_threshold, preds[0].detection_threshold) if preds else predictor.thresholds(threshold)
    masks = np.stack([p.mask for p in preds]).astype(np.uint8)
    areas = [p.tumor_area_px for p in preds]
    volume = int(sum(areas))
    k = int(np.argmax(areas)) if areas else 0
    ml = volume_ml(volume, case_input.spacing)
    measurements = measure_input(case_input, masks)
    dice = slice_dice = truth_areas = None
    if case_input.masks is not None:
        truth = np.stack(case_input.masks)
        agg = CaseDiceAggregator()
        agg.update(case_input.name, masks, truth)
        dice = float(agg.per_case()[case_input.name]["dice"])
        slice_dice = [dice_score(p, g) for p, g in zip(masks, truth)]
        truth_areas = [int(g.sum()) for g in truth]
    return CaseResult(
        case=case_input.name, slice_numbers=list(case_input.slice_numbers),
        probabilities=[p.probability for p in preds], detected=[p.detected for p in preds],
        masks=masks, areas_px=areas, volume_voxels=volume, volume_ml=ml,
        largest_area_slice=case_input.slice_numbers[k] if volume > 0 else None,
        largest_area_px=areas[k] if volume > 0 else 0, threshold=thr, detection_threshold=det_thr,
        spacing=case_input.spacing, source_kind=case_input.source_kind, dice=dice, slice_dice=slice_dice,
        truth_areas_px=truth_areas, seconds=seconds, removed_by_case_rule=[p.removed_by_case_rule for p in preds],
        case_rule=predictor.seg_cfg.case_rule, case_min_voxels=int(predictor.seg_cfg.case_min_voxels),
        measurements=measurements, ordering=case_input.meta.get("ordering"), input_note=case_input.meta.get("input_note"),
        input_check=getattr(preds, "input_check", None), slice_checks=[p.input_check for p in preds],
        review=[list(p.review) for p in preds])


def summarize(result: CaseResult) -> Dict:
    """The ``/predict_case`` JSON (plain types only; ``null`` where a figure is unknown).

    Keys: case, slices, tumor_slices (how many slices are detected as tumour), tumor_volume_voxels,
    tumor_volume_ml, largest_area_slice, largest_area_px, per_slice (slice, tumor_probability,
    tumor_detected, tumor_area_px, dice, removed_by_case_rule), dice, plus threshold (pixel),
    detection_threshold, case_rule and case_min_voxels (the 3-D rule applied), spacing_mm and source.
    """
    per_slice = []
    for i, n in enumerate(result.slice_numbers):
        per_slice.append({"slice": int(n), "tumor_probability": round(float(result.probabilities[i]), 6),
                          "tumor_detected": bool(result.detected[i]), "tumor_area_px": int(result.areas_px[i]),
                          "dice": None if result.slice_dice is None else round(float(result.slice_dice[i]), 6),
                          "removed_by_case_rule": bool(result.removed_by_case_rule and result.removed_by_case_rule[i])})
        if result.slice_checks is not None:  # the input check and "not sure" marks, slice by slice
            chk = result.slice_checks[i] or {"status": "ok", "reasons": [], "score": 0.0}
            per_slice[-1].update(input_check=chk, uncertain=bool(result.review and result.review[i]),
                                 review_reasons=list(result.review[i]) if result.review else [])
            if result.detected[i] is None:
                per_slice[-1].update(tumor_probability=None, tumor_detected=None)
    add_measurements(per_slice, result)
    return {
        "input_check": result.input_check or {"status": "ok", "reasons": [], "score": 0.0},
        "case": result.case,
        "slices": len(result.slice_numbers),
        "tumor_slices": len(result.tumor_slices),
        "tumor_volume_voxels": int(result.volume_voxels),
        "tumor_volume_ml": None if result.volume_ml is None else round(float(result.volume_ml), 4),
        "largest_area_slice": result.largest_area_slice,
        "largest_area_px": int(result.largest_area_px),
        "per_slice": per_slice,
        "dice": None if result.dice is None else float(result.dice),  # unrounded: equals brainseg.evaluate's
        "threshold": float(result.threshold),
        "detection_threshold": float(result.detection_threshold),
        "case_rule": result.case_rule,
        "case_min_voxels": int(result.case_min_voxels),
        "spacing_mm": None if result.spacing is None else [float(s) for s in result.spacing],
        "source": result.source_kind,
        "ordering": result.ordering,
        "input_note": result.input_note,
        "measurements": measurements_json(result),
    }


def _ranges(numbers: List[int]) -> str:
    """[3, 4, 5, 9] -> '3-5, 9'."""
    out, start = [], None
    for i, n in enumerate(numbers):
        if start is None:
            start = n
        if i + 1 == len(numbers) or numbers[i + 1] != n + 1:
            out.append(str(start) if start == n else f"{start}-{n}")
            start = None
    return ", ".join(out)


def case_summary_text(summary: Union[Dict, CaseResult]) -> str:
    """A few lines a person reads first: tumour slices, volume, largest slice, Dice, thresholds."""
    s = summarize(summary) if isinstance(summary, CaseResult) else summary
    tumour = [r["slice"] for r in s["per_slice"] if r["tumor_detected"]]
    check = check_text(s.get("input_check"))
    review = [r["slice"] for r in s["per_slice"] if r.get("uncertain")]
    refused = [r["slice"] for r in s["per_slice"] if (r.get("input_check") or {}).get("status") == "refuse"]
    lines = [f"{s['case']}: {s['slices']} slices, tumour detected in {s['tumor_slices']}"
             + (f" (slices {_ranges(tumour)})" if tumour else "")]
    volume = f"Tumour volume {s['tumor_volume_voxels']:,} voxels"
    if s["tumor_volume_ml"] is not None:
        volume += f" = {s['tumor_volume_ml']:.2f} mL"
    else:
        volume += " (give the voxel spacing for mL)"
    lines.append(volume)
    if s["largest_area_slice"] is not None:
        lines.append(f"Largest area: slice {s['largest_area_slice']}, {s['largest_area_px']:,} px")
    if s["dice"] is not None:
        lines.append(f"Dice against the case's masks: {s['dice']:.3f}")
    lines += measurement_lines(s)
    lines.append(f"Detection threshold {s['detection_threshold']:g}, pixel threshold {s['threshold']:g}")
    rule = s.get("case_rule", "none")
    if rule != "none":
        kept = ("only the largest 3-D region kept" if rule == "largest"
                else f"3-D regions under {s['case_min_voxels']:,} voxels (at the model's size) dropped")
        removed = [r["slice"] for r in s["per_slice"] if r.get("removed_by_case_rule")]
        lines.append(f"Case rule: {kept}" + (f"; not detected for that reason: slices {_ranges(removed)}"
                                              if removed else ""))
    if check:  # the app shows the case's check above this text too
        lines.append(check)
    if refused:
        lines.append(f"No verdict (input check refused): slices {_ranges(refused)}")
    if review:
        lines.append(f"Uncertain - review: slices {_ranges(review)}")
    return "\n".join(lines)


def predict_case_files(predictor, paths, threshold: Optional[float] = None,
                       out_dir: Optional[Union[str, Path]] = None) -> Tuple[Dict, str, str, str]:
    """The whole-case call: files in, a summary and three files out.

    Args:
        predictor: a :class:`brainseg.inference.Predictor`.
        paths: one zip of a case folder, one multi-page TIFF, one NIfTI file, or several slice
            files (``<case>_<n>.tif``/``.png``, optional ``_mask`` files), in any order.
        threshold: pixel probability threshold; None uses the Predictor's default.
        out_dir: where the files go (created); None makes a fresh temporary folder. Nothing is
            written before the input has passed every check, and nothing outside ``out_dir``.
    Returns:
        (summary dict as :func:`summarize`, probability plot PNG path, overlay montage PNG path,
        masks path: a multi-page uint8 0/255 TIFF, or a uint8 0/1 ``.nii.gz`` for NIfTI input).
    Raises:
        ValueError naming what is wrong with the input or the threshold.

    Example:
        >>> summary, plot, montage, masks = predict_case_files(p, ["case.zip"], None, "out")
        >>> summary["tumor_volume_voxels"], summary["dice"]
    """
    case = load_case(list(paths) if not isinstance(paths, (str, Path)) else paths)
    result = analyze_case(predictor, case, threshold)
    out = Path(tempfile.mkdtemp(prefix="brainseg_case_") if out_dir is None else out_dir)
    summary = summarize(result)
    written = write_case_outputs(case, result, out, figures=True, summary=summary)
    return summary, str(written["probability"]), str(written["overlays"]), str(written["masks"])


# ---------------------------------------------------------------- the app's boxes above the verdict

def case_check_markdown(summary: Optional[dict]) -> str:
    """The case's input check and its refused / uncertain slices, for the box above the case summary."""
    if not summary:
        return ""
    lines = [t for t in case_summary_text(summary).split("\n")
             if t.startswith(("WARNING", "NO VERDICT", "No verdict", "Uncertain"))]
    return "\n\n".join(f"**{line}**" for line in lines)


def check_markdown(shown: Optional[dict]) -> str:
    """The input check's warning (or refusal) and the "not sure" marks, for the box above the verdict."""
    text = (shown or {}).get("check") or ""
    return "" if not text else "\n\n".join(f"**{line}**" for line in text.split("\n"))
