"""Whole-case analysis end to end: a 40-slice case as a zip, through the Python function and through the API.

    .venv/bin/python benchmarks/bench_case.py                     # models/ when present, else the shipped architecture
    .venv/bin/python benchmarks/bench_case.py --models tiny --no-api
    .venv/bin/python benchmarks/bench_case.py --json bench_case.json

The case is built from examples/*.png when there are some (cycled to 40 slices), else from
synthetic 256x256 slices, written as kaggle_3m TIFFs and zipped: the upload a user sends. One
run is :func:`brainseg.case_analysis.predict_case_files` on that zip: read and check the zip, predict
every slice (batches of 16, both models), write the probability plot, the overlay montage, the
multi-page mask TIFF and the summary. The API run sends the same zip to ``/predict_case`` with
``gradio_client`` on 127.0.0.1 (upload, queue, the same call, download of the three files): the
app's own endpoint when app.py has one, else a stand-in Blocks wired the same way.

``--segmenter``/``--classifier`` time those models. Else ``--models auto`` uses models/segmenter and
models/classifier when present, else untrained models of the shipped architecture (ResUNet
resnet34 at 256, classifier resnet18 at 128, the config defaults): the time does not depend on the weights. ``tiny`` is the test models' size.
The same 40 slices are also written as three DICOM series (pre, FLAIR, post; 120 files, Explicit VR
Little Endian) in one zip and sent through ``/predict_case`` on the same server: the DICOM row, whose
target is 1.5x the TIFF zip's time at most.
The first run of each kind is a warm-up and is not counted. Figures on a loaded machine are
slower; the CPU seconds of the process divided by the torch threads estimate the wall time on an
idle machine (an upper bound where busy-waiting threads are counted).
"""
import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from brainseg.case_analysis import analyze_case, predict_case_files  # noqa: E402
from brainseg.case_io import load_case  # noqa: E402
from brainseg.cli import add_model_args, add_runtime_args, apply_threads, predictor_from_args  # noqa: E402
from brainseg.config import ClassifierConfig, SegmenterConfig  # noqa: E402
from brainseg.dicom_write import series_datasets, write_series_zip  # noqa: E402
from brainseg.inference import Predictor  # noqa: E402
from brainseg.models import ResUNet, TumorClassifier  # noqa: E402


def synthetic_slice(rng: np.random.Generator, size: int = 256, tumor: bool = True) -> np.ndarray:
    """A 3-channel 'brain' disc with noise and, optionally, a bright FLAIR ellipse (as the tests' make_slice)."""
    img = np.zeros((size, size, 3), np.uint8)
    cv2.circle(img, (size // 2, size // 2), int(size * 0.42), (60, 90, 70), -1)
    img = np.clip(img.astype(np.int16) + rng.integers(-8, 9, img.shape), 0, 255).astype(np.uint8)
    if tumor:
        c = tuple(int(v) for v in rng.integers(int(size * 0.3), int(size * 0.7), 2))
        cv2.ellipse(img, c, (size // 10, size // 14), float(rng.integers(0, 180)), 0, 360, (110, 220, 80), -1)
    return img


def build_case_zip(folder: Path, n: int = 40) -> tuple:
    """Write an n-slice case in the kaggle_3m naming and zip it; returns (zip path, where the slices came from)."""
    examples = sorted(p for p in (ROOT / "examples").glob("*.png") if not p.stem.endswith("_mask"))
    if examples:
        sizes = {cv2.imread(str(p)).shape for p in examples}
        examples = [p for p in examples if cv2.imread(str(p)).shape == max(sizes)] or examples
    rng = np.random.default_rng(0)
    name = "BENCH_CASE"
    z = folder / f"{name}.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(1, n + 1):
            if examples:
                img = cv2.imread(str(examples[(i - 1) % len(examples)]), cv2.IMREAD_COLOR)  # BGR as stored
            else:
                img = cv2.cvtColor(synthetic_slice(rng, 256, tumor=n // 3 <= i <= 2 * n // 3), cv2.COLOR_RGB2BGR)
            zf.writestr(f"{name}/{name}_{i}.tif", cv2.imencode(".tif", img)[1].tobytes())
    source = f"{len(examples)} example slices from examples/, cycled" if examples else "synthetic 256x256 slices"
    return z, source


def load_predictor(args):
    """The Predictor to time and a line naming its models: ``--segmenter``/``--classifier`` when given, else ``--models``."""
    shipped = (ROOT / "models" / "segmenter" / "config.json").exists() and (ROOT / "models" / "classifier" / "config.json").exists()
    if args.segmenter or args.classifier or args.models == "shipped" or (args.models == "auto" and shipped):
        p = predictor_from_args(args)  # unnamed sources: $BRAINSEG_SEGMENTER / $BRAINSEG_CLASSIFIER, else models/
        return p, f"segmenter {p.sources['segmenter']}, classifier {p.sources['classifier']}"
    apply_threads(args)
    torch.manual_seed(0)
    if args.models == "tiny":
        seg, clf = SegmenterConfig(encoder="test_resnet", image_size=64), ClassifierConfig(encoder="test_resnet", image_size=64)
        what = "tiny test models (test_resnet at 64): NOT the shipped size"
    else:
        seg, clf = SegmenterConfig(), ClassifierConfig()
        what = (f"untrained models of the shipped architecture (ResUNet {seg.encoder} at {seg.image_size}, classifier "
                f"{clf.encoder} at {clf.image_size}; models/ has no checkpoint)")
    return Predictor(ResUNet(seg), TumorClassifier(clf), args.device, precision=args.precision), what


def detection_rule(predictor) -> dict:
    """The one rule the Predictor applies (a slice is detected iff its probability >= the detection
    threshold, a mask drawn iff detected) and which slices the segmenter therefore runs on."""
    detection = "fused" if predictor.fused else "classifier" if predictor.classifier is not None else "segmenter"
    return {"detection": detection, "detection_threshold": float(predictor.detection_threshold),
            "pixel_threshold": float(predictor.pixel_threshold), "fused_detection": predictor.fused,
            "segmenter_runs_on": "the detected slices only (the classifier decides first)" if detection == "classifier"
            else "every slice (its output is part of detection)"}


def timed(fn, repeats: int, cpu: list = None) -> list:
    """Wall seconds of ``repeats`` runs after a warm-up; ``cpu`` collects this process's CPU seconds of each."""
    fn()
    out = []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
        if cpu is not None:
            cpu.append(time.process_time() - c0)
    return out


def has_endpoint(demo, name: str) -> bool:
    return any(getattr(f, "api_name", None) == name for f in getattr(demo, "fns", {}).values())


def stand_in_demo(predictor):
    """A Blocks with the whole-case call wired as the app's tab would be: files + threshold -> JSON, 2 images, file."""
    import gradio as gr

    def predict_case(files, threshold):
        out = Path(tempfile.mkdtemp(prefix="brainseg_bench_"))
        try:
            return predict_case_files(predictor, [f if isinstance(f, str) else f.name for f in files], threshold, out)
        except ValueError as e:
            raise gr.Error(str(e)) from None

    with gr.Blocks(analytics_enabled=False) as demo:
        files = gr.File(file_count="multiple", label="case")
        thr = gr.Slider(0.05, 0.95, value=float(predictor.seg_cfg.threshold), label="threshold")
        outs = [gr.JSON(), gr.Image(type="filepath"), gr.Image(type="filepath"), gr.File()]
        gr.Button().click(predict_case, [files, thr], outs, api_name="predict_case")
    demo.queue()
    return demo


def api_times(predictor, zip_path: Path, repeats: int, also: Path = None) -> tuple:
    """``/predict_case`` on ``zip_path`` (and then on ``also``, the same case as DICOM, on the same server)."""
    from gradio_client import Client, handle_file

    demo, where = None, "stand-in Blocks (app.py has no /predict_case yet)"
    try:
        import app  # noqa: WPS433 - the real app, when it has the case tab
        candidate = app.build_demo(predictor)
        if has_endpoint(candidate, "predict_case"):
            demo, where = candidate, "app.py's /predict_case"
    except Exception as e:  # noqa: BLE001 - an app that cannot be built here: measure the stand-in
        where += f"; app.build_demo failed: {type(e).__name__}: {e}"
    demo = demo or stand_in_demo(predictor)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True,
                            max_file_size="100mb", show_error=True)
    try:
        client = Client(url, verbose=False, download_files=tempfile.mkdtemp(prefix="brainseg_bench_dl_"))
        params = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/predict_case"]["parameters"]
        first = params[0]
        listy = "list" in json.dumps(first.get("type", {})).lower() or "array" in json.dumps(first.get("type", {})).lower()
        runs = []
        for path in [zip_path] + ([also] if also else []):
            arg = [handle_file(str(path))] if listy else handle_file(str(path))
            result = {}

            def call():
                result["r"] = client.predict(arg, api_name="/predict_case")

            cpu = []
            times = timed(call, repeats, cpu)
            runs.append((times, cpu, next(r for r in result["r"] if isinstance(r, dict))))  # the JSON, wherever it sits
        (times, cpu, summary), dicom = runs[0], (runs[1] if also else None)
        return times, cpu, where, summary, dicom
    finally:
        demo.close()


def run(argv=None) -> dict:
    """Parse ``argv``, measure, print; returns the figures (what :func:`main` prints and writes)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", choices=["auto", "shipped", "shipped-arch", "tiny"], default="auto",
                    help="which models, when --segmenter/--classifier are not given (see above)")
    add_model_args(ap)
    add_runtime_args(ap)
    ap.add_argument("--no-api", action="store_true", help="skip the gradio_client run")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="brainseg_bench_case_"))
    zip_path, source = build_case_zip(work, args.slices)
    predictor, models = load_predictor(args)
    print(f"case: {args.slices} slices ({source}), zip {zip_path.stat().st_size / 2**20:.1f} MiB")
    print(f"models: {models}; segmenter precision {predictor.precision}, detection "
          f"{'fused (segmenter on every slice)' if predictor.fused else 'classifier'}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")

    case = load_case(zip_path)
    t_load = timed(lambda: load_case(zip_path), args.repeats)
    dicom_zip = write_series_zip(series_datasets(case.slices), work / "BENCH_CASE_dicom.zip")  # the same case as DICOM
    t_load_dicom = timed(lambda: load_case(dicom_zip), args.repeats)
    t_infer = timed(lambda: analyze_case(predictor, case), args.repeats)
    cpu_seg, cpu_clf = [], []
    t_seg = timed(lambda: [predictor.segment_probs(case.slices[i:i + 16]) for i in range(0, len(case), 16)],
                  args.repeats, cpu_seg)
    t_clf = timed(lambda: [predictor.classify(case.slices[i:i + 16]) for i in range(0, len(case), 16)],
                  args.repeats, cpu_clf)
    cpu_py = []
    t_py = timed(lambda: predict_case_files(predictor, [zip_path], None, tempfile.mkdtemp(dir=work)), args.repeats, cpu_py)
    res = {"slices": args.slices, "source": source, "models": models, "torch_threads": torch.get_num_threads(),
           "load_s": statistics.median(t_load), "dicom_load_s": statistics.median(t_load_dicom),
           "dicom_zip_mib": dicom_zip.stat().st_size / 2**20, "inference_s": statistics.median(t_infer),
           "segmenter_s": statistics.median(t_seg), "classifier_s": statistics.median(t_clf),
           "segmenter_cpu_s_per_slice": statistics.median(cpu_seg) / args.slices,
           "classifier_cpu_s_per_slice": statistics.median(cpu_clf) / args.slices,
           **detection_rule(predictor), "precision": predictor.precision,
           "python_end_to_end_s": statistics.median(t_py), "python_runs_s": t_py,
           "python_cpu_s": statistics.median(cpu_py), "load_average": os.getloadavg()[0]}
    print(f"read + check zip      {res['load_s']:.3f} s (median of {args.repeats}); the same case as 3 DICOM series "
          f"({3 * args.slices} files, {res['dicom_zip_mib']:.1f} MiB zip): {res['dicom_load_s']:.3f} s")
    print(f"inference, {args.slices} slices  {res['inference_s']:.3f} s ({1000 * res['inference_s'] / args.slices:.0f} ms a slice)")
    print(f"  of which segmenter  {res['segmenter_s']:.3f} s, classifier {res['classifier_s']:.3f} s (timed on all "
          f"slices; detected iff p >= {res['detection_threshold']:g} ({res['detection']}), mask iff detected: "
          f"the segmenter runs on {res['segmenter_runs_on']})")
    print(f"  CPU a slice         segmenter {res['segmenter_cpu_s_per_slice']:.3f} s, classifier "
          f"{res['classifier_cpu_s_per_slice']:.3f} s (preprocessing included)")
    print(f"predict_case_files    {res['python_end_to_end_s']:.3f} s end to end (runs: "
          f"{', '.join(f'{t:.2f}' for t in t_py)}); CPU {res['python_cpu_s']:.2f} s, "
          f"so about {res['python_cpu_s'] / torch.get_num_threads():.2f} s on an idle machine")
    if not args.no_api:
        t_api, cpu_api, where, summary, dicom = api_times(predictor, zip_path, args.repeats, dicom_zip)
        assert summary["slices"] == args.slices == dicom[2]["slices"], (summary, dicom[2])
        assert dicom[2]["tumor_volume_voxels"] == summary["tumor_volume_voxels"]  # the same masks from DICOM
        res.update(api_end_to_end_s=statistics.median(t_api), api_runs_s=t_api, api=where,
                   api_cpu_s=statistics.median(cpu_api), dicom_api_end_to_end_s=statistics.median(dicom[0]),
                   dicom_api_runs_s=dicom[0])
        print(f"API /predict_case     {res['api_end_to_end_s']:.3f} s end to end via gradio_client, {where} (runs: "
              f"{', '.join(f'{t:.2f}' for t in t_api)}); CPU {res['api_cpu_s']:.2f} s (server and client), "
              f"so about {res['api_cpu_s'] / torch.get_num_threads():.2f} s on an idle machine")
        ratio = res["dicom_api_end_to_end_s"] / res["api_end_to_end_s"]
        res["dicom_over_tiff"] = ratio
        print(f"API /predict_case, DICOM  {res['dicom_api_end_to_end_s']:.3f} s, the same case as 3 DICOM series (runs: "
              f"{', '.join(f'{t:.2f}' for t in dicom[0])}): {ratio:.2f}x the TIFF zip (target <= 1.5x: "
              f"{'met' if ratio <= 1.5 else 'NOT met'})")
    target = res.get("api_end_to_end_s", res["python_end_to_end_s"])
    print(f"target < 4 s: {'met' if target < 4 else 'NOT met'} ({target:.2f} s wall, load average "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return res


def main(argv=None) -> int:
    """Command-line entry point: exit code 0 once the figures are printed."""
    run(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
