"""Whole-case analysis: a patient's stack of slices in, a 3-D tumour report out.

Reading a case from untrusted files (zip, slice files, multi-page TIFF, NIfTI), its limits and
the writers live in :mod:`brainseg.case_io` (re-exported here for one release).

:func:`analyze_case` runs a :class:`~brainseg.inference.Predictor` over the stack in batches and
returns a :class:`CaseResult`: per-slice probability and area, the tumour volume (voxels, and mL
when spacing is known), the slice with the largest area and, when masks are known, the per-case
Dice computed by :class:`~brainseg.metrics.CaseDiceAggregator` exactly as ``brainseg.evaluate``
does (over the whole stack; empty prediction and empty truth score 1). With the segmenter's
classifier gate on, :func:`predict_slices` skips the segmenter on the slices the gate empties
anyway, for the same masks in about half the time. :func:`predict_case_files`
is the app's and the API's entry point: files in, a JSON summary, a plot, a montage and the masks out.
"""
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

# Readers, limits and writers live in brainseg.case_io; kept importable here for one release.
from .case_io import (IMAGE_EXTS, NIFTI_EXTS, CaseInput, check_same_size, file_ext, format_numbers,  # noqa: F401
                      inside, load_case, load_case_files, load_case_folder, load_case_nifti, load_case_tiff,
                      load_case_zip, parse_slice_name, safe_name, write_case_outputs, write_mask_nifti,
                      write_mask_tiff)
from .metrics import CaseDiceAggregator, dice_score
from .safe_zip import check_member_name  # noqa: F401

PathLike = Union[str, Path]


@dataclass
class CaseResult:
    """A case's predictions: per-slice figures in stack order and the 3-D totals.

    ``masks`` is (N, H, W) uint8 0/1 at the input's size. ``largest_area_slice`` is a slice
    number (None when no slice holds tumour). ``dice`` is the per-case Dice over the whole stack
    (None without ground truth); ``slice_dice`` the Dice of each slice (1.0 when both are empty).
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

    @property
    def tumor_slices(self) -> List[int]:
        """Slice numbers whose predicted mask is not empty."""
        return [n for n, a in zip(self.slice_numbers, self.areas_px) if a > 0]


from .viz import case_montage, plot_probabilities  # noqa: E402,F401  (moved to viz; kept importable here)


# ---------------------------------------------------------------- analysis

def predict_slices(predictor, slices: Sequence[np.ndarray], threshold: Optional[float] = None,
                   batch_size: int = 16) -> list:
    """``predictor.predict_batch``, skipping the segmenter where the classifier gate would empty the mask anyway.

    Only without fusion: a fused detection needs the segmenter on every slice. With a gate on
    (the segmenter config's ``gate_threshold`` > 0 and a classifier present) a
    slice whose tumour probability is under the gate gets an empty mask from ``predict_batch``
    whatever the segmenter says; so the classifier runs on every slice first and the segmenter
    only on the slices that pass. The masks are the same as ``predict_batch``'s on every slice;
    in a typical case most slices hold no tumour, so this roughly halves the time.
    """
    from .inference import Prediction, as_three_channels

    gate = float(getattr(predictor.seg_cfg, "gate_threshold", 0.0) or 0.0)
    if predictor.classifier is None or predictor.fused or gate <= 0 or not len(slices):
        return predictor.predict_batch(slices, threshold=threshold, batch_size=batch_size)
    in_chans = predictor.seg_cfg.in_chans
    probs = np.concatenate([predictor.classify([as_three_channels(np.asarray(s), in_chans)[0]
                                                for s in slices[i:i + batch_size]])
                            for i in range(0, len(slices), batch_size)])
    keep = [i for i, pr in enumerate(probs) if pr >= gate]
    kept = iter(predictor.predict_batch([slices[i] for i in keep], threshold=threshold, batch_size=batch_size))
    det_thr = predictor.detection_threshold
    out, keep = [], set(keep)
    for i, s in enumerate(slices):
        if i in keep:
            out.append(next(kept))
            continue
        s = np.asarray(s)
        c = 1 if s.ndim == 2 else s.shape[-1]
        out.append(Prediction(float(probs[i]), bool(probs[i] >= det_thr), np.zeros(s.shape[:2], np.uint8),
                              [s.shape[0], s.shape[1], in_chans], c == 1 and in_chans > 1))
    return out


def analyze_case(predictor, case_input: CaseInput, threshold: Optional[float] = None,
                 batch_size: int = 16) -> CaseResult:
    """Predict every slice of a case in batches and sum the stack up.

    Args:
        predictor: a :class:`brainseg.inference.Predictor`.
        case_input: from :func:`load_case` (or built by hand).
        threshold: pixel probability threshold; None uses the segmenter config's.
        batch_size: slices per forward pass (16, as ``brainseg.evaluate``, so results match it).
    Returns:
        a :class:`CaseResult`. With ground truth, ``dice`` is the per-case Dice of
        :class:`~brainseg.metrics.CaseDiceAggregator`, the figure ``brainseg.evaluate`` reports.
    """
    t0 = time.perf_counter()
    preds = predict_slices(predictor, case_input.slices, threshold, batch_size)
    seconds = time.perf_counter() - t0
    masks = np.stack([p.mask for p in preds]).astype(np.uint8)
    areas = [int(m.sum()) for m in masks]
    volume = int(sum(areas))
    k = int(np.argmax(areas)) if areas else 0
    largest = case_input.slice_numbers[k] if volume > 0 else None
    ml = None
    if case_input.spacing is not None:
        ml = volume * float(np.prod(case_input.spacing)) / 1000.0
    cfg = predictor.seg_cfg
    thr = float(cfg.threshold if threshold is None else threshold)
    det_thr = predictor.detection_threshold if predictor.classifier is not None else thr
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
        probabilities=[p.tumor_probability for p in preds], detected=[p.tumor_detected for p in preds],
        masks=masks, areas_px=areas, volume_voxels=volume, volume_ml=ml, largest_area_slice=largest,
        largest_area_px=areas[k] if volume > 0 else 0, threshold=thr, detection_threshold=det_thr,
        spacing=case_input.spacing, source_kind=case_input.source_kind, dice=dice, slice_dice=slice_dice,
        truth_areas_px=truth_areas, seconds=seconds)


def summarize(result: CaseResult) -> Dict:
    """The JSON summary of a case (plain types only; ``null`` where a figure is unknown).

    Keys: case, slices, tumor_slices (count of slices with a non-empty predicted mask),
    tumor_volume_voxels, tumor_volume_ml, largest_area_slice, largest_area_px, per_slice
    (slice, tumor_probability, tumor_detected, tumor_area_px, dice), dice, plus threshold,
    detection_threshold, spacing_mm and source.
    """
    per_slice = []
    for i, n in enumerate(result.slice_numbers):
        per_slice.append({"slice": int(n), "tumor_probability": round(float(result.probabilities[i]), 6),
                          "tumor_detected": bool(result.detected[i]), "tumor_area_px": int(result.areas_px[i]),
                          "dice": None if result.slice_dice is None else round(float(result.slice_dice[i]), 6)})
    return {
        "case": result.case,
        "slices": len(result.slice_numbers),
        "tumor_slices": len(result.tumor_slices),
        "tumor_volume_voxels": int(result.volume_voxels),
        "tumor_volume_ml": None if result.volume_ml is None else round(float(result.volume_ml), 4),
        "largest_area_slice": result.largest_area_slice,
        "largest_area_px": int(result.largest_area_px),
        "per_slice": per_slice,
        "dice": None if result.dice is None else float(result.dice),  # unrounded: equals brainseg.evaluate's
        "threshold": result.threshold,
        "detection_threshold": result.detection_threshold,
        "spacing_mm": None if result.spacing is None else [float(s) for s in result.spacing],
        "source": result.source_kind,
    }


def predict_case_files(predictor, paths: Sequence[PathLike], threshold: Optional[float] = None,
                       out_dir: Optional[PathLike] = None) -> Tuple[Dict, str, str, str]:
    """The app's and the API's whole-case call: files in, a summary and three files out.

    Args:
        predictor: a :class:`brainseg.inference.Predictor`.
        paths: one zip of a case folder, one multi-page TIFF, one NIfTI file, or several slice
            files (``<case>_<n>.tif``/``.png``, optional ``_mask`` files), in any order.
        threshold: pixel probability threshold; None uses the segmenter config's.
        out_dir: where the files go (created); None makes a fresh temporary folder. Nothing is
            written before the input has passed every check, and nothing outside ``out_dir``.
    Returns:
        (summary dict as :func:`summarize`, probability plot PNG path, overlay montage PNG path,
        masks path: a multi-page uint8 0/255 TIFF, or a uint8 0/1 ``.nii.gz`` for NIfTI input).
    Raises:
        ValueError naming what is wrong with the input (the app shows it as ``gr.Error``).

    Example:
        >>> summary, plot, montage, masks = predict_case_files(p, ["case.zip"], None, "out")
        >>> summary["tumor_volume_voxels"], summary["dice"]
    """
    case = load_case(list(paths) if not isinstance(paths, (str, Path)) else paths)
    result = analyze_case(predictor, case, threshold)
    out = Path(tempfile.mkdtemp(prefix="brainseg_case_") if out_dir is None else out_dir)
    paths_out = write_case_outputs(case, result, out, figures=True)
    return (summarize(result), str(paths_out["probability"]), str(paths_out["overlays"]),
            str(paths_out["masks"]))
