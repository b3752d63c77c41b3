"""A live app server for tests: build_demo + launch on a free loopback port, and raw HTTP calls to it.

Shared by the app tests (test_app, test_app_case, test_app_cleanup, test_browser, test_readme).
"""
import json
import socket
from contextlib import contextmanager
from pathlib import Path

import httpx

import app

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "models" / "segmenter" / "config.json"
REQUEST_TIMEOUT = 60  # seconds: any request that takes longer counts as a hang
JSON_KEYS = {"tumor_probability", "tumor_detected", "tumor_area_px", "tumor_area_pct_brain", "brain_area_px",
             "input_shape", "input_dtype", "channels_replicated", "threshold", "detection_threshold", "dice", "models",
             "input_check", "uncertain", "review_reasons"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(predictor, examples_dir, **build_kw):
    """build_demo + launch on a free loopback port; always closed."""
    demo = app.build_demo(predictor, examples_dir, **build_kw)
    try:
        _, url, _ = app.launch(demo, port=free_port(), prevent_thread_lock=True, quiet=True)
        yield demo, url
    finally:
        demo.close()


def raw_call(url: str, endpoint: str, data: list) -> str:
    """POST /gradio_api/call/<endpoint> with a JSON body as written (NaN allowed), then read the event stream."""
    with httpx.Client(timeout=REQUEST_TIMEOUT) as c:
        r = c.post(url + f"gradio_api/call/{endpoint}", content=json.dumps(data and {"data": data}),
                   headers={"content-type": "application/json"})
        r.raise_for_status()
        return c.get(url + f"gradio_api/call/{endpoint}/{r.json()['event_id']}").text


def upload(url: str, path: Path) -> str:
    with httpx.Client(timeout=REQUEST_TIMEOUT) as c:
        return c.post(url + "gradio_api/upload", files={"files": (path.name, path.read_bytes())}).json()[0]


def file_data(path) -> dict:
    return {"path": str(path), "meta": {"_type": "gradio.FileData"}}
