"""Every command in the README runs verbatim: each shell line and each Python block, on examples/ and the
example case, with the shipped models (a server on a free port stands in for http://127.0.0.1:7860/).

``make demo`` (a server that runs until stopped) and ``make test`` (this suite) are the two lines not run
here as such: their make targets are checked to be the commands the rest of the suite runs (app.py, pytest).
"""
import json
import os
import re
import subprocess
import sys

import pytest
import yaml

import app
from app_server import JSON_KEYS, SHIPPED, serve
from brainseg.inference import Predictor
from conftest import ROOT

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not SHIPPED.exists(), reason="needs the shipped models in models/")]
README = (ROOT / "README.md").read_text(encoding="utf-8")
README_URL = "http://127.0.0.1:7860/"
MAX_LINES = 250


def section(title: str) -> str:
    return README.split(title + "\n", 1)[1].split("\n## ", 1)[0]


def blocks(lang: str, text: str = README) -> list:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def shell_commands() -> list:
    return [line.split("  #")[0].strip() for b in blocks("bash") for line in b.splitlines() if line.strip()]


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    """A scratch folder that sees the repository's examples/ and models/, so the README's relative paths
    work and what the commands write stays out of the repository."""
    for name in ("examples", "models"):
        (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def url():
    with serve(Predictor.from_sources(), app.EXAMPLES_DIR) as (_, local_url):
        yield local_url


def run_python(code: str, url: str = "") -> dict:
    if README_URL in code:
        code = code.replace(README_URL, url)
    code = "\n".join(line for line in code.splitlines() if "USER/" not in line.split("#")[0])  # placeholders
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    return scope


def test_the_readme_is_a_short_guide_with_a_valid_space_header():
    assert README.count("\n") <= MAX_LINES, f"README.md has {README.count(chr(10))} lines; the rest goes to docs/"
    front = README.split("---\n", 2)[1]
    assert yaml.safe_load(front) == yaml.safe_load((ROOT / "docs" / "space_header.yml").read_text().split("---\n")[1])
    meta = yaml.safe_load(front)
    assert meta["sdk"] == "gradio" and (ROOT / meta["app_file"]).is_file()
    for link in re.findall(r"\]\(((?:docs|examples)/[^)#]*)", README):
        assert (ROOT / link).exists(), link


def test_every_shell_command_runs(workdir):
    commands = shell_commands()
    assert {"make demo", "make test"} <= set(commands)
    for target, runs in (("demo", "app.py"), ("test", "pytest")):
        dry = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True)
        assert dry.returncode == 0 and runs in dry.stdout, (target, dry.stdout, dry.stderr)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    for cmd in commands:
        if cmd.startswith("make "):
            continue
        done = subprocess.run(cmd.replace("python ", f"{sys.executable} ", 1), shell=True, cwd=workdir, env=env,
                              capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, f"{cmd} failed ({done.returncode}):\n{done.stderr[-2000:]}"
    out = workdir / "runs" / "readme_case"
    assert (out / "predictions.csv").is_file() and any(out.glob("*/*_summary.json"))


def test_every_python_block_runs(url, workdir, capsys):
    code = blocks("python")
    assert len(code) == 7
    scopes = [run_python(b, url) for b in code]
    api = section("## Call the API")
    documented = json.loads(blocks("json", api)[0])
    result = next(s["result"] for s in scopes if "detection" in s)
    assert set(result) == set(documented) == JSON_KEYS
    assert result["tumor_detected"] is True and result["dice"] == pytest.approx(documented["dice"], abs=0.002)
    for png in ("flair_png", "overlay_png", "mask_png"):
        assert os.path.isfile(next(s[png] for s in scopes if png in s))
    remote = next(s["summary"] for s in scopes if "text" in s and "plot_png" in s)
    local = next(s for s in scopes if "predict_case_files" in s)
    assert local["summary"]["tumor_volume_voxels"] == remote["tumor_volume_voxels"]  # the API and the library agree
    assert remote["dice"] == pytest.approx(local["summary"]["dice"], abs=1e-6)
    assert len(local["result"].masks) == 13 and any((workdir / "out").iterdir())
    assert "True\nTrue" in capsys.readouterr().out  # your own data: the channel order and FLAIR alone both find it
