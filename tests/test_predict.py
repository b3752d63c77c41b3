"""python -m brainseg.predict: a slice, a case folder, a kaggle_3m folder, a zip; bad input; nothing outside --out."""
import csv
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from brainseg.data import read_mask
from brainseg.metrics import dice_score
from brainseg.predict import CSV_FIELDS, main
from conftest import ROOT, SYNTH_CASES, make_slice

CASE = SYNTH_CASES[0]


@pytest.fixture(scope="module")
def models(tiny_checkpoints):
    return ["--segmenter", str(tiny_checkpoints["segmenter"]), "--classifier", str(tiny_checkpoints["classifier"])]


def read_csv(out: Path):
    with open(out / "predictions.csv", newline="") as f:
        r = csv.DictReader(f)
        assert r.fieldnames == CSV_FIELDS
        return list(r)


def files_under(path: Path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def test_single_slice_with_truth_beside_it(synth_root, models, tmp_path):
    out = tmp_path / "out"
    assert main([str(synth_root / CASE / f"{CASE}_5.tif"), "--out", str(out)] + models) == 0
    assert files_under(out) == sorted(["predictions.csv", f"{CASE}/{CASE}_5_mask.tif", f"{CASE}/{CASE}_masks.tif",
                                       f"{CASE}/{CASE}_masks.nii.gz", f"{CASE}/{CASE}_slices.csv",
                                       f"{CASE}/{CASE}_summary.json"])
    mask = cv2.imread(str(out / CASE / f"{CASE}_5_mask.tif"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (64, 64) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    (row,) = read_csv(out)
    assert (row["case"], row["slice"]) == (CASE, "5") and int(row["tumor_area_px"]) == int((mask > 0).sum())
    truth = read_mask(synth_root / CASE / f"{CASE}_5_mask.tif")
    assert float(row["dice"]) == pytest.approx(dice_score(mask > 0, truth), abs=1e-6)


def test_case_folder_with_figures(synth_root, models, tmp_path):
    out = tmp_path / "out"
    assert main([str(synth_root / CASE), "--out", str(out), "--threshold", "0.47", "--figures"] + models) == 0
    names = files_under(out / CASE)
    assert [f"{CASE}_{n}_mask.tif" for n in range(1, 13)] == sorted(
        (n for n in names if n.endswith("_mask.tif")), key=lambda s: int(s.split("_")[-2]))
    assert f"{CASE}_probability.png" in names and f"{CASE}_overlays.png" in names
    rows = read_csv(out)
    assert [int(r["slice"]) for r in rows] == list(range(1, 13)) and all(r["dice"] != "" for r in rows)
    summary = json.loads((out / CASE / f"{CASE}_summary.json").read_text())
    pred = np.stack([read_mask(out / CASE / f"{CASE}_{n}_mask.tif") for n in range(1, 13)])
    truth = np.stack([read_mask(synth_root / CASE / f"{CASE}_{n}_mask.tif") for n in range(1, 13)])
    assert summary["tumor_volume_voxels"] == int(pred.sum()) and summary["threshold"] == 0.47
    assert summary["dice"] == pytest.approx(dice_score(pred, truth), abs=1e-6)


def test_kaggle_folder(synth_root, models, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(synth_root), "--out", str(out)] + models) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(SYNTH_CASES)
    rows = read_csv(out)
    assert len(rows) == 6 * 12 and {r["case"] for r in rows} == set(SYNTH_CASES)
    printed = capsys.readouterr()
    assert "mean per-case Dice over 6 case(s)" in printed.out
    # issue 9.8: the count first, a bar over the cases, and each case's line numbered as it ends
    assert "6 cases to predict" in printed.err and "predicting" in printed.err and "6/6" in printed.err
    assert [line.split("]")[0] for line in printed.out.splitlines() if line.startswith("[")] == [
        f"[{k}/6" for k in range(1, 7)]
    stacked = tifffile.imread(out / CASE / f"{CASE}_masks.tif")  # the app's download, from the same writer
    np.testing.assert_array_equal(stacked > 0, np.stack([read_mask(out / CASE / f"{CASE}_{n}_mask.tif")
                                                         for n in range(1, 13)]) > 0)
    assert main([str(synth_root), "--out", str(tmp_path / "quiet"), "--quiet"] + models) == 0
    assert "predicting" not in capsys.readouterr().err


def test_a_bad_case_in_a_kaggle_folder_is_skipped(synth_root, models, tmp_path, capsys):
    root = tmp_path / "root"
    shutil.copytree(synth_root / SYNTH_CASES[0], root / SYNTH_CASES[0])
    shutil.copytree(synth_root / SYNTH_CASES[1], root / SYNTH_CASES[1])
    for p in (root / SYNTH_CASES[1]).glob("*_7*.tif"):
        p.unlink()
    out = tmp_path / "out"
    assert main([str(root), "--out", str(out)] + models) == 2
    assert "Missing slice number(s) 7" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [SYNTH_CASES[0]]
    assert len(read_csv(out)) == 12


def test_zip_and_unnumbered_png(synth_root, models, tmp_path):
    z = tmp_path / "case.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in (synth_root / CASE).iterdir():
            zf.write(p, f"{CASE}/{p.name}")
    assert main([str(z), "--out", str(tmp_path / "a"), "--spacing", "1", "1", "2.5"] + models) == 0
    summary = json.loads((tmp_path / "a" / CASE / f"{CASE}_summary.json").read_text())
    assert summary["slices"] == 12 and summary["tumor_volume_ml"] == pytest.approx(summary["tumor_volume_voxels"] * 2.5e-3)

    png = tmp_path / "brain scan.png"
    cv2.imwrite(str(png), make_slice(np.random.default_rng(0), 40)[0])
    assert main([str(png), "--out", str(tmp_path / "b")] + models) == 0
    assert files_under(tmp_path / "b") == ["brain_scan/brain_scan_1_mask.tif", "brain_scan/brain_scan_masks.nii.gz",
                                           "brain_scan/brain_scan_masks.tif", "brain_scan/brain_scan_slices.csv",
                                           "brain_scan/brain_scan_summary.json", "predictions.csv"]


def test_traversal_in_a_zip_is_refused_and_nothing_is_written(models, tmp_path, capsys):
    z = tmp_path / "evil.zip"
    img = cv2.imencode(".tif", make_slice(np.random.default_rng(0), 32)[0])[1].tobytes()
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("c/c_1.tif", img)
        zf.writestr("../../evil_2.tif", img)
    out = tmp_path / "sub" / "out"
    with pytest.raises(SystemExit) as e:
        main([str(z), "--out", str(out)] + models)
    assert e.value.code == 2 and "path traversal" in capsys.readouterr().err
    assert files_under(tmp_path) == ["evil.zip"]


def test_case_names_cannot_escape_out(models, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    cv2.imwrite(str(src / ".._1.tif"), make_slice(np.random.default_rng(0), 32)[0])  # case name '..'
    out = tmp_path / "out"
    assert main([str(src / ".._1.tif"), "--out", str(out)] + models) == 0
    assert files_under(out) == ["case/case_1_mask.tif", "case/case_masks.nii.gz", "case/case_masks.tif",
                                "case/case_slices.csv", "case/case_summary.json", "predictions.csv"]

    outside = tmp_path / "outside"
    outside.mkdir()
    out2 = tmp_path / "out2"
    out2.mkdir()
    os.symlink(outside, out2 / "case")  # a link planted where the case folder goes
    with pytest.raises(SystemExit) as e:
        main([str(src / ".._1.tif"), "--out", str(out2)] + models)
    assert e.value.code == 2 and list(outside.iterdir()) == []


def test_bad_input_exits_nonzero_with_a_message(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    missing = subprocess.run([sys.executable, "-m", "brainseg.predict", str(tmp_path / "nope"), "--out",
                              str(tmp_path / "out")], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert missing.returncode == 2 and "Input not found" in missing.stderr
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "empty"), "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    assert not (tmp_path / "out").exists()


def test_out_pointing_at_the_input_never_overwrites_ground_truth(synth_root, models, tmp_path, capsys):
    root = tmp_path / "root"
    for name in SYNTH_CASES[:2]:
        shutil.copytree(synth_root / name, root / name)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    for argv in ([str(root / CASE), "--out", str(root)], [str(root / CASE / f"{CASE}_3.tif"), "--out", str(root)],
                 [str(root), "--out", str(root)]):
        with pytest.raises(SystemExit) as e:
            main(argv + models)
        assert e.value.code == 2 and "its _mask files would be overwritten" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


def test_a_planted_input_folder_under_out_is_not_overwritten(synth_root, models, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(synth_root / CASE, out / CASE)  # a case folder already sitting in --out
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit) as e:
        main([str(synth_root / CASE), "--out", str(out)] + models)
    assert e.value.code == 2 and "Refusing to write into" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
