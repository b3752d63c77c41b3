"""The app's whole-case tab through the API: /predict_case on a live loopback server."""
import io
import zipfile
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

import app
from brainseg.inference import Predictor
from conftest import write_case
from test_app import REQUEST_TIMEOUT, serve

import numpy as np


@pytest.fixture(scope="module")
def case_zip(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("case")
    folder = write_case(d, "TCGA_CS_0009_20000101", 6, np.random.default_rng(3), size=64)
    z = d / "case.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"{folder.name}/{f.name}")
    return z


@pytest.fixture(scope="module")
def client(tiny_checkpoints, tmp_path_factory):
    predictor = Predictor.from_sources(str(tiny_checkpoints["segmenter"]), str(tiny_checkpoints["classifier"]))
    with serve(predictor, tmp_path_factory.mktemp("no_examples")) as (demo, url):
        yield Client(url, verbose=False)


def predict_case(client, paths, threshold=0.5):
    return client.submit([handle_file(str(p)) for p in paths], threshold,
                         api_name="/predict_case").result(timeout=REQUEST_TIMEOUT)


def test_predict_case_returns_summary_plot_montage_and_masks(client, case_zip):
    summary, plot, montage, masks = predict_case(client, [case_zip])
    assert summary["case"] == "TCGA_CS_0009_20000101" and summary["slices"] == 6
    assert [s["slice"] for s in summary["per_slice"]] == list(range(1, 7))
    assert summary["dice"] is not None  # the zip carries its masks
    assert summary["tumor_volume_voxels"] == sum(s["tumor_area_px"] for s in summary["per_slice"])
    assert Path(plot).read_bytes()[:4] == b"\x89PNG" and Path(montage).read_bytes()[:4] == b"\x89PNG"
    import tifffile
    pages = tifffile.imread(masks)
    assert pages.shape == (6, 64, 64) and set(np.unique(pages)) <= {0, 255}


def test_bad_case_gets_an_error_and_the_server_goes_on(client, case_zip, tmp_path):
    bad = tmp_path / "evil.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("../evil.tif", b"x")
    with pytest.raises(Exception, match=r"(?i)\.\.|path|member|unsafe"):
        predict_case(client, [bad])
    summary, *_ = predict_case(client, [case_zip])
    assert summary["slices"] == 6
