"""What a radiologist reads off a mask: volume in mL, lesion count, the bidimensional diameters, the side.

Measurements are made on the Predictor's masks as they are (nothing here thresholds or filters):

- volume: voxel count x the voxel's volume (row x column x slice spacing, mm³ -> mL);
- lesions: the 26-connected 3-D components (:func:`brainseg.volume.label_3d`);
- diameters (RANO-style bidimensional): on the slice where the largest lesion has its largest
  cross-section, the longest diameter (the largest distance between two points of the lesion, each
  pixel counted as its square) and the longest chord perpendicular to it, in mm from the spacing
  (anisotropic pixels handled) or in pixels when no spacing is known;
- side: left or right of the brain's midline (the middle of the brain's left-right extent on that
  slice), only where the input says which way is left (DICOM, NIfTI); else None.
"""
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .volume import label_3d

MIDLINE_MM = 2.0  # a lesion whose centre lies this close to the midline is called "midline"


def volume_ml(voxels: int, spacing: Optional[Sequence[float]]) -> Optional[float]:
    """Voxels x the voxel's volume in mm³, in mL (None without spacing)."""
    return None if spacing is None else int(voxels) * float(np.prod([float(v) for v in spacing])) / 1000.0


@dataclass
class Diameters:
    """The bidimensional measurement of one region: lengths (in the spacing's unit) and end points (row, col px)."""

    longest: float
    perpendicular: float
    longest_ends: Tuple[Tuple[float, float], Tuple[float, float]]
    perpendicular_ends: Tuple[Tuple[float, float], Tuple[float, float]]


def bidimensional(mask: np.ndarray, pixel_mm: Tuple[float, float] = (1.0, 1.0)) -> Optional[Diameters]:
    """Longest diameter of a 2-D region and the longest chord perpendicular to it, or None when it is empty.

    Args:
        mask: HxW, nonzero inside the region.
        pixel_mm: (row, column) pixel size; lengths come back in its unit.
    Example:
        >>> m = np.zeros((40, 40), np.uint8); m[10:20, 5:35] = 1      # 30 x 10 px
        >>> round(bidimensional(m).longest, 2), round(bidimensional(m).perpendicular, 2)
        (31.62, 10.54)
    """
    import cv2

    mask = np.asarray(mask) > 0
    if not mask.any():
        return None
    scale = np.asarray(pixel_mm, np.float64)
    r, c = np.nonzero(mask)
    pts = np.stack([r, c], 1) * scale  # pixel centres in mm
    hull = cv2.convexHull(pts[:, ::-1].astype(np.float32)).reshape(-1, 2)[:, ::-1].astype(np.float64)
    d = np.linalg.norm(hull[:, None] - hull[None], axis=-1)
    i, j = np.unravel_index(int(np.argmax(d)), d.shape)
    axis = (hull[j] - hull[i]) / d[i, j] if d[i, j] > 0 else np.array([0.0, 1.0])
    normal = np.array([-axis[1], axis[0]])
    half = lambda u: 0.5 * float(np.hypot(u[0] * scale[0], u[1] * scale[1]) / np.hypot(*u))  # noqa: E731
    # a pixel reaches half a pixel beyond its centre in every direction (so an n-pixel run is n pixels long)
    a_ends = (hull[i] - half(axis) * axis, hull[j] + half(axis) * axis)
    # the chords perpendicular to the axis, cut from the outline (through the boundary pixels' centres)
    outline, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    p1 = np.concatenate([o.reshape(-1, 2)[:, ::-1] for o in outline]).astype(np.float64) * scale
    p2 = np.concatenate([np.roll(o.reshape(-1, 2)[:, ::-1], -1, 0) for o in outline]).astype(np.float64) * scale
    t1, t2, s1, s2 = p1 @ axis, p2 @ axis, p1 @ normal, p2 @ normal
    ts = np.arange(float(min(t1.min(), t2.min())), float(max(t1.max(), t2.max())) + 1e-9, 0.1 * float(scale.min()))
    lo_t, hi_t = np.minimum(t1, t2)[:, None], np.maximum(t1, t2)[:, None]
    hit = (ts[None] >= lo_t) & (ts[None] <= hi_t)
    f = np.where(hi_t > lo_t, (ts[None] - t1[:, None]) / np.where(t2 == t1, 1, t2 - t1)[:, None], 0.0)
    cut = s1[:, None] + f * (s2 - s1)[:, None]
    top, bottom = np.where(hit, cut, -np.inf).max(0), np.where(hit, cut, np.inf).min(0)
    k = int(np.argmax(np.where(hit.any(0), top - bottom, -np.inf)))
    lo, hi, tk, h = float(bottom[k]), float(top[k]), float(ts[k]), half(normal)
    p_ends = tuple(tk * axis + v * normal for v in (lo - h, hi + h))
    return Diameters(float(d[i, j]) + 2 * half(axis), hi - lo + 2 * h,
                     tuple(tuple(e / scale) for e in a_ends), tuple(tuple(e / scale) for e in p_ends))


def side_of(mask: np.ndarray, brain: np.ndarray, left_dir: Sequence[float], pixel_mm: Tuple[float, float]) -> str:
    """'left', 'right' or 'midline': where the region's centre lies against the middle of the brain's extent."""
    v = np.asarray(left_dir, np.float64) * np.asarray(pixel_mm, np.float64)
    v = v / max(np.linalg.norm(v), 1e-9)  # mm along the patient's left, per (row mm, column mm)
    r, c = np.nonzero(mask)
    centre = float(np.mean(np.stack([r, c], 1) * pixel_mm @ v))
    br, bc = np.nonzero(brain if brain.any() else np.ones_like(mask))
    proj = np.stack([br, bc], 1) * pixel_mm @ v
    offset = centre - (float(proj.min()) + float(proj.max())) / 2
    return "midline" if abs(offset) < MIDLINE_MM else ("left" if offset > 0 else "right")


@dataclass
class CaseMeasurements:
    """A case's measurements; lengths in mm when the spacing is known (``unit``), else in pixels."""

    volume_voxels: int
    volume_ml: Optional[float]
    lesions: int
    lesion_voxels: List[int]
    measured_slice_index: Optional[int]
    longest_diameter: Optional[float]
    perpendicular_diameter: Optional[float]
    unit: str
    side: Optional[str]
    longest_ends_px: Optional[list] = None
    perpendicular_ends_px: Optional[list] = None
    area_mm2: Optional[List[float]] = None

    def to_dict(self) -> Dict:
        d = asdict(self)
        for k in ("volume_ml", "longest_diameter", "perpendicular_diameter"):
            d[k] = None if d[k] is None else round(float(d[k]), 4)
        for k in ("longest_ends_px", "perpendicular_ends_px"):
            d[k] = None if d[k] is None else [[round(float(x), 2) for x in p] for p in d[k]]
        d["area_mm2"] = None if self.area_mm2 is None else [round(a, 3) for a in self.area_mm2]
        return d


def measure_case(masks: np.ndarray, spacing: Optional[Sequence[float]] = None,
                 left_dir: Optional[Sequence[float]] = None, brains: Optional[np.ndarray] = None) -> CaseMeasurements:
    """Measure a (slices, H, W) stack of 0/1 masks.

    Args:
        masks: the case's masks in stack order.
        spacing: (row, column, slice) in mm, or None (then lengths in pixels and no mL, no mm²).
        left_dir: (row, column) pixel direction toward the patient's left, or None when unknown.
        brains: (slices, H, W) brain masks for the midline (None: the whole slice).
    """
    masks = np.asarray(masks) > 0
    voxels = int(masks.sum())
    pixel = (1.0, 1.0) if spacing is None else (float(spacing[0]), float(spacing[1]))
    ml = volume_ml(voxels, spacing)
    area = None if spacing is None else [float(a) * pixel[0] * pixel[1] for a in masks.reshape(len(masks), -1).sum(1)]
    unit = "px" if spacing is None else "mm"
    if voxels == 0:
        return CaseMeasurements(0, ml, 0, [], None, None, None, unit, None, area_mm2=area)
    labels, sizes = label_3d(masks)
    sizes = sizes[1:]
    big = int(np.argmax(sizes)) + 1
    lesion = labels == big
    k = int(np.argmax(lesion.reshape(len(lesion), -1).sum(1)))
    dia = bidimensional(lesion[k], pixel)
    side = None
    if left_dir is not None:
        brain = brains[k] if brains is not None else np.ones_like(lesion[k])
        side = side_of(lesion[k], brain, left_dir, pixel)
    return CaseMeasurements(voxels, ml, int(len(sizes)), sorted((int(s) for s in sizes), reverse=True), k,
                            dia.longest, dia.perpendicular, unit, side,
                            [list(p) for p in dia.longest_ends], [list(p) for p in dia.perpendicular_ends], area)


# ---------------------------------------------------------------- a case's result and summary

def measure_input(case_input, masks: np.ndarray) -> Dict:
    """:func:`measure_case` with what the input knows: its spacing and, for DICOM or NIfTI, which way is left."""
    left = case_input.meta.get("left_direction")
    brains = None
    if left is not None:
        stack = np.stack([np.asarray(s, np.float32) for s in case_input.slices])
        brains = stack.max(-1) > stack.reshape(len(stack), -1, stack.shape[-1]).min((1, 2))[:, None, None]
    return measure_case(masks, case_input.spacing, left, brains).to_dict()


def add_measurements(per_slice: List[Dict], result) -> None:
    """Each per-slice row gains ``tumor_area_mm2`` (None without spacing)."""
    areas = (result.measurements or {}).get("area_mm2")
    for k, row in enumerate(per_slice):
        row["tumor_area_mm2"] = None if areas is None else areas[k]


def measurements_json(result) -> Optional[Dict]:
    """The summary's ``measurements``: volume, lesions, diameters (and their slice number and end points), side."""
    m = result.measurements
    if m is None:
        return None
    out = {k: v for k, v in m.items() if k not in ("area_mm2", "measured_slice_index")}
    k = m["measured_slice_index"]
    out["measured_slice"] = None if k is None else int(result.slice_numbers[k])
    return out


def measurement_lines(summary: Dict) -> List[str]:
    """The summary text's lines on lesions, diameters and side, and how the slices were ordered."""
    m, lines = summary.get("measurements"), []
    if m and m["lesions"]:
        side = f", {m['side']}" + (" of the midline" if m["side"] != "midline" else "") if m["side"] else ""
        lines.append(f"{m['lesions']} separate 3-D lesion{'s' if m['lesions'] > 1 else ''}; the largest measures "
                     f"{m['longest_diameter']:.1f} x {m['perpendicular_diameter']:.1f} {m['unit']} (longest diameter x "
                     f"longest perpendicular, slice {m['measured_slice']}){side}")
    if summary.get("ordering"):
        lines.append(f"Slices {summary['ordering']}")
    if summary.get("input_note"):
        lines.append(summary["input_note"])
    return lines
