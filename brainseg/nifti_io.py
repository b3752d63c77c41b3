"""NIfTI volumes in and masks out; every header figure is checked before a byte of voxel data is read.

The header (shape, sample type, voxel offset) decides what a volume may cost: slices, pixels and
decoded bytes (channels x bytes per sample) against :class:`~brainseg.limits.Limits`, so a small
``.nii.gz`` declaring gigabytes is refused before it is inflated. A truncated file, a voxel offset
past the data, or an affine holding NaN is refused with the file's name and the problem.
"""
import gzip
import io
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from .images import to_slice
from .limits import InvalidImageError, Limits, MiB, check_budget, decoded_bytes

MAX_HEADER_EXTENSIONS = 16 * MiB  # bytes of header extensions allowed between the header and the voxels


def _header(head: bytes, label: str):
    import nibabel as nib

    for cls in (nib.Nifti1Header, nib.Nifti2Header):
        try:
            hdr = cls.from_fileobj(io.BytesIO(head[:cls.template_dtype.itemsize]), check=False)
            if int(hdr["sizeof_hdr"]) == cls.template_dtype.itemsize:
                return hdr
        except Exception:  # noqa: BLE001 - a wrong header raises several kinds
            pass
    raise InvalidImageError(f"{label} is not a readable NIfTI-1 or NIfTI-2 file", "not_image")


def _orientation(affine: np.ndarray, label: str) -> np.ndarray:
    """nibabel's axis orientation of an affine, or a refusal saying the affine is unusable (not an SVD error)."""
    import nibabel as nib

    if affine is None or not np.isfinite(affine).all():
        raise InvalidImageError(f"{label}: the header's affine (qform/sform) holds NaN or infinite values, so the "
                                f"slice orientation is unknown; fix the header and send it again", "corrupt")
    try:
        ornt = nib.io_orientation(affine)
    except np.linalg.LinAlgError:
        ornt = np.full((3, 2), np.nan)
    if np.isnan(ornt).any():
        raise InvalidImageError(f"{label}: the header's affine is degenerate (an axis of zero length), so the slice "
                                f"orientation is unknown; fix the header and send it again", "corrupt")
    return ornt


def _canonical_shape(shape: Tuple[int, ...], ornt: np.ndarray) -> Tuple[int, ...]:
    """The volume's shape once turned to RAS (axial slices last), channels kept."""
    canon = [0, 0, 0]
    for axis, (target, _) in enumerate(ornt[:3]):
        canon[int(target)] = shape[axis]
    return tuple(canon) + tuple(shape[3:])


def check_volume(shape: Tuple[int, ...], dtype, scaled: bool, label: str, limits: Limits) -> None:
    """Refuse a volume by its header: dimensions, slices, pixels a slice and a case, decoded bytes."""
    if not (len(shape) == 3 or (len(shape) == 4 and shape[3] in (1, 3))) or min(shape) < 1:
        raise InvalidImageError(f"{label} has shape {shape}; expected a 3-D volume (or 4-D with 1 or 3 channels)",
                                "unsupported")
    if shape[2] > limits.max_slices:
        raise InvalidImageError(f"{label} has {shape[2]} slices, more than the limit of {limits.max_slices}",
                                "too_large")
    if shape[0] * shape[1] > limits.max_pixels or int(np.prod(shape[:3])) > limits.max_case_pixels:
        raise InvalidImageError(f"{label} has shape {shape}: over the pixel limit ({limits.max_pixels} a slice, "
                                f"{limits.max_case_pixels} a case)", "too_large")
    if min(shape[:2]) < limits.min_side:
        raise InvalidImageError(f"{label} has slices of {shape[1]}x{shape[0]} pixels, too small for MRI slices "
                                f"(at least {limits.min_side}x{limits.min_side})", "too_small")
    dtype = np.dtype(np.float32) if scaled and np.dtype(dtype).itemsize < 4 else np.dtype(dtype)
    check_budget(decoded_bytes(shape[0], shape[1] * shape[2], shape[3] if len(shape) == 4 else 1, dtype),
                 limits, f"{label} ({'x'.join(map(str, shape))} {dtype})")


def _read_bytes(path: Path, limits: Limits) -> bytes:
    """The uncompressed .nii bytes; the header is checked first, so a .nii.gz never inflates past what it declares."""
    gz = path.name.lower().endswith(".gz")
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            head = f.read(540)  # a NIfTI-2 header is 540 bytes, a NIfTI-1 header 348
            hdr = _header(head, path.name)
            try:
                shape = tuple(int(s) for s in hdr.get_data_shape())
                dtype = hdr.get_data_dtype()
                offset = max(int(hdr.get_data_offset()), int(hdr["sizeof_hdr"]) + 4)  # as nibabel reads a .nii
                slope, inter = hdr.get_slope_inter()
            except Exception as e:  # noqa: BLE001
                raise InvalidImageError(f"{path.name} has a broken NIfTI header ({type(e).__name__})",
                                        "corrupt") from None
            if len(shape) not in (3, 4):  # a 2-D image has no slice axis to turn
                raise InvalidImageError(f"{path.name} is a {len(shape)}-D image of shape {shape}; expected a 3-D "
                                        f"volume (or 4-D with 1 or 3 channels). Send one slice to the slice tab",
                                        "unsupported")
            canon = _canonical_shape(shape, _orientation(hdr.get_best_affine(), path.name))
            check_volume(canon, dtype, slope not in (None, 1) or inter not in (None, 0), path.name, limits)
            if offset > int(hdr["sizeof_hdr"]) + MAX_HEADER_EXTENSIONS:
                raise InvalidImageError(f"{path.name} is corrupt: its header puts the voxel data at byte {offset:,}, "
                                        f"past any header extension", "corrupt")
            expected = offset + int(np.prod(shape)) * dtype.itemsize
            out = bytearray(head)
            while len(out) < expected:
                chunk = f.read(min(MiB, expected - len(out)))
                if not chunk:
                    break
                out += chunk
    except InvalidImageError:
        raise
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError; a cut .gz stream an EOFError
        raise InvalidImageError(f"{path.name} is truncated or not a readable {'gzip' if gz else 'NIfTI'} file "
                                f"({e})", "corrupt") from None
    if len(out) < expected:
        raise InvalidImageError(f"{path.name} is truncated: its header declares {expected:,} bytes (voxel data from "
                                f"byte {offset:,}) but the file holds {len(out):,}. Send the complete file.",
                                "corrupt")
    return bytes(out[:expected])


def read_nifti(path: Path, limits: Limits) -> Tuple[List[np.ndarray], Optional[Tuple[float, float, float]], Dict]:
    """(axial slices HxWx3 in the closest RAS orientation, spacing (row, column, slice) mm or None, meta).

    Slices are shown anterior up (``np.rot90`` of each x-y plane), inferior to superior; NaN and
    infinite voxels (a volume's masked background) become 0. ``meta`` keeps the affine, header
    and orientation for :func:`write_nifti_mask`.
    """
    try:
        import nibabel as nib
    except ImportError:
        raise ValueError("NIfTI input needs nibabel: pip install nibabel==5.4.2") from None
    raw = _read_bytes(path, limits)
    img = None
    for cls in (nib.Nifti1Image, nib.Nifti2Image):
        try:
            img = cls.from_bytes(raw)
            break
        except Exception:  # noqa: BLE001 - a wrong header raises several kinds
            continue
    if img is None:
        raise InvalidImageError(f"{path.name} is not a readable NIfTI-1 or NIfTI-2 file", "corrupt")
    ornt = _orientation(img.affine, path.name)
    ras = nib.orientations.axcodes2ornt(("R", "A", "S"))
    vol = np.asanyarray(img.dataobj)
    vol = nib.orientations.apply_orientation(vol, nib.orientations.ornt_transform(ornt, ras))
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    perm = [int(a) for a in ornt[:, 0]]  # canonical axis i comes from input axis perm.index(i)
    zx, zy, zz = (zooms[perm.index(i)] for i in range(3))
    slices = [to_slice(np.rot90(vol[:, :, k]), f"{path.name} slice {k + 1}", nonfinite="zero")[0]
              for k in range(vol.shape[2])]
    spacing = (zy, zx, zz) if all(z > 0 for z in (zx, zy, zz)) else None
    return slices, spacing, {"affine": img.affine, "header": img.header, "ornt": ornt, "shape": img.shape[:3]}


def write_nifti_mask(masks: np.ndarray, meta: Dict, path: Path) -> Path:
    """(N, H, W) masks as a uint8 0/1 NIfTI on the input volume's own grid, affine and orientation."""
    import nibabel as nib

    ras = nib.orientations.axcodes2ornt(("R", "A", "S"))
    canon = np.stack([np.rot90(m, k=-1) for m in masks], axis=-1)  # undo the display rotation
    vol = nib.orientations.apply_orientation(canon, nib.orientations.ornt_transform(ras, meta["ornt"]))
    header = meta["header"].copy()
    header.set_data_dtype(np.uint8)
    out = nib.Nifti1Image(np.ascontiguousarray(vol, dtype=np.uint8), meta["affine"], header)
    out.header.set_slope_inter(1, 0)
    nib.save(out, str(path))
    return Path(path)
