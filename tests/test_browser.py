"""The page in headless Chromium: upload a slice, run an example, see the confidence and the overlay.

Drives Debian's ``chromium`` with ``playwright`` (its own browser download does not work here).
The set-up installs what is missing (playwright into this venv, chromium with apt-get) and skips
with the reason when it cannot. Screenshots go to a temp dir (or $BRAINSEG_SCREENSHOTS); the
path is printed.
"""
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import app
from brainseg.inference import Predictor
from conftest import make_slice

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PLAYWRIGHT = "playwright==1.65.2"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
SHIPPED = app.ROOT / "models" / "segmenter" / "config.json"
TIMEOUT_MS = 60_000


def _run(cmd) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """playwright importable and Debian's chromium present: install them if missing, else skip saying why."""
    try:
        importlib.import_module("playwright.sync_api")
    except ImportError:
        r = _run([sys.executable, "-m", "pip", "install", "--quiet", PLAYWRIGHT])
        if r.returncode != 0:
            pytest.skip(f"playwright is not installed and `pip install {PLAYWRIGHT}` failed: {r.stderr[-500:]}")
        importlib.invalidate_caches()
    if not os.path.exists(CHROMIUM):
        if shutil.which("apt-get") is None or os.geteuid() != 0:
            pytest.skip(f"{CHROMIUM} is missing and apt-get cannot run here (install Debian's chromium package)")
        r = _run(["apt-get", "update", "-qq"])
        r = r if r.returncode else _run(["apt-get", "install", "-y", "-qq", "chromium"])
        if r.returncode != 0 or not os.path.exists(CHROMIUM):
            pytest.skip(f"could not apt-get install chromium: {r.stderr[-500:]}")
    return CHROMIUM


@pytest.fixture(scope="module")
def site(tiny_checkpoints, tmp_path_factory):
    """The app on a free loopback port: the shipped models and examples when present, else tiny, synthetic ones."""
    from test_app import free_port

    if SHIPPED.exists():
        predictor = Predictor.from_sources()
    else:
        predictor = Predictor.from_sources(str(tiny_checkpoints["segmenter"]), str(tiny_checkpoints["classifier"]))
    examples = app.EXAMPLES_DIR
    if not app.find_examples(examples):
        examples = tmp_path_factory.mktemp("examples")
        img, mask = make_slice(np.random.default_rng(5), 256, tumor=True)
        cv2.imwrite(str(examples / "TCGA_XX_0001_20000101_12.png"), img[..., ::-1])
        cv2.imwrite(str(examples / "TCGA_XX_0001_20000101_12_mask.png"), mask)
    upload = tmp_path_factory.mktemp("upload") / "slice.png"
    cv2.imwrite(str(upload), make_slice(np.random.default_rng(6), 200, tumor=True)[0][..., ::-1])
    demo = app.build_demo(predictor, examples)
    try:
        _, url, _ = app.launch(demo, port=free_port(), prevent_thread_lock=True, quiet=True)
        yield {"url": url, "examples": app.find_examples(examples), "upload": upload}
    finally:
        demo.close()


@pytest.fixture()
def page(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            yield page
        finally:
            browser.close()


@pytest.fixture()
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("BRAINSEG_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def wait_for_result(page, previous_src=None) -> dict:
    """Wait until the overlay shows a (new) image and the label a confidence; return what the page shows."""
    page.wait_for_function(
        """prev => { const img = document.querySelector('#overlay img');
                     return img && img.complete && img.naturalWidth > 0 && img.src !== prev; }""",
        arg=previous_src)
    page.wait_for_function("() => /\\d+%/.test(document.querySelector('#confidence').innerText)")
    img = page.locator("#overlay img")
    return {"confidence": page.inner_text("#confidence"), "area": page.input_value("#area textarea"),
            "overlay_src": img.get_attribute("src"), "overlay_size": img.evaluate("e => e.naturalWidth"),
            "overlay_visible": img.is_visible()}


def test_page_upload_then_example(site, page, shots):
    page.goto(site["url"])
    page.get_by_text("not a medical device", exact=False).wait_for()  # the app has rendered

    page.set_input_files("#slice-file input[type=file]", str(site["upload"]))  # an upload runs the analysis
    shown = wait_for_result(page)
    assert shown["overlay_visible"] and shown["overlay_size"] == 200
    assert "tumour" in shown["confidence"] and "% of the brain" in shown["area"]
    page.screenshot(path=str(shots / "upload.png"), full_page=True)

    example = site["examples"][0]
    page.get_by_text(example.label, exact=True).click()  # an example runs the analysis too
    shown = wait_for_result(page, shown["overlay_src"])
    assert shown["overlay_visible"] and "tumour" in shown["confidence"] and "% of the brain" in shown["area"]
    page.screenshot(path=str(shots / "example.png"), full_page=True)
    print(f"screenshots: {shots / 'upload.png'}, {shots / 'example.png'}")
    assert (shots / "example.png").stat().st_size > 10_000


def test_bad_upload_shows_the_error(site, page, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"not an image at all\n" * 10)
    page.goto(site["url"])
    page.get_by_text("not a medical device", exact=False).wait_for()
    page.set_input_files("#slice-file input[type=file]", str(bad))
    page.get_by_text("not a TIFF, PNG or JPEG image", exact=False).first.wait_for()
