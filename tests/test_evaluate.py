"""brainseg.evaluate: the metric dictionary, the split filter, per-case Dice at original resolution, the CLI."""
import json
import math
import re

import numpy as np
import pytest

from brainseg.data import find_cases, make_split, read_image, read_mask, save_split
from brainseg.evaluate import evaluate, main, run, to_json
from brainseg.metrics import dice_score, iou_score
from conftest import FakePredictor, write_case

SEG_KEYS = {"dice_per_case_mean", "dice_per_case_median", "dice_tumor_slices_mean", "iou_per_case_mean",
            "false_positive_slices"}
DET_KEYS = {"auroc", "accuracy", "sensitivity", "specificity", "threshold"}


@pytest.fixture(scope="module")
def result(synth_root, predictor):
    return evaluate(synth_root, predictor, batch_size=5)


def check_required_keys(r):
    assert isinstance(r["cases"], int) and isinstance(r["slices"], int)
    assert SEG_KEYS <= set(r["seg"]) and DET_KEYS <= set(r["det"])
    assert isinstance(r["seg"]["false_positive_slices"], int)
    for k in SEG_KEYS - {"false_positive_slices"}:
        assert isinstance(r["seg"][k], float)
    for k in DET_KEYS:
        assert r["det"][k] is None or isinstance(r["det"][k], float)
    assert isinstance(r["seconds_per_slice"], float)


def test_required_keys_and_types(result):
    check_required_keys(result)
    assert result["cases"] == 6 and result["slices"] == 72
    assert result["tumor_slices"] == 30  # write_case: slices 4..9 of 12 hold tumour
    assert 0 < result["seconds_per_slice"] < 5
    assert result["det"]["threshold"] == 0.5  # the classifier config's
    assert 0 <= result["seg"]["dice_per_case_mean"] <= 1 and 0 <= result["det"]["auroc"] <= 1
    assert set(result["per_case"]) == {c.name for c in find_cases(result["data_dir"])}
    assert result["sources"]["segmenter"].endswith("segmenter")


def test_per_case_dice_is_over_the_stack(synth_root, predictor, result):
    differ = 0
    for case in find_cases(synth_root):
        images = [read_image(p) for p in case.images]
        truth = np.stack([read_mask(p) for p in case.masks])
        pred = np.stack([p.mask for p in predictor.predict_batch(images)])
        got = result["per_case"][case.name]
        assert got["dice"] == pytest.approx(dice_score(pred, truth))
        assert got["iou"] == pytest.approx(iou_score(pred, truth))
        assert got["gt_voxels"] == int(truth.sum()) and got["pred_voxels"] == int(pred.sum())
        differ += got["dice"] != pytest.approx(np.mean([dice_score(p, t) for p, t in zip(pred, truth)]))
    assert differ  # the untrained model makes the two differ


def test_split_restricts_to_val_cases(synth_root, predictor, tmp_path):
    split = make_split(find_cases(synth_root), 0.2, seed=1)
    path = tmp_path / "split.json"
    save_split(split, path)
    r = evaluate(synth_root, predictor, split=path)
    assert set(r["per_case"]) == set(split["val"]) and r["cases"] == len(split["val"]) == 3
    assert r["slices"] == 12 * len(split["val"])
    assert evaluate(synth_root, predictor, split=split)["per_case"] == r["per_case"]  # a loaded dict works too


class OraclePredictor(FakePredictor):
    """Answers with the ground truth for chosen slices and an empty mask elsewhere: results known by hand."""

    def __init__(self, root, empty_slices):
        truth = {}
        for c in find_cases(root):
            for p, m in zip(c.images, c.masks):
                truth[read_image(p).tobytes()] = read_mask(m)

        def pixel_map(im):
            m = truth[np.asarray(im).tobytes()].astype(np.float32)
            return 0 * m if m.sum() in empty_slices else m

        super().__init__(pixel_map, image_size=32)


def test_hand_computed_metrics_with_an_oracle(tmp_path):
    rng = np.random.default_rng(5)
    write_case(tmp_path, "TCGA_CS_0001_2000", 4, rng, size=32, tumor_slices=[2, 3])
    write_case(tmp_path, "TCGA_DU_0002_2000", 3, rng, size=32, tumor_slices=[])
    case = find_cases(tmp_path)[0]
    areas = [int(read_mask(m).sum()) for m in case.masks]
    assert areas[0] == areas[3] == 0 and areas[1] > 0 and areas[2] > 0 and areas[1] != areas[2]
    # the oracle misses slice 3's tumour entirely
    r = evaluate(tmp_path, OraclePredictor(tmp_path, empty_slices={areas[2]}))
    dice_case = 2 * areas[1] / (areas[1] + areas[1] + areas[2])
    assert r["per_case"]["TCGA_CS_0001_2000"]["dice"] == pytest.approx(dice_case)
    assert r["per_case"]["TCGA_DU_0002_2000"]["dice"] == 1.0  # nothing to find, nothing found
    assert r["seg"]["dice_per_case_mean"] == pytest.approx((dice_case + 1) / 2)
    assert r["seg"]["dice_tumor_slices_mean"] == pytest.approx(0.5)  # slice Dice 1 and 0
    assert r["seg"]["false_positive_slices"] == 0
    # detection: 2 tumour slices of 7, one found, no false alarm; threshold from the segmenter without a classifier
    assert r["det"]["sensitivity"] == 0.5 and r["det"]["specificity"] == 1.0
    assert r["det"]["accuracy"] == pytest.approx(6 / 7) and r["det"]["threshold"] == 0.5
    assert r["det"]["auroc"] == pytest.approx(0.75)  # scores 1/0 on positives, 0 on all negatives


def test_masks_compared_at_original_resolution(tmp_path, predictor):
    write_case(tmp_path, "TCGA_HT_0001_2000", 3, np.random.default_rng(1), size=96)  # model input is 64
    r = evaluate(tmp_path, predictor, keep_slices=True)
    truth = sum(int(read_mask(m).sum()) for m in find_cases(tmp_path)[0].masks)
    assert r["per_case"]["TCGA_HT_0001_2000"]["gt_voxels"] == truth
    assert r["per_case"]["TCGA_HT_0001_2000"]["pred_voxels"] <= 3 * 96 * 96
    assert [d["slice"] for d in r["slices_detail"]] == [1, 2, 3]
    assert [d["label"] for d in r["slices_detail"]] == [int(d["true_px"] > 0) for d in r["slices_detail"]]


def test_threshold_argument_changes_the_masks(synth_root, predictor, result):
    everything = evaluate(synth_root, predictor, threshold=0.0, keep_slices=True)  # every probability is >= 0
    assert everything["seg"]["pixel_threshold"] == 0.0 and result["seg"]["pixel_threshold"] == 0.5
    detected = [d for d in everything["slices_detail"] if d["probability"] >= everything["det"]["threshold"]]
    assert 0 < len(detected) < 72  # a mask is drawn iff the slice is detected: whole slices at threshold 0
    assert all(d["pred_px"] == (64 * 64 if d in detected else 0) for d in everything["slices_detail"])
    assert everything["seg"]["false_positive_slices"] == sum(d["label"] == 0 for d in detected)
    assert everything["det"] == result["det"]  # detection comes from the classifier, not the pixel threshold


def test_empty_or_missing_folder_names_the_path(tmp_path, predictor):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path))):
        evaluate(tmp_path, predictor)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope"))):
        evaluate(tmp_path / "nope", predictor)


def test_cli_writes_json_and_prints_table(synth_root, tiny_checkpoints, tmp_path, capsys):
    split = make_split(find_cases(synth_root), 0.2, seed=2)
    save_split(split, tmp_path / "split.json")
    out = tmp_path / "eval" / "metrics.json"
    main([str(synth_root), "--segmenter", str(tiny_checkpoints["segmenter"]), "--classifier",
          str(tiny_checkpoints["classifier"]), "--split", str(tmp_path / "split.json"), "--json", str(out),
          "--batch-size", "4"])
    data = json.loads(out.read_text())
    check_required_keys(data)
    assert data["cases"] == 3 and set(data["per_case"]) == set(split["val"])
    printed = capsys.readouterr().out
    assert "dice_per_case_mean" in printed and split["val"][0] in printed


def test_cli_missing_folder_exits_with_the_path(tmp_path, tiny_checkpoints, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "nowhere"), "--segmenter", str(tiny_checkpoints["segmenter"])])
    assert e.value.code == 2
    assert str(tmp_path / "nowhere") in capsys.readouterr().err


def test_json_writes_undefined_metrics_as_null():
    result = {"det": {"auroc": float("nan"), "accuracy": np.float64(0.5)}, "n": 3}
    assert json.loads(to_json(result)) == {"det": {"auroc": None, "accuracy": 0.5}, "n": 3}
    assert math.isnan(result["det"]["auroc"])  # the result itself keeps its NaN


def test_cli_shows_a_bar_over_the_cases_and_takes_a_subset(synth_root, tiny_checkpoints, tmp_path, capsys):
    """Issue 9.8: the command printed nothing until it ended; the README shows how to evaluate a subset."""
    models = ["--segmenter", str(tiny_checkpoints["segmenter"]), "--classifier", str(tiny_checkpoints["classifier"])]
    r = run([str(synth_root), "--cases", "TCGA_DU_*", "TCGA_CS_0001_20000101"] + models)
    assert set(r["per_case"]) == {"TCGA_DU_0003_20000101", "TCGA_DU_0004_20000101", "TCGA_CS_0001_20000101"}
    err = capsys.readouterr().err
    assert "3 cases, 36 slices to evaluate" in err
    assert "evaluating" in err and "3/3" in err and "36 slices" in err  # the tqdm bar, on stderr
    assert main([str(synth_root), "--cases", "TCGA_HT_0005_20000101", "--quiet"] + models) == 0
    assert "evaluating" not in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([str(synth_root), "--cases", "TCGA_XX_*"] + models)
    assert e.value.code == 2 and "matches 'TCGA_XX_*'" in capsys.readouterr().err
