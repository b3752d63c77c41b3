"""brainseg.images: every supported encoding of one slice decodes to the same model input; every bad file
gets an InvalidImageError that says what is wrong."""
import io
import zlib

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image, ImageOps

from brainseg.config import PreprocessConfig
from brainseg.data import read_image
from brainseg.images import (DEFAULT_LIMITS, InvalidImageError, Limits, apply_orientation, decode_image, decode_mask,
                             header_size, load_slice, sniff_format)
from brainseg.preprocess import preprocess
from conftest import SHARED_DATA, make_slice, needs_shared_data


@pytest.fixture(scope="module")
def rgb():
    """A 3-channel uint8 slice, not square, so a wrong transpose cannot go unnoticed."""
    img, _ = make_slice(np.random.default_rng(3), 96, tumor=True)
    return np.ascontiguousarray(img[:, 8:88])  # 96 x 80


def png(a, **kw) -> bytes:
    b = io.BytesIO()
    Image.fromarray(a).save(b, "PNG", **kw)
    return b.getvalue()


def tiff(a, **kw) -> bytes:
    b = io.BytesIO()
    tifffile.imwrite(b, a, **kw)
    return b.getvalue()


def pil_bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


def model_input(a: np.ndarray) -> np.ndarray:
    return preprocess(a, PreprocessConfig(image_size=64)).numpy()


# ---------------------------------------------------------------- what comes back

def test_rgb_png_and_tiff_decode_exactly(rgb):
    for data, fmt in [(png(rgb), "png"), (tiff(rgb), "tiff"), (tiff(rgb, compression="zlib"), "tiff")]:
        d = decode_image(data)
        assert d.format == fmt and d.array.dtype == np.uint8 and d.shape == [96, 80, 3]
        np.testing.assert_array_equal(d.array, rgb)
        assert not d.channels_replicated and not d.multipage


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_tiff_keeps_dtype_and_full_range(rgb, dtype):
    a = rgb.astype(np.float32) * 257 if dtype == np.uint16 else rgb.astype(np.float32) / 255 * 3000.5
    a = a.astype(dtype)
    d = decode_image(tiff(a))
    assert d.array.dtype == dtype
    np.testing.assert_array_equal(d.array, a)  # no clipping to 8 bits, no rescaling


@pytest.mark.parametrize("dtype", [np.float64, np.int16, np.float16])
def test_other_numeric_tiffs_become_float32_unchanged(rgb, dtype):
    a = (rgb.astype(np.float64) * 3 - 100).astype(dtype)
    d = decode_image(tiff(a))
    assert d.array.dtype == np.float32
    np.testing.assert_array_equal(d.array, a.astype(np.float32))


def test_16bit_rgb_png_keeps_16_bits(rgb):
    a = rgb.astype(np.uint16) * 257 + 3  # values Pillow alone would cut to 8 bits
    ok, buf = cv2.imencode(".png", a[..., ::-1])
    d = decode_image(buf.tobytes())
    assert d.array.dtype == np.uint16
    np.testing.assert_array_equal(d.array, a)


def test_8bit_16bit_and_float_copies_give_the_same_model_input(rgb):
    ref = model_input(decode_image(png(rgb)).array)
    ok, buf16 = cv2.imencode(".png", (rgb.astype(np.uint16) * 257)[..., ::-1])
    for data in [buf16.tobytes(), tiff(rgb.astype(np.uint16) * 257), tiff(rgb.astype(np.float32) / 255)]:
        np.testing.assert_allclose(model_input(decode_image(data).array), ref, atol=1e-4)


def test_rgba_palette_and_planar_tiff_decode_to_the_same_slice(rgb):
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)])
    for data in [png(rgba), tiff(rgba, photometric="rgb", extrasamples=[2]),
                 tiff(np.moveaxis(rgb, -1, 0), planarconfig="separate", photometric="rgb")]:
        np.testing.assert_array_equal(decode_image(data).array, rgb)
    pal = Image.fromarray(rgb).quantize(256)  # the slice as a palette image, and its exact RGB twin
    twin = np.asarray(pal.convert("RGB"))
    for data in [pil_bytes(pal, "PNG"), pil_bytes(pal, "TIFF"), png(twin)]:
        np.testing.assert_array_equal(decode_image(data).array, twin)


def test_grayscale_is_the_flair_channel_replicated(rgb):
    flair = rgb[..., 1]
    with_alpha = np.dstack([flair, np.full_like(flair, 255)])
    for data in [png(flair), tiff(flair), tiff(flair.astype(np.uint16) * 257), png(with_alpha)]:
        d = decode_image(data)
        assert d.channels_replicated and d.channels == 1 and d.shape == [96, 80, 1] and d.array.shape == (96, 80, 3)
        scale = 257 if d.array.dtype == np.uint16 else 1
        for c in range(3):
            np.testing.assert_array_equal(d.array[..., c] // scale, flair)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_and_tiff_orientation_give_the_same_slice(rgb, orientation):
    """A slice stored rotated with an orientation tag decodes to the upright slice, as PIL's exif_transpose shows it."""
    inverse = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}[orientation]
    stored = apply_orientation(rgb, inverse)  # the pixel data a camera or scanner would write
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = orientation
    as_png = pil_bytes(im, "PNG", exif=exif)
    np.testing.assert_array_equal(np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(as_png)))), rgb)
    for data in [as_png, tiff(stored, extratags=[(274, 3, 1, orientation, True)]),
                 pil_bytes(im, "TIFF", compression="tiff_lzw", exif=exif)]:
        np.testing.assert_array_equal(decode_image(data).array, rgb)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + kind + payload + zlib.crc32(kind + payload).to_bytes(4, "big")


def test_16bit_png_orientation_is_applied(rgb):
    """The 16-bit colour PNG path (OpenCV) reads no EXIF itself; the orientation still applies."""
    a = rgb.astype(np.uint16) * 257
    stored = apply_orientation(a, 8)  # orientation 6 undoes it
    exif = Image.Exif()
    exif[0x0112] = 6
    raw = cv2.imencode(".png", stored[..., ::-1])[1].tobytes()
    with_exif = raw[:33] + png_chunk(b"eXIf", exif.tobytes()) + raw[33:]  # right after IHDR
    d = decode_image(with_exif)
    assert d.array.dtype == np.uint16 and d.orientation == 6
    np.testing.assert_array_equal(d.array, a)


def test_jpeg_decodes_close_to_the_slice(rgb):
    d = decode_image(pil_bytes(Image.fromarray(rgb), "JPEG", quality=95))
    assert d.format == "jpeg" and d.array.shape == rgb.shape
    assert np.abs(d.array.astype(int) - rgb).mean() < 3


def test_multipage_tiff_uses_the_first_page(rgb):
    d = decode_image(tiff(np.stack([rgb, rgb[::-1], rgb[:, ::-1]])))
    assert d.multipage
    np.testing.assert_array_equal(d.array, rgb)


def test_lzw_and_jpeg_tiff_fall_back_to_libtiff(rgb):
    """tifffile needs imagecodecs for LZW/JPEG; OpenCV's libtiff reads them from the same bytes."""
    d = decode_image(pil_bytes(Image.fromarray(rgb), "TIFF", compression="tiff_lzw"))
    np.testing.assert_array_equal(d.array, rgb)
    d = decode_image(pil_bytes(Image.fromarray(rgb), "TIFF", compression="jpeg"))
    assert d.array.shape == rgb.shape and np.abs(d.array.astype(int) - rgb).mean() < 5


@needs_shared_data()
def test_kaggle_tiff_decodes_as_the_training_reader_does():
    path = sorted(SHARED_DATA.glob("*/*_12.tif"))[0]
    d = decode_image(path.read_bytes())
    np.testing.assert_array_equal(d.array, read_image(path))


def test_header_size_reads_png_and_jpeg_headers():
    for shape in [(50, 70), (4097, 33)]:
        for ext, fmt in [(".png", "png"), (".jpg", "jpeg")]:
            ok, buf = cv2.imencode(ext, np.zeros(shape, np.uint8))
            assert sniff_format(buf.tobytes()) == fmt
            assert header_size(buf.tobytes(), fmt) == (shape[1], shape[0])


# ---------------------------------------------------------------- what is refused

def bad_files():
    """(id, bytes, reason, words the message must hold), one per kind of bad upload."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    full_tiff, full_png = tiff(img), png(img)
    full_jpeg = pil_bytes(Image.fromarray(img), "JPEG")
    nan = rng.random((64, 64), dtype=np.float32)
    nan[5, 5] = np.nan
    return [
        ("empty", b"", "empty", "empty"),
        ("text", b"patient,age\n1,42\n" * 50, "not_image", "not a TIFF, PNG or JPEG"),
        ("pdf", b"%PDF-1.4\n" + bytes(rng.integers(0, 255, 500, dtype=np.uint8)), "not_image", "not a TIFF"),
        ("truncated_tiff", full_tiff[:len(full_tiff) // 2], "corrupt", "truncated"),
        ("truncated_tiff_header", full_tiff[:60], "corrupt", "TIFF"),
        ("truncated_deflate_tiff", tiff(img, compression="zlib")[:2000], "corrupt", "TIFF"),
        ("truncated_png", full_png[:len(full_png) // 2], "corrupt", "truncated"),
        ("truncated_jpeg", full_jpeg[:len(full_jpeg) // 2], "corrupt", "truncated"),
        ("garbage_after_png_magic", full_png[:8] + b"\x00" * 300, "corrupt", "PNG"),
        ("1x1", png(img[:1, :1]), "too_small", "1x1"),
        ("20x300", png(img[:1].repeat(20, 0).repeat(5, 1)[:, :300]), "too_small", "at least 32x32"),
        ("10000x10000_png", pil_bytes(Image.new("L", (10000, 10000)), "PNG"), "too_large", "10000x10000"),
        ("10000x10000_tiff", pil_bytes(Image.new("1", (10000, 10000)), "TIFF", compression="packbits"),
         "too_large", "10000x10000"),
        ("4097_wide_jpeg", pil_bytes(Image.new("RGB", (DEFAULT_LIMITS.max_side + 1, 40)), "JPEG"), "too_large", "4097x40"),
        ("bomb_png", pil_bytes(Image.new("1", (30000, 30000)), "PNG"), "too_large", "decompression bomb"),
        ("mask_1bit", pil_bytes(Image.new("1", (64, 64)), "PNG"), "unsupported", "1-bit"),
        ("nan_tiff", tiff(nan), "unsupported", "NaN"),
        ("five_channels", tiff(np.zeros((64, 64, 5), np.uint8), photometric="minisblack", planarconfig="contig"),
         "unsupported", "5"),
        ("volume_page", tiff(np.zeros((64, 64, 64), np.uint8), photometric="minisblack", planarconfig="separate"),
         "unsupported", "shape"),
    ]


@pytest.mark.parametrize("name,data,reason,words", bad_files(), ids=[b[0] for b in bad_files()])
def test_bad_file_gets_a_clear_error(name, data, reason, words):
    with pytest.raises(InvalidImageError) as e:
        decode_image(data)
    assert isinstance(e.value, ValueError)
    assert e.value.reason == reason, str(e.value)
    assert words.lower() in str(e.value).lower(), str(e.value)


def test_file_over_the_byte_limit_is_refused_before_decoding(rgb):
    with pytest.raises(InvalidImageError, match="limit is 0 MB") as e:
        decode_image(png(rgb), limits=Limits(max_bytes=1000))
    assert e.value.reason == "too_big_file"


def test_pillow_bomb_warning_is_an_error(rgb, monkeypatch):
    """Past our own limits, Pillow's DecompressionBombWarning is raised as an error, never just printed."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(InvalidImageError, match="too many pixels") as e:
        decode_image(png(rgb), limits=Limits(max_pixels=10**9))
    assert e.value.reason == "too_large"


# ---------------------------------------------------------------- one decoder: files, masks, limits in bytes

def test_load_slice_keeps_the_file_channel_order_where_cv2_reverses_it(tmp_path):
    """Issue 9.3: the README's snippet read slices with cv2.imread, which gives BGR."""
    a = np.zeros((40, 48, 3), np.uint8)
    a[..., 0], a[..., 1], a[..., 2] = 10, 120, 230  # pre-contrast, FLAIR, post-contrast
    tifffile.imwrite(tmp_path / "s.tif", a, photometric="rgb")
    got = load_slice(tmp_path / "s.tif")
    assert got.dtype == np.uint8 and tuple(got[0, 0]) == (10, 120, 230)
    assert tuple(cv2.imread(str(tmp_path / "s.tif"))[0, 0]) == (230, 120, 10)
    np.testing.assert_array_equal(load_slice(tmp_path / "s.tif"), read_image(tmp_path / "s.tif"))
    (tmp_path / "big.png").write_bytes(png(np.zeros((64, 64), np.uint8)))
    with pytest.raises(InvalidImageError, match=r"big\.png: the file is 0\.0 MB; the limit is 0 MB"):
        load_slice(tmp_path / "big.png", limits=Limits(max_bytes=10))


def test_masks_of_every_encoding_decode_to_0_1(tmp_path):
    m = np.zeros((40, 40), np.uint8)
    m[5:15, 8:20] = 1
    for data in [png(m * 255), tiff(m * 255), png(m), tiff(m.astype(np.uint16) * 65535), png(np.dstack([m * 255] * 3)),
                 pil_bytes(Image.fromarray(m * 255).convert("1"), "PNG")]:
        got = decode_mask(data)
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, m)
    with pytest.raises(InvalidImageError, match=r"^m_1_mask\.tif: The file is not a TIFF, PNG or JPEG"):
        decode_mask(b"nope", name="m_1_mask.tif")


def test_every_refusal_names_the_file():
    for data in [b"", b"text" * 100, png(np.zeros((4, 4), np.uint8))]:
        with pytest.raises(InvalidImageError, match=r"^c_7\.png: "):
            decode_image(data, name="c_7.png")


def test_finite_float64_beyond_float32_is_not_called_nan(rgb):
    """Issue 10.5: a finite 1e308 was refused as 'NaN or infinite (float32)' after the cast overflowed."""
    a = rgb.astype(np.float64)
    a[3, 3, 1] = 1e308
    with pytest.raises(InvalidImageError, match=r"values up to 1e\+308, beyond the float32 range") as e:
        decode_image(tiff(a))
    assert "NaN" not in str(e.value) and e.value.reason == "unsupported"


def test_float64_tiff_is_budgeted_in_bytes_before_decoding(rgb, monkeypatch):
    """Issue 10.4: memory counted as pixels x channels x bytes per sample, from the header."""
    data = tiff(rgb.astype(np.float64))  # 96 x 80 x 3 x 8 = 184,320 bytes once decoded
    assert decode_image(data, limits=Limits(max_decoded_bytes=184_320)).array.dtype == np.float32
    monkeypatch.setattr(tifffile.TiffPage, "asarray", lambda *a, **k: pytest.fail("decoded before the check"))
    with pytest.raises(InvalidImageError, match=r"would decode to 0 MiB .*over the limit of 0 MiB") as e:
        decode_image(data, limits=Limits(max_decoded_bytes=184_319))
    assert e.value.reason == "too_large"


def test_16bit_rgb_tiff_reads_the_same_for_one_slice_and_training(rgb, tmp_path):
    a = rgb.astype(np.uint16) * 257 + 3
    tifffile.imwrite(tmp_path / "c_1.tif", a, photometric="rgb")
    for got in (decode_image((tmp_path / "c_1.tif").read_bytes()).array, read_image(tmp_path / "c_1.tif")):
        assert got.dtype == np.uint16
        np.testing.assert_array_equal(got, a)
