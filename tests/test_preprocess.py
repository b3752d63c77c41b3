"""The one preprocessing function: a single slice, any dtype, driven by the checkpoint's config."""
import numpy as np
import pytest
import torch

from brainseg.config import ClassifierConfig, PreprocessConfig, SegmenterConfig
from brainseg.preprocess import brain_area_px, normalize_slice, preprocess
from conftest import make_slice


@pytest.fixture()
def slice_u8():
    img, _ = make_slice(np.random.default_rng(3), size=64, tumor=True)
    return img


def test_one_slice_alone_is_enough(slice_u8):
    x = preprocess(slice_u8, PreprocessConfig(image_size=64))
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and torch.isfinite(x).all()
    brain = torch.from_numpy(slice_u8.max(-1) > slice_u8.min())
    for c in range(3):  # standardised with this slice's own brain statistics
        assert abs(float(x[c][brain].mean())) < 0.05
        assert abs(float(x[c][brain].std()) - 1) < 0.05
    assert float(x[:, ~brain].max()) < -1  # background well below the brain


def test_result_does_not_depend_on_the_other_slices(slice_u8):
    cfg = PreprocessConfig(image_size=64)
    other, _ = make_slice(np.random.default_rng(4), size=64, tumor=False)
    batch = torch.stack([preprocess(im, cfg) for im in (slice_u8, other * 2)])
    torch.testing.assert_close(batch[0], preprocess(slice_u8, cfg))


def test_uint8_uint16_float_give_the_same_tensor(slice_u8):
    cfg = PreprocessConfig(image_size=64)
    ref = preprocess(slice_u8, cfg)
    as16 = slice_u8.astype(np.uint16) * 257
    asf = slice_u8.astype(np.float32) / 255
    assert as16.max() > 255 and asf.max() <= 1  # really different value ranges
    torch.testing.assert_close(preprocess(as16, cfg), ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(preprocess(asf, cfg), ref, atol=1e-4, rtol=1e-4)


def test_tensor_input_chw_matches_array_input(slice_u8):
    cfg = PreprocessConfig(image_size=64)
    chw = torch.from_numpy(slice_u8).permute(2, 0, 1)
    torch.testing.assert_close(preprocess(chw, cfg), preprocess(slice_u8, cfg))


@pytest.mark.parametrize("cfg, size", [(PreprocessConfig(image_size=32), 32), (PreprocessConfig(image_size=96), 96),
                                       (SegmenterConfig(), 256), (ClassifierConfig(), 128)])
def test_output_size_comes_from_the_config(slice_u8, cfg, size):
    x = preprocess(slice_u8, cfg)
    assert x.shape == (3, size, size)
    assert x.abs().max() <= cfg.clip


def test_clip_from_config(slice_u8):
    x = preprocess(slice_u8, PreprocessConfig(image_size=64, clip=1.0))
    assert float(x.max()) == pytest.approx(1.0) and float(x.min()) == pytest.approx(-1.0)


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_wrong_channel_count_names_the_counts(channels):
    img = np.zeros((32, 32, channels), np.uint8)
    with pytest.raises(ValueError, match=rf"Expected 3 channels.*got {channels}"):
        preprocess(img, PreprocessConfig(image_size=32))


def test_bad_array_shape_is_named():
    with pytest.raises(ValueError, match=r"\(2, 32, 32, 3\)"):
        preprocess(np.zeros((2, 32, 32, 3), np.uint8), PreprocessConfig())


def test_unknown_normalization_is_refused(slice_u8):
    with pytest.raises(ValueError, match="minmax"):
        preprocess(slice_u8, PreprocessConfig(image_size=64, normalization="minmax"))


def test_blank_slice_stays_finite():
    x = normalize_slice(torch.zeros(3, 16, 16))
    assert torch.isfinite(x).all() and float(x.abs().max()) == 0.0


def test_brain_area_is_the_normalisation_rule():
    img = np.zeros((6, 5, 3), np.uint8)
    img[1, 1, 0] = 3          # any channel above the slice minimum counts
    img[2:4, 2:4, 2] = 9
    assert brain_area_px(img) == 5
    assert brain_area_px(img.astype(np.float32) + 5) == 5   # the minimum is the slice's own, not 0
    assert brain_area_px(np.zeros((4, 4, 3), np.uint8)) == 0
