"""The training recipe's parts: k-fold splits by patient, joint augmentation, bf16 steps on the CPU, EMA,
resumable state, and train.py's fold / last-epoch / auto-resume modes."""
import json
from dataclasses import asdict
from pathlib import Path
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from torchvision import tv_tensors

from brainseg import engine, precision
from brainseg.config import SegmenterConfig
from brainseg.data import RandomGamma, build_augment, fold_split, institution_of, load_split, make_folds, save_split
from brainseg.losses import BCEDiceLoss, DeepSupervisionLoss
from brainseg.models import ResUNet
from conftest import SYNTH_CASES, TINY_ENCODER, train

NAMES = [f"TCGA_{inst}_{i:04d}_2000" for inst, n in [("CS", 7), ("DU", 13), ("HT", 9), ("FG", 4), ("EZ", 1)]
         for i in range(n)]


# ---------------------------------------------------------------- folds

def test_folds_deal_every_patient_once_and_mirror_institutions():
    folds = make_folds(NAMES, k=4, seed=3)
    flat = [n for f in folds["folds"] for n in f]
    assert sorted(flat) == sorted(NAMES) and len(flat) == len(set(flat))  # each patient in exactly one fold
    sizes = [len(f) for f in folds["folds"]]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 34
    for f in folds["folds"]:  # 13 DU cases over 4 folds: 3 or 4 each, never 0 or 13
        assert 3 <= Counter(institution_of(n) for n in f)["DU"] <= 4
    assert make_folds(list(reversed(NAMES)), k=4, seed=3) == folds  # order of the input does not matter
    assert make_folds(NAMES, k=4, seed=4) != folds


def test_fold_split_validates_on_its_fold_and_trains_on_the_rest(tmp_path):
    folds = make_folds(NAMES, k=4, seed=0)
    for i in range(4):
        s = fold_split(folds, i)
        assert s["val"] == sorted(folds["folds"][i])
        assert not set(s["val"]) & set(s["train"]) and len(s["val"]) + len(s["train"]) == len(NAMES)
    with pytest.raises(ValueError, match="fold must be in 0..3"):
        fold_split(folds, 4)
    save_split(folds, tmp_path / "folds.json")
    with pytest.raises(ValueError, match="k-fold file"):
        load_split(tmp_path / "folds.json")
    with pytest.raises(ValueError, match="cannot fill"):
        make_folds(NAMES[:3], k=4)


# ---------------------------------------------------------------- augmentation

def test_gamma_changes_the_image_and_leaves_the_mask():
    img = tv_tensors.Image(torch.full((3, 8, 8), 64, dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.zeros(1, 8, 8, dtype=torch.uint8))
    mask[:, 2:5, 2:5] = 1
    torch.manual_seed(0)
    out_img, out_mask = RandomGamma((2.0, 2.0))(img, mask)
    assert torch.equal(out_mask, mask)
    assert int(out_img[0, 0, 0]) == round(255 * (64 / 255) ** 2.0)  # 16: gamma 2 darkens mid-grey


def test_joint_augmentation_keeps_masks_binary_and_with_the_image():
    """The tumour is where the image is bright, before and after the geometric transforms."""
    torch.manual_seed(1)
    aug = build_augment()
    img = torch.zeros(3, 64, 64, dtype=torch.uint8)
    mask = torch.zeros(1, 64, 64, dtype=torch.uint8)
    mask[:, 20:40, 25:45] = 1
    img[:, mask[0] > 0] = 200
    for _ in range(20):
        a, m = aug(tv_tensors.Image(img), tv_tensors.Mask(mask))
        assert m.dtype == torch.uint8 and set(m.unique().tolist()) <= {0, 1}
        if m.sum() > 20:
            inside = a[1][m[0] > 0].float().mean()
            outside = a[1][m[0] == 0].float().mean()
            assert inside > outside + 50


# ---------------------------------------------------------------- bf16 steps and EMA

def tiny_model():
    torch.manual_seed(0)
    return ResUNet(SegmenterConfig(encoder=TINY_ENCODER, image_size=32))


def tiny_loader(n=4):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = (torch.rand(n, 1, 32, 32, generator=g) > 0.8).float()
    return DataLoader(TensorDataset(x, y), batch_size=2)


def test_bf16_step_runs_the_forward_in_bf16_and_keeps_fp32_master_weights():
    model = tiny_model()
    seen = []
    model.head.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    before = model.head.weight.detach().clone()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = engine.cosine_with_warmup(opt, 0, 2)
    loss = engine.train_one_epoch(model, tiny_loader(), BCEDiceLoss(), opt, sched, torch.device("cpu"),
                                  precision="bf16", show=False)
    assert seen == [torch.bfloat16, torch.bfloat16]
    assert np.isfinite(loss) and model.head.weight.dtype == torch.float32
    assert not torch.equal(model.head.weight, before)
    seen.clear()
    engine.train_one_epoch(model, tiny_loader(), BCEDiceLoss(), opt, sched, torch.device("cpu"), show=False)
    assert seen == [torch.float32, torch.float32]  # fp32 is the default


def test_deep_supervision_step_trains_the_side_heads_through_their_loss():
    torch.manual_seed(0)
    model = ResUNet(SegmenterConfig(encoder=TINY_ENCODER, image_size=32, deep_supervision=2))
    before = [h.weight.detach().clone() for h in model.side_heads]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss = engine.train_one_epoch(model, tiny_loader(), DeepSupervisionLoss(BCEDiceLoss()), opt,
                                  engine.cosine_with_warmup(opt, 0, 2), torch.device("cpu"), show=False)
    assert np.isfinite(loss)
    assert all(not torch.equal(h.weight, b) for h, b in zip(model.side_heads, before))


def test_fp32_cpu_training_runs_channels_last():
    """oneDNN's fast path: +3-9 % a real fp32 epoch on a 2-core AMD EPYC (and 2x in bf16)."""
    model = tiny_model().to(memory_format=torch.channels_last)
    seen = []
    model.encoder.register_forward_pre_hook(
        lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    engine.train_one_epoch(model, tiny_loader(), BCEDiceLoss(), opt, engine.cosine_with_warmup(opt, 0, 2),
                           torch.device("cpu"), precision="fp32", show=False)
    assert seen == [True, True]


class _SlowIn(torch.nn.Module):
    """A model whose forward is slow in one precision: bf16 autocast on or off."""

    def __init__(self, slow: str):
        super().__init__()
        self.slow, self.conv = slow, torch.nn.Conv2d(3, 1, 1)

    def forward(self, x):
        import time

        if torch.is_autocast_enabled("cpu") == (self.slow == "bf16"):
            time.sleep(0.05)  # 100 ms over the 2 timed steps: far above scheduling noise
        return self.conv(x)


def test_auto_training_precision_is_a_timed_step_not_the_cpu_flags():
    x, y = torch.randn(2, 3, 16, 16), torch.randint(0, 2, (2, 1, 16, 16)).float()
    assert engine.faster_training_precision(_SlowIn("bf16"), BCEDiceLoss(), x, y) == "fp32"
    assert engine.faster_training_precision(_SlowIn("fp32"), BCEDiceLoss(), x, y) == "bf16"
    model = tiny_model()  # the probe trains a copy: the run starts from untouched weights and BN statistics
    before = {k: v.clone() for k, v in model.state_dict().items()}
    engine.faster_training_precision(model, BCEDiceLoss(), torch.randn(2, 3, 32, 32),
                                     torch.randint(0, 2, (2, 1, 32, 32)).float())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_auto_training_precision_asks_the_timing_only_where_the_cpu_claims_bf16(monkeypatch):
    """train.py's --precision auto: no bf16 flags, fp32 untimed; flags, whatever a timed step says."""
    model, example = tiny_model(), (torch.randn(3, 32, 32), torch.randint(0, 2, (1, 32, 32)).float())
    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(engine, "faster_training_precision", lambda *a: pytest.fail("timed without bf16 flags"))
    assert engine.auto_training_precision(cpu, model, BCEDiceLoss(), example) == "fp32"
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    for faster in ("fp32", "bf16"):
        shapes = []
        monkeypatch.setattr(engine, "faster_training_precision",
                            lambda m, loss, x, y, f=faster: shapes.append((x.shape, y.shape)) or f)
        assert engine.auto_training_precision(cpu, model, BCEDiceLoss(), example, batch_size=16) == faster
        assert shapes == [((4, 3, 32, 32), (4, 1, 32, 32))]  # a small batch of the training item


def test_ema_is_the_running_average_of_the_weights_and_the_bn_statistics():
    model = tiny_model()
    ema = engine.make_ema(model, decay=0.75)
    w0 = model.head.weight.detach().clone()
    ema.update_parameters(model)  # the first update copies
    assert torch.equal(ema.module.head.weight, w0)
    with torch.no_grad():
        model.head.weight.add_(1.0)
        bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        bn.running_mean.fill_(4.0)
    ema.update_parameters(model)
    assert torch.allclose(ema.module.head.weight, 0.75 * w0 + 0.25 * (w0 + 1.0))
    ema_bn = next(m for m in ema.module.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert torch.allclose(ema_bn.running_mean, torch.full_like(ema_bn.running_mean, 0.25 * 4.0))
    assert engine.averaged(model, ema) is ema.module and engine.averaged(model, None) is model
    assert engine.make_ema(model, 0.0) is None


def test_state_round_trips_the_ema_and_refuses_a_mismatch(tmp_path):
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = engine.cosine_with_warmup(opt, 0, 10)
    ema = engine.make_ema(model, 0.9)
    ema.update_parameters(model)
    with torch.no_grad():
        ema.module.head.weight.fill_(0.5)
    engine.save_state(str(tmp_path / "s.pt"), model, opt, sched, 3, 0.7, [{"epoch": 4}], ema)
    assert not (tmp_path / "s.pt.tmp").exists()
    model2 = tiny_model()
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3)
    ema2 = engine.make_ema(model2, 0.9)
    state = engine.load_state(str(tmp_path / "s.pt"), model2, opt2, engine.cosine_with_warmup(opt2, 0, 10), ema2)
    assert state["epoch"] == 3 and torch.all(ema2.module.head.weight == 0.5)
    engine.save_state(str(tmp_path / "plain.pt"), model, opt, sched, 0, 0.0, [])
    with pytest.raises(ValueError, match="no EMA weights"):
        engine.load_state(str(tmp_path / "plain.pt"), model2, opt2, engine.cosine_with_warmup(opt2, 0, 10), ema2)


# ---------------------------------------------------------------- train.py modes

@pytest.mark.slow
def test_fold_run_keeps_the_last_ema_epoch_and_auto_resume_skips_a_finished_run(synth_root, tmp_path):
    folds = make_folds(SYNTH_CASES, k=3, seed=0)
    save_split(folds, tmp_path / "folds.json")
    out = tmp_path / "fold1"
    common = ["--folds", str(tmp_path / "folds.json"), "--fold", "1", "--set", "ema_decay=0.9", "--set", "select=last",
              "--precision", "fp32", "--resume", "auto", "--set", "deep_supervision=2"]  # bf16: the step test above
    log = train("segmenter", synth_root, out, "--epochs", "2", *common)
    assert "4 train cases" in log and "2 val cases" in log
    assert json.loads((out / "split.json").read_text())["val"] == folds["folds"][1]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["selected"] == "last" and metrics["best_epoch"] == 2 and metrics["complete"]
    assert metrics["precision"] == "fp32" and metrics["train_config"]["ema_decay"] == 0.9
    model = ResUNet.from_pretrained(out)  # the side heads were trained and saved with the weight average
    assert model.config.deep_supervision == 2 and len(model.side_heads) == 2
    assert metrics["model_config"]["deep_supervision"] == 2
    assert "already holds a finished run" in train("segmenter", synth_root, out, "--epochs", "2", *common)
    log = train("segmenter", synth_root, out, "--epochs", "3", *common)  # a longer schedule continues
    assert "resumed from" in log and "epoch 3:" in log and "epoch 2:" not in log


@pytest.mark.slow
def test_val_fraction_zero_trains_on_every_case(synth_root, tmp_path):
    out = tmp_path / "all"
    log = train("classifier", synth_root, out, "--epochs", "1", "--val-fraction", "0", "--set", "select=last")
    assert "6 train cases" in log and "0 val cases" in log
    assert (out / "model.safetensors").is_file()
    assert json.loads((out / "split.json").read_text())["val"] == []


# ---------------------------------------------------------------- the recipe is a file

RECIPE_RUN_FIELDS = {"data", "out", "split", "val_fraction", "folds", "fold", "resume", "init_encoder_from",
                     "precision", "task"}  # set per run (scripts/train_models.sh), not by the recipe


@pytest.mark.parametrize("kind", ["segmenter", "classifier"])
def test_the_shipped_recipe_is_what_trained_the_shipped_models(kind):
    """configs/<kind>.json gives the model and training fields recorded in models/<kind>/metrics.json."""
    from brainseg.config import load_recipe

    root = Path(__file__).resolve().parent.parent
    metrics = json.loads((root / "models" / kind / "metrics.json").read_text())
    task, model_cfg, tcfg = load_recipe(kind)
    assert task == kind
    recipe = json.loads((root / "configs" / f"{kind}.json").read_text())
    for k, v in recipe["model"].items():
        assert metrics["model_config"][k] == v, k
    trained = metrics["train_config"]
    for k, v in asdict(tcfg).items():
        if k not in RECIPE_RUN_FIELDS and k in trained:
            assert trained[k] == v, k


def test_a_recipe_override_names_the_field_and_a_bad_one_is_refused(tmp_path):
    from brainseg.config import load_recipe

    _, model_cfg, tcfg = load_recipe("segmenter", ("epochs=2", "deep_supervision=1", "select=best"))
    assert (tcfg.epochs, model_cfg.deep_supervision, tcfg.select) == (2, 1, "best")
    with pytest.raises(ValueError, match="--set fn_weight=0.7"):
        load_recipe("segmenter", ("fn_weight=0.7",))  # a rejected ablation: no longer a field
    (tmp_path / "r.json").write_text(json.dumps({"task": "segmenter", "model": {"context_slices": 1}}))
    with pytest.raises(ValueError, match=r"r\.json: model fields SegmenterConfig does not have: context_slices"):
        load_recipe(tmp_path / "r.json")
