"""benchmarks/bench_case.py reports the rule the Predictor applies (detection threshold, mask iff
detected), not the retired gate_threshold."""
import importlib.util
import tempfile

import pytest

from brainseg.config import ClassifierConfig
from brainseg.inference import Predictor
from conftest import ROOT


def bench_case():
    spec = importlib.util.spec_from_file_location("bench_case", ROOT / "benchmarks" / "bench_case.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_case_reports_the_detection_rule(tiny_checkpoints, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the benchmark's case zip and outputs go here
    module = bench_case()
    p = Predictor.from_sources(str(tiny_checkpoints["segmenter"]), str(tiny_checkpoints["classifier"]))
    rule = module.detection_rule(p)
    assert rule["detection_threshold"] == p.detection_threshold and rule["detection"] == "classifier"
    assert "detected slices only" in rule["segmenter_runs_on"]
    res = module.run(["--models", "tiny", "--no-api", "--slices", "3", "--repeats", "1", "--threads", "1"])
    assert "gate_threshold" not in res
    assert res["detection_threshold"] == pytest.approx(ClassifierConfig().threshold) and not res["fused_detection"]
    assert {"detection", "detection_threshold", "pixel_threshold", "segmenter_runs_on"} <= res.keys()
