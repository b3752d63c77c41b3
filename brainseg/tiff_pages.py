"""TIFF pages -> pixel arrays, each page's size checked from its IFD before it is decoded.

The one TIFF reader behind :func:`brainseg.images.decode_image` (a slice: the first page) and
the whole-case reader (a stack: every page, at most ``max_pages``, within ``max_case_pixels``
and ``max_decoded_bytes`` in all). tifffile reads the pages; where it would need imagecodecs
(LZW, JPEG), libtiff through OpenCV decodes the same bytes.
"""
import io
import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import cv2
import numpy as np

from .limits import InvalidImageError, Limits, check_budget, check_size, decoded_bytes

_ORIENTATION_TAG = 0x0112


@dataclass
class TiffPage:
    """One page as decoded: channels last in the file's order, orientation still to apply."""

    array: np.ndarray
    alpha: bool
    orientation: int


@dataclass
class TiffStack:
    """The pages read (:class:`TiffPage`, or what the caller's ``convert`` made of each)."""

    pages: List[object]
    multipage: bool
    spacing: Optional[Tuple[float, float, float]] = None


def count_pages(tif, stop: int) -> int:
    """Pages of a TIFF, counted lazily up to ``stop`` (``len`` would walk a crafted chain of millions)."""
    n, seen = 0, set()
    for page in tif.pages:
        offset = getattr(page, "offset", None)
        if offset in seen:  # tifffile would follow a next-page pointer back to an earlier page for ever
            raise InvalidImageError("The TIFF is corrupt: its list of pages loops back to an earlier page. Export "
                                    "the file again.", "corrupt")
        seen.add(offset)
        n += 1
        if n >= stop:
            break
    return n


def read_tiff_stack(data: bytes, limits: Limits, first_only: bool = False,
                    convert: Optional[Callable[[TiffPage, int], object]] = None) -> TiffStack:
    """The first page, or every page, of a TIFF, each checked against ``limits`` before it is decoded.

    Args:
        data: the file's bytes.
        limits: a slice's rules for every page; for a stack also the page count, the case's
            pixels and the decoded bytes of all pages together.
        first_only: read the first page only (a slice), noting whether there are more.
        convert: ``convert(page, index)`` is kept instead of each page, so a stack is never held twice.
    """
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            if first_only:
                found = count_pages(tif, 2)
                n, multipage = min(found, 1), found > 1
            else:
                n = count_pages(tif, limits.max_pages + 1)
                if n > limits.max_pages:
                    raise InvalidImageError(f"The TIFF has more than {limits.max_pages} pages, the limit of slices "
                                            f"in a case. Send at most {limits.max_pages} slices.", "too_large")
                multipage = n > 1
            if n == 0:
                raise InvalidImageError("The TIFF is truncated or corrupt: it holds no readable page. Export the "
                                        "slice again.", "corrupt")
            spent, pixels = 0, 0
            for k in range(n):  # every page's header first: a stack over its budget decodes nothing
                try:
                    page = tif.pages[k]
                    ysize, xsize = int(page.imagelength), int(page.imagewidth)
                    check_size(xsize, ysize, len(data), limits)
                    pixels += ysize * xsize
                    if not first_only and pixels > limits.max_case_pixels:
                        raise InvalidImageError(f"The pages up to this one hold {pixels:,} pixels, over the limit of "
                                                f"{limits.max_case_pixels:,} for a case. Send fewer or smaller "
                                                f"slices.", "too_large")
                    samples = max(1, int(np.prod(page.shape)) // max(ysize * xsize, 1))
                    spent += decoded_bytes(ysize, xsize, samples, page.dtype if page.dtype is not None else np.uint8)
                    check_budget(spent, limits, "The TIFF" if first_only else "The pages up to this one")
                except InvalidImageError as e:
                    raise e if first_only else InvalidImageError(f"page {k + 1}: {e}", e.reason) from None
            out, libtiff = [], _LibTiff(data)
            for k in range(n):
                try:
                    tp = _read_page(tif.pages[k], k, len(data), libtiff)
                except InvalidImageError as e:
                    raise e if first_only else InvalidImageError(f"page {k + 1}: {e}", e.reason) from None
                out.append(convert(tp, k) if convert is not None else tp)
            spacing = None if first_only else _spacing(tif, tif.pages[0])
    except InvalidImageError:
        raise
    except Exception as e:  # noqa: BLE001 - tifffile raises many kinds for broken files
        raise InvalidImageError(f"The TIFF is truncated or corrupt and cannot be read ({type(e).__name__}). "
                                f"Export the slice again.", "corrupt") from None
    return TiffStack(out, multipage, spacing)


class _LibTiff:
    """OpenCV's libtiff over the same bytes, decoded at most once, for pages tifffile cannot read alone."""

    def __init__(self, data: bytes):
        self.data, self.pages = data, None

    def page(self, k: int) -> Optional[np.ndarray]:
        buf = np.frombuffer(self.data, np.uint8)
        if k == 0:
            return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        if self.pages is None:
            ok, pages = cv2.imdecodemulti(buf, cv2.IMREAD_UNCHANGED)
            self.pages = list(pages) if ok else []
        return self.pages[k] if k < len(self.pages) else None


def _read_page(page, k: int, n_bytes: int, libtiff: _LibTiff) -> TiffPage:
    import tifffile

    shape, axes = tuple(page.shape), page.axes
    ysize, xsize = int(page.imagelength), int(page.imagewidth)
    if int(np.prod(shape)) > 4 * ysize * xsize or "Y" not in axes or "X" not in axes:
        raise InvalidImageError(f"The TIFF page has shape {shape} (axes {axes}); expected one 2-D "
                                f"slice with 1 or 3 channels.", "unsupported")
    ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts)]
    if not ends or max(ends) > n_bytes:
        raise InvalidImageError(f"The TIFF is truncated: its pixel data should run to byte {max(ends, default=0)} "
                                f"but the file has {n_bytes} bytes. Upload the complete file.", "corrupt")
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
        elif page.photometric == tifffile.PHOTOMETRIC.MINISWHITE and a.dtype != np.bool_:  # 1-bit: as stored
            raise InvalidImageError("The TIFF stores inverted grayscale (MinIsWhite); save it as a normal "
                                    "grayscale or RGB TIFF.", "unsupported")
    except ValueError as e:
        if "imagecodecs" not in str(e):
            raise
        # tifffile alone cannot decode LZW or JPEG; libtiff (OpenCV) can, from the same bytes.
        a = libtiff.page(k)
        if a is None:
            raise InvalidImageError(f"The TIFF is truncated or corrupt, or uses a compression this server "
                                    f"cannot read ({page.compression.name}). Save it uncompressed, with "
                                    f"deflate or with LZW.", "corrupt") from None
        if a.ndim == 3 and a.shape[2] >= 3:
            a = a[..., [2, 1, 0, 3][:a.shape[2]]]  # OpenCV decodes to BGR(A)
        if int(page.bitspersample) == 1:  # libtiff widens 1-bit (Group 3/4) to 0/255: keep it 1-bit, as tifffile does
            a = a > 0
        # libtiff applies the orientation tag itself (whatever the flags say), so it is done.
        oriented = (ysize, xsize) if orientation < 5 else (xsize, ysize)
        orientation = 1
        if a.shape[:2] != oriented:
            raise InvalidImageError(f"The TIFF is corrupt: its header says {xsize}x{ysize} but it decodes "
                                    f"to {a.shape[1]}x{a.shape[0]}.", "corrupt") from None
    return TiffPage(a, alpha, orientation)


def _spacing(tif, page) -> Optional[Tuple[float, float, float]]:
    """(row, column, slice) in mm from ImageJ metadata (unit mm or micron), else None."""
    meta = tif.imagej_metadata or {}
    unit = str(meta.get("unit", "")).lower().replace("\\u00b5", "µ")
    scale = {"mm": 1.0, "millimeter": 1.0, "micron": 1e-3, "um": 1e-3, "µm": 1e-3, "cm": 10.0}.get(unit)
    if scale is None or "spacing" not in meta:
        return None
    try:
        xr, yr = page.tags["XResolution"].value, page.tags["YResolution"].value
        col, row = xr[1] / xr[0], yr[1] / yr[0]  # resolution is pixels per unit
        spacing = (row * scale, col * scale, float(meta["spacing"]) * scale)
    except (KeyError, ZeroDivisionError, TypeError, IndexError, ValueError):
        return None
    if not all(math.isfinite(v) and 0 < v <= 100 for v in spacing):  # a negative size gave a negative volume
        raise InvalidImageError(f"The TIFF's ImageJ metadata gives a voxel spacing of {', '.join(f'{v:g}' for v in spacing)} "
                                f"mm; each size must be positive and at most 100 mm. Fix the file's spacing",
                                "corrupt")
    return spacing
