"""What the app keeps and what it deletes, on live loopback servers whose cache ages in seconds.

Each server here runs with ``delete_cache=(1, AGE)``: files older than AGE seconds go, checked
every second, so "five minutes later" is a few seconds later.
"""
import os
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest

import app
from brainseg import webapp
from conftest import write_case
from app_server import REQUEST_TIMEOUT, file_data, raw_call, serve, upload

AGE = 2
CASE_AGE = 10
TEMP_ROOT = Path(os.environ["GRADIO_TEMP_DIR"])


@pytest.fixture(scope="module")
def case_zip(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("case")
    folder = write_case(d, "TCGA_CS_0010_20000101", 4, np.random.default_rng(4), size=64)
    z = d / "case.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"{folder.name}/{f.name}")
    return z


def wait_until_gone(paths, seconds: float = 6 * AGE + 4) -> list:
    """Poll until none of ``paths`` exists; return those still there at the deadline."""
    deadline = time.time() + seconds
    left = [p for p in paths if os.path.lexists(p)]
    while left and time.time() < deadline:
        time.sleep(0.25)
        left = [p for p in left if os.path.lexists(p)]
    return left


def files_under(root: Path) -> set:
    return {str(p) for p in root.rglob("*")} if root.exists() else set()


def paths_in(value) -> list:
    """Every "path" in a component's value as the page's config holds it."""
    if isinstance(value, dict):
        return [v for k, v in value.items() if k == "path" and isinstance(v, str)] + \
            [p for v in value.values() for p in paths_in(v)]
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in paths_in(v)]
    return []


def test_examples_work_after_the_cache_has_aged(predictor):
    """Issue 9.1: a visitor who comes after the first cache sweep clicks an example and gets an answer.
    CASE_AGE, not AGE: the case call's own outputs sit in the temp root while it runs, seconds on a loaded machine."""
    with serve(predictor, app.EXAMPLES_DIR, delete_cache=(1, CASE_AGE)) as (demo, url):
        config = httpx.get(url + "config", timeout=REQUEST_TIMEOUT).json()
        by_id = {c["props"].get("elem_id"): c["props"] for c in config["components"]}
        slices = paths_in(by_id["examples"]["value"])
        cases = [str(p) for p in app.find_example_cases(app.EXAMPLES_DIR)]  # what a click on the example loads
        assert slices and cases and not any(Path(p).is_relative_to(TEMP_ROOT) for p in slices + cases)
        probe = upload(url, app.EXAMPLES_DIR / "TCGA_CS_4943_20000902_17.png")  # an upload still goes on schedule
        assert wait_until_gone([probe], CASE_AGE + 6) == []
        for path in slices[:2]:
            stream = raw_call(url, "predict", [file_data(path), 0.5, "pre,flair,post"])
            assert "event: complete" in stream, stream[-400:]
        stream = raw_call(url, "predict_case", [[file_data(cases[0])], 0.5, "", ""])
        assert "event: complete" in stream and "TCGA_HT_A616_19991226" in stream, stream[-400:]
        assert all(Path(p).exists() for p in slices + cases)  # served in place, never copied and deleted


def test_a_folder_is_refused_and_deletion_goes_on(predictor, case_zip, tmp_path):
    """Issue 10.1: a FileData naming a folder in the cache is refused before Gradio tracks it; later uploads
    are still deleted on schedule."""
    with serve(predictor, tmp_path, delete_cache=(1, AGE)) as (demo, url):
        folder = Path(upload(url, case_zip)).parent
        time.sleep(AGE + 1)  # older than the age: Gradio's own task would now try to remove it
        for endpoint, data in (("predict_case", [[file_data(folder)], 0.5, "", ""]), ("predict", [file_data(folder), 0.5, "pre,flair,post"])):
            stream = raw_call(url, endpoint, data)
            assert "event: error" in stream and "folder" in stream, stream[-300:]
        assert not any(os.path.isdir(p) for s in demo.temp_file_sets for p in list(s))
        time.sleep(1.5)  # a scheduled pass runs after the refusal
        later = upload(url, case_zip)
        assert wait_until_gone([later]) == [], "uploads are no longer deleted"


def test_a_case_leaves_nothing_behind(predictor, case_zip, tmp_path):
    """Issue 10.2: every file a /predict_case call makes (outputs, viewer frames, anything a library
    writes) goes with the uploads, and no empty temp file is left in the temp root. The age is longer than
    elsewhere: the upload must outlive the call itself, which takes seconds on a loaded machine."""
    with serve(predictor, tmp_path, delete_cache=(1, CASE_AGE)) as (_, url):
        before = files_under(TEMP_ROOT)
        stream = raw_call(url, "predict_case", [[file_data(upload(url, case_zip))], 0.5, "", ""])
        assert "event: complete" in stream, stream[-300:]
        new = files_under(TEMP_ROOT) - before
        assert any(p.endswith("_masks.tif") for p in new) and any("_slice_" in p for p in new)
        assert not [p for p in new if p.endswith(".json")]  # the summary goes back in the response only
        assert not [p for p in new if Path(p).parent == TEMP_ROOT and Path(p).name.startswith("tmp")]
        assert wait_until_gone(sorted(new), 3 * CASE_AGE + 4) == []


def test_sweep_survives_a_failure(tmp_path, monkeypatch):
    """One entry that cannot be removed is counted and skipped; the rest goes."""
    for name in ("a/x.png", "b/y.png", "c/z.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"1")
    (tmp_path / "d").mkdir()
    real_unlink = os.unlink

    def unlink(path, *a, **kw):
        if str(path).endswith("x.png"):
            raise PermissionError(13, "denied")
        return real_unlink(path, *a, **kw)

    monkeypatch.setattr(webapp.os, "unlink", unlink)
    sweeper = webapp.CacheSweeper(tmp_path, None, 1, 0)
    time.sleep(0.01)
    assert sweeper.sweep(age=0) >= 2
    assert {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")} == {"a", "a/x.png"}
    assert sweeper.sweep(age=10_000) == 0  # nothing is young enough to go
