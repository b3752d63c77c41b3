"""Whole-case input and output: a patient's stack of slices read from untrusted files, its results written.

A case arrives in one of four forms, each read into a :class:`CaseInput` (slices in order,
optional ground-truth masks, optional voxel spacing):

- a zip of a kaggle_3m case folder: ``<case>_<n>.tif`` (or ``.png``) with optional ``<case>_<n>_mask.tif``
  (read in memory by :mod:`brainseg.safe_zip`, never extracted);
- several slice files at once, ordered by the number ``_<n>`` before the extension;
- a multi-page TIFF, pages in order (ImageJ ``spacing`` and resolution in mm are read when present);
- a NIfTI volume (``.nii``/``.nii.gz``, needs ``nibabel``), axial slices of its closest RAS orientation;
- a DICOM series (a zip, several files or a folder), read by :mod:`brainseg.dicom_io`.

Slice files are TIFF, PNG or JPEG, named ``<case>_<n>`` (kaggle_3m) or, as viewers export them,
``IM-0001-0007.png`` or ``slice007.png``: the last number in the name orders them.

Every slice is decoded by :mod:`brainseg.images` (the decoder of the one-slice tab), under one
:class:`~brainseg.limits.Limits`: each slice by the single-slice rules (at least 32x32), a case
at most ``max_slices`` slices, ``max_case_pixels`` pixels and ``max_decoded_bytes``, each checked
from headers before decoding. Slices are numbered without gaps and share one size; masks come for
every slice or for none. Each broken rule is a ``ValueError`` naming the file and the problem.

:func:`write_case_outputs` writes a case's results (summary JSON, masks, figures) for the app
and ``brainseg.predict`` alike, nothing outside the folder it is given.
"""
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .file_types import ARCHIVE_EXTS, CASE_SLICE_EXTS, NIFTI_EXTS, file_ext
from .images import apply_orientation, decode_image, decode_mask, to_slice
from .limits import DEFAULT_LIMITS, InvalidImageError, Limits, MiB, named
from .nifti_io import read_nifti
from .dicom_io import dicom_entries, is_dicom_name, load_dicom_case
from .safe_zip import JUNK, zip_members
from .tiff_pages import read_tiff_stack

PathLike = Union[str, Path]

_NAME_RE = re.compile(r"^(?P<case>.+)_(?P<num>\d+)(?P<mask>_mask)?$", re.IGNORECASE)
_EXPORT_RE = re.compile(r"^(?P<case>.*?)[_\-. ]*(?P<num>\d+)(?P<mask>[_\-]mask)?$", re.IGNORECASE)  # IM-0001-0007


@dataclass
class CaseInput:
    """One case, read and checked: slices in stack order, each HxWx3 (a FLAIR-only input replicated).

    ``masks`` are uint8 HxW 0/1 (ground truth) for every slice, or None. ``spacing`` is
    (row, column, slice) in mm, or None when the input does not carry it. ``source_kind`` is
    one of "zip", "files", "folder", "tiff", "nifti". ``meta`` keeps what a writer needs to
    put the masks back into the input's own format (the NIfTI affine and orientation).
    """

    name: str
    slices: List[np.ndarray]
    slice_numbers: List[int]
    masks: Optional[List[np.ndarray]] = None
    spacing: Optional[Tuple[float, float, float]] = None
    source_kind: str = "files"
    meta: Dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.slices)

    def set_spacing(self, spacing: Optional[Tuple[float, float, float]]) -> None:
        """A spacing typed by the user wins over the file's (None keeps the file's); a DICOM grid then no longer
        places the NIfTI mask."""
        if spacing is not None:
            self.spacing = tuple(float(v) for v in spacing)
            self.meta.pop("dicom_geometry", None)


# ---------------------------------------------------------------- names and checks

def parse_slice_name(filename: str) -> Tuple[Optional[str], Optional[int], bool]:
    """``"TCGA_CS_4941_19960909_12_mask.tif"`` -> ("TCGA_CS_4941_19960909", 12, True); no number -> (stem, None, False)."""
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    stem = base[: -len(file_ext(base))] if file_ext(base) else base
    m = _NAME_RE.match(stem) or _EXPORT_RE.match(stem)
    if not m:
        return stem, None, False
    digits = m.group("num").lstrip("0") or "0"
    num = int(digits) if len(digits) <= 18 else 10**18  # past any limit; int() of 5,000 digits raises
    return m.group("case"), num, m.group("mask") is not None


def _stem(filename: str) -> str:
    e = file_ext(filename)
    return filename[: -len(e)] if e else filename


def safe_name(name: str, fallback: str = "case") -> str:
    """A file-name component made of letters, digits, '.', '_' and '-' only (never '.', '..' or empty)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")[:100]
    return s or fallback


def format_numbers(numbers: Sequence[int]) -> str:
    """[1, 2, 3, 7, 9, 10] -> "1-3, 7, 9-10"."""
    nums = sorted(set(numbers))
    parts, i = [], 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        parts.append(str(nums[i]) if i == j else f"{nums[i]}-{nums[j]}")
        i = j + 1
    return ", ".join(parts)


def missing_numbers(numbers: Sequence[int], shown: int = 5) -> str:
    """Sorted distinct slice numbers -> the gaps as "3, 6-7" (the first ``shown``, then how many in all), or "".

    Counted from neighbours, never enumerated: 1 and 10**9 would be a billion numbers."""
    gaps = [(a + 1, b - 1) for a, b in zip(numbers, numbers[1:]) if b - a > 1]
    if not gaps:
        return ""
    text = ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in gaps[:shown])
    missing = sum(hi - lo + 1 for lo, hi in gaps)
    return text + (f", ... ({missing:,} in all)" if len(gaps) > shown else f" ({missing:,} in all)" if missing > 9 else "")


def check_file_size(path: Path, limits: Limits = DEFAULT_LIMITS) -> int:
    """The size of an input file on disk.

    FileNotFoundError when it is gone (the app answers that an upload expired), ValueError when it is a
    folder or over ``max_input_bytes``.
    """
    if not path.exists():
        raise FileNotFoundError(f"No such file: {path}")
    if not path.is_file():
        raise ValueError(f"{path} is a folder, not a file: pass the files inside it, or the folder as a case")
    size = path.stat().st_size
    if size > limits.max_input_bytes:
        raise ValueError(f"{path.name} is {size / MiB:.0f} MiB, over the limit of {limits.max_input_bytes // MiB} MiB "
                         f"for one input file")
    return size


def check_same_size(slices: Sequence[np.ndarray], numbers: Sequence[int]) -> None:
    """Every slice of a case has one shape; else a ValueError listing which slices have which."""
    shapes: Dict[tuple, List[int]] = {}
    for s, n in zip(slices, numbers):
        shapes.setdefault(s.shape, []).append(n)
    if len(shapes) > 1:
        desc = "; ".join(f"{'x'.join(map(str, (sh[1], sh[0]) + tuple(sh[2:])))} (slice{'s' if len(ns) > 1 else ''} "
                         f"{format_numbers(ns)})" for sh, ns in sorted(shapes.items(), key=lambda kv: -len(kv[1])))
        raise ValueError(f"Slices differ in size: {desc}. Every slice of a case must have the same size")


# ---------------------------------------------------------------- assembling a case from slice files

@dataclass
class _Entry:
    """A named slice file before decoding: where its bytes come from, and its label for messages."""

    label: str
    read: object  # () -> bytes


def _assemble(name: str, images: Dict[int, _Entry], masks: Dict[int, _Entry], source_kind: str,
              limits: Limits) -> CaseInput:
    """Check numbering, mask coverage and the case's budget, then decode; the one place those rules live."""
    if not images:
        raise ValueError("No slice images found")
    if len(images) > limits.max_slices:
        raise ValueError(f"The case has {len(images)} slices, more than the limit of {limits.max_slices}")
    numbers = sorted(images)
    missing = missing_numbers(numbers)
    if missing:
        have = format_numbers(numbers)
        raise ValueError(f"Missing slice number(s) {missing} in case {name} (it has {have[:120]}"
                         f"{'...' if len(have) > 120 else ''}): a case must hold every slice from the first to the last")
    orphans = sorted(set(masks) - set(images))
    if orphans:
        raise ValueError(f"Mask(s) for slice(s) {format_numbers(orphans)} without an image in case {name}")
    if masks and len(masks) != len(images):
        lacking = sorted(set(images) - set(masks))
        raise ValueError(f"Ground-truth masks cover {len(masks)} of {len(images)} slices (none for slice(s) "
                         f"{format_numbers(lacking)}): give a _mask file for every slice, or none")
    slices, truth, pixels, spent = [], [], 0, 0
    for n in numbers:
        left = replace(limits, max_decoded_bytes=limits.max_decoded_bytes - spent)  # checked before decoding
        img = decode_image(images[n].read(), limits=left, name=images[n].label).array
        pixels += img.shape[0] * img.shape[1]
        spent += img.nbytes
        if pixels > limits.max_case_pixels or spent > limits.max_decoded_bytes:
            raise ValueError(f"The case is over its limit at slice {n} ({images[n].label}): at most "
                             f"{limits.max_case_pixels:,} pixels and {limits.max_decoded_bytes // MiB} MiB of decoded "
                             f"pixels in all; send fewer or smaller slices")
        slices.append(img)
        if masks:
            m = decode_mask(masks[n].read(), limits=limits, name=masks[n].label)
            if m.shape != img.shape[:2]:
                raise ValueError(f"Mask {masks[n].label} is {m.shape[1]}x{m.shape[0]} but its slice is "
                                 f"{img.shape[1]}x{img.shape[0]}")
            truth.append(m)
    check_same_size(slices, numbers)
    first, last = (images[k].label.replace("\\", "/").rsplit("/", 1)[-1] for k in (numbers[0], numbers[-1]))
    order = (f"ordered by the number in the file names: {first} = slice {numbers[0]}"
             + (f" ... {last} = slice {numbers[-1]}" if len(numbers) > 1 else ""))
    return CaseInput(name, slices, numbers, truth or None, None, source_kind, {"ordering": order})


def _group(named_entries: Sequence[Tuple[str, _Entry]], what: str, limits: Limits) -> Tuple[str, Dict, Dict]:
    """Sort named entries into one case's images and masks by slice number (one file alone needs no number)."""
    parsed = []
    for fname, entry in named_entries:
        case, num, is_mask = parse_slice_name(fname)
        if num is not None and num > limits.max_slice_number:
            raise ValueError(f"{what}: the slice number in {fname[:120]!r} is over the limit of "
                             f"{limits.max_slice_number:,}. Number slices 1, 2, 3, ... (<case>_<n>.tif)")
        if num is None:
            if len(named_entries) != 1:
                raise ValueError(f"Cannot place {fname!r} in the stack: its name has no slice number. "
                                 f"Name slices <case>_<n>.tif (and masks <case>_<n>_mask.tif)")
            num = 1
        parsed.append((case, num, is_mask, entry))
    cases = sorted({c for c, *_ in parsed})
    if len(cases) > 1:
        raise ValueError(f"{what} holds slices of {len(cases)} cases ({', '.join(cases[:4])}"
                         f"{', ...' if len(cases) > 4 else ''}); send one case at a time")
    images, masks = {}, {}
    for _, num, is_mask, entry in parsed:
        target = masks if is_mask else images
        if num in target:
            raise ValueError(f"Slice {num}{' mask' if is_mask else ''} appears twice in {what} "
                             f"({target[num].label} and {entry.label})")
        target[num] = entry
    return (cases[0] if cases else "case"), images, masks


# ---------------------------------------------------------------- readers

def _dicom_case(entries, name: str, where: str, limits: Limits, series: Optional[str]) -> CaseInput:
    """A DICOM series as a case named after the upload (never after a DICOM attribute: no patient identifier)."""
    slices, spacing, meta = load_dicom_case(entries, where, limits, series)
    return CaseInput(name, slices, list(range(1, len(slices) + 1)), None, spacing, "dicom", meta)


def load_case_zip(path: PathLike, limits: Limits = DEFAULT_LIMITS, series: Optional[str] = None) -> CaseInput:
    """A zip of one kaggle_3m case folder or of DICOM files, read in memory (nothing is extracted; see
    :mod:`brainseg.safe_zip`); ``series`` picks a DICOM series by its SeriesDescription."""
    path = Path(path)
    check_file_size(path, limits)
    members, skipped = zip_members(path, limits, lambda n: file_ext(n) in CASE_SLICE_EXTS or is_dicom_name(n))
    dicom = dicom_entries(members)
    if dicom:
        return _dicom_case(dicom, safe_name(_stem(path.name)), path.name, limits, series)
    members = [(n, read) for n, read in members if file_ext(n) in CASE_SLICE_EXTS]
    if not members:
        seen = f"; it holds {', '.join(repr(s) for s in skipped[:5])}{', ...' if len(skipped) > 5 else ''}" if skipped else ""
        raise ValueError(f"{path.name} holds no slice images (<case>_<n>.tif, .tiff, .png or .jpg) or DICOM "
                         f"files{seen}")
    case, images, masks = _group([(n, _Entry(n, read)) for n, read in members], path.name, limits)
    try:
        return _assemble(case, images, masks, "zip", limits)
    except InvalidImageError:
        raise  # already names its member
    except ValueError as e:  # numbering, masks, the case's budget: say which upload
        raise ValueError(f"{path.name}: {e}") from None


def load_case_files(paths: Sequence[PathLike], source_kind: str = "files", limits: Limits = DEFAULT_LIMITS,
                    series: Optional[str] = None) -> CaseInput:
    """Several slice files (TIFF, PNG or JPEG) of one case, ordered by the number in their names, or DICOM files.

    Files named ``<case>_<n>_mask.tif`` are taken as ground truth. One file alone needs no number.
    """
    paths = [Path(p) for p in paths]
    named = [p for p in paths if is_dicom_name(p.name)]
    for p in named:
        check_file_size(p, limits)
    dicom = dicom_entries([(p.name, p.read_bytes) for p in named])
    if dicom:
        return _dicom_case(dicom, "dicom_case", "the files", limits, series)
    entries = []
    for p in paths:
        if file_ext(p.name) not in CASE_SLICE_EXTS:
            raise ValueError(f"{p.name} is not a slice image (.tif, .tiff, .png, .jpg) or DICOM (.dcm); send a zip, a multi-page "
                             f"TIFF or a NIfTI file alone, or slice images together")
        check_file_size(p, limits)
        entries.append((p.name, _Entry(p.name, p.read_bytes)))
    case, images, masks = _group(entries, "the files", limits)
    return _assemble(case, images, masks, source_kind, limits)


def load_case_folder(folder: PathLike, limits: Limits = DEFAULT_LIMITS, series: Optional[str] = None) -> CaseInput:
    """A kaggle_3m case folder (its ``<case>_<n>.tif``/``.png`` slices and any ``_mask`` files), or a DICOM folder."""
    folder = Path(folder)
    found = [p for p in folder.iterdir() if p.is_file() and not JUNK.search(p.name)]
    for p in found:
        check_file_size(p, limits)
    dicom = dicom_entries([(p.name, p.read_bytes) for p in found])
    if dicom:
        return _dicom_case(dicom, safe_name(folder.name, "dicom_case"), folder.name, limits, series)
    files = sorted(p for p in found if file_ext(p.name) in CASE_SLICE_EXTS)
    if not files:
        raise ValueError(f"No slice images (<case>_<n>.tif or .png) in folder {folder}")
    return load_case_files(files, source_kind="folder", limits=limits)


def load_case_tiff(path: PathLike, limits: Limits = DEFAULT_LIMITS) -> CaseInput:
    """A multi-page TIFF: one slice a page, in page order (numbered 1..N); grey or RGB pages."""
    path = Path(path)
    check_file_size(path, limits)

    def convert(page, k):
        a = to_slice(page.array, f"page {k + 1}", page.alpha, nonfinite="zero")[0]
        return apply_orientation(a, page.orientation)

    try:
        stack = read_tiff_stack(path.read_bytes(), limits, convert=convert)
    except InvalidImageError as e:
        raise named(e, path.name) from None
    numbers = list(range(1, len(stack.pages) + 1))
    check_same_size(stack.pages, numbers)
    return CaseInput(safe_name(_stem(path.name)), stack.pages, numbers, None, stack.spacing, "tiff")


def load_case_nifti(path: PathLike, limits: Limits = DEFAULT_LIMITS) -> CaseInput:
    """A NIfTI volume (3-D, or 4-D with 1 or 3 channels): axial slices of its closest RAS orientation.

    Slices are shown anterior up, numbered 1..N from inferior to superior; spacing comes from the
    header. ``meta`` keeps the affine and orientation so the masks go back on the input's own grid.
    """
    path = Path(path)
    check_file_size(path, limits)
    slices, spacing, meta = read_nifti(path, limits)
    meta["left_direction"] = (0.0, -1.0)  # slices are shown in RAS: the patient's left toward column 0
    return CaseInput(safe_name(_stem(path.name)), slices, list(range(1, len(slices) + 1)), None, spacing, "nifti",
                     meta)


def _tiff_pages(path: Path, limits: Limits) -> int:
    """1 or 2: whether a TIFF holds more than one page (then it is a case of its own)."""
    import tifffile

    from .tiff_pages import count_pages

    check_file_size(path, limits)
    try:
        with tifffile.TiffFile(str(path)) as tf:
            return count_pages(tf, 2)
    except InvalidImageError as e:
        raise named(e, path.name) from None
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path.name} is not a readable TIFF ({type(e).__name__}: {e})") from None


def load_case(source: Union[PathLike, Sequence[PathLike]], limits: Limits = DEFAULT_LIMITS,
              series: Optional[str] = None) -> CaseInput:
    """Any supported case input: a zip, a multi-page TIFF, a NIfTI file, a case folder, several slice files,
    or a DICOM series (a zip, files or a folder; ``series`` names one by its SeriesDescription).

    Raises:
        ValueError (:class:`~brainseg.images.InvalidImageError` for a bad slice) naming the file and the problem;
        FileNotFoundError for a file that is not there (or no longer: a swept upload).

    Example:
        >>> case = load_case("TCGA_CS_4941_19960909.zip")
        >>> len(case), case.slice_numbers[:3], case.masks is not None
    """
    paths = [Path(source)] if isinstance(source, (str, Path)) else [Path(p) for p in source]
    if not paths:
        raise ValueError("No files given: send a zip of a case folder, a multi-page TIFF, a NIfTI file or slice images")
    if len(paths) > 2 * limits.max_slices:
        raise ValueError(f"{len(paths)} files, more than the limit of {2 * limits.max_slices} (slices and masks)")
    if len(paths) == 1:
        p = paths[0]
        if p.is_dir():
            return load_case_folder(p, limits, series)
        check_file_size(p, limits)
        ext = file_ext(p.name)
        if ext == ".zip":
            return load_case_zip(p, limits, series)
        if ext in NIFTI_EXTS:
            return load_case_nifti(p, limits)
        if ext in (".tif", ".tiff") and _tiff_pages(p, limits) > 1:
            return load_case_tiff(p, limits)
    for p in paths:
        if file_ext(p.name) in ARCHIVE_EXTS + NIFTI_EXTS:
            raise ValueError(f"{p.name}: send a zip or a NIfTI file alone, not together with other files")
    return load_case_files(paths, limits=limits, series=series)
