"""Hostile use of the live app (issue 33), one server for the module: every refusal is a message (never
``{"error": null}``) in under 2 s with the server still serving, the log holds no name, path or result,
file names are random, private events are not callable by name, a full disk gets a clear answer.

The same hostile files below the server are in tests/test_hostile_inputs.py.
"""
import errno
import hashlib
import io
import json
import logging
import struct
import time
import zipfile
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import tifffile

from brainseg import serving, webapp
from brainseg.inference import Predictor
from conftest import make_slice
from test_app import REQUEST_TIMEOUT, file_data, serve, upload

SECRET = "JANE_DOE_MRN12345"  # a case name as a hospital export might carry it


@pytest.fixture(scope="module")
def predictor(tiny_checkpoints):
    return Predictor.from_sources(str(tiny_checkpoints["segmenter"]), str(tiny_checkpoints["classifier"]))


@pytest.fixture(scope="module")
def server(predictor, tmp_path_factory):
    ex = tmp_path_factory.mktemp("examples")  # an example slice and case: their private events exist too
    (ex / "TCGA_XX_0001_20000101_5.png").write_bytes(png_bytes(2))
    (ex / "TCGA_XX_0001_20000101.zip").write_bytes(zip_bytes([f"TCGA_XX_0001_20000101_{n}.png" for n in (1, 2)]))
    with serve(predictor, ex) as (demo, url):
        yield demo, url


def png_bytes(seed=1, size=64) -> bytes:
    return cv2.imencode(".png", make_slice(np.random.default_rng(seed), size)[0])[1].tobytes()


def zip_bytes(names, data=None) -> bytes:
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w") as zf:
        for n in names:
            zf.writestr(n, png_bytes() if data is None else data)
    return b.getvalue()


def nifti_2d() -> bytes:
    nib = pytest.importorskip("nibabel")
    return nib.Nifti1Image(np.zeros((64, 64), np.float32), np.eye(4)).to_bytes()


def loop_tiff() -> bytes:
    b = io.BytesIO()
    tifffile.imwrite(b, np.full((64, 64), 100, np.uint8))
    data = bytearray(b.getvalue())
    first = struct.unpack_from("<I", data, 4)[0]
    struct.pack_into("<I", data, first + 2 + 12 * struct.unpack_from("<H", data, first)[0], first)
    return bytes(data)


def negative_spacing_tiff() -> bytes:
    b = io.BytesIO()
    pages = np.zeros((2, 64, 64), np.uint8)
    pages[:, 16:48, 16:48] = 120
    tifffile.imwrite(b, pages, imagej=True, resolution=(1.0, 1.0), metadata={"spacing": -3.0, "unit": "mm"})
    return b.getvalue()


def bad_utf8_zip() -> bytes:
    data = bytearray(zip_bytes([f"{SECRET}_1.png"]))
    for sig, flag, name in ((b"PK\x03\x04", 6, 30), (b"PK\x01\x02", 8, 46)):
        at = data.find(sig)
        struct.pack_into("<H", data, at + flag, struct.unpack_from("<H", data, at + flag)[0] | 0x800)
        data[at + name] = 0xFF
    return bytes(data)


# (endpoint, files {name: bytes} or a path to send as is, threshold, spacing, words the message must hold)
HOSTILE = {
    "slice number 10^9": ("predict_case", {f"{SECRET}.zip": zip_bytes([f"{SECRET}_1.png", f"{SECRET}_1000000000.png"])},
                          "slice number"),
    "slice number 2^64": ("predict_case", {f"{SECRET}.zip": zip_bytes([f"{SECRET}_1.png", f"{SECRET}_{2**64}.png"])},
                          "slice number"),
    "gap": ("predict_case", {f"{SECRET}.zip": zip_bytes([f"{SECRET}_1.png", f"{SECRET}_40.png"])}, "Missing slice"),
    "nested zip": ("predict_case", {"nested.zip": zip_bytes(["inner.zip"], b"PK\x05\x06" + bytes(18))},
                   "holds no slice images (‹case›_‹n›.tif"),
    "2-D NIfTI": ("predict_case", {f"{SECRET}.nii": None}, "2-D"),
    "negative spacing": ("predict_case", {f"{SECRET}.tif": None}, "positive"),
    "looping TIFF, slice": ("predict", {f"{SECRET}.tif": None}, "loops"),
    "looping TIFF, case": ("predict_case", {f"{SECRET}.tif": None}, "loops"),
    "bad UTF-8 in a zip": ("predict_case", {f"{SECRET}.zip": None}, "UTF-8"),
    "injected path, slice": ("predict", "/etc/passwd", "not uploaded"),
    "injected path, case": ("predict_case", "/etc/hostname", "not uploaded"),
    "threshold null": ("predict", {f"{SECRET}.png": png_bytes()}, "threshold", None),
    "threshold string": ("predict", {f"{SECRET}.png": png_bytes()}, "threshold", "0.5"),
    "spacing 1_0": ("predict_case", {f"{SECRET}.png": png_bytes()}, "Voxel spacing", 0.5, "1_0, 1, 1"),
    # the earlier rounds' refusals, swept here too so no failure path answers {"error": null}
    "empty file": ("predict", {f"{SECRET}.png": b""}, "empty"),
    "not an image": ("predict_case", {f"{SECRET}.png": b"<html>" * 50}, "not a"),
    "truncated TIFF": ("predict", {f"{SECRET}.tif": None}, "truncated"),
    "PNG bomb": ("predict", {f"{SECRET}.png": None}, "decompression bomb"),
    "threshold 2": ("predict", {f"{SECRET}.png": png_bytes()}, "greater than maximum", 2.0),
    "wrong extension": ("predict_case", {f"{SECRET}.exe": b"MZ" * 10}, "Invalid file type"),
}
def truncated_tiff() -> bytes:
    b = io.BytesIO()
    tifffile.imwrite(b, np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    return b.getvalue()[:6000]


def png_bomb() -> bytes:
    from PIL import Image

    b = io.BytesIO()
    Image.new("1", (30000, 30000)).save(b, "PNG")
    return b.getvalue()


GENERATED = {"truncated TIFF": truncated_tiff, "PNG bomb": png_bomb, "2-D NIfTI": nifti_2d, "negative spacing": negative_spacing_tiff, "looping TIFF, slice": loop_tiff,
             "looping TIFF, case": loop_tiff, "bad UTF-8 in a zip": bad_utf8_zip}


def event(url: str, endpoint: str, data: list) -> tuple:
    """POST /call/<endpoint>, read the stream: (kind of the last event, its data parsed, seconds)."""
    start = time.perf_counter()
    with httpx.Client(timeout=REQUEST_TIMEOUT) as c:
        r = c.post(url + f"gradio_api/call/{endpoint}", json={"data": data})
        r.raise_for_status()
        stream = c.get(url + f"gradio_api/call/{endpoint}/{r.json()['event_id']}").text
    kind, payload = None, None
    for line in stream.splitlines():
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            payload = json.loads(line[6:])
    return kind, payload, time.perf_counter() - start


def hostile_call(url: str, tmp_path: Path, name: str) -> tuple:
    endpoint, files, words, *rest = HOSTILE[name]
    if isinstance(files, str):
        sent = [file_data(files)]
    else:
        sent = []
        for fname, data in files.items():
            path = tmp_path / fname
            path.write_bytes(GENERATED[name]() if data is None else data)
            sent.append(file_data(upload(url, path)))
    threshold = rest[0] if rest else 0.5
    args = [sent[0] if endpoint == "predict" else sent, threshold] + ([rest[1] if len(rest) > 1 else "", ""]
                                                                        if endpoint == "predict_case" else ["pre,flair,post"])
    return event(url, endpoint, args), words


def still_serving(url: str, tmp_path: Path) -> dict:
    path = tmp_path / "good.png"
    path.write_bytes(png_bytes(3))
    kind, out, _ = event(url, "predict", [file_data(upload(url, path)), 0.5, "pre,flair,post"])
    assert kind == "complete", out
    return out[5]


@pytest.mark.parametrize("name", list(HOSTILE))
def test_each_hostile_input_gets_a_message_fast_and_the_server_serves_on(server, tmp_path, name):
    (kind, payload, seconds), words = hostile_call(server[1], tmp_path, name)
    assert kind == "error" and payload is not None and payload.get("error"), payload  # never {"error": null}
    message = payload["error"]
    assert words in message and "<" not in message and ">" not in message, message
    assert seconds < 2, f"{name}: {seconds:.1f} s"
    still_serving(server[1], tmp_path)


def test_the_log_holds_no_name_path_or_result(server, tmp_path, caplog, capfd):
    """Every hostile case above, and two answered ones, against the captured log and stderr."""
    caplog.set_level(logging.INFO)
    url = server[1]
    for name in HOSTILE:
        hostile_call(url, tmp_path, name)
    secret_png = tmp_path / f"{SECRET}_7.png"
    secret_png.write_bytes(png_bytes(5))
    kind, out, _ = event(url, "predict", [file_data(upload(url, secret_png)), 0.5, "pre,flair,post"])
    result = out[5]  # (detection, flair, overlay, mask, summary, result, and the page's state: null)
    case = tmp_path / f"{SECRET}_case.zip"
    case.write_bytes(zip_bytes([f"{SECRET}_{n}.png" for n in (1, 2, 3)]))
    kind_case, out_case, _ = event(url, "predict_case", [[file_data(upload(url, case))], 0.5, "1, 1, 3", ""])
    assert kind == "complete" and kind_case == "complete", out_case
    log = caplog.text + "".join(capfd.readouterr())
    assert "rejected" in log  # the log is captured: refusals are logged, by kind
    for secret in [SECRET, "/etc/passwd", "/etc/hostname", str(tmp_path), out[1]["path"], out_case[1]["path"],
                   "Traceback", repr(result["tumor_probability"]), out[4].splitlines()[0], out_case[0].splitlines()[0]]:
        assert secret not in log, secret


def test_result_and_upload_names_are_random_not_content_hashes(server, tmp_path):
    url = server[1]
    path = tmp_path / "same.png"
    path.write_bytes(png_bytes(9))
    uploads = [upload(url, path) for _ in range(2)]
    assert Path(uploads[0]).parent != Path(uploads[1]).parent
    outs = [event(url, "predict", [file_data(u), 0.5, "pre,flair,post"])[1] for u in uploads]
    flair = [o[1]["path"] for o in outs]
    assert Path(flair[0]).parent != Path(flair[1]).parent and Path(flair[0]).read_bytes() == Path(flair[1]).read_bytes()
    assert hashlib.sha256(Path(flair[0]).read_bytes()).hexdigest() not in flair[0]


def test_private_events_are_not_callable_by_name_and_share_the_public_limits(server):
    demo, url = server
    private = [f for f in demo.fns.values() if f.api_visibility != "public" and f.fn is not None]
    assert {f.api_name for f in private} >= {"preview_predict", "opacity", "show_frame", "clear_slice",
                                             "predict_example", "load_example_case", "predict_example_case"}
    with httpx.Client(timeout=REQUEST_TIMEOUT) as c:
        for f in private:
            for route in (f"gradio_api/call/{f.api_name}", f"gradio_api/call/v2/{f.api_name}"):
                r = c.post(url + route, json={"data": []})
                assert r.status_code == 404, (route, r.status_code)
    by_name = {f.api_name: f for f in demo.fns.values()}
    assert by_name["preview_predict"].concurrency_id == by_name["predict"].concurrency_id  # decoding counts too
    for f in private:
        if f.queue:  # a queued private event runs in a shared, bounded pool
            limit = demo._queue.default_concurrency_limit if f.concurrency_limit == "default" else f.concurrency_limit
            assert f.concurrency_id in ("slice", "case", "draw") and 0 < limit <= 2, (f.api_name, limit)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_full_or_read_only_temp_dir_gets_a_clear_answer(server, tmp_path, monkeypatch, code):
    url = server[1]
    path = tmp_path / "slice.png"
    path.write_bytes(png_bytes(4))
    uploaded = upload(url, path)

    def full(*args, **kwargs):
        raise OSError(code, "No space left on device: /tmp/brainseg_app/secret")

    monkeypatch.setattr(webapp, "write_to_cache", full)
    kind, payload, seconds = event(url, "predict", [file_data(uploaded), 0.5, "pre,flair,post"])
    assert kind == "error" and payload["error"] == serving.DISK_FULL and seconds < 2
    import gradio.routes

    async def upload_full(*args, **kwargs):
        raise OSError(code, "full")

    monkeypatch.setattr(gradio.routes, "upload_fn", upload_full)
    r = httpx.post(url + "gradio_api/upload", files={"files": ("x.png", b"x")}, timeout=REQUEST_TIMEOUT)
    assert r.status_code == 507 and r.text == serving.DISK_FULL
    monkeypatch.undo()
    still_serving(url, tmp_path)


def test_an_unexpected_failure_is_a_message_without_a_traceback(server, tmp_path, monkeypatch, capfd):
    def boom(*args, **kwargs):
        raise IndexError(f"index 3 is out of bounds for {SECRET}")

    monkeypatch.setattr(webapp, "analyze_slice", boom)
    path = tmp_path / "slice.png"
    path.write_bytes(png_bytes(6))
    kind, payload, _ = event(server[1], "predict", [file_data(upload(server[1], path)), 0.5, "pre,flair,post"])
    assert kind == "error" and "internal error, IndexError" in payload["error"] and SECRET not in payload["error"]
    err = "".join(capfd.readouterr())
    assert "Traceback" not in err and SECRET not in err


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_stopping_the_server_deletes_its_files_and_a_start_sweeps_a_killed_ones(tiny_checkpoints, tmp_path):
    """`python app.py`, a slice and a case answered, then SIGTERM: nothing of it is left. (SIGTERM is turned
    into the KeyboardInterrupt that Ctrl-C raises, so this is SIGINT's path too.) A run folder a killed
    server left (its pid gone) is removed at start-up; another live server's is not."""
    import os
    import signal
    import subprocess
    import sys

    from test_app import ROOT, free_port, wait_until_up

    base = tmp_path / "brainseg_app"
    dead, live = base / "run-999999999-0bad", base / f"run-{os.getppid()}-0a0a"  # no such pid / a live one
    for d in (dead, live):
        (d / "abc").mkdir(parents=True)
        (d / "abc" / f"{SECRET}_masks.tif").write_bytes(b"x")
    port = free_port()
    env = dict(os.environ, GRADIO_TEMP_DIR=str(tmp_path))
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port), "--examples", str(tmp_path / "none"),
                             "--segmenter", str(tiny_checkpoints["segmenter"]),
                             "--classifier", str(tiny_checkpoints["classifier"])],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = wait_until_up(proc, port)
        assert not dead.exists() and live.exists()
        still_serving(url, tmp_path)
        case = tmp_path / f"{SECRET}.zip"
        case.write_bytes(zip_bytes([f"{SECRET}_{n}.png" for n in (1, 2, 3)]))
        kind, _, _ = event(url, "predict_case", [[file_data(upload(url, case))], 0.5, "", ""])
        assert kind == "complete"
        own = [d for d in base.iterdir() if d != live]
        assert len(own) == 1 and len([p for p in own[0].rglob("*") if p.is_file()]) >= 8  # uploads, PNGs, frames
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out[-2000:]
    assert sorted(base.iterdir()) == [live], out[-2000:]
    assert SECRET not in out


def test_a_case_whose_client_left_stops_between_batches(server, predictor, tmp_path, monkeypatch):
    """A client drops a long case (4 batches of 3 s); the next case starts after about a batch, not after 12 s."""
    url = server[1]
    real = predictor.run_models
    batches = []

    def slow(images, *args, **kwargs):
        batches.append(len(images))
        time.sleep(3)
        return real(images, *args, **kwargs)

    monkeypatch.setattr(predictor, "run_models", slow)
    long_case = tmp_path / "long.zip"
    long_case.write_bytes(zip_bytes([f"c_{n}.png" for n in range(1, 65)]))
    sent = [file_data(upload(url, long_case))]
    with httpx.Client(timeout=REQUEST_TIMEOUT) as c:
        event_id = c.post(url + "gradio_api/call/predict_case", json={"data": [sent, 0.5, "", ""]}).json()["event_id"]
        with c.stream("GET", url + f"gradio_api/call/predict_case/{event_id}", timeout=REQUEST_TIMEOUT):
            deadline = time.time() + 10
            while not batches and time.time() < deadline:
                time.sleep(0.05)
        # the stream is closed here: the client has gone
    start = time.perf_counter()
    short = tmp_path / "short.zip"
    short.write_bytes(zip_bytes([f"c_{n}.png" for n in (1, 2)]))
    kind, _, _ = event(url, "predict_case", [[file_data(upload(url, short))], 0.5, "", ""])
    waited = time.perf_counter() - start
    assert kind == "complete" and waited < 9, f"the next case waited {waited:.1f} s; batches run: {batches}"
    assert batches.count(16) <= 2, batches  # the dropped case stopped after its first batch or two
