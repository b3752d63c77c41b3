"""DICOM series in (brainseg.dicom_io) and the exports out (brainseg.exports): the shipped example case written
as DICOM with pydicom gives the masks and volume of the same case as TIFFs, its SEG and NIfTI lie on its grid,
and bad series are refused naming the file and the tag, never a patient identifier."""
import json
import logging
import zipfile

import nibabel as nib
import numpy as np
import pytest
from pydicom import uid

from brainseg.case_analysis import analyze_case, case_summary_text, summarize
from brainseg.case_io import load_case
from brainseg.exports import write_case_outputs
from brainseg.dicom_write import series_datasets, to_bytes, write_series_zip
from brainseg.inference import Predictor
from brainseg.limits import Limits
from brainseg.metrics import dice_score
from conftest import ROOT, FakePredictor

EXAMPLE = ROOT / "examples" / "TCGA_HT_A616_19991226_slices_11-23.zip"
SPACING = (0.9, 0.8, 3.0)  # anisotropic on purpose: row, column, slice
SYNTAXES = [uid.ExplicitVRLittleEndian, uid.RLELossless, uid.ImplicitVRLittleEndian, uid.JPEGLSLossless,
            uid.JPEG2000Lossless, uid.DeflatedExplicitVRLittleEndian]
PATIENT = ("BRAINSEG^DEMO", "BRAINSEG-DEMO-0001")


def over(level):
    """The real Predictor's rules over a stand-in segmenter: FLAIR above ``level``, at the example's 256 px."""
    return FakePredictor(lambda im: (np.asarray(im, np.float32)[..., 1] > level).astype(np.float32), image_size=256)


@pytest.fixture(scope="module")
def tiff_case():
    case = load_case(EXAMPLE)
    case.set_spacing(SPACING)
    return case


@pytest.fixture(scope="module")
def dicom_zip(tiff_case, tmp_path_factory):
    """Pre, FLAIR and post series in six transfer syntaxes, files shuffled, plus a localizer of another grid."""
    datasets = series_datasets(tiff_case.slices, SPACING, transfer_syntaxes=SYNTAXES)
    localizer = series_datasets([s[:128, :128] for s in tiff_case.slices[:3]], (2.0, 2.0, 5.0), channels=(1,), seed=7)
    for ds in localizer:
        ds.SeriesDescription = "LOCALIZER"
    return write_series_zip(datasets + localizer, tmp_path_factory.mktemp("dicom") / "study.zip", seed=3)


@pytest.fixture(scope="module")
def dicom_case(dicom_zip):
    return load_case(dicom_zip)


def test_the_series_in_six_transfer_syntaxes_reads_as_the_tiff_case(tiff_case, dicom_case):
    assert {ds.file_meta.TransferSyntaxUID for ds in series_datasets(tiff_case.slices[:2], SPACING,
                                                                      transfer_syntaxes=SYNTAXES)} == set(SYNTAXES)
    assert dicom_case.source_kind == "dicom" and dicom_case.name == "study"  # the upload's name, not the patient's
    assert len(dicom_case) == 13 and dicom_case.spacing == pytest.approx(SPACING)
    for a, b in zip(tiff_case.slices, dicom_case.slices):
        np.testing.assert_array_equal(a, b)  # pre, FLAIR, post stacked in the models' order, lossless
    assert "pre-contrast, FLAIR and post-contrast stacked" in dicom_case.meta["input_note"]
    assert "ImagePositionPatient" in dicom_case.meta["ordering"]


@pytest.mark.parametrize("predictor", ["fake", "tiny"])
def test_same_masks_and_volume_as_the_tiff_case(tiff_case, dicom_case, tiny_checkpoints, predictor):
    p = over(150) if predictor == "fake" else Predictor.from_sources(str(tiny_checkpoints["segmenter"]),
                                                                      str(tiny_checkpoints["classifier"]))
    a, b = analyze_case(p, tiff_case), analyze_case(p, dicom_case)
    assert a.volume_voxels > 0 or predictor == "tiny"
    assert dice_score(a.masks, b.masks) == 1.0 and np.array_equal(a.masks, b.masks)
    assert b.volume_ml == pytest.approx(a.volume_ml, rel=1e-3)
    assert b.volume_ml == pytest.approx(b.volume_voxels * 0.9 * 0.8 * 3.0 / 1000)
    assert a.probabilities == b.probabilities


@pytest.fixture(scope="module")
def written(dicom_case, tmp_path_factory):
    result = analyze_case(over(150), dicom_case)
    out = tmp_path_factory.mktemp("out")
    return result, write_case_outputs(dicom_case, result, out, figures=True, summary=summarize(result)), out


def test_dicom_seg_reads_back_onto_the_source_frames(dicom_case, written):
    import highdicom as hd

    result, paths, _ = written
    seg = hd.seg.segread(paths["seg"])
    sources = dicom_case.meta["dicom_datasets"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert sources[0].SeriesDescription == "AX FLAIR"  # the masks lie on the FLAIR series
    frames = seg.get_pixels_by_source_instance([ds.SOPInstanceUID for ds in sources], segment_numbers=[1])
    np.testing.assert_array_equal(frames[..., 0].astype(np.uint8), result.masks)
    assert result.masks.any()


def test_nifti_mask_lies_on_the_dicom_grid(dicom_case, written):
    result, paths, _ = written
    img = nib.load(paths["nifti"])
    np.testing.assert_array_equal(np.transpose(np.asanyarray(img.dataobj), (2, 1, 0)), result.masks)
    assert img.header.get_zooms() == pytest.approx((0.8, 0.9, 3.0))
    for k, ds in enumerate(dicom_case.meta["dicom_datasets"]):  # voxel (column 5, row 7, slice k) in RAS
        lps = np.asarray(ds.ImagePositionPatient, float) + 5 * 0.8 * np.array([1, 0, 0]) + 7 * 0.9 * np.array([0, 1, 0])
        np.testing.assert_allclose(img.affine @ [5, 7, k, 1], [-lps[0], -lps[1], lps[2], 1], atol=1e-4)


def test_tiff_and_csv_carry_the_spacing(dicom_case, written):
    result, paths, _ = written
    back = load_case(paths["tiff"])
    assert back.spacing == pytest.approx(SPACING)
    np.testing.assert_array_equal(np.stack(back.slices)[..., 0] > 0, result.masks > 0)
    rows = paths["csv"].read_text().splitlines()
    assert rows[0] == "slice,tumor_probability,tumor_detected,tumor_area_px,tumor_area_mm2"
    k = int(np.argmax(result.areas_px))
    cells = rows[1 + k].split(",")
    assert int(cells[3]) == result.areas_px[k] and float(cells[4]) == pytest.approx(result.areas_px[k] * 0.72, abs=1e-3)


def test_patient_identifiers_reach_only_the_seg(dicom_zip, written, caplog):
    result, paths, out = written
    for path in out.iterdir():
        data = path.read_bytes()
        assert (PATIENT[0].encode() in data) == (path == paths["seg"]), path.name
        assert (PATIENT[1].encode() in data) == (path == paths["seg"]), path.name
    summary = summarize(result)
    text = json.dumps(summary) + case_summary_text(summary)
    assert "BRAINSEG^DEMO" not in text and "BRAINSEG-DEMO" not in text
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(ValueError) as e:
            load_case(dicom_zip, series="nothing like it")
    assert "BRAINSEG" not in str(e.value) + caplog.text and "'AX FLAIR' (13 files)" in str(e.value)


def test_bad_header_values_are_not_echoed(small, tmp_path, caplog, recwarn):
    """pydicom warns and logs an invalid value with the value itself; a patient's must not reach a log."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # writing the bad values is the test's doing
        (ds,) = series_datasets(small[:1], channels=(1,))
        ds.PatientBirthDate, ds.PatientID = "SECRET-DATE", "SECRET-" + "9" * 70
        paths = dicom_files(tmp_path, [ds])
    recwarn.clear()
    with caplog.at_level(logging.DEBUG):
        case = load_case(paths)
        paths = write_case_outputs(case, analyze_case(over(100), case), tmp_path / "out")  # a SEG copies the patient
    assert "SECRET" not in caplog.text + " ".join(str(w.message) for w in recwarn)
    assert "seg" not in paths and "DICOM SEG not written" in caplog.text  # highdicom refuses the date; the rest stands
    assert {"nifti", "tiff", "csv"} <= set(paths) and not any("SECRET".encode() in p.read_bytes() for p in paths.values())


def test_measurements_in_the_summary(dicom_case, written):
    result, _, _ = written
    s = summarize(result)
    m = s["measurements"]
    assert m["unit"] == "mm" and m["lesions"] >= 1 and m["side"] in ("left", "right", "midline")
    assert m["longest_diameter"] >= m["perpendicular_diameter"] > 0
    assert m["measured_slice"] in result.slice_numbers
    assert [r["tumor_area_mm2"] for r in s["per_slice"]] == pytest.approx([a * 0.72 for a in result.areas_px], abs=1e-3)
    assert "separate 3-D lesion" in case_summary_text(s) and f"slice {m['measured_slice']}" in case_summary_text(s)
    from brainseg import viz

    def yellow(frame):  # the longest diameter's colour; the slice is grey and the tumour tinted red
        return int(((frame[..., 0] > 200) & (frame[..., 1] > 150) & (frame[..., 2] < 80)).sum())

    k = result.slice_numbers.index(m["measured_slice"])
    assert yellow(viz.case_frame(dicom_case, result, k)) >= m["longest_diameter"] / 0.9 * 0.5
    assert yellow(viz.case_frame(dicom_case, result, (k + 1) % len(result.slice_numbers))) == 0


def dicom_files(tmp_path, datasets, names=None):
    paths = []
    tmp_path.mkdir(parents=True, exist_ok=True)
    for i, ds in enumerate(datasets):
        p = tmp_path / (names[i] if names else f"f{i:03d}.dcm")
        p.write_bytes(to_bytes(ds))
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (48, 40, 3), dtype=np.uint8) for _ in range(5)]


def test_files_folder_and_series_choice(small, tmp_path):
    datasets = series_datasets(small, (1.0, 1.0, 2.0))
    reverse = [f"IM{9 - i % 5}.dcm" for i in range(len(datasets))]  # names against the slice order
    case = load_case(dicom_files(tmp_path, datasets[5:10], reverse[5:10]))
    np.testing.assert_array_equal(np.stack(case.slices)[..., 0], np.stack(small)[..., 1])  # FLAIR alone, replicated
    assert "FLAIR alone" in case.meta["input_note"]
    folder = tmp_path / "series"
    folder.mkdir()
    dicom_files(folder, datasets)
    chosen = load_case(folder, series="ax t1 post gad")
    np.testing.assert_array_equal(chosen.slices[3][..., 1], small[3][..., 2])
    assert load_case(folder).slices[2].tolist() == small[2].tolist()  # all three: stacked
    no_flair = [ds for ds in datasets if ds.SeriesDescription != "AX FLAIR"]
    for ds in no_flair:
        ds.SeriesDescription = ds.SeriesDescription.replace("PRE", "A").replace("POST GAD", "B")
        ds.pop("ContrastBolusAgent", None)
    with pytest.raises(ValueError, match=r"2 series and not exactly one FLAIR: 'AX T1 A' \(5 files\)"):
        load_case(dicom_files(tmp_path / "x", no_flair))


def test_rescale_and_monochrome1_are_applied(small, tmp_path):
    (ds,) = series_datasets(small[:1], channels=(1,))
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.RescaleSlope, ds.RescaleIntercept = 2, -10
    ds.PixelData = (255 - small[0][..., 1]).astype(np.uint8).tobytes()
    case = load_case(dicom_files(tmp_path, [ds]))
    np.testing.assert_allclose(case.slices[0][..., 0], small[0][..., 1].astype(np.float32) * 2 - 10)


def refused(tmp_path, datasets, match, limits=None):
    with pytest.raises(ValueError, match=match):
        load_case(dicom_files(tmp_path, datasets), **({"limits": limits} if limits else {}))


def test_refusals_name_the_file_and_the_tag(small, tmp_path):
    ds = series_datasets(small, channels=(1,))
    del ds[2].ImagePositionPatient
    refused(tmp_path / "a", ds, r"f002.dcm: the DICOM tag ImagePositionPatient \(0020,0032\) is missing")
    ds = series_datasets(small, channels=(1,))
    refused(tmp_path / "b", ds[:2] + ds[3:], r"f001.dcm and f002.dcm are 6.00 mm apart.*a slice is missing")
    ds = series_datasets(small, channels=(1,))
    ds[1].ImagePositionPatient = ds[0].ImagePositionPatient
    refused(tmp_path / "c", ds, r"f000.dcm and f001.dcm lie at the same ImagePositionPatient")
    ds = series_datasets(small, channels=(1,))
    from pydicom.encaps import encapsulate

    ds[3].file_meta.TransferSyntaxUID = uid.MPEG2MPML
    ds[3].PixelData = encapsulate([b"\0\0\1\xb3" + bytes(60)])  # an MPEG-2 'video': no decoder here
    refused(tmp_path / "d", ds, r"f003.dcm: Transfer Syntax UID \(0002,0010\) is MPEG2 .* no installed decoder.*"
                                r"JPEG-LS Lossless")
    refused(tmp_path / "e", series_datasets(small, channels=(1,)), r"more than the limit of 4",
            Limits(max_slices=4))
    refused(tmp_path / "f", series_datasets(small, channels=(1,)), r"f000.dcm: The image is 40x48 pixels, too small",
            Limits(min_side=64))
    refused(tmp_path / "g", series_datasets(small, channels=(1,)), r"the files: 5 DICOM files, more than the "
            r"limit of 4", Limits(max_zip_members=4))
    refused(tmp_path / "h", series_datasets(small, channels=(1,)), r"over 0 MiB in all \(at f00[0-4].dcm\)",
            Limits(max_input_bytes=4000))


def test_not_dicom_and_junk_in_a_zip(small, tmp_path):
    z = tmp_path / "mixed.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for i, ds in enumerate(series_datasets(small, channels=(1,))):
            zf.writestr(f"S1/I{i}", to_bytes(ds))  # no extension: found by the DICM preamble
        zf.writestr("README", b"not dicom")
        zf.writestr("DICOMDIR", b"\0" * 128 + b"DICM")
    case = load_case(z)
    assert len(case) == 5 and case.source_kind == "dicom"
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"\0" * 200)
    with pytest.raises(ValueError, match=r"bad.dcm is not a DICOM file"):
        load_case([bad])


def test_nifti_mask_of_a_tiff_case_lies_on_its_grid(tiff_case, tmp_path):
    result = analyze_case(over(150), tiff_case)
    paths = write_case_outputs(tiff_case, result, tmp_path)
    img = nib.load(paths["nifti"])
    np.testing.assert_array_equal(np.transpose(np.asanyarray(img.dataobj), (2, 1, 0)), result.masks)
    assert img.header.get_zooms() == pytest.approx((0.8, 0.9, 3.0)) and "seg" not in paths
    assert summarize(result)["measurements"]["side"] is None  # a TIFF does not say which way is left


def test_side_of_a_nifti_case(tmp_path):
    """NIfTI in RAS: a blob at high x lies on the patient's right, at low x on the left."""
    vol = np.zeros((64, 64, 4), np.float32)
    vol[8:56, 8:56] = 100          # the 'brain'
    vol[44:52, 28:36, 1:3] = 250   # high x: the patient's right
    nib.save(nib.Nifti1Image(vol, np.diag([1.0, 1.0, 2.0, 1.0])), tmp_path / "right.nii.gz")
    nib.save(nib.Nifti1Image(vol[::-1].copy(), np.diag([1.0, 1.0, 2.0, 1.0])), tmp_path / "left.nii.gz")
    for name in ("right", "left"):
        case = load_case(tmp_path / f"{name}.nii.gz")
        p = FakePredictor(lambda im: (np.asarray(im, np.float32)[..., 1] > 200).astype(np.float32), image_size=64)
        m = summarize(analyze_case(p, case))["measurements"]
        assert m["side"] == name and m["lesions"] == 1 and m["unit"] == "mm"
