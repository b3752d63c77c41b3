"""Decode and validate untrusted image files: bytes -> HxWx3 slice in the file's own dtype, or an error.

This is the only decoder of slice pixels: the one-slice tab, the whole-case readers
(:mod:`brainseg.case_io`) and training (:func:`brainseg.data.read_image`) all read through it,
so one file gives one array everywhere. It reads TIFF (8/16-bit, float, multi-page), PNG
(8/16-bit) and JPEG, and keeps the full dynamic range: a 16-bit or float slice stays uint16 or
float32, because the Predictor's per-slice normalisation handles any dtype. Alpha is dropped,
palettes are expanded, a grayscale file is taken as the FLAIR channel alone (replicated to three
channels, and said so), and the EXIF/TIFF orientation is applied.

What one request may cost is one :class:`Limits`; sizes (pixels, and decoded bytes: channels x
bytes per sample) are checked from the header before any pixel is decoded, so a decompression
bomb costs nothing. Anything else raises :class:`InvalidImageError`, whose message names the
file and says what is wrong and what to do.

Example:
    >>> img = load_slice("TCGA_CS_4941_19960909_22.tif")  # uint8 HxWx3: pre-contrast, FLAIR, post-contrast
    >>> img.shape, img.dtype
    ((256, 256, 3), dtype('uint8'))
"""
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple, Union

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from .limits import (DATASET_LIMITS, DEFAULT_LIMITS, InvalidImageError, Limits, MiB, check_budget,  # noqa: F401
                     check_size, decoded_bytes, named)
from .tiff_pages import read_tiff_stack

KINDS = "TIFF, PNG or JPEG"

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_ORIENTATION_TAG = 0x0112
_F32_MAX = float(np.finfo(np.float32).max)


@dataclass
class DecodedImage:
    """A validated slice. ``array`` is HxWx3 (uint8, uint16 or float32), channels in the file's order.

    ``channels`` is how many image channels the file held (1 for a FLAIR-only grayscale file,
    whose channel was then replicated; alpha is not counted); ``multipage`` says a TIFF has more
    pages than the first, the one used.
    """

    array: np.ndarray
    format: str
    channels: int
    channels_replicated: bool
    multipage: bool = False
    orientation: int = 1

    @property
    def shape(self) -> List[int]:
        """[h, w, c] of the slice as the file held it (c = 1 for a FLAIR-only file)."""
        return [int(self.array.shape[0]), int(self.array.shape[1]), self.channels]


def sniff_format(data: bytes) -> Optional[str]:
    """'tiff', 'png' or 'jpeg' from the first bytes, else None (file names are not trusted)."""
    if data[:4] in _TIFF_MAGIC:
        return "tiff"
    if data.startswith(_PNG_MAGIC):
        return "png"
    if data.startswith(_JPEG_MAGIC):
        return "jpeg"
    return None


def apply_orientation(a: np.ndarray, orientation: int) -> np.ndarray:
    """Undo an EXIF/TIFF orientation (1-8) on an HxW[xC] array, as ``PIL.ImageOps.exif_transpose`` does."""
    ops = {
        2: lambda x: x[:, ::-1],
        3: lambda x: x[::-1, ::-1],
        4: lambda x: x[::-1],
        5: lambda x: np.swapaxes(x, 0, 1),
        6: lambda x: np.rot90(x, -1),
        7: lambda x: np.rot90(x, 2).swapaxes(0, 1),
        8: lambda x: np.rot90(x, 1),
    }
    op = ops.get(int(orientation or 1))
    return np.ascontiguousarray(op(a)) if op else a


# ---------------------------------------------------------------- channels and values: the one place

def to_slice(a: np.ndarray, what: str = "The image", alpha: bool = False,
             nonfinite: str = "refuse") -> Tuple[np.ndarray, int, bool]:
    """A decoded HxW or HxWxC array -> (HxWx3 uint8/uint16/float32, file channels, replicated).

    Args:
        a: pixels as decoded, channels last, in the file's order.
        what: how messages name it ("The TIFF image", "vol.nii.gz slice 3").
        alpha: a trailing 2nd or 4th channel is alpha, dropped.
        nonfinite: "refuse" NaN/infinite values (a slice), or "zero" them (a volume's background).
    """
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3:
        raise InvalidImageError(f"{what} has pixel array shape {a.shape}; expected one 2-D slice "
                                f"(height x width, with 1 or 3 channels).", "unsupported")
    c = a.shape[2]
    if c in (2, 4) and alpha:
        a, c = a[..., :c - 1], c - 1
    if c not in (1, 3):
        raise InvalidImageError(f"{what} has {c} channels (shape {a.shape}); expected 3 (pre-contrast, FLAIR, "
                                f"post-contrast) or 1 (FLAIR alone).", "unsupported")
    a = _supported_values(a, what, nonfinite)
    if c == 1:
        return np.repeat(a, 3, axis=2), 1, True
    return np.ascontiguousarray(a), 3, False


def _supported_values(a: np.ndarray, what: str, nonfinite: str) -> np.ndarray:
    """Keep uint8/uint16/float32; other numbers become float32 unchanged, or an error saying why they cannot."""
    if a.dtype == np.bool_:
        raise InvalidImageError(f"{what} is a 1-bit (black and white) image, not an MRI slice "
                                f"(is it a mask?). Upload the slice itself.", "unsupported")
    if a.dtype.kind == "f":
        finite = np.isfinite(a)
        if not finite.all():
            if nonfinite != "zero":
                raise InvalidImageError(f"{what} contains NaN or infinite values ({a.dtype}); "
                                        f"replace them (e.g. with 0) and upload again.", "unsupported")
            a = np.where(finite, a, 0)
        if a.dtype == np.float64 and a.size and np.abs(a).max() > _F32_MAX:
            raise InvalidImageError(f"{what} holds values up to {np.abs(a).max():.3g}, beyond the float32 range "
                                    f"(±{_F32_MAX:.3g}) the models compute in; rescale the pixels and upload again.",
                                    "unsupported")
    if a.dtype in (np.uint8, np.uint16, np.float32):
        return a
    if a.dtype.kind in "uif":
        return a.astype(np.float32)
    raise InvalidImageError(f"{what} holds {a.dtype} pixels; expected 8-bit, 16-bit or float values.", "unsupported")


def to_mask(a: np.ndarray, what: str = "The mask") -> np.ndarray:
    """A decoded mask (any dtype, HxW or HxWxC) -> uint8 HxW of 0/1: over half the range is tumour; 0/1 files too."""
    if a.ndim == 3:
        a = a.max(axis=2)
    if a.ndim != 2:
        raise InvalidImageError(f"{what} has pixel array shape {a.shape}; expected a 2-D mask.", "unsupported")
    if a.dtype == np.bool_:
        return a.astype(np.uint8)
    if a.dtype.kind == "f":
        return (np.nan_to_num(a) > 0.5).astype(np.uint8)
    top = int(a.max()) if a.size else 0
    half = 0 if top <= 1 else (np.iinfo(a.dtype).max // 2 if a.dtype.kind in "ui" else 127)
    return (a > half).astype(np.uint8)


# ---------------------------------------------------------------- formats

def header_size(data: bytes, fmt: str) -> Optional[Tuple[int, int]]:
    """(width, height) from a PNG's IHDR or a JPEG's SOF marker, read before Pillow sees the file."""
    if fmt == "png":
        if len(data) < 24 or data[12:16] != b"IHDR":
            return None
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        if marker == 0xDA:  # start of scan: no frame header before it
            return None
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def _png_is_16bit_colour(data: bytes) -> bool:
    """From the IHDR chunk: 16-bit RGB or RGBA, which Pillow would cut to 8 bits."""
    return len(data) > 25 and data[12:16] == b"IHDR" and data[24] == 16 and data[25] in (2, 6)


def _decode_pil(data: bytes, fmt: str, limits: Limits, mask: bool) -> Tuple[np.ndarray, bool, int]:
    """(pixels, has alpha, orientation) of a PNG or JPEG, Pillow's bomb warning made an error."""
    size = header_size(data, fmt)
    if size is not None:
        check_size(*size, len(data), limits)
    try:
        # catch_warnings is process-wide: the worst two threads racing here can do is leave the
        # error filter on, which is what this module wants anyway.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[fmt.upper()]) as im:
                check_size(im.width, im.height, len(data), limits)
                im.load()
                orientation = im.getexif().get(_ORIENTATION_TAG, 1)
                orientation = orientation if orientation in range(1, 9) else 1
                mode = im.mode
                if mode == "1" and not mask:
                    raise InvalidImageError("The image is 1-bit (black and white), not an MRI slice (is it a "
                                            "mask?). Upload the slice itself.", "unsupported")
                if mode in ("P", "PA"):
                    im = im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
                elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa"):
                    im = im.convert("RGB")
                elif mode == "La":
                    im = im.convert("LA")
                if fmt == "png" and _png_is_16bit_colour(data):
                    a = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
                    if a is None:
                        raise InvalidImageError("The PNG is truncated or corrupt. Export the slice again.", "corrupt")
                    a = a[..., [2, 1, 0, 3][:a.shape[2]]]  # OpenCV decodes to BGR(A)
                else:
                    a = np.asarray(im)
                    if a.dtype == np.int32 and a.size and a.min() >= 0 and a.max() <= 65535:
                        a = a.astype(np.uint16)  # Pillow's mode "I" for 16-bit grayscale
                alpha = im.mode in ("LA", "RGBA", "PA")
    except InvalidImageError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise InvalidImageError(f"The image declares too many pixels to decode safely ({e}). Upload a single MRI "
                                f"slice (kaggle_3m slices are 256x256).", "too_large") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        kind = "truncated" if "truncated" in str(e) else "truncated or corrupt"
        raise InvalidImageError(f"The {fmt.upper()} file is {kind} and cannot be read ({type(e).__name__}). "
                                f"Export the slice again.", "corrupt") from None
    return a, alpha, orientation


def _check_bytes(data: bytes, limits: Limits) -> str:
    if data is None or len(data) == 0:
        raise InvalidImageError("The upload is empty (0 bytes). Choose a TIFF, PNG or JPEG slice.", "empty")
    if len(data) > limits.max_bytes:
        raise InvalidImageError(f"The file is {len(data) / MiB:.1f} MB; the limit is {limits.max_bytes / MiB:.0f} MB "
                                f"for one slice.", "too_big_file")
    fmt = sniff_format(data)
    if fmt is None:
        raise InvalidImageError(f"The file is not a {KINDS} image (its first bytes match none of them). "
                                f"Upload an MRI slice in one of these formats.", "not_image")
    return fmt


def _decode(data: bytes, limits: Limits, mask: bool) -> Tuple[np.ndarray, str, bool, bool, int]:
    """(pixels as decoded, format, multipage, has alpha, orientation)."""
    fmt = _check_bytes(data, limits)
    if fmt == "tiff":
        stack = read_tiff_stack(data, limits, first_only=True)
        page = stack.pages[0]
        return page.array, fmt, stack.multipage, page.alpha, page.orientation
    a, alpha, orientation = _decode_pil(data, fmt, limits, mask)
    return np.asarray(a), fmt, False, alpha, orientation


def decode_image(data: bytes, *, limits: Limits = DEFAULT_LIMITS, name: Optional[str] = None) -> DecodedImage:
    """Decode one slice file and check it, or raise :class:`InvalidImageError` saying what is wrong.

    Args:
        data: the file's bytes (its name and extension are not trusted; the content decides).
        limits: checked before any pixel is decoded.
        name: the file's name, put in front of every message.
    Returns:
        a :class:`DecodedImage` whose ``array`` is HxWx3 uint8, uint16 or float32, orientation applied.
    """
    try:
        a, fmt, multipage, alpha, orientation = _decode(data, limits, mask=False)
        a, channels, replicated = to_slice(a, f"The {fmt.upper()} image", alpha)
    except InvalidImageError as e:
        raise named(e, name) from None
    a = apply_orientation(a, orientation)
    return DecodedImage(np.ascontiguousarray(a), fmt, channels, replicated, multipage, orientation)


def decode_mask(data: bytes, *, limits: Limits = DEFAULT_LIMITS, name: Optional[str] = None) -> np.ndarray:
    """Decode a ground-truth mask file -> uint8 HxW of 0/1 (files hold 0/255, 0/1 or 0/65535; 1-bit too)."""
    try:
        a, fmt, _, alpha, orientation = _decode(data, limits, mask=True)
        if alpha and a.ndim == 3:
            a = a[..., :-1]
        m = to_mask(a, f"The {fmt.upper()} mask")
    except InvalidImageError as e:
        raise named(e, name) from None
    return apply_orientation(m, orientation)


def read_file(path: Union[str, Path], max_bytes: int) -> bytes:
    """A local file's bytes, its size checked before it is read."""
    path = Path(path)
    size = os.stat(path).st_size
    if size > max_bytes:
        raise InvalidImageError(f"{path.name}: the file is {size / MiB:.1f} MB; the limit is {max_bytes / MiB:.0f} MB "
                                f"for one slice.", "too_big_file")
    return path.read_bytes()


def load_slice(path: Union[str, Path], *, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """Read one slice file as the app and the models see it: HxWx3, pre-contrast, FLAIR, post-contrast.

    Use this rather than ``cv2.imread``, which returns the channels reversed (BGR). 8-bit files
    (every kaggle_3m slice) give uint8; 16-bit and float files keep their range as uint16 or
    float32, which the Predictor normalises per slice. Raises :class:`InvalidImageError` (a
    ValueError) naming the file, or OSError when it cannot be opened.

    Example:
        >>> from brainseg.images import load_slice
        >>> prediction = predictor.predict(load_slice("TCGA_CS_4941_19960909_22.tif"))
    """
    return decode_image(read_file(path, limits.max_bytes), limits=limits, name=Path(path).name).array


def load_mask(path: Union[str, Path], *, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """Read one ground-truth mask file as uint8 HxW of 0/1 (see :func:`decode_mask`)."""
    return decode_mask(read_file(path, limits.max_bytes), limits=limits, name=Path(path).name)
