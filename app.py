"""Brain MRI tumour detection and segmentation: the Gradio app and its API.

    python app.py [--host 127.0.0.1] [--port 7860] [--segmenter SRC] [--classifier SRC]

SRC is a model folder or a Hub repo id with an optional ``@revision`` (default: the env vars
BRAINSEG_SEGMENTER / BRAINSEG_CLASSIFIER, else models/segmenter and models/classifier). The
models load once, at start. :func:`build_demo` builds the UI; ``/predict`` (one slice) and
``/predict_case`` (a whole case) are the API, every other event is private.

The app only shows: the Predictor decides, :mod:`brainseg.images` decodes (never Gradio, whose
image preprocessing would cut 16-bit and float TIFFs to 8 bits), the case analysis sums up and
:mod:`brainseg.viz` draws. A bad file becomes a ``gr.Error`` saying what is wrong and the server
goes on serving. Every file the app writes lands in its own temp root (a folder per process,
removed at shutdown), which :class:`~brainseg.webapp.CacheSweeper` empties on schedule; logs hold
shapes and timings, never file names or pixels. :mod:`brainseg.serving` holds what keeps those
promises under hostile use (one error edge, random names, private events closed by name).
"""
import os
import tempfile
from pathlib import Path

# Before gradio and huggingface_hub are imported: no usage analytics, no Hub telemetry.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
from brainseg import serving  # noqa: E402

# A temp root of the app's own (inside any GRADIO_TEMP_DIR given), one folder per process in it: the
# sweeper empties it on schedule, shutdown removes it, the next start removes what a killed one left.
TEMP_BASE = Path(os.environ.get("GRADIO_TEMP_DIR") or tempfile.gettempdir()) / "brainseg_app"
os.environ["GRADIO_TEMP_DIR"] = str(serving.process_root(TEMP_BASE))

import argparse  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from typing import List, Optional, Sequence  # noqa: E402

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402

from brainseg import webapp as w  # noqa: E402
from brainseg.case_analysis import case_check_markdown, check_markdown  # noqa: E402
from brainseg.channels import CHANNEL_CHOICES  # noqa: E402
from brainseg.cli import add_model_args, add_runtime_args, predictor_from_args  # noqa: E402
from brainseg.file_types import CASE_UPLOAD_TYPES, SLICE_EXTS  # noqa: E402
from brainseg.images import InvalidImageError  # noqa: E402
from brainseg.inference import Predictor  # noqa: E402

ROOT = Path(__file__).resolve().parent
EXAMPLES_DIR = ROOT / "examples"

# Suited to a shared 2-vCPU host: two slices at a time, a short queue that refuses the 17th
# waiting request instead of hanging, uploads capped at 20 MB and removed within ~6 minutes.
CONCURRENCY_LIMIT = 2
MAX_QUEUE = 16
MAX_FILE_SIZE = "20mb"
DELETE_CACHE = (60, 300)  # every 60 s, delete uploads and results older than 300 s
NOTE = ("**Research demo, not a medical device.** It is not validated for diagnosis or any clinical use. "
        "Uploads are used only to answer the request: they are not stored or logged, and the server deletes "
        "them, with the results, within about five minutes.")
IMAGE_BUTTONS = ["download", "fullscreen"]  # no share button

log = logging.getLogger("brainseg.app")
find_examples, find_example_cases = w.find_examples, w.find_example_cases  # kept importable from app


def build_demo(predictor: Predictor, examples_dir: Path = EXAMPLES_DIR, concurrency_limit: int = CONCURRENCY_LIMIT,
               max_queue: int = MAX_QUEUE, delete_cache=DELETE_CACHE) -> gr.Blocks:
    """The whole app: a one-slice tab and a whole-case tab; ``/predict`` and ``/predict_case`` are the API.

    Args:
        predictor: loaded models (see :meth:`Predictor.from_sources`).
        examples_dir: example slices (``<name>_mask.png`` beside one adds its truth outline and Dice)
            and example case zips; a block is left out when there is nothing for it.
        concurrency_limit, max_queue: how many requests run at once, and how many may wait.
        delete_cache: (every, age) in seconds: files the app wrote or received are deleted once older
            than ``age``, checked every ``every`` seconds.
    """
    examples = find_examples(examples_dir)
    example_cases = find_example_cases(examples_dir)
    gr.set_static_paths([e.image for e in examples] + example_cases)  # served in place, never deleted
    truth = w.truth_by_content(examples)
    models = predictor.describe()
    about_models = w.models_text(models)
    log.info("models: %s", about_models.replace("\n", "; "))
    default_threshold = float(predictor.pixel_threshold)

    with serving.SafeBlocks(title="Brain MRI tumour segmentation", analytics_enabled=False,
                            delete_cache=delete_cache) as demo:
        gr.Markdown("# Brain MRI: tumour detection and segmentation\n"
                    "Lower-grade glioma MRI as in the LGG kaggle_3m set: one axial slice, or a patient's whole "
                    "stack. Slices have 3 channels (pre-contrast, FLAIR, post-contrast) or FLAIR alone; TIFF, PNG "
                    "or JPEG, 8-bit, 16-bit or float, any size from 32x32.")
        gr.Markdown(NOTE, elem_classes=["notice"])
        with gr.Tab("One slice"):
            with gr.Row(equal_height=False):
                with gr.Column(scale=1, min_width=300):
                    slice_file = w.SliceFile(label="MRI slice", type="binary", height=110, elem_id="slice-file",
                                             file_types=list(SLICE_EXTS))
                    preview = gr.Image(label="Uploaded slice", type="filepath", interactive=False, height=220,
                                       buttons=IMAGE_BUTTONS, elem_id="preview")
                    threshold = w.FiniteSlider(0.01, 0.99, value=default_threshold, step=0.01,
                                               label="Pixel threshold",
                                               info="Probability above which a pixel of a detected slice is tumour")
                    channels = gr.Dropdown(CHANNEL_CHOICES, value="pre,flair,post", label="Channel order",
                                           info="Compare the three channels above: FLAIR shows tumour and oedema bright",
                                           elem_id="channels")
                    opacity = gr.Slider(0, 1, value=0.35, step=0.05, label="Overlay opacity", elem_id="opacity")
                    analyze_btn = gr.Button("Analyse", variant="primary", elem_id="analyze")
                    if examples:
                        gallery = gr.Gallery([(str(e.image), e.caption) for e in examples], label="Examples (click one)",
                                             columns=3, height="auto", allow_preview=False, buttons=[],
                                             elem_id="examples")
                with gr.Column(scale=2):
                    input_check = gr.Markdown("", elem_id="input-check")
                    detection = w.VerdictLabel(label="Detection", elem_id="detection")
                    with gr.Row():
                        flair_img = gr.Image(label="FLAIR", type="filepath", interactive=False, height=384,
                                             buttons=IMAGE_BUTTONS, elem_id="flair")
                        overlay_img = gr.Image(label="Overlay", type="filepath", interactive=False, height=384,
                                               buttons=IMAGE_BUTTONS, elem_id="overlay")
                    gr.Markdown("Red: predicted tumour. Green outline: the ground truth, for examples with a "
                                "known mask.")
                    with gr.Row():
                        mask_img = gr.Image(label="Mask", type="filepath", interactive=False, height=200,
                                            buttons=IMAGE_BUTTONS, elem_id="mask")
                        summary = gr.Textbox(label="Summary", lines=5, interactive=False, elem_id="summary")
                    with gr.Accordion("Result as JSON (as the API returns it)", open=False):
                        result_json = gr.JSON(label="Result", open=False)
                    gr.Textbox(label="Models", value=about_models, lines=2, interactive=False)
            shown = gr.State(time_to_live=delete_cache[1] if delete_cache else None)

            outputs = [detection, flair_img, overlay_img, mask_img, summary, result_json]
            for comp, text in zip([slice_file, threshold, channels, *outputs], w.SLICE_API):
                w.describe_io(comp, text)

            def predict(image: Optional[bytes], threshold: float = default_threshold, channels: str = "pre,flair,post"):
                """Tumour detection and segmentation of one MRI slice.

                Returns the detection, the FLAIR channel, the overlay, the mask (PNG, 0/255, input size),
                a summary and the result as JSON.
                """
                if image is None:
                    raise gr.Error("No file: upload an MRI slice (TIFF, PNG or JPEG) first.", print_exception=False)
                start = time.perf_counter()
                try:
                    out = w.analyze_slice(predictor, image, threshold, truth, models, slice_file.GRADIO_CACHE,
                                          channels=channels)
                except (InvalidImageError, ValueError) as e:
                    log.info("rejected upload (%s, %d bytes)", getattr(e, "reason", type(e).__name__), len(image))
                    raise gr.Error(str(e), print_exception=False) from None
                r = out.result
                log.info("predicted %s %s in %.0f ms", "x".join(map(str, r["input_shape"])), r["input_dtype"],
                         1000 * (time.perf_counter() - start))
                return (out.detection, out.flair_path, out.overlay_path, out.mask_path, out.summary, r, out.shown)

            def show_overlay(state, opacity: float):
                return None if state is None else w.redraw_overlay(state, opacity, slice_file.GRADIO_CACHE)

            clear = [preview, *outputs, shown, input_check]

            def run_chain(event, api_name: str, visibility: str = "public"):
                """Old results cleared, the preview shown, then the analysis: a refused file leaves nothing stale."""
                event.then(lambda b: w.preview(b, slice_file.GRADIO_CACHE), inputs=[slice_file], outputs=[preview],
                           api_name=f"preview_{api_name}", api_visibility="private", show_progress="hidden",
                           concurrency_id="slice").then(
                    predict, inputs=[slice_file, threshold, channels], outputs=[*outputs, shown], api_name=api_name,
                    api_visibility=visibility, concurrency_id="slice").then(
                    check_markdown, inputs=[shown], outputs=[input_check], api_name=f"check_{api_name}",
                    api_visibility="private", show_progress="hidden", concurrency_id="draw").then(
                    show_overlay, inputs=[shown, opacity], outputs=[overlay_img], api_name=f"opacity_{api_name}",
                    api_visibility="private", show_progress="hidden", concurrency_id="draw")

            run_chain(gr.on([analyze_btn.click, slice_file.upload], lambda: [None] * len(clear), outputs=clear,
                            api_name="clear_slice", api_visibility="private", queue=False, show_progress="hidden"),
                      "predict")
            slice_file.clear(lambda: [None] * len(clear), outputs=clear, api_name="cleared_slice",
                             api_visibility="private", queue=False)
            opacity.change(show_overlay, inputs=[shown, opacity], outputs=[overlay_img], api_name="opacity",
                           api_visibility="private", show_progress="hidden", trigger_mode="always_last",
                           concurrency_id="draw")
            if examples:
                def load_example(evt: gr.SelectData):
                    return [str(examples[evt.index].image)] + [None] * len(clear)

                run_chain(gallery.select(load_example, outputs=[slice_file, *clear], api_name="load_example",
                                         api_visibility="private", queue=False), "predict_example", "private")

        with gr.Tab("Whole case"):
            gr.Markdown("A patient's stack in, a 3-D report out: a zip of a kaggle_3m case folder, several slice "
                        "files at once (ordered by the number in their names), a multi-page TIFF, a NIfTI volume, "
                        "or a DICOM series (a zip or the .dcm files). Masks come back as NIfTI, TIFF, DICOM SEG "
                        "(for DICOM) and a per-slice CSV; the viewer draws the two diameters.")
            with gr.Row(equal_height=False):
                with gr.Column(scale=1, min_width=300):
                    case_files = w.CaseFiles(label="Case files", file_count="multiple", type="filepath",
                                             elem_id="case-files", file_types=list(CASE_UPLOAD_TYPES))
                    case_threshold = w.FiniteSlider(0.01, 0.99, value=default_threshold, step=0.01,
                                                    label="Pixel threshold")
                    spacing = gr.Textbox("", label="Voxel spacing (mm)", placeholder="row, column, slice: e.g. 0.94, 0.94, 3",
                                         info="Gives the volume in mL. Blank: the file's own spacing, if any.",
                                         elem_id="spacing")
                    series = gr.Textbox("", label="DICOM series", placeholder="SeriesDescription, e.g. AX FLAIR",
                                        info="Only when a DICOM upload holds several series. Blank: FLAIR + pre + "
                                             "post stacked, or the one FLAIR series.", elem_id="series")
                    case_btn = gr.Button("Analyse case", variant="primary", elem_id="analyze-case")
                    if example_cases:
                        case_examples = gr.Examples([[[str(p)]] for p in example_cases], inputs=[case_files],
                                                    label="Example case (click to run it)",
                                                    example_labels=[w.case_label(p) for p in example_cases],
                                                    api_name="load_example_case", elem_id="case-examples")
                with gr.Column(scale=2):
                    case_check = gr.Markdown("", elem_id="case-input-check")
                    case_summary = gr.Textbox(label="Summary", lines=6, interactive=False, elem_id="case-summary")
                    case_plot = gr.Image(label="Probability and area", show_label=False, type="filepath",
                                         interactive=False, buttons=IMAGE_BUTTONS, elem_id="case-plot")
                    with gr.Group():
                        viewer_slider = gr.Slider(1, 2, value=1, step=1, label="Slice", interactive=True,
                                                  elem_id="viewer-slider")
                        viewer = gr.Image(label="Slice viewer", show_label=False, type="filepath", interactive=False,
                                          height=512, buttons=IMAGE_BUTTONS, elem_id="viewer")
                    case_montage = gr.Image(label="All slices", show_label=False, type="filepath", interactive=False,
                                            buttons=IMAGE_BUTTONS, elem_id="case-montage")
                    case_masks = gr.File(label="Masks", interactive=False, elem_id="case-masks")
                    case_downloads = gr.File(label="Downloads", file_count="multiple",
                                             interactive=False, elem_id="case-downloads")
                    with gr.Accordion("Summary as JSON (as the API returns it)", open=False):
                        case_json = gr.JSON(label="Case result", open=False)
            frames = gr.State(time_to_live=delete_cache[1] if delete_cache else None)
            case_outputs = [case_summary, case_plot, case_montage, case_masks, case_downloads, case_json]
            for comp, text in zip([case_files, case_threshold, spacing, series, *case_outputs], w.CASE_API):
                w.describe_io(comp, text)

            def predict_case(files: Optional[List[str]], threshold: float = default_threshold, spacing_mm: str = "",
                             series: str = "", request: gr.Request = None, progress=gr.Progress()):
                """Whole-case analysis: per-slice probability and area, tumour volume, lesions, diameters and masks.

                Returns a summary, the probability plot, the montage of all slices, the masks (multi-page
                TIFF, or NIfTI for NIfTI input), every download (NIfTI, TIFF, DICOM SEG, CSV) and the JSON.
                """
                if not files:
                    raise gr.Error("No files: upload a zipped case folder, slice files, a multi-page TIFF or "
                                   "a NIfTI volume.", print_exception=False)
                try:
                    watched = serving.abandonable(predictor, serving.client_gone(demo, request), progress)
                    out = w.analyze_case(watched, files, threshold, spacing_mm,
                                         Path(case_masks.GRADIO_CACHE) / uuid.uuid4().hex, series)
                except FileNotFoundError:  # an upload swept while the call waited or read it; no path in the message
                    log.info("case upload expired")
                    raise gr.Error(w.EXPIRED, print_exception=False) from None
                except ValueError as e:
                    log.info("rejected case upload (%s)", type(e).__name__)
                    raise gr.Error(str(e), print_exception=False) from None
                log.info("predicted a case of %d slices", out.json["slices"])
                return out.text, out.plot, out.montage, out.masks, out.downloads, out.json, out.viewer

            case_clear = [*case_outputs, frames, viewer, case_check]

            def run_case_chain(first, api_name: str, visibility: str = "public"):
                """Old results cleared (by ``first``), the analysis, the viewer at its slice, then the page scrolled to it."""
                first.then(predict_case, inputs=[case_files, case_threshold, spacing, series],
                           outputs=[*case_outputs, frames],
                           api_name=api_name, api_visibility=visibility, concurrency_id="case", concurrency_limit=1).then(
                    w.first_frame, inputs=[frames], outputs=[viewer_slider, viewer], api_name=f"viewer_{api_name}",
                    api_visibility="private", concurrency_id="draw").then(
                    case_check_markdown, inputs=[case_json], outputs=[case_check], api_name=f"check_{api_name}",
                    api_visibility="private", show_progress="hidden", concurrency_id="draw").then(
                    None, js="() => document.getElementById('case-summary')?.scrollIntoView({behavior: 'smooth'})",
                    api_name=f"scroll_{api_name}", api_visibility="private")

            clear_case = dict(outputs=case_clear, api_visibility="private", queue=False, show_progress="hidden")
            run_case_chain(case_btn.click(lambda: [None] * len(case_clear), api_name="clear_case", **clear_case),
                           "predict_case")
            if example_cases:  # a click on the example case runs it
                run_case_chain(case_examples.load_input_event.then(lambda: [None] * len(case_clear),
                                                                   api_name="clear_example_case", **clear_case),
                               "predict_example_case", "private")
            viewer_slider.change(w.viewer_frame, inputs=[frames, viewer_slider], outputs=[viewer],
                                 api_name="show_frame", api_visibility="private", show_progress="hidden",
                                 trigger_mode="always_last", concurrency_id="draw")
        gr.Markdown("Use it from code: `Client(url).predict(handle_file(path), api_name=\"/predict\")` with "
                    "`gradio_client`, or the *Use via API* link below.")

    demo.queue(default_concurrency_limit=concurrency_limit, max_size=max_queue, api_open=False)
    demo.sweeper = w.CacheSweeper(Path(os.environ["GRADIO_TEMP_DIR"]), demo, *(delete_cache or (None, None)))
    return demo


THEME = gr.themes.Soft(primary_hue="blue", font=["ui-sans-serif", "system-ui", "sans-serif"],
                       font_mono=["ui-monospace", "monospace"])  # system fonts: the page fetches nothing outside
CSS = (".notice { border-left: 4px solid #dc2626; padding: 4px 12px; background: #fef2f2; }\n"
       # a 256 px slice fills its frame (the browser enlarges it; the files stay at the slice's own size)
       "#flair img, #overlay img, #mask img, #viewer img { width: 100%; height: 100%; object-fit: contain; }")


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: Optional[int] = 7860, **kwargs):
    """Launch with the settings for a shared host (and the app's cache sweeper); kwargs go on to ``Blocks.launch``."""
    from starlette.middleware import Middleware

    serving.random_upload_names()
    guard = Middleware(serving.PrivateCallGuard, public=lambda: serving.public_names(demo))
    settings = dict(server_name=host, server_port=port, max_file_size=MAX_FILE_SIZE, show_error=False,
                    allowed_paths=[], share=False, enable_monitoring=False, run_history=False, ssr_mode=False,
                    mcp_server=False, pwa=False, footer_links=["api", "settings"], theme=THEME, css=CSS,
                    app_kwargs={"lifespan": demo.sweeper.lifespan, "middleware": [guard],
                                "exception_handlers": serving.EXCEPTION_HANDLERS})
    settings.update(kwargs)
    return demo.launch(**settings)


def warm_up(predictor: Predictor) -> None:
    """One forward pass on a blank slice, so the first user does not pay for lazy initialisation."""
    predictor.predict(np.zeros((256, 256, 3), np.uint8))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Serve until the server is closed (Ctrl-C); exit code 0 then, 2 with a message if the models fail to load."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # GRADIO_SERVER_NAME/PORT are how Hugging Face Spaces (and Docker set-ups) say where to listen.
    ap.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                    help="address to listen on (default 127.0.0.1; 0.0.0.0 serves the network)")
    ap.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    add_model_args(ap)
    add_runtime_args(ap)
    ap.add_argument("--examples", type=Path, default=EXAMPLES_DIR)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        predictor = predictor_from_args(args)
    except (FileNotFoundError, ValueError) as e:  # exit status 2, as for any bad argument
        ap.error(f"Cannot load the models: {e}\nTrain them (make train) or pass --segmenter/--classifier.")
    warm_up(predictor)
    own = Path(os.environ["GRADIO_TEMP_DIR"])
    serving.sweep_leftovers(TEMP_BASE, own)
    serving.stop_on_sigterm()
    try:
        launch(build_demo(predictor, args.examples), args.host, args.port)  # serves until Ctrl-C or SIGTERM
    finally:
        serving.remove(own)  # everything this process received or wrote
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
