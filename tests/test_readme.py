"""The README's Python snippets for the API and for whole cases run verbatim (a server on a free port stands
in for http://127.0.0.1:7860/), with the shipped models, so the README cannot drift from the code."""
import json
import os
import re

import pytest

import app
from brainseg.inference import Predictor
from conftest import ROOT
from app_server import JSON_KEYS, SHIPPED, serve

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not SHIPPED.exists(), reason="needs the shipped models in models/")]
README = (ROOT / "README.md").read_text(encoding="utf-8")
README_URL = "http://127.0.0.1:7860/"


def section(title: str) -> str:
    return README.split(title + "\n", 1)[1].split("\n#", 1)[0]


def python_blocks(text: str) -> list:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.fixture(scope="module")
def url():
    with serve(Predictor.from_sources(), app.EXAMPLES_DIR) as (_, local_url):
        yield local_url


def run_snippet(code: str, url: str) -> dict:
    assert README_URL in code, "the snippet no longer names the local server"
    scope: dict = {}
    exec(compile(code.replace(README_URL, url), "README.md", "exec"), scope)
    return scope


def test_predict_snippet_returns_the_documented_result(url, monkeypatch):
    monkeypatch.chdir(ROOT)
    api = section("## The API")
    scope = run_snippet(python_blocks(api)[0], url)
    documented = json.loads(re.search(r"```json\n(.*?)```", api, flags=re.S).group(1))
    assert set(scope["result"]) == set(documented) == JSON_KEYS
    assert scope["result"]["tumor_detected"] is True and scope["result"]["dice"] == pytest.approx(
        documented["dice"], abs=0.01)
    assert scope["summary"].startswith("Tumour detected")
    for png in ("flair_png", "overlay_png", "mask_png"):
        assert os.path.isfile(scope[png])


def test_case_snippets_run_with_and_without_a_server(url, tmp_path, monkeypatch, capsys):
    api, local = python_blocks(section("### From code: the API"))
    monkeypatch.chdir(ROOT)
    scope = run_snippet(api, url)
    volume, largest, dice = capsys.readouterr().out.strip().splitlines()[-1].split()  # after the client's own lines
    assert int(volume) > 0 and int(largest) in range(11, 24) and 0.5 < float(dice) <= 1
    monkeypatch.chdir(tmp_path)  # the in-process snippet writes into out/ here
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    local_scope: dict = {}
    exec(compile(local, "README.md", "exec"), local_scope)
    assert local_scope["summary"]["tumor_volume_voxels"] == int(volume)  # the API and the library agree
    assert len(local_scope["result"].masks) == 13 and any((tmp_path / "out").iterdir())
    assert scope["summary"]["dice"] == pytest.approx(local_scope["summary"]["dice"], abs=1e-6)
