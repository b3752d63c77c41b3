"""Whole-case analysis through the brainseg.cases names (kept for one release); reading and writing cases:
tests/test_case_io.py."""
import json
import random
import zipfile
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import tifffile

from brainseg.cases import (CaseInput, analyze_case, case_montage, load_case, plot_probabilities,
                            predict_case_files, summarize, write_mask_tiff)
from brainseg.data import find_cases, read_image, read_mask
from brainseg.inference import Prediction, Predictor
from brainseg.metrics import dice_score
from conftest import make_slice

CASE = "TCGA_CS_0001_20000101"


class FlairOracle:
    """A stand-in predictor that segments the synthetic tumours exactly (make_slice paints FLAIR 220 there)."""

    classifier = None
    seg_cfg = SimpleNamespace(threshold=0.5)

    def predict_batch(self, images, threshold=None, batch_size=16):
        out = []
        for im in images:
            m = (np.asarray(im)[..., 1] >= 200).astype(np.uint8)
            out.append(Prediction(float(m.any()), bool(m.any()), m, list(im.shape)))
        return out


@pytest.fixture(scope="module")
def predictor(tiny_checkpoints):
    return Predictor.from_sources(str(tiny_checkpoints["segmenter"]), str(tiny_checkpoints["classifier"]))


@pytest.fixture(scope="module")
def case_dir(synth_root):
    return synth_root / CASE


def zip_folder(folder: Path, path: Path, prefix: str = None) -> Path:
    prefix = folder.name if prefix is None else prefix
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.iterdir()):
            zf.write(p, f"{prefix}/{p.name}" if prefix else p.name)
    return path



class _ThresholdOracle(FlairOracle):
    def __init__(self, level):
        self.level = level

    def predict_batch(self, images, threshold=None, batch_size=16):
        out = []
        for im in images:
            m = (np.asarray(im)[..., 0] > self.level).astype(np.uint8)
            out.append(Prediction(float(m.any()), bool(m.any()), m, list(im.shape)))
        return out


# ---------------------------------------------------------------- analysis and writers

def test_oracle_volume_largest_slice_and_summary(case_dir, tmp_path):
    case = load_case(case_dir)
    truth = np.stack(case.masks)
    result = analyze_case(FlairOracle(), case)
    areas = truth.reshape(len(truth), -1).sum(1)
    assert result.volume_voxels == int(truth.sum()) == sum(result.areas_px)
    assert result.largest_area_slice == case.slice_numbers[int(np.argmax(areas))]
    assert result.largest_area_px == int(areas.max())
    assert result.dice == 1.0 and result.slice_dice == [1.0] * 12 and result.volume_ml is None

    s = summarize(result)
    json.dumps(s, allow_nan=False)
    assert s["case"] == CASE and s["slices"] == 12 and s["tumor_slices"] == int((areas > 0).sum())
    assert s["tumor_volume_voxels"] == int(truth.sum()) and s["tumor_volume_ml"] is None and s["dice"] == 1.0
    assert [p["slice"] for p in s["per_slice"]] == list(range(1, 13))
    assert [p["tumor_area_px"] for p in s["per_slice"]] == areas.tolist()
    assert set(s["per_slice"][0]) >= {"slice", "tumor_probability", "tumor_detected", "tumor_area_px"}

    spaced = CaseInput(case.name, case.slices, case.slice_numbers, None, (0.5, 0.5, 2.0))
    r2 = analyze_case(FlairOracle(), spaced)
    assert r2.volume_ml == pytest.approx(truth.sum() * 0.5 / 1000) and r2.dice is None
    assert summarize(r2)["dice"] is None and summarize(r2)["per_slice"][0]["dice"] is None


def test_case_dice_equals_evaluate(synth_root, case_dir, predictor, tmp_path):
    """The per-case Dice of analyze_case is brainseg.evaluate's, for the same case, folder or zip."""
    from brainseg.evaluate import evaluate

    case = load_case(zip_folder(case_dir, tmp_path / "case.zip"))
    probs = predictor.segment_probs(case.slices[4:8]).numpy()
    thr = float(np.percentile(probs, 90))  # untrained tiny model: pick a threshold that gives partial masks
    ours = analyze_case(predictor, case, threshold=thr)
    theirs = evaluate(synth_root, predictor, split={"train": [], "val": [CASE]}, threshold=thr)
    assert 0 < ours.volume_voxels and 0 < ours.dice < 1
    assert ours.dice == theirs["per_case"][CASE]["dice"]
    assert ours.volume_voxels == theirs["per_case"][CASE]["pred_voxels"]
    assert analyze_case(predictor, load_case(case_dir), threshold=thr).dice == ours.dice


def test_predict_case_files_outputs(case_dir, predictor, tmp_path):
    z = zip_folder(case_dir, tmp_path / "case.zip")
    summary, plot, montage, masks = predict_case_files(predictor, [z], 0.47, tmp_path / "out")
    assert {Path(p).parent for p in (plot, montage, masks)} == {tmp_path / "out"}
    assert cv2.imread(plot) is not None and cv2.imread(montage).shape == (2 * 128, 8 * 128, 3)
    pages = tifffile.imread(masks)
    assert pages.shape == (12, 64, 64) and pages.dtype == np.uint8 and set(np.unique(pages)) <= {0, 255}
    assert [int(v) for v in (pages > 0).reshape(12, -1).sum(1)] == [p["tumor_area_px"] for p in summary["per_slice"]]
    assert json.loads((tmp_path / "out" / f"{CASE}_summary.json").read_text()) == summary
    assert summary["dice"] is not None and summary["threshold"] == 0.47


def test_montage_and_plot_without_masks(tmp_path):
    rng = np.random.default_rng(0)
    case = CaseInput("grey", [make_slice(rng, 40)[0][..., 1:2] for _ in range(3)], [7, 8, 9])
    result = analyze_case(_ThresholdOracle(200), case)
    grid = case_montage(case, result)
    assert grid.shape == (128, 3 * 128, 3)
    plot_probabilities(result, tmp_path / "p.png")
    write_mask_tiff(result, tmp_path / "m.tif")
    assert tifffile.imread(tmp_path / "m.tif").shape == (3, 40, 40)


EXAMPLES = sorted(p for p in (Path(__file__).resolve().parent.parent / "examples").glob("*.png")
                  if not p.stem.endswith("_mask"))


@pytest.mark.skipif(not EXAMPLES, reason="no examples/*.png")
def test_example_slices_as_a_case(predictor, tmp_path):
    """The shipped example slices (from different patients) stacked as one case, with their masks."""
    paths = []
    for k, p in enumerate(EXAMPLES, start=1):
        paths.append(tmp_path / f"examples_{k}.png")
        paths[-1].write_bytes(p.read_bytes())
        truth = p.with_name(p.stem + "_mask.png")
        if truth.exists():
            paths.append(tmp_path / f"examples_{k}_mask.png")
            paths[-1].write_bytes(truth.read_bytes())
    random.Random(0).shuffle(paths)
    case = load_case(paths)
    assert case.slice_numbers == list(range(1, len(EXAMPLES) + 1))
    for got, p in zip(case.slices, EXAMPLES):
        np.testing.assert_array_equal(got, read_image(p))
    summary, plot, montage, masks = predict_case_files(predictor, paths, None, tmp_path / "out")
    assert summary["slices"] == len(EXAMPLES) and tifffile.imread(masks).shape[0] == len(EXAMPLES)
    if case.masks is not None:
        pred = tifffile.imread(masks) > 0
        ref = analyze_case(predictor, case)
        assert summary["dice"] == pytest.approx(dice_score(pred, np.stack(case.masks)), abs=1e-6) == ref.dice


def test_gated_slices_skip_the_segmenter_with_the_same_answer(tiny_checkpoints, case_dir):
    from brainseg.cases import predict_slices

    p = Predictor.from_sources(str(tiny_checkpoints["segmenter"]), str(tiny_checkpoints["classifier"]))
    case = load_case(case_dir)
    probs = p.classify(case.slices)
    thr = float(np.percentile(p.segment_probs(case.slices[:4]).numpy(), 80))
    p.segmenter.config.gate_threshold = float(np.median(probs))  # about half the slices pass
    seen = []
    segment = p.segment_probs
    p.segment_probs = lambda images: seen.append(len(images)) or segment(images)
    fast = predict_slices(p, case.slices, thr)
    assert 0 < sum(seen) < len(case)
    p.segment_probs = segment
    plain = p.predict_batch(case.slices, thr)
    assert any(f.mask.any() for f in fast)
    for f, q in zip(fast, plain):
        np.testing.assert_array_equal(f.mask, q.mask)
        assert f.tumor_probability == pytest.approx(q.tumor_probability, abs=1e-6)
        assert (f.tumor_detected, f.input_shape, f.channels_replicated) == (q.tumor_detected, q.input_shape,
                                                                            q.channels_replicated)
