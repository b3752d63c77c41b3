"""brainseg.sources and brainseg.cards: model sources, the pull path through a real (offline) Hub cache, cards."""
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard, constants, metadata_load
from huggingface_hub.errors import EntryNotFoundError

import brainseg
from brainseg import cards, hub, models, sources
from brainseg.cards import (NOT_MEASURED, build_model_card, fill_repo_ids, is_brainseg_card,
                            write_model_card)
from brainseg.config import SegmenterConfig
from brainseg.hub_meta import HUB_IDS
from brainseg.inference import Predictor
from brainseg.models import ResUNet, TumorClassifier
from brainseg.sources import ModelSource, SourceNotFoundError, load_model, parse_source, resolve_source
from conftest import SHARED_DATA, needs_shared_data

COMMIT_A = "a" * 40
COMMIT_B = "0123456789abcdef0123456789abcdef01234567"


# ---------------------------------------------------------------- sources

def test_parse_source_folder(tmp_path):
    src = parse_source(str(tmp_path))
    assert src == ModelSource(str(tmp_path), None, True)


def test_parse_source_folder_that_looks_like_a_repo_id(tmp_path, monkeypatch):
    (tmp_path / "user" / "repo").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert parse_source("user/repo").local


@pytest.mark.parametrize("spec, repo, rev", [("user/repo", "user/repo", None),
                                              ("user/repo@main", "user/repo", "main"),
                                              (f"org-x/brain.seg_1@{COMMIT_B}", "org-x/brain.seg_1", COMMIT_B)])
def test_parse_source_hub(spec, repo, rev):
    src = parse_source(spec)
    assert (src.location, src.revision, src.local) == (repo, rev, False)
    assert str(src) == spec


@pytest.mark.parametrize("spec", ["", "just-a-name", "a/b/c", "/repo", "user/", "@rev", "user/@rev", "user/repo@"])
def test_parse_source_garbage(spec):
    with pytest.raises(SourceNotFoundError, match="no such folder") as err:
        parse_source(spec)
    assert isinstance(err.value, ValueError) and isinstance(err.value, FileNotFoundError)


@pytest.fixture
def no_hub(monkeypatch):
    """Any attempt to reach the Hub (or its cache) fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"the Hub was asked: {args} {kwargs}")
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(models, "hf_hub_download", refuse)


@pytest.mark.parametrize("spec, hint", [("models/segmentr", "did you mean models/segmenter"),
                                         ("models/segmenter/v2", "models/segmenter exists but holds no such folder"),
                                         ("./segmenter", ""), ("~/models/seg", ""), ("/nowhere/seg", ""),
                                         ("models\\segmenter", ""), ("C:/models/seg", "")])
def test_mistyped_folder_fails_at_once(tmp_path, monkeypatch, no_hub, spec, hint):
    """Issue 9.4: a path-like source is never taken for a Hub id (that took ~28 s of retries)."""
    (tmp_path / "models" / "segmenter").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    with pytest.raises(SourceNotFoundError) as err:
        load_model("segmenter", spec)
    assert time.perf_counter() - start < 1.0
    assert str(err.value).startswith(f"no such folder: {spec} (") and hint in str(err.value)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        brainseg.from_pretrained(spec)


def test_revision_keyword(tmp_path):
    assert parse_source("user/repo", revision="v1") == ModelSource("user/repo", "v1", False)
    assert parse_source("user/repo@v1", revision="v1").revision == "v1"
    with pytest.raises(ValueError, match="names revision 'v1' but revision='v2'"):
        parse_source("user/repo@v1", revision="v2")
    with pytest.raises(ValueError, match="local folder"):
        parse_source(str(tmp_path), revision="v1")


def test_resolve_source_argument_then_env(monkeypatch):
    monkeypatch.setenv("BRAINSEG_SEGMENTER", "env/seg@v1")
    assert str(resolve_source("segmenter")) == "env/seg@v1"
    assert str(resolve_source("segmenter", "arg/seg")) == "arg/seg"


# ---------------------------------------------------------------- the pull path, for real, offline

def cache_repo(cache: Path, repo_id: str, files: dict, commit: str, ref: str = "main") -> str:
    """Lay ``files`` ({name: path}) out as the Hub cache does: blobs, snapshots/<commit>, refs/<ref>."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    for name, src in files.items():
        data = Path(src).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("..") / ".." / "blobs" / blob.name)
    if ref:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return commit


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hub cache, offline: huggingface_hub reads its constants at import, so patch them too."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def hub_files(folder: Path) -> dict:
    return {n: folder / n for n in ("config.json", "model.safetensors", "README.md")}


@pytest.fixture
def cached_models(hub_cache, tiny_checkpoints, tmp_path):
    """user/seg: COMMIT_A = the tiny segmenter, main = COMMIT_B = changed weights; user/clf: the classifier."""
    changed = tmp_path / "seg_v2"
    model = ResUNet.from_pretrained(tiny_checkpoints["segmenter"])
    with torch.no_grad():
        model.head.bias += 1.0
    model.save_pretrained(changed)
    cache_repo(hub_cache, "user/seg", hub_files(tiny_checkpoints["segmenter"]), COMMIT_A, ref=None)
    cache_repo(hub_cache, "user/seg", hub_files(changed), COMMIT_B)
    cache_repo(hub_cache, "user/clf", hub_files(tiny_checkpoints["classifier"]), COMMIT_A)
    return {"v1": tiny_checkpoints["segmenter"], "v2": changed, "classifier": tiny_checkpoints["classifier"]}


def outputs(model, seed=0):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(x)


def test_load_model_by_repo_id_offline(cached_models):
    model, src = load_model("segmenter", "user/seg")
    assert (src.location, src.revision, src.local) == ("user/seg", None, False)
    assert torch.equal(outputs(model), outputs(ResUNet.from_pretrained(cached_models["v2"])))  # main -> COMMIT_B
    clf, _ = load_model("classifier", "user/clf")
    assert torch.equal(outputs(clf), outputs(TumorClassifier.from_pretrained(cached_models["classifier"])))


def test_from_pretrained_at_a_pinned_commit(cached_models):
    pinned = ResUNet.from_pretrained("user/seg", revision=COMMIT_A)
    assert isinstance(pinned.config, SegmenterConfig) and pinned.config.encoder == "test_resnet"
    assert torch.equal(outputs(pinned), outputs(ResUNet.from_pretrained(cached_models["v1"])))
    assert not torch.equal(outputs(pinned), outputs(ResUNet.from_pretrained("user/seg")))


def test_predictor_from_repo_ids(cached_models):
    image = np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    from_hub = Predictor.from_sources(f"user/seg@{COMMIT_A}", "user/clf")
    local = Predictor.from_sources(str(cached_models["v1"]), str(cached_models["classifier"]))
    assert str(from_hub.sources["segmenter"]) == f"user/seg@{COMMIT_A}"
    a, b = from_hub.predict(image), local.predict(image)
    assert a.probability == b.probability and np.array_equal(a.mask, b.mask)
    assert a.mask.shape == (70, 90)


def test_cached_repo_with_only_pytorch_bin_is_refused(hub_cache, tiny_checkpoints, tmp_path):
    model = ResUNet.from_pretrained(tiny_checkpoints["segmenter"])
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    cache_repo(hub_cache, "user/pickled", {"config.json": tiny_checkpoints["segmenter"] / "config.json",
                                           "pytorch_model.bin": tmp_path / "pytorch_model.bin"}, COMMIT_A)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model("segmenter", "user/pickled")
    with pytest.raises(EntryNotFoundError):
        ResUNet.from_pretrained("user/pickled")


def test_repo_missing_from_cache_offline_says_so(hub_cache):
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        load_model("classifier", "user/not-cached")


# ---------------------------------------------------------------- model cards

EVAL = {"cases": 17, "slices": 639, "seconds_per_slice": 0.041, "ece": 0.021, "tumor_slices": 221,  # as evaluate writes
        "seg": {"dice_per_case_mean": 0.8912, "dice_per_case_median": 0.9134, "dice_tumor_slices_mean": 0.8456,
                "iou_per_case_mean": 0.8123, "false_positive_slices": 7, "pixel_threshold": 0.5},
        "det": {"auroc": 0.991, "accuracy": 0.962, "sensitivity": 0.951, "specificity": 0.968, "threshold": 0.42},
        "per_case": {"TCGA_HT_0004_20000101": {"dice": 0.9, "iou": 0.8, "slices": 20}}, "sources": {}}
CLF_CALIBRATION = {"temperature": 1.7, "threshold": 0.42, "ece_before": 0.08, "ece_after": 0.019,  # as calibrate writes
                   "at_threshold": {"auroc": 0.99, "accuracy": 0.96, "threshold": 0.42},
                   "at_0.5": {"auroc": 0.99, "accuracy": 0.95, "threshold": 0.5}}
SEG_CALIBRATION = {"chosen": {"tta_flip": False, "threshold": 0.4, "min_component_px": 25, "gate_threshold": 0.1,
                              "dice_per_case_mean": 0.89},
                   "defaults": {"tta_flip": False, "threshold": 0.5, "min_component_px": 0, "gate_threshold": 0.0,
                                "dice_per_case_mean": 0.86}, "grid_size": 360}


def train_metrics(task: str, split_file: str = "splits/none.json") -> dict:
    val = ({"dice_per_case_mean": 0.87, "dice_per_case_median": 0.9, "dice_tumor_slices_mean": 0.8,
            "iou_per_case_mean": 0.79, "false_positive_slices": 12} if task == "segmenter" else
           {"auroc": 0.97, "accuracy": 0.93, "sensitivity": 0.9, "specificity": 0.95, "threshold": 0.5, "ece": 0.08})
    return {"task": task, "best_epoch": 9, "val": val, "val_cases": 17, "val_slices": 639, "train_cases": 71,
            "split": split_file, "device": "cpu",
            "train_config": {"task": task, "data": "../shared/data/lgg/kaggle_3m", "out": f"runs/{task}",
                             "split": split_file, "seed": 42, "epochs": 12, "batch_size": 16, "lr": 0.001,
                             "weight_decay": 0.0001, "empty_fraction": 0.2, "augment": True},
            "model_config": {"encoder": "test_resnet", "image_size": 64, "pretrained": False}, "history": []}


@pytest.fixture
def model_dir(tiny_checkpoints, tmp_path):
    def make(kind):
        d = tmp_path / kind
        shutil.copytree(tiny_checkpoints[kind], d)
        return d
    return make


def index_metrics(meta: dict) -> dict:
    """{metric type or name: value} from a parsed model-index."""
    out = {}
    for result in meta["model-index"][0]["results"]:
        for m in result["metrics"]:
            out[m["name"]] = m["value"]
    return out


def test_cards_of_all_case_models_report_the_out_of_fold_figures_as_such(model_dir):
    """Models trained on every case (--val-fraction 0) ship with calibrate --cv's eval_oof.json: the cards must
    say the figures are cross-validated, by fold, and not call anything a validation split."""
    cv = {"folds": 2, "dice_per_case_mean_by_fold": [0.8, 0.84], "dice_per_case_mean_over_folds": 0.82,
          "dice_per_case_sd_over_folds": 0.028}
    oof = dict(EVAL, cases=44, slices=1600, seconds_per_slice=None, cross_validation=cv)
    for kind in ("segmenter", "classifier"):
        d = model_dir(kind)
        metrics = dict(train_metrics(kind), val_cases=0, val_slices=0, train_cases=88,
                       val={"dice_per_case_mean": float("nan")})
        (d / "metrics.json").write_text(json.dumps(metrics))
        (d / "eval_oof.json").write_text(json.dumps(oof))
        text = write_model_card(d, kind, train_command="bash scripts/train_models.sh").read_text()
        assert "`eval_oof.json`: 44 cases, 1600 slices, each predicted by the fold model" in text
        assert "2 folds of the same recipe; per-case Dice by fold 0.800, 0.840, mean 0.820, sd 0.028 over folds" in text
        assert "| Out-of-fold |" in text or "| Fused detection" in text
        assert "Trained on **all 88 development cases**" in text and "2-fold cross-validation by patient" in text
        assert "chosen on the same pooled out-of-fold predictions" in text
        for stale in ("The same validation cases", "on the validation cases", "validation cases of one split",
                      "Training-time validation", "same validation slices"):
            assert stale not in text, stale
        assert "dataset_split: cross-validation" in text or "split: cross-validation" in text
        assert "The other 22 of the dataset's 110 cases were held out" in text


def test_segmenter_card_metadata_and_values(model_dir, tmp_path):
    d = model_dir("segmenter")
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"seed": 42, "stratified_by": "institution",
                                 "train": ["TCGA_CS_0001_20000101", "TCGA_DU_0002_20000101", "TCGA_DU_0003_2000"],
                                 "val": ["TCGA_HT_0004_20000101"]}))
    (d / "metrics.json").write_text(json.dumps(train_metrics("segmenter", str(split))))
    path = write_model_card(d, "segmenter", eval_metrics=EVAL, train_command="bash scripts/train_models.sh")
    assert path == d / "README.md"

    card = ModelCard.load(path)
    meta = metadata_load(path)
    assert meta["license"] == "cc-by-nc-sa-4.0" == card.data.license
    assert meta["library_name"] == "brainseg"
    assert meta["pipeline_tag"] == "image-segmentation"
    assert meta["datasets"] == ["mateuszbuda/lgg-mri-segmentation"]
    assert {"medical-imaging", "mri", "brain-tumor", "segmentation", "lgg", "pytorch", "timm"} <= set(meta["tags"])
    values = index_metrics(meta)
    assert values == pytest.approx({"Dice per case, mean (final evaluation)": 0.8912,
                                    "Dice per case, median (final evaluation)": 0.9134,
                                    "Dice on tumour slices, mean (final evaluation)": 0.8456,
                                    "IoU per case, mean (final evaluation)": 0.8123}, abs=1e-4)
    results = card.data.eval_results
    assert {r.dataset_type for r in results} == {"mateuszbuda/lgg-mri-segmentation"}
    assert {r.metric_type for r in results} == {"dice", "iou"}

    text = path.read_text()
    assert "not a medical device" in text.lower()
    assert "10.1016/j.compbiomed.2019.05.002" in text and "Neuro-Oncology" in text and "TCGA-LGG" in text
    assert "**71 training cases** and **17 validation cases**" in text and "seed 42" in text
    assert "CS 1/0, DU 2/0, HT 0/1" in text
    assert "| Dice per case, mean | 0.891 | 0.870 |" in text  # final evaluation beside training-time validation
    assert "17 cases, 639 slices" in text and "0.041 s per slice" in text
    assert 'brainseg.from_pretrained("USER/brainseg-segmenter")  # a ResUNet' in text and "Predictor.from_sources(" in text
    assert "bash scripts/train_models.sh" in text
    assert "| Input size | 64 x 64" in text and "pre-contrast, FLAIR, post-contrast" in text
    assert "2D" in text and "skull not stripped" in text
    assert is_brainseg_card(text) and NOT_MEASURED not in text


def test_classifier_card_with_calibration(model_dir):
    d = model_dir("classifier")
    (d / "metrics.json").write_text(json.dumps({**train_metrics("classifier"), "calibration": CLF_CALIBRATION}))
    (d / "eval_val.json").write_text(json.dumps(EVAL))  # found in the folder
    text = write_model_card(d, "classifier").read_text()
    meta = metadata_load(d / "README.md")
    assert meta["pipeline_tag"] == "image-classification" and "image-classification" in meta["tags"]
    values = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert values == pytest.approx({"roc_auc": 0.991, "accuracy": 0.962, "recall": 0.951, "specificity": 0.968,
                                    "ece": 0.021})
    assert "### Calibration on the validation cases" in text and "| ece_before | 0.0800 |" in text
    assert "| at_threshold | 0.9900 | 0.9600 | 0.4200 |" in text and "temperature-calibrated" in text
    assert "| AUROC | 0.991 | 0.970 |" in text and "| Expected calibration error (10 bins) | 0.021 | 0.080 |" in text
    assert "python train.py classifier" in text  # rebuilt from metrics.json when no command is given


def test_classifier_ece_falls_back_to_the_calibration_report(model_dir):
    d = model_dir("classifier")
    ev = {k: v for k, v in EVAL.items() if k != "ece"}
    card = build_model_card(d, "classifier", metrics={"calibration": CLF_CALIBRATION}, eval_metrics=ev)
    assert {r.metric_type: r.metric_value for r in card.data.eval_results}["ece"] == 0.019


def test_segmenter_card_shows_the_chosen_rules(model_dir):
    d = model_dir("segmenter")
    card = build_model_card(d, "segmenter", metrics={**train_metrics("segmenter"), "calibration": SEG_CALIBRATION})
    assert "### Decision rules chosen on the validation cases" in card.text
    assert "| chosen | no | 0.4000 | 25 | 0.1000 | 0.8900 |" in card.text and "| grid_size | 360 |" in card.text


def test_card_without_metrics_says_not_measured(model_dir):
    d = model_dir("segmenter")
    text = write_model_card(d, "segmenter").read_text()
    meta = metadata_load(d / "README.md")
    assert "model-index" not in meta and meta["license"] == "cc-by-nc-sa-4.0"
    assert "not a medical device" in text.lower()
    assert f"| Dice per case, mean | {NOT_MEASURED} |" in text
    assert "No metrics were measured" in text and f"Split: {NOT_MEASURED}" in text


def test_card_shows_only_values_that_exist(model_dir):
    d = model_dir("segmenter")
    ev = {"cases": 17, "slices": 639, "seg": {"dice_per_case_mean": 0.88, "dice_tumor_slices_mean": float("nan")}}
    card = build_model_card(d, "segmenter", eval_metrics=ev)
    values = {m.metric_name: m.metric_value for m in card.data.eval_results}
    assert values == {"Dice per case, mean (final evaluation)": 0.88}  # NaN and missing values are not invented
    assert f"| IoU per case, mean | {NOT_MEASURED} |" in card.text
    assert "| Dice on tumour slices, mean | undefined on these cases |" in card.text


def test_card_replaces_the_mixin_default_and_survives_save_pretrained(model_dir):
    d = model_dir("classifier")
    assert not is_brainseg_card((d / "README.md").read_text())  # the mixin's default card
    write_model_card(d, "classifier")
    TumorClassifier.from_pretrained(d).save_pretrained(d)  # the mixin does not overwrite a README
    assert is_brainseg_card((d / "README.md").read_text())


def test_card_repo_ids_and_placeholders(model_dir):
    d = model_dir("segmenter")
    card = str(build_model_card(d, "segmenter", repo_ids={"segmenter": "alice/seg", "classifier": "alice/clf"}))
    assert 'brainseg.from_pretrained("alice/seg")' in card and "alice/clf" in card
    placeholder_card = str(build_model_card(d, "segmenter"))
    filled = fill_repo_ids(placeholder_card, {"segmenter": "alice/seg", "classifier": "alice/clf"})
    assert HUB_IDS["segmenter"] not in filled and 'Predictor.from_sources("alice/seg", "alice/clf")' in filled


def test_card_weights_summary_reads_the_header_only(model_dir):
    d = model_dir("segmenter")
    n = sum(p.numel() for p in ResUNet.from_pretrained(d).state_dict().values() if p.is_floating_point())
    summary = cards.weights_summary(d / "model.safetensors")
    assert summary.startswith(f"{n / 1e6:.2f} M parameters, stored as float32")


def test_card_rejects_unknown_kind_and_missing_config(model_dir, tmp_path):
    with pytest.raises(ValueError, match="segmenter"):
        build_model_card(model_dir("segmenter"), "detector")
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_model_card(tmp_path, "segmenter")


def test_card_command_line(model_dir, tmp_path, capsys):
    d = model_dir("segmenter")
    script = tmp_path / "train.sh"
    script.write_text("#!/usr/bin/env bash\nset -euo pipefail\n# stage 1\n$PY train.py segmenter --epochs 2\n")
    assert hub.main(["card", str(d), "--train-command", "python train.py segmenter --epochs 1",
                     "--train-script", str(script)]) == 0
    text = (d / "README.md").read_text()
    assert "wrote" in capsys.readouterr().out and is_brainseg_card(text)
    assert (f"python train.py segmenter --epochs 1\n# {script}\n# stage 1\n$PY train.py segmenter --epochs 2\n```"
            in text) and "set -euo" not in text
    assert hub.infer_kind(d) == "segmenter" and hub.infer_kind(model_dir("classifier")) == "classifier"


# ---------------------------------------------------------------- one entry point, the class from config.json

def test_from_pretrained_picks_the_class_from_config(cached_models, tmp_path):
    seg, clf = cached_models["v1"], cached_models["classifier"]
    assert isinstance(brainseg.from_pretrained(str(seg)), ResUNet)
    assert isinstance(brainseg.from_pretrained(str(clf)), TumorClassifier)
    assert isinstance(brainseg.from_pretrained("user/clf"), TumorClassifier)  # through the (offline) Hub cache
    pinned = brainseg.from_pretrained("user/seg", revision=COMMIT_A)
    assert torch.equal(outputs(pinned), outputs(ResUNet.from_pretrained(seg)))
    old = tmp_path / "old"
    shutil.copytree(clf, old)
    cfg = json.loads((old / "config.json").read_text())
    assert cfg["model_class"] == "TumorClassifier"
    (old / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "model_class"}))
    assert isinstance(brainseg.from_pretrained(str(old)), TumorClassifier)  # configs saved before model_class
    (old / "config.json").write_text(json.dumps({**cfg, "model_class": "UNetPlusPlus"}))
    with pytest.raises(ValueError, match="model_class 'UNetPlusPlus'"):
        brainseg.from_pretrained(str(old))


def test_load_model_refuses_the_other_kind(tiny_checkpoints):
    with pytest.raises(ValueError, match="holds a classifier \\(TumorClassifier\\), not a segmenter"):
        load_model("segmenter", str(tiny_checkpoints["classifier"]))


def test_load_model_revision_keyword(cached_models):
    model, src = load_model("segmenter", "user/seg", revision=COMMIT_A)
    assert src.revision == COMMIT_A and torch.equal(outputs(model), outputs(ResUNet.from_pretrained(cached_models["v1"])))


def test_import_is_light_and_exports_the_public_names():
    code = "import sys, brainseg; assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [n for n in brainseg.__all__ if not hasattr(brainseg, n)] == []
    assert brainseg.from_pretrained is sources.from_pretrained and brainseg.ResUNet is ResUNet


# ---------------------------------------------------------------- issue 9.10: the classifier's own figures

FUSION = {"weights": [0.5, 0.3, -1.0], "top_k": 50, "threshold": 0.4,
          "at_threshold": {"auroc": 0.986, "accuracy": 0.951, "threshold": 0.4}}


def test_fused_classifier_card_indexes_the_classifier_alone(model_dir):
    d = model_dir("classifier")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "fusion_weights": FUSION["weights"], "fusion_threshold": 0.4}))
    calibration = {**CLF_CALIBRATION, "fusion": FUSION}
    card = build_model_card(d, "classifier", metrics={**train_metrics("classifier"), "calibration": calibration},
                            eval_metrics=EVAL)
    index = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert index == {"roc_auc": 0.99, "accuracy": 0.96, "ece": 0.019}  # calibration's at_threshold + ece_after
    assert {r.metric_name for r in card.data.eval_results} >= {"AUROC (classifier alone)"}
    assert "| Metric | With the segmenter (fused) | Classifier alone | Training-time validation |" in card.text
    assert "| AUROC | 0.991 | 0.990 | 0.970 |" in card.text  # the fused 0.991 stays in the text only
    assert "not in this card's model-index" in card.text
    assert f'timm.create_model("hf-hub:{HUB_IDS["classifier"]}", pretrained=True)' in card.text  # no filter any more
    assert "pretrained_filter_fn" not in card.text


@pytest.mark.filterwarnings("ignore:'brainseg.hub' found in sys.modules")
def test_card_command_line_as_a_module(model_dir, monkeypatch, capsys):
    """``python -m brainseg.hub card DIR`` (scripts/ship_models.sh) also restores config.json's metadata."""
    import runpy

    d = model_dir("segmenter")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "model_class"}))
    monkeypatch.setattr(sys, "argv", ["brainseg.hub", "card", str(d)])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("brainseg.hub", run_name="__main__")
    assert exit_.value.code == 0 and f"wrote {d / 'README.md'} (segmenter) and the metadata" in capsys.readouterr().out
    assert json.loads((d / "config.json").read_text()) == cfg and is_brainseg_card((d / "README.md").read_text())
    assert hub.main(["card", str(d / "missing")]) == 1


@pytest.mark.parametrize("kind", ["segmenter", "classifier"])
def test_shipped_cards_are_what_the_card_command_writes(kind):
    """models/*/README.md regenerated from their config, metrics and eval JSON give the same text."""
    folder = Path(__file__).resolve().parent.parent / "models" / kind
    if not (folder / "config.json").is_file():
        pytest.skip(f"no shipped {kind} in {folder}")
    assert cards.stale_card_reason(folder, kind) is None
    assert json.loads((folder / "config.json").read_text())["model_class"] == sources.MODEL_CLASSES[kind]


def test_package_is_installed_with_its_commands():
    """`make install` runs `pip install -e .`: the package, its version and the brainseg-* commands."""
    from importlib import metadata

    try:
        dist = metadata.distribution("brainseg")
    except metadata.PackageNotFoundError:
        pytest.skip("brainseg is not pip-installed here (make install does it)")
    assert dist.version == brainseg.__version__
    scripts = {e.name: e.value for e in dist.entry_points if e.group == "console_scripts"}
    import tomllib

    declared = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == declared and {"brainseg-predict", "brainseg-evaluate", "brainseg-app", "brainseg-train"} <= set(scripts)
    requires = {r.split("==")[0].lower() for r in dist.requires or []}
    assert {"torch", "timm", "huggingface_hub", "safetensors", "jinja2"} <= requires  # pins from requirements.txt


# ---------------------------------------------------------------- the card states the rule the Predictor applies

def test_segmenter_card_states_the_one_answer_rule_not_the_old_gate(model_dir):
    """A mask is drawn iff the slice is detected (probability >= the detection threshold); an old
    config's gate_threshold (read and ignored by the Predictor) must not reappear as a rule."""
    d = model_dir("segmenter")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "gate_threshold": 0.5}))
    text = str(build_model_card(d, "segmenter"))
    assert "emptied" not in text and "Detection gate" not in text
    row = next(line for line in text.splitlines() if line.startswith("| Mask drawn"))
    assert "iff the slice is detected" in row and ">= the detection threshold" in row, row


@pytest.mark.parametrize("kind", ["segmenter", "classifier"])
def test_shipped_cards_quote_the_recipe_that_made_their_weights(kind):
    """A card that quotes a script shows that script's commands line for line: when scripts/train_models.sh
    moved on to the next recipe, the shipped cards had to quote the one that made models/ (train_models_v1.sh)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "models" / kind / "README.md").is_file():
        pytest.skip(f"no shipped {kind} card")
    shown = cards.card_commands((root / "models" / kind / "README.md").read_text(encoding="utf-8"))
    assert shown and shown[0].startswith("# scripts/"), shown[:1]
    script = root / shown[0][2:]
    assert script.is_file(), f"the card quotes {script}, which is not in the repository"
    lines = [ln.rstrip() for ln in script.read_text().splitlines() if ln.strip() and not ln.startswith(("#!", "set "))]
    assert shown[1:] == lines


def test_segmenter_card_states_the_case_rule_only_when_one_applies(model_dir):
    d = model_dir("segmenter")
    assert "3-D rule" not in build_model_card(d, "segmenter").text  # "none": the card reads as before
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(dict(cfg, case_rule="largest")))
    assert "| Whole cases (3-D rule) | the largest region connected across slices is kept;" in \
        build_model_card(d, "segmenter").text


# ---------------------------------------------------------------- issue 35.6: three ways to load, offline

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = {kind: ROOT / "models" / kind for kind in ("segmenter", "classifier")}
needs_shipped = pytest.mark.skipif(not all((d / "model.safetensors").is_file() for d in SHIPPED.values()),
                                   reason="no shipped models in models/")


@pytest.fixture(scope="module")
def shipped_cache(tmp_path_factory):
    """A Hub cache holding the shipped folders under their (placeholder) Hub ids, as a download leaves it."""
    cache = tmp_path_factory.mktemp("shipped_hub")
    for kind, folder in SHIPPED.items():
        cache_repo(cache, HUB_IDS[kind], {n: folder / n for n in ("config.json", "model.safetensors", "README.md")},
                   COMMIT_A)
    return cache


@pytest.fixture
def offline_hub(shipped_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(shipped_cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(shipped_cache))
    return shipped_cache


@pytest.fixture(scope="module")
def example_batch():
    """The example PNGs (masks left out) and the shipped classifier's input for them."""
    from brainseg.images import load_slice
    from brainseg.preprocess import preprocess

    files = sorted(str(p) for p in (ROOT / "examples").glob("*.png") if not p.stem.endswith("_mask"))
    cfg = TumorClassifier.from_pretrained(SHIPPED["classifier"]).config
    return files, torch.stack([preprocess(load_slice(f), cfg) for f in files])


def shipped_logits(x):
    with torch.no_grad():
        return TumorClassifier.from_pretrained(SHIPPED["classifier"])(x)


@needs_shipped
def test_shipped_classifier_file_holds_timm_keys_and_loads_like_the_old_layout(tmp_path, example_batch):
    """The conversion was lossless: the same float16 tensors under timm's keys; a file in the old layout
    (``backbone.`` keys) still loads, and gives outputs identical to the shipped one."""
    from safetensors.torch import load_file, save_file

    from brainseg.integrity import record_weights_sha256

    state = load_file(SHIPPED["classifier"] / "model.safetensors")
    assert not [k for k in state if k.startswith("backbone.")] and "conv1.weight" in state and "fc.weight" in state
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}  # same size as before
    old = shutil.copytree(SHIPPED["classifier"], tmp_path / "old_layout")
    save_file({f"backbone.{k}": v for k, v in state.items()}, str(old / "model.safetensors"))
    record_weights_sha256(old)  # a file shipped in the old layout carried its own hash
    with torch.no_grad():
        assert torch.equal(TumorClassifier.from_pretrained(old)(example_batch[1]), shipped_logits(example_batch[1]))


@needs_shipped
def test_way_1_brainseg_from_pretrained_by_hub_id_offline(offline_hub, example_batch):
    clf = brainseg.from_pretrained(HUB_IDS["classifier"])
    seg = brainseg.from_pretrained(HUB_IDS["segmenter"])
    assert isinstance(clf, TumorClassifier) and isinstance(seg, ResUNet)
    with torch.no_grad():
        assert torch.equal(clf(example_batch[1]), shipped_logits(example_batch[1]))


@needs_shipped
def test_way_2_timm_hf_hub_without_a_filter_offline(offline_hub, example_batch):
    import timm

    net = timm.create_model(f"hf-hub:{HUB_IDS['classifier']}", pretrained=True).eval()
    local = timm.create_model(f"local-dir:{SHIPPED['classifier']}", pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(net(example_batch[1]), shipped_logits(example_batch[1]))  # max abs diff 0
        assert torch.equal(local(example_batch[1]), shipped_logits(example_batch[1]))
    assert net.pretrained_cfg["input_size"] == (3, 128, 128) and net.num_classes == 1


@needs_shipped
def test_way_3_transformers_pipeline_offline(offline_hub, example_batch):
    """The plain pipeline: label 'tumour', score = sigmoid of the logit of timm's transform (fixed mean and
    std, so not brainseg's number); classification_pipeline: brainseg's preprocessing, brainseg's logit."""
    from transformers import pipeline

    from brainseg.hf_pipeline import SliceImageProcessor, classification_pipeline

    files, x = example_batch
    pipe = pipeline("image-classification", model=HUB_IDS["classifier"])
    assert pipe.model.dtype == torch.float32 and pipe.model.config.id2label == {0: "tumour"}
    out = pipe(files[0])
    assert [o["label"] for o in out] == ["tumour"]
    with torch.no_grad():
        own = pipe.model(**pipe.preprocess(files[0])).logits[0, 0]  # timm's transform from pretrained_cfg
    assert out[0]["score"] == pytest.approx(torch.sigmoid(own).item(), abs=1e-6)
    exact = classification_pipeline(HUB_IDS["classifier"])
    assert isinstance(exact.image_processor, SliceImageProcessor)
    scores = torch.tensor([exact(f)[0]["score"] for f in files])
    torch.testing.assert_close(scores, torch.sigmoid(shipped_logits(x)[:, 0]), atol=1e-5, rtol=0)


def test_slice_image_processor_takes_arrays_pil_images_and_tensors():
    from PIL import Image

    from brainseg.config import ClassifierConfig
    from brainseg.hf_pipeline import SliceImageProcessor
    from brainseg.preprocess import preprocess

    image = np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    proc = SliceImageProcessor({"image_size": 32, "encoder": "test_resnet", "fusion_weights": None})
    want = preprocess(image, ClassifierConfig(image_size=32))[None]
    for given in (image, Image.fromarray(image), torch.from_numpy(image).permute(2, 0, 1).float()):
        torch.testing.assert_close(proc(given)["pixel_values"], want)
    assert proc([image, image])["pixel_values"].shape == (2, 3, 32, 32)


def test_hub_ids_live_in_one_place():
    """The placeholder ids are written in hub_meta.py only; the cards and the README part take them from there."""
    from brainseg.hub_meta import is_placeholder

    assert all(is_placeholder(i) for i in HUB_IDS.values())
    needles = [HUB_IDS["space"] + '"', HUB_IDS["segmenter"], HUB_IDS["classifier"]]
    written = [p.name for p in [*(ROOT / "brainseg").rglob("*.py"), ROOT / "push_to_hub.py"]
               if p.name != "hub_meta.py" and any(n in p.read_text(encoding="utf-8") for n in needles)]
    assert written == [], f"Hub ids written outside brainseg/hub_meta.py: {written}"
    for kind in ("segmenter", "classifier"):
        card = SHIPPED[kind] / "README.md"
        if card.is_file():
            assert f'brainseg.from_pretrained("{HUB_IDS[kind]}")' in card.read_text(encoding="utf-8")


def test_load_the_weights_section_names_the_three_ways_and_the_hub_ids():
    """The README's "Load the weights" section shows each way with the ids of hub_meta (test_readme runs its code)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Load the weights\n", 1)[1].split("\n## ", 1)[0]
    for needle in ("brainseg.from_pretrained(", 'timm.create_model("local-dir:models/classifier", pretrained=True)',
                   'pipeline("image-classification", model="models/classifier")', "hf-hub:" + HUB_IDS["classifier"],
                   HUB_IDS["segmenter"]):
        assert needle in section, needle


@pytest.mark.slow
@needs_shared_data()
def test_pipeline_mean_and_std_are_the_dev_slices_brain_statistics():
    """config.json's fixed mean and std for timm's and transformers' transforms come from the dev slices, as
    hub_meta says (every 4th slice, in path order), not from a guess."""
    from brainseg.hf_pipeline import brain_pixel_statistics
    from brainseg.hub_meta import PIPELINE_MEAN, PIPELINE_STD
    from brainseg.images import load_slice

    files = sorted(str(p) for p in SHARED_DATA.glob("*/*.tif") if not p.stem.endswith("_mask"))
    assert len(files) == 3133
    mean, std = brain_pixel_statistics([load_slice(f) for f in files[::4]])
    assert mean == pytest.approx(PIPELINE_MEAN, abs=5e-5) and std == pytest.approx(PIPELINE_STD, abs=5e-5)
    cfg = json.loads((SHIPPED["classifier"] / "config.json").read_text())["pretrained_cfg"]
    assert (tuple(cfg["mean"]), tuple(cfg["std"])) == (PIPELINE_MEAN, PIPELINE_STD)


@needs_shipped
@pytest.mark.parametrize("kind", ["segmenter", "classifier"])
def test_card_how_to_use_snippets_run_offline(kind, offline_hub, monkeypatch):
    """The shipped cards' "How to use" code runs against the Hub ids (from the pre-filled cache), with an example
    slice in place of the cards' ``slice.png``."""
    text = (SHIPPED[kind] / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## How to use\n", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("```", 1)[0] for b in section.split("```python\n")[1:]]
    assert len(blocks) == (5 if kind == "classifier" else 2)
    monkeypatch.chdir(ROOT)
    for block in blocks:
        code = block.replace('"slice.png"', '"examples/TCGA_CS_4943_20000902_17.png"')
        exec(compile(code, f"{kind} card", "exec"), {})
