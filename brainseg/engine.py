"""Train one epoch, validate, checkpoint and resume; no argument parsing here (see train.py)."""
import math
import os
from typing import Dict, Iterable, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from .decision import classifier_probability
from . import precision as prec
from .precision import autocast
from .metrics import CaseDiceAggregator, detection_metrics, expected_calibration_error


# ---------------------------------------------------------------- distributed

def setup_distributed() -> Dict[str, int]:
    """Join the process group when launched by torchrun (NCCL on GPUs, gloo on the CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return {"rank": rank, "world_size": world, "local_rank": local}


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast_from_rank0(value):
    """Rank 0's ``value`` on every rank (a choice that each rank would otherwise make on its own timing)."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


# ---------------------------------------------------------------- precision and weight averaging

def make_ema(model: nn.Module, decay: float) -> Optional[torch.optim.swa_utils.AveragedModel]:
    """An exponential moving average of the weights and BatchNorm statistics (None when ``decay`` is 0).

    With ~70 training patients the raw weights wander from step to step; the average is what gets
    validated and shipped.
    """
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    return AveragedModel(unwrap(model), multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def averaged(model: nn.Module, ema: Optional[nn.Module]) -> nn.Module:
    """The module to validate and save: the EMA copy when there is one."""
    return ema.module if ema is not None else unwrap(model)


# ---------------------------------------------------------------- schedule

def cosine_with_warmup(optimizer, warmup_steps: int, total_steps: int, min_ratio: float = 0.01):
    """Linear warm-up, then cosine decay to ``min_ratio`` of the base learning rate."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(warmup_steps, 1)
        t = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ---------------------------------------------------------------- training precision (the rule: brainseg.precision)

def faster_training_precision(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor,
                              runs: int = 2) -> str:
    """'bf16' or 'fp32': whichever trains ``model`` faster on this CPU, timed on a copy (forward, loss and
    backward on the batch ``x, y``; one warm-up each), so the run itself starts untouched.

    The CPU flags alone mislead: on an AMD EPYC reporting ``avx512_bf16``, bf16 autocast trained the
    shipped segmenter at 0.8 images/s against 7.9 in fp32; on an Intel Xeon with native bf16 it was 1.5x
    faster at 256x256. As :func:`brainseg.precision.faster_precision` does for inference, measure.
    """
    import copy

    probe = copy.deepcopy(unwrap(model)).train()

    def step(precision):
        probe.zero_grad(set_to_none=True)
        forward_loss(probe, loss_fn, x, y, torch.device("cpu"), precision).backward()
    return prec.faster_of_fp32_and_bf16(step, runs)


def auto_training_precision(device: torch.device, model: nn.Module, loss_fn: nn.Module, example: tuple,
                            batch_size: int = 4) -> str:
    """What ``--precision auto`` trains in: fp32 (or CUDA's fp16 AMP, which ``autocast`` applies on any
    precision) unless the CPU reports native bf16 *and* :func:`faster_training_precision` times bf16 faster
    on a batch of ``example`` (an (image, target) item of the training set); every DDP rank takes rank 0's."""
    precision = "fp32"
    if device.type == "cpu" and prec.cpu_has_native_bf16():
        x, y = example
        n = min(batch_size, 4)
        precision = faster_training_precision(model, loss_fn, x.expand(n, *x.shape), y.expand(n, *y.shape))
    return broadcast_from_rank0(precision)


# ---------------------------------------------------------------- loops

def forward_loss(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device,
                 precision: str = "fp32") -> torch.Tensor:
    """The training loss of one batch: forward under :func:`autocast`, the loss in fp32; a segmenter with
    deep supervision also hands its side outputs to the loss."""
    sides = getattr(getattr(unwrap(model), "config", None), "deep_supervision", 0) > 0  # the loss then takes (logits, sides)
    x = x.contiguous(memory_format=torch.channels_last)  # as the model is (train.py)
    with autocast(device, precision):
        out = model(x, sides=True) if sides else model(x)
    return loss_fn(out, y) if sides else loss_fn(out.float(), y)


def backward_step(loss: torch.Tensor, optimizer, scaler: Optional[torch.amp.GradScaler] = None) -> None:
    """Zero the gradients, backpropagate ``loss`` and step, through the AMP scaler when there is one."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


def train_one_epoch(model: nn.Module, loader: Iterable, loss_fn: nn.Module, optimizer, scheduler,
                    device: torch.device, scaler: Optional[torch.amp.GradScaler] = None, max_steps: int = 0,
                    desc: str = "train", show: bool = True, precision: str = "fp32",
                    ema: Optional[nn.Module] = None) -> float:
    """One pass over ``loader``; returns the mean training loss.

    fp16 AMP on CUDA, bf16 autocast on the CPU when ``precision="bf16"``; the loss is computed in
    fp32. ``ema`` (see :func:`make_ema`) is updated after every optimiser step.
    """
    model.train()
    total, n = 0.0, 0
    bar = tqdm(loader, desc=desc, leave=False, disable=not show)
    for step, (x, y) in enumerate(bar):
        if max_steps and step >= max_steps:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = forward_loss(model, loss_fn, x, y, device, precision)
        backward_step(loss, optimizer, scaler)
        scheduler.step()
        if ema is not None:
            ema.update_parameters(unwrap(model))
        total += loss.item() * len(x)
        n += len(x)
        bar.set_postfix(loss=f"{total / n:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
    return total / max(n, 1)


@torch.no_grad()
def predict_logits(model: nn.Module, dataset, device: torch.device, batch_size: int = 32, precision: str = "fp32"):
    """(logits, targets) for every item of ``dataset`` in order (no augmentation: pass an eval dataset)."""
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    out, targets = [], []
    for x, y in loader:
        targets.append(y)
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            out.append(model(x).float().cpu())
    if not out:
        return torch.zeros(0), torch.zeros(0)
    return torch.cat(out), torch.cat(targets)


def validate_segmenter(model: nn.Module, dataset, device: torch.device, threshold: float = 0.5,
                       precision: str = "fp32") -> Dict[str, float]:
    """Per-case Dice etc. on the validation cases at the model's input size."""
    logits, masks = predict_logits(model, dataset, device, precision=precision)
    agg = CaseDiceAggregator()
    pred = (torch.sigmoid(logits[:, 0]) >= threshold).numpy()
    truth = (masks[:, 0] > 0.5).numpy() if len(masks) else masks
    for i, (case, _) in enumerate(dataset.index):
        agg.update(case, pred[i], truth[i])
    return agg.compute()


def validate_classifier(model: nn.Module, dataset, device: torch.device, threshold: float = 0.5,
                        precision: str = "fp32") -> Dict[str, float]:
    """Slice-level AUROC, accuracy, sensitivity, specificity and ECE on the validation cases."""
    logits = predict_logits(model, dataset, device, precision=precision)[0][:, 0].numpy()
    probs = classifier_probability(logits, unwrap(model).config.temperature)  # 1.0 until calibration sets it
    out = detection_metrics(probs, dataset.labels, threshold)
    out["ece"] = expected_calibration_error(probs, dataset.labels)
    return out


# ---------------------------------------------------------------- checkpoints

def save_state(path: str, model: nn.Module, optimizer, scheduler, epoch: int, best: float, history: list,
               ema: Optional[nn.Module] = None) -> None:
    """Training state for --resume (optimizer, schedule and EMA included); the model itself goes to Hub format.

    Written to a temporary file and renamed, so a run killed mid-save leaves the previous state intact.
    """
    tmp = f"{path}.tmp"
    torch.save({"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch, "best": best, "history": history,
                "ema": ema.state_dict() if ema is not None else None}, tmp)
    os.replace(tmp, path)


def load_state(path: str, model: nn.Module, optimizer, scheduler, ema: Optional[nn.Module] = None) -> Dict:
    state = torch.load(path, map_location="cpu", weights_only=False)
    unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if ema is not None:
        if state.get("ema") is None:
            raise ValueError(f"{path} holds no EMA weights; resume with the same --ema-decay as the run (0 for none)")
        ema.load_state_dict(state["ema"])
    return state
