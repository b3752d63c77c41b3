"""Whole-case analysis: a patient's stack of slices in, a 3-D tumour report out.

A case arrives as untrusted input in one of four forms, each read into a :class:`CaseInput`
(slices in order, optional ground-truth masks, optional voxel spacing):

- a zip of a kaggle_3m case folder: ``<case>_<n>.tif`` (or ``.png``) with optional ``<case>_<n>_mask.tif``;
- several slice files at once, ordered by the number ``_<n>`` before the extension;
- a multi-page TIFF, pages in order (ImageJ ``spacing`` and resolution in mm are read when present);
- a NIfTI volume (``.nii``/``.nii.gz``, needs ``nibabel``), axial slices of its closest RAS orientation.

Rules for untrusted input, each broken rule a ``ValueError`` that names the problem:

- zips are never extracted: members are read in memory, at most :data:`MAX_ZIP_MEMBERS` of
  them, stored or deflated only, not encrypted, each at most :data:`MAX_MEMBER_BYTES` and all
  together at most :data:`MAX_TOTAL_BYTES` uncompressed (declared sizes checked first, bytes
  counted again while reading), and a member over 1 MiB may not inflate more than
  :data:`MAX_RATIO` times; a member name that is absolute, holds ``..``, a drive letter or a
  NUL, or is a symbolic link, refuses the whole archive;
- image dimensions are read from the header before decoding (:data:`MAX_SLICE_PIXELS` a slice,
  :data:`MAX_TOTAL_PIXELS` a case) and a case has at most :data:`MAX_SLICES` slices;
- slices are numbered without gaps and share one size; masks come for every slice or for none.

:func:`analyze_case` runs a :class:`~brainseg.inference.Predictor` over the stack in batches and
returns a :class:`CaseResult`: per-slice probability and area, the tumour volume (voxels, and mL
when spacing is known), the slice with the largest area and, when masks are known, the per-case
Dice computed by :class:`~brainseg.metrics.CaseDiceAggregator` exactly as ``brainseg.evaluate``
does (over the whole stack; empty prediction and empty truth score 1). With the segmenter's
classifier gate on, :func:`predict_slices` skips the segmenter on the slices the gate empties
anyway, for the same masks in about half the time. :func:`predict_case_files`
is the app's and the API's entry point: files in, a JSON summary, a plot, a montage and the masks out.
"""
import gzip
import io
import json
import os
import re
import stat
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from .config import FLAIR_INDEX
from .metrics import CaseDiceAggregator, dice_score

PathLike = Union[str, Path]

MAX_SLICES = 512
MAX_ZIP_MEMBERS = 2048
MAX_INPUT_BYTES = 512 * 2**20      # an uploaded file as it is on disk (zip, TIFF, NIfTI)
MAX_MEMBER_BYTES = 64 * 2**20      # one zip member, uncompressed
MAX_TOTAL_BYTES = 512 * 2**20      # all zip members read
MAX_RATIO = 200                    # deflate reaches ~1000:1 on zeros; slices and masks stay far below this
RATIO_MIN_BYTES = 2**20            # tiny members (an empty mask) may compress hundreds of times: harmless
MAX_SLICE_PIXELS = 4096 * 4096
MAX_TOTAL_PIXELS = 2**25           # ~33.5 M pixels: 512 slices of 256x256, or 128 of 512x512

IMAGE_EXTS = (".tif", ".tiff", ".png")
NIFTI_EXTS = (".nii", ".nii.gz")
_NAME_RE = re.compile(r"^(?P<case>.+)_(?P<num>\d+)(?P<mask>_mask)?$", re.IGNORECASE)
_JUNK = re.compile(r"(^|/)(__MACOSX/|\._)|(^|/)(\.DS_Store|Thumbs\.db|desktop\.ini)$", re.IGNORECASE)


@dataclass
class CaseInput:
    """One case, read and checked: slices in stack order, each HxWxC (C = 3, or 1 for FLAIR alone).

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


# ---------------------------------------------------------------- names and checks

def parse_slice_name(filename: str) -> Tuple[Optional[str], Optional[int], bool]:
    """``"TCGA_CS_4941_19960909_12_mask.tif"`` -> ("TCGA_CS_4941_19960909", 12, True); no number -> (stem, None, False)."""
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    stem = base[: -len(file_ext(base))] if file_ext(base) else base
    m = _NAME_RE.match(stem)
    if not m:
        return stem, None, False
    return m.group("case"), int(m.group("num")), m.group("mask") is not None


def file_ext(name: str) -> str:
    """The lower-case extension, ".nii.gz" counted as one."""
    low = name.lower()
    if low.endswith(".nii.gz"):
        return ".nii.gz"
    return os.path.splitext(low)[1]


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


def check_member_name(name: str) -> None:
    """Refuse a zip member name that could point outside a folder if extracted (we never extract, but such a zip is not a case)."""
    norm = name.replace("\\", "/")
    if "\x00" in name:
        raise ValueError(f"Unsafe zip member name {name!r}: it holds a NUL character; refusing the archive")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise ValueError(f"Unsafe zip member name {name!r}: absolute path; refusing the archive "
                         f"(zip the case folder with relative names)")
    if ".." in norm.split("/"):
        raise ValueError(f"Unsafe zip member name {name!r}: '..' (path traversal); refusing the archive")
    if len(name) > 1024:
        raise ValueError(f"Unsafe zip member name of {len(name)} characters; refusing the archive")


def _check_file_size(path: Path) -> int:
    if not path.is_file():
        raise ValueError(f"Not a file: {path}")
    size = path.stat().st_size
    if size > MAX_INPUT_BYTES:
        raise ValueError(f"{path.name} is {size / 2**20:.0f} MiB, over the limit of {MAX_INPUT_BYTES // 2**20} MiB")
    return size


def _image_size(data: bytes, label: str) -> Tuple[int, int]:
    """(width, height) from the image header, without decoding the pixels."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Image.DecompressionBombError:
        raise ValueError(f"{label}: the image declares too many pixels (decompression bomb?)") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds for a broken file
        raise ValueError(f"{label} is not a readable TIFF or PNG image ({type(e).__name__})") from None


def decode_slice(data: bytes, label: str, mask: bool = False) -> np.ndarray:
    """Bytes of one TIFF/PNG slice -> uint8 HxWx3 in file channel order (as ``data.read_image``), or a 0/1 HxW mask."""
    w, h = _image_size(data, label)
    if w * h > MAX_SLICE_PIXELS or w < 1 or h < 1:
        raise ValueError(f"{label} is {w}x{h} pixels; a slice may have at most {MAX_SLICE_PIXELS} pixels")
    buf = np.frombuffer(data, np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE if mask else cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"{label} could not be decoded as an image")
    if mask:
        return (img > 127).astype(np.uint8)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)  # OpenCV decodes to BGR; undo it to keep file order


# ---------------------------------------------------------------- assembling a case

@dataclass
class _Entry:
    """A named slice file before decoding: where its bytes come from, and its label for messages."""

    label: str
    read: object  # () -> bytes


def _assemble(name: str, images: Dict[int, _Entry], masks: Dict[int, _Entry], source_kind: str,
              spacing=None) -> CaseInput:
    """Check numbering and mask coverage, decode, check sizes; the one place those rules live."""
    if not images:
        raise ValueError("No slice images found")
    if len(images) > MAX_SLICES:
        raise ValueError(f"The case has {len(images)} slices, more than the limit of {MAX_SLICES}")
    numbers = sorted(images)
    missing = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
    if missing:
        raise ValueError(f"Missing slice number(s) {format_numbers(missing)} in case {name} (it has "
                         f"{format_numbers(numbers)}): a case must hold every slice from the first to the last")
    orphans = sorted(set(masks) - set(images))
    if orphans:
        raise ValueError(f"Mask(s) for slice(s) {format_numbers(orphans)} without an image in case {name}")
    if masks and len(masks) != len(images):
        lacking = sorted(set(images) - set(masks))
        raise ValueError(f"Ground-truth masks cover {len(masks)} of {len(images)} slices (none for slice(s) "
                         f"{format_numbers(lacking)}): give a _mask file for every slice, or none")
    slices, truth, total = [], [], 0
    for n in numbers:
        img = decode_slice(images[n].read(), images[n].label)
        total += img.shape[0] * img.shape[1]
        if total > MAX_TOTAL_PIXELS:
            raise ValueError(f"The case has more than {MAX_TOTAL_PIXELS} pixels in all; send fewer or smaller slices")
        slices.append(img)
        if masks:
            m = decode_slice(masks[n].read(), masks[n].label, mask=True)
            if m.shape != img.shape[:2]:
                raise ValueError(f"Mask {masks[n].label} is {m.shape[1]}x{m.shape[0]} but its slice is "
                                 f"{img.shape[1]}x{img.shape[0]}")
            truth.append(m)
    check_same_size(slices, numbers)
    return CaseInput(name, slices, numbers, truth or None, spacing, source_kind)


def check_same_size(slices: Sequence[np.ndarray], numbers: Sequence[int]) -> None:
    """Every slice of a case has one shape; else a ValueError listing which slices have which."""
    shapes: Dict[tuple, List[int]] = {}
    for s, n in zip(slices, numbers):
        shapes.setdefault(s.shape, []).append(n)
    if len(shapes) > 1:
        desc = "; ".join(f"{'x'.join(map(str, (sh[1], sh[0]) + tuple(sh[2:])))} (slice{'s' if len(ns) > 1 else ''} {format_numbers(ns)})"
                         for sh, ns in sorted(shapes.items(), key=lambda kv: -len(kv[1])))
        raise ValueError(f"Slices differ in size: {desc}. Every slice of a case must have the same size")


def _group(named: Sequence[Tuple[str, _Entry]], what: str, allow_unnumbered: bool) -> Tuple[str, Dict, Dict]:
    """Sort named entries into one case's images and masks by slice number."""
    parsed = []
    for fname, entry in named:
        case, num, is_mask = parse_slice_name(fname)
        if num is None:
            if not (allow_unnumbered and len(named) == 1):
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

def load_case_zip(path: PathLike) -> CaseInput:
    """A zip of one kaggle_3m case folder, read in memory (nothing is extracted).

    Raises:
        ValueError naming the problem: not a zip, too many members, an unsafe member name,
        encryption or an unusual compression, a zip bomb (sizes or ratio), no slice images,
        gaps, mixed sizes.
    """
    path = Path(path)
    _check_file_size(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError) as e:
        raise ValueError(f"{path.name} is not a readable zip file ({e})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_ZIP_MEMBERS:
            raise ValueError(f"{path.name} has {len(infos)} members, more than the limit of {MAX_ZIP_MEMBERS}")
        named, skipped, declared = [], [], 0
        budget = [MAX_TOTAL_BYTES]  # bytes still allowed to inflate, shared by this archive's readers
        for info in infos:
            check_member_name(info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise ValueError(f"Zip member {info.filename!r} is a symbolic link; refusing the archive")
            if info.is_dir() or _JUNK.search(info.filename):
                continue
            if file_ext(info.filename) not in IMAGE_EXTS:
                skipped.append(info.filename)
                continue
            if info.flag_bits & 0x1:
                raise ValueError(f"Zip member {info.filename!r} is encrypted; send an unencrypted zip")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise ValueError(f"Zip member {info.filename!r} uses compression method {info.compress_type}; "
                                 f"only stored or deflated members are read")
            if info.file_size > MAX_MEMBER_BYTES:
                raise ValueError(f"Zip member {info.filename!r} declares {info.file_size / 2**20:.0f} MiB uncompressed, "
                                 f"over the limit of {MAX_MEMBER_BYTES // 2**20} MiB a member (zip bomb?)")
            if info.file_size > RATIO_MIN_BYTES and info.file_size > MAX_RATIO * max(info.compress_size, 1):
                raise ValueError(f"Zip member {info.filename!r} inflates {info.file_size / max(info.compress_size, 1):.0f} "
                                 f"times, over the limit of {MAX_RATIO} (zip bomb?)")
            declared += info.file_size
            if declared > MAX_TOTAL_BYTES:
                raise ValueError(f"{path.name} declares more than {MAX_TOTAL_BYTES // 2**20} MiB uncompressed (zip bomb?)")
            named.append((info.filename, _Entry(info.filename, _ZipReader(zf, info, budget))))
        if not named:
            seen = f"; it holds {', '.join(repr(s) for s in skipped[:5])}{', ...' if len(skipped) > 5 else ''}" if skipped else ""
            raise ValueError(f"{path.name} holds no slice images (<case>_<n>.tif, .tiff or .png){seen}")
        case, images, masks = _group(named, path.name, allow_unnumbered=True)
        return _assemble(case, images, masks, "zip")


class _ZipReader:
    """Reads one member in memory, counting bytes against its declared size and the archive's budget."""

    def __init__(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo, budget: List[int]):
        self.zf, self.info, self.budget = zf, info, budget

    def __call__(self) -> bytes:
        limit = min(self.info.file_size, MAX_MEMBER_BYTES, self.budget[0])
        out = bytearray()
        try:
            with self.zf.open(self.info) as f:
                while True:
                    chunk = f.read(2**20)
                    if not chunk:
                        break
                    out += chunk
                    if len(out) > limit:
                        raise ValueError(f"Zip member {self.info.filename!r} inflates past its declared size or the "
                                         f"archive's limit of {MAX_TOTAL_BYTES // 2**20} MiB (zip bomb?)")
        except (zipfile.BadZipFile, EOFError, OSError, RuntimeError) as e:
            raise ValueError(f"Zip member {self.info.filename!r} is corrupt ({e})") from None
        self.budget[0] -= len(out)
        return bytes(out)


def load_case_files(paths: Sequence[PathLike], source_kind: str = "files") -> CaseInput:
    """Several slice files (TIFF or PNG) of one case, ordered by the ``_<n>`` in their names.

    Files named ``<case>_<n>_mask.tif`` are taken as ground truth. One file alone needs no number.
    """
    named = []
    for p in paths:
        p = Path(p)
        if file_ext(p.name) not in IMAGE_EXTS:
            raise ValueError(f"{p.name} is not a slice image (.tif, .tiff or .png); send a zip, a multi-page "
                             f"TIFF or a NIfTI file alone, or slice images together")
        _check_file_size(p)
        named.append((p.name, _Entry(p.name, p.read_bytes)))
    case, images, masks = _group(named, "the files", allow_unnumbered=True)
    return _assemble(case, images, masks, source_kind)


def load_case_folder(folder: PathLike) -> CaseInput:
    """A kaggle_3m case folder: its ``<case>_<n>.tif``/``.png`` slices and any ``_mask`` files."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and file_ext(p.name) in IMAGE_EXTS
                   and not _JUNK.search(p.name))
    if not files:
        raise ValueError(f"No slice images (<case>_<n>.tif or .png) in folder {folder}")
    return load_case_files(files, source_kind="folder")


def _tiff_spacing(tf, page) -> Optional[Tuple[float, float, float]]:
    """(row, column, slice) in mm from ImageJ metadata (unit mm or micron), else None."""
    meta = tf.imagej_metadata or {}
    unit = str(meta.get("unit", "")).lower().replace("\\u00b5", "µ")
    scale = {"mm": 1.0, "millimeter": 1.0, "micron": 1e-3, "um": 1e-3, "µm": 1e-3, "cm": 10.0}.get(unit)
    if scale is None or "spacing" not in meta:
        return None
    try:
        xr, yr = page.tags["XResolution"].value, page.tags["YResolution"].value
        col, row = xr[1] / xr[0], yr[1] / yr[0]  # resolution is pixels per unit
        return (row * scale, col * scale, float(meta["spacing"]) * scale)
    except (KeyError, ZeroDivisionError, TypeError, IndexError):
        return None


def load_case_tiff(path: PathLike) -> CaseInput:
    """A multi-page TIFF: one slice a page, in page order (numbered 1..N); grey or RGB pages."""
    import tifffile

    path = Path(path)
    _check_file_size(path)
    try:
        tf = tifffile.TiffFile(str(path))
    except Exception as e:  # noqa: BLE001 - tifffile raises many kinds for a broken file
        raise ValueError(f"{path.name} is not a readable TIFF ({type(e).__name__}: {e})") from None
    with tf:
        pages = tf.pages
        n = _count_pages(tf, MAX_SLICES + 1)
        if n > MAX_SLICES:
            raise ValueError(f"{path.name} has more than {MAX_SLICES} pages, the limit of slices in a case")
        slices, total = [], 0
        for k in range(n):
            page = pages[k]
            shape = tuple(int(s) for s in page.shape)
            hw = shape[1:3] if getattr(page, "planarconfig", 1) == 2 and len(shape) == 3 else shape[:2]
            px = int(np.prod(hw)) if hw else 0
            total += px
            if px > MAX_SLICE_PIXELS or total > MAX_TOTAL_PIXELS:
                raise ValueError(f"{path.name} page {k + 1} is {shape}: over the pixel limit "
                                 f"({MAX_SLICE_PIXELS} a slice, {MAX_TOTAL_PIXELS} a case)")
            try:
                arr = page.asarray()
            except Exception as e:  # noqa: BLE001
                raise ValueError(f"{path.name} page {k + 1} cannot be decoded ({type(e).__name__}: {e})") from None
            slices.append(_as_hwc(arr, f"{path.name} page {k + 1}", planar=getattr(page, "planarconfig", 1) == 2))
        if not slices:
            raise ValueError(f"{path.name} holds no pages")
        spacing = _tiff_spacing(tf, pages[0])
    numbers = list(range(1, len(slices) + 1))
    check_same_size(slices, numbers)
    return CaseInput(safe_name(_stem(path.name)), slices, numbers, None, spacing, "tiff")


def _as_hwc(arr: np.ndarray, label: str, planar: bool = False) -> np.ndarray:
    """A page or slice array -> HxWx1 or HxWx3 (alpha dropped, NaN zeroed)."""
    if arr.ndim == 3 and planar:
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{label} has shape {arr.shape}; expected HxW (FLAIR) or HxWx3 "
                         f"(pre-contrast, FLAIR, post-contrast)")
    arr = arr[..., :3]
    if arr.dtype.kind == "f":
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    elif arr.dtype.kind not in "ui" and arr.dtype != np.bool_:
        raise ValueError(f"{label} has unsupported pixel type {arr.dtype}")
    return np.ascontiguousarray(arr)


def _stem(filename: str) -> str:
    e = file_ext(filename)
    return filename[: -len(e)] if e else filename


def _read_nifti_bytes(path: Path) -> bytes:
    """The uncompressed .nii bytes; the header is checked first, so a .nii.gz never inflates past what it declares."""
    gz = path.name.lower().endswith(".gz")
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            head = f.read(540)  # a NIfTI-2 header is 540 bytes, a NIfTI-1 header 348
            expected = _nifti_expected_bytes(head, path.name)
            out = bytearray(head)
            while len(out) < expected:
                chunk = f.read(min(2**20, expected - len(out)))
                if not chunk:
                    break
                out += chunk
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise ValueError(f"{path.name} is not a readable {'gzip' if gz else 'NIfTI'} file ({e})") from None
    return bytes(out)


def _nifti_expected_bytes(head: bytes, label: str) -> int:
    """Header bytes -> file size it declares (offset + voxel data), after the shape checks."""
    import nibabel as nib

    hdr = None
    for cls in (nib.Nifti1Header, nib.Nifti2Header):
        try:
            hdr = cls.from_fileobj(io.BytesIO(head[:cls.template_dtype.itemsize]), check=False)
            if int(hdr["sizeof_hdr"]) == cls.template_dtype.itemsize:
                break
            hdr = None
        except Exception:  # noqa: BLE001 - a wrong header raises several kinds
            hdr = None
    if hdr is None:
        raise ValueError(f"{label} is not a readable NIfTI-1 or NIfTI-2 file")
    try:
        shape = tuple(int(s) for s in hdr.get_data_shape())
        itemsize = hdr.get_data_dtype().itemsize
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{label} has a broken NIfTI header ({type(e).__name__})") from None
    _check_volume_shape(shape, label)
    return int(hdr.get_data_offset()) + int(np.prod(shape)) * itemsize


def _check_volume_shape(shape: Tuple[int, ...], label: str) -> None:
    if not (len(shape) == 3 or (len(shape) == 4 and shape[3] in (1, 3))) or min(shape) < 1:
        raise ValueError(f"{label} has shape {shape}; expected a 3-D volume (or 4-D with 1 or 3 channels)")
    if shape[2] > MAX_SLICES:
        raise ValueError(f"{label} has {shape[2]} slices, more than the limit of {MAX_SLICES}")
    if shape[0] * shape[1] > MAX_SLICE_PIXELS or int(np.prod(shape[:3])) > MAX_TOTAL_PIXELS:
        raise ValueError(f"{label} has shape {shape}: over the pixel limit ({MAX_SLICE_PIXELS} a slice, "
                         f"{MAX_TOTAL_PIXELS} a case)")


def load_case_nifti(path: PathLike) -> CaseInput:
    """A NIfTI volume (3-D, or 4-D with 1 or 3 channels): axial slices of its closest RAS orientation.

    Slices are shown anterior up (``np.rot90`` of each x-y plane), numbered 1..N from inferior to
    superior; spacing comes from the header. ``meta`` keeps the affine and orientation so
    :func:`write_mask_nifti` writes masks on the input's own voxel grid.
    """
    try:
        import nibabel as nib
    except ImportError:
        raise ValueError("NIfTI input needs nibabel: pip install nibabel==5.4.2") from None
    path = Path(path)
    _check_file_size(path)
    raw = _read_nifti_bytes(path)
    img = None
    for cls in (nib.Nifti1Image, nib.Nifti2Image):
        try:
            img = cls.from_bytes(raw)
            break
        except Exception:  # noqa: BLE001 - a wrong header raises several kinds
            continue
    if img is None:
        raise ValueError(f"{path.name} is not a readable NIfTI-1 or NIfTI-2 file")
    shape = tuple(int(s) for s in img.shape)
    _check_volume_shape(shape, path.name)
    ornt = nib.io_orientation(img.affine)
    ras = nib.orientations.axcodes2ornt(("R", "A", "S"))
    vol = np.asanyarray(img.dataobj)
    vol = nib.orientations.apply_orientation(vol, nib.orientations.ornt_transform(ornt, ras))
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    perm = [int(a) for a in ornt[:, 0]]  # canonical axis i comes from input axis perm.index(i)
    zx, zy, zz = (zooms[perm.index(i)] for i in range(3))
    slices = [_as_hwc(np.rot90(vol[:, :, k]), f"{path.name} slice {k + 1}") for k in range(vol.shape[2])]
    spacing = (zy, zx, zz) if all(z > 0 for z in (zx, zy, zz)) else None
    meta = {"affine": img.affine, "header": img.header, "ornt": ornt, "shape": shape[:3]}
    return CaseInput(safe_name(_stem(path.name)), slices, list(range(1, len(slices) + 1)), None, spacing, "nifti", meta)


def load_case(source: Union[PathLike, Sequence[PathLike]]) -> CaseInput:
    """Any supported case input: a zip, a multi-page TIFF, a NIfTI file, a case folder, or several slice files.

    Example:
        >>> case = load_case("TCGA_CS_4941_19960909.zip")
        >>> len(case), case.slice_numbers[:3], case.masks is not None
    """
    paths = [Path(source)] if isinstance(source, (str, Path)) else [Path(p) for p in source]
    if not paths:
        raise ValueError("No files given: send a zip of a case folder, a multi-page TIFF, a NIfTI file or slice images")
    if len(paths) > 2 * MAX_SLICES:
        raise ValueError(f"{len(paths)} files, more than the limit of {2 * MAX_SLICES} (slices and masks)")
    if len(paths) == 1:
        p = paths[0]
        if p.is_dir():
            return load_case_folder(p)
        if not p.exists():
            raise ValueError(f"Not found: {p}")
        ext = file_ext(p.name)
        if ext == ".zip":
            return load_case_zip(p)
        if ext in NIFTI_EXTS:
            return load_case_nifti(p)
        if ext in (".tif", ".tiff") and _tiff_pages(p) > 1:
            return load_case_tiff(p)
    for p in paths:
        if file_ext(p.name) in (".zip",) + NIFTI_EXTS:
            raise ValueError(f"{p.name}: send a zip or a NIfTI file alone, not together with other files")
    return load_case_files(paths)


def _tiff_pages(path: Path) -> int:
    import tifffile

    _check_file_size(path)
    try:
        with tifffile.TiffFile(str(path)) as tf:
            return _count_pages(tf, 2)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{path.name} is not a readable TIFF ({type(e).__name__}: {e})") from None


def _count_pages(tf, stop: int) -> int:
    """Pages of a TIFF, counted lazily up to ``stop`` (``len`` would walk a crafted chain of millions)."""
    n = 0
    for _ in tf.pages:
        n += 1
        if n >= stop:
            break
    return n


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


# ---------------------------------------------------------------- writers

def write_mask_tiff(result: CaseResult, path: PathLike) -> Path:
    """The predicted masks as one multi-page TIFF: a uint8 0/255 page per slice, in stack order."""
    import tifffile

    path = Path(path)
    tifffile.imwrite(str(path), result.masks * np.uint8(255), photometric="minisblack", compression="zlib",
                     metadata={"case": result.case, "slices": [int(n) for n in result.slice_numbers]})
    return path


def write_mask_nifti(result: CaseResult, case_input: CaseInput, path: PathLike) -> Path:
    """The predicted masks as a uint8 0/1 NIfTI on the input volume's own grid, affine and orientation."""
    import nibabel as nib

    meta = case_input.meta
    if case_input.source_kind != "nifti" or "affine" not in meta:
        raise ValueError("A NIfTI mask needs a NIfTI input (its affine and orientation)")
    ras = nib.orientations.axcodes2ornt(("R", "A", "S"))
    canon = np.stack([np.rot90(m, k=-1) for m in result.masks], axis=-1)  # undo the display rotation
    vol = nib.orientations.apply_orientation(canon, nib.orientations.ornt_transform(ras, meta["ornt"]))
    header = meta["header"].copy()
    header.set_data_dtype(np.uint8)
    out = nib.Nifti1Image(np.ascontiguousarray(vol, dtype=np.uint8), meta["affine"], header)
    out.header.set_slope_inter(1, 0)
    nib.save(out, str(path))
    return Path(path)


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
    out.mkdir(parents=True, exist_ok=True)
    base = safe_name(case.name)
    plot_path = plot_probabilities(result, out / f"{base}_probability.png")
    montage_path = out / f"{base}_overlays.png"
    cv2.imwrite(str(montage_path), cv2.cvtColor(case_montage(case, result), cv2.COLOR_RGB2BGR))
    if case.source_kind == "nifti":
        masks_path = write_mask_nifti(result, case, out / f"{base}_masks.nii.gz")
    else:
        masks_path = write_mask_tiff(result, out / f"{base}_masks.tif")
    summary = summarize(result)
    (out / f"{base}_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary, str(plot_path), str(montage_path), str(masks_path)
