"""The Predictor decides once: thresholds, post-processing, the gate and the verdict (issues 9.2, 9.3,
10.7, 11.1). Results are checked by hand on small synthetic slices; the fake models are the one
FakePredictor of conftest.py, which runs the real Predictor's rules."""
import math

import cv2
import numpy as np
import pytest
import torch

from brainseg.config import SegmenterConfig
from brainseg.data import find_cases, read_image
from brainseg.decision import Prediction, check_threshold
from brainseg.inference import Predictor
from brainseg.models import ResUNet, TumorClassifier
from brainseg.postprocess import (evidence_region, postprocess_mask, remove_small_components,
                                  scaled_min_component_px)
from conftest import FakePredictor, make_slice


def blobs(size=64, big=(20, 20, 6), small=(45, 45, 2)):
    """A slice with a big and a small 'tumour' square painted in FLAIR, and their masks (big, small)."""
    img, _ = make_slice(np.random.default_rng(0), size, tumor=False)
    masks = []
    for cx, cy, r in (big, small):
        m = np.zeros((size, size), np.uint8)
        m[cy - r:cy + r, cx - r:cx + r] = 1
        img[m > 0, 1] = 220
        masks.append(m)
    return img, masks[0], masks[1]


# ---------------------------------------------------------------- post-processing, by hand

def test_remove_small_components_drops_exactly_the_small_ones():
    m = np.zeros((8, 8), np.uint8)
    m[0, 0] = m[1, 1] = m[0, 2] = 1          # 3 px, joined diagonally (8-connected)
    m[4:8, 4:7] = 1                           # 12 px
    out = remove_small_components(m, 5)
    expected = np.zeros_like(m)
    expected[4:8, 4:7] = 1
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(remove_small_components(m, 3), m)   # 3 px is kept at min 3
    np.testing.assert_array_equal(remove_small_components(m, 0), m)
    assert remove_small_components(m, 13).sum() == 0


def test_min_component_px_is_scaled_to_the_map_size():
    assert scaled_min_component_px(100, 256, (256, 256)) == 100
    assert scaled_min_component_px(100, 256, (512, 512)) == 400
    assert scaled_min_component_px(100, 256, (128, 256)) == 50
    prob = np.zeros((16, 16))
    prob[:2, :2] = 0.9                       # 4 px: kept at min 4 on a 16 px model ...
    prob[8:13, 8:13] = 0.8                   # 25 px: kept at both sizes
    assert postprocess_mask(prob, 0.5, 4, 16).sum() == 29
    assert postprocess_mask(prob, 0.5, 4, 8).sum() == 25  # ... dropped when the model saw 8 px (min 16 here)


def test_a_detected_slice_always_has_a_mask():
    prob = np.zeros((16, 16))
    prob[:2, :2] = 0.9                       # the only region, under min_component_px
    np.testing.assert_array_equal(postprocess_mask(prob, 0.5, 10, 16), prob > 0.5)
    assert postprocess_mask(prob, 0.5, 10, 16, detected=False).sum() == 0
    low = np.full((16, 16), 0.1)             # nothing reaches 0.5: the peak's region at half its height
    low[5:8, 5:8] = 0.3
    low[6, 6] = 0.42
    low[12:14, 12:14] = 0.3                  # as high, but not joined to the peak
    np.testing.assert_array_equal(evidence_region(low, 0.5), (low >= 0.21) & (np.arange(16)[:, None] < 10))
    np.testing.assert_array_equal(postprocess_mask(low, 0.5, 0, 16), evidence_region(low, 0.5))
    assert postprocess_mask(np.zeros((4, 4)), 0.5, 0, 4).sum() == 0


def test_postprocess_threshold_is_inclusive_and_the_gate_empties():
    prob = np.array([[0.5, 0.49], [0.9, 0.0]])
    np.testing.assert_array_equal(postprocess_mask(prob, 0.5, 0, 2), [[1, 0], [1, 0]])
    assert postprocess_mask(prob, 0.5, 0, 2, detected=False).sum() == 0
    with pytest.raises(ValueError, match=r"\(2, 2, 1\)"):
        postprocess_mask(prob[..., None], 0.5, 0, 2)


def test_predictor_drops_small_components_at_any_input_size():
    img, big, small = blobs()                # big 144 px, small 16 px at 64 px
    p = FakePredictor(min_component_px=30)
    np.testing.assert_array_equal(p.predict(img).mask, big)
    up = cv2.resize(img, (128, 128), interpolation=cv2.INTER_NEAREST)
    mask = p.predict(up).mask                # small is 64 px here, under 30 * 4
    assert mask.shape == (128, 128)
    assert mask[90, 90] == 0 and mask[40, 40] == 1
    assert abs(int(mask.sum()) - 4 * int(big.sum())) < 0.1 * 4 * big.sum()


# ---------------------------------------------------------------- one answer (issue 9.2)

def test_detected_slice_keeps_its_mask():
    """Detection threshold 0.40, a slice at p = 0.44: detected, and drawn (once: 'Tumour detected' with an
    empty mask, from a second gate)."""
    img, big, small = blobs()
    p = FakePredictor(detection=lambda im: 0.44, detection_threshold=0.4000000059604645)
    pred = p.predict(img)
    assert pred.detected and pred.label == "tumour" and pred.probability == pytest.approx(0.44)
    np.testing.assert_array_equal(pred.mask, big | small)
    assert (pred.pixel_threshold, pred.detection_threshold) == (0.5, 0.4)   # tidied, as people read it
    q = FakePredictor(detection=lambda im: 0.39, detection_threshold=0.4).predict(img)
    assert not q.detected and q.label == "no tumour" and q.tumor_area_px == 0
    at = FakePredictor(detection=lambda im: 0.4, detection_threshold=0.4).predict(img)
    assert at.detected and at.tumor_area_px > 0                     # the threshold itself counts as detected


def test_a_prediction_breaking_the_rule_cannot_be_built():
    with pytest.raises(ValueError, match="drawn iff"):
        Prediction(0.1, False, np.ones((4, 4), np.uint8))
    ok = Prediction(0.9, True, np.ones((4, 4), bool))
    assert ok.mask.dtype == np.uint8 and ok.tumor_area_px == 16


# ---------------------------------------------------------------- thresholds (issue 10.7)

@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -0.1, 1.5, "abc", True])
def test_bad_thresholds_are_refused_with_the_value(bad):
    p = FakePredictor()
    with pytest.raises(ValueError, match="pixel threshold must be"):
        p.predict(np.zeros((64, 64, 3), np.uint8), bad)


def test_threshold_fallback_lives_in_the_predictor():
    p = FakePredictor(threshold=0.6)
    assert p.thresholds() == (0.6, 0.6)           # no classifier: the highest pixel decides at the same value
    assert p.thresholds(0.3) == (0.3, 0.3)
    f = FakePredictor(detection=lambda im: 0.5, detection_threshold=0.4)
    assert f.thresholds(0.3) == (0.3, 0.4)        # the argument moves the pixel threshold only
    assert check_threshold("0.25") == 0.25
    img, big, small = blobs()
    assert p.predict(img * 0, None).pixel_threshold == 0.6


# ---------------------------------------------------------------- the models' part, real tiny models

class FlairLogit(torch.nn.Module):
    """A segmenter whose logit is a fixed function of each pixel's own FLAIR value: flip-equivariant."""

    def __init__(self, **cfg):
        super().__init__()
        self.config = SegmenterConfig(encoder="test_resnet", **cfg)

    def forward(self, x):
        return 2.0 * x[:, 1:2] - 1.0


def test_flip_tta_undoes_the_flip():
    img, big, small = blobs()                 # asymmetric: the blobs have no mirror image
    assert not np.array_equal(big, big[:, ::-1])
    plain = Predictor(FlairLogit(image_size=64), precision="fp32").segment_probs([img])
    tta = Predictor(FlairLogit(image_size=64, tta_flip=True), precision="fp32").segment_probs([img])
    torch.testing.assert_close(tta, plain)    # equivariant model: TTA changes nothing
    assert not torch.allclose(plain, plain.flip(-1), atol=0.1)


@pytest.fixture(scope="module")
def real_tiny(tiny_checkpoints):
    seg = ResUNet.from_pretrained(tiny_checkpoints["segmenter"])
    clf = TumorClassifier.from_pretrained(tiny_checkpoints["classifier"])
    return seg, clf


def test_classifier_gate_classifies_each_slice_once_and_segments_only_detections(real_tiny, synth_root):
    seg, clf = real_tiny
    images = [read_image(p) for p in find_cases(synth_root)[0].images]
    p = Predictor(seg, clf, precision="fp32")
    probs = p.classify(images)
    clf.config.fusion_weights, clf.config.threshold = None, float(np.median(probs))
    seen = {"segmenter": 0, "classifier": 0}
    hooks = [m.register_forward_hook(lambda mod, inp, out, k=k: seen.__setitem__(k, seen[k] + inp[0].shape[0]))
             for k, m in (("segmenter", seg), ("classifier", clf))]
    try:
        preds = p.predict_batch(images, threshold=0.5, batch_size=5)
    finally:
        for h in hooks:
            h.remove()
    detected = [q.detected for q in preds]
    assert seen == {"classifier": len(images), "segmenter": sum(detected)}
    assert 0 < sum(detected) < len(images)
    np.testing.assert_allclose([q.probability for q in preds], probs, rtol=1e-5)
    full = p.segment_probs(images)
    for q, pr, im in zip(preds, full, images):
        expected = postprocess_mask(pr.numpy(), 0.5, seg.config.min_component_px, 64, q.detected)
        np.testing.assert_array_equal(q.mask, expected)
        assert (q.prob_map is not None) == q.detected


def test_describe_hashes_the_weights_once(real_tiny, monkeypatch, tiny_checkpoints):
    seg, clf = real_tiny
    p = Predictor.from_sources(str(tiny_checkpoints["segmenter"]), str(tiny_checkpoints["classifier"]))
    calls = []
    import brainseg.inference as inf
    real = inf.weights_sha256
    monkeypatch.setattr(inf, "weights_sha256", lambda m: calls.append(m) or real(m))
    d = p.describe()
    assert p.describe() == d and len(calls) == 2
    assert set(d) == {"segmenter", "classifier"}
    assert set(d["segmenter"]) == {"source", "revision", "weights_sha256", "encoder", "precision"}
    assert len(d["segmenter"]["weights_sha256"]) == 12 and d["segmenter"]["encoder"] == "test_resnet"
    assert not d["segmenter"]["source"].startswith("/")       # never a full path
    other = Predictor(ResUNet(SegmenterConfig(encoder="test_resnet", image_size=64)), precision="fp32")
    assert other.describe()["segmenter"]["weights_sha256"] != d["segmenter"]["weights_sha256"]


# ---------------------------------------------------------------- a path as well as an array (issue 9.3)

def test_predict_reads_a_path_in_file_channel_order(real_tiny, tmp_path):
    seg, clf = real_tiny
    p = Predictor(seg, clf, precision="fp32")
    img, _ = make_slice(np.random.default_rng(7), 64)
    path = tmp_path / "slice.png"
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))   # a PNG stores RGB; OpenCV writes from BGR
    a, b = p.predict(str(path)), p.predict(img)
    assert a.probability == pytest.approx(b.probability, abs=1e-6)
    np.testing.assert_array_equal(a.mask, b.mask)
    swapped = p.predict(img[..., ::-1].copy())                     # what cv2.imread would hand over
    assert abs(swapped.probability - b.probability) > 1e-4
    assert p.predict_batch([path, img])[0].probability == pytest.approx(b.probability, abs=1e-6)


# ---------------------------------------------------------------- revisions reach the loader (issue 11.7)

def test_from_sources_passes_each_revision_to_the_loader(monkeypatch, tiny_checkpoints):
    """``Predictor.from_sources(segmenter_revision=..., classifier_revision=...)`` hands each revision to
    :func:`brainseg.sources.load_model`, offline: the loader is replaced, so no Hub call is made."""
    import brainseg.sources as sources

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls = []

    def fake_load_model(kind, spec=None, revision=None):
        calls.append((kind, spec, revision))
        src = sources.ModelSource(spec, revision, local=False)
        return sources.from_pretrained(str(tiny_checkpoints[kind])), src

    monkeypatch.setattr(sources, "load_model", fake_load_model)
    p = Predictor.from_sources("user/seg", "user/clf", segmenter_revision="v1", classifier_revision="abc123")
    assert calls == [("segmenter", "user/seg", "v1"), ("classifier", "user/clf", "abc123")]
    assert str(p.sources["segmenter"]) == "user/seg@v1" and str(p.sources["classifier"]) == "user/clf@abc123"


class _Timed(torch.nn.Module):
    """A stand-in segmenter that is slow under one precision: ``slow`` is 'bf16' or 'fp32'."""

    def __init__(self, slow: str, config=None):
        super().__init__()
        self.slow, self.calls = slow, 0
        self.conv = torch.nn.Conv2d(3, 1, 1)
        if config is not None:
            self.config = config

    def forward(self, x):
        import time

        self.calls += 1
        if torch.is_autocast_enabled("cpu") == (self.slow == "bf16"):
            time.sleep(0.05)  # 100 ms over the 2 timed runs: far above scheduling noise
        return self.conv(x)


def test_faster_precision_is_measured_not_taken_from_the_flags():
    from brainseg.precision import faster_precision

    assert faster_precision(_Timed("bf16"), 16) == "fp32"
    assert faster_precision(_Timed("fp32"), 16) == "bf16"
    model = _Timed("bf16", config=SegmenterConfig(encoder="timed-test", image_size=24))
    faster_precision(model, 24)
    calls = model.calls
    assert faster_precision(model, 24) == "fp32" and model.calls == calls  # measured once per process and config
    other = _Timed("bf16")  # no config: nothing to key on, timed again
    faster_precision(other, 24)
    assert faster_precision(other, 24) == "fp32" and other.calls == 12  # (warm-up + 2 runs) x 2, twice


def test_auto_keeps_bf16_only_where_it_is_faster(monkeypatch, tiny_checkpoints):
    from brainseg import precision as inference

    monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: True)
    monkeypatch.delenv("BRAINSEG_PRECISION", raising=False)
    for faster in ("fp32", "bf16"):
        monkeypatch.setattr(inference, "faster_precision", lambda model, size, in_chans=3, f=faster: f)
        assert Predictor.from_sources(str(tiny_checkpoints["segmenter"]), str(tiny_checkpoints["classifier"]),
                                      precision="auto").precision == faster
    monkeypatch.setattr(inference, "faster_precision", lambda *a, **k: pytest.fail("asked for bf16: no timing"))
    assert Predictor.from_sources(str(tiny_checkpoints["segmenter"]), str(tiny_checkpoints["classifier"]),
                                  precision="bf16").precision == "bf16"
