"""The precision rule, once: which arithmetic (fp32 or bf16) the segmenter runs and trains in.

CPUs that report bf16 instructions differ (native AMX: bf16 about 2x faster; AVX512-BF16 alone on this
project's VMs: slower than fp32), so ``"auto"`` asks the CPU flags and then times both ways. The
Predictor, ``train.py``, the benchmarks and the app all ask here.
"""
import os
import time
from contextlib import nullcontext
from typing import Dict, Optional

import torch
import torch.nn as nn

from .config import PRECISIONS


def autocast(device: torch.device, precision: str = "fp32"):
    """Mixed precision for the forward pass: fp16 on CUDA, bf16 on a CPU when asked; fp32 master weights."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


def inference_autocast(device: torch.device, precision: str):
    """The Predictor's segmenter pass: bf16 autocast when ``precision == "bf16"`` (CPU or CUDA), else fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 in hardware (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: Optional[str], device: torch.device) -> str:
    """'auto' (or None: the ``BRAINSEG_PRECISION`` env var, else auto) becomes 'bf16' where the hardware
    runs it natively, else 'fp32'."""
    precision = (precision or os.environ.get("BRAINSEG_PRECISION") or "auto").lower()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def faster_of_fp32_and_bf16(step, runs: int = 2) -> str:
    """'bf16' or 'fp32': whichever ``step(precision)`` runs faster, timed over ``runs`` calls after one warm-up
    each (oneDNN picks its kernels on the first call); a tie keeps fp32. Inference and training both ask."""
    seconds = {}
    for precision in ("fp32", "bf16"):
        step(precision)
        start = time.perf_counter()
        for _ in range(runs):
            step(precision)
        seconds[precision] = time.perf_counter() - start
    return "bf16" if seconds["bf16"] < seconds["fp32"] else "fp32"


_FASTER: Dict[tuple, str] = {}  # (model class, its config, input size) -> the faster precision, per process


def faster_precision(model: torch.nn.Module, size: int, in_chans: int = 3, runs: int = 2) -> str:
    """'bf16' or 'fp32': whichever runs ``model`` faster on this CPU, timed at batch 1 (after one warm-up each).

    CPUs that report bf16 instructions differ: on some (AMX) bf16 autocast halves the segmenter's time,
    on others (AVX512-BF16 alone, as on this project's VMs in December 2026) it is slower than fp32.
    So ``precision="auto"`` measures instead of trusting the flags; the answer is cached per process.
    """
    config = getattr(model, "config", None)  # a model without a config is timed each time (nothing to key on)
    key = (type(model).__name__, repr(config), size) if config is not None else None
    if key is None or key not in _FASTER:
        x = torch.randn(1, in_chans, size, size).contiguous(memory_format=torch.channels_last)

        def step(precision):
            with torch.no_grad(), (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16"
                                   else nullcontext()):
                model(x)
        answer = faster_of_fp32_and_bf16(step, runs)
        if key is None:
            return answer
        _FASTER[key] = answer
    return _FASTER[key]


def inference_precision(precision: Optional[str], device: torch.device, segmenter: nn.Module) -> str:
    """What the Predictor runs ``segmenter`` in: :func:`resolve_precision`, and where "auto" meets a CPU that
    claims bf16, only if :func:`faster_precision` finds it faster here."""
    requested = (precision or os.environ.get("BRAINSEG_PRECISION") or "auto").lower()
    chosen = resolve_precision(precision, device)
    if requested == "auto" and device.type == "cpu" and chosen == "bf16":
        cfg = segmenter.config
        chosen = faster_precision(segmenter, cfg.image_size, cfg.model_in_chans)
    return chosen
