"""Whole-case loading (zip, files, multi-page TIFF, NIfTI), the safety rules, analysis and writers."""
import json
import random
import struct
import zipfile
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import tifffile

from brainseg import cases
from brainseg.cases import (CaseInput, analyze_case, case_montage, load_case, plot_probabilities,
                            predict_case_files, summarize, write_mask_tiff)
from brainseg.data import find_cases, read_image, read_mask
from brainseg.inference import Prediction, Predictor
from brainseg.metrics import dice_score
from conftest import make_slice

CASE = "TCGA_CS_0001_20000101"


class FlairOracle:
    """A stand-in predictor that segments the synthetic tumours exactly (make_slice paints FLAIR 220 there)."""

    classifier = None
    seg_cfg = SimpleNamespace(threshold=0.5)

    def predict_batch(self, images, threshold=None, batch_size=16):
        out = []
        for im in images:
            m = (np.asarray(im)[..., 1] >= 200).astype(np.uint8)
            out.append(Prediction(float(m.any()), bool(m.any()), m, list(im.shape)))
        return out


@pytest.fixture(scope="module")
def predictor(tiny_checkpoints):
    return Predictor.from_sources(str(tiny_checkpoints["segmenter"]), str(tiny_checkpoints["classifier"]))


@pytest.fixture(scope="module")
def case_dir(synth_root):
    return synth_root / CASE


def zip_folder(folder: Path, path: Path, prefix: str = None) -> Path:
    prefix = folder.name if prefix is None else prefix
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.iterdir()):
            zf.write(p, f"{prefix}/{p.name}" if prefix else p.name)
    return path


def assert_matches_folder(case: CaseInput, folder: Path):
    truth = find_cases(folder.parent)
    ref = next(c for c in truth if c.name == folder.name)
    assert case.slice_numbers == list(range(1, len(ref) + 1))
    for got, p in zip(case.slices, ref.images):
        np.testing.assert_array_equal(got, read_image(p))  # same pixels as brainseg.data, so same predictions
    for got, p in zip(case.masks, ref.masks):
        np.testing.assert_array_equal(got, read_mask(p))


# ---------------------------------------------------------------- good inputs

def test_zip_of_a_case_folder(case_dir, tmp_path):
    case = load_case(zip_folder(case_dir, tmp_path / "case.zip"))
    assert (case.name, case.source_kind, len(case), case.spacing) == (CASE, "zip", 12, None)
    assert_matches_folder(case, case_dir)


def test_zip_with_macos_junk_and_other_files(case_dir, tmp_path):
    z = zip_folder(case_dir, tmp_path / "case.zip")
    with zipfile.ZipFile(z, "a") as zf:
        zf.writestr(f"__MACOSX/{CASE}/._{CASE}_1.tif", b"junk")
        zf.writestr(f"{CASE}/notes.txt", b"hello")
    assert len(load_case(z)) == 12


def test_several_files_in_any_order(case_dir):
    files = sorted(case_dir.iterdir())
    random.Random(1).shuffle(files)
    case = load_case(files)
    assert (case.name, case.source_kind) == (CASE, "files")
    assert_matches_folder(case, case_dir)


def test_several_images_without_masks(case_dir):
    files = [p for p in case_dir.iterdir() if not p.stem.endswith("_mask")][::-1]
    case = load_case(files)
    assert case.masks is None and case.slice_numbers == list(range(1, 13))


def test_case_folder(case_dir):
    case = load_case(case_dir)
    assert case.source_kind == "folder"
    assert_matches_folder(case, case_dir)


def test_multipage_tiff_rgb_grey_and_spacing(tmp_path):
    rng = np.random.default_rng(3)
    stack = np.stack([make_slice(rng, 48)[0] for _ in range(5)])
    tifffile.imwrite(tmp_path / "vol.tif", stack, photometric="rgb")
    case = load_case(tmp_path / "vol.tif")
    assert (case.source_kind, case.slice_numbers, case.spacing) == ("tiff", [1, 2, 3, 4, 5], None)
    np.testing.assert_array_equal(np.stack(case.slices), stack)

    grey = (stack[..., 1].astype(np.uint16) * 100)
    tifffile.imwrite(tmp_path / "grey.tif", grey, imagej=True, resolution=(1 / 0.5, 1 / 0.5),
                     metadata={"spacing": 3.0, "unit": "mm"})
    case = load_case(tmp_path / "grey.tif")
    assert case.slices[0].shape == (48, 48, 1) and case.slices[0].dtype == np.uint16
    assert case.spacing == pytest.approx((0.5, 0.5, 3.0))
    result = analyze_case(FlairOracle(), CaseInput(case.name, [np.repeat(s, 3, -1) // 100 for s in case.slices],
                                                   case.slice_numbers, spacing=case.spacing))
    assert result.volume_ml == pytest.approx(result.volume_voxels * 0.75 / 1000)


def test_single_slice_file(case_dir):
    case = load_case(case_dir / f"{CASE}_5.tif")
    assert case.slice_numbers == [5] and case.masks is None


@pytest.mark.parametrize("axcodes", [("R", "A", "S"), ("L", "P", "S"), ("P", "S", "R")])
def test_nifti_slices_spacing_and_mask_roundtrip(tmp_path, axcodes):
    nib = pytest.importorskip("nibabel")
    rng = np.random.default_rng(0)
    canon = rng.integers(0, 50, (20, 24, 6)).astype(np.float32)
    canon[5:9, 10:15, 2:4] = 500  # a bright block: the 'tumour'
    zooms = np.array([0.9, 1.1, 3.0])
    ras = nib.orientations.axcodes2ornt(("R", "A", "S"))
    t = nib.orientations.ornt_transform(ras, nib.orientations.axcodes2ornt(axcodes))
    vol = nib.orientations.apply_orientation(canon, t)  # the same head stored in another axis order
    affine = np.diag(list(zooms) + [1]) @ nib.orientations.inv_ornt_aff(t, canon.shape)
    img = nib.Nifti1Image(vol, affine)
    assert nib.aff2axcodes(img.affine) == axcodes
    nib.save(img, tmp_path / "vol.nii.gz")

    case = load_case(tmp_path / "vol.nii.gz")
    assert case.source_kind == "nifti" and len(case) == 6 and case.slices[0].shape == (24, 20, 1)
    back = nib.load(tmp_path / "vol.nii.gz")
    assert case.spacing == pytest.approx((1.1, 0.9, 3.0))  # (row = anterior axis, column = right axis, slice)
    np.testing.assert_array_equal(case.slices[2][..., 0], np.rot90(canon[:, :, 2]))
    result = analyze_case(_ThresholdOracle(400), case)
    assert result.volume_voxels == int((vol > 400).sum()) and result.volume_ml is not None
    assert result.largest_area_slice in (3, 4)  # canonical z 2..3, numbered from 1

    summary, _, _, masks_path = predict_case_files(_ThresholdOracle(400), [tmp_path / "vol.nii.gz"], None,
                                                   tmp_path / "out")
    assert masks_path.endswith(".nii.gz")
    m = nib.load(masks_path)
    assert m.shape == vol.shape and np.allclose(m.affine, back.affine)
    np.testing.assert_array_equal(np.asarray(m.dataobj), (vol > 400).astype(np.uint8))
    assert summary["tumor_volume_ml"] == pytest.approx(summary["tumor_volume_voxels"] * 0.9 * 1.1 * 3.0 / 1000, rel=1e-4)


class _ThresholdOracle(FlairOracle):
    def __init__(self, level):
        self.level = level

    def predict_batch(self, images, threshold=None, batch_size=16):
        out = []
        for im in images:
            m = (np.asarray(im)[..., 0] > self.level).astype(np.uint8)
            out.append(Prediction(float(m.any()), bool(m.any()), m, list(im.shape)))
        return out


# ---------------------------------------------------------------- bad inputs: a clear ValueError, nothing written

def _bomb(tmp_path):
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("case_1.tif", "w", force_zip64=True) as f:
            chunk = bytes(2**20)
            for _ in range(200):  # 200 MB of zeros -> ~200 KB compressed
                f.write(chunk)
    return path


def _zip_with(tmp_path, members, name="bad.zip"):
    path = tmp_path / name
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for member, data in members.items():
            zf.writestr(member, data)
    return path


def _tif_bytes(size=32, seed=0):
    img, _ = make_slice(np.random.default_rng(seed), size)
    return cv2.imencode(".tif", img)[1].tobytes()


def _gap_zip(tmp_path):
    return _zip_with(tmp_path, {f"c_{n}.tif": _tif_bytes() for n in (1, 2, 4, 5, 8)})


BAD_INPUTS = {
    "zip bomb": (_bomb, r"declares 200 MiB.*zip bomb"),
    "dot-dot member": (lambda t: _zip_with(t, {"../evil.tif": _tif_bytes()}), r"'\.\./evil\.tif'.*path traversal"),
    "absolute member": (lambda t: _zip_with(t, {"/abs.tif": _tif_bytes()}), r"'/abs\.tif'.*absolute path"),
    "windows absolute": (lambda t: _zip_with(t, {"C:\\x\\c_1.tif": _tif_bytes()}), r"absolute path"),
    "no images": (lambda t: _zip_with(t, {"readme.txt": b"hi", "data.csv": b"a,b"}), r"holds no slice images.*readme"),
    "mixed sizes": (lambda t: _zip_with(t, {"c_1.tif": _tif_bytes(32), "c_2.tif": _tif_bytes(32), "c_3.tif": _tif_bytes(48)}),
                    r"Slices differ in size: 32x32x3 \(slices 1-2\); 48x48x3 \(slice 3\)"),
    "gap": (_gap_zip, r"Missing slice number\(s\) 3, 6-7"),
    "not a zip": (lambda t: (t / "x.zip").write_bytes(b"PK not really") and t / "x.zip", r"not a readable zip"),
    "broken image": (lambda t: _zip_with(t, {"c_1.tif": b"II*\x00garbage"}), r"c_1\.tif is not a readable"),
    "two cases": (lambda t: _zip_with(t, {"a_1.tif": _tif_bytes(), "b_1.tif": _tif_bytes()}), r"slices of 2 cases"),
    "partial masks": (lambda t: _zip_with(t, {"c_1.tif": _tif_bytes(), "c_2.tif": _tif_bytes(), "c_1_mask.tif": _tif_bytes()}),
                      r"masks cover 1 of 2 slices \(none for slice\(s\) 2\)"),
}


@pytest.mark.parametrize("kind", list(BAD_INPUTS))
def test_bad_zip_is_a_clear_error_and_writes_nothing(tmp_path, kind):
    build, message = BAD_INPUTS[kind]
    src = tmp_path / "in"
    src.mkdir()
    path = build(src)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        predict_case_files(FlairOracle(), [path], None, out)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [path.name]


def test_member_inflating_past_its_declared_size_is_caught(tmp_path):
    """A zip whose header under-declares a member: reading stops at the declared size and fails."""
    path = _zip_with(tmp_path, {"c_1.tif": _tif_bytes(64)})
    raw = bytearray(path.read_bytes())
    true_size = len(_tif_bytes(64))
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # uncompressed-size field of both headers
        i = raw.find(sig)
        assert struct.unpack_from("<I", raw, i + off)[0] == true_size
        struct.pack_into("<I", raw, i + off, 100)
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"c_1\.tif.*(corrupt|inflates|not a readable)"):
        load_case(path)


def test_total_size_and_ratio_limits(tmp_path, monkeypatch):
    path = _zip_with(tmp_path, {f"c_{n}.tif": _tif_bytes(64, n) for n in (1, 2, 3)})
    monkeypatch.setattr(cases, "MAX_TOTAL_BYTES", 2 * len(_tif_bytes(64)))
    with pytest.raises(ValueError, match=r"declares more than"):
        load_case(path)
    monkeypatch.undo()
    zeros = _zip_with(tmp_path, {"c_1.tif": bytes(3 * 2**20)}, "zeros.zip")  # 3 MiB inflating ~1000x
    with pytest.raises(ValueError, match=r"inflates \d+ times, over the limit of 200"):
        load_case(zeros)


def test_too_many_slices_members_and_symlinks(tmp_path, monkeypatch):
    path = _zip_with(tmp_path, {f"c_{n}.tif": _tif_bytes() for n in range(1, 7)})
    monkeypatch.setattr(cases, "MAX_SLICES", 5)
    with pytest.raises(ValueError, match=r"6 slices, more than the limit of 5"):
        load_case(path)
    monkeypatch.setattr(cases, "MAX_ZIP_MEMBERS", 4)
    with pytest.raises(ValueError, match=r"6 members, more than the limit of 4"):
        load_case(path)
    link = tmp_path / "link.zip"
    with zipfile.ZipFile(link, "w") as zf:
        info = zipfile.ZipInfo("c_1.tif")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ValueError, match=r"symbolic link"):
        load_case(link)


def test_bad_file_sets(case_dir, tmp_path):
    with pytest.raises(ValueError, match=r"No files given"):
        load_case([])
    (tmp_path / "a.png").write_bytes(cv2.imencode(".png", make_slice(np.random.default_rng(0), 32)[0])[1].tobytes())
    (tmp_path / "b.png").write_bytes((tmp_path / "a.png").read_bytes())
    with pytest.raises(ValueError, match=r"'a\.png'.*no slice number"):
        load_case([tmp_path / "a.png", tmp_path / "b.png"])
    with pytest.raises(ValueError, match=r"send a zip or a NIfTI file alone"):
        load_case([case_dir / f"{CASE}_1.tif", tmp_path / "x.zip"])
    with pytest.raises(ValueError, match=r"notes\.txt is not a slice image"):
        (tmp_path / "notes.txt").write_text("x")
        load_case([case_dir / f"{CASE}_1.tif", tmp_path / "notes.txt"])
    files = [p for p in case_dir.iterdir() if not p.name.endswith(("_6.tif", "_6_mask.tif"))]
    with pytest.raises(ValueError, match=r"Missing slice number\(s\) 6 in case"):
        load_case(files)
    oversized = tmp_path / "big_1.png"
    oversized.write_bytes(cv2.imencode(".png", np.zeros((5000, 4000), np.uint8))[1].tobytes())
    with pytest.raises(ValueError, match=r"4000x5000 pixels"):
        load_case([oversized])


# ---------------------------------------------------------------- analysis and writers

def test_oracle_volume_largest_slice_and_summary(case_dir, tmp_path):
    case = load_case(case_dir)
    truth = np.stack(case.masks)
    result = analyze_case(FlairOracle(), case)
    areas = truth.reshape(len(truth), -1).sum(1)
    assert result.volume_voxels == int(truth.sum()) == sum(result.areas_px)
    assert result.largest_area_slice == case.slice_numbers[int(np.argmax(areas))]
    assert result.largest_area_px == int(areas.max())
    assert result.dice == 1.0 and result.slice_dice == [1.0] * 12 and result.volume_ml is None

    s = summarize(result)
    json.dumps(s, allow_nan=False)
    assert s["case"] == CASE and s["slices"] == 12 and s["tumor_slices"] == int((areas > 0).sum())
    assert s["tumor_volume_voxels"] == int(truth.sum()) and s["tumor_volume_ml"] is None and s["dice"] == 1.0
    assert [p["slice"] for p in s["per_slice"]] == list(range(1, 13))
    assert [p["tumor_area_px"] for p in s["per_slice"]] == areas.tolist()
    assert set(s["per_slice"][0]) >= {"slice", "tumor_probability", "tumor_detected", "tumor_area_px"}

    spaced = CaseInput(case.name, case.slices, case.slice_numbers, None, (0.5, 0.5, 2.0))
    r2 = analyze_case(FlairOracle(), spaced)
    assert r2.volume_ml == pytest.approx(truth.sum() * 0.5 / 1000) and r2.dice is None
    assert summarize(r2)["dice"] is None and summarize(r2)["per_slice"][0]["dice"] is None


def test_case_dice_equals_evaluate(synth_root, case_dir, predictor, tmp_path):
    """The per-case Dice of analyze_case is brainseg.evaluate's, for the same case, folder or zip."""
    from brainseg.evaluate import evaluate

    case = load_case(zip_folder(case_dir, tmp_path / "case.zip"))
    probs = predictor.segment_probs(case.slices[4:8]).numpy()
    thr = float(np.percentile(probs, 90))  # untrained tiny model: pick a threshold that gives partial masks
    ours = analyze_case(predictor, case, threshold=thr)
    theirs = evaluate(synth_root, predictor, split={"train": [], "val": [CASE]}, threshold=thr)
    assert 0 < ours.volume_voxels and 0 < ours.dice < 1
    assert ours.dice == theirs["per_case"][CASE]["dice"]
    assert ours.volume_voxels == theirs["per_case"][CASE]["pred_voxels"]
    assert analyze_case(predictor, load_case(case_dir), threshold=thr).dice == ours.dice


def test_predict_case_files_outputs(case_dir, predictor, tmp_path):
    z = zip_folder(case_dir, tmp_path / "case.zip")
    summary, plot, montage, masks = predict_case_files(predictor, [z], 0.47, tmp_path / "out")
    assert {Path(p).parent for p in (plot, montage, masks)} == {tmp_path / "out"}
    assert cv2.imread(plot) is not None and cv2.imread(montage).shape == (2 * 128, 8 * 128, 3)
    pages = tifffile.imread(masks)
    assert pages.shape == (12, 64, 64) and pages.dtype == np.uint8 and set(np.unique(pages)) <= {0, 255}
    assert [int(v) for v in (pages > 0).reshape(12, -1).sum(1)] == [p["tumor_area_px"] for p in summary["per_slice"]]
    assert json.loads((tmp_path / "out" / f"{CASE}_summary.json").read_text()) == summary
    assert summary["dice"] is not None and summary["threshold"] == 0.47


def test_montage_and_plot_without_masks(tmp_path):
    rng = np.random.default_rng(0)
    case = CaseInput("grey", [make_slice(rng, 40)[0][..., 1:2] for _ in range(3)], [7, 8, 9])
    result = analyze_case(_ThresholdOracle(200), case)
    grid = case_montage(case, result)
    assert grid.shape == (128, 3 * 128, 3)
    plot_probabilities(result, tmp_path / "p.png")
    write_mask_tiff(result, tmp_path / "m.tif")
    assert tifffile.imread(tmp_path / "m.tif").shape == (3, 40, 40)


EXAMPLES = sorted(p for p in (Path(__file__).resolve().parent.parent / "examples").glob("*.png")
                  if not p.stem.endswith("_mask"))


@pytest.mark.skipif(not EXAMPLES, reason="no examples/*.png")
def test_example_slices_as_a_case(predictor, tmp_path):
    """The shipped example slices (from different patients) stacked as one case, with their masks."""
    paths = []
    for k, p in enumerate(EXAMPLES, start=1):
        paths.append(tmp_path / f"examples_{k}.png")
        paths[-1].write_bytes(p.read_bytes())
        truth = p.with_name(p.stem + "_mask.png")
        if truth.exists():
            paths.append(tmp_path / f"examples_{k}_mask.png")
            paths[-1].write_bytes(truth.read_bytes())
    random.Random(0).shuffle(paths)
    case = load_case(paths)
    assert case.slice_numbers == list(range(1, len(EXAMPLES) + 1))
    for got, p in zip(case.slices, EXAMPLES):
        np.testing.assert_array_equal(got, read_image(p))
    summary, plot, montage, masks = predict_case_files(predictor, paths, None, tmp_path / "out")
    assert summary["slices"] == len(EXAMPLES) and tifffile.imread(masks).shape[0] == len(EXAMPLES)
    if case.masks is not None:
        pred = tifffile.imread(masks) > 0
        ref = analyze_case(predictor, case)
        assert summary["dice"] == pytest.approx(dice_score(pred, np.stack(case.masks)), abs=1e-6) == ref.dice


def test_gated_slices_skip_the_segmenter_with_the_same_answer(tiny_checkpoints, case_dir):
    from brainseg.cases import predict_slices

    p = Predictor.from_sources(str(tiny_checkpoints["segmenter"]), str(tiny_checkpoints["classifier"]))
    case = load_case(case_dir)
    probs = p.classify(case.slices)
    thr = float(np.percentile(p.segment_probs(case.slices[:4]).numpy(), 80))
    p.segmenter.config.gate_threshold = float(np.median(probs))  # about half the slices pass
    seen = []
    segment = p.segment_probs
    p.segment_probs = lambda images: seen.append(len(images)) or segment(images)
    fast = predict_slices(p, case.slices, thr)
    assert 0 < sum(seen) < len(case)
    p.segment_probs = segment
    plain = p.predict_batch(case.slices, thr)
    assert any(f.mask.any() for f in fast)
    for f, q in zip(fast, plain):
        np.testing.assert_array_equal(f.mask, q.mask)
        assert f.tumor_probability == pytest.approx(q.tumor_probability, abs=1e-6)
        assert (f.tumor_detected, f.input_shape, f.channels_replicated) == (q.tumor_detected, q.input_shape,
                                                                            q.channels_replicated)


def test_nifti_limits(tmp_path):
    nib = pytest.importorskip("nibabel")
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((4000, 4000, 400))  # declares 6.4e9 voxels; the file holds a header and nothing else
    hdr.set_data_dtype(np.float32)
    import gzip
    with gzip.open(tmp_path / "huge.nii.gz", "wb") as f:
        f.write(hdr.binaryblock + b"\x00" * 4)
    with pytest.raises(ValueError, match=r"huge\.nii\.gz has shape \(4000, 4000, 400\): over the pixel limit"):
        load_case(tmp_path / "huge.nii.gz")
    (tmp_path / "junk.nii").write_bytes(b"\x00" * 600)
    with pytest.raises(ValueError, match=r"not a readable NIfTI"):
        load_case(tmp_path / "junk.nii")
    vol = np.random.default_rng(0).integers(0, 255, (16, 16, 4, 3)).astype(np.uint8)  # 3 channels a voxel
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "rgb.nii")
    case = load_case(tmp_path / "rgb.nii")
    assert len(case) == 4 and case.slices[0].shape == (16, 16, 3)


def test_tiff_page_limit(tmp_path, monkeypatch):
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((7, 8, 8), np.uint8))
    monkeypatch.setattr(cases, "MAX_SLICES", 5)
    with pytest.raises(ValueError, match=r"more than 5 pages"):
        load_case(tmp_path / "stack.tif")
