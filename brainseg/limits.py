"""What one request may cost: the one :class:`Limits` for a slice, a case and training, and its checks.

Every reader (:mod:`brainseg.images`, :mod:`brainseg.tiff_pages`, :mod:`brainseg.case_io`) checks
sizes from headers against these before any pixel is decoded, and refuses with an
:class:`InvalidImageError` that names the file and the limit.
"""
from dataclasses import dataclass, replace

import numpy as np

MiB = 2**20


@dataclass(frozen=True)
class Limits:
    """What one request may cost: the one set of limits for a slice, a case and training.

    A slice (one file, or one page or plane of a case) is at most ``max_side`` px a side and
    ``max_pixels``, at least ``min_side``; a case holds at most ``max_slices`` slices and
    ``max_case_pixels``; the pixels of a request (a slice or a whole case) decode to at most
    ``max_decoded_bytes`` (pixels x channels x bytes per sample); the number in a slice's name is at
    most ``max_slice_number``. Zips are read in memory:
    ``max_zip_members`` members of at most ``max_member_bytes`` each, ``max_zip_bytes`` in all,
    a member over ``ratio_min_bytes`` inflating at most ``max_ratio`` times.
    """

    max_bytes: int = 20 * MiB            # one slice file
    max_input_bytes: int = 512 * MiB     # one case file as it is on disk (zip, multi-page TIFF, NIfTI)
    max_side: int = 4096
    min_side: int = 32                   # smaller is not an MRI slice (kaggle_3m slices are 256x256)
    max_pixels: int = 4096 * 4096        # one slice
    max_decoded_bytes: int = 512 * MiB   # one request's pixels, counted in bytes before decoding
    max_pages: int = 512                 # pages read from one multi-page TIFF
    max_slices: int = 512
    max_slice_number: int = 99_999       # the _<n> in a slice's name (kaggle_3m runs to ~90)
    max_case_pixels: int = 2**25         # ~33.5 M pixels: 512 slices of 256x256, or 128 of 512x512
    max_zip_members: int = 2048
    max_member_bytes: int = 64 * MiB     # one zip member, uncompressed
    max_zip_bytes: int = 512 * MiB       # all zip members read
    max_ratio: int = 200                 # deflate reaches ~1000:1 on zeros; slices and masks stay far below
    ratio_min_bytes: int = MiB           # tiny members (an empty mask) may compress hundreds of times


DEFAULT_LIMITS = Limits()
# A local dataset (training, evaluation): the same rules, but small synthetic slices are fine.
DATASET_LIMITS = replace(DEFAULT_LIMITS, min_side=1)


class InvalidImageError(ValueError):
    """An input that cannot be used. ``reason`` is a short code for logs and tests.

    Reasons: ``empty``, ``too_big_file``, ``not_image``, ``corrupt``, ``too_large``, ``too_small``,
    ``unsupported``.
    """

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason




# ---------------------------------------------------------------- limits, before any pixel is decoded

def check_size(width: int, height: int, n_bytes: int, limits: Limits = DEFAULT_LIMITS) -> None:
    """Refuse a declared slice size: over ``max_side`` or ``max_pixels``, or under ``min_side``."""
    pixels = int(width) * int(height)
    if width > limits.max_side or height > limits.max_side or pixels > limits.max_pixels:
        bomb = pixels > 1000 * max(n_bytes, 1)
        raise InvalidImageError(
            f"The image is {width}x{height} pixels ({pixels / 1e6:.1f} megapixels); the limit is {limits.max_side} px "
            f"a side and {limits.max_pixels / 1e6:.1f} megapixels"
            + (f" (a {n_bytes / 1024:.0f} KB file declaring that many pixels looks like a decompression bomb)"
               if bomb else "")
            + ". Upload a single MRI slice (kaggle_3m slices are 256x256).", "too_large")
    if width < limits.min_side or height < limits.min_side:
        raise InvalidImageError(
            f"The image is {width}x{height} pixels, too small for an MRI slice (at least {limits.min_side}x"
            f"{limits.min_side}). Upload the slice at its original resolution.", "too_small")


def decoded_bytes(height: int, width: int, samples: int, dtype) -> int:
    """Bytes a slice takes once decoded and made HxWx3: the larger of the file's and the output's sample size."""
    dtype = np.dtype(dtype)
    out = dtype.itemsize if dtype in (np.uint8, np.uint16, np.float32) else max(dtype.itemsize, 4)
    return int(height) * int(width) * max(int(samples), 3) * max(dtype.itemsize, out)


def check_budget(n_bytes: int, limits: Limits, what: str = "The image") -> None:
    """Refuse pixels that would decode to more than ``max_decoded_bytes``."""
    if n_bytes > limits.max_decoded_bytes:
        raise InvalidImageError(f"{what} would decode to {n_bytes / MiB:.0f} MiB of pixels (pixels x channels x bytes "
                                f"per sample), over the limit of {limits.max_decoded_bytes / MiB:.0f} MiB a request. "
                                f"Send fewer or smaller slices, or 8/16-bit pixels instead of 64-bit floats.",
                                "too_large")




def named(e: InvalidImageError, name) -> InvalidImageError:
    """The same error with the file's name in front, so every refusal says which file."""
    if not name or str(e).startswith(f"{name}"):
        return e
    return InvalidImageError(f"{name}: {e}", e.reason)
