"""The research scripts (research/) that the docs quote, run on synthetic cases."""
import importlib.util
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "research" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_segmenters_scores_only_cases_neither_model_trained_on(tiny_checkpoints, synth_root, tmp_path, capsys):
    from conftest import SYNTH_CASES

    compare = load_script("compare_segmenters")
    fold = tmp_path / "fold"
    shutil.copytree(tiny_checkpoints["segmenter"], fold)
    (fold / "split.json").write_text(json.dumps({"train": SYNTH_CASES[2:], "val": SYNTH_CASES[:2]}))
    shipped = tmp_path / "shipped"
    shutil.copytree(tiny_checkpoints["segmenter"], shipped)
    (tmp_path / "shipped_split.json").write_text(json.dumps({"train": SYNTH_CASES[1:], "val": SYNTH_CASES[:1]}))
    argv = [str(fold), "--data", str(synth_root), "--shipped", str(shipped),
            "--shipped-split", str(tmp_path / "shipped_split.json")]

    assert compare.main(argv) == 0
    out = capsys.readouterr().out
    assert "on its 2 held-out cases" in out and f"on the 1 cases neither trained on ({SYNTH_CASES[0]})" in out
    # a shipped model trained on every case (the v2 models: all 88) has no held-out case to compare on
    (shipped / "metrics.json").write_text(json.dumps({"val_cases": 0, "train_cases": 6}))
    assert compare.main(argv) == 0
    out = capsys.readouterr().out
    assert "trained on every case" in out and "neither trained on" not in out


def test_compare_segmenters_pairs_runs_of_one_fold_case_by_case(tiny_checkpoints, synth_root, tmp_path, capsys):
    import pytest
    import torch

    from brainseg.config import SegmenterConfig
    from brainseg.models import ResUNet
    from conftest import SYNTH_CASES, TINY_ENCODER

    compare = load_script("compare_segmenters")
    split = json.dumps({"train": SYNTH_CASES[3:], "val": SYNTH_CASES[:3]})
    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        ResUNet(SegmenterConfig(encoder=TINY_ENCODER, image_size=64)).save_pretrained(tmp_path / name)
        (tmp_path / name / "split.json").write_text(split)
    shipped = tmp_path / "shipped"
    shutil.copytree(tiny_checkpoints["segmenter"], shipped)
    (shipped / "metrics.json").write_text(json.dumps({"val_cases": 0}))
    argv = [str(tmp_path / "a"), str(tmp_path / "b"), "--data", str(synth_root), "--shipped", str(shipped),
            "--json", str(tmp_path / "abl.json")]
    assert compare.main(argv) == 0
    report = json.loads((tmp_path / "abl.json").read_text())
    a, b = (report[str(tmp_path / n)] for n in "ab")
    assert sorted(a["per_case_dice"]) == sorted(SYNTH_CASES[:3]) and "against_first" not in a
    diff = [b["per_case_dice"][c] - a["per_case_dice"][c] for c in SYNTH_CASES[:3]]
    pair = b["against_first"]
    assert pair["cases"] == 3 and pair["mean"] == pytest.approx(sum(diff) / 3, abs=1e-4)
    assert pair["ahead"] == sum(d > 0 for d in diff) and pair["behind"] == sum(d < 0 for d in diff)
    assert f"against {tmp_path / 'a'}, per-case Dice" in capsys.readouterr().out
    # a kept run (its folder gone) stands in for the first: run b alone against a's per-case Dice in the JSON
    (tmp_path / "kept.json").write_text(json.dumps({"results": {"a": {"per_case_dice": a["per_case_dice"]}}}))
    kept = [str(tmp_path / "b"), "--data", str(synth_root), "--shipped", str(shipped),
            "--against", f"{tmp_path / 'kept.json'}:a", "--json", str(tmp_path / "b.json")]
    assert compare.main(kept) == 0
    again = json.loads((tmp_path / "b.json").read_text())[str(tmp_path / "b")]["against_kept"]
    assert again == {"run": f"{tmp_path / 'kept.json'}:a", **pair}
    capsys.readouterr()
    (tmp_path / "b" / "split.json").write_text(json.dumps({"train": SYNTH_CASES[:3], "val": SYNTH_CASES[3:]}))
    with pytest.raises(SystemExit):  # another fold's run: nothing to pair
        compare.main(argv)
    assert "hold out different cases" in capsys.readouterr().err


def test_channel_similarity_probe_tells_a_flair_like_pre_contrast_channel(tmp_path, capsys):
    """Case by case: one whose pre-contrast channel is built from FLAIR, one whose is built from post-contrast."""
    import cv2
    import numpy as np
    import torch

    from brainseg.input_net import InputNet, SingleChannelNet

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    head = (yy - 32) ** 2 + (xx - 32) ** 2 < 26 ** 2
    for name, like in (("TCGA_CS_0001_20000101", 1), ("TCGA_CS_0002_20000101", 2)):
        folder = tmp_path / "data" / name
        folder.mkdir(parents=True)
        for i in range(1, 5):
            flair, post = (rng.uniform(40, 200, (64, 64)) * head for _ in range(2))
            chans = {1: flair, 2: post}
            pre = 0.8 * chans[like] + rng.normal(0, 15, (64, 64)) * head  # alike, not the same image
            img = np.clip(np.stack([pre, flair, post], -1), 0, 255).astype(np.uint8)
            cv2.imwrite(str(folder / f"{name}_{i}.tif"), img[..., ::-1])
            cv2.imwrite(str(folder / f"{name}_{i}_mask.tif"), np.zeros((64, 64), np.uint8))
    (tmp_path / "splits.json").write_text(json.dumps({"folds": [["TCGA_CS_0001_20000101", "TCGA_CS_0002_20000101"]]}))
    torch.save(InputNet().state_dict(), tmp_path / "net.pt")
    torch.save(SingleChannelNet().state_dict(), tmp_path / "single.pt")

    probe = load_script("channel_similarity_probe")
    assert probe.main(["--data", str(tmp_path / "data"), "--every", "1", "--net", str(tmp_path / "net.pt"), "--single-net",
                       str(tmp_path / "single.pt"), "--fold", "0", "--splits", str(tmp_path / "splits.json")]) == 0
    out = capsys.readouterr().out
    assert "8 slices of 2 cases" in out
    assert "pre-contrast is at least as like FLAIR as like post-contrast: 50.0%" in out
    assert "cases whose median slice has it so: 1 of 2" in out
    for row in ("FLAIR and pre-contrast swapped", "pre-contrast alone"):  # 4 held-out slices each side
        assert out.split(row)[1].splitlines()[0].count("of 4") == 2
