"""Training throughput and inference latency of the models on the current device.

    python -m brainseg.bench                                  # resnet18 and resnet34 ResUNets at 256
    python -m brainseg.bench --encoder resnet34 --train-steps 3 --json bench.json
    python -m brainseg.bench --shipped                        # also time models/segmenter, models/classifier
    python -m brainseg.bench --encoder resnet18 --decoder-channels 128 64 32 16 16   # a lighter decoder

For each segmenter encoder: GFLOP per slice, training images/s (ResUNet forward + backward +
AdamW step at batch 16, channels-last as ``train.py`` runs it) in fp32 and, where the CPU has
native bf16, in bf16 autocast as ``train.py --precision auto`` runs it; inference latency per slice (p50 at batch
1) and throughput at batch 16; then the same inference figures for the classifier (resnet18 at
128 by default). Weights are untrained: the time does not depend on them. On CUDA the forward
runs in fp16 autocast with channels_last, as in training. On the CPU, inference runs
channels-last as the Predictor does, in fp32, and the shipped segmenter also in bf16 autocast
where the CPU has native bf16 (the Predictor's default there). The device line says which CPU
and whether it has native bf16: figures differ between machines. Figures on a loaded machine
are slower: run it alone.
"""
import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from .cli import add_runtime_args, apply_threads, entry_point, write_output
from .config import ClassifierConfig, SegmenterConfig
from .engine import backward_step
from .precision import autocast
from .precision import resolve_precision
from .losses import BCEDiceLoss
from .models import ResUNet, TumorClassifier


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _prepare(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _input(batch: int, size: int, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = torch.randn(batch, 3, size, size, device=device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _timed(fn: Callable[[], None], runs: int, device: torch.device) -> List[float]:
    times = []
    for _ in range(runs):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def gflops(model: nn.Module, size: int) -> float:
    """Forward GFLOP for one slice (torch's FLOP counter: 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, model.config.model_in_chans, size, size, device=next(model.parameters()).device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(x)
    return counter.get_total_flops() / 1e9


def train_throughput(model: nn.Module, size: int, device: torch.device, batch: int = 16, steps: int = 3,
                     warmup: int = 1, precision: str = "fp32") -> float:
    """Images/s of forward + BCE-Dice loss + backward + AdamW step on random data, as train.py steps."""
    model = _prepare(model, device, channels_last=True).train()  # as train.py runs it
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = BCEDiceLoss()
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    x = _input(batch, size, device, channels_last=True)
    y = (torch.rand(batch, 1, size, size, device=device) > 0.9).float()

    def step():
        with autocast(device, precision):
            out = model(x)
        loss = loss_fn(out.float(), y)
        backward_step(loss, opt, scaler)

    _timed(step, warmup, device)
    return batch * steps / sum(_timed(step, steps, device))


@torch.no_grad()
def inference_timing(model: nn.Module, size: int, device: torch.device, runs: int = 20, batch: int = 16,
                     batch_runs: int = 3, warmup: int = 3, precision: str = "fp32") -> Dict[str, float]:
    """Latency per slice at batch 1 (p50 and p90 over ``runs``) and slices/s at ``batch``."""
    model = _prepare(model, device, channels_last=True).eval()
    x1, xb = _input(1, size, device, True), _input(batch, size, device, True)

    def one():
        with autocast(device, precision):
            model(x1)

    def many():
        with autocast(device, precision):
            model(xb)

    _timed(one, warmup, device)
    lat = sorted(_timed(one, runs, device))
    _timed(many, 1, device)
    tb = _timed(many, batch_runs, device)
    return {"latency_ms_p50": 1000 * statistics.median(lat),
            "latency_ms_p90": 1000 * lat[min(len(lat) - 1, int(0.9 * len(lat)))],
            f"throughput_batch{batch}": batch * batch_runs / sum(tb)}


def n_params(model: nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def bench_segmenter(encoder: str, size: int, device: torch.device, train_steps: int, runs: int,
                    decoder_channels: Optional[Sequence[int]] = None) -> Dict:
    cfg = SegmenterConfig(encoder=encoder, image_size=size)
    if decoder_channels:
        cfg.decoder_channels = list(decoder_channels)
    model = ResUNet(cfg)
    row = {"model": "segmenter", "encoder": encoder, "decoder": "-".join(map(str, cfg.decoder_channels)),
           "size": size, "params_M": n_params(model), "gflop": gflops(model, size)}
    if train_steps > 0:
        row["train_images_per_s"] = train_throughput(model, size, device, steps=train_steps)
        if device.type == "cpu" and resolve_precision("auto", device) == "bf16":
            row["train_images_per_s_bf16"] = train_throughput(model, size, device, steps=train_steps,
                                                              precision="bf16")
    row.update(inference_timing(model, size, device, runs=runs))
    return row


def bench_classifier(encoder: str, size: int, device: torch.device, runs: int) -> Dict:
    model = TumorClassifier(ClassifierConfig(encoder=encoder, image_size=size))
    row = {"model": "classifier", "encoder": encoder, "size": size, "params_M": n_params(model)}
    row.update(inference_timing(model, size, device, runs=runs))
    return row


def bench_shipped(device: torch.device, runs: int) -> List[Dict]:
    """Inference timing of the shipped models (models/segmenter, models/classifier) when present."""
    from .sources import DEFAULT_MODELS, load_model

    rows = []
    for kind, folder in DEFAULT_MODELS.items():
        if not (folder / "config.json").exists():
            print(f"(no shipped {kind} in {folder}: skipped)")
            continue
        model, src = load_model(kind, str(folder))
        size = model.config.image_size
        fast = resolve_precision("auto", device) if device.type == "cpu" else "fp32"
        for precision in ["fp32"] + ([fast] if kind == "segmenter" and fast != "fp32" else []):
            row = {"model": f"shipped {kind}", "encoder": model.config.encoder, "size": size,
                   "params_M": n_params(model), "source": str(src), "precision": precision}
            row.update(inference_timing(model, size, device, runs=runs, precision=precision))
            rows.append(row)
    return rows


def format_rows(rows: Sequence[Dict]) -> str:
    head = f"{'model':<20} {'encoder':<16} {'decoder':<16} {'size':>4} {'params M':>8} {'GFLOP':>6} " \
           f"{'precision':>9} {'train img/s':>11} {'train bf16':>10} {'p50 ms (b=1)':>12} {'slices/s (b=16)':>15}"
    lines = [head]

    def fig(r, k, fmt="{:.1f}"):
        return fmt.format(r[k]) if k in r else "-"

    for r in rows:
        lines.append(f"{r['model']:<20} {r['encoder']:<16} {r.get('decoder', '-'):<16} {r['size']:>4} "
                     f"{r['params_M']:>8.1f} {fig(r, 'gflop'):>6} {r.get('precision', 'fp32'):>9} "
                     f"{fig(r, 'train_images_per_s'):>11} {fig(r, 'train_images_per_s_bf16'):>10} "
                     f"{r['latency_ms_p50']:>12.1f} {r['throughput_batch16']:>15.1f}")
    return "\n".join(lines)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    bf16 = "native bf16" if resolve_precision("auto", device) == "bf16" else "no native bf16"
    return f"CPU ({cpu_model()}; {bf16}), {torch.get_num_threads()} torch threads"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(argv: Optional[Sequence[str]] = None) -> Dict:
    """Parse ``argv``, run, print; returns the figures (what :func:`main` prints and writes)."""
    p = argparse.ArgumentParser(prog="python -m brainseg.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", nargs="+", default=["resnet18", "resnet34"],
                   help="segmenter encoders (timm names; several: one row each)")
    p.add_argument("--image-size", type=int, default=256, help="segmenter input size")
    p.add_argument("--decoder-channels", type=int, nargs="+", help="segmenter decoder widths (default: the config's)")
    p.add_argument("--classifier-encoder", default="resnet18", help="classifier encoder (timm name)")
    p.add_argument("--classifier-image-size", type=int, default=128, help="classifier input size")
    p.add_argument("--train-steps", type=int, default=3, help="timed training steps at batch 16 (0: skip)")
    p.add_argument("--runs", type=int, default=20, help="timed batch-1 inference runs")
    p.add_argument("--shipped", action="store_true", help="also time the shipped models in models/")
    add_runtime_args(p, precision=False)  # fp32 and, where the CPU has native bf16, bf16: both are timed
    p.add_argument("--json", dest="json_out", help="write the figures here as JSON")
    args = p.parse_args(argv)

    apply_threads(args)
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"device: {device_name(device)}; torch {torch.__version__}", flush=True)
    rows = []
    for enc in args.encoder:
        print(f"timing segmenter {enc} at {args.image_size}...", flush=True)
        rows.append(bench_segmenter(enc, args.image_size, device, args.train_steps, args.runs, args.decoder_channels))
    print(f"timing classifier {args.classifier_encoder} at {args.classifier_image_size}...", flush=True)
    rows.append(bench_classifier(args.classifier_encoder, args.classifier_image_size, device, args.runs))
    if args.shipped:
        rows += bench_shipped(device, args.runs)
    print()
    print(format_rows(rows))
    result = {"device": device_name(device), "torch": torch.__version__, "rows": rows}
    if args.json_out:
        write_output(args.json_out, json.dumps(result, indent=2) + "\n")
    return result


main = entry_point(run)


if __name__ == "__main__":
    raise SystemExit(main())
