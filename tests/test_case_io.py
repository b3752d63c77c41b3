"""brainseg.case_io: whole-case reading (zip, files, multi-page TIFF, NIfTI) under one set of limits, and
the one writer of a case's outputs. Every bad input is a ValueError naming the file and the problem."""
import gzip
import json
import random
import struct
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from brainseg.case_io import CaseInput, load_case
from brainseg.exports import write_case_outputs
from brainseg.case_analysis import analyze_case, summarize
from brainseg.data import find_cases, read_image, read_mask
from brainseg.images import Limits, decode_image, load_slice
from conftest import FakePredictor, make_slice

CASE = "TCGA_CS_0001_20000101"


def over(level, channel=1, size=64):
    """conftest's FakePredictor finding every pixel of ``channel`` above ``level`` (exact at input size ``size``)."""
    return FakePredictor(lambda im: (np.asarray(im)[..., channel] > level).astype(np.float32), image_size=size)


@pytest.fixture(scope="module")
def case_dir(synth_root):
    return synth_root / CASE


def zip_folder(folder: Path, path: Path, prefix: str = None) -> Path:
    prefix = folder.name if prefix is None else prefix
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.iterdir()):
            zf.write(p, f"{prefix}/{p.name}" if prefix else p.name)
    return path


def zip_with(tmp_path, members, name="bad.zip"):
    path = tmp_path / name
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for member, data in members.items():
            zf.writestr(member, data)
    return path


def tif_bytes(size=32, seed=0):
    img, _ = make_slice(np.random.default_rng(seed), size)
    return cv2.imencode(".tif", img)[1].tobytes()


def png_bytes(a):
    return cv2.imencode(".png", a)[1].tobytes()


def assert_matches_folder(case: CaseInput, folder: Path):
    ref = next(c for c in find_cases(folder.parent) if c.name == folder.name)
    assert case.slice_numbers == list(range(1, len(ref) + 1))
    for got, p in zip(case.slices, ref.images):
        np.testing.assert_array_equal(got, read_image(p))  # same pixels as training, so same predictions
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


def test_stored_zip_members_are_read_too(case_dir, tmp_path):
    path = tmp_path / "stored.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for p in sorted(case_dir.iterdir()):
            zf.write(p, p.name)
    assert_matches_folder(load_case(path), case_dir)


def test_several_files_in_any_order_and_a_folder(case_dir):
    files = sorted(case_dir.iterdir())
    random.Random(1).shuffle(files)
    case = load_case(files)
    assert (case.name, case.source_kind) == (CASE, "files")
    assert_matches_folder(case, case_dir)
    assert_matches_folder(load_case(case_dir), case_dir)
    images = load_case([p for p in files if not p.stem.endswith("_mask")])
    assert images.masks is None and images.slice_numbers == list(range(1, 13))
    assert load_case(case_dir / f"{CASE}_5.tif").slice_numbers == [5]


def test_multipage_tiff_rgb_grey_and_spacing(tmp_path):
    rng = np.random.default_rng(3)
    stack = np.stack([make_slice(rng, 48)[0] for _ in range(5)])
    tifffile.imwrite(tmp_path / "vol.tif", stack, photometric="rgb")
    case = load_case(tmp_path / "vol.tif")
    assert (case.source_kind, case.slice_numbers, case.spacing) == ("tiff", [1, 2, 3, 4, 5], None)
    np.testing.assert_array_equal(np.stack(case.slices), stack)

    grey = stack[..., 1].astype(np.uint16) * 100
    tifffile.imwrite(tmp_path / "grey.tif", grey, imagej=True, resolution=(1 / 0.5, 1 / 0.5),
                     metadata={"spacing": 3.0, "unit": "mm"})
    case = load_case(tmp_path / "grey.tif")
    assert case.slices[0].shape == (48, 48, 3) and case.slices[0].dtype == np.uint16  # FLAIR replicated, as one slice
    np.testing.assert_array_equal(case.slices[2][..., 0], grey[2])
    assert case.spacing == pytest.approx((0.5, 0.5, 3.0))
    result = analyze_case(over(200 * 100, size=48), case)
    assert result.volume_voxels == int((grey > 20000).sum()) > 0
    assert result.volume_ml == pytest.approx(result.volume_voxels * 0.75 / 1000)


def test_16bit_rgb_tiff_is_one_array_in_both_tabs_and_in_training(tmp_path):
    """Issue 11.2: the one-slice tab kept 16 bits, the case readers and training cut them to 8."""
    rgb = make_slice(np.random.default_rng(5), 64)[0].astype(np.uint16) * 257 + 7
    path = tmp_path / "c_1.tif"
    tifffile.imwrite(path, rgb, photometric="rgb")
    one_slice = decode_image(path.read_bytes()).array
    assert one_slice.dtype == np.uint16
    np.testing.assert_array_equal(one_slice, rgb)
    for got in (load_case([path]).slices[0], load_case(zip_with(tmp_path, {"c_1.tif": path.read_bytes()})).slices[0],
                read_image(path), load_slice(path)):
        assert got.dtype == np.uint16
        np.testing.assert_array_equal(got, one_slice)
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([rgb, rgb]), photometric="rgb")
    np.testing.assert_array_equal(load_case(tmp_path / "stack.tif").slices[1], one_slice)


def _nifti(tmp_path, vol, affine, name="vol.nii.gz"):
    nib = pytest.importorskip("nibabel")
    nib.save(nib.Nifti1Image(vol, affine), tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize("axcodes", [("R", "A", "S"), ("L", "P", "S"), ("P", "S", "R")])
def test_nifti_slices_spacing_and_mask_roundtrip(tmp_path, axcodes):
    nib = pytest.importorskip("nibabel")
    rng = np.random.default_rng(0)
    canon = rng.integers(0, 50, (48, 48, 6)).astype(np.float32)
    canon[5:9, 10:15, 2:4] = 500  # a bright block: the 'tumour'
    zooms = np.array([0.9, 1.1, 3.0])
    ras = nib.orientations.axcodes2ornt(("R", "A", "S"))
    t = nib.orientations.ornt_transform(ras, nib.orientations.axcodes2ornt(axcodes))
    vol = nib.orientations.apply_orientation(canon, t)  # the same head stored in another axis order
    affine = np.diag(list(zooms) + [1]) @ nib.orientations.inv_ornt_aff(t, canon.shape)
    path = _nifti(tmp_path, vol, affine)
    assert nib.aff2axcodes(nib.load(path).affine) == axcodes

    case = load_case(path)
    assert case.source_kind == "nifti" and len(case) == 6 and case.slices[0].shape == (48, 48, 3)
    assert case.spacing == pytest.approx((1.1, 0.9, 3.0))  # (row = anterior axis, column = right axis, slice)
    np.testing.assert_array_equal(case.slices[2][..., 0], np.rot90(canon[:, :, 2]))
    result = analyze_case(over(400, channel=0, size=48), case)
    assert result.volume_voxels == int((vol > 400).sum()) and result.largest_area_slice in (3, 4)

    paths = write_case_outputs(case, result, tmp_path / "out", summary=summarize(result))
    assert paths["masks"].name == "vol_masks.nii.gz"
    m = nib.load(paths["masks"])
    assert m.shape == vol.shape and np.allclose(m.affine, nib.load(path).affine)
    np.testing.assert_array_equal(np.asarray(m.dataobj), (vol > 400).astype(np.uint8))
    summary = json.loads(paths["summary"].read_text())
    assert summary["tumor_volume_ml"] == pytest.approx(summary["tumor_volume_voxels"] * 0.9 * 1.1 * 3.0 / 1000, rel=1e-4)


def test_nifti_with_three_channels_and_nan_background(tmp_path):
    vol = np.random.default_rng(0).integers(0, 255, (32, 32, 4, 3)).astype(np.float32)
    vol[0, 0, 0, 0] = np.nan  # masked background in real volumes: read as 0, not refused
    case = load_case(_nifti(tmp_path, vol, np.eye(4), "rgb.nii"))
    assert len(case) == 4 and case.slices[0].shape == (32, 32, 3) and np.isfinite(case.slices[0]).all()


# ---------------------------------------------------------------- writers

def test_write_case_outputs_for_the_app_and_the_cli(case_dir, tmp_path):
    case = load_case(case_dir)
    result = analyze_case(over(199), case)
    paths = write_case_outputs(case, result, tmp_path / "app", figures=True, summary=summarize(result))
    assert set(paths) == {"masks", "nifti", "tiff", "csv", "summary", "probability", "overlays"}
    assert paths["masks"] == paths["tiff"]  # no DICOM SEG without DICOM input
    assert {p.parent for p in paths.values()} == {(tmp_path / "app").resolve()}
    pages = tifffile.imread(paths["masks"])
    assert pages.shape == (12, 64, 64) and set(np.unique(pages)) <= {0, 255}
    np.testing.assert_array_equal(pages > 0, np.stack(case.masks) > 0)
    assert cv2.imread(str(paths["overlays"])).shape == (2 * 128, 8 * 128, 3) and cv2.imread(str(paths["probability"])) is not None
    summary = json.loads(paths["summary"].read_text())
    assert summary["case"] == CASE and summary["dice"] == 1.0

    cli = write_case_outputs(case, result, tmp_path / "cli", slice_masks=True, name="renamed", summary=summarize(result))
    assert sorted({p.name for p in cli.values()}) == sorted(
        ["renamed_masks.tif", "renamed_masks.nii.gz", "renamed_slices.csv", "renamed_summary.json"]
        + [f"renamed_{n}_mask.tif" for n in range(1, 13)])
    np.testing.assert_array_equal(read_mask(cli["slice_5"]), case.masks[4])
    assert json.loads(cli["summary"].read_text())["case"] == "renamed"
    assert set(write_case_outputs(case, result, tmp_path / "bare")) == {"masks", "nifti", "tiff", "csv"}  # no JSON


def test_writer_refuses_a_symlink_out_of_its_folder(case_dir, tmp_path):
    case = load_case(case_dir)
    result = analyze_case(over(199), case)
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / f"{CASE}_masks.tif").symlink_to(elsewhere / "planted.tif")
    with pytest.raises(ValueError, match=r"outside the output folder"):
        write_case_outputs(case, result, out)
    assert not (elsewhere / "planted.tif").exists()


# ---------------------------------------------------------------- bad inputs: a clear ValueError naming the file

def _bomb(tmp_path):
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("case_1.tif", "w", force_zip64=True) as f:
            chunk = bytes(2**20)
            for _ in range(200):  # 200 MB of zeros -> ~200 KB compressed
                f.write(chunk)
    return path


BAD_INPUTS = {
    "zip bomb": (_bomb, r"declares 200 MiB.*zip bomb"),
    "dot-dot member": (lambda t: zip_with(t, {"../evil.tif": tif_bytes()}), r"'\.\./evil\.tif'.*path traversal"),
    "absolute member": (lambda t: zip_with(t, {"/abs.tif": tif_bytes()}), r"'/abs\.tif'.*absolute path"),
    "windows absolute": (lambda t: zip_with(t, {"C:\\x\\c_1.tif": tif_bytes()}), r"absolute path"),
    "no images": (lambda t: zip_with(t, {"readme.txt": b"hi", "data.csv": b"a,b"}), r"holds no slice images.*readme"),
    "mixed sizes": (lambda t: zip_with(t, {"c_1.tif": tif_bytes(32), "c_2.tif": tif_bytes(32), "c_3.tif": tif_bytes(48)}),
                    r"Slices differ in size: 32x32x3 \(slices 1-2\); 48x48x3 \(slice 3\)"),
    "gap": (lambda t: zip_with(t, {f"c_{n}.tif": tif_bytes() for n in (1, 2, 4, 5, 8)}), r"Missing slice number\(s\) 3, 6-7"),
    "not a zip": (lambda t: (t / "x.zip").write_bytes(b"PK not really") and t / "x.zip", r"not a readable zip"),
    "broken image": (lambda t: zip_with(t, {"c_1.tif": b"II*\x00garbage"}), r"c_1\.tif: The TIFF is truncated or corrupt"),
    "two cases": (lambda t: zip_with(t, {"a_1.tif": tif_bytes(), "b_1.tif": tif_bytes()}), r"slices of 2 cases"),
    "partial masks": (lambda t: zip_with(t, {"c_1.tif": tif_bytes(), "c_2.tif": tif_bytes(), "c_1_mask.tif": tif_bytes()}),
                      r"masks cover 1 of 2 slices \(none for slice\(s\) 2\)"),
    "tiny slices": (lambda t: zip_with(t, {f"c_{n}.png": png_bytes(np.zeros((1, 1, 3), np.uint8)) for n in (1, 2, 3)}),
                    r"c_1\.png: The image is 1x1 pixels, too small for an MRI slice \(at least 32x32\)"),
    "nan slice": (lambda t: zip_with(t, {"c_1.tif": _nan_tiff()}), r"c_1\.tif: .*NaN"),
}


def _nan_tiff():
    import io
    a = np.ones((40, 40), np.float32)
    a[3, 3] = np.nan
    b = io.BytesIO()
    tifffile.imwrite(b, a)
    return b.getvalue()


@pytest.mark.parametrize("kind", list(BAD_INPUTS))
def test_bad_zip_is_a_clear_error(tmp_path, kind):
    build, message = BAD_INPUTS[kind]
    with pytest.raises(ValueError, match=message):
        load_case(build(tmp_path))


def test_three_1x1_pngs_and_a_500_page_1x1_tiff_are_refused_fast(tmp_path):
    """Issue 10.3: tiny inputs that used to hold the case worker for a minute."""
    files = []
    for n in (1, 2, 3):
        files.append(tmp_path / f"c_{n}.png")
        files[-1].write_bytes(png_bytes(np.full((1, 1, 3), 9, np.uint8)))
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"c_1\.png: The image is 1x1 pixels, too small .*at least 32x32"):
        load_case(files)
    pages = tmp_path / "pages.tif"
    with tifffile.TiffWriter(pages) as w:
        for _ in range(500):
            w.write(np.zeros((1, 1), np.uint8), contiguous=False)
    assert pages.stat().st_size < 200_000
    with pytest.raises(ValueError, match=r"pages\.tif: page 1: The image is 1x1 pixels, too small"):
        load_case(pages)
    assert time.perf_counter() - t0 < 2.0


def test_limits_on_slices_members_pages_and_symlinks(tmp_path):
    path = zip_with(tmp_path, {f"c_{n}.tif": tif_bytes() for n in range(1, 7)})
    with pytest.raises(ValueError, match=r"6 slices, more than the limit of 5"):
        load_case(path, Limits(max_slices=5))
    with pytest.raises(ValueError, match=r"6 members, more than the limit of 4"):
        load_case(path, Limits(max_zip_members=4))
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((7, 32, 32), np.uint8))
    with pytest.raises(ValueError, match=r"stack\.tif: The TIFF has more than 5 pages"):
        load_case(tmp_path / "stack.tif", Limits(max_pages=5))
    link = tmp_path / "link.zip"
    with zipfile.ZipFile(link, "w") as zf:
        info = zipfile.ZipInfo("c_1.tif")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ValueError, match=r"symbolic link"):
        load_case(link)


def test_case_pixel_limits_for_files_and_multipage_tiff(case_dir, tmp_path):
    """Whole-case pixels are capped on every path (a mutation that removed these checks went unnoticed)."""
    files = [p for p in case_dir.iterdir() if not p.stem.endswith("_mask")]
    assert len(load_case(files, Limits(max_case_pixels=12 * 64 * 64))) == 12
    with pytest.raises(ValueError, match=rf"over its limit at slice 11 \({CASE}_11\.tif\): at most 45,000 pixels"):
        load_case(files, Limits(max_case_pixels=45_000))
    tifffile.imwrite(tmp_path / "vol.tif", np.zeros((6, 40, 40), np.uint8))
    assert len(load_case(tmp_path / "vol.tif", Limits(max_case_pixels=6 * 1600))) == 6
    with pytest.raises(ValueError, match=r"vol\.tif: page 4: .*6,400 pixels, over the limit of 6,000"):
        load_case(tmp_path / "vol.tif", Limits(max_case_pixels=6000))


def test_input_file_size_limit_on_every_kind(case_dir, tmp_path):
    z = zip_folder(case_dir, tmp_path / "case.zip")
    tifffile.imwrite(tmp_path / "vol.tif", np.zeros((3, 40, 40), np.uint8))
    nii = _nifti(tmp_path, np.random.default_rng(0).random((40, 40, 3), np.float32), np.eye(4))
    small = Limits(max_input_bytes=1000)
    for path in (z, tmp_path / "vol.tif", nii, case_dir / f"{CASE}_1.tif"):
        assert len(load_case(path)) >= 1
        with pytest.raises(ValueError, match=rf"{path.name} is \d+ MiB, over the limit of 0 MiB for one input file"):
            load_case(path, small)


def test_decoded_bytes_are_budgeted_before_decoding(case_dir, tmp_path, monkeypatch):
    """Issue 10.4: memory in bytes (pixels x channels x bytes per sample), for slice files and TIFF stacks."""
    files = [p for p in case_dir.iterdir() if not p.stem.endswith("_mask")]
    with pytest.raises(ValueError, match=rf"{CASE}_4\.tif: The TIFF would decode to 0 MiB"):
        load_case(files, Limits(max_decoded_bytes=3 * 64 * 64 * 3 + 100))
    stack = np.zeros((3, 40, 40, 3), np.float64)  # 38,400 B a page once decoded
    tifffile.imwrite(tmp_path / "f64.tif", stack, photometric="rgb")
    assert len(load_case(tmp_path / "f64.tif", Limits(max_decoded_bytes=3 * 38_400))) == 3
    monkeypatch.setattr(tifffile.TiffPage, "asarray", lambda *a, **k: pytest.fail("a page decoded before the check"))
    with pytest.raises(ValueError, match=r"f64\.tif: page 3: The pages up to this one would decode to 0 MiB"):
        load_case(tmp_path / "f64.tif", Limits(max_decoded_bytes=2 * 38_400 + 1))


def test_finite_float64_beyond_float32_is_named_as_such(tmp_path):
    a = np.full((2, 40, 40), 1.0)
    a[1, 5, 5] = 1e308
    tifffile.imwrite(tmp_path / "big.tif", a)
    with pytest.raises(ValueError, match=r"big\.tif: page 2 .*values up to 1e\+308, beyond the float32 range") as e:
        load_case(tmp_path / "big.tif")
    assert "NaN" not in str(e.value)


def test_member_inflating_past_its_declared_size_is_stopped_there(tmp_path):
    """Our own inflation stops at the declared size; zipfile alone would inflate it and then report a bad CRC."""
    path = zip_with(tmp_path, {"c_1.tif": tif_bytes(64)})
    raw = bytearray(path.read_bytes())
    true_size = len(tif_bytes(64))
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # uncompressed-size field of both headers
        i = raw.find(sig)
        assert struct.unpack_from("<I", raw, i + off)[0] == true_size
        struct.pack_into("<I", raw, i + off, 100)
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"'c_1\.tif' inflates past its declared size of 100 bytes \(zip bomb\?\)") as e:
        load_case(path)
    assert "CRC" not in str(e.value)


def test_corrupt_member_data_is_named(tmp_path):
    path = zip_with(tmp_path, {"c_1.tif": tif_bytes(64)})
    raw = bytearray(path.read_bytes())
    i = raw.find(b"PK\x03\x04") + 30 + len("c_1.tif") + 40
    raw[i:i + 16] = bytes(16)
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"'c_1\.tif' is (truncated or )?corrupt"):
        load_case(path)


def test_total_size_and_ratio_limits(tmp_path):
    path = zip_with(tmp_path, {f"c_{n}.tif": tif_bytes(64, n) for n in (1, 2, 3)})
    with pytest.raises(ValueError, match=r"declares more than"):
        load_case(path, Limits(max_zip_bytes=2 * len(tif_bytes(64))))
    zeros = zip_with(tmp_path, {"c_1.tif": bytes(3 * 2**20)}, "zeros.zip")  # 3 MiB inflating ~1000x
    with pytest.raises(ValueError, match=r"inflates \d+ times, over the limit of 200"):
        load_case(zeros)


def test_bad_file_sets(case_dir, tmp_path):
    with pytest.raises(ValueError, match=r"No files given"):
        load_case([])
    (tmp_path / "a.png").write_bytes(png_bytes(make_slice(np.random.default_rng(0), 32)[0]))
    (tmp_path / "b.png").write_bytes((tmp_path / "a.png").read_bytes())
    with pytest.raises(ValueError, match=r"'a\.png'.*no slice number"):
        load_case([tmp_path / "a.png", tmp_path / "b.png"])
    with pytest.raises(ValueError, match=r"send a zip or a NIfTI file alone"):
        load_case([case_dir / f"{CASE}_1.tif", tmp_path / "x.zip"])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"notes\.txt is not a slice image"):
        load_case([case_dir / f"{CASE}_1.tif", tmp_path / "notes.txt"])
    files = [p for p in case_dir.iterdir() if not p.name.endswith(("_6.tif", "_6_mask.tif"))]
    with pytest.raises(ValueError, match=r"Missing slice number\(s\) 6 in case"):
        load_case(files)
    oversized = tmp_path / "big_1.png"
    oversized.write_bytes(png_bytes(np.zeros((5000, 4000), np.uint8)))
    with pytest.raises(ValueError, match=r"big_1\.png: The image is 4000x5000 pixels"):
        load_case([oversized])


def test_a_missing_file_is_not_found_and_named(case_dir, tmp_path):
    """A vanished input is a FileNotFoundError (the app answers "upload expired"), not a ValueError about it."""
    gone = tmp_path / "gone.zip"
    with pytest.raises(FileNotFoundError, match=r"No such file: .*gone\.zip"):
        load_case(gone)
    with pytest.raises(FileNotFoundError, match=r"gone_2\.tif"):
        load_case([case_dir / f"{CASE}_1.tif", tmp_path / "gone_2.tif"])


# ---------------------------------------------------------------- NIfTI: refused from the header

def _header_only(tmp_path, name, shape, dtype, data=b"", offset=None):
    nib = pytest.importorskip("nibabel")
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    if offset is not None:
        hdr.set_data_offset(offset)
    body = hdr.binaryblock + b"\x00" * 4 + data
    path = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(body)
    else:
        path.write_bytes(body)
    return path


def test_nifti_refused_from_its_header(tmp_path):
    huge = _header_only(tmp_path, "huge.nii.gz", (4000, 4000, 400), np.float32)
    with pytest.raises(ValueError, match=r"huge\.nii\.gz has shape \(4000, 4000, 400\): over the pixel limit"):
        load_case(huge)
    (tmp_path / "junk.nii").write_bytes(b"\x00" * 600)
    with pytest.raises(ValueError, match=r"junk\.nii is not a readable NIfTI"):
        load_case(tmp_path / "junk.nii")
    tiny = _header_only(tmp_path, "tiny.nii", (8, 8, 3), np.uint8, bytes(8 * 8 * 3))
    with pytest.raises(ValueError, match=r"tiny\.nii has slices of 8x8 pixels, too small .*at least 32x32"):
        load_case(tiny)


def test_small_gz_declaring_gigabytes_of_float64_is_refused_before_inflating(tmp_path):
    """Issue 10.4: 4096x4096x2x3 float64 (805 MB decoded) within the pixel limit, refused by its bytes.

    The file holds the header and 1 KB of voxels: read further, it would be refused as truncated instead."""
    path = _header_only(tmp_path, "f64.nii.gz", (4096, 4096, 2, 3), np.float64, bytes(1024))
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"f64\.nii\.gz \(4096x4096x2x3 float64\) would decode to 768 MiB .*limit of 512 MiB"):
        load_case(path)
    assert time.perf_counter() - t0 < 1.0


def test_truncated_nifti_and_offset_past_the_end_are_named(tmp_path):
    """Issue 10.5: these reached the user as Gradio's generic error."""
    short = _header_only(tmp_path, "short.nii.gz", (40, 40, 4), np.uint8, bytes(40 * 40 * 2))
    with pytest.raises(ValueError, match=r"short\.nii\.gz is truncated: its header declares 6,752 bytes .*holds 3,552"):
        load_case(short)
    past = _header_only(tmp_path, "past.nii", (40, 40, 4), np.uint8, bytes(40 * 40 * 4), offset=100_000)
    with pytest.raises(ValueError, match=r"past\.nii is truncated: .*voxel data from byte 100,000"):
        load_case(past)
    far = _header_only(tmp_path, "far.nii.gz", (40, 40, 4), np.uint8, bytes(16), offset=2**40)
    with pytest.raises(ValueError, match=r"far\.nii\.gz is corrupt: its header puts the voxel data at byte"):
        load_case(far)


def test_nan_affine_is_named_not_an_svd_error(tmp_path):
    nib = pytest.importorskip("nibabel")
    hdr = nib.Nifti1Header()  # nibabel will not build an image from a NaN affine: write the header by hand
    hdr.set_data_shape((40, 40, 3))
    hdr.set_data_dtype(np.uint8)
    hdr.set_data_offset(352)
    hdr["sform_code"] = 1
    hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = [np.nan, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]
    path = tmp_path / "nan.nii"
    path.write_bytes(hdr.binaryblock + b"\x00" * 4 + bytes(40 * 40 * 3))
    with pytest.raises(ValueError, match=r"nan\.nii: the header's affine .* NaN") as e:
        load_case(path)
    assert "SVD" not in str(e.value)
