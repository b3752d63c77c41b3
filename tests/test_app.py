"""The app: the prediction function in-process, then a live server on 127.0.0.1 driven by gradio_client.

Everything but the last block runs on the tiny untrained checkpoints and synthetic slices; the
golden tests on the shipped models and example slices skip until models/ and examples/ hold them.
"""
import io
import json
import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import tifffile
from gradio_client import Client, handle_file
from PIL import Image

import app
from brainseg import webapp
from brainseg.inference import Predictor
from brainseg.images import InvalidImageError
from app_server import JSON_KEYS, REQUEST_TIMEOUT, SHIPPED, file_data, free_port, raw_call, serve, upload
from conftest import make_slice

ROOT = Path(__file__).resolve().parent.parent
def call(client: Client, path, *args):
    """/predict with a bound on the wait, so a hang fails the test instead of stalling it."""
    return client.submit(handle_file(str(path)), *args, api_name="/predict").result(timeout=REQUEST_TIMEOUT)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 1.0 if not a.any() and not b.any() else 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Synthetic slices in several encodings, plus an examples folder (two with masks, one without)."""
    d = tmp_path_factory.mktemp("slices")
    rng = np.random.default_rng(7)
    img, mask = make_slice(rng, 128, tumor=True)
    out = {"png": d / "slice.png", "tumour_mask": mask}
    cv2.imwrite(str(out["png"]), img[..., ::-1])
    tifffile.imwrite(d / "slice16.tif", img.astype(np.uint16) * 257)
    out["tif16"] = d / "slice16.tif"
    cv2.imwrite(str(d / "flair.png"), img[..., 1])
    out["flair"] = d / "flair.png"
    big, _ = make_slice(rng, 64, tumor=True)
    out["large"] = d / "large.png"  # 1500 x 1200: the overlay is shrunk, the mask is not
    cv2.imwrite(str(out["large"]), cv2.resize(big, (1200, 1500), interpolation=cv2.INTER_NEAREST)[..., ::-1])
    ex = d / "examples"
    ex.mkdir()
    for i, tumor in enumerate([True, False]):
        e_img, e_mask = make_slice(rng, 96, tumor=tumor)
        cv2.imwrite(str(ex / f"TCGA_XX_000{i}_20000101_{i + 9}.png"), e_img[..., ::-1])
        cv2.imwrite(str(ex / f"TCGA_XX_000{i}_20000101_{i + 9}_mask.png"), e_mask)
    cv2.imwrite(str(ex / "no_mask_3.png"), make_slice(rng, 80)[0][..., ::-1])
    out["examples"] = ex
    out["bad"] = bad_uploads(d)
    return out


def bad_uploads(d: Path) -> dict:
    """One file per kind of bad upload, with a word its error message must hold."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    b = io.BytesIO()
    tifffile.imwrite(b, img)
    full_tiff = b.getvalue()
    b = io.BytesIO()
    Image.new("1", (30000, 30000)).save(b, "PNG")
    content = {
        "not_image.png": (b"<html><body>not an MRI slice</body></html>\n" * 20, "not a TIFF, PNG or JPEG"),
        "truncated.tif": (full_tiff[:len(full_tiff) // 2], "truncated"),
        "bomb.png": (b.getvalue(), "decompression bomb"),
        "tiny.png": (cv2.imencode(".png", img[:1, :1])[1].tobytes(), "1x1"),
        "huge.png": (cv2.imencode(".png", np.zeros((10000, 10000), np.uint8))[1].tobytes(), "10000x10000"),
        "empty.png": (b"", "empty"),
    }
    out = {}
    for name, (data, words) in content.items():
        (d / name).write_bytes(data)
        out[name] = (d / name, words)
    return out


# ---------------------------------------------------------------- in-process

def analyze(predictor, path_or_bytes, threshold=None, truth=None, cache=None):
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    return webapp.analyze_slice(predictor, data, threshold, truth or {}, predictor.describe(),
                                str(cache or Path(app.os.environ["GRADIO_TEMP_DIR"])))


def read_png(path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def test_analyze_outputs(predictor, files):
    a = analyze(predictor, files["png"], 0.4)
    r = a.result
    assert JSON_KEYS <= set(r)
    assert isinstance(r["tumor_probability"], float) and 0 <= r["tumor_probability"] <= 1
    assert isinstance(r["tumor_detected"], bool) and isinstance(r["tumor_area_px"], int)
    assert r["input_shape"] == [128, 128, 3] and r["input_dtype"] == "uint8" and r["threshold"] == 0.4
    assert r["tumor_area_px"] == int(read_png(a.mask_path).astype(bool).sum()) and r["dice"] is None
    assert 0 < r["brain_area_px"] < 128 * 128
    assert r["tumor_area_pct_brain"] == round(100 * r["tumor_area_px"] / r["brain_area_px"], 2)
    assert set(r["models"]) == {"segmenter", "classifier"} and r["models"]["segmenter"]["encoder"] == "test_resnet"
    mask = read_png(a.mask_path)
    assert mask.shape == (128, 128) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    # the FLAIR and its overlay at the slice's own size (the page enlarges both to fill their frames)
    assert read_png(a.overlay_path).shape == (128, 128, 3) and read_png(a.flair_path).shape == (128, 128)
    json.dumps(r)  # the API returns it as JSON


def test_analyze_same_answer_for_8bit_16bit_and_flair_only(predictor, files):
    r8 = analyze(predictor, files["png"]).result
    r16 = analyze(predictor, files["tif16"]).result
    assert r16["input_dtype"] == "uint16"
    assert r16["tumor_probability"] == pytest.approx(r8["tumor_probability"], abs=1e-4)
    assert abs(r16["tumor_area_px"] - r8["tumor_area_px"]) <= 2
    flair = analyze(predictor, files["flair"])
    assert flair.result["channels_replicated"] and flair.result["input_shape"] == [128, 128, 1]
    assert "replicated" in flair.summary


def test_analyze_large_slice_keeps_mask_size_and_shrinks_overlay(predictor, files):
    a = analyze(predictor, files["large"])
    assert a.result["input_shape"] == [1500, 1200, 3]
    assert read_png(a.mask_path).shape == (1500, 1200)
    assert max(read_png(a.overlay_path).shape[:2]) == webapp.OVERLAY_MAX_SIDE


def test_analyze_refuses_bad_file(predictor, files):
    with pytest.raises(InvalidImageError, match="1x1"):
        analyze(predictor, files["bad"]["tiny.png"][0])


def test_overlay_opacity_redraws_without_the_models(predictor, files):
    a = analyze(predictor, files["png"], 0.05)
    assert a.shown["mask"].any(), "the tiny model at threshold 0.05 should mark some pixels"
    inside = a.shown["mask"].astype(bool)
    faint, solid = (read_png(webapp.redraw_overlay(a.shown, o, str(Path(a.overlay_path).parent.parent)))
                    for o in (0.0, 1.0))
    assert faint[inside][:, 2].mean() < solid[inside][:, 2].mean()  # red (BGR index 2) grows with opacity
    assert (solid[inside][:, :2] <= 40).mean() > 0.9  # solid: red, hardly any green or blue left


def test_examples_found_with_labels_and_truth(files):
    ex = app.find_examples(files["examples"])
    assert [e.image.name for e in ex] == ["TCGA_XX_0000_20000101_9.png", "TCGA_XX_0001_20000101_10.png",
                                          "no_mask_3.png"]
    assert [e.label for e in ex] == ["XX_0000 · slice 9 · tumour", "XX_0001 · slice 10 · no tumour",
                                     "no_mask · slice 3"]
    assert ex[0].mask is not None and ex[2].mask is None
    assert len(webapp.truth_by_content(ex)) == 2
    assert app.find_examples(files["examples"] / "missing") == []


def test_truth_outline_and_dice_only_for_the_example_file(predictor, files):
    ex = app.find_examples(files["examples"])[0]
    truth = webapp.truth_by_content([ex])
    green = lambda o: ((o[..., 1] == 255) & (o[..., 0] == 0) & (o[..., 2] == 0)).sum()  # noqa: E731  (BGR)
    a = analyze(predictor, ex.image, truth=truth)
    assert green(read_png(a.overlay_path)) > 0
    assert isinstance(a.result["dice"], float) and "Dice with the example's ground truth" in a.summary
    other = analyze(predictor, files["png"], truth=truth)
    assert green(read_png(other.overlay_path)) == 0 and other.result["dice"] is None and "Dice" not in other.summary


def test_every_event_has_an_api_name_and_only_the_two_endpoints_are_public(predictor, files, tmp_path):
    for examples_dir in (files["examples"], tmp_path):  # with examples, and with none
        demo = app.build_demo(predictor, examples_dir)
        fns = list(demo.fns.values())
        assert all(f.api_name for f in fns), [f.api_name for f in fns]
        assert sorted(f.api_name for f in fns if f.api_visibility == "public") == ["predict", "predict_case"]
        has_examples = any(type(b).__name__ == "Gallery" for b in demo.blocks.values())
        assert has_examples == (examples_dir != tmp_path)


def test_no_share_buttons_and_no_label_over_the_figures(predictor, files):
    demo = app.build_demo(predictor, files["examples"])
    by_id = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    for b in demo.blocks.values():
        if type(b).__name__ in ("Image", "Gallery"):
            assert "share" not in (b.buttons or []), b.elem_id
    # the case plot carries its title, the montage its slice numbers: a label badge would cover them
    assert by_id["case-plot"].show_label is False and by_id["case-montage"].show_label is False
    assert by_id["viewer-slider"].step == 1


# ---------------------------------------------------------------- live server

@pytest.fixture(scope="module")
def server(predictor, files):
    with serve(predictor, files["examples"]) as (demo, url):
        yield demo, url


@pytest.fixture(scope="module")
def client(server):
    return Client(server[1], verbose=False)


def test_settings_for_a_shared_host(server):
    demo, url = server
    assert url.startswith("http://127.0.0.1:")
    assert demo.show_error is False and demo.api_open is False and demo.analytics_enabled is False
    assert demo.max_file_size == 20 * 1024 * 1024 and demo.delete_cache == app.DELETE_CACHE
    assert demo.enable_monitoring is False and demo.run_history is False and demo.allowed_paths == []
    assert demo._queue.max_size == app.MAX_QUEUE
    assert demo._queue.default_concurrency_limit == app.CONCURRENCY_LIMIT


def test_api_predict_outputs_as_documented(client, files, predictor):
    label, flair_path, overlay_path, mask_path, area, result = call(client, files["png"])
    assert JSON_KEYS <= set(result)
    assert label["label"] == ("tumour" if result["tumor_detected"] else "no tumour")  # the heading is the verdict
    conf = {c["label"]: c["confidence"] for c in label["confidences"]}
    assert list(conf) == ["tumour"]  # one bar: the probability the verdict compares with its threshold
    assert conf["tumour"] == pytest.approx(result["tumor_probability"], abs=1e-4)
    mask = cv2.imread(mask_path, cv2.IMREAD_UNCHANGED)
    assert mask.shape == (128, 128) and set(np.unique(mask)) <= {0, 255}
    assert int((mask > 0).sum()) == result["tumor_area_px"]
    assert Path(overlay_path).suffix == ".png" and cv2.imread(overlay_path).shape == (128, 128, 3)
    assert cv2.imread(flair_path, cv2.IMREAD_UNCHANGED).shape == (128, 128)
    assert f"{result['tumor_area_px']:,} px" in area and "% of the brain" in area
    assert set(result["models"]) == {"segmenter", "classifier"}
    # the same answer as the function in-process
    local = analyze(predictor, files["png"]).result
    assert result["tumor_probability"] == local["tumor_probability"]
    assert result["tumor_area_px"] == local["tumor_area_px"]


def test_api_threshold_and_dtype_pass_through(client, files):
    *_, low = call(client, files["tif16"], 0.05)
    *_, high = call(client, files["tif16"], 0.95)
    assert low["threshold"] == 0.05 and high["threshold"] == 0.95 and low["input_dtype"] == "uint16"
    assert low["tumor_area_px"] >= high["tumor_area_px"]
    *_, flair = call(client, files["flair"])
    assert flair["channels_replicated"] is True and flair["input_shape"] == [128, 128, 1]


def test_api_documents_the_two_endpoints(client):
    api = client.view_api(print_info=False, return_format="dict")
    assert sorted(api["named_endpoints"]) == ["/predict", "/predict_case"]
    params = api["named_endpoints"]["/predict"]["parameters"]
    assert [p["parameter_name"] for p in params] == ["image", "threshold", "channels"]
    assert params[1]["parameter_has_default"] and params[2]["parameter_has_default"]


def test_api_names_are_short_distinct_and_described(client):
    """Every input and output has a short readable label and a description; no sample-PDF example."""
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert [r["label"] for r in api["/predict"]["returns"]] == ["Detection", "FLAIR", "Overlay", "Mask", "Summary",
                                                                  "Result"]
    assert [p["parameter_name"] for p in api["/predict_case"]["parameters"]] == ["files", "threshold", "spacing_mm",
                                                                                  "series"]
    assert [r["label"] for r in api["/predict_case"]["returns"]] == ["Summary", "Probability and area", "All slices",
                                                                       "Masks", "Downloads", "Case result"]
    for name, ep in api.items():
        labels = [r["label"] for r in ep["returns"]]
        assert len(set(labels)) == len(labels), (name, labels)
        for item in ep["parameters"] + ep["returns"]:
            assert len(item["label"]) <= 24, (name, item["label"])
            assert len(item["python_type"]["description"]) > 15, (name, item["label"])
        assert ep["description"], name
    assert "sample_file.pdf" not in json.dumps(api)
    image, files_in = api["/predict"]["parameters"][0], api["/predict_case"]["parameters"][0]
    assert image["component"] == files_in["component"] == "File"
    for example in (image["example_input"], files_in["example_input"][0]):  # the page writes handle_file(<url>)
        assert (ROOT / example["url"]).is_file(), example
    assert all(p["parameter_has_default"] for p in api["/predict_case"]["parameters"][1:])


def test_readme_names_the_api_as_it_is(client):
    """The README's API section shows the endpoints' inputs and outputs under the names view_api() gives."""
    readme = (ROOT / "README.md").read_text()
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for name, ep in api.items():
        outs = ", ".join(r["label"].lower().replace(" ", "_") for r in ep["returns"])
        ins = ", ".join(p["parameter_name"] for p in ep["parameters"])
        assert f"{name}({ins}) -> ({outs})" in readme, f"README lacks '{name}({ins}) -> ({outs})'"


@pytest.mark.parametrize("name", ["not_image.png", "truncated.tif", "bomb.png", "tiny.png", "huge.png", "empty.png"])
def test_bad_upload_gets_an_error_and_the_server_goes_on(client, files, name):
    path, words = files["bad"][name]
    start = time.perf_counter()
    with pytest.raises(Exception) as e:
        call(client, path)
    assert words.lower() in str(e.value).lower(), str(e.value)
    assert time.perf_counter() - start < REQUEST_TIMEOUT
    assert call(client, files["png"])[-1]["input_shape"] == [128, 128, 3]  # and the next request is answered


def test_out_of_range_threshold_is_an_error(client, files):
    with pytest.raises(Exception, match="greater than maximum"):
        call(client, files["png"], 1.5)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_threshold_is_refused_over_raw_http(server, files, value):
    url = server[1]
    stream = raw_call(url, "predict", [file_data(upload(url, files["png"])), value, "pre,flair,post"])
    assert "event: error" in stream and "finite" in stream, stream[-300:]
    assert "threshold nan" not in stream.lower()


def test_upload_over_the_size_limit_is_refused(server, tmp_path):
    """max_file_size is enforced by the server, not only by polite clients."""
    big = b"\x89PNG\r\n\x1a\n" + bytes(21 * 1024 * 1024)
    r = httpx.post(server[1] + "gradio_api/upload", files={"files": ("big.png", big, "image/png")}, timeout=60)
    assert r.status_code == 413


def test_concurrent_clients_all_answered(server, files):
    url = server[1]

    def worker(i):
        c = Client(url, verbose=False)
        return [call(c, files["png"] if (i + k) % 2 else files["tif16"])[-1] for k in range(2)]

    with ThreadPoolExecutor(4) as pool:
        results = [r for rs in pool.map(worker, range(4), timeout=4 * REQUEST_TIMEOUT) for r in rs]
    assert len(results) == 8
    by_dtype = {}
    for r in results:
        by_dtype.setdefault(r["input_dtype"], set()).add(r["tumor_probability"])
    assert all(len(v) == 1 for v in by_dtype.values())  # same file, same answer, whatever ran beside it


def test_full_queue_answers_with_an_error_not_a_hang(predictor, files, tmp_path):
    class Slow:
        def __init__(self, p):
            self.p = p

        def __getattr__(self, k):
            return getattr(self.p, k)

        def predict(self, *a, **kw):
            time.sleep(2.0)  # long enough that all the submissions below arrive while the first one runs
            return self.p.predict(*a, **kw)

    with serve(Slow(predictor), tmp_path, concurrency_limit=1, max_queue=1) as (_, url):
        c = Client(url, verbose=False)
        jobs = [c.submit(handle_file(str(files["png"])), api_name="/predict") for _ in range(6)]
        outcomes = []
        for j in jobs:
            try:
                j.result(timeout=REQUEST_TIMEOUT)
                outcomes.append("ok")
            except Exception as e:  # noqa: BLE001
                outcomes.append(str(e))
        assert "ok" in outcomes and any("queue is full" in o.lower() for o in outcomes), outcomes
        assert call(c, files["png"])[-1]["input_shape"] == [128, 128, 3]


def raw_get(url: str, path: str) -> str:
    """GET with the path sent byte for byte (httpx would resolve '../' before sending)."""
    host, port = url.split("//")[1].rstrip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode("latin-1")


TRAVERSALS = ["/gradio_api/file=/etc/passwd", "/gradio_api/file=../../../../../../etc/passwd",
              "/gradio_api/file=%2Fetc%2Fpasswd", "/gradio_api/file=..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
              "/gradio_api/file=%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
              "/gradio_api/file=%252e%252e%252fetc%252fpasswd",
              "/gradio_api/file=//etc/passwd", "/gradio_api/file=/tmp/gradio/../../etc/passwd",
              "/gradio_api/file=/proc/self/environ", "/file=/etc/passwd", "/static/../../../../etc/passwd",
              "/assets/..%2f..%2f..%2f..%2f..%2fetc%2fpasswd", "/gradio_api/file=app.py"]


def test_file_routes_refuse_paths_outside_the_app(server):
    url = server[1].rstrip("/")
    with httpx.Client(base_url=url, timeout=10) as c:
        for path in TRAVERSALS + [f"/gradio_api/file={ROOT / 'app.py'}",
                                  f"/gradio_api/file={ROOT / 'brainseg' / 'images.py'}"]:
            r = c.get(path)
            assert r.status_code != 200 and "root:" not in r.text, path
    for path in TRAVERSALS:  # and the same paths, not normalised by the client
        response = raw_get(url, path)
        assert not response.startswith("HTTP/1.1 200") and "root:x:0:0" not in response, path


def test_logs_hold_no_file_names(server, files, tmp_path, caplog, capfd):
    caplog.set_level(logging.INFO, logger="brainseg.app")
    secret = tmp_path / "Jane_Doe_1970-01-01.png"
    secret.write_bytes(files["png"].read_bytes())
    bad = tmp_path / "John_Roe_2001.tif"
    bad.write_bytes(b"II*\x00" + bytes(100))
    c = Client(server[1], verbose=False)
    call(c, secret)
    with pytest.raises(Exception):
        call(c, bad)
    out = caplog.text + "".join(capfd.readouterr())
    assert "predicted 128x128x3 uint8" in caplog.text and "rejected upload (corrupt" in caplog.text
    assert "Jane_Doe" not in out and "John_Roe" not in out


def test_no_outbound_connection_at_start(predictor, files, monkeypatch):
    """Start-up and a request touch nothing beyond loopback when the models are local."""
    hosts = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(sock, addr):
        hosts.append(str(addr[0]))
        return real_connect(sock, addr)

    def getaddrinfo(host, *args, **kwargs):
        hosts.append(str(host))
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    p = Predictor.from_sources(str(predictor.sources["segmenter"].location),
                               str(predictor.sources["classifier"].location))
    with serve(p, files["examples"]) as (_, url):
        call(Client(url, verbose=False), files["png"])
    assert hosts and set(hosts) <= {"127.0.0.1", "localhost", "::1"}, set(hosts)


# ---------------------------------------------------------------- shipped models and examples

def shipped_examples():
    return [e for e in app.find_examples(app.EXAMPLES_DIR) if e.mask is not None]


needs_shipped = pytest.mark.skipif(
    not SHIPPED.exists() or not shipped_examples(),
    reason="needs the shipped models (models/segmenter/config.json) and example slices with masks (examples/*.png)")


@pytest.fixture(scope="module")
def shipped_server():
    with serve(Predictor.from_sources(), app.EXAMPLES_DIR) as (_, url):
        yield Client(url, verbose=False)


@needs_shipped
@pytest.mark.slow
def test_shipped_models_on_the_examples(shipped_server):
    """Tumour found with Dice >= 0.5 on each tumour example, nothing segmented on each empty one.

    On an empty slice only the mask is held to "none": ``tumor_detected`` is the classifier's own
    call, reported beside the mask (and the mask is emptied when the classifier is below the gate).
    """
    for ex in shipped_examples():
        truth = cv2.imread(str(ex.mask), cv2.IMREAD_GRAYSCALE) > 127
        _, _, overlay_path, mask_path, _, r = call(shipped_server, ex.image)
        pred = cv2.imread(mask_path, cv2.IMREAD_GRAYSCALE) > 127
        if truth.any():
            assert r["tumor_detected"] and dice(pred, truth) >= 0.5, (ex.image.name, r, dice(pred, truth))
            overlay = cv2.imread(overlay_path)[..., ::-1]
            assert ((overlay[..., 1] == 255) & (overlay[..., 0] == 0)).any()  # the truth outline is drawn
            assert r["dice"] == pytest.approx(dice(pred, truth), abs=1e-4)
        else:
            assert r["tumor_area_px"] == 0 and not pred.any(), (ex.image.name, r)


# ---------------------------------------------------------------- the command line

def test_cli_refuses_a_bad_model_source(capsys):
    with pytest.raises(SystemExit) as e:
        app.main(["--segmenter", "no/such/source", "--classifier", "no/such/source"])
    assert e.value.code == 2 and "Cannot load the models" in capsys.readouterr().err


def wait_until_up(proc, port: int, seconds: float = 480) -> str:
    """The URL of an ``app.py`` process once it answers; a cold start imports torch and gradio: seconds
    alone, minutes on a busy host."""
    url, deadline, up = f"http://127.0.0.1:{port}/", time.time() + seconds, False
    while not up and time.time() < deadline and proc.poll() is None:
        try:
            up = httpx.get(url + "gradio_api/info", timeout=2).status_code == 200
        except httpx.HTTPError:
            time.sleep(0.5)
    assert up, f"app.py did not answer on port {port} within {seconds:.0f} s (exit code {proc.poll()})"
    return url


@pytest.mark.slow
@pytest.mark.timeout(720)
def test_cli_serves_on_the_given_port(tiny_checkpoints, files):
    """`python app.py --port P --segmenter A --classifier B` answers /predict; the process is then stopped."""
    import subprocess
    import sys

    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port),
                             "--segmenter", str(tiny_checkpoints["segmenter"]),
                             "--classifier", str(tiny_checkpoints["classifier"]), "--examples", str(files["examples"])],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = wait_until_up(proc, port)
        *_, result = call(Client(url, verbose=False), files["png"])
        assert result["models"]["segmenter"]["encoder"] == "test_resnet"
    finally:
        proc.terminate()
        try:
            out = proc.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.communicate()[0]
    assert "models: segmenter:" in out and "predicted 128x128x3 uint8" in out
    assert "slice.png" not in out  # the uploaded file's name is never logged


def test_expired_upload_gets_a_clear_error_without_logging_its_name(server, files, tmp_path, capfd):
    """An upload that delete_cache has removed (here: removed by hand) is named in no log line."""
    url = server[1] + "gradio_api/"
    secret = tmp_path / "Jane_Roe_scan.png"
    secret.write_bytes(files["png"].read_bytes())
    with httpx.Client(timeout=REQUEST_TIMEOUT) as c:
        path = c.post(url + "upload", files={"files": (secret.name, secret.read_bytes(), "image/png")}).json()[0]
        Path(path).unlink()
        body = {"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}, 0.5, "pre,flair,post"]}
        event = c.post(url + "call/predict", json=body).json()["event_id"]
        stream = c.get(url + f"call/predict/{event}").text
    assert "event: error" in stream and "no longer on the server" in stream
    assert "Jane_Roe" not in "".join(capfd.readouterr())


def test_readme_security_section_states_the_limits_in_force():
    """docs/deployment_security.md's "Security and privacy" figures are those of brainseg.images' Limits and the
    app's settings."""
    from brainseg.images import DEFAULT_LIMITS as lim

    readme = (ROOT / "docs" / "deployment_security.md").read_text()
    section = readme.split("## Security and privacy", 1)[1].split("\n## ", 1)[0]
    mib = 2**20
    every, age = app.DELETE_CACHE
    for words in (f"Every {every} s", f"older than {age} s", app.MAX_FILE_SIZE.replace("mb", " MB"),
                  f"{lim.min_side} to {lim.max_side} px a side", f"{lim.max_side} x {lim.max_side} pixels",
                  f"{lim.max_decoded_bytes // mib} MiB", f"{lim.max_pages} pages", f"{lim.max_slices} slices",
                  f"{lim.max_case_pixels / 1e6:.1f} M pixels", f"{lim.max_zip_members} members",
                  f"{lim.max_member_bytes // mib} MiB a member", f"{lim.max_zip_bytes // mib} MiB in all",
                  f"{lim.max_ratio}:1", f"{app.CONCURRENCY_LIMIT} slice requests", f"{app.MAX_QUEUE} waiting"):
        assert words in section, words
    assert lim.max_pixels == lim.max_side ** 2 and lim.max_bytes // mib == int(app.MAX_FILE_SIZE[:-2])


def test_one_answer_between_the_thresholds(files, tmp_path):
    """Issue 9.2 on the page: at p = 0.44 with the detection threshold 0.40 the heading, the bar, the
    summary, the JSON and the mask all say tumour (the heading once said "no tumour 56 %")."""
    from conftest import FakePredictor

    fake = FakePredictor(detection=lambda im: 0.44, detection_threshold=0.4, image_size=128)
    with serve(fake, tmp_path) as (_, url):
        label, _, _, mask_path, summary, result = call(Client(url, verbose=False), files["png"], 0.5)
    assert label["label"] == "tumour" and label["confidences"] == [{"label": "tumour", "confidence": 0.44}]
    assert result["tumor_detected"] is True and result["tumor_probability"] == 0.44
    assert summary.startswith("Tumour detected: probability 0.44 ≥ detection threshold 0.40")
    assert (cv2.imread(mask_path, cv2.IMREAD_GRAYSCALE) > 0).sum() == result["tumor_area_px"]


# ---------------------------------------------------------------- one spelling in the code (issue 11.6)

def test_code_names_say_analyze_as_the_library_does():
    """Identifiers spell analyze (as case_analysis.analyze_case does); prose to users stays British."""
    import io
    import tokenize

    from conftest import ROOT

    files = [ROOT / "app.py", *(ROOT / "brainseg").glob("*.py"), *(ROOT / "benchmarks").glob("*.py"),
             *(ROOT / "tests").glob("*.py")]
    bad = [f"{f.name}:{t.start[0]} {t.string}" for f in files
           for t in tokenize.generate_tokens(io.StringIO(f.read_text(encoding="utf-8")).readline)
           if t.type == tokenize.NAME and "analyse" in t.string.lower()]
    assert bad == []
    assert callable(webapp.analyze_slice) and callable(webapp.analyze_case)
    assert 'elem_id="analyze"' in (ROOT / "app.py").read_text()
