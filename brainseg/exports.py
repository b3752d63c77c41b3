"""A case's masks in the formats other tools open: NIfTI, spacing-tagged TIFF, DICOM SEG, per-slice CSV.

- NIfTI ``.nii.gz`` (uint8 0/1): on the input's own grid and affine for NIfTI input; for DICOM input
  the affine of the DICOM series (so it lies over the images in 3D Slicer or ITK-SNAP); else an axis
  aligned affine from the spacing (1 mm when unknown), voxel (column, row, slice).
- TIFF (uint8 0/255, one page a slice): ImageJ metadata with the pixel size and slice spacing in mm
  when known, so Fiji and :func:`brainseg.case_io.load_case` read the spacing back.
- DICOM SEG (highdicom, binary): for DICOM input only, referencing the source series frame by frame;
  it carries the patient and study attributes of the user's own series, as a SEG must, and is the
  only output that does. A source header highdicom cannot copy (an invalid date, say) leaves the SEG
  out, with a log line that names the error's kind, never its value.
- CSV: slice, tumour probability, verdict, area in pixels and mm².
"""
import csv
import json
import logging
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .case_io import CaseInput, PathLike, safe_name
from .nifti_io import write_nifti_mask

log = logging.getLogger("brainseg.exports")
CSV_FIELDS = ["slice", "tumor_probability", "tumor_detected", "tumor_area_px", "tumor_area_mm2"]


def write_tiff(result, path: Path, spacing=None) -> Path:
    """Masks as a multi-page uint8 0/255 TIFF; ImageJ resolution and spacing in mm when ``spacing`` is known."""
    import tifffile

    kwargs = {}
    if spacing is not None:
        kwargs = dict(resolution=(1 / float(spacing[1]), 1 / float(spacing[0])),
                      metadata={"spacing": float(spacing[2]), "unit": "mm", "axes": "ZYX"})
    tifffile.imwrite(str(path), result.masks * np.uint8(255), imagej=True, **kwargs)
    return Path(path)


def nifti_affine(case_input) -> np.ndarray:
    """Voxel (column, row, slice) -> mm: the DICOM series' RAS affine, else a diagonal one from the spacing."""
    geometry = case_input.meta.get("dicom_geometry")
    if geometry is not None:
        from .dicom_io import affine_ras

        return affine_ras(geometry)
    sr, sc, ss = case_input.spacing or (1.0, 1.0, 1.0)
    return np.diag([sc, sr, ss, 1.0])


def write_nifti(result, case_input, path: Path) -> Path:
    """Masks as uint8 0/1 ``.nii.gz``: the NIfTI input's own grid, else (column, row, slice) with :func:`nifti_affine`."""
    import nibabel as nib

    if case_input.source_kind == "nifti" and "affine" in case_input.meta:
        return write_nifti_mask(result.masks, case_input.meta, Path(path))
    vol = np.ascontiguousarray(np.transpose(result.masks, (2, 1, 0)), dtype=np.uint8)
    img = nib.Nifti1Image(vol, nifti_affine(case_input))
    img.header.set_xyzt_units("mm")
    img.header.set_slope_inter(1, 0)
    nib.save(img, str(path))
    return Path(path)


def write_csv(result, path: Path) -> Path:
    """One row a slice: slice number, probability, verdict, area in px and mm² (blank when no spacing)."""
    px_mm2 = None if result.spacing is None else float(result.spacing[0]) * float(result.spacing[1])
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_FIELDS)
        for n, p, d, a in zip(result.slice_numbers, result.probabilities, result.detected, result.areas_px):
            w.writerow([int(n), f"{float(p):.6f}", int(bool(d)), int(a), "" if px_mm2 is None else f"{a * px_mm2:.3f}"])
    return Path(path)


def write_dicom_seg(result, case_input, path: Path) -> Path:
    """A binary DICOM SEG over the source series (one frame a source slice, empty ones kept)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from . import __version__

    sources = case_input.meta["dicom_datasets"]
    algorithm = hd.AlgorithmIdentificationSequence(name="brainseg", version=str(__version__),
                                                   family=codes.cid7162.ArtificialIntelligence)
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label="Tumour (predicted)",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=result.masks.astype(bool),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=[segment],
        series_instance_uid=hd.UID(), series_number=9001, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="brainseg", manufacturer_model_name="brainseg ResUNet", software_versions=str(__version__),
        device_serial_number="none", series_description="brainseg tumour mask", omit_empty_frames=False)
    seg.save_as(str(path))
    return Path(path)


def write_exports(result, case_input, out: Path, base: str, inside) -> Dict[str, Path]:
    """Every mask format for this input into ``out``: keys ``nifti``, ``tiff``, ``csv`` and, for DICOM, ``seg``.

    ``inside(root, path)`` is the writer's guard that a path stays in ``out``.
    """
    spacing: Optional[tuple] = case_input.spacing
    paths = {"nifti": write_nifti(result, case_input, inside(out, out / f"{base}_masks.nii.gz")),
             "tiff": write_tiff(result, inside(out, out / f"{base}_masks.tif"), spacing),
             "csv": write_csv(result, inside(out, out / f"{base}_slices.csv"))}
    if case_input.meta.get("dicom_datasets"):
        target = inside(out, out / f"{base}_seg.dcm")
        try:
            paths["seg"] = write_dicom_seg(result, case_input, target)
        except Exception as e:  # noqa: BLE001 - highdicom refuses a source header it cannot copy, quoting the value
            target.unlink(missing_ok=True)
            log.warning("DICOM SEG not written: the source series' header has a value highdicom refuses (%s)",
                        type(e).__name__)  # never the message: it quotes the value, maybe a patient's
    return paths


# ---------------------------------------------------------------- one writer for the app and the CLI

def inside(root: Path, path: Path) -> Path:
    """``path`` resolved (symbolic links followed), or a ValueError when it lies outside ``root``."""
    resolved = Path(path).resolve()
    if not resolved.is_relative_to(Path(root).resolve()):
        raise ValueError(f"Refusing to write {path}: it resolves to {resolved}, outside the output folder {root}")
    return resolved


def downloads(paths: Dict[str, Path]) -> List[str]:
    """What a user downloads of :func:`write_case_outputs`, in a fixed order: NIfTI, TIFF, DICOM SEG, CSV."""
    return [str(paths[k]) for k in ("nifti", "tiff", "seg", "csv") if k in paths]


def write_case_outputs(case_input: CaseInput, result, out_dir: PathLike, *, figures: bool = False,
                       slice_masks: bool = False, name: Optional[str] = None,
                       summary: Optional[Dict] = None) -> Dict[str, Path]:
    """Write a case's results into ``out_dir`` (created), nothing outside it; the app's and the CLI's one writer.

    Args:
        case_input: the case as read (:func:`brainseg.case_io.load_case`).
        result: its :class:`~brainseg.case_analysis.CaseResult`.
        out_dir: the folder to write into.
        figures: also the probability plot and the overlay montage (PNG, drawn by :mod:`brainseg.viz`).
        slice_masks: also one ``<case>_<n>_mask.tif`` (uint8 0/255) a slice, the kaggle_3m naming.
        name: the case name for file names (default: the input's, made file-safe).
        summary: the case summary (:func:`brainseg.case_analysis.summarize`), written as JSON when
            given (its ``case`` set to ``name`` when one is given).
    Returns:
        paths by role: ``masks`` (a multi-page uint8 0/255 TIFF, or a uint8 0/1 ``.nii.gz`` on the
        input's grid for NIfTI input), ``nifti``, ``tiff``, ``csv`` and for DICOM ``seg``
        (:func:`write_exports`), ``summary`` with ``summary``, ``probability`` and
        ``overlays`` with ``figures``, ``slice_<n>`` with ``slice_masks``.
    """
    import cv2

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = safe_name(name or case_input.name)
    paths: Dict[str, Path] = write_exports(result, case_input, out, base, inside)
    paths["masks"] = paths["nifti" if case_input.source_kind == "nifti" else "tiff"]
    if slice_masks:
        for n, mask in zip(result.slice_numbers, result.masks):
            target = inside(out, out / f"{base}_{n}_mask.tif")
            if not cv2.imwrite(str(target), mask * np.uint8(255)):
                raise OSError(f"Could not write {target}")
            paths[f"slice_{n}"] = target
    if figures:
        from .viz import case_montage, plot_probabilities

        paths["probability"] = plot_probabilities(result, inside(out, out / f"{base}_probability.png"))
        paths["overlays"] = inside(out, out / f"{base}_overlays.png")
        if not cv2.imwrite(str(paths["overlays"]), cv2.cvtColor(case_montage(case_input, result), cv2.COLOR_RGB2BGR)):
            raise OSError(f"Could not write {paths['overlays']}")
    if summary is not None:
        summary = dict(summary, case=base) if name else summary
        paths["summary"] = inside(out, out / f"{base}_summary.json")
        paths["summary"].write_text(json.dumps(summary, indent=2) + "\n")
    return {k: Path(v) for k, v in paths.items()}
