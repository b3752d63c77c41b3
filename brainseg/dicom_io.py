"""DICOM series in: what scanners and PACS export, read into a case with pydicom, under the same limits.

A zip, several files or a folder holding one or more series (``.dcm``, ``.dicom``, ``.ima`` or files
that start with the ``DICM`` preamble) is read as follows:

- every file's header is read first and checked (size, rows x columns, frames) against
  :class:`~brainseg.limits.Limits` before any pixel is decoded;
- files group into series by SeriesInstanceUID; several series: the one whose SeriesDescription
  the caller names, else FLAIR + pre- + post-contrast of one study on one grid stacked as the models
  expect (pre-contrast, FLAIR, post-contrast), else the one series whose description says FLAIR
  (alone, replicated to three channels), else a refusal listing the descriptions to choose from;
- slices are ordered by ImagePositionPatient along the slice normal (the cross product of the
  ImageOrientationPatient cosines), never by file name; the spacing is PixelSpacing (row, column)
  and the position step, which must be even (a gap is a missing file, refused);
- rescale slope/intercept (the modality LUT) and MONOCHROME1 inversion are applied.

Patient identifiers are read by pydicom (they are in the header) but never logged, never put in a
message, the case name or any output other than the DICOM SEG that references the user's own
series (:mod:`brainseg.exports`). Refusals name the file and the DICOM tag.
"""
import io
import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .limits import Limits, MiB, check_budget, check_size, decoded_bytes, named

from .file_types import DICOM_EXTS
FLAIR_RE = re.compile(r"flair", re.IGNORECASE)
POST_RE = re.compile(r"post|\+\s*c\b|\bc\+|gad|\bgd\b|contrast|t1c|t1ce|mprage.*\+", re.IGNORECASE)
PRE_RE = re.compile(r"\bpre\b|pre[-_ ]?contrast|\bt1\b|t1w|t1[-_ ]", re.IGNORECASE)
POSITION_TOL_MM = 0.01


def is_dicom_bytes(head: bytes) -> bool:
    """Whether bytes start like a DICOM Part 10 file (128-byte preamble, then ``DICM``)."""
    return len(head) >= 132 and head[128:132] == b"DICM"


def decodable_syntaxes() -> List[str]:
    """Names of the transfer syntaxes the installed pydicom pixel handlers decode here."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import AllTransferSyntaxes, UID

    out = []
    for uid in AllTransferSyntaxes:
        try:
            if get_decoder(UID(uid)).is_available:
                out.append(UID(uid).name)
        except NotImplementedError:
            continue
    return out


@dataclass
class DicomSlice:
    """One file's header (pixel data still encoded) and where it came from, for messages."""

    label: str
    ds: object  # pydicom.Dataset
    position: float = 0.0


@dataclass
class DicomCase:
    """A series (or three, stacked) read and ordered: HxWx3 slices and what the writers need.

    ``datasets`` are the headers of the series the masks lie on (FLAIR when stacked), in slice
    order, pixel data dropped: the DICOM SEG references them. ``geometry`` maps pixels to patient
    coordinates (LPS): origin, row and column cosines, spacing (row, column, slice) and the normal.
    """

    slices: List[np.ndarray]
    spacing: Tuple[float, float, float]
    datasets: List[object]
    geometry: Dict
    channels: str  # "pre, FLAIR, post" or "FLAIR alone" or "<description> alone"
    series: List[str]  # the SeriesDescription of each series used (never a patient identifier)
    note: str


def _tag(ds, keyword: str, label: str, tag: str):
    """A required attribute, or a refusal naming the file and the tag."""
    value = ds.get(keyword)
    if value is None or value == "":
        raise ValueError(f"{label}: the DICOM tag {keyword} {tag} is missing, so the slice cannot be placed; "
                         f"export the series with its geometry (ImagePositionPatient, ImageOrientationPatient, "
                         f"PixelSpacing)")
    return value


def read_header(data: bytes, label: str, limits: Limits) -> DicomSlice:
    """Parse one file (pixels left encoded) and check its declared size against ``limits``."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    # pydicom's header checks warn and log with the offending value, which may be a patient's name or date
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    if len(data) > limits.max_bytes:
        raise ValueError(f"{label} is {len(data) / MiB:.0f} MiB, over the limit of {limits.max_bytes // MiB} MiB "
                         f"for one slice file")
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=False)
    except InvalidDicomError:
        raise ValueError(f"{label} is not a DICOM file (no 'DICM' after the 128-byte preamble)") from None
    except Exception as e:  # noqa: BLE001 - a broken header raises several kinds; the message holds no values
        raise ValueError(f"{label} is not a readable DICOM file ({type(e).__name__})") from None
    if "PixelData" not in ds:
        raise ValueError(f"{label}: no pixel data (7FE0,0010); it is not an image (a report, a SEG or a "
                         f"presentation state?). Send the image series only")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise ValueError(f"{label}: NumberOfFrames (0028,0008) is {frames}; multi-frame (enhanced) DICOM is not "
                         f"read, export the series as one file a slice")
    rows, cols = int(_tag(ds, "Rows", label, "(0028,0010)")), int(_tag(ds, "Columns", label, "(0028,0011)"))
    try:
        check_size(cols, rows, len(data), limits)
    except ValueError as e:
        raise named(e, label) from None
    return DicomSlice(label, ds)


def _geometry(s: DicomSlice) -> Tuple[np.ndarray, np.ndarray, Tuple[float, float]]:
    ds, label = s.ds, s.label
    iop = np.asarray(_tag(ds, "ImageOrientationPatient", label, "(0020,0037)"), float)
    ipp = np.asarray(_tag(ds, "ImagePositionPatient", label, "(0020,0032)"), float)
    ps = _tag(ds, "PixelSpacing", label, "(0028,0030)")
    if iop.shape != (6,) or ipp.shape != (3,) or len(ps) != 2 or not np.isfinite(iop).all() or not np.isfinite(ipp).all():
        raise ValueError(f"{label}: ImageOrientationPatient (0020,0037), ImagePositionPatient (0020,0032) or "
                         f"PixelSpacing (0028,0030) has the wrong number of values")
    spacing = (float(ps[0]), float(ps[1]))
    if not all(0 < v <= 100 for v in spacing):
        raise ValueError(f"{label}: PixelSpacing (0028,0030) is {spacing}; expected mm between 0 and 100")
    return iop, ipp, spacing


def _order(series: List[DicomSlice]) -> Tuple[List[DicomSlice], Dict]:
    """Slices sorted along the slice normal, and the series geometry; gaps, repeats or mixed grids refused."""
    first = series[0]
    iop, _, pix = _geometry(first)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    if np.linalg.norm(normal) < 0.5:
        raise ValueError(f"{first.label}: ImageOrientationPatient (0020,0037) is degenerate (row and column "
                         f"directions are parallel)")
    for s in series:
        o, p, sp = _geometry(s)
        if not np.allclose(o, iop, atol=1e-3) or not np.allclose(sp, pix, atol=1e-3):
            raise ValueError(f"{s.label}: ImageOrientationPatient (0020,0037) or PixelSpacing (0028,0030) differs "
                             f"from {first.label}'s; a series must share one grid")
        if (int(s.ds.Rows), int(s.ds.Columns)) != (int(first.ds.Rows), int(first.ds.Columns)):
            raise ValueError(f"{s.label}: Rows/Columns (0028,0010)/(0028,0011) differ from {first.label}'s")
        s.position = float(np.dot(p, normal))
    series = sorted(series, key=lambda s: s.position)
    steps = np.diff([s.position for s in series])
    for a, b, d in zip(series, series[1:], steps):
        if d < POSITION_TOL_MM:
            raise ValueError(f"{a.label} and {b.label} lie at the same ImagePositionPatient (0020,0032) along the "
                             f"slice normal; send one series (or name it) without repeated slices")
    step = float(np.median(steps)) if len(steps) else float(series[0].ds.get("SliceThickness", 1.0) or 1.0)
    for a, b, d in zip(series, series[1:], steps):
        if abs(d - step) > max(POSITION_TOL_MM, 0.01 * step):
            raise ValueError(f"The slices between {a.label} and {b.label} are {d:.2f} mm apart, the others {step:.2f} "
                             f"mm (ImagePositionPatient (0020,0032)): a slice is missing; send the whole series")
    geometry = {"origin": np.asarray(_geometry(series[0])[1], float).tolist(), "row_cosines": row.tolist(),
                "column_cosines": col.tolist(), "normal": (normal / np.linalg.norm(normal)).tolist(),
                "spacing": [pix[0], pix[1], step], "positions": [s.position for s in series],
                "shape": [int(first.ds.Rows), int(first.ds.Columns)]}
    return series, geometry


def _pixels(s: DicomSlice) -> np.ndarray:
    """The slice's values as the scanner means them: decoded, modality LUT applied, MONOCHROME1 inverted."""
    from pydicom.pixels import apply_rescale, get_decoder

    ds, label = s.ds, s.label
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts is not None:
        try:
            ok = get_decoder(ts).is_available
        except NotImplementedError:
            ok = False
        if not ok:
            raise ValueError(f"{label}: Transfer Syntax UID (0002,0010) is {ts.name} ({ts}), which no installed "
                             f"decoder reads. Decoded here: {', '.join(decodable_syntaxes())}. Re-export the series "
                             f"uncompressed or losslessly compressed")
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT"):
        raise ValueError(f"{label}: PhotometricInterpretation (0028,0004) {photometric or 'missing'} is not read; "
                         f"expected MONOCHROME1/2 or RGB")
    try:
        a = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - decoders raise several kinds
        raise ValueError(f"{label}: its pixel data (7FE0,0010) cannot be decoded ({type(e).__name__})") from None
    if photometric == "MONOCHROME1":  # low values are white: invert within the stored range
        a = (2 ** int(ds.get("BitsStored", 16)) - 1 - a) if a.dtype.kind == "u" else -a
    if a.ndim == 2 and (float(ds.get("RescaleSlope", 1) or 1) != 1 or float(ds.get("RescaleIntercept", 0) or 0) != 0):
        a = apply_rescale(a, ds).astype(np.float32)
    return a


def _role(ds) -> Optional[str]:
    """'flair', 'post' or 'pre' from SeriesDescription (and ContrastBolusAgent), or None."""
    desc = str(ds.get("SeriesDescription", ""))
    if FLAIR_RE.search(desc):
        return "flair"
    if POST_RE.search(desc) or str(ds.get("ContrastBolusAgent", "")).strip():
        return "post"
    if PRE_RE.search(desc):
        return "pre"
    return None


def _describe(series: Dict[str, List[DicomSlice]]) -> str:
    return "; ".join(f"{str(v[0].ds.get('SeriesDescription', '')) or '(no description)'!r} ({len(v)} files)"
                     for v in series.values())


def _same_grid(a: Dict, b: Dict) -> bool:
    return (a["shape"] == b["shape"] and np.allclose(a["spacing"], b["spacing"], atol=1e-3)
            and np.allclose(a["row_cosines"], b["row_cosines"], atol=1e-3)
            and np.allclose(a["column_cosines"], b["column_cosines"], atol=1e-3)
            and len(a["positions"]) == len(b["positions"])
            and np.allclose(a["positions"], b["positions"], atol=POSITION_TOL_MM * 10)
            and np.allclose(a["origin"], b["origin"], atol=POSITION_TOL_MM * 10))


def _choose(series: Dict[str, List[DicomSlice]], wanted: Optional[str], where: str) -> Tuple[List[str], str]:
    """Which series make the case: ([uid] or [pre, flair, post uids], a note on why)."""
    uids = list(series)
    desc = {u: str(series[u][0].ds.get("SeriesDescription", "")).strip() for u in uids}
    if wanted and wanted.strip():
        hits = [u for u in uids if desc[u].lower() == wanted.strip().lower()]
        hits = hits or [u for u in uids if wanted.strip().lower() in desc[u].lower()]
        if len(hits) != 1:
            raise ValueError(f"{where}: {'no' if not hits else str(len(hits))} series match SeriesDescription "
                             f"{wanted.strip()!r}; it holds {_describe(series)}")
        return hits, f"series {desc[hits[0]]!r} chosen by name"
    if len(uids) == 1:
        return uids, "one series"
    roles: Dict[str, List[str]] = {}
    for u in uids:
        roles.setdefault(_role(series[u][0].ds) or "", []).append(u)
    if all(len(roles.get(r, [])) == 1 for r in ("pre", "flair", "post")):
        return [roles["pre"][0], roles["flair"][0], roles["post"][0]], "pre-contrast, FLAIR and post-contrast stacked"
    if len(roles.get("flair", [])) == 1:
        return roles["flair"], "the one FLAIR series among several"
    raise ValueError(f"{where} holds {len(uids)} series and not exactly one FLAIR: {_describe(series)}. Name the "
                     f"one to analyse by its SeriesDescription (the 'DICOM series' box, or series= in the API)")


def read_dicom_series(entries: Sequence[Tuple[str, Callable[[], bytes]]], limits: Limits, where: str,
                      series_description: Optional[str] = None) -> DicomCase:
    """DICOM files -> one case: the series chosen (see the module), ordered, decoded, checked.

    Args:
        entries: (label for messages, read() -> bytes) of each file.
        limits: the one set of limits; each file by the slice rules, the case by slices, pixels and bytes.
        where: how messages name the upload ("case.zip", "the files").
        series_description: pick the series with this SeriesDescription (exact, else a unique substring).
    Raises:
        ValueError naming the file and the DICOM tag (never a patient identifier's value).
    """
    if len(entries) > limits.max_zip_members:
        raise ValueError(f"{where}: {len(entries)} DICOM files, more than the limit of {limits.max_zip_members}")
    groups: Dict[str, List[DicomSlice]] = {}
    total = 0
    for label, read in entries:
        data = read()
        total += len(data)
        if total > limits.max_input_bytes:
            raise ValueError(f"{where}: the DICOM files are over {limits.max_input_bytes // MiB} MiB in all (at "
                             f"{label}); send one series, or fewer slices")
        s = read_header(data, label, limits)
        groups.setdefault(str(_tag(s.ds, "SeriesInstanceUID", label, "(0020,000E)")), []).append(s)
    if not groups:
        raise ValueError(f"{where} holds no DICOM files")
    chosen, why = _choose(groups, series_description, where)
    ordered, geoms = [], []
    for u in chosen:
        o, g = _order(groups[u])
        ordered.append(o)
        geoms.append(g)
    stacked = len(chosen) == 3
    if stacked:
        studies = {str(o[0].ds.get("StudyInstanceUID", "")) for o in ordered}
        frames = {str(o[0].ds.get("FrameOfReferenceUID", "")) for o in ordered}
        if len(studies) != 1 or len(frames) != 1 or not all(_same_grid(geoms[1], g) for g in geoms):
            ordered, geoms, chosen, stacked = [ordered[1]], [geoms[1]], [chosen[1]], False
            why = ("FLAIR alone: the pre- and post-contrast series are not of the same study and grid "
                   "(StudyInstanceUID, FrameOfReferenceUID, ImagePositionPatient)")
    n, (rows, cols) = len(ordered[0]), geoms[0]["shape"]
    if n > limits.max_slices:
        raise ValueError(f"{where}: the series has {n} slices, more than the limit of {limits.max_slices}")
    if n * rows * cols > limits.max_case_pixels:
        raise ValueError(f"{where}: {n} slices of {cols}x{rows} are over the limit of {limits.max_case_pixels:,} "
                         f"pixels a case")
    bits = max(int(o[0].ds.get("BitsAllocated", 16)) for o in ordered)
    samples = sum(int(o[0].ds.get("SamplesPerPixel", 1)) for o in ordered)
    check_budget(decoded_bytes(rows, cols * n, samples, np.float32 if bits > 16 else np.uint16), limits, where)
    channels = [[_pixels(s) for s in o] for o in ordered]
    slices = []
    for k in range(n):
        parts = [c[k] for c in channels]
        if stacked:
            kinds = {p.dtype for p in parts}
            parts = [p.astype(np.float32) for p in parts] if len(kinds) > 1 else parts
            slices.append(np.stack([p if p.ndim == 2 else p[..., 0] for p in parts], -1))
        else:
            slices.append(parts[0])
    main = ordered[1] if stacked else ordered[0]
    for s in main:  # the SEG needs the headers only
        if "PixelData" in s.ds:
            del s.ds.PixelData
    descriptions = [str(o[0].ds.get("SeriesDescription", "")).strip() or "(no description)" for o in ordered]
    g = geoms[1] if stacked else geoms[0]
    role = "pre-contrast, FLAIR, post-contrast" if stacked else f"{descriptions[0]} alone"
    note = f"DICOM series {', '.join(repr(d) for d in descriptions)}: {why}" + (
        "" if stacked else "; FLAIR alone: its channel is replicated to the three input channels")
    return DicomCase(slices, tuple(float(v) for v in g["spacing"]), [s.ds for s in main], g, role, descriptions, note)


def left_direction(geometry: Dict) -> Tuple[float, float]:
    """The (row, column) pixel direction toward the patient's left (+x in DICOM's LPS patient axes)."""
    return float(geometry["column_cosines"][0]), float(geometry["row_cosines"][0])


def affine_ras(geometry: Dict) -> np.ndarray:
    """4x4 affine from voxel (column, row, slice) to RAS mm (NIfTI's convention) for this DICOM grid."""
    sr, sc, ss = geometry["spacing"]
    a = np.eye(4)
    a[:3, 0] = np.asarray(geometry["row_cosines"]) * sc    # along a row: column index grows
    a[:3, 1] = np.asarray(geometry["column_cosines"]) * sr
    a[:3, 2] = np.asarray(geometry["normal"]) * ss
    a[:3, 3] = geometry["origin"]
    return np.diag([-1, -1, 1, 1]) @ a  # LPS -> RAS


def is_dicom_name(name: str) -> bool:
    """A file that may be DICOM by its name: a DICOM extension, or none at all (``IM0001``, ``I10``); not DICOMDIR."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return base.upper() != "DICOMDIR" and (base.lower().endswith(DICOM_EXTS) or "." not in base)


def dicom_entries(entries: Sequence[Tuple[str, Callable[[], bytes]]]) -> List[Tuple[str, Callable[[], bytes]]]:
    """The entries that are DICOM: a DICOM extension, or no extension and the ``DICM`` preamble (others skipped)."""
    out = []
    for label, read in entries:
        if not is_dicom_name(label):
            continue
        if label.lower().endswith(DICOM_EXTS):
            out.append((label, read))
            continue
        data = read()
        if is_dicom_bytes(data[:132]):
            out.append((label, lambda data=data: data))
    return out


def load_dicom_case(entries: Sequence[Tuple[str, Callable[[], bytes]]], where: str, limits: Limits,
                    series: Optional[str] = None) -> Tuple[List[np.ndarray], Tuple[float, float, float], Dict]:
    """DICOM entries -> (slices HxWx3 in stack order, spacing (row, column, slice) mm, meta for the writers).

    ``meta`` holds the SEG's source headers, the grid, which way is left, how the slices were ordered
    and which series were read; no patient identifier goes anywhere else.
    """
    from .images import to_slice

    d = read_dicom_series(entries, limits, where, series)
    slices = [to_slice(a, f"{where} slice {k + 1}", nonfinite="zero")[0] for k, a in enumerate(d.slices)]
    meta = {"dicom_datasets": d.datasets, "dicom_geometry": d.geometry, "left_direction": left_direction(d.geometry),
            "ordering": (f"ordered by ImagePositionPatient along the slice normal ({len(slices)} slices, "
                         f"{' x '.join(f'{v:.3g}' for v in d.spacing)} mm)"),
            "input_note": d.note, "channels": d.channels, "dicom_series": d.series}
    return slices, d.spacing, meta
