"""The web app's parts that are not layout: safe Gradio components, the cache sweeper, examples,
and the files each answer is shown with.

``app.py`` holds the layout and the event wiring; everything here can be tested without a page.
Decisions stay where they are made: the Predictor decides, :mod:`brainseg.images` decodes, the
case analysis sums up, :mod:`brainseg.viz` draws. This module writes the PNGs the page shows,
always into the app's temp root, which :class:`CacheSweeper` empties on schedule.
"""
import asyncio
import hashlib
import logging
import math
import os
import re
import secrets
import stat
import time
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import cv2
import gradio as gr
import numpy as np
from gradio.components.label import LabelConfidence, LabelData
from gradio.utils import NamedString
from gradio_client import utils as client_utils

from . import viz
from . import case_analysis
from .case_analysis import case_summary_text, summarize
from .case_io import load_case
from .exports import downloads, write_case_outputs
from .file_types import SLICE_EXTS
from .images import decode_image, load_mask
from .metrics import dice_score

log = logging.getLogger("brainseg.app")

OVERLAY_MAX_SIDE = 1024  # overlays are for the eye; the mask keeps the input's full size
PREVIEW_MAX_SIDE = 512
EXPIRED = "This upload is no longer on the server (uploads are deleted after five minutes). Upload the file again."

# What each input and output of the API is, in the endpoints' order (the API page and view_api() show these).
THRESHOLD_API = "Pixel probability threshold, 0.01-0.99 (default: the model's)."
SLICE_API = (
    "An MRI slice file: TIFF, PNG or JPEG, 3 channels or FLAIR alone.",
    THRESHOLD_API,
    "The upload's channel order: 'pre,flair,post' (default), another order of the three, or 'flair' alone.",
    "Detection: {'label': 'tumour', 'no tumour' or 'no verdict', 'confidences': [{'label', 'confidence'}]}.",
    "The FLAIR channel as shown (PNG).",
    "FLAIR with the predicted tumour in red (and the truth outlined in green for an example), PNG, at most "
    f"{OVERLAY_MAX_SIDE} px a side.",
    "The predicted mask: PNG, 0/255, at the input's size.",
    "The verdict, area and thresholds in words.",
    "The result as JSON: input_check {status, reasons, score}, uncertain, tumor_detected (null if refused), ...",
)

CASE_API = (
    "The case: a zip (kaggle_3m folder or DICOM series), a multi-page TIFF, a NIfTI file, slice files or .dcm files.",
    THRESHOLD_API,
    "Voxel spacing in mm as 'row, column, slice' for the volume in mL; '' keeps the file's own.",
    "DICOM with several series: the SeriesDescription to analyse; '' stacks FLAIR + pre + post, or takes FLAIR.",
    "The case in words: slices, tumour slices, volume, largest slice, Dice when masks came with it.",
    "Tumour probability and area along the stack (PNG).",
    "Every slice with its overlay, numbered (PNG).",
    "The predicted masks: a multi-page TIFF (0/255), or a NIfTI (0/1) on the input's grid for NIfTI input.",
    "Every download: NIfTI and spacing-tagged TIFF masks, a DICOM SEG for DICOM input, the per-slice CSV.",
    "The case summary as JSON, with per_slice figures.",
)


# ---------------------------------------------------------------- components

def describe_io(component: gr.components.Component, text: str) -> None:
    """Give ``component`` a description on the API page and in ``Client.view_api()``."""
    info = dict(component.api_info())
    info["description"] = info["additional_description"] = text
    component.api_info = lambda: info  # instance attribute: read by api_info_as_input/_as_output


class _UploadsOnly:
    """A file input that takes only regular files already uploaded: no folders, no URLs, checked
    before Gradio tracks the path (a tracked folder would stop Gradio's scheduled deletion)."""

    def get_block_name(self) -> str:
        return "file"  # the page renders it as the gr.File it is

    def get_block_class(self) -> str:
        return "file"  # and the API page calls it one

    @staticmethod
    def _refuse_unless_file(path) -> None:
        if path is None:
            return
        p = str(path)
        if client_utils.is_http_url_like(p):
            raise gr.Error("Send the file itself: this app does not fetch URLs.", print_exception=False)
        if os.path.isdir(p):
            raise gr.Error("That is a folder, not a file: send the file itself (a zip for a whole case).",
                           print_exception=False)
        if not os.path.isfile(p):
            raise gr.Error(EXPIRED, print_exception=False)

    async def async_move_resource_to_block_cache(self, url_or_file_path):
        self._refuse_unless_file(url_or_file_path)
        return await super().async_move_resource_to_block_cache(url_or_file_path)

    def move_resource_to_block_cache(self, url_or_file_path):
        self._refuse_unless_file(url_or_file_path)
        return super().move_resource_to_block_cache(url_or_file_path)

    def example_payload(self):
        """The API page's example call: a shipped example (a path in a clone of the repo), not Gradio's sample PDF."""
        name = "TCGA_CS_4943_20000902_17.png" if self.file_count == "single" else "TCGA_HT_A616_19991226_slices_11-23.zip"
        one = {"path": f"examples/{name}", "url": f"examples/{name}", "meta": {"_type": "gradio.FileData"},
               "orig_name": name}  # with a url, the page writes handle_file('examples/...')
        return one if self.file_count == "single" else [one]


class SliceFile(_UploadsOnly, gr.File):
    """gr.File that hands over the file's bytes, and says so plainly when the upload has expired."""

    is_template = True  # rendered and documented as the gr.File it is

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except FileNotFoundError:  # deleted by the sweeper; Gradio's own error would log its path
            raise gr.Error(EXPIRED, print_exception=False) from None


class CaseFiles(_UploadsOnly, gr.File):
    """gr.File handing over the uploads' paths, without the empty temp file Gradio's ``filepath`` leaves each time."""

    is_template = True

    def _process_single_file(self, f) -> NamedString:
        if self.file_types and not client_utils.is_valid_file(f.path, self.file_types):
            raise gr.Error(f"Invalid file type: send one of {', '.join(self.file_types)}.", print_exception=False)
        return NamedString(f.path)


class VerdictLabel(gr.Label):
    """gr.Label whose heading is the verdict it is given, not the larger bar: at p = 0.44 with a detection
    threshold of 0.40 the heading says "tumour" and the one bar 44 %, as the summary does."""

    is_template = True

    def postprocess(self, value):
        if isinstance(value, dict) and isinstance(value.get("confidences"), list):
            return LabelData(label=value["label"], confidences=[LabelConfidence(**c) for c in value["confidences"]])
        return super().postprocess(value)


class FiniteSlider(gr.Slider):
    """gr.Slider that takes numbers only: null, strings ("0.5"), NaN and infinities are refused (NaN would pass
    the range check: it compares false)."""

    is_template = True

    def preprocess(self, payload):
        number = isinstance(payload, (int, float)) and not isinstance(payload, bool)  # not null, not "0.5"
        if not number or not math.isfinite(payload):
            raise gr.Error(f"{self.label} must be a finite number between {self.minimum} and {self.maximum}, "
                           f"got {payload!r}.", print_exception=False)
        return super().preprocess(payload)


# ---------------------------------------------------------------- deletion

class CacheSweeper:
    """Deletes every file and folder under the app's temp root older than ``age`` seconds, every
    ``every`` seconds: uploads, results, anything Gradio or a library left there. One failure
    (a folder, a permission) is counted and skipped, never the end of the sweeping.

    Gradio's own ``delete_cache`` still runs; this is the guarantee under it. Started and stopped
    with the server through ``launch(app_kwargs={"lifespan": sweeper.lifespan})``.
    """

    def __init__(self, root: Path, blocks: Optional[gr.Blocks] = None, every: Optional[float] = None,
                 age: Optional[float] = None):
        self.root, self.blocks, self.every, self.age = Path(root), blocks, every, age

    def sweep(self, age: Optional[float] = None) -> int:
        """One pass; returns how many entries it removed. Entries the app keeps (static examples) live elsewhere."""
        age = self.age if age is None else age
        if age is None or not self.root.is_dir():
            return 0
        removed, failed = 0, 0
        for folder, dirs, files in os.walk(self.root, topdown=False):
            for name in files + dirs:
                path = os.path.join(folder, name)
                try:
                    st = os.lstat(path)
                    if time.time() - st.st_ctime <= age:
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        if not os.listdir(path):
                            os.rmdir(path)
                            removed += 1
                    else:
                        os.unlink(path)
                        removed += 1
                except FileNotFoundError:
                    continue
                except OSError:
                    failed += 1
        self._forget_deleted()
        if removed or failed:
            log.info("cache sweep: %d removed, %d could not be removed", removed, failed)
        return removed

    def _forget_deleted(self) -> None:
        """Drop deleted paths from Gradio's tracking sets, so they stay small when Gradio's own task is not the one deleting."""
        for s in getattr(self.blocks, "temp_file_sets", []):
            with suppress(RuntimeError):  # a set that changed size while read: next pass
                s.difference_update([p for p in list(s) if not os.path.lexists(p)])

    async def _loop(self) -> None:
        import anyio

        while True:
            await asyncio.sleep(self.every)
            try:
                await anyio.to_thread.run_sync(self.sweep)
            except Exception as e:  # noqa: BLE001  (never the end of the sweeping; the path is not logged)
                log.warning("cache sweep failed (%s); trying again in %s s", type(e).__name__, self.every)

    @asynccontextmanager
    async def lifespan(self, app):
        task = asyncio.create_task(self._loop()) if self.every and self.age else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task


def write_to_cache(data: bytes, cache_dir: str, name: str) -> str:
    """Write an output file into the app's temp root, where Gradio serves it from and the sweeper deletes
    it on schedule. Its folder is random for every answer: a name computed from the content would let
    anyone holding a scan ask the file route whether it was analysed here."""
    folder = Path(cache_dir) / secrets.token_hex(16)
    folder.mkdir(parents=True)
    path = folder / name
    path.write_bytes(data)
    return str(path)


def png(rgb_or_grey: np.ndarray) -> bytes:
    """PNG bytes of an RGB or grey uint8 array, with OpenCV's fast setting (quicker than Gradio's PIL path)."""
    a = rgb_or_grey[..., ::-1] if rgb_or_grey.ndim == 3 else rgb_or_grey
    return cv2.imencode(".png", np.ascontiguousarray(a), [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes()


# ---------------------------------------------------------------- examples

@dataclass
class Example:
    """An example slice in examples/, with its ground-truth mask when ``<name>_mask.<ext>`` is beside it."""

    image: Path
    mask: Optional[Path]
    label: str
    caption: str = ""  # short enough for a thumbnail


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.stem)]


def find_examples(folder: Path) -> List[Example]:
    """The example slices in ``folder`` (none when it is missing or empty), in case and slice order."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    images = [p for p in folder.iterdir() if p.suffix.lower() in SLICE_EXTS and not p.stem.endswith("_mask")]
    for p in sorted(images, key=_natural_key):
        mask = next((m for m in (p.with_name(p.stem + "_mask" + s) for s in SLICE_EXTS) if m.exists()), None)
        m = re.match(r"^(?:TCGA_)?(?P<case>.+?)(?:_\d{8})?_(?P<num>\d+)$", p.stem)
        label = f"{m['case']} · slice {m['num']}" if m else p.stem
        caption = f"{m['case']} · {m['num']}" if m else p.stem
        if mask is not None:
            label += " · tumour" if load_mask(mask).any() else " · no tumour"
        found.append(Example(p, mask, label, caption))
    return found


def find_example_cases(folder: Path) -> List[Path]:
    """The example case zips in ``folder``."""
    folder = Path(folder)
    return sorted(folder.glob("*.zip"), key=_natural_key) if folder.is_dir() else []


def case_label(path: Path) -> str:
    m = re.match(r"^(?:TCGA_)?(?P<case>.+?)(?:_\d{8})?(?:_slices_(?P<a>\d+)-(?P<b>\d+))?$", Path(path).stem)
    if not m:
        return Path(path).stem
    return m["case"] + (f" · slices {m['a']}-{m['b']}" if m["a"] else "")


def truth_by_content(examples: Sequence[Example]) -> Dict[str, np.ndarray]:
    """sha256 of each example file -> its ground-truth mask, so a request for an example (however it
    arrives: a click, an upload, the API) gets the truth outline and Dice, and no other file does."""
    return {hashlib.sha256(ex.image.read_bytes()).hexdigest(): load_mask(ex.mask) for ex in examples
            if ex.mask is not None}


def models_text(models: Dict[str, dict]) -> str:
    return "\n".join(f"{k}: {m['source']}" + (f"@{m['revision']}" if m["revision"] else "")
                     + f" ({m['encoder']}, weights sha256 {m['weights_sha256']})" for k, m in models.items())


# ---------------------------------------------------------------- one slice

@dataclass
class SliceOutputs:
    """One answered /predict: what each output shows, the files already written to the temp root."""

    detection: dict
    flair_path: str
    overlay_path: str
    mask_path: str
    summary: str
    result: dict
    shown: dict  # for redrawing the overlay at another opacity without running the models again


def analyze_slice(predictor, data: bytes, threshold: Optional[float], truth: Dict[str, np.ndarray], models: dict,
                  cache_dir: str, opacity: float = viz.DEFAULT_ALPHA, channels: Optional[str] = None) -> SliceOutputs:
    """Decode one uploaded file, predict, and write what the page shows. Raises InvalidImageError for a
    bad file, ValueError for a bad threshold (both name the problem)."""
    image = decode_image(data)
    a = case_analysis.analyze_slice(predictor, image, threshold, models, channels=channels)
    pred, result, summary = a.prediction, a.result, a.summary
    gt = truth.get(hashlib.sha256(data).hexdigest())
    if gt is not None and gt.shape != pred.mask.shape:
        gt = None
    result["dice"] = None if gt is None else round(dice_score(pred.mask, gt), 4)
    if gt is not None:
        summary += f"\nDice with the example's ground truth: {result['dice']:.3f}"
    flair = viz.fit(viz.to_display(viz.flair_of(image.array)), OVERLAY_MAX_SIDE)
    small = lambda m: None if m is None else cv2.resize(m, flair.shape[::-1], interpolation=cv2.INTER_NEAREST)  # noqa: E731
    shown = {"flair": flair, "mask": small(pred.mask), "truth": small(gt), "check": case_analysis.check_text(pred.input_check, pred.review)}
    return SliceOutputs(  # a refused slice: no verdict, no bars
        {"label": pred.label, "confidences": [] if pred.detected is None else [{"label": "tumour", "confidence": pred.probability}]},
        write_to_cache(png(flair), cache_dir, "flair.png"),
        redraw_overlay(shown, opacity, cache_dir), write_to_cache(png(pred.mask * np.uint8(255)), cache_dir, "mask.png"),
        summary, result, shown)


def redraw_overlay(shown: dict, opacity: float, cache_dir: str) -> str:
    """The overlay PNG at ``opacity``, from what :func:`analyze_slice` kept (display size, no model run)."""
    rgb = viz.overlay(shown["flair"], shown["mask"], shown["truth"], alpha=float(np.nan_to_num(opacity, nan=0.35)))
    return write_to_cache(png(rgb), cache_dir, "overlay.png")


def preview(data: Optional[bytes], cache_dir: str) -> Optional[str]:
    """The uploaded slice's three channels side by side (:func:`brainseg.viz.channel_strip`), or None when
    it cannot be decoded: the analysis then says why, once."""
    if not data:
        return None
    try:
        a = decode_image(data).array
    except ValueError:
        return None
    return write_to_cache(png(viz.channel_strip(a, PREVIEW_MAX_SIDE // 2)), cache_dir, "preview.png")


# ---------------------------------------------------------------- a case

_DECIMAL = re.compile(r"[+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)


def parse_spacing(text: Optional[str]):
    """'0.94, 0.94, 3' -> (0.94, 0.94, 3.0); blank -> None; anything else a ValueError saying what to type."""
    if text is None or not str(text).strip():
        return None
    parts = [t for t in re.split(r"[,\sx×]+", str(text).strip()) if t]
    # plain ASCII decimals only: float() would also take "1_0" (10), other digits and "nan"
    values = tuple(float(t) for t in parts) if all(_DECIMAL.fullmatch(t) for t in parts) else ()
    if len(values) != 3 or not all(math.isfinite(v) and 0 < v <= 100 for v in values):
        raise ValueError(f"Voxel spacing {text!r}: give three sizes in mm between 0 and 100, row, column and slice, "
                         f"e.g. '0.94, 0.94, 3' (or leave it blank)")
    return values


@dataclass
class CaseOutputs:
    text: str
    plot: str
    montage: str
    masks: str
    downloads: List[str]
    json: dict
    viewer: dict  # slice numbers, frame PNGs and the slice to open at, for the slice viewer


def analyze_case(predictor, files: Sequence[str], threshold: Optional[float], spacing_text: Optional[str],
                 out_dir: Path, series: Optional[str] = None) -> CaseOutputs:
    """Read, analyze and draw a case; every file goes into ``out_dir`` (inside the temp root). ValueError
    names what is wrong with the input."""
    spacing = parse_spacing(spacing_text)
    case = load_case(list(files) if len(files) != 1 else files[0], series=series)
    case.set_spacing(spacing)
    result = case_analysis.analyze_case(predictor, case, threshold)
    paths = write_case_outputs(case, result, out_dir, figures=True)  # no summary JSON: it goes back in the response
    base = paths["masks"].name.rsplit("_masks", 1)[0]
    frames = []
    for i, n in enumerate(result.slice_numbers):
        path = out_dir / f"{base}_slice_{n}.png"
        path.write_bytes(png(viz.case_frame(case, result, i, max_side=OVERLAY_MAX_SIDE)))
        frames.append(str(path))
    summary = summarize(result)
    numbers = [int(n) for n in result.slice_numbers]
    start = result.largest_area_slice if result.largest_area_slice is not None else numbers[len(numbers) // 2]
    return CaseOutputs(case_summary_text(summary), str(paths["probability"]), str(paths["overlays"]), str(paths["masks"]),
                       downloads(paths), summary, {"numbers": numbers, "frames": frames, "start": int(start)})


def viewer_frame(viewer: Optional[dict], number) -> Optional[str]:
    """The frame PNG of slice ``number`` (None before a case, or once its files have been deleted)."""
    if not viewer or number is None:
        return None
    try:
        path = viewer["frames"][viewer["numbers"].index(int(number))]
    except (ValueError, TypeError):
        return None
    if not os.path.exists(path):
        gr.Warning("This case's results have been deleted (after five minutes): analyse it again.")
        return None
    return path


def first_frame(viewer: Optional[dict]):
    """The slider set to the case's slice numbers at the largest tumour slice, and that slice's frame."""
    if not viewer:
        return gr.update(), None
    lo, hi = viewer["numbers"][0], viewer["numbers"][-1]
    return (gr.update(minimum=lo, maximum=max(hi, lo + 1), value=viewer["start"], interactive=hi > lo),
            viewer_frame(viewer, viewer["start"]))
