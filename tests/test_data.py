"""kaggle_3m discovery, file decoding, the patient-level split, datasets and the balanced sampler."""
import json
import re

import cv2
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from brainseg.config import PreprocessConfig
from brainseg.data import (BalancedSampler, SliceDataset, build_augment, find_cases, institution_of, load_split,
                           make_split, read_case, read_image, read_mask, save_split, select_cases, slice_number)
from brainseg.preprocess import preprocess
from conftest import SYNTH_CASES, write_case


def write_slice(folder, name, i, image_rgb, mask):
    """One slice in the kaggle_3m layout; the image file holds ``image_rgb``'s channel order."""
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / f"{name}_{i}.tif"), cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / f"{name}_{i}_mask.tif"), mask)


# ---------------------------------------------------------------- discovery and decoding

def test_cases_sorted_by_name(tmp_path):
    rng = np.random.default_rng(0)
    names = ["TCGA_HT_0009_2000", "TCGA_CS_0002_2000", "TCGA_DU_0001_2000", "TCGA_CS_0001_2000"]
    for n in names:  # written out of order on purpose
        write_case(tmp_path, n, 2, rng, size=32, tumor_slices=[])
    assert [c.name for c in find_cases(tmp_path)] == sorted(names)


def test_slices_in_numeric_order(tmp_path):
    rng = np.random.default_rng(0)
    folder = write_case(tmp_path, "TCGA_CS_0001_2000", 12, rng, size=32)
    case = read_case(folder)
    assert [slice_number(p) for p in case.images] == list(range(1, 13))  # lexical order would be 1, 10, 11, 12, 2
    assert case.images[1].name.endswith("_2.tif") and case.images[9].name.endswith("_10.tif")
    assert [m.name for m in case.masks] == [p.stem + "_mask.tif" for p in case.images]
    assert len(case) == 12


def test_slice_number_rejects_other_names():
    assert slice_number("TCGA_CS_0001_2000_17.tif") == 17
    with pytest.raises(ValueError, match="notes.txt"):
        slice_number("notes.txt")


def test_institution_code():
    assert institution_of("TCGA_DU_7010_19860307") == "DU"
    assert institution_of("case_1") == "unknown"


def test_image_keeps_the_files_channel_order(tmp_path):
    img = np.zeros((16, 16, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 10, 120, 230  # pre-contrast, FLAIR, post-contrast
    write_slice(tmp_path / "c", "c", 1, img, np.zeros((16, 16), np.uint8))  # OpenCV's default: LZW
    lzw = tmp_path / "c" / "c_1.tif"
    plain = tmp_path / "plain.tif"  # uncompressed, so tifffile reads it without imagecodecs
    cv2.imwrite(str(plain), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_TIFF_COMPRESSION, 1])
    assert tuple(tifffile.imread(plain)[0, 0]) == (10, 120, 230)  # what non-OpenCV readers see
    for path in (lzw, plain):
        on_disk = np.asarray(Image.open(path))
        assert tuple(on_disk[0, 0]) == (10, 120, 230)
        got = read_image(path)
        assert got.dtype == np.uint8 and got.shape == (16, 16, 3)
        np.testing.assert_array_equal(got, on_disk)


def test_mask_binarised_to_0_1(tmp_path):
    mask = np.zeros((16, 16), np.uint8)
    mask[4:8, 5:9] = 255
    write_slice(tmp_path / "c", "c", 1, np.full((16, 16, 3), 50, np.uint8), mask)
    m = read_mask(tmp_path / "c" / "c_1_mask.tif")
    assert m.dtype == np.uint8 and set(np.unique(m)) == {0, 1}
    np.testing.assert_array_equal(m, mask // 255)


def test_missing_mask_names_the_path(tmp_path):
    folder = write_case(tmp_path, "TCGA_CS_0001_2000", 3, np.random.default_rng(0), size=16)
    missing = folder / "TCGA_CS_0001_2000_2_mask.tif"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        find_cases(tmp_path)
    assert len(read_case(folder, require_masks=False)) == 3  # images alone are fine when asked


@pytest.mark.parametrize("reader", [read_image, read_mask])
def test_unreadable_file_names_the_path(tmp_path, reader):
    bad = tmp_path / "c_1.tif"
    bad.write_bytes(b"this is not a TIFF")
    with pytest.raises(OSError, match=re.escape(str(bad))):
        reader(bad)


def test_unreadable_slice_fails_dataset_with_path(tmp_path):
    folder = write_case(tmp_path, "TCGA_CS_0001_2000", 3, np.random.default_rng(0), size=16)
    bad = folder / "TCGA_CS_0001_2000_3.tif"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(OSError, match=re.escape(str(bad))):
        SliceDataset(find_cases(tmp_path), PreprocessConfig(image_size=16))


def test_empty_and_missing_folders_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path))):
        find_cases(tmp_path)  # exists, holds nothing
    (tmp_path / "case_without_slices").mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path))):
        find_cases(tmp_path)
    missing = tmp_path / "no_such_folder"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        find_cases(missing)


# ---------------------------------------------------------------- patient-level split

NAMES = [f"TCGA_{inst}_{i:04d}_2000" for inst in ("CS", "DU", "EZ", "FG", "HT") for i in range(10)]


def test_split_deterministic_from_seed():
    a, b = make_split(NAMES, 0.2, seed=7), make_split(list(reversed(NAMES)), 0.2, seed=7)
    assert a == b
    assert len({tuple(make_split(NAMES, 0.2, seed=s)["val"]) for s in range(10)}) > 1  # the seed matters


def test_split_stratified_by_institution_and_complete():
    split = make_split(NAMES, 0.2, seed=1)
    assert sorted(split["train"] + split["val"]) == sorted(NAMES)
    assert not set(split["train"]) & set(split["val"])
    per_inst = {inst: sum(institution_of(n) == inst for n in split["val"]) for inst in ("CS", "DU", "EZ", "FG", "HT")}
    assert per_inst == {"CS": 2, "DU": 2, "EZ": 2, "FG": 2, "HT": 2}
    assert split["seed"] == 1 and split["stratified_by"] == "institution"


def test_split_small_institution_gets_one_val_case():
    split = make_split(SYNTH_CASES, 0.2, seed=42)  # 2 cases per institution: round(0.4) = 0, bumped to 1
    assert sorted(institution_of(n) for n in split["val"]) == ["CS", "DU", "HT"]


def test_no_validation_slice_reaches_training(synth_root):
    cases = find_cases(synth_root)
    split = make_split(cases, 0.2, seed=3)
    cfg = PreprocessConfig(image_size=64)
    train = SliceDataset(select_cases(cases, split["train"]), cfg, augment=True)
    val = SliceDataset(select_cases(cases, split["val"]), cfg)
    train_cases, val_cases = {c for c, _ in train.index}, {c for c, _ in val.index}
    assert train_cases == set(split["train"]) and val_cases == set(split["val"])
    assert not train_cases & val_cases
    assert len(train) + len(val) == sum(len(c) for c in cases)


def test_split_file_round_trip(tmp_path):
    split = make_split(NAMES, 0.2, seed=5)
    path = tmp_path / "sub" / "split.json"
    save_split(split, path)
    assert load_split(path) == split
    assert json.loads(path.read_text())["val"] == split["val"]


def test_load_split_rejects_overlap(tmp_path):
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": ["a", "b"], "val": ["b", "c"]}))
    with pytest.raises(ValueError, match="'b'"):
        load_split(path)


def test_select_cases_missing_name(synth_root):
    cases = find_cases(synth_root)
    assert [c.name for c in select_cases(cases, [SYNTH_CASES[3], SYNTH_CASES[0]])] == [SYNTH_CASES[3], SYNTH_CASES[0]]
    with pytest.raises(KeyError, match="TCGA_XX_9999"):
        select_cases(cases, ["TCGA_XX_9999"])


# ---------------------------------------------------------------- sampler

LABELS = np.array([1] * 20 + [0] * 80)


def test_sampler_keeps_all_tumour_slices_and_the_empty_fraction():
    s = BalancedSampler(LABELS, empty_fraction=0.3, seed=0)
    idx = list(s)
    assert len(idx) == len(s) == 20 + round(20 * 0.3 / 0.7)
    assert len(set(idx)) == len(idx)
    assert set(np.flatnonzero(LABELS == 1)) <= set(idx)
    assert abs(np.mean(LABELS[idx] == 0) - 0.3) < 0.02


def test_sampler_none_keeps_everything():
    assert sorted(BalancedSampler(LABELS, empty_fraction=None)) == list(range(100))


def test_sampler_ranks_are_disjoint():
    parts = [list(BalancedSampler(LABELS, 0.5, seed=1, rank=r, world_size=2)) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == 20
    assert not set(parts[0]) & set(parts[1])
    assert set(np.flatnonzero(LABELS == 1)) <= set(parts[0]) | set(parts[1])


def test_sampler_set_epoch_changes_the_draw():
    s = BalancedSampler(LABELS, 0.3, seed=0)
    first = list(s)
    assert list(s) == first  # same epoch, same order
    s.set_epoch(1)
    assert list(s) != first


# ---------------------------------------------------------------- datasets

def test_segmenter_items_normalised_with_0_1_masks(synth_root):
    cases = find_cases(synth_root)[:1]
    cfg = PreprocessConfig(image_size=64)
    ds = SliceDataset(cases, cfg, task="segmenter")
    assert len(ds) == 12
    tumour = int(np.flatnonzero(ds.labels)[0])
    x, m = ds[tumour]
    assert x.dtype == torch.float32 and x.shape == (3, 64, 64)
    assert m.dtype == torch.float32 and m.shape == (1, 64, 64)
    assert set(torch.unique(m).tolist()) == {0.0, 1.0}  # never 255
    raw = read_image(cases[0].images[tumour])
    brain = torch.from_numpy(raw.max(-1) > raw.min())
    assert x.abs().max() <= cfg.clip  # z-scored, not 0..255
    for c in range(3):  # each channel standardised over the slice's brain pixels
        assert abs(float(x[c][brain].mean())) < 0.05 and abs(float(x[c][brain].std()) - 1) < 0.05
    # training sees exactly what inference sees for the same slice
    torch.testing.assert_close(x, preprocess(read_image(cases[0].images[tumour]), cfg))


def test_segmenter_masks_resized_stay_binary(synth_root):
    ds = SliceDataset(find_cases(synth_root)[:1], PreprocessConfig(image_size=32), task="segmenter")
    x, m = ds[int(np.flatnonzero(ds.labels)[0])]
    assert x.shape == (3, 32, 32) and m.shape == (1, 32, 32)
    assert set(torch.unique(m).tolist()) == {0.0, 1.0}


def test_classifier_label_is_mask_not_empty(synth_root):
    cases = find_cases(synth_root)[:2]
    ds = SliceDataset(cases, PreprocessConfig(image_size=64), task="classifier")
    truth = [int(read_mask(m).any()) for c in cases for m in c.masks]
    assert ds.labels.tolist() == truth and 0 < sum(truth) < len(truth)
    for i in (int(np.argmax(truth)), int(np.argmin(truth))):
        x, y = ds[i]
        assert x.shape == (3, 64, 64) and y.tolist() == [float(truth[i])]


def test_dataset_rejects_unknown_task(synth_root):
    with pytest.raises(ValueError, match="detector"):
        SliceDataset([], PreprocessConfig(), task="detector")


@pytest.fixture()
def off_centre_case(tmp_path):
    """One slice whose bright FLAIR 'tumour' sits in the left third, so a lone flip would miss it."""
    img = np.zeros((64, 64, 3), np.uint8)
    cv2.circle(img, (32, 32), 28, (60, 90, 70), -1)
    mask = np.zeros((64, 64), np.uint8)
    cv2.ellipse(mask, (16, 24), (6, 4), 0, 0, 360, 255, -1)
    img[mask > 0] = (110, 230, 110)
    write_slice(tmp_path / "TCGA_CS_0001_2000", "TCGA_CS_0001_2000", 1, img, mask)
    return find_cases(tmp_path)


def _tumour_contrast(x: torch.Tensor, m: torch.Tensor) -> float:
    inside = m[0] > 0.5
    return float(x[1][inside].mean() - x[1][~inside].mean())


def test_flip_moves_image_and_mask_together(off_centre_case):
    ds = SliceDataset(off_centre_case, PreprocessConfig(image_size=64))
    x0, m0 = ds[0]
    ds.transform = v2.RandomHorizontalFlip(p=1.0)
    x1, m1 = ds[0]
    torch.testing.assert_close(m1, m0.flip(-1))
    torch.testing.assert_close(x1, x0.flip(-1))


def test_augmentation_keeps_image_and_mask_aligned(off_centre_case):
    ds = SliceDataset(off_centre_case, PreprocessConfig(image_size=64), augment=True)
    _, m_plain = SliceDataset(off_centre_case, PreprocessConfig(image_size=64))[0]
    torch.manual_seed(0)
    changed = 0
    for _ in range(12):
        x, m = ds[0]
        assert set(torch.unique(m).tolist()) <= {0.0, 1.0} and m.sum() > 20
        assert _tumour_contrast(x, m) > 3.0  # the bright region is still where the mask says
        changed += not torch.equal(m, m_plain)
    assert changed >= 6  # the augmentation did move things


def test_build_augment_is_joint():
    img = torch.zeros(3, 32, 32, dtype=torch.uint8)
    img[:, 4:10, 2:8] = 200
    mask = torch.zeros(1, 32, 32, dtype=torch.uint8)
    mask[:, 4:10, 2:8] = 1
    torch.manual_seed(1)
    aug = build_augment()
    for _ in range(10):
        i, m = aug(tv_tensors.Image(img), tv_tensors.Mask(mask))
        bright = i[1] > 60
        inter = (bright & (m[0] > 0)).sum().item()
        assert inter >= 0.7 * min(bright.sum().item(), (m[0] > 0).sum().item())


def test_augmentation_runs_on_the_slice_resized_to_the_training_size(synth_root):
    """Augmenting the 64-px synthetic slices at 32 (a quarter of the pixels) is what makes a loader cheap."""
    ds = SliceDataset(find_cases(synth_root)[:1], PreprocessConfig(image_size=32), augment=True)
    seen = []

    def record(img, mask):
        seen.append((tuple(img.shape), tuple(mask.shape), img.dtype, float(img.max())))
        return img, mask

    ds.transform = record
    x, m = ds[int(np.flatnonzero(ds.labels)[0])]
    assert seen == [((3, 32, 32), (1, 32, 32), torch.float32, pytest.approx(seen[0][3]))]
    assert 0 < seen[0][3] <= 1  # the float range torchvision's colour transforms expect
    assert x.shape == (3, 32, 32) and m.shape == (1, 32, 32)


def test_elastic_field_scaled_with_the_resize():
    """torchvision counts the elastic field in pixels: at half the size it must be half as strong."""
    elastic = [t.transforms[0] for t in build_augment(0.5).transforms if isinstance(t, v2.RandomApply)
               and isinstance(t.transforms[0], v2.ElasticTransform)][0]
    full = [t.transforms[0] for t in build_augment().transforms if isinstance(t, v2.RandomApply)
            and isinstance(t.transforms[0], v2.ElasticTransform)][0]
    assert elastic.alpha == [full.alpha[0] * 0.5] * 2 and elastic.sigma == [full.sigma[0] * 0.5] * 2
    ds = SliceDataset([], PreprocessConfig(image_size=128), augment=True)  # 256-px slices by default
    ds_elastic = [t.transforms[0] for t in ds.transform.transforms if isinstance(t, v2.RandomApply)
                  and isinstance(t.transforms[0], v2.ElasticTransform)][0]
    assert ds_elastic.alpha == elastic.alpha


def test_dark_interior_darkens_the_core_of_a_large_tumour_only_and_keeps_the_mask():
    """The augmentation for tumours whose dark interior the annotators include: core darker, rim, brain and mask as they were."""
    from brainseg.data import RandomDarkInterior

    img = torch.full((3, 64, 64), 100.0)
    img[:, 12:52, 12:52] = 200.0
    mask = torch.zeros(1, 64, 64, dtype=torch.uint8)
    mask[:, 12:52, 12:52] = 1
    torch.manual_seed(0)
    t = RandomDarkInterior(min_px=400)
    for _ in range(5):
        out, m = t(tv_tensors.Image(img), tv_tensors.Mask(mask))
        assert torch.equal(m, mask)
        assert (out[:, 32, 32] < 200 * 0.81).all()  # the core, in every channel, by at least the weakest factor
        assert torch.equal(out[:, 12, 12:52], img[:, 12, 12:52])  # the tumour's edge untouched
        assert torch.equal(out[:, :10], img[:, :10])  # outside the tumour untouched
    small = torch.zeros_like(mask)
    small[:, 30:36, 30:36] = 1  # 36 px, under min_px: left alone
    out, _ = t(tv_tensors.Image(img), tv_tensors.Mask(small))
    assert torch.equal(out, img)


def test_build_augment_adds_dark_interiors_only_when_asked():
    from brainseg.data import RandomDarkInterior

    def has_dark(aug):
        return any(isinstance(t, RandomDarkInterior) for r in aug.transforms for t in getattr(r, "transforms", [r]))
    assert not has_dark(build_augment(0.5)) and has_dark(build_augment(0.5, dark_interior=0.3))


def test_slice_dataset_goes_through_the_one_preprocessing_function(synth_root, monkeypatch):
    """Training reads slices as inference does: SliceDataset calls brainseg.preprocess.preprocess (with the
    augmentation slotted in after the resize), and without augmentation its tensor is preprocess()'s."""
    from brainseg import data
    from brainseg.config import SegmenterConfig
    from brainseg.preprocess import preprocess

    cfg = SegmenterConfig(image_size=32)
    ds = data.SliceDataset(find_cases(synth_root)[:1], cfg)
    calls = []
    monkeypatch.setattr(data, "preprocess", lambda image, c, augment=None: calls.append(augment) or preprocess(image, c))
    x, mask = ds[5]
    assert calls == [None] and torch.equal(x, preprocess(ds.images[5], cfg)) and mask.shape == (1, 32, 32)
    augmented = data.SliceDataset(find_cases(synth_root)[:1], cfg, augment=True)
    calls.clear()
    augmented[5]
    assert len(calls) == 1 and callable(calls[0])
