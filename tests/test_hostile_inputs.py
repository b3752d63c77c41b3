"""Hostile inputs, round three (issue 33), below the server: each refused fast with a message naming
the file and the problem. The server-side half (logs, names, private events, disk full) is in
tests/test_app_hostile.py."""
import io
import json
import shutil
import struct
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from brainseg.case_io import load_case
from brainseg.images import decode_image, decode_mask
from brainseg.limits import DEFAULT_LIMITS, InvalidImageError
from brainseg.webapp import parse_spacing
from conftest import make_slice

SLICE = cv2.imencode(".png", make_slice(np.random.default_rng(1), 64)[0])[1].tobytes()


def zip_of(path: Path, names, data: bytes = SLICE) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for n in names:
            zf.writestr(n, data)
    return path


def refused_fast(fn, *args, match: str, exc=ValueError):
    start = time.perf_counter()
    with pytest.raises(exc, match=match) as e:
        fn(*args)
    assert time.perf_counter() - start < 2, "a refusal must take under 2 s"
    return str(e.value)


# ---------------------------------------------------------------- 1. slice numbers

@pytest.mark.parametrize("last", ["10000000", "1000000000", str(2**64), "9" * 200])
def test_a_huge_slice_number_is_refused_without_enumerating_the_gap(tmp_path, last):
    z = zip_of(tmp_path / "c.zip", ["c_1.png", f"c_{last}.png"])
    msg = refused_fast(load_case, z, match="slice number")
    assert f"{DEFAULT_LIMITS.max_slice_number:,}" in msg and "c.zip" in msg and len(msg) < 400


def test_a_gap_is_counted_not_listed(tmp_path):
    names = ["c_1.png", "c_2.png", "c_5.png", "c_90000.png"]
    msg = refused_fast(load_case, zip_of(tmp_path / "gaps.zip", names), match="Missing slice number")
    assert "3-4, 6-89999 (89,996 in all)" in msg and msg.startswith("gaps.zip: ")


# ---------------------------------------------------------------- 6. a 2-D NIfTI

def test_a_2d_nifti_is_refused(tmp_path):
    nib = pytest.importorskip("nibabel")
    path = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((256, 256), np.float32), np.eye(4)), str(path))
    msg = refused_fast(load_case, path, match="2-D")
    assert "flat.nii.gz" in msg


# ---------------------------------------------------------------- 7. TIFF spacing

@pytest.mark.parametrize("spacing", [-3.0, 0.0, float("nan"), 1e9])
def test_a_tiff_spacing_that_is_not_positive_is_refused(tmp_path, spacing):
    path = tmp_path / "neg.tif"
    pages = np.zeros((2, 64, 64), np.uint8)
    pages[:, 16:48, 16:48] = 120
    tifffile.imwrite(path, pages, imagej=True, resolution=(1.0, 1.0), metadata={"spacing": spacing, "unit": "mm"})
    msg = refused_fast(load_case, path, match="spacing")
    assert "neg.tif" in msg and "positive" in msg


# ---------------------------------------------------------------- 11. the smaller ones

def _one_bit_tiff(compression) -> bytes:
    b = io.BytesIO()
    a = np.zeros((64, 64), bool)
    a[10:30, 10:30] = True
    tifffile.imwrite(b, a, compression=compression)
    return b.getvalue()


def test_one_bit_tiffs_are_refused_as_slices_and_read_as_masks_whatever_the_compression():
    from PIL import Image

    b = io.BytesIO()
    img = Image.new("1", (64, 64))
    img.paste(1, (10, 10, 30, 30))
    img.save(b, "TIFF", compression="group4")
    group4 = b.getvalue()
    for data in (_one_bit_tiff(None), group4):
        with pytest.raises(InvalidImageError, match="1-bit"):
            decode_image(data, name="bw.tif")
        assert decode_mask(data).sum() == 400


def test_a_tiff_whose_page_list_loops_is_corrupt_in_both_tabs(tmp_path):
    b = io.BytesIO()
    tifffile.imwrite(b, np.full((64, 64), 100, np.uint8))
    data = bytearray(b.getvalue())
    first = struct.unpack_from("<I", data, 4)[0]
    n = struct.unpack_from("<H", data, first)[0]
    struct.pack_into("<I", data, first + 2 + 12 * n, first)  # the next-IFD pointer points at itself
    path = tmp_path / "loop.tif"
    path.write_bytes(bytes(data))
    with pytest.raises(InvalidImageError, match="loops"):
        decode_image(bytes(data))
    assert "loop.tif" in refused_fast(load_case, path, match="loops")


def test_a_zip_flagged_utf8_with_bad_bytes_in_a_name(tmp_path):
    path = zip_of(tmp_path / "utf.zip", ["c_1.png"])
    data = bytearray(path.read_bytes())
    for sig in (b"PK\x03\x04", b"PK\x01\x02"):  # flag bit 11 (UTF-8) and a byte that is not UTF-8 in the name
        at = data.find(sig)
        flag_at = at + (6 if sig == b"PK\x03\x04" else 8)
        struct.pack_into("<H", data, flag_at, struct.unpack_from("<H", data, flag_at)[0] | 0x800)
        name_at = at + (30 if sig == b"PK\x03\x04" else 46)
        data[name_at] = 0xFF
    path.write_bytes(bytes(data))
    msg = refused_fast(load_case, path, match="UTF-8")
    assert "utf.zip" in msg and "codec" not in msg


@pytest.mark.parametrize("text", ["1_0, 1, 1", "1, 1, 0x3", "1e0_0, 1, 1", "١, 1, 1"])
def test_spacing_takes_plain_decimal_numbers_only(text):
    with pytest.raises(ValueError, match="Voxel spacing"):
        parse_spacing(text)
    assert parse_spacing("0.94, 0.94, 3") == (0.94, 0.94, 3.0) and parse_spacing("1e0 x 1 x 2.5") == (1, 1, 2.5)


# ---------------------------------------------------------------- 10. a broken model folder

def _copy_model(tiny_checkpoints, tmp_path, kind="segmenter") -> Path:
    d = tmp_path / kind
    shutil.copytree(tiny_checkpoints[kind], d)
    return d


BAD_CONFIGS = [
    ("image_size", "abc"), ("image_size", -128), ("image_size", 100000), ("image_size", 100), ("encoder", 123),
    ("encoder", "no_such_net"), ("clip", "big"), ("clip", -1), ("normalization", "bogus"),
    ("threshold", float("nan")), ("threshold", 2.0), ("case_rule", "bogus"), ("min_component_px", -5),
    ("in_chans", 2), ("decoder_channels", [1, "x"]), ("decoder_channels", [16]), ("tta_flip", "yes"),
    ("channel_order", "FLAIR"),
]


@pytest.mark.parametrize("field, value", BAD_CONFIGS)
def test_a_broken_config_is_refused_at_load_in_one_line(tiny_checkpoints, tmp_path, field, value):
    from brainseg.sources import load_model

    d = _copy_model(tiny_checkpoints, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg[field] = value
    (d / "config.json").write_text(json.dumps(cfg))
    msg = refused_fast(load_model, "segmenter", str(d), match=field)
    assert str(d / "config.json") in msg and "\n" not in msg


def test_a_broken_classifier_config_is_refused(tiny_checkpoints, tmp_path):
    from brainseg.sources import load_model

    d = _copy_model(tiny_checkpoints, tmp_path, "classifier")
    cfg = json.loads((d / "config.json").read_text())
    cfg["fusion_weights"] = [1.0, "x"]
    (d / "config.json").write_text(json.dumps(cfg))
    refused_fast(load_model, "classifier", str(d), match="fusion_weights")


def test_weights_are_checked_against_the_recorded_hash(tiny_checkpoints, tmp_path):
    from brainseg.integrity import record_weights_sha256
    from brainseg.sources import load_model

    d = _copy_model(tiny_checkpoints, tmp_path)
    (d / "metrics.json").write_text(json.dumps({"task": "segmenter"}))
    digest = record_weights_sha256(d)
    assert json.loads((d / "metrics.json").read_text())["weights_file_sha256"] == digest
    load_model("segmenter", str(d))  # as recorded: loads
    data = bytearray((d / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF  # a flipped byte in the tensor data: safetensors itself would load it
    (d / "model.safetensors").write_bytes(bytes(data))
    msg = refused_fast(load_model, "segmenter", str(d), match="sha256")
    assert "model.safetensors" in msg and digest[:12] in msg


def test_the_shipped_models_carry_their_weights_hash():
    from brainseg.integrity import file_sha256

    root = Path(__file__).resolve().parent.parent / "models"
    for kind in ("segmenter", "classifier"):
        if not (root / kind / "model.safetensors").is_file():
            pytest.skip("no shipped models")
        recorded = json.loads((root / kind / "metrics.json").read_text())["weights_file_sha256"]
        assert recorded == file_sha256(root / kind / "model.safetensors"), kind


def test_the_card_command_records_the_hash(tiny_checkpoints, tmp_path):
    from brainseg import hub
    from brainseg.integrity import file_sha256

    d = _copy_model(tiny_checkpoints, tmp_path)
    (d / "metrics.json").write_text(json.dumps({"task": "segmenter"}))
    assert hub.main(["card", str(d)]) == 0
    assert json.loads((d / "metrics.json").read_text())["weights_file_sha256"] == file_sha256(d / "model.safetensors")


def test_every_promise_names_a_test_that_exists():
    """docs/security.md ties each promise of the README's "Security and privacy" section to a test."""
    import re

    root = Path(__file__).resolve().parent.parent
    text = (root / "docs" / "security.md").read_text(encoding="utf-8")
    named = re.findall(r"`(?:tests/)?(test_\w+\.py)::(test_\w+)`", text)
    assert len(named) >= 25
    for module, test in named:
        assert f"def {test}(" in (root / "tests" / module).read_text(encoding="utf-8"), f"{module}::{test}"
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and not ln.startswith("| promise")
            and not ln.startswith("| input") and not ln.startswith("|---")]
    assert all("::test_" in ln for ln in rows), [ln for ln in rows if "::test_" not in ln]
