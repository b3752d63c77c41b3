"""ResUNet and TumorClassifier: shapes over two encoders and sizes, backward, Hub-format round trip, strict loading."""
import json
import warnings
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hf_constants
from safetensors.torch import load_file, save_file

from brainseg.config import ClassifierConfig, SegmenterConfig
from brainseg.models import (CheckpointError, ResUNet, TumorClassifier, build_model, resunet, rewrite_config_metadata,
                             tumor_classifier)
from brainseg.sources import load_model

ROOT = Path(__file__).resolve().parent.parent

ENCODERS = ["test_resnet", "test_efficientnet"]


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("size", [64, 96])
def test_resunet_shapes(encoder, size):
    torch.manual_seed(0)
    model = ResUNet(SegmenterConfig(encoder=encoder, image_size=size)).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 3, size, size))
    assert y.shape == (2, 1, size, size)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("size", [64, 96])
def test_classifier_shapes(encoder, size):
    model = TumorClassifier(ClassifierConfig(encoder=encoder, image_size=size)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, 1)
        p = model.predict_proba(torch.randn(3, 3, size, size))
    assert p.shape == (3,) and ((p > 0) & (p < 1)).all()


def test_resunet_non_square_input():
    model = resunet("test_resnet", image_size=64).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 96)).shape == (1, 1, 64, 96)


def test_backward_reaches_encoder_and_head():
    torch.manual_seed(0)
    model = resunet("test_resnet", image_size=64).train()
    y = model(torch.randn(2, 3, 64, 64))
    torch.nn.functional.binary_cross_entropy_with_logits(y, torch.zeros_like(y)).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["head.weight"].abs().sum() > 0
    first_conv = next(n for n in grads if n.startswith("encoder."))
    assert grads[first_conv].abs().sum() > 0


def test_decoder_sized_from_encoder_channels():
    a, b = resunet("test_resnet"), resunet("test_efficientnet")
    for model in (a, b):
        deepest = model.encoder.feature_info.channels()[-1]
        assert model.decoder.blocks[0].body[0].in_channels == deepest + model.encoder.feature_info.channels()[-2]


@pytest.mark.parametrize("size, fix", [(70, "96x96"), (100, "128x128")])
def test_input_size_not_divisible_says_how_to_fix(size, fix):
    model = resunet("test_resnet", image_size=64)
    with pytest.raises(ValueError, match=rf"{size}.*divisible by 32.*{fix}"):
        model(torch.randn(1, 3, size, size))


def test_wrong_channel_count_refused():
    with pytest.raises(ValueError, match=r"\(1, 1, 64, 64\)"):
        resunet("test_resnet")(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match=r"\(1, 4, 64, 64\)"):
        tumor_classifier("test_resnet")(torch.randn(1, 4, 64, 64))


# ---------------------------------------------------------------- Hub format

@pytest.mark.parametrize("cls, cfg", [
    (ResUNet, SegmenterConfig(encoder="test_resnet", image_size=64, threshold=0.4)),
    (TumorClassifier, ClassifierConfig(encoder="test_resnet", image_size=64, threshold=0.3, temperature=1.7)),
])
def test_round_trip_identical_outputs_and_config(tmp_path, cls, cfg):
    torch.manual_seed(0)
    model = cls(cfg).eval()
    # give BatchNorm running stats something non-default, so they must be saved too
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 64, 64) * 3 + 1)
    model.eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not (tmp_path / "pytorch_model.bin").exists()
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["encoder"] == "test_resnet" and saved["image_size"] == 64
    assert saved["channel_order"] == ["pre-contrast", "FLAIR", "post-contrast"]
    assert saved["normalization"] == "slice_zscore" and saved["threshold"] == cfg.threshold

    loaded = cls.from_pretrained(tmp_path)
    assert not loaded.training
    assert loaded.config == cfg
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    fresh = cls(cfg).eval()
    with torch.no_grad():
        assert not torch.equal(fresh(x), loaded(x))  # the weights came from the file


def test_load_model_by_kind(tiny_checkpoints):
    seg, src = load_model("segmenter", str(tiny_checkpoints["segmenter"]))
    assert isinstance(seg, ResUNet) and src.local and str(src) == str(tiny_checkpoints["segmenter"])
    clf, _ = load_model("classifier", str(tiny_checkpoints["classifier"]))
    assert isinstance(clf, TumorClassifier)


def _edit_weights(folder, edit):
    path = folder / "model.safetensors"
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path))


def test_missing_weight_fails_to_load(tmp_path):
    resunet("test_resnet", image_size=64).save_pretrained(tmp_path)
    _edit_weights(tmp_path, lambda s: s.pop("head.weight"))
    with pytest.raises(CheckpointError, match=r"missing \['head.weight'\]"):
        ResUNet.from_pretrained(tmp_path)


def test_unexpected_weight_fails_to_load(tmp_path):
    tumor_classifier("test_resnet", image_size=64).save_pretrained(tmp_path)
    _edit_weights(tmp_path, lambda s: s.__setitem__("extra.weight", torch.zeros(3)))
    with pytest.raises(RuntimeError, match=r"unexpected \['extra.weight'\]"):
        TumorClassifier.from_pretrained(tmp_path)


def test_checkpoint_of_the_other_encoder_fails_to_load(tmp_path):
    resunet("test_efficientnet", image_size=64).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["encoder"] = "test_resnet"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"does not match ResUNet\(test_resnet\)"):
        ResUNet.from_pretrained(tmp_path)


def test_shape_mismatch_is_named_by_our_own_check(tmp_path):
    """Same keys, other shapes: our message (tensor, both shapes), not torch's "size mismatch" dump."""
    resunet("test_resnet", image_size=64).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["decoder_channels"] = [c * 2 for c in cfg["decoder_channels"]]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"shape mismatch for \['decoder\.blocks\.0\.body\.0\.weight "
                                              r"\(256, \d+, 3, 3\) vs \(512, \d+, 3, 3\)") as err:
        ResUNet.from_pretrained(tmp_path)
    assert "size mismatch" not in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("cls", [ResUNet, TumorClassifier])
def test_default_model_round_trips(tmp_path, cls):
    """Issue 11.8: a model built with defaults wrote no config.json, so load_model / evaluate refused it."""
    torch.manual_seed(0)
    model = cls().eval()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_class"] == cls.__name__ and saved["encoder"] == cls.config_class().encoder
    loaded, _ = load_model("segmenter" if cls is ResUNet else "classifier", str(tmp_path))
    assert loaded.config == cls.config_class()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_unknown_config_keys_are_named_not_dropped(tmp_path):
    with pytest.warns(UserWarning, match="does not have: decoder_chanels, thresold"):
        ResUNet({"encoder": "test_resnet", "thresold": 0.3, "decoder_chanels": [8]})
    tumor_classifier("test_resnet", image_size=64).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # metadata keys (model_class, timm's fields) are known, not warned about
        TumorClassifier.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "temprature": 2.0}))
    with pytest.warns(UserWarning, match="ClassifierConfig does not have: temprature"):
        TumorClassifier.from_pretrained(tmp_path)


def test_config_json_metadata_is_rewritten_without_touching_values(tmp_path):
    tumor_classifier("test_resnet", image_size=64, threshold=0.3).save_pretrained(tmp_path)
    full = (tmp_path / "config.json").read_text()
    old = {k: v for k, v in json.loads(full).items() if k not in ("model_class", "architecture", "pretrained_cfg")}
    (tmp_path / "config.json").write_text(json.dumps(old))  # a config saved before model_class existed
    assert rewrite_config_metadata(tmp_path) and (tmp_path / "config.json").read_text() == full
    assert not rewrite_config_metadata(tmp_path)


@pytest.mark.parametrize("keep", [0.5, 8 / 1e9])
def test_truncated_weights_fail_with_one_line_naming_the_file(tmp_path, keep):
    """Issue 10.8: a cut-off model.safetensors gave a raw SafetensorError traceback."""
    resunet("test_resnet", image_size=64).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:max(8, int(len(data) * keep))])
    with pytest.raises(CheckpointError) as err:
        ResUNet.from_pretrained(tmp_path)
    msg = str(err.value)
    assert msg.startswith(f"{weights} cannot be read") and "truncated" in msg and "\n" not in msg
    assert isinstance(err.value, ValueError)  # what the app's start-up and the CLIs catch


def test_app_start_up_refuses_truncated_weights_in_one_line(tiny_checkpoints, tmp_path, capsys):
    import shutil

    import app

    seg = shutil.copytree(tiny_checkpoints["segmenter"], tmp_path / "segmenter")
    weights = seg / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(SystemExit) as exit_:
        app.main(["--segmenter", str(seg), "--classifier", str(tiny_checkpoints["classifier"])])
    error = next(line for line in capsys.readouterr().err.splitlines() if "error:" in line)
    assert exit_.value.code == 2 and f"{weights} cannot be read" in error


def test_timm_local_dir_loads_the_classifier_without_a_filter(tiny_checkpoints):
    """Issue 35.6: the file holds timm's own keys and config.json timm's fields, so timm loads it as it is."""
    import timm
    from safetensors.torch import load_file

    d = tiny_checkpoints["classifier"]
    keys = set(load_file(d / "model.safetensors"))
    assert "fc.weight" in keys and not any(k.startswith("backbone.") for k in keys)
    ours = TumorClassifier.from_pretrained(d)
    net = timm.create_model(f"local-dir:{d}", pretrained=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert net(x).shape == (2, 1) and torch.equal(net(x), ours(x))
    assert json.loads((d / "config.json").read_text())["label_names"] == ["tumour"]


def test_fp16_weights_keep_the_keys_and_load_as_float32(tmp_path):
    """calibrate --fp16 stores float16 through save_weights: the same keys as save_pretrained, float32 on load."""
    from safetensors.torch import load_file

    model = tumor_classifier("test_resnet", image_size=64)
    model.save_pretrained(tmp_path)
    keys = set(load_file(tmp_path / "model.safetensors"))
    model.save_weights(tmp_path / "model.safetensors", torch.float16)
    half = load_file(tmp_path / "model.safetensors")
    assert set(half) == keys and half["fc.weight"].dtype == torch.float16
    loaded = TumorClassifier.from_pretrained(tmp_path)
    assert loaded.backbone.fc.weight.dtype == torch.float32
    assert torch.equal(loaded.backbone.fc.weight, model.backbone.fc.weight.half().float())


def test_pickle_only_checkpoint_is_refused(tmp_path):
    model = resunet("test_resnet", image_size=64)
    model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="safetensors"):
        ResUNet.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_model("segmenter", str(tmp_path))


def test_folder_without_config_is_refused_by_load_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model("segmenter", str(tmp_path))


def test_pretrained_offline_says_how_to_train_without(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))  # nothing cached
    with pytest.raises(RuntimeError, match="--pretrained") as err:
        resunet("test_resnet", pretrained=True)
    assert "test_resnet" in str(err.value)
    with pytest.raises(RuntimeError, match="--pretrained"):
        tumor_classifier("test_resnet", pretrained=True)


def test_predict_proba_uses_the_temperature():
    torch.manual_seed(0)
    model = tumor_classifier("test_resnet", image_size=64).eval()
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        logits = model(x)[:, 0]
    model.config.temperature = 2.5
    torch.testing.assert_close(model.predict_proba(x), torch.sigmoid(logits / 2.5))
    assert not torch.allclose(model.predict_proba(x), torch.sigmoid(logits))


def test_build_model_by_task():
    assert isinstance(build_model("segmenter", SegmenterConfig(encoder="test_resnet")), ResUNet)
    assert isinstance(build_model("classifier", ClassifierConfig(encoder="test_resnet")), TumorClassifier)


def test_deep_supervision_side_heads_on_the_coarser_stages(tmp_path):
    model = ResUNet(SegmenterConfig(encoder="test_resnet", image_size=64, deep_supervision=2)).eval()
    x = torch.randn(2, 3, 64, 64)
    logits, sides = model(x, sides=True)
    assert logits.shape == (2, 1, 64, 64)
    assert [tuple(s.shape) for s in sides] == [(2, 1, 32, 32), (2, 1, 16, 16)]  # finest first
    torch.testing.assert_close(model(x), logits)  # without sides: the one output every caller uses
    model.save_pretrained(tmp_path)
    again = ResUNet.from_pretrained(tmp_path)
    assert again.config.deep_supervision == 2 and len(again.side_heads) == 2
    torch.testing.assert_close(again(x, sides=True)[1][1], sides[1])
    assert len(ResUNet(SegmenterConfig(encoder="test_resnet")).side_heads) == 0  # shipped models: none
    with pytest.raises(ValueError, match="coarser stages"):
        ResUNet(SegmenterConfig(encoder="test_resnet", deep_supervision=9))
