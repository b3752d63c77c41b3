"""brainseg.measure on shapes whose answer is known: diameters of ellipses and rotated rectangles within one
pixel, volume = voxels x spacing, lesions counted in 3-D, the side from the orientation; and the file names
people export (IM-0001-0007.png, zero-padded, JPEG) ordered by their number."""
import math

import cv2
import numpy as np
import pytest

from brainseg.case_io import load_case, parse_slice_name
from brainseg.measure import bidimensional, measure_case, side_of
from conftest import make_slice


def shape(kind: str, a: float, b: float, angle: float, pixel=(1.0, 1.0), size: int = 160) -> np.ndarray:
    """A pixel is inside when its centre is: an ellipse of semi-axes a, b mm or a rectangle of half-sides a, b mm,
    turned by ``angle`` degrees, on a grid of ``pixel`` (row, column) mm."""
    r, c = np.mgrid[:size, :size].astype(float)
    y, x = (r - size / 2) * pixel[0], (c - size / 2) * pixel[1]
    t = math.radians(angle)
    u, v = x * math.cos(t) + y * math.sin(t), -x * math.sin(t) + y * math.cos(t)
    return (u / a) ** 2 + (v / b) ** 2 <= 1 if kind == "ellipse" else (abs(u) <= a) & (abs(v) <= b)


ANGLES = range(0, 180, 11)
PIXELS = [(1.0, 1.0), (0.94, 0.94), (0.5, 0.8)]


@pytest.mark.parametrize("pixel", PIXELS)
def test_ellipse_diameters_within_one_pixel(pixel):
    one = max(pixel) + 1e-9
    for a, b in ((30, 12), (8, 5)):
        for angle in ANGLES:
            d = bidimensional(shape("ellipse", a, b, angle, pixel), pixel)
            assert abs(d.longest - 2 * a) <= one and abs(d.perpendicular - 2 * b) <= one, (a, b, angle, d)


@pytest.mark.parametrize("pixel", PIXELS)
def test_rotated_rectangle_diameters_within_one_pixel(pixel):
    """A rectangle's longest diameter is its diagonal D; the longest chord perpendicular to it is W * D / L."""
    one = max(pixel) + 1e-9
    for k_l, k_w in ((30, 10), (12, 4), (20, 9)):  # half-sides of k + 1/2 pixels: whole pixels when axis-aligned
        half_l, half_w = (k_l + 0.5) * max(pixel), (k_w + 0.5) * max(pixel)
        L, W = 2 * half_l, 2 * half_w
        D = math.hypot(L, W)
        for angle in ANGLES:
            d = bidimensional(shape("rect", half_l, half_w, angle, pixel), pixel)
            assert abs(d.longest - D) <= one and abs(d.perpendicular - W * D / L) <= one, (L, W, angle, d)


def test_end_points_span_the_diameters():
    m = np.zeros((40, 60), np.uint8)
    m[10:20, 5:45] = 1  # 40 x 10 px
    d = bidimensional(m)
    (r0, c0), (r1, c1) = d.longest_ends
    assert math.hypot(r1 - r0, c1 - c0) == pytest.approx(d.longest)
    (r0, c0), (r1, c1) = d.perpendicular_ends
    assert math.hypot(r1 - r0, c1 - c0) == pytest.approx(d.perpendicular)
    assert bidimensional(np.zeros((8, 8))) is None


def test_volume_lesions_and_areas():
    masks = np.zeros((6, 50, 50), np.uint8)
    masks[1:4, 10:20, 10:20] = 1   # 300 voxels
    masks[4, 40:45, 40:44] = 1     # 20 voxels, apart in 3-D
    m = measure_case(masks, (0.5, 0.8, 2.5))
    assert m.volume_voxels == 320 and m.volume_ml == pytest.approx(320 * 0.5 * 0.8 * 2.5 / 1000)
    assert m.lesions == 2 and m.lesion_voxels == [300, 20] and m.measured_slice_index in (1, 2, 3)
    assert m.area_mm2 == pytest.approx([0, 40, 40, 40, 8, 0])
    assert m.unit == "mm" and m.side is None  # no orientation, no side
    px = measure_case(masks)
    assert (px.volume_ml, px.area_mm2, px.unit) == (None, None, "px") and px.longest_diameter > 0
    empty = measure_case(np.zeros((2, 8, 8)), (1, 1, 1))
    assert (empty.lesions, empty.longest_diameter, empty.volume_ml) == (0, None, 0.0)


def test_side_from_the_left_direction():
    brain = np.zeros((64, 64), bool)
    brain[8:56, 8:56] = True
    lesion = np.zeros_like(brain)
    lesion[20:30, 40:50] = True  # right half of the image
    assert side_of(lesion, brain, (0.0, 1.0), (1, 1)) == "left"     # DICOM axial: columns run to the patient's left
    assert side_of(lesion, brain, (0.0, -1.0), (1, 1)) == "right"   # NIfTI shown in RAS
    centre = np.zeros_like(brain)
    centre[30:34, 31:33] = True
    assert side_of(centre, brain, (0.0, 1.0), (1, 1)) == "midline"


def test_exported_names_are_ordered_by_their_number(tmp_path):
    assert parse_slice_name("IM-0001-0007.png") == ("IM-0001", 7, False)
    assert parse_slice_name("slice007.jpg") == ("slice", 7, False)
    assert parse_slice_name("TCGA_CS_4941_19960909_12_mask.tif") == ("TCGA_CS_4941_19960909", 12, True)
    rng = np.random.default_rng(1)
    imgs = [make_slice(rng, 48)[0] for _ in range(11)]
    paths = []
    for n in (10, 2, 11, 1, 5, 3, 4, 9, 6, 8, 7):  # written out of order; 10 and 11 after 9, not after 1
        p = tmp_path / f"IM-0001-{n:04d}.png"
        cv2.imwrite(str(p), cv2.cvtColor(imgs[n - 1], cv2.COLOR_RGB2BGR))
        paths.append(p)
    case = load_case(paths)
    assert case.slice_numbers == list(range(1, 12)) and case.name == "IM-0001"
    np.testing.assert_array_equal(case.slices[9], imgs[9])
    assert case.meta["ordering"] == ("ordered by the number in the file names: IM-0001-0001.png = slice 1 ... "
                                     "IM-0001-0011.png = slice 11")


def test_jpeg_slices_make_a_case(tmp_path):
    rng = np.random.default_rng(2)
    for n in range(1, 4):
        cv2.imwrite(str(tmp_path / f"scan_{n:03d}.jpg"), make_slice(rng, 48)[0], [cv2.IMWRITE_JPEG_QUALITY, 95])
    case = load_case(sorted(tmp_path.glob("*.jpg"), reverse=True))
    assert case.slice_numbers == [1, 2, 3] and case.slices[0].shape == (48, 48, 3)
