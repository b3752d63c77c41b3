"""End-to-end latency of the app's API beside the bare model forward, on the same slices, in one run.

    python benchmarks/bench_app.py [--n 50] [--segmenter SRC --classifier SRC] [--examples DIR]

Starts the app in-process on 127.0.0.1, sends ``--n`` requests one after another through
``gradio_client`` (upload, queue, decode, predict, overlay and mask PNG, download of the outputs:
what a user of the API waits for) and times ``Predictor.predict`` on the same decoded slices,
alternately. The client skips loading CA certificates for the plain-HTTP URL (see below); a
default client is timed beside it.
Uses the models given (default: the shipped ones) and examples/ when present, else synthetic slices.
Target: p50 end-to-end <= 1.5x the bare forward, and under 250 ms.
"""
import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import app  # noqa: E402  (sets the no-analytics environment before gradio is imported)
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402

from brainseg.images import decode_image  # noqa: E402
from brainseg.cli import add_model_args, add_runtime_args, predictor_from_args  # noqa: E402


def percentiles(ms):
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def synthetic_slices(folder: Path, n: int = 4, size: int = 256):
    """Brain-like discs with a bright FLAIR blob, as PNGs; for when examples/ is empty."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        img = np.zeros((size, size, 3), np.uint8)
        cv2.circle(img, (size // 2, size // 2), int(size * 0.42), (60, 90, 70), -1)
        img = np.clip(img + rng.integers(0, 12, img.shape), 0, 255).astype(np.uint8)
        cv2.ellipse(img, (int(rng.integers(90, 160)), int(rng.integers(90, 160))), (20, 14), 30, 0, 360,
                    (110, 220, 80), -1)
        paths.append(folder / f"synthetic_{i}.png")
        cv2.imwrite(str(paths[-1]), img[..., ::-1])
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(argv=None) -> dict:
    """Parse ``argv``, measure, print; returns the figures (what :func:`main` prints and writes)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=50, help="requests through the API (and bare forwards)")
    add_model_args(ap)
    add_runtime_args(ap)
    ap.add_argument("--examples", type=Path, default=app.EXAMPLES_DIR)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)

    predictor = predictor_from_args(args)
    tmp = tempfile.TemporaryDirectory(prefix="bench_app_")
    paths = [e.image for e in app.find_examples(args.examples)] or synthetic_slices(Path(tmp.name))
    arrays = [decode_image(p.read_bytes()).array for p in paths]
    app.warm_up(predictor)

    demo = app.build_demo(predictor, args.examples)
    try:
        _, url, _ = app.launch(demo, port=free_port(), prevent_thread_lock=True, quiet=True)
        # gradio_client opens a new httpx client for each upload, stream and download, and each one
        # loads the CA certificate bundle (about 25 ms of CPU, four times a request). The URL is plain
        # HTTP, where no certificate is ever checked, so ssl_verify=False changes nothing but that cost,
        # which a remote client would pay on its own CPU. The default client is timed too.
        client = Client(url, verbose=False, ssl_verify=False)
        default_client = Client(url, verbose=False)
        for p in paths[:3]:  # warm the server's and the clients' paths
            client.predict(handle_file(str(p)), api_name="/predict")
            default_client.predict(handle_file(str(p)), api_name="/predict")
        # Alternate the measurements, so all see the same load when the host is shared.
        bare, e2e, e2e_default = [], [], []
        for i in range(args.n):
            t = time.perf_counter()
            predictor.predict(arrays[i % len(arrays)])
            bare.append(1000 * (time.perf_counter() - t))
            for c, times in ((client, e2e), (default_client, e2e_default)):
                t = time.perf_counter()
                c.submit(handle_file(str(paths[i % len(paths)])), api_name="/predict").result(timeout=120)
                times.append(1000 * (time.perf_counter() - t))
    finally:
        demo.close()
        tmp.cleanup()

    (b50, b95), (e50, e95), (d50, d95) = percentiles(bare), percentiles(e2e), percentiles(e2e_default)
    models = predictor.describe()
    figures = {"n": args.n, "slices": len(paths), "slice_shape": list(arrays[0].shape),
               "models": {k: f"{m['source']} ({m['encoder']})" for k, m in models.items()},
               "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
               "bare_forward_ms": {"p50": round(b50, 1), "p95": round(b95, 1)},
               "end_to_end_ms": {"p50": round(e50, 1), "p95": round(e95, 1)},
               "end_to_end_default_client_ms": {"p50": round(d50, 1), "p95": round(d95, 1)},
               "ratio_p50": round(e50 / b50, 2), "overhead_p50_ms": round(e50 - b50, 1),
               "target_met": bool(e50 <= 1.5 * b50 and e50 < 250)}
    print(f"{len(paths)} slice(s) {'x'.join(map(str, arrays[0].shape))} from "
          f"{args.examples if paths[0].parent == Path(args.examples) else 'synthetic'}; "
          f"models: {', '.join(f'{k} {v}' for k, v in figures['models'].items())}; "
          f"torch threads {figures['torch_threads']} on {figures['cpus']} CPUs")
    print(f"{'':52s}{'p50':>11s}{'p95':>11s}")
    print(f"{'bare forward (Predictor.predict)':52s}{b50:8.1f} ms{b95:8.1f} ms")
    print(f"{'end to end (gradio_client /predict)':52s}{e50:8.1f} ms{e95:8.1f} ms")
    print(f"{'  the same, client loading CA certs on each call':52s}{d50:8.1f} ms{d95:8.1f} ms")
    print(f"p50 end to end = {figures['ratio_p50']:.2f}x bare (+{e50 - b50:.0f} ms); "
          f"target <= 1.5x and < 250 ms: {'met' if figures['target_met'] else 'NOT met'}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def main(argv=None) -> int:
    """Command-line entry point: exit code 0 once the figures are printed."""
    run(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
