"""The scripts under scripts/ that the README quotes, run on synthetic cases."""
import importlib.util
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
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
