"""brainseg.bench runs end to end on tiny models and reports every figure it promises."""
import json

from brainseg import bench
from brainseg.config import SegmenterConfig
from brainseg.models import ResUNet

from conftest import TINY_ENCODER


def test_bench_cli_on_tiny_models(tmp_path, capsys):
    out = tmp_path / "bench.json"
    result = bench.run(["--encoder", TINY_ENCODER, "--image-size", "64", "--classifier-encoder", TINY_ENCODER,
                         "--classifier-image-size", "64", "--train-steps", "1", "--runs", "2", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert rows == json.loads(json.dumps(result["rows"]))
    seg, clf = rows
    assert seg["model"] == "segmenter" and seg["train_images_per_s"] > 0
    for r in rows:
        assert r["latency_ms_p50"] > 0 and r["throughput_batch16"] > 0 and r["params_M"] > 0
    assert "p50 ms (b=1)" in capsys.readouterr().out


def test_bf16_timing_runs_on_the_cpu():
    import torch

    model = ResUNet(SegmenterConfig(encoder=TINY_ENCODER, image_size=64))
    r = bench.inference_timing(model, 64, torch.device("cpu"), runs=2, batch_runs=1, warmup=1, precision="bf16")
    assert r["latency_ms_p50"] > 0


def test_segmenter_row_counts_flops_and_times_bf16_training_where_native():
    import torch

    from brainseg.precision import resolve_precision

    cpu = torch.device("cpu")
    wide = bench.bench_segmenter(TINY_ENCODER, 64, cpu, train_steps=1, runs=1)
    light = bench.bench_segmenter(TINY_ENCODER, 64, cpu, train_steps=1, runs=1, decoder_channels=[16, 8, 8, 8, 8])
    assert light["decoder"] == "16-8-8-8-8" and 0 < light["gflop"] < wide["gflop"]
    native = resolve_precision("auto", cpu) == "bf16"
    assert ("train_images_per_s_bf16" in wide) == native
    assert "bf16" in bench.device_name(cpu) and bench.cpu_model()
