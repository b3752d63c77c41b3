"""The input check: ok / warn / refuse on synthetic slices, through the Predictor into the JSON, and the
shipped check on the shipped example slices (all ok)."""
import numpy as np
import pytest
import torch

from brainseg.channels import map_channels, parse_channels
from brainseg.fit_input_check import DevStats, fit
from brainseg.input_check import CheckResult, InputCheck, InputCheckConfig, load_beside
from brainseg.input_stats import slice_stats
from brainseg.uncertainty import review_reasons
from conftest import ROOT, FakePredictor, make_slice


@pytest.fixture(scope="module")
def check():
    """A check fitted on 60 synthetic slices (image statistics only, no classifier features)."""
    rng = np.random.default_rng(1)
    stats = [slice_stats(make_slice(rng, 64, tumor=i % 2 == 0)[0]) for i in range(60)]
    dev = DevStats(None, np.array([s.image for s in stats]), np.array([s.channels for s in stats]),
                   np.array([f"c{i // 10}" for i in range(60)]), np.array([s.joint for s in stats]))
    c = fit(dev, InputCheckConfig())
    d = c.image.distance(dev.image)
    c.config.image_warn = float(np.quantile(d, 0.99)) * 3  # far above every fitted slice
    c.config.channel_margin = 1e9  # the channel regression is judged on real slices, in the benchmark
    c.config.few_levels_refuse = 0.0  # synthetic discs have few grey levels; that rule has its own test
    return c


def test_a_slice_like_the_fitted_ones_is_ok(check):
    image, _ = make_slice(np.random.default_rng(7), 64)
    r = check.check(image)
    assert r.status == "ok" and r.reasons == [] and 0 < r.score < 1


def test_outside_the_warn_distance_warns_and_far_outside_refuses(check):
    image, _ = make_slice(np.random.default_rng(8), 64)
    d = float(check.image.distance(slice_stats(image).image)[0])
    check.config.image_warn, saved = d / 2, check.config.image_warn  # score 2: warn (refuse from 4)
    try:
        r = check.check(image)
        assert r.status == "warn" and r.score == pytest.approx(2.0) and "trust the answer less" in r.reasons[0]
        check.config.image_warn = d / 10  # score 10: refuse
        r = check.check(image)
        assert r.status == "refuse" and "does not look like an axial brain MRI slice" in r.reasons[0]
    finally:
        check.config.image_warn = saved


@pytest.mark.parametrize("image, why", [
    (np.zeros((64, 64, 3), np.uint8), "blank"),
    (np.full((64, 64, 3), 200, np.uint8), "blank"),
    (255 - make_slice(np.random.default_rng(9), 64)[0], "background is bright"),
])
def test_blank_and_inverted_images_are_refused_with_the_reason(check, image, why):
    r = check.check(image)
    assert r.status == "refuse" and any(why in t for t in r.reasons), r.reasons


def test_an_image_far_from_square_is_refused_as_not_one_slice(check):
    image, _ = make_slice(np.random.default_rng(12), 64)
    banner = np.zeros((64, 160, 3), np.uint8)  # the slice on a wide black strip: 2.5 times as wide as high
    banner[:, 48:112] = image
    r = check.check(banner)
    assert r.status == "refuse" and "160 x 64 pixels, 2.5 times as wide as high" in r.reasons[0], r.reasons
    assert "times as high as wide" in check.check(np.ascontiguousarray(banner.transpose(1, 0, 2))).reasons[0]
    wide = np.zeros((64, 96, 3), np.uint8)  # 1.5 : 1, as some scanners' fields of view: not refused for its shape
    wide[:, 16:80] = image
    assert not any("about square" in t for t in check.check(wide).reasons)


def test_a_volume_read_along_the_wrong_axis_is_refused_with_a_hint(check):
    """One image row per axial slice: 20 slices read sideways are 64 x 20 images."""
    rng = np.random.default_rng(14)
    volume = np.stack([make_slice(rng, 64)[0] for _ in range(20)])  # (20, 64, 64, 3): axial slices
    sideways = [np.ascontiguousarray(volume[:, :, j]) for j in range(16, 48, 4)]  # (20, 64, 3) each
    r = check.check_case(sideways, [check.check(im) for im in sideways])
    assert r.status == "refuse" and "8 of 8 slices" in r.reasons[0] and "wrong axis" in r.reasons[0], r.reasons
    axial = list(volume[:8])
    assert "wrong axis" not in " ".join(check.check_case(axial, [check.check(im) for im in axial]).reasons)


@pytest.mark.slow
def test_shipped_check_refuses_the_matplotlib_logo():
    """Issue 32: matplotlib's logo (a 542 x 130 banner that ships with matplotlib) was 'ok', 'tumour detected'."""
    import matplotlib

    from brainseg.images import load_slice
    from brainseg.inference import Predictor

    logo = load_slice(f"{matplotlib.get_data_path()}/sample_data/logo2.png")
    for image in (logo, np.ascontiguousarray(logo[:, ::-1])):
        r = Predictor.from_sources().predict(image)
        assert r.input_check["status"] == "refuse" and r.detected is None, r.input_check
        assert "likely_channel_order" not in r.input_check  # no channel order is read into a logo


def test_save_and_load_give_the_same_answers(check, tmp_path):
    loaded = InputCheck.load(check.save(tmp_path / "input_check.safetensors"))
    assert loaded.config == check.config
    for seed in (10, 11):
        image, _ = make_slice(np.random.default_rng(seed), 64)
        a, b = check.check(image), loaded.check(image)
        assert a.status == b.status and a.score == pytest.approx(b.score, rel=1e-4)
    assert load_beside(tmp_path).config == check.config
    assert load_beside(tmp_path / "nothing") is None  # no file: no check (logged), not an error


def test_predictor_reports_the_check_and_a_refused_slice_has_no_verdict(check):
    from brainseg.case_analysis import analyze_slice
    from brainseg.images import DecodedImage

    p = FakePredictor()
    p.input_check = check
    image, _ = make_slice(np.random.default_rng(12), 64)
    ok = p.predict(image)
    assert ok.input_check["status"] == "ok" and ok.detected is True and ok.mask.any()
    blank = p.predict(np.zeros((64, 64, 3), np.uint8))
    assert blank.input_check["status"] == "refuse" and blank.detected is None and not blank.mask.any()
    assert blank.label == "no verdict"
    r = analyze_slice(p, DecodedImage(np.zeros((64, 64, 3), np.uint8), "png", 3, False)).result
    assert r["tumor_detected"] is None and r["tumor_probability"] is None
    assert r["input_check"]["status"] == "refuse" and r["input_check"]["reasons"]
    assert isinstance(r["input_check"]["score"], float)


def test_case_check_counts_refused_slices_and_an_incoherent_stack(check):
    from brainseg.case_analysis import analyze_case, summarize
    from brainseg.case_io import CaseInput

    rng = np.random.default_rng(13)
    p = FakePredictor()
    p.input_check = check
    slices = [make_slice(rng, 64)[0] for _ in range(6)]
    out = p.predict_case(slices)
    assert out.input_check["status"] == "ok"
    blank = [np.zeros((64, 64, 3), np.uint8)] * 4
    refused = p.predict_case(slices[:2] + blank)
    assert refused.input_check["status"] == "refuse" and "4 of 6 slices" in refused.input_check["reasons"][0]
    summary = summarize(analyze_case(p, CaseInput("c", slices[:2] + blank, list(range(1, 7)))))
    assert summary["input_check"]["status"] == "refuse"
    assert [s["tumor_detected"] for s in summary["per_slice"]][2:] == [None] * 4
    assert all(s["input_check"]["status"] == "refuse" for s in summary["per_slice"][2:])
    small = []  # heads jumping between sizes: neighbours that are not neighbours
    for i in range(8):
        im = np.zeros((64, 64, 3), np.uint8)
        r = 30 if i % 2 else 8
        yy, xx = np.ogrid[:64, :64]
        im[(yy - (10 if i % 2 else 50)) ** 2 + (xx - 32) ** 2 < r * r] = (60, 90, 70)
        small.append(im)
    assert any("neighbouring slices" in t for t in check.check_case(small, [CheckResult()] * 8).reasons)
    order = ["FLAIR", "pre-contrast", "post-contrast"]
    votes = [CheckResult(channel_order=order)] * 4 + [CheckResult(channel_order=check.config.channel_order)] * 2
    r = check.check_case(slices, votes)
    assert r.status == "warn" and "most slices (4 of 6) look like channels (FLAIR, pre-contrast" in r.reasons[0]
    assert check.check_case(slices, votes[2:]).status == "ok"  # 2 of 4: no majority


def test_channel_order_maps_to_the_models_order():
    im = np.dstack([np.full((4, 4), v, np.uint8) for v in (1, 2, 3)])  # the upload: FLAIR, pre, post
    assert map_channels(im, "flair,pre,post")[0, 0].tolist() == [2, 1, 3]
    assert map_channels(im, None) is im and map_channels(im, "pre,flair,post") is im
    assert map_channels(im, "flair,none,none").shape == (4, 4, 1) and map_channels(im, "flair,none,none")[0, 0, 0] == 1
    grey = np.repeat(im[..., :1], 3, -1)
    assert map_channels(grey, "flair").shape == (4, 4, 1)
    with pytest.raises(ValueError, match="which is FLAIR"):
        map_channels(im, "flair")
    for bad in ("pre,post", "t2,flair,pre", "flair,flair,pre"):
        with pytest.raises(ValueError, match="name each channel"):
            parse_channels(bad)


def test_review_marks_near_threshold_and_unstable_outlines():
    assert review_reasons(0.40, 0.36, None, 0.3, True)
    assert not review_reasons(0.99, 0.36, None, 0.3, True)
    crisp = np.zeros((32, 32), np.float32)
    crisp[8:24, 8:24] = 0.95
    soft = np.zeros((32, 32), np.float32)
    soft[8:24, 8:24] = 0.35  # all borderline: gone at 0.5, doubled at 0.1
    soft[14:18, 14:18] = 0.9
    assert not review_reasons(0.99, 0.36, crisp, 0.3, True)
    assert any("unstable outline" in t for t in review_reasons(0.99, 0.36, soft, 0.3, True))


@pytest.mark.slow
def test_shipped_check_says_ok_to_every_shipped_example():
    from brainseg.inference import Predictor

    p = Predictor.from_sources()
    assert p.input_check is not None
    examples = sorted(x for x in (ROOT / "examples").glob("*.png") if not x.stem.endswith("_mask"))
    preds = p.predict_batch(examples)
    assert [q.input_check["status"] for q in preds] == ["ok"] * len(examples)


def test_an_unusual_slice_with_few_grey_levels_is_refused(check):
    """Phantoms sat just past the warn distance with ~1.5 bits of grey levels: warned, now refused."""
    image, _ = make_slice(np.random.default_rng(8), 64)
    s = slice_stats(image)
    entropy = float(s.channels[:, -2].min())
    saved = check.config.image_warn, check.config.entropy_min, check.config.few_levels_refuse
    check.config.image_warn = float(check.image.distance(s.image)[0]) / 1.5  # score 1.5: a warn on its own
    check.config.entropy_min = 0.0
    try:
        check.config.few_levels_refuse = entropy - 0.01
        assert check.check(image).status == "warn"
        check.config.few_levels_refuse = entropy + 0.01
        r = check.check(image)
        assert r.status == "refuse" and "few grey levels" in r.reasons[0]
    finally:
        check.config.image_warn, check.config.entropy_min, check.config.few_levels_refuse = saved


def _biased(net, layer, bias):
    """``net`` whose ``layer`` ignores its input and outputs ``bias``: a fixed answer without training."""
    with torch.no_grad():
        getattr(net, layer).weight.zero_()
        getattr(net, layer).bias.copy_(torch.tensor(bias, dtype=torch.float32))
    return net.eval()


def test_a_grey_upload_is_read_by_the_single_channel_net_and_a_grey_case_votes(check, tmp_path):
    from brainseg.input_net import InputNet, SingleChannelNet

    grey = make_slice(np.random.default_rng(21), 64)[0][..., 1]
    saved = check.net, check.single_net, check.config.image_warn
    try:
        check.config.image_warn = float("inf")  # fitted on three-channel discs: a grey one is far from them
        check.net = _biased(InputNet(), "mri", [10.0])  # an MRI slice, surely
        check.single_net = _biased(SingleChannelNet(), "head", [3.0, -3.0, 0.0])  # P(FLAIR) about 0.005
        r = check.check(grey)
        assert r.status == "warn" and "looks like pre-contrast, not FLAIR" in r.reasons[0]
        assert r.channel_order == ["pre-contrast"]
        loaded = InputCheck.load(check.save(tmp_path / "input_check.safetensors"))
        assert loaded.single_net is not None and loaded.check(grey).reasons == r.reasons
        votes = [r] * 3 + [CheckResult()]
        case = check.check_case([grey] * 4, votes)
        assert any("most slices (3 of 3) look like channels (pre-contrast)" in t for t in case.reasons)
        check.single_net = _biased(SingleChannelNet(), "head", [0.0, 3.0, 0.0])  # FLAIR: ok, and a FLAIR case too
        r = check.check(grey)
        assert r.status == "ok" and r.channel_order == ["FLAIR"]
        assert check.check_case([grey] * 4, [r] * 4).status == "ok"
    finally:
        check.net, check.single_net, check.config.image_warn = saved
