"""Case-level 3-D components: hand-checkable stacks."""
import numpy as np
import pytest

from brainseg.volume import filter_components_3d, label_3d


def stack():
    """A 2x3x3 block over slices 0-1 (18 voxels), a 2-voxel blob on slice 3, one voxel on slice 4 touching it diagonally."""
    m = np.zeros((5, 8, 8), np.uint8)
    m[0:2, 1:4, 1:4] = 1
    m[3, 6, 5:7] = 1
    m[4, 7, 7] = 1
    return m


def test_components_connect_across_slices_and_diagonally():
    labels, sizes = label_3d(stack())
    assert sorted(sizes[1:].tolist()) == [3, 18]  # the slice-3 blob and the slice-4 voxel are one component


def test_largest_keeps_one_component():
    out = filter_components_3d(stack(), "largest")
    assert out.dtype == np.uint8 and out.sum() == 18 and out[3:].sum() == 0


def test_min_voxels_drops_small_components_only():
    assert filter_components_3d(stack(), "min_voxels", 3).sum() == 21
    assert filter_components_3d(stack(), "min_voxels", 4).sum() == 18
    assert filter_components_3d(stack(), "none").sum() == 21


def test_empty_and_bad_input():
    assert filter_components_3d(np.zeros((2, 4, 4)), "largest").sum() == 0
    with pytest.raises(ValueError, match="Unknown case rule"):
        filter_components_3d(stack(), "biggest")
    with pytest.raises(ValueError, match="slices, H, W"):
        filter_components_3d(np.zeros((4, 4)), "largest")
