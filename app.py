"""Brain MRI tumour detection and segmentation on one slice: the Gradio app and its API.

    python app.py [--host 127.0.0.1] [--port 7860] [--segmenter SRC] [--classifier SRC]

SRC is a model folder or a Hub repo id with an optional ``@revision`` (default: the env vars
BRAINSEG_SEGMENTER / BRAINSEG_CLASSIFIER, else models/segmenter and models/classifier). The
models load once, at start. :func:`build_demo` builds the whole UI; every event has an
``api_name`` and ``/predict`` is the API (see the README for the gradio_client and curl calls).

Uploads are decoded by :mod:`brainseg.images`, never by Gradio (whose image preprocessing
would cut 16-bit and float TIFFs to 8 bits); a bad file becomes a ``gr.Error`` saying what is
wrong and the server goes on serving. Logs hold shapes and timings, never file names or pixels.
"""
import os

# Before gradio and huggingface_hub are imported: no usage analytics, no Hub telemetry.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import argparse  # noqa: E402
import hashlib  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Dict, List, Optional, Sequence  # noqa: E402

import cv2  # noqa: E402
import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from brainseg.cases import predict_case_files  # noqa: E402
from brainseg.config import FLAIR_INDEX  # noqa: E402
from brainseg.data import read_mask  # noqa: E402
from brainseg.images import InvalidImageError, decode_image  # noqa: E402
from brainseg.inference import Prediction, Predictor  # noqa: E402
from brainseg.viz import overlay  # noqa: E402

ROOT = Path(__file__).resolve().parent
EXAMPLES_DIR = ROOT / "examples"
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")

# Suited to a shared 2-vCPU host: two slices at a time, a short queue that refuses the 17th
# waiting request instead of hanging, uploads capped at 20 MB and removed within ~6 minutes.
CONCURRENCY_LIMIT = 2
MAX_QUEUE = 16
MAX_FILE_SIZE = "20mb"
DELETE_CACHE = (60, 300)  # every 60 s, delete uploads and results older than 300 s
OVERLAY_MAX_SIDE = 1024  # the overlay is for the eye; the mask keeps the input's full size

NOTE = ("**Research demo, not a medical device.** It is not validated for diagnosis or any clinical use. "
        "Uploads are used only to answer the request: they are not stored or logged, and the server deletes "
        "them, with the results, within about five minutes.")

log = logging.getLogger("brainseg.app")


# ---------------------------------------------------------------- examples

@dataclass
class Example:
    """An example slice in examples/, with its ground-truth mask when ``<name>_mask.<ext>`` is beside it."""

    image: Path
    mask: Optional[Path]
    label: str


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.stem)]


def find_examples(folder: Path = EXAMPLES_DIR) -> List[Example]:
    """The example slices in ``folder`` (none when it is missing or empty), in case and slice order."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    images = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.stem.endswith("_mask")]
    for p in sorted(images, key=_natural_key):
        mask = next((m for m in (p.with_name(p.stem + "_mask" + s) for s in IMAGE_SUFFIXES) if m.exists()), None)
        m = re.match(r"^(?:TCGA_)?(?P<case>.+?)(?:_\d{8})?_(?P<num>\d+)$", p.stem)
        label = f"{m['case']} · slice {m['num']}" if m else p.stem
        if mask is not None:
            label += " · tumour" if read_mask(mask).any() else " · no tumour"
        found.append(Example(p, mask, label))
    return found


def truth_by_content(examples: Sequence[Example]) -> Dict[str, np.ndarray]:
    """sha256 of each example file -> its ground-truth mask, so a request for an example (however it
    arrives: a click, an upload, the API) gets the truth outline, and no other file does."""
    table = {}
    for ex in examples:
        if ex.mask is not None:
            table[hashlib.sha256(ex.image.read_bytes()).hexdigest()] = read_mask(ex.mask)
    return table


# ---------------------------------------------------------------- analysis

def describe_models(predictor: Predictor) -> Dict[str, dict]:
    """Which models answer: source (folder or Hub repo), revision, and a fingerprint of the loaded weights."""
    out = {}
    for kind in ("segmenter", "classifier"):
        model = getattr(predictor, kind, None)
        if model is None:
            continue
        src = predictor.sources.get(kind)
        source, revision = "unknown", None
        if src is not None:
            source, revision = str(src.location), src.revision
            if src.local:
                path = Path(source).resolve()
                source = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name
        sha = hashlib.sha256()
        for name, t in model.state_dict().items():
            sha.update(name.encode())
            sha.update(t.detach().cpu().contiguous().numpy().tobytes())
        out[kind] = {"source": source, "revision": revision, "weights_sha256": sha.hexdigest()[:12],
                     "encoder": getattr(model.config, "encoder", None),
                     "precision": getattr(predictor, "precision", "fp32") if kind == "segmenter" else "fp32"}
    return out


def models_text(models: Dict[str, dict]) -> str:
    return "\n".join(f"{k}: {m['source']}" + (f"@{m['revision']}" if m["revision"] else "")
                     + f" ({m['encoder']}, weights sha256 {m['weights_sha256']})" for k, m in models.items())


@dataclass
class Analysis:
    """One answered request: the prediction and everything the outputs are made of."""

    prediction: Prediction
    overlay: np.ndarray
    mask_png: bytes
    result: dict
    summary: str


def brain_area(image: np.ndarray) -> int:
    """Pixels above the slice's minimum in any channel: the brain, as the normalisation defines it."""
    return int((image.max(axis=-1) > image.min()).sum())


def display_overlay(flair: np.ndarray, pred: np.ndarray, truth: Optional[np.ndarray]) -> np.ndarray:
    """viz.overlay, first shrunk to at most OVERLAY_MAX_SIDE so a large slice stays quick to send."""
    h, w = flair.shape
    s = OVERLAY_MAX_SIDE / max(h, w)
    if s < 1:
        size = (max(1, round(w * s)), max(1, round(h * s)))
        flair = cv2.resize(flair.astype(np.float32), size, interpolation=cv2.INTER_AREA)
        pred = cv2.resize(pred, size, interpolation=cv2.INTER_NEAREST)
        truth = None if truth is None else cv2.resize(truth, size, interpolation=cv2.INTER_NEAREST)
    return overlay(flair, pred, truth)


def analyse(predictor: Predictor, data: bytes, threshold: Optional[float] = None,
            truth: Optional[Dict[str, np.ndarray]] = None, models: Optional[Dict[str, dict]] = None) -> Analysis:
    """Decode one uploaded file, predict, and build the outputs. Raises InvalidImageError for a bad file.

    Args:
        predictor: the loaded models.
        data: the file's bytes (TIFF, PNG or JPEG).
        threshold: pixel probability threshold; None uses the segmenter's.
        truth: ground-truth masks by sha256 of the file (the examples), for the green outline.
        models: :func:`describe_models` of the predictor, echoed in the result.
    """
    image = decode_image(data)
    thr = predictor.seg_cfg.threshold if threshold is None else float(threshold)
    pred = predictor.predict(image.array, thr)
    gt = (truth or {}).get(hashlib.sha256(data).hexdigest())
    if gt is not None and gt.shape != pred.mask.shape:
        gt = None
    brain = brain_area(image.array)
    area = pred.tumor_area_px
    pct = 100.0 * area / brain if brain else 0.0
    clf = getattr(predictor, "classifier", None)
    result = {
        "tumor_probability": round(pred.tumor_probability, 4),
        "tumor_detected": pred.tumor_detected,
        "tumor_area_px": area,
        "tumor_area_pct_brain": round(pct, 2),
        "brain_area_px": brain,
        "input_shape": image.shape,
        "input_dtype": str(image.array.dtype),
        "channels_replicated": image.channels_replicated,
        "threshold": thr,
        "detection_threshold": predictor.detection_threshold if clf is not None else thr,
        "models": models if models is not None else describe_models(predictor),
    }
    if image.multipage:
        result["tiff_multipage"] = True
    verdict, sign = ("Tumour detected", "≥") if pred.tumor_detected else ("No tumour detected", "<")
    det_thr = result["detection_threshold"]
    notes = [f"{verdict}: probability {pred.tumor_probability:.2f} {sign} threshold {det_thr:.2f}",
             f"Area {area:,} px, {pct:.1f} % of the brain ({brain:,} px); pixel threshold {thr:.2f}"]
    if image.channels_replicated:
        notes.append("FLAIR alone: its channel was replicated to the three input channels.")
    if image.multipage:
        notes.append("Multi-page TIFF: only its first page was analysed.")
    png = cv2.imencode(".png", pred.mask * 255)[1]
    return Analysis(pred, display_overlay(image.array[..., FLAIR_INDEX], pred.mask, gt), png.tobytes(), result,
                    "\n".join(notes))


def write_to_cache(data: bytes, cache_dir: str, name: str) -> str:
    """Write an output file into Gradio's cache (content-addressed, atomic), so Gradio serves it from
    there and its ``delete_cache`` removes it on schedule; nothing is left elsewhere."""
    folder = Path(cache_dir) / hashlib.sha256(data).hexdigest()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if path.exists():
        os.utime(path)  # restart its clock: delete_cache ages files from their ctime
    else:
        tmp = folder / f".{name}.{uuid.uuid4().hex}"
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return str(path)


# ---------------------------------------------------------------- UI

class SliceFile(gr.File):
    """gr.File that hands over the file's bytes, and says so plainly when the upload has expired."""

    is_template = True  # rendered and documented as the gr.File it is

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except FileNotFoundError:  # deleted by delete_cache; Gradio's own error would log its path
            raise gr.Error("This upload is no longer on the server (uploads are deleted after five minutes). "
                           "Upload the file again.", print_exception=False) from None


def build_demo(predictor: Predictor, examples_dir: Path = EXAMPLES_DIR, concurrency_limit: int = CONCURRENCY_LIMIT,
               max_queue: int = MAX_QUEUE) -> gr.Blocks:
    """The whole app: inputs and examples on the left, outputs on the right, ``/predict`` as the API.

    Args:
        predictor: loaded models (see :meth:`Predictor.from_sources`).
        examples_dir: folder of example slices (``<name>_mask.png`` beside one adds its truth outline);
            the examples block is left out when it holds none.
        concurrency_limit, max_queue: how many requests run at once, and how many may wait.
    """
    examples = find_examples(examples_dir)
    truth = truth_by_content(examples)
    models = describe_models(predictor)
    about_models = models_text(models)
    log.info("models: %s", about_models.replace("\n", "; "))
    default_threshold = float(predictor.seg_cfg.threshold)

    with gr.Blocks(title="Brain MRI tumour segmentation", analytics_enabled=False,
                   delete_cache=DELETE_CACHE) as demo:
        gr.Markdown("# Brain MRI: tumour detection and segmentation\n"
                    "One axial slice in, the tumour's probability and outline out. Slices are lower-grade "
                    "glioma MRI as in the LGG kaggle_3m set: 3 channels (pre-contrast, FLAIR, post-contrast) "
                    "or FLAIR alone, TIFF, PNG or JPEG, 8-bit, 16-bit or float, any size.")
        gr.Markdown(NOTE, elem_classes=["notice"])
        with gr.Tab("One slice"):
            with gr.Row(equal_height=False):
                with gr.Column(scale=1):
                    slice_file = SliceFile(label="MRI slice (TIFF, PNG or JPEG)", type="binary",
                                          file_types=[".tif", ".tiff", ".png", ".jpg", ".jpeg"], height=140,
                                          elem_id="slice-file")
                    threshold = gr.Slider(0.01, 0.99, value=default_threshold, step=0.01, label="Pixel threshold",
                                          info="Probability above which a pixel counts as tumour")
                    analyse_btn = gr.Button("Analyse", variant="primary", elem_id="analyse")
                    if examples:
                        example_block = gr.Examples([[str(e.image)] for e in examples], inputs=[slice_file],
                                                    label="Examples (click one)",
                                                    example_labels=[e.label for e in examples], examples_per_page=12,
                                                    api_name="load_example", elem_id="examples")
                with gr.Column(scale=1):
                    # No heading: it would name the likelier class, which is not the decision when the
                    # classifier's threshold is not 0.5; the decision leads the summary below instead.
                    confidence = gr.Label(label="Detection confidence", num_top_classes=2, show_heading=False,
                                          elem_id="confidence")
                    overlay_img = gr.Image(label="Overlay on FLAIR", type="numpy", format="png", interactive=False,
                                           height=400, buttons=["download", "fullscreen"], elem_id="overlay")
                    gr.Markdown("Red: predicted tumour. Green outline: the ground truth, for examples with a "
                                "known mask.")
                    with gr.Row():
                        area = gr.Textbox(label="Result", lines=4, interactive=False, elem_id="area")
                        mask_file = gr.File(label="Mask (PNG, 0/255, input size)", interactive=False, height=100,
                                            elem_id="mask-file")
                    model_info = gr.Textbox(label="Models", value=about_models, lines=2, interactive=False)
                    with gr.Accordion("Result as JSON (as the API returns it)", open=False):
                        result_json = gr.JSON(label="Result")

            outputs = [confidence, overlay_img, mask_file, area, model_info, result_json]

            def predict(image: Optional[bytes], threshold: float = default_threshold):
                """Tumour detection and segmentation for one MRI slice (TIFF, PNG or JPEG file).

                Returns the detection confidence, the overlay, the mask PNG (0/255, input size), the tumour
                area, the models that answered and the result as JSON.
                """
                if image is None:
                    raise gr.Error("No file: upload an MRI slice (TIFF, PNG or JPEG) first.", print_exception=False)
                start = time.perf_counter()
                try:
                    a = analyse(predictor, image, threshold, truth, models)
                except InvalidImageError as e:
                    log.info("rejected upload (%s, %d bytes)", e.reason, len(image))
                    raise gr.Error(str(e), print_exception=False) from None
                cache = mask_file.GRADIO_CACHE
                mask_path = write_to_cache(a.mask_png, cache, "mask.png")
                # Encoded here with OpenCV's fast PNG setting: quicker than Gradio's own numpy -> PIL -> PNG.
                overlay_png = cv2.imencode(".png", a.overlay[..., ::-1])[1].tobytes()
                overlay_path = write_to_cache(overlay_png, cache, "overlay.png")
                p = a.prediction.tumor_probability
                r = a.result
                log.info("predicted %s %s in %.0f ms", "x".join(map(str, r["input_shape"])), r["input_dtype"],
                         1000 * (time.perf_counter() - start))
                return ({"tumour": p, "no tumour": 1.0 - p}, overlay_path, mask_path, a.summary, about_models, r)

            gr.on([analyse_btn.click, slice_file.upload], predict, inputs=[slice_file, threshold], outputs=outputs,
                  api_name="predict")
            if examples:
                example_block.load_input_event.then(predict, inputs=[slice_file, threshold], outputs=outputs,
                                                    api_name="predict_example", api_visibility="undocumented")
        with gr.Tab("Whole case"):
            gr.Markdown("A patient's stack in, a 3-D report out: a zip of a kaggle_3m case folder, several slice "
                        "files at once (ordered by the `_<n>` in their names), a multi-page TIFF or a NIfTI volume.")
            with gr.Row(equal_height=False):
                with gr.Column(scale=1):
                    case_files = gr.File(label="Case (zip, slice files, multi-page TIFF or NIfTI)",
                                         file_count="multiple", type="filepath", elem_id="case-files",
                                         file_types=[".zip", ".tif", ".tiff", ".png", ".nii", ".gz"])
                    case_threshold = gr.Slider(0.01, 0.99, value=default_threshold, step=0.01,
                                               label="Pixel threshold")
                    case_btn = gr.Button("Analyse case", variant="primary", elem_id="analyse-case")
                with gr.Column(scale=2):
                    case_plot = gr.Image(label="Tumour probability and area along the stack", type="filepath",
                                         interactive=False, elem_id="case-plot")
                    case_montage = gr.Image(label="Overlays", type="filepath", interactive=False,
                                            elem_id="case-montage")
                    case_masks = gr.File(label="Masks (multi-page TIFF, or NIfTI for NIfTI input)", interactive=False)
                    case_summary = gr.JSON(label="Summary")

            def predict_case(files: Optional[List[str]], threshold: float = default_threshold):
                """Whole-case analysis: per-slice probability and area, tumour volume, largest slice, masks."""
                if not files:
                    raise gr.Error("No files: upload a zipped case folder, slice files, a multi-page TIFF or "
                                   "a NIfTI volume.", print_exception=False)
                try:
                    out_dir = Path(case_masks.GRADIO_CACHE) / uuid.uuid4().hex
                    summary, plot, montage, masks = predict_case_files(predictor, files, threshold, out_dir)
                except ValueError as e:
                    log.info("rejected case upload (%s)", type(e).__name__)
                    raise gr.Error(str(e), print_exception=False) from None
                log.info("predicted a case of %d slices", summary["slices"])
                return summary, plot, montage, masks

            case_btn.click(predict_case, inputs=[case_files, case_threshold],
                           outputs=[case_summary, case_plot, case_montage, case_masks],
                           api_name="predict_case", concurrency_limit=1)
        gr.Markdown("Use it from code: `Client(url).predict(handle_file(path), api_name=\"/predict\")` with "
                    "`gradio_client`, or the *Use via API* link below.")

    demo.queue(default_concurrency_limit=concurrency_limit, max_size=max_queue, api_open=False)
    return demo


THEME = gr.themes.Soft(primary_hue="blue", font=["ui-sans-serif", "system-ui", "sans-serif"],
                       font_mono=["ui-monospace", "monospace"])  # system fonts: the page fetches nothing outside
CSS = ".notice { border-left: 4px solid #dc2626; padding: 4px 12px; background: #fef2f2; }"


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: Optional[int] = 7860, **kwargs):
    """Launch with the settings for a shared host; kwargs go on to ``Blocks.launch``."""
    settings = dict(server_name=host, server_port=port, max_file_size=MAX_FILE_SIZE, show_error=False,
                    allowed_paths=[], share=False, enable_monitoring=False, run_history=False, ssr_mode=False,
                    mcp_server=False, pwa=False, footer_links=["api", "settings"], theme=THEME, css=CSS)
    settings.update(kwargs)
    return demo.launch(**settings)


def warm_up(predictor: Predictor) -> None:
    """One forward pass on a blank slice, so the first user does not pay for lazy initialisation."""
    predictor.predict(np.zeros((256, 256, 3), np.uint8))


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # GRADIO_SERVER_NAME/PORT are how Hugging Face Spaces (and Docker set-ups) say where to listen.
    ap.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                    help="address to listen on (default 127.0.0.1; 0.0.0.0 serves the network)")
    ap.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    ap.add_argument("--segmenter", default=None, help="folder or Hub repo id[@revision]")
    ap.add_argument("--classifier", default=None, help="folder or Hub repo id[@revision]")
    ap.add_argument("--examples", type=Path, default=EXAMPLES_DIR)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        predictor = Predictor.from_sources(args.segmenter, args.classifier)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"Cannot load the models: {e}\nTrain them (make train) or pass --segmenter/--classifier.")
    warm_up(predictor)
    launch(build_demo(predictor, args.examples), args.host, args.port)


if __name__ == "__main__":
    main()
