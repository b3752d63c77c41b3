"""The app's whole-case tab through the API: /predict_case on a live loopback server."""
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from gradio_client import Client, handle_file

import app
from brainseg import webapp
from brainseg.inference import Predictor
from conftest import make_slice, write_case
from app_server import REQUEST_TIMEOUT, serve


def zip_case(d: Path, name: str, n: int, seed: int) -> Path:
    folder = write_case(d, name, n, np.random.default_rng(seed), size=64)
    z = d / f"{name}.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"{folder.name}/{f.name}")
    return z


@pytest.fixture(scope="module")
def case_zip(tmp_path_factory) -> Path:
    return zip_case(tmp_path_factory.mktemp("case"), "TCGA_CS_0009_20000101", 6, 3)


@pytest.fixture(scope="module")
def client(predictor, tmp_path_factory):
    with serve(predictor, tmp_path_factory.mktemp("no_examples")) as (demo, url):
        yield Client(url, verbose=False)


def predict_case(client, paths, threshold=0.5, spacing=""):
    return client.submit([handle_file(str(p)) for p in paths], threshold, spacing,
                         api_name="/predict_case").result(timeout=REQUEST_TIMEOUT)


def test_predict_case_returns_text_plot_montage_masks_and_json(client, case_zip):
    text, plot, montage, masks, downloads, summary = predict_case(client, [case_zip])
    assert summary["case"] == "TCGA_CS_0009_20000101" and summary["slices"] == 6
    assert [s["slice"] for s in summary["per_slice"]] == list(range(1, 7))
    assert summary["dice"] is not None  # the zip carries its masks
    assert summary["tumor_volume_voxels"] == sum(s["tumor_area_px"] for s in summary["per_slice"])
    assert Path(plot).read_bytes()[:4] == b"\x89PNG" and Path(montage).read_bytes()[:4] == b"\x89PNG"
    assert sorted(Path(p).name for p in downloads) == ["TCGA_CS_0009_20000101_masks.nii.gz",
                                                       "TCGA_CS_0009_20000101_masks.tif", "TCGA_CS_0009_20000101_slices.csv"]
    pages = tifffile.imread(masks)
    assert pages.shape == (6, 64, 64) and set(np.unique(pages)) <= {0, 255}
    # a few readable lines, from the same JSON; per_slice stays in the JSON
    assert text.startswith("TCGA_CS_0009_20000101: 6 slices") and len(text.splitlines()) <= 10  # + check, review
    assert f"{summary['tumor_volume_voxels']:,} voxels" in text and "Dice" in text and "per_slice" not in text


def test_spacing_gives_the_volume_in_ml(client, case_zip):
    *_, summary = predict_case(client, [case_zip], 0.05, "0.5, 0.5, 2")
    assert summary["spacing_mm"] == [0.5, 0.5, 2.0]
    assert summary["tumor_volume_ml"] == pytest.approx(summary["tumor_volume_voxels"] * 0.5 / 1000, abs=1e-4)
    text = predict_case(client, [case_zip], 0.05, "0.5 0.5 2")[0]
    assert f"{summary['tumor_volume_ml']:.2f} mL" in text
    with pytest.raises(Exception, match="three sizes in mm"):
        predict_case(client, [case_zip], 0.5, "1, 1")


def test_dollar_signs_in_names_are_plain_text(client, tmp_path):
    """Issue 10.6: `$` in slice names broke the plot (matplotlib maths); they are shown as written."""
    for name in ("a$^$b", "A$x^2$B"):
        z = zip_case(tmp_path, name, 3, 5)
        text, plot, *_, summary = predict_case(client, [z])
        assert summary["case"] == name and text.startswith(name)
        assert cv2.imread(plot) is not None


def test_viewer_frames_are_full_size_overlays(predictor, case_zip, tmp_path):
    out = webapp.analyze_case(predictor, [str(case_zip)], 0.05, "", tmp_path / "out")
    v = out.viewer
    assert v["numbers"] == list(range(1, 7)) and len(v["frames"]) == 6 and v["start"] in v["numbers"]
    frame = cv2.imread(webapp.viewer_frame(v, 3))
    assert frame.shape == (64, 64, 3)  # the slice's own size
    slider, first = webapp.first_frame(v)
    assert slider["minimum"] == 1 and slider["maximum"] == 6 and slider["value"] == v["start"]
    assert first == webapp.viewer_frame(v, v["start"])
    assert webapp.viewer_frame(v, 99) is None and webapp.viewer_frame(None, 1) is None


def test_example_case_is_small_and_loads(predictor, tmp_path):
    cases = app.find_example_cases(app.EXAMPLES_DIR)
    assert len(cases) == 1 and cases[0].stat().st_size < 400_000
    out = webapp.analyze_case(predictor, [str(cases[0])], None, "", tmp_path / "out")
    assert out.json["case"] == "TCGA_HT_A616_19991226" and out.json["slices"] == 13 and out.json["dice"] is not None
    assert cases[0].name in (app.EXAMPLES_DIR / "ATTRIBUTION.md").read_text()


def test_bad_case_gets_an_error_and_the_server_goes_on(client, case_zip, tmp_path):
    bad = tmp_path / "evil.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("../evil.tif", b"x")
    with pytest.raises(Exception, match=r"(?i)\.\.|path|member|unsafe"):
        predict_case(client, [bad])
    *_, summary = predict_case(client, [case_zip])
    assert summary["slices"] == 6


def test_a_case_upload_deleted_while_it_is_read_gets_the_expired_message(client, case_zip, tmp_path, monkeypatch):
    """An upload the sweeper deletes between two of its zip members (a call that waited in the queue past the
    cache age) is told to upload again, not "Zip member ... cannot be read ([Errno 2] ...)"; the server goes on."""
    from brainseg import safe_zip

    real = safe_zip._MemberReader.__call__

    def vanish(self):
        Path(self.path).unlink(missing_ok=True)  # as the sweeper would, mid-read
        return real(self)

    monkeypatch.setattr(safe_zip._MemberReader, "__call__", vanish)
    own = tmp_path / case_zip.name
    own.write_bytes(case_zip.read_bytes())
    with pytest.raises(Exception, match="no longer on the server"):
        predict_case(client, [own])
    monkeypatch.undo()
    *_, summary = predict_case(client, [case_zip])
    assert summary["slices"] == 6


def test_a_case_upload_swept_before_it_is_read_gets_the_expired_message(client, case_zip, tmp_path, monkeypatch):
    """Swept after the upload, before the analysis opens it: the expired message, not "Not found: <server path>"."""
    real = webapp.analyze_case

    def swept_first(predictor, files, *args):
        for f in files:
            Path(f).unlink()
        return real(predictor, files, *args)

    monkeypatch.setattr(webapp, "analyze_case", swept_first)
    with pytest.raises(Exception, match="no longer on the server") as e:
        predict_case(client, [case_zip])
    assert "/tmp" not in str(e.value) and "brainseg_app" not in str(e.value)
    monkeypatch.undo()
    *_, summary = predict_case(client, [case_zip])
    assert summary["slices"] == 6


def test_a_zip_that_vanishes_says_so(case_zip, tmp_path):
    """Outside the app too: the zip's own name and what happened, not a wrapped OS error with the path."""
    from brainseg import safe_zip
    from brainseg.images import DEFAULT_LIMITS

    own = tmp_path / "gone.zip"
    own.write_bytes(case_zip.read_bytes())
    members, _ = safe_zip.zip_members(own, DEFAULT_LIMITS, lambda n: True)
    own.unlink()
    with pytest.raises(FileNotFoundError, match="gone.zip is no longer there"):
        members[0][1]()


def test_a_dicom_series_through_the_api(client, tmp_path):
    """Issue 34: a zip of DICOM series in; a DICOM SEG, NIfTI, TIFF and CSV out; a series picked by name."""
    from brainseg.dicom_write import series_datasets, write_series_zip

    rng = np.random.default_rng(4)
    slices = [make_slice(rng, 64)[0] for _ in range(4)]
    z = write_series_zip(series_datasets(slices, (0.5, 0.5, 2.0)), tmp_path / "study.zip")
    text, *_, downloads, summary = client.submit([handle_file(str(z))], 0.5, "", "",
                                                 api_name="/predict_case").result(timeout=REQUEST_TIMEOUT)
    assert summary["source"] == "dicom" and summary["spacing_mm"] == [0.5, 0.5, 2.0] and summary["slices"] == 4
    assert sorted(Path(p).name for p in downloads) == ["study_masks.nii.gz", "study_masks.tif", "study_seg.dcm",
                                                       "study_slices.csv"]
    assert "stacked" in summary["input_note"] and "ImagePositionPatient" in text
    *_, summary = client.submit([handle_file(str(z))], 0.5, "", "AX FLAIR",
                                api_name="/predict_case").result(timeout=REQUEST_TIMEOUT)
    assert "FLAIR alone" in summary["input_note"]
    with pytest.raises(Exception, match="no series match SeriesDescription 'T2'"):
        client.submit([handle_file(str(z))], 0.5, "", "T2", api_name="/predict_case").result(timeout=REQUEST_TIMEOUT)
