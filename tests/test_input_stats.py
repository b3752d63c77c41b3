"""The input check's statistics: the vectorised helpers give what the plain numpy they replace gives
(they were rewritten for speed, and must not change what the fitted check reads)."""
import numpy as np
import pytest

from brainseg.input_stats import _correlations, _median, _percentiles, _small, joint_stats, slice_stats
from conftest import make_slice


@pytest.mark.parametrize("n", [1, 2, 7, 1000])
def test_percentiles_of_a_sorted_array_match_numpy(n):
    x = np.random.default_rng(n).random(n).astype(np.float32)
    q = (99, 5, 25, 50, 75, 95)
    np.testing.assert_allclose(_percentiles(np.sort(x), q), np.percentile(x, q), rtol=1e-6)


def test_correlations_and_median_match_numpy():
    rng = np.random.default_rng(0)
    px = rng.random((3, 500)).astype(np.float32)
    px[2] = 0.5 * px[0] + 0.1 * px[2]
    c = np.corrcoef(px)
    np.testing.assert_allclose(_correlations(px), [c[0, 1], c[0, 2], c[1, 2]], atol=1e-5)
    assert _correlations(np.stack([px[0], np.ones(500, np.float32), px[1]]))[0] == 1.0  # a flat channel: 1
    for n in (1, 2, 9, 1536):
        x = rng.random(n).astype(np.float32)
        assert _median(x) == pytest.approx(float(np.median(x)), rel=1e-6)


def test_channel_statistics_match_plain_numpy():
    """The per-channel statistics, recomputed the plain way (boolean masks, np.percentile, np.std)."""
    image, _ = make_slice(np.random.default_rng(5), 256, tumor=True)
    got = slice_stats(image).channels
    a = _small(image)
    for c in range(3):
        x = a[..., c]
        rel = (x - x.min()) / (x.max() - x.min())
        v = rel[rel > 0.05]
        v = v / np.percentile(v, 99)
        q = np.percentile(rel[rel > 0.05], [5, 25, 50, 75, 95]) / np.percentile(rel[rel > 0.05], 99)
        skew = ((v - v.mean()) ** 3).mean() / (v.std() + 1e-6) ** 3
        np.testing.assert_allclose(got[c, :6], [*q, skew], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(got[c, 6:8], [(v < 0.2).mean(), (v > 0.95).mean()], atol=1e-9)


def test_joint_stats_match_a_plain_loop():
    px = np.random.default_rng(1).random((3, 400))
    v = px.T / np.percentile(px.T, 99, axis=0)
    want = np.zeros((3, 3, 3))
    for i in range(3):
        q25, q75, q95 = np.percentile(v[:, i], [25, 75, 95])
        for k, sel in enumerate((v[:, i] <= q25, v[:, i] >= q75, v[:, i] >= q95)):
            want[i, :, k] = v[sel].mean(0)
    np.testing.assert_allclose(joint_stats(px), want, rtol=1e-9)


def test_skipping_the_joint_statistics_changes_nothing_else():
    image, _ = make_slice(np.random.default_rng(3), 96)
    a, b = slice_stats(image), slice_stats(image, joint=False)
    np.testing.assert_array_equal(a.image, b.image)
    assert a.joint.any() and not b.joint.any()


def test_a_near_black_slice_has_no_bright_background_but_its_inverse_has():
    """The empty slices above the head (noise of a few grey levels) were refused as 'inverted'."""
    noise = np.random.default_rng(4).integers(0, 6, (128, 128, 3)).astype(np.uint8)
    assert not slice_stats(noise).bright_border
    assert slice_stats(255 - noise).bright_border
    assert slice_stats(noise.astype(np.float32) * 40).bright_border  # float: no absolute scale, the old rule holds
    assert slice_stats(noise).faint and not slice_stats(255 - noise).faint


@pytest.mark.parametrize("shape", [(256, 256, 3), (512, 512, 3), (256, 256), (300, 300, 3), (200, 320, 3)])
def test_the_128_px_copy_is_opencvs_area_average(shape):
    """8-bit slices 2-16 times the size take a 16-bit shortcut: the same figures as the float resize."""
    import cv2

    a = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)
    b = a.reshape(*a.shape[:2], -1).astype(np.float32)
    want = cv2.resize(b, (128, 128), interpolation=cv2.INTER_AREA).reshape(128, 128, -1)
    np.testing.assert_allclose(_small(a), np.broadcast_to(want, (128, 128, 3)), atol=1e-4)
