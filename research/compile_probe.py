"""Does torch.compile train the segmenter faster on this CPU? (lever 1 of issue 12)

    python research/compile_probe.py [--size 128] [--precision bf16] [--steps 6]

Times the training step of train.py (forward under autocast, deep-supervision loss, backward, AdamW) for the
recipe's segmenter (resnet18, decoder 256-128-64-32-16, deep supervision 3, batch 16, channels-last) eagerly
and under ``torch.compile`` (inductor), on random data, and prints the compile warm-up and the median
images/s of each. Run it on an idle machine: another process on the cores changes both figures.
"""
import argparse
import statistics

import torch

from brainseg.bench import _timed
from brainseg.config import SegmenterConfig
from brainseg.engine import backward_step, forward_loss
from brainseg.losses import BCEDiceLoss, DeepSupervisionLoss
from brainseg.models import ResUNet

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--size", type=int, default=128)
ap.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
ap.add_argument("--steps", type=int, default=6)
args = ap.parse_args()

cpu = torch.device("cpu")
for mode in ("eager", "compile"):
    torch.manual_seed(0)
    cfg = SegmenterConfig(encoder="resnet18", image_size=args.size, decoder_channels=[256, 128, 64, 32, 16],
                          deep_supervision=3)
    model = ResUNet(cfg).to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = DeepSupervisionLoss(BCEDiceLoss())
    x = torch.randn(16, 3, args.size, args.size)
    y = (torch.rand(16, 1, args.size, args.size) > 0.9).float()
    run = torch.compile(model) if mode == "compile" else model
    run.config = model.config  # forward_loss reads deep_supervision from it

    def step():
        backward_step(forward_loss(run, loss_fn, x, y, cpu, args.precision), opt)

    warm = sum(_timed(step, 2, cpu))  # compiling happens here
    times = _timed(step, args.steps, cpu)
    print(f"{mode:8s} {args.precision} {args.size}px: warm-up {warm:.0f} s, "
          f"{16 / statistics.median(times):.1f} training images/s", flush=True)
