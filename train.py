"""Train the ResUNet segmenter or the slice classifier on a kaggle_3m folder, from a recipe.

    python train.py segmenter  --data ../shared/data/lgg/kaggle_3m --out runs/segmenter   # configs/segmenter.json
    python train.py classifier --data ../shared/data/lgg/kaggle_3m --out runs/classifier --init-encoder-from runs/segmenter
    python train.py segmenter --data ... --folds splits/lgg_dev_4fold_seed42.json --fold 0 --out runs/cv/segmenter_0
    python train.py my_recipe.json --data ... --out ... --set dark_interior=0 --set epochs=16   # an experiment
    torchrun --nproc_per_node=2 train.py segmenter ...     # DDP: NCCL on GPUs, gloo on the CPU

The recipe (``configs/<task>.json``: the shipped models' model and training fields, as the typed
dataclasses of :mod:`brainseg.config`) says what to train; the options say on what, where, and how
long. One cosine schedule over the whole run. The saved epoch (``select``: ``"best"`` by validation
per-case Dice or AUROC, or ``"last"``: nothing chosen on the validation cases) goes with
``save_pretrained`` into --out, beside metrics.json and curves.png; with ``ema_decay`` the weight
average is what is validated and saved. ``last_state.pt`` is written every epoch, so ``--resume auto``
picks an interrupted run up where it stopped (and does nothing for a finished one).
"""
import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from brainseg import engine
from brainseg.cli import add_data_arg, data_arg
from brainseg.config import PRECISIONS, load_recipe
from brainseg.data import (BalancedSampler, SliceDataset, find_cases, fold_split, load_split, make_split, save_split,
                           select_cases)
from brainseg.losses import BCEDiceLoss, DeepSupervisionLoss, WeightedBCELoss
from brainseg.models import build_model
from brainseg.viz import plot_curves

# ---------------------------------------------------------------- arguments -> configs
p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("recipe", help="'segmenter' or 'classifier' (the shipped recipes in configs/), or a recipe JSON file")
add_data_arg(p, "kaggle_3m-layout folder")
p.add_argument("--out", required=True, help="folder for the checkpoint, metrics.json, curves.png and last_state.pt")
where = p.add_argument_group("which cases (split by patient)")
where.add_argument("--split", help="split JSON to read, or to write if missing (default: OUT/split.json)")
where.add_argument("--val-fraction", type=float, help="share of cases held out when no split file exists "
                   "(0: train on every case, no validation; default 0.2)")
where.add_argument("--folds", help="k-fold file (brainseg.data.make_folds); with --fold N the split is that fold")
where.add_argument("--fold", type=int, help="the fold of --folds to hold out")
how = p.add_argument_group("overrides of the recipe")
how.add_argument("--epochs", type=int, help="length of the schedule")
how.add_argument("--batch-size", type=int, help="slices a step (per process)")
how.add_argument("--lr", type=float, help="peak learning rate (AdamW, cosine schedule)")
how.add_argument("--encoder", help="timm model name of the encoder")
how.add_argument("--image-size", type=int, help="the models' input size (slices are resized to it)")
how.add_argument("--seed", type=int, help="seed of the split, the sampler and the weights (default 42)")
how.add_argument("--precision", choices=PRECISIONS, help="CPU autocast (auto: bf16 where the CPU has native bf16 "
                 "and a training step timed both ways at start-up is faster in it); CUDA always uses fp16 AMP")
how.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="any other field of the recipe's model or train config, e.g. --set dark_interior=0 (repeatable)")
run_ = p.add_argument_group("running")
run_.add_argument("--resume", help="last_state.pt of an interrupted run, or 'auto': OUT/last_state.pt when it exists")
run_.add_argument("--init-from", help="Hub-format checkpoint whose weights start this run")
run_.add_argument("--init-encoder-from", help="classifier only: a segmenter checkpoint with the same timm encoder "
                  "whose weights start the backbone (features learnt from tumour masks)")
run_.add_argument("--workers", type=int, help="data-loader processes")
run_.add_argument("--threads", type=int, help="torch CPU threads (0: torch's default)")
run_.add_argument("--max-steps", type=int, help="stop each epoch after N steps (smoke tests)")
run_.add_argument("--max-val-cases", type=int, help="validate on the first N validation cases only")
args = p.parse_args()
args.data = data_arg(p, args)
RUN_FIELDS = ("data", "out", "split", "val_fraction", "folds", "fold", "seed", "epochs", "batch_size", "lr",
              "precision", "resume", "init_from", "init_encoder_from", "workers", "threads", "max_steps",
              "max_val_cases")
given = {k: getattr(args, k) for k in (*RUN_FIELDS, "encoder", "image_size") if getattr(args, k) is not None}
try:  # the recipe, then --set, then the options given: the later wins
    task, model_cfg, tcfg = load_recipe(args.recipe, args.set, **given)
except ValueError as e:
    p.error(str(e))  # exit status 2, naming the recipe and the field
if (tcfg.folds is None) != (tcfg.fold is None):
    p.error("--folds and --fold go together")
if tcfg.folds and tcfg.split:
    p.error("give --split or --folds/--fold, not both")
if tcfg.init_encoder_from and task != "classifier":
    p.error("--init-encoder-from is for the classifier; use --init-from for the segmenter")
args.task = task
for k in RUN_FIELDS:  # the rest of the script reads the run's settings from args
    setattr(args, k, getattr(tcfg, k))
empty_fraction = tcfg.empty_fraction

# ---------------------------------------------------------------- set-up
out = Path(args.out)
if args.resume == "auto":
    args.resume = str(out / "last_state.pt") if (out / "last_state.pt").exists() else None
    done = out / "metrics.json"
    if args.resume and done.exists():
        ran = json.loads(done.read_text())["history"]
        if ran and ran[-1]["epoch"] >= args.epochs:
            print(f"{out} already holds a finished run of {ran[-1]['epoch']} epochs; nothing to do")
            raise SystemExit(0)
dist_info = engine.setup_distributed()
rank, world = dist_info["rank"], dist_info["world_size"]
main = rank == 0
device = torch.device(f"cuda:{dist_info['local_rank']}" if torch.cuda.is_available() else "cpu")
if args.threads:
    torch.set_num_threads(args.threads)
torch.manual_seed(args.seed + rank)
np.random.seed(args.seed + rank)
out.mkdir(parents=True, exist_ok=True)

# ---------------------------------------------------------------- data: the split is by patient
try:
    cases = find_cases(args.data)
except FileNotFoundError as e:
    p.error(str(e))  # exit status 2, naming the folder
split_path = Path(args.split) if args.split else out / "split.json"
split_exists = split_path.exists() and not args.folds
engine.barrier()  # every rank has looked before rank 0 may write, so all take the same branch
if args.folds:
    split = fold_split(json.loads(Path(args.folds).read_text()), args.fold)
else:
    split = load_split(split_path) if split_exists else make_split(cases, args.val_fraction, args.seed)
if main and not split_exists:
    save_split(split, split_path)
if main and split_path.resolve() != (out / "split.json").resolve():
    save_split(split, out / "split.json")  # the checkpoint folder says which cases it never saw
train_cases = select_cases(cases, split["train"])
val_cases = select_cases(cases, split["val"])
if args.max_val_cases:
    val_cases = val_cases[:args.max_val_cases]
train_ds = SliceDataset(train_cases, model_cfg, args.task, augment=tcfg.augment, progress=main,
                        dark_interior=tcfg.dark_interior)
val_ds = SliceDataset(val_cases, model_cfg, args.task, augment=False, progress=main)
sampler = BalancedSampler(train_ds.labels, empty_fraction, args.seed, rank, world)
loader = DataLoader(train_ds, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                    pin_memory=device.type == "cuda", drop_last=len(sampler) > args.batch_size,
                    persistent_workers=args.workers > 0)
if main:
    print(f"{args.task}: {len(train_cases)} train cases ({len(train_ds)} slices, {int(train_ds.labels.sum())} with tumour), "
          f"{len(val_cases)} val cases ({len(val_ds)} slices); {len(sampler)} slices/epoch/process, "
          f"{world} process(es) on {device}")

# ---------------------------------------------------------------- model, loss, optimiser
model = build_model(args.task, model_cfg)
if args.init_from:
    init = type(model).from_pretrained(args.init_from)
    model.load_state_dict(init.state_dict())
if args.init_encoder_from:
    from brainseg.models import ResUNet
    encoder = ResUNet.from_pretrained(args.init_encoder_from).encoder
    missing, unexpected = model.backbone.load_state_dict(encoder.state_dict(), strict=False)
    if unexpected or any(not k.startswith(model.backbone.default_cfg.get("classifier", "fc")) for k in missing):
        p.error(f"Encoder of {args.init_encoder_from} does not fit {model_cfg.encoder}: "
                         f"missing {missing[:3]}, unexpected {unexpected[:3]}")
model.to(device)
# channels-last everywhere: oneDNN's fast path on the CPU (a 2-core AMD EPYC: +3-9 % a real fp32 epoch,
# 2x in bf16), tensor cores with CUDA AMP; the Predictor runs it too
model = model.to(memory_format=torch.channels_last)
ema = engine.make_ema(model, tcfg.ema_decay)
if world > 1:
    model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
if args.task == "segmenter":
    loss_fn = BCEDiceLoss()
    loss_fn = DeepSupervisionLoss(loss_fn) if model_cfg.deep_supervision else loss_fn
else:
    n_pos = max(int(train_ds.labels.sum()), 1)
    loss_fn = WeightedBCELoss(pos_weight=(len(train_ds) - n_pos) / n_pos)
loss_fn.to(device)
if args.precision == "auto":  # bf16 only where the CPU has it natively *and* a timed step says it is faster
    args.precision = engine.auto_training_precision(device, model, loss_fn, train_ds[0], args.batch_size)
    if main:
        print(f"--precision auto: {args.precision} on {device}")
tcfg.precision = args.precision
optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=tcfg.weight_decay)
steps_per_epoch = min(len(loader), args.max_steps) if args.max_steps else len(loader)
total_steps = steps_per_epoch * args.epochs
scheduler = engine.cosine_with_warmup(optimizer, int(tcfg.warmup_epochs * steps_per_epoch), total_steps)
scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None

start_epoch, best, history = 0, -1.0, []
if args.resume:
    state = engine.load_state(args.resume, model, optimizer, scheduler, ema)
    start_epoch, best, history = state["epoch"] + 1, state["best"], state["history"]
    if main:
        print(f"resumed from {args.resume} at epoch {start_epoch}")

# ---------------------------------------------------------------- loop
key = "dice_per_case_mean" if args.task == "segmenter" else "auroc"
validate = engine.validate_segmenter if args.task == "segmenter" else engine.validate_classifier
for epoch in range(start_epoch, args.epochs):
    sampler.set_epoch(epoch)
    te = time.time()
    train_loss = engine.train_one_epoch(model, loader, loss_fn, optimizer, scheduler, device, scaler,
                                        args.max_steps, desc=f"epoch {epoch + 1}/{args.epochs}", show=main,
                                        precision=args.precision, ema=ema)
    train_seconds = time.time() - te
    if main:
        kept = engine.averaged(model, ema)
        val = validate(kept, val_ds, device, precision=args.precision) if len(val_ds) else {key: float("nan")}
        score = val[key] if np.isfinite(val[key]) else -train_loss
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "val": val, "train_seconds": train_seconds,
                        "images_per_second": steps_per_epoch * args.batch_size * world / train_seconds})
        improved = score > best if tcfg.select == "best" else True
        if improved:
            best = score
            kept.save_pretrained(out)
        engine.save_state(str(out / "last_state.pt"), model, optimizer, scheduler, epoch, best, history, ema)
        plot_curves(history, out / "curves.png", key)
        best_entry = history[-1] if tcfg.select == "last" else max(
            history, key=lambda h: h["val"][key] if np.isfinite(h["val"][key]) else -h["train_loss"])
        (out / "metrics.json").write_text(json.dumps({
            "task": args.task, "recipe": str(args.recipe), "complete": epoch + 1 == args.epochs, "selected": tcfg.select,
            "best_epoch": best_entry["epoch"], "val": best_entry["val"],
            "val_cases": len(val_cases), "val_slices": len(val_ds), "train_cases": len(train_cases),
            "split": f"{args.folds} fold {args.fold}" if args.folds else str(split_path),
            "device": str(device), "precision": args.precision, "world_size": world,
            "train_seconds_total": sum(h["train_seconds"] for h in history),
            "model_config": asdict(model_cfg), "train_config": asdict(tcfg), "history": history}, indent=2) + "\n")
        print(f"epoch {epoch + 1}: train loss {train_loss:.4f}, val " +
              ", ".join(f"{k} {v:.4f}" for k, v in val.items() if isinstance(v, float)) +
              f" ({train_seconds:.0f}s){' *' if improved else ''}", flush=True)
    engine.barrier()

engine.cleanup_distributed()
