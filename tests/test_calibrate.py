"""brainseg.calibrate and fused detection: the fit recovers known weights, the Predictor applies the
stored fusion exactly, and the calibration CLI writes it into the checkpoints it ships."""
import json
import re

import numpy as np
import pytest
import torch

from brainseg.calibrate import calibrate as calibrate_main, fit_fusion, fit_temperature, leave_one_case_out, main
from brainseg.data import find_cases, make_split, read_image, save_split
from brainseg.decision import fuse_detection, segmenter_evidence
from brainseg.inference import Predictor
from brainseg.models import ResUNet, TumorClassifier
from brainseg.preprocess import preprocess


def test_fit_fusion_recovers_known_weights():
    rng = np.random.default_rng(0)
    logits, evidence = rng.normal(size=20000), rng.normal(size=20000)
    true = [1.5, -0.7, 0.3]
    p = 1 / (1 + np.exp(-(true[0] * logits + true[1] * evidence + true[2])))
    labels = (rng.random(20000) < p).astype(np.int64)
    assert fit_fusion(logits, evidence, labels) == pytest.approx(true, abs=0.08)


def test_fit_fusion_ignores_useless_evidence():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=5000)
    labels = (rng.random(5000) < 1 / (1 + np.exp(-2 * logits))).astype(np.int64)
    w = fit_fusion(logits, rng.normal(size=5000), labels)
    assert abs(w[1]) < 0.1 and w[0] == pytest.approx(2.0, abs=0.15)


def test_leave_one_case_out_never_sees_the_held_case():
    rng = np.random.default_rng(2)
    cases = np.repeat(["a", "b", "c"], 200)
    logits, evidence = rng.normal(size=600), rng.normal(size=600)
    labels = (logits > 0).astype(np.int64)
    labels[cases == "c"] = 1 - labels[cases == "c"]  # case c contradicts the others
    loco = leave_one_case_out(logits, evidence, labels, cases)
    held_c = loco[cases == "c"]
    # fitted without c, the held-out probabilities follow a and b, so they are wrong on c
    assert np.mean((held_c > 0.5) == labels[cases == "c"]) < 0.1


def test_segmenter_evidence_is_the_logit_of_the_top_k_mean():
    probs = torch.zeros(2, 8, 8)
    probs[0, :2, :2] = 0.9  # 4 pixels at 0.9
    ev = segmenter_evidence(probs, top_k=4)
    assert ev[0].item() == pytest.approx(np.log(0.9 / 0.1), abs=1e-4)
    assert ev[1].item() == pytest.approx(np.log(1e-4 / (1 - 1e-4)), abs=1e-3)  # clamped, finite
    assert segmenter_evidence(probs, top_k=1000).shape == (2,)  # k larger than the image


def test_temperature_fit_undoes_a_known_scaling():
    rng = np.random.default_rng(3)
    z = rng.normal(scale=2.0, size=20000)
    labels = (rng.random(20000) < 1 / (1 + np.exp(-z))).astype(np.int64)
    assert fit_temperature(z * 3.0, labels) == pytest.approx(3.0, rel=0.05)


def _fused_predictor(tiny_checkpoints, weights):
    seg = ResUNet.from_pretrained(tiny_checkpoints["segmenter"])
    clf = TumorClassifier.from_pretrained(tiny_checkpoints["classifier"])
    clf.config.fusion_weights, clf.config.fusion_threshold, clf.config.fusion_top_k = weights, 0.37, 20
    return Predictor(seg, clf, precision="fp32")


def test_predictor_applies_the_stored_fusion(tiny_checkpoints, synth_root):
    images = [read_image(p) for p in find_cases(synth_root)[0].images[:5]]
    pred = _fused_predictor(tiny_checkpoints, [0.8, 0.5, -0.2])
    assert pred.fused and pred.detection_threshold == 0.37
    x_seg = torch.stack([preprocess(im, pred.seg_cfg) for im in images])
    x_clf = torch.stack([preprocess(im, pred.classifier.config) for im in images])
    with torch.no_grad():
        ev = segmenter_evidence(torch.sigmoid(pred.segmenter(x_seg))[:, 0], 20)
        expected = torch.sigmoid(0.8 * pred.classifier(x_clf)[:, 0] + 0.5 * ev - 0.2).numpy()
    got = [p.probability for p in pred.predict_batch(images)]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert [p.detected for p in pred.predict_batch(images)] == list(expected >= 0.37)


def test_without_fusion_weights_the_classifier_alone_decides(tiny_checkpoints, synth_root):
    images = [read_image(p) for p in find_cases(synth_root)[0].images[:3]]
    pred = _fused_predictor(tiny_checkpoints, None)
    assert not pred.fused and pred.detection_threshold == pred.classifier.config.threshold
    np.testing.assert_allclose([p.probability for p in pred.predict_batch(images)], pred.classify(images),
                               rtol=1e-6)


def test_fuse_detection_matches_the_formula():
    out = fuse_detection(torch.tensor([0.0, 2.0]), torch.tensor([1.0, -1.0]), [1.0, 2.0, -0.5])
    np.testing.assert_allclose(out.numpy(), 1 / (1 + np.exp(-np.array([1.5, -0.5]))), rtol=1e-6)


def run_calibration(tiny_checkpoints, synth_root, tmp_path, *extra):
    """calibrate's CLI on a fixed split of the synthetic cases: (report, split, segmenter dir, classifier dir)."""
    split = make_split(find_cases(synth_root), 0.34, seed=0)
    save_split(split, tmp_path / "split.json")
    out_seg, out_clf = tmp_path / "out" / "segmenter", tmp_path / "out" / "classifier"
    report = calibrate_main(["--data", str(synth_root), "--split", str(tmp_path / "split.json"),
                             "--segmenter", str(tiny_checkpoints["segmenter"]),
                             "--classifier", str(tiny_checkpoints["classifier"]), "--out", str(tmp_path / "out"), *extra])
    return report, split, out_seg, out_clf


def test_calibrate_cli_writes_fusion_and_rules_from_validation_cases(tiny_checkpoints, synth_root, tmp_path):
    report, _, out_seg, out_clf = run_calibration(tiny_checkpoints, synth_root, tmp_path, "--fp16")
    clf_cfg = json.loads((out_clf / "config.json").read_text())
    seg_cfg = json.loads((out_seg / "config.json").read_text())
    fusion = report["classifier"]["fusion"]
    assert clf_cfg["fusion_weights"] == pytest.approx(fusion["weights"])
    assert clf_cfg["fusion_threshold"] == fusion["threshold"]
    assert clf_cfg["temperature"] == report["classifier"]["temperature"]
    for k in ("threshold", "min_component_px", "tta_flip"):
        assert seg_cfg[k] == report["segmenter"]["chosen"][k]
    assert {"leave_one_case_out_auroc", "auroc_segmenter_evidence_alone", "ece", "at_threshold"} <= set(fusion)
    metrics = json.loads((out_clf / "metrics.json").read_text())
    assert metrics["calibration"]["fusion"]["weights"] == pytest.approx(fusion["weights"])
    assert metrics["weights_dtype"] == "float16"
    reloaded = Predictor.from_sources(str(out_seg), str(out_clf))
    assert reloaded.fused and reloaded.detection_threshold == fusion["threshold"]


def test_precision_is_resolved_and_checked(monkeypatch, tiny_checkpoints):
    from brainseg.precision import resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("BF16", cpu) == "bf16"
    monkeypatch.setenv("BRAINSEG_PRECISION", "fp32")
    assert resolve_precision(None, cpu) == "fp32"
    monkeypatch.setattr("brainseg.precision.cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setattr("brainseg.precision.cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", cpu) == "bf16"
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp8", cpu)


def test_bf16_masks_agree_with_fp32(tiny_checkpoints, synth_root):
    images = [read_image(p) for p in find_cases(synth_root)[1].images]
    preds = {}
    for precision in ("fp32", "bf16"):
        p = Predictor.from_sources(str(tiny_checkpoints["segmenter"]), str(tiny_checkpoints["classifier"]),
                                   precision=precision)
        assert p.precision == precision
        preds[precision] = p.segment_probs(images)
    assert (preds["fp32"] - preds["bf16"]).abs().max().item() < 0.02


def test_calibration_scores_the_masks_the_predictor_draws(tiny_checkpoints, synth_root, tmp_path):
    """One rule in one place: the Dice calibration reports for its chosen rules is the Dice that
    brainseg.evaluate measures with the checkpoints it wrote (fp32 weights, the same validation cases)."""
    from brainseg.evaluate import evaluate

    report, split, out_seg, out_clf = run_calibration(tiny_checkpoints, synth_root, tmp_path,
                                                      "--json", str(tmp_path / "eval_held_out.json"))
    chosen = report["segmenter"]["chosen"]
    p = Predictor.from_sources(str(out_seg), str(out_clf), precision="fp32")
    r = evaluate(synth_root, p, split=split)
    assert r["seg"]["dice_per_case_mean"] == pytest.approx(chosen["dice_per_case_mean"], abs=1e-6)
    assert r["seg"]["false_positive_slices"] == chosen["false_positive_slices"]
    assert r["det"]["threshold"] == report["classifier"]["fusion"]["threshold"] == round(r["det"]["threshold"], 4)
    # calibrate's own held-out evaluation JSON says what brainseg.evaluate says, in its layout
    held = json.loads((tmp_path / "eval_held_out.json").read_text())
    assert set(held) == set(r) - {"slices_detail", "input_check"}  # the out-of-fold rows are not input-checked
    for block in ("seg", "det"):
        assert held[block] == pytest.approx(r[block], abs=1e-6)
    assert held["per_case"].keys() == r["per_case"].keys() and held["slices"] == r["slices"]
    assert held["ece"] == pytest.approx(r["ece"], abs=1e-6)


# ---------------------------------------------------------------- out-of-fold calibration (--cv)

def _fold_runs(tmp_path, synth_root, k=3):
    """Fold folders as train.py --folds writes them: tiny untrained models and each fold's split.json."""
    from brainseg.config import ClassifierConfig, SegmenterConfig
    from brainseg.data import fold_split, make_folds

    folds = make_folds(find_cases(synth_root), k=k, seed=0)
    for f in range(k):
        torch.manual_seed(f)
        ResUNet(SegmenterConfig(encoder="test_resnet", image_size=64)).save_pretrained(tmp_path / f"segmenter_{f}")
        TumorClassifier(ClassifierConfig(encoder="test_resnet", image_size=64)).save_pretrained(
            tmp_path / f"classifier_{f}")
        save_split(fold_split(folds, f), tmp_path / f"segmenter_{f}" / "split.json")
    return folds


def test_cv_calibration_chooses_on_every_case_of_the_folds(tiny_checkpoints, synth_root, tmp_path):
    folds = _fold_runs(tmp_path / "cv", synth_root)
    out_seg, out_clf = tmp_path / "out" / "segmenter", tmp_path / "out" / "classifier"
    report = calibrate_main(["--data", str(synth_root), "--cv", str(tmp_path / "cv"),
                             "--segmenter", str(tiny_checkpoints["segmenter"]),
                             "--classifier", str(tiny_checkpoints["classifier"]), "--out", str(tmp_path / "out")])
    seg = report["segmenter"]
    assert seg["cases"] == 6 and seg["slices"] == 72  # all six cases, each predicted by the fold that held it out
    cv = seg["cross_validation"]
    assert cv["folds"] == 3 and len(cv["dice_per_case_mean_by_fold"]) == 3
    assert cv["dice_per_case_mean_over_folds"] == pytest.approx(np.mean(cv["dice_per_case_mean_by_fold"]))
    assert [r["case_rule"] for r in seg["case_rules"]][:2] == ["none", "largest"]
    assert seg["case_rules"][0]["dice_per_case_mean"] == pytest.approx(seg["chosen"]["dice_per_case_mean"])
    assert "out-of-fold" in report["classifier"]["chosen_on"]
    # the choices land in the final checkpoints, which were not among the fold models
    assert json.loads((out_clf / "config.json").read_text())["temperature"] == report["classifier"]["temperature"]
    assert json.loads((out_seg / "config.json").read_text())["threshold"] == seg["chosen"]["threshold"]
    assert sorted(n for f in folds["folds"] for n in f) == sorted(c.name for c in find_cases(synth_root))


def test_saved_rules_are_applied_again_without_the_fold_runs(tiny_checkpoints, synth_root, tmp_path, capsys):
    """OUT/rules.json records what --cv chose; --rules writes the same configs once the fold runs are gone."""
    import shutil

    from brainseg.cards import build_model_card

    _fold_runs(tmp_path / "cv", synth_root)
    models = {k: str(tiny_checkpoints[k]) for k in ("segmenter", "classifier")}
    common = ["--segmenter", models["segmenter"], "--classifier", models["classifier"]]
    report = calibrate_main(["--data", str(synth_root), "--cv", str(tmp_path / "cv"), *common, "--out", str(tmp_path / "a")])
    shutil.rmtree(tmp_path / "cv")
    rules_file = tmp_path / "a" / "rules.json"
    calibrate_main(["--rules", str(rules_file), *common, "--out", str(tmp_path / "b"),
                    "--json", str(tmp_path / "b" / "segmenter" / "eval_oof.json")])
    for kind in ("segmenter", "classifier"):
        assert (json.loads((tmp_path / "a" / kind / "config.json").read_text())
                == json.loads((tmp_path / "b" / kind / "config.json").read_text()))
    rules = json.loads(rules_file.read_text())
    assert rules == json.loads((tmp_path / "b" / "rules.json").read_text())  # OUT says which rules it holds
    assert rules["classifier"]["fusion_weights"] == pytest.approx(report["classifier"]["fusion"]["weights"])
    held = json.loads((tmp_path / "b" / "segmenter" / "eval_oof.json").read_text())
    assert held["recorded_in"] == str(rules_file) and held["cases"] == 6
    # the held-out Dice is that of the masks after the chosen case rule
    assert held["seg"]["dice_per_case_mean"] == pytest.approx(report["segmenter"]["case_rule_chosen"]["dice_per_case_mean"])
    card = str(build_model_card(tmp_path / "b" / "segmenter", "segmenter"))
    assert "the fold runs were not kept" in card and "Out-of-fold" in card
    # a rules file without its held-out figures cannot give --json one: refused by name (exit 2), nothing written
    (tmp_path / "bare.json").write_text(json.dumps({k: v for k, v in rules.items() if k != "held_out"}))
    with pytest.raises(SystemExit) as e:
        calibrate_main(["--rules", str(tmp_path / "bare.json"), *common, "--out", str(tmp_path / "c"),
                        "--json", str(tmp_path / "c.json")])
    assert e.value.code == 2 and re.search(r"bare\.json: no held-out figures .*--json", capsys.readouterr().err)
    assert not (tmp_path / "c").exists() and not (tmp_path / "c.json").exists()


def test_a_file_that_is_not_a_rules_file_is_refused_by_name(tiny_checkpoints, tmp_path, capsys):
    bad = tmp_path / "rules.json"
    argv = ["--rules", str(bad), "--segmenter", str(tiny_checkpoints["segmenter"]),
            "--classifier", str(tiny_checkpoints["classifier"]), "--out", str(tmp_path / "out")]
    bad.write_text(json.dumps({"chosen_on": "x", "segmenter": {"threshold": 0.5}, "classifier": {}}))
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert re.search(r"rules\.json: not a rules\.json of brainseg\.calibrate .*segmenter\.tta_flip", capsys.readouterr().err)
    assert not (tmp_path / "out").exists()  # nothing written
    bad.write_text("{not json")
    with pytest.raises(SystemExit):
        main(argv)
    assert "rules.json: not a readable rules file" in capsys.readouterr().err


def test_a_missing_fold_folder_exits_2_naming_it(tiny_checkpoints, synth_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--data", str(synth_root), "--cv", str(tmp_path / "no_cv"), "--segmenter", str(tiny_checkpoints["segmenter"]),
              "--classifier", str(tiny_checkpoints["classifier"]), "--out", str(tmp_path / "out")])
    assert e.value.code == 2 and "no_cv" in capsys.readouterr().err


def test_cv_runs_refuse_unfinished_or_overlapping_folds(synth_root, tmp_path):
    from brainseg.calibrate import cv_runs

    _fold_runs(tmp_path, synth_root)
    assert len(cv_runs(tmp_path)) == 3
    (tmp_path / "classifier_2" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="classifier_2"):
        cv_runs(tmp_path)
    _fold_runs(tmp_path, synth_root)
    split = json.loads((tmp_path / "segmenter_1" / "split.json").read_text())
    save_split(split, tmp_path / "segmenter_0" / "split.json")
    with pytest.raises(ValueError, match="validate some case twice"):
        cv_runs(tmp_path)
    with pytest.raises(FileNotFoundError, match="No fold folders"):
        cv_runs(tmp_path / "nothing")


def test_fold_summary_is_the_mean_and_sd_of_fold_means():
    from brainseg.calibrate import fold_summary

    per_case = {"a": {"dice": 0.8}, "b": {"dice": 0.6}, "c": {"dice": 0.9}, "d": {"dice": 0.5}}
    s = fold_summary(per_case, {"a": 0, "b": 0, "c": 1, "d": 1})
    assert s["dice_per_case_mean_by_fold"] == pytest.approx([0.7, 0.7])
    assert s["dice_per_case_sd_over_folds"] == pytest.approx(0.0)
    s = fold_summary(per_case, {"a": 0, "b": 1, "c": 1, "d": 1})
    assert s["dice_per_case_mean_by_fold"] == pytest.approx([0.8, 2.0 / 3])
    assert s["dice_per_case_sd_over_folds"] == pytest.approx(np.std([0.8, 2.0 / 3], ddof=1))


def test_case_rules_score_the_3d_filtered_masks():
    from brainseg.calibrate import score_case_rules

    probs = np.zeros((3, 16, 16))
    masks = np.zeros((3, 16, 16), bool)
    probs[0:2, 2:8, 2:8] = 0.9  # the tumour, on slices 0-1: 72 voxels
    masks[0:2, 2:8, 2:8] = True
    probs[2, 12:14, 12:14] = 0.9  # a 4-voxel false positive on slice 2
    rows = {r["case_rule"] + str(r["min_voxels"]): r for r in
            score_case_rules(probs, masks, ["c"] * 3, np.ones(3, bool), 0.5, 0, 16)}
    assert rows["none0"]["dice_per_case_mean"] == pytest.approx(2 * 72 / (76 + 72))
    assert rows["largest0"]["dice_per_case_mean"] == pytest.approx(1.0)
    assert rows["min_voxels100"]["dice_per_case_mean"] == pytest.approx(0.0)  # 100 > 72: the tumour goes too


def test_main_returns_an_exit_code(tiny_checkpoints, synth_root, tmp_path):
    split = make_split(find_cases(synth_root), 0.34, seed=0)
    save_split(split, tmp_path / "split.json")
    assert main(["--data", str(synth_root), "--split", str(tmp_path / "split.json"),
                 "--segmenter", str(tiny_checkpoints["segmenter"]), "--classifier", str(tiny_checkpoints["classifier"]),
                 "--out", str(tmp_path / "out")]) == 0


def test_out_of_fold_maps_are_the_maps_of_the_predictors_case_predictions(synth_root, tmp_path):
    """calibrate scores the very pixel maps the Predictor draws its masks from."""
    from brainseg.calibrate import held_out_predictions
    from brainseg.config import ClassifierConfig, SegmenterConfig
    from brainseg.data import fold_split, make_folds, read_image, select_cases

    val = fold_split(make_folds(find_cases(synth_root), k=3, seed=0), 0)["val"]
    torch.manual_seed(0)
    ResUNet(SegmenterConfig(encoder="test_resnet", image_size=64)).save_pretrained(tmp_path / "seg")
    TumorClassifier(ClassifierConfig(encoder="test_resnet", image_size=64)).save_pretrained(tmp_path / "clf")
    out = held_out_predictions(str(synth_root), [(str(tmp_path / "seg"), str(tmp_path / "clf"), val)])
    predictor = Predictor(ResUNet.from_pretrained(tmp_path / "seg"), None, precision="fp32")
    expected = [p.prob_map for c in select_cases(find_cases(synth_root), val)
                for p in predictor.predict_case([read_image(ip) for ip in c.images], prob_maps=True)]
    assert np.allclose(out["plain"].numpy(), np.stack(expected), atol=1e-5)


def test_calibrate_decides_nothing_itself():
    """Its candidates are scored through the Predictor's own functions (brainseg.inference and brainseg.decision: segment_passes,
    combine_passes, classifier_probability, is_detected, upsample, draw_mask): no second threshold comparison,
    sigmoid, flip or resize of its own."""
    import inspect

    from brainseg import calibrate

    source = inspect.getsource(calibrate)
    for own in ("torch.sigmoid", "np.exp(-", "interpolate(", ".flip(", '>= v["fusion"]', "postprocess_mask("):
        assert own not in source, own
