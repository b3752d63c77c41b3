"""Decode and validate untrusted image files: bytes -> HxWx3 slice in the file's own dtype, or an error.

Everything a user can upload goes through :func:`decode_image` before it reaches a model. It
reads TIFF (8/16-bit, float, multi-page: the first page), PNG (8/16-bit) and JPEG, and keeps the
full dynamic range: a 16-bit or float slice is passed on as uint16 or float32, because the
Predictor's per-slice normalisation handles any dtype. Alpha is dropped, palettes are expanded,
a grayscale file is taken as the FLAIR channel alone (replicated to three channels, and said
so), and the EXIF/TIFF orientation is applied, so rotated copies of a slice give one answer.

Anything else raises :class:`InvalidImageError`, whose message says what is wrong and what to
do; the app shows it to the user as it is. Sizes are checked from the header before any pixel
is decoded, so a decompression bomb costs nothing.

Example:
    >>> img = decode_image(open("TCGA_CS_4941_19960909_22.tif", "rb").read())
    >>> img.array.shape, img.array.dtype, img.channels_replicated
    ((256, 256, 3), dtype('uint8'), False)
"""
import io
import warnings
from dataclasses import dataclass
from typing import List, Optional, Tuple

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 40_000_000
MAX_SIDE = 4096
MIN_SIDE = 32
KINDS = "TIFF, PNG or JPEG"

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_ORIENTATION_TAG = 0x0112


class InvalidImageError(ValueError):
    """An upload that cannot be used as a slice. ``reason`` is a short code for logs and tests.

    Reasons: ``empty``, ``too_big_file``, ``not_image``, ``corrupt``, ``too_large``, ``too_small``,
    ``unsupported``.
    """

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


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


def check_size(width: int, height: int, n_bytes: int, max_side: int = MAX_SIDE, min_side: int = MIN_SIDE,
               max_pixels: int = MAX_PIXELS) -> None:
    """Refuse a declared size before decoding: over ``max_side`` or ``max_pixels``, or under ``min_side``."""
    pixels = int(width) * int(height)
    if width > max_side or height > max_side or pixels > max_pixels:
        bomb = pixels > 1000 * max(n_bytes, 1)
        raise InvalidImageError(
            f"The image is {width}x{height} pixels ({pixels / 1e6:.1f} megapixels); the limit is {max_side} px a side "
            f"and {max_pixels / 1e6:.0f} megapixels"
            + (f" (a {n_bytes / 1024:.0f} KB file declaring that many pixels looks like a decompression bomb)"
               if bomb else "")
            + ". Upload a single MRI slice (kaggle_3m slices are 256x256).", "too_large")
    if width < min_side or height < min_side:
        raise InvalidImageError(
            f"The image is {width}x{height} pixels, too small for an MRI slice (at least {min_side}x{min_side}). "
            f"Upload the slice at its original resolution.", "too_small")


def _to_supported_dtype(a: np.ndarray, what: str) -> np.ndarray:
    """Keep uint8/uint16/float32; widen other integer and float types losslessly where possible to float32."""
    if a.dtype in (np.uint8, np.uint16, np.float32):
        return a
    if a.dtype == np.bool_:
        raise InvalidImageError(f"The {what} is a 1-bit (black and white) image, not an MRI slice "
                                f"(is it a mask?). Upload the slice itself.", "unsupported")
    if np.issubdtype(a.dtype, np.integer) or a.dtype in (np.float16, np.float64):
        return a.astype(np.float32)
    raise InvalidImageError(f"The {what} holds {a.dtype} pixels; expected 8-bit, 16-bit or float values.",
                            "unsupported")


def _to_slice(a: np.ndarray, what: str, alpha: bool) -> Tuple[np.ndarray, int, bool]:
    """HxW, HxWx1..4 -> (HxWx3, file channels, replicated). ``alpha``: a trailing 2nd/4th channel is alpha."""
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3:
        raise InvalidImageError(f"The {what} has pixel array shape {a.shape}; expected one 2-D slice "
                                f"(height x width, with 1 or 3 channels).", "unsupported")
    c = a.shape[2]
    if c in (2, 4) and alpha:
        a, c = a[..., :c - 1], c - 1
    if c == 1:
        return np.repeat(a, 3, axis=2), 1, True
    if c == 3:
        return a, 3, False
    raise InvalidImageError(f"The {what} has {c} channels (shape {a.shape}); expected 3 (pre-contrast, FLAIR, "
                            f"post-contrast) or 1 (FLAIR alone).", "unsupported")


def _check_values(a: np.ndarray, what: str) -> None:
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise InvalidImageError(f"The {what} contains NaN or infinite values ({a.dtype}); "
                                f"replace them (e.g. with 0) and upload again.", "unsupported")


def _decode_tiff(data: bytes, limits: dict) -> Tuple[np.ndarray, bool, bool, int]:
    """(pixels, multipage, has alpha, orientation) of a TIFF's first page; tifffile, else libtiff via OpenCV."""
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages.first
            try:  # only whether a second page exists: counting them all would parse every IFD
                tif.pages[1]
                multipage = True
            except (IndexError, KeyError):
                multipage = False
            shape, axes = tuple(page.shape), page.axes
            ysize, xsize = int(page.imagelength), int(page.imagewidth)
            check_size(xsize, ysize, len(data), **limits)
            if int(np.prod(shape)) > 4 * ysize * xsize or "Y" not in axes or "X" not in axes:
                raise InvalidImageError(f"The TIFF's first page has shape {shape} (axes {axes}); expected one 2-D "
                                        f"slice with 1 or 3 channels.", "unsupported")
            ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts)]
            if not ends or max(ends) > len(data):
                raise InvalidImageError(f"The TIFF is truncated: its pixel data should run to byte "
                                        f"{max(ends, default=0)} but the file has {len(data)} bytes. "
                                        f"Upload the complete file.", "corrupt")
            tag = page.tags.get(_ORIENTATION_TAG)
            orientation = int(tag.value) if tag is not None else 1
            orientation = orientation if 1 <= orientation <= 8 else 1
            alpha = bool(page.extrasamples) or int(page.samplesperpixel) in (2, 4)
            try:
                a = page.asarray()
                if axes.startswith("S"):  # planar configuration: samples first
                    a = np.moveaxis(a, 0, -1)
                if page.photometric == tifffile.PHOTOMETRIC.PALETTE and page.colormap is not None:
                    cmap = page.colormap.T
                    a = (cmap >> 8 if cmap.max() > 255 else cmap).astype(np.uint8)[a]
                    alpha = False
                elif page.photometric == tifffile.PHOTOMETRIC.MINISWHITE:
                    raise InvalidImageError("The TIFF stores inverted grayscale (MinIsWhite); save it as a normal "
                                            "grayscale or RGB TIFF.", "unsupported")
            except ValueError as e:
                if "imagecodecs" not in str(e):
                    raise
                # tifffile alone cannot decode LZW or JPEG; libtiff (OpenCV) can, from the same bytes.
                a = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
                if a is None:
                    raise InvalidImageError(f"The TIFF is truncated or corrupt, or uses a compression this server "
                                            f"cannot read ({page.compression.name}). Save it uncompressed, with "
                                            f"deflate or with LZW.", "corrupt") from None
                if a.ndim == 3 and a.shape[2] >= 3:
                    a = a[..., [2, 1, 0, 3][:a.shape[2]]]  # OpenCV decodes to BGR(A)
                # libtiff applies the orientation tag itself (whatever the flags say), so it is done.
                oriented = (ysize, xsize) if orientation < 5 else (xsize, ysize)
                orientation = 1
                if a.shape[:2] != oriented:
                    raise InvalidImageError(f"The TIFF is corrupt: its header says {xsize}x{ysize} but it decodes "
                                            f"to {a.shape[1]}x{a.shape[0]}.", "corrupt") from None
    except InvalidImageError:
        raise
    except Exception as e:  # noqa: BLE001 - tifffile raises many kinds for broken files
        raise InvalidImageError(f"The TIFF is truncated or corrupt and cannot be read ({type(e).__name__}). "
                                f"Export the slice again.", "corrupt") from None
    return a, multipage, alpha, orientation


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


def _decode_pil(data: bytes, fmt: str, limits: dict) -> Tuple[np.ndarray, bool, bool, int]:
    """(pixels, multipage, has alpha, orientation) of a PNG or JPEG, Pillow's bomb warning made an error."""
    size = header_size(data, fmt)
    if size is not None:
        check_size(*size, len(data), **limits)
    try:
        # catch_warnings is process-wide: the worst two threads racing here can do is leave the
        # error filter on, which is what this module wants anyway.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[fmt.upper()]) as im:
                check_size(im.width, im.height, len(data), **limits)
                im.load()
                orientation = im.getexif().get(_ORIENTATION_TAG, 1)
                orientation = orientation if orientation in range(1, 9) else 1
                mode = im.mode
                if mode == "1":
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
    return a, False, alpha, orientation


def decode_image(data: bytes, *, max_bytes: int = MAX_BYTES, max_side: int = MAX_SIDE, min_side: int = MIN_SIDE,
                 max_pixels: int = MAX_PIXELS) -> DecodedImage:
    """Decode one uploaded slice and check it, or raise :class:`InvalidImageError` saying what is wrong.

    Args:
        data: the file's bytes (its name and extension are not trusted; the content decides).
        max_bytes, max_side, min_side, max_pixels: limits, checked before any pixel is decoded.
    Returns:
        a :class:`DecodedImage` whose ``array`` is HxWx3 uint8, uint16 or float32, orientation applied.
    """
    if data is None or len(data) == 0:
        raise InvalidImageError("The upload is empty (0 bytes). Choose a TIFF, PNG or JPEG slice.", "empty")
    if len(data) > max_bytes:
        raise InvalidImageError(f"The file is {len(data) / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.0f} MB "
                                f"for one slice.", "too_big_file")
    fmt = sniff_format(data)
    if fmt is None:
        raise InvalidImageError(f"The file is not a {KINDS} image (its first bytes match none of them). "
                                f"Upload an MRI slice in one of these formats.", "not_image")
    limits = dict(max_side=max_side, min_side=min_side, max_pixels=max_pixels)
    if fmt == "tiff":
        a, multipage, alpha, orientation = _decode_tiff(data, limits)
    else:
        a, multipage, alpha, orientation = _decode_pil(data, fmt, limits)
    what = f"{fmt.upper()} image"
    a = _to_supported_dtype(np.asarray(a), what)
    a, channels, replicated = _to_slice(a, what, alpha)
    _check_values(a, what)
    a = apply_orientation(a, orientation)
    return DecodedImage(np.ascontiguousarray(a), fmt, channels, replicated, multipage, orientation)
