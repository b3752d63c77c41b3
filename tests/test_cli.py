"""One set of command-line arguments (issue 11.7): every command spells --segmenter, --classifier,
--device, --precision, --threads and the data folder the same way, with the same help, and every
main() returns an exit code."""
import argparse
import importlib.util
import json
import runpy

import pytest
import torch

from brainseg import cli
from brainseg.config import PRECISIONS
from conftest import ROOT

SHARED = ("--segmenter", "--classifier", "--segmenter-revision", "--classifier-revision",
          "--device", "--precision", "--threads")


class Parsed(Exception):
    """Raised instead of parsing, carrying the parser a command built."""


def parser_of(main, monkeypatch, argv=("x",)) -> argparse.ArgumentParser:
    def capture(self, args=None, namespace=None):
        raise Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(Parsed) as e:
        main(list(argv))
    return e.value.args[0]


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def commands():
    import app
    from brainseg import bench, calibrate, evaluate, predict

    return {"evaluate": evaluate.main, "predict": predict.main, "calibrate": calibrate.main, "app": app.main,
            "bench": bench.main, "bench_app": script("bench_app").main, "bench_case": script("bench_case").main,
            "train": lambda argv: runpy.run_path(str(ROOT / "train.py"), run_name="train_under_test")}


def options(parser) -> dict:
    return {s: a for a in parser._actions for s in a.option_strings}


def test_every_command_spells_the_shared_arguments_alike(commands, monkeypatch):
    seen = {}
    for name, main in commands.items():
        if name == "train":
            continue  # train.py shares the data folder only: its --precision is the training arithmetic
        opts = options(parser_of(main, monkeypatch))
        for flag in SHARED:
            if name in ("calibrate", "bench") and flag == "--precision":
                continue  # calibrate chooses in fp32; bench times fp32 and (where native) bf16 both
            if name == "bench" and flag in ("--segmenter", "--classifier", "--segmenter-revision",
                                            "--classifier-revision"):
                continue  # bench times architectures (and models/ with --shipped), not a chosen checkpoint
            assert flag in opts, f"{name} lacks {flag}"
            seen.setdefault(flag, {})[name] = opts[flag]
    for flag, by_command in seen.items():
        helps = {n: a.help.split(" (default")[0] for n, a in by_command.items()}
        assert len(set(helps.values())) == 1, (flag, helps)
        assert len({a.dest for a in by_command.values()}) == 1, flag
    assert all(a.choices == PRECISIONS for a in seen["--precision"].values())
    assert "user/repo@rev" in seen["--segmenter"]["evaluate"].help
    assert seen["--segmenter"]["calibrate"].required and not seen["--segmenter"]["evaluate"].required


REQUIRED = {"evaluate": [], "predict": ["--out", "o"], "train": ["--out", "o"],
            "calibrate": ["--split", "s.json", "--segmenter", "s", "--classifier", "c", "--out", "o"]}


def test_one_spelling_for_json_output_folders_and_the_device(commands, monkeypatch):
    """--json for every JSON output, --out for every output folder, --device defaulting to the CPU everywhere,
    --encoder/--image-size as train.py spells them; none of the old spellings is left."""
    old = {"--eval-json", "--save-rules", "--out-segmenter", "--out-classifier", "--segmenter-dir", "--encoders",
           "--size", "--classifier-size"}
    for name, main in commands.items():
        opts = options(parser_of(main, monkeypatch, argv=("segmenter",) if name == "train" else ("x",)))
        assert not old & set(opts), (name, old & set(opts))
        assert not [o for o in opts if o != "--json" and (o.endswith("-json") or o.startswith("--out-"))], name
        if "--device" in opts:
            assert opts["--device"].default == "cpu", name
        if name in ("evaluate", "calibrate", "bench", "bench_app", "bench_case"):
            assert "--json" in opts, f"{name} writes JSON without --json"
        if name in ("predict", "calibrate", "train"):
            assert "--out" in opts and opts["--out"].required, name
        if name in ("bench", "train"):
            assert {"--encoder", "--image-size"} <= set(opts), name


def test_every_command_has_an_entry_point_that_resolves():
    """pyproject.toml names an entry point for every command, and each one imports as a callable."""
    import importlib
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for name in ("evaluate", "predict", "calibrate", "bench", "card", "train", "app", "push"):
        assert f"brainseg-{name}" in scripts, name
    for target in scripts.values():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), target


def test_script_entry_points_run_the_scripts_with_their_exit_codes(monkeypatch, capsys):
    from brainseg import commands

    monkeypatch.setattr("sys.argv", ["brainseg-app", "--segmenter", "no/such", "--classifier", "no/such"])
    with pytest.raises(SystemExit) as e:
        commands.app()
    assert e.value.code == 2 and "Cannot load the models" in capsys.readouterr().err
    monkeypatch.setattr(commands, "PROJECT_ROOT", ROOT / "no_such_checkout")
    assert commands.train() == 2 and "runs from a clone" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_the_data_folder_takes_either_spelling(commands, monkeypatch, name):
    parser = parser_of(commands[name], monkeypatch)
    monkeypatch.undo()
    extra = REQUIRED[name]
    task = ["segmenter"] if name == "train" else []
    a, b = parser.parse_args([*task, "DIR", *extra]), parser.parse_args([*task, "--data", "DIR", *extra])
    assert cli.data_arg(parser, a) == cli.data_arg(parser, b) == "DIR"
    with pytest.raises(SystemExit):
        cli.data_arg(parser, parser.parse_args([*task, *extra]))  # neither
    with pytest.raises(SystemExit):
        cli.data_arg(parser, parser.parse_args([*task, "A", "--data", "B", *extra]))  # two different folders


def test_evaluate_runs_with_data_as_an_option(synth_root, tiny_checkpoints, tmp_path):
    from brainseg.evaluate import main

    out = tmp_path / "m.json"
    assert main(["--data", str(synth_root), "--segmenter", str(tiny_checkpoints["segmenter"]),
                 "--classifier", str(tiny_checkpoints["classifier"]), "--precision", "fp32", "--threads", "1",
                 "--quiet", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["cases"] > 0


def test_threads_and_revisions_reach_torch_and_the_loader(monkeypatch):
    from brainseg.inference import Predictor

    calls = {}
    monkeypatch.setattr(Predictor, "from_sources", classmethod(lambda cls, *a, **k: calls.update(k) or "p"))
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.update(threads=n))
    p = argparse.ArgumentParser()
    cli.add_model_args(p)
    cli.add_runtime_args(p)
    args = p.parse_args(["--segmenter", "user/seg", "--segmenter-revision", "v1", "--threads", "3",
                         "--precision", "bf16", "--device", "cpu"])
    assert cli.predictor_from_args(args) == "p"
    assert calls == {"segmenter": "user/seg", "classifier": None, "segmenter_revision": "v1",
                     "classifier_revision": None, "device": "cpu", "precision": "bf16", "threads": 3}
    with pytest.raises(ValueError, match="--threads"):
        cli.apply_threads(p.parse_args(["--threads", "-1"]))


def test_app_main_returns_0_when_the_server_closes(monkeypatch, fake_predictor):
    import app

    monkeypatch.setattr(app, "predictor_from_args", lambda args: fake_predictor)
    monkeypatch.setattr(app, "launch", lambda demo, host, port: None)  # a server closed at once
    monkeypatch.setattr(app, "build_demo", lambda predictor, examples: None)
    assert app.main(["--port", "0"]) == 0


def test_benchmark_mains_return_exit_codes(monkeypatch):
    for name in ("bench_app", "bench_case"):
        module = script(name)
        monkeypatch.setattr(module, "run", lambda argv=None: {"figures": 1})
        assert module.main([]) == 0


def test_calibrate_fetches_a_hub_source_at_its_revision(monkeypatch, tiny_checkpoints):
    import huggingface_hub

    from brainseg.sources import model_folder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo, revision=None, allow_patterns=None: calls.append((repo, revision))
                        or str(tiny_checkpoints["segmenter"]))
    assert model_folder("user/seg@v1") == tiny_checkpoints["segmenter"]
    assert model_folder("user/seg", revision="abc") == tiny_checkpoints["segmenter"]
    assert calls == [("user/seg", "v1"), ("user/seg", "abc")]
    assert model_folder(str(tiny_checkpoints["segmenter"])) == tiny_checkpoints["segmenter"]
