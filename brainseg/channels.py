"""What the user says about the channels: the upload's channel order, mapped to the models' own.

The models read (pre-contrast, FLAIR, post-contrast); exports often put FLAIR first or last, or hold
FLAIR alone. ``channels="flair,pre,post"`` (API, CLI ``--channels``, the app's dropdown) says so, and
:func:`map_channels` reorders before anything else sees the slice, the input check included.
"""
from typing import List, Optional

import numpy as np

CHANNEL_CHOICES = [("pre-contrast, FLAIR, post-contrast (as trained)", "pre,flair,post"),
                   ("FLAIR, pre-contrast, post-contrast", "flair,pre,post"),
                   ("pre-contrast, post-contrast, FLAIR", "pre,post,flair"),
                   ("post-contrast, FLAIR, pre-contrast", "post,flair,pre"),
                   ("FLAIR only", "flair")]

CHANNEL_NAMES = {"pre": "pre-contrast", "flair": "FLAIR", "post": "post-contrast"}


def parse_channels(spec) -> Optional[List[str]]:
    """The upload's channels, in its order: 'pre,flair,post' (the default), any order of the three, or
    'flair' (FLAIR alone: a single channel, or the named one of three with the others 'none', as in
    'none,flair,none'). None or '' is the default. Raises ValueError saying what to write."""
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return None
    parts = [t.strip().lower() for t in (spec.split(",") if isinstance(spec, str) else spec)]
    parts = [{"pre-contrast": "pre", "post-contrast": "post", "-": "none"}.get(t, t) for t in parts]
    ok = all(t in (*CHANNEL_NAMES, "none") for t in parts) and parts.count("flair") == 1 and (
        len(parts) == 1 or (len(parts) == 3 and all(parts.count(t) <= 1 for t in ("pre", "post"))))
    if not ok:
        raise ValueError(f"channels {spec!r}: name each channel of the upload in order, e.g. 'pre,flair,post' or "
                         f"'flair,pre,post', or 'flair' for FLAIR alone ('none' for a channel to ignore)")
    return parts


def map_channels(image: np.ndarray, spec) -> np.ndarray:
    """``image`` (HxW or HxWxC, in the upload's channel order ``spec``) in the models' order (pre-contrast,
    FLAIR, post-contrast); FLAIR alone (or any channel 'none') becomes FLAIR replicated. None: as it is."""
    parts = parse_channels(spec)
    if parts is None or parts == ["pre", "flair", "post"]:
        return image
    a = np.asarray(image)
    a = a[..., None] if a.ndim == 2 else a
    if a.shape[-1] != len(parts):
        if len(parts) == 1:  # 'flair' for a 3-channel upload: its channels must be one grey image
            if not (np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 1], a[..., 2])):
                raise ValueError(f"channels 'flair' names one channel, but the upload has {a.shape[-1]} different "
                                 f"ones: say which is FLAIR, e.g. 'none,flair,none'")
            return a[..., :1]
        raise ValueError(f"channels names {len(parts)} channels, the upload has {a.shape[-1]}")
    if "none" in parts or len(parts) == 1:
        return a[..., parts.index("flair"):parts.index("flair") + 1]
    return a[..., [parts.index(t) for t in ("pre", "flair", "post")]]
