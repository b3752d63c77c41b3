"""2.5-D input (``SegmenterConfig.context_slices``): the FLAIR of neighbouring slices as extra channels,
from the dataset through the model to the Predictor, and single slices that keep working."""
import json

import numpy as np
import pytest
import torch

from brainseg.config import FLAIR_INDEX, SegmenterConfig
from brainseg.data import SliceDataset, find_cases
from brainseg.inference import Predictor
from brainseg.models import ResUNet
from brainseg.preprocess import add_context, neighbour_indices, normalize_slice, preprocess, resize
from conftest import TINY_ENCODER


def test_neighbours_are_clamped_at_the_ends_of_the_stack():
    assert neighbour_indices(4, 1).tolist() == [[0, 1], [0, 2], [1, 3], [2, 3]]
    assert neighbour_indices(3, 2).tolist() == [[0, 0, 1, 2], [0, 0, 2, 2], [0, 1, 2, 2]]
    assert neighbour_indices(1, 1).tolist() == [[0, 0]]


def test_add_context_appends_the_neighbours_flair_and_a_lone_slice_stands_in_for_them():
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 2, 2)
    assert add_context(x, 0) is x
    alone = add_context(x, 1)
    assert alone.shape == (2, 5, 2, 2)
    assert torch.equal(alone[:, 3], x[:, FLAIR_INDEX]) and torch.equal(alone[:, 4], x[:, FLAIR_INDEX])
    nb = torch.stack([x[[1, 0]], x[[0, 1]]])  # slice 0: below 1, above 0; slice 1: below 0, above 1
    out = add_context(x, 1, nb)
    assert torch.equal(out[:, :3], x)
    assert torch.equal(out[0, 3], x[1, FLAIR_INDEX]) and torch.equal(out[1, 3], x[0, FLAIR_INDEX])


def _flair(ds, j, size):
    return normalize_slice(resize(torch.from_numpy(ds.images[j]).permute(2, 0, 1).float(), size))[FLAIR_INDEX]


def test_dataset_gives_the_adjacent_slices_of_the_same_case(synth_root):
    cases = find_cases(synth_root)[:2]
    ds = SliceDataset(cases, SegmenterConfig(image_size=32, context_slices=1))
    n = len(cases[0])
    for i, below, above in [(0, 0, 1), (5, 4, 6), (n - 1, n - 2, n - 1), (n, n, n + 1)]:  # n: the next case's first
        x, m = ds[i]
        assert x.shape == (5, 32, 32) and m.shape == (1, 32, 32)
        assert torch.allclose(x[3], _flair(ds, below, 32)) and torch.allclose(x[4], _flair(ds, above, 32))
        assert torch.allclose(x[:3], normalize_slice(resize(torch.from_numpy(ds.images[i]).permute(2, 0, 1).float(), 32)))


def test_context_dropout_gives_the_slice_itself_as_its_neighbours_and_one_draw_moves_the_stack(synth_root):
    cases = find_cases(synth_root)[:1]
    cfg = SegmenterConfig(image_size=32, context_slices=1)
    ds = SliceDataset(cases, cfg, augment=True, context_dropout=1.0)
    torch.manual_seed(0)
    for i in (2, 6):
        x, _ = ds[i]  # augmented, so compare the channels with each other: every neighbour is the slice
        assert torch.allclose(x[3], x[FLAIR_INDEX]) and torch.allclose(x[4], x[FLAIR_INDEX])
    kept = SliceDataset(cases, cfg, augment=True, context_dropout=0.0)
    x, _ = kept[6]
    assert not torch.allclose(x[3], x[FLAIR_INDEX])


def test_resunet_with_context_takes_the_extra_channels_and_keeps_them_through_the_hub_format(tmp_path):
    model = ResUNet(SegmenterConfig(encoder=TINY_ENCODER, image_size=32, context_slices=1))
    assert model(torch.randn(2, 5, 32, 32)).shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match=r"expected \(N, 5, H, W\)"):
        model(torch.randn(2, 3, 32, 32))
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["context_slices"] == 1
    assert ResUNet.from_pretrained(tmp_path).config.model_in_chans == 5


@pytest.fixture(scope="module")
def context_predictor():
    torch.manual_seed(0)
    model = ResUNet(SegmenterConfig(encoder=TINY_ENCODER, image_size=32, context_slices=1))
    return Predictor(model, None, precision="fp32")


def test_predict_case_reads_each_slices_neighbours_across_batches(context_predictor):
    rng = np.random.default_rng(0)
    case = [rng.integers(0, 255, (48, 48, 3), dtype=np.uint8) for _ in range(5)]
    cfg = context_predictor.seg_cfg
    x = torch.stack([preprocess(im, cfg) for im in case])
    nb = x[torch.from_numpy(neighbour_indices(5, 1))]
    with torch.no_grad():
        expected = torch.sigmoid(context_predictor.segmenter(add_context(x, 1, nb)))[:, 0]
    for batch_size in (2, 16):  # slices 1 and 2 sit in different batches at 2
        got = context_predictor.predict_case(case, batch_size=batch_size, prob_maps=True)
        assert all(np.allclose(p.prob_map, e, atol=1e-5) for p, e in zip(got, expected.numpy()))
    alone = context_predictor.predict_batch(case)  # unrelated slices: each its own neighbours
    assert not np.allclose(alone[2].prob_map, expected[2].numpy(), atol=1e-5)


def test_a_single_slice_and_a_flair_only_slice_still_work(context_predictor):
    rng = np.random.default_rng(1)
    one = context_predictor.predict(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))
    assert one.mask.shape == (48, 48) and one.prob_map.shape == (32, 32)
    flair_only = context_predictor.predict_case([rng.integers(0, 255, (48, 48), dtype=np.uint8) for _ in range(3)])
    assert all(p.channels_replicated for p in flair_only)
