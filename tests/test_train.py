"""train.py end to end on the synthetic tree: two-step runs, resume, evaluation of the result, DDP on gloo."""
import json
import shutil
import sys
from pathlib import Path

import pytest

from brainseg.data import find_cases, load_split, make_split
from brainseg.models import ResUNet, TumorClassifier
from conftest import OUTPUTS, TINY, run, train

pytestmark = pytest.mark.slow


def torchrun():
    exe = Path(sys.executable).parent / "torchrun"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]


@pytest.fixture(scope="module")
def seg_run(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "segmenter"
    log = train("segmenter", synth_root, out, "--epochs", "2")
    return out, log


@pytest.fixture(scope="module")
def clf_run(synth_root, seg_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "classifier"
    log = train("classifier", synth_root, out, "--epochs", "2", "--split", str(seg_run[0] / "split.json"))
    return out, log


def check_outputs(out: Path, task: str, epochs: int, world_size: int = 1, own_split: bool = True):
    for name in OUTPUTS if own_split else set(OUTPUTS) - {"split.json"}:
        assert (out / name).is_file(), f"{name} missing in {out}"
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["encoder"] == "test_resnet" and cfg["image_size"] == 64 and cfg["pretrained"] is False
    assert {"channel_order", "normalization", "threshold"} <= set(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == task and metrics["world_size"] == world_size
    assert [h["epoch"] for h in metrics["history"]] == list(range(1, epochs + 1))
    key = "dice_per_case_mean" if task == "segmenter" else "auroc"
    assert key in metrics["val"] and metrics["val_cases"] == 3 and metrics["train_cases"] == 3
    return metrics


def test_segmenter_two_steps_writes_a_checkpoint(seg_run, synth_root):
    out, log = seg_run
    metrics = check_outputs(out, "segmenter", epochs=2)
    assert "3 train cases" in log and "3 val cases" in log
    assert f"--precision auto: {metrics['precision']} on cpu" in log  # the default, decided and said once
    # the split was written from the seed, by patient, and the model loads strictly from the folder
    split = load_split(out / "split.json")
    assert split == make_split(find_cases(synth_root), 0.2, seed=42)
    model = ResUNet.from_pretrained(out)
    assert model.config.encoder == "test_resnet" and model.config.image_size == 64


def test_classifier_two_steps_writes_a_checkpoint(clf_run, seg_run):
    out, _ = clf_run
    metrics = check_outputs(out, "classifier", epochs=2, own_split=False)
    assert {"accuracy", "sensitivity", "specificity", "ece"} <= set(metrics["val"])
    assert metrics["split"] == str(seg_run[0] / "split.json")  # the segmenter's split was read, not a new one
    assert isinstance(TumorClassifier.from_pretrained(out), TumorClassifier)


def test_resume_continues_from_last_state(seg_run, synth_root, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(seg_run[0], out)
    before = json.loads((out / "metrics.json").read_text())["history"]
    log = train("segmenter", synth_root, out, "--epochs", "3", "--resume", str(out / "last_state.pt"))
    assert "resumed from" in log and "at epoch 2" in log
    assert "epoch 1:" not in log and "epoch 3:" in log  # only the missing epoch ran
    after = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in after] == [1, 2, 3]
    assert after[:2] == before  # the earlier history came back from last_state.pt


def test_evaluate_reads_the_trained_checkpoints(seg_run, clf_run, synth_root, tmp_path):
    report = tmp_path / "eval.json"
    log = run([sys.executable, "-m", "brainseg.evaluate", str(synth_root), "--segmenter", str(seg_run[0]),
               "--classifier", str(clf_run[0]), "--split", str(seg_run[0] / "split.json"), "--json", str(report)])
    data = json.loads(report.read_text())
    assert data["cases"] == 3 and data["slices"] == 36
    assert {"dice_per_case_mean", "dice_per_case_median", "dice_tumor_slices_mean", "iou_per_case_mean",
            "false_positive_slices"} <= set(data["seg"])
    assert {"auroc", "accuracy", "sensitivity", "specificity", "threshold"} <= set(data["det"])
    assert isinstance(data["seconds_per_slice"], float) and data["seconds_per_slice"] > 0
    assert set(data["per_case"]) == set(load_split(seg_run[0] / "split.json")["val"])
    assert "dice_per_case_mean" in log


# Runs train.py with rank 1 reaching the split-file check late (as on a busy machine) and collectives that
# time out in 15 s instead of gloo's 30 min, so the race below shows every time and fails fast.
LATE_RANK = """
import datetime, os, runpy, sys, time
sys.path.insert(0, os.getcwd())  # the repo root, as for train.py itself
import torch.distributed as dist
import brainseg.data as data
_find, _init = data.find_cases, dist.init_process_group
def late_find_cases(*a, **k):
    if os.environ.get("RANK", "0") != "0":
        time.sleep(2)
    return _find(*a, **k)
def quick_init(*a, **k):
    return _init(*a, timeout=datetime.timedelta(seconds=15), **k)
data.find_cases, dist.init_process_group = late_find_cases, quick_init
sys.argv[0] = "train.py"
runpy.run_path("train.py", run_name="__main__")
"""


def test_ddp_two_processes_on_gloo_write_their_own_split(synth_root, tmp_path):
    """Two gloo processes train into a fresh folder: rank 0 writes the split, the late rank 1 waits for it."""
    wrapper = tmp_path / "late_rank.py"
    wrapper.write_text(LATE_RANK)
    out = tmp_path / "ddp_fresh"
    log = run([*torchrun(), "--standalone", "--nproc_per_node=2", str(wrapper), "segmenter", "--data",
               str(synth_root), "--out", str(out), *TINY, "--epochs", "1"], timeout=180)
    assert "2 process(es) on cpu" in log
    check_outputs(out, "segmenter", epochs=1, world_size=2)
    assert load_split(out / "split.json") == make_split(find_cases(synth_root), 0.2, seed=42)
    assert isinstance(ResUNet.from_pretrained(out), ResUNet)
