"""ResUNet and TumorClassifier: shapes over two encoders and sizes, backward, Hub-format round trip, strict loading."""
import json

import pytest
import torch
from huggingface_hub import constants as hf_constants
from safetensors.torch import load_file, save_file

from brainseg.config import ClassifierConfig, SegmenterConfig
from brainseg.hub import load_model
from brainseg.models import ResUNet, TumorClassifier, build_model, resunet, tumor_classifier

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
    with pytest.raises(RuntimeError, match=r"missing \['head.weight'\]"):
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
    with pytest.raises(RuntimeError, match="size mismatch|does not match"):
        ResUNet.from_pretrained(tmp_path)


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
