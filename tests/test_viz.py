"""Figures: what a person reads off them is what the numbers say."""
from types import SimpleNamespace

import numpy as np
import pytest

from brainseg import viz


def case_result(name: str, n: int = 3, first: int = 11) -> SimpleNamespace:
    probs = np.linspace(0.1, 0.9, n).tolist()
    return SimpleNamespace(case=name, slice_numbers=list(range(first, first + n)), probabilities=probs,
                           detected=[p >= 0.4 for p in probs], detection_threshold=0.4, areas_px=[0, 10, 30][:n],
                           volume_voxels=40, volume_ml=None, dice=0.5, truth_areas_px=[0, 12, 25][:n],
                           largest_area_slice=first + n - 1)


@pytest.mark.parametrize("name", ["a$^$b", "A$x^2$B", "x$_$", "TCGA_CS_4941"])
def test_case_plot_shows_names_as_written(name, tmp_path):
    """Issue 10.6: a `$` in a name is not maths (it raised, or drew x^2 as a superscript)."""
    fig = viz.case_figure(case_result(name))
    fig.canvas.draw()
    assert fig.axes[0].get_title().startswith(name)
    assert viz.plot_probabilities(case_result(name), tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_case_plot_slices_are_whole_numbers():
    fig = viz.case_figure(case_result("c", n=3))
    fig.canvas.draw()
    ticks = fig.axes[1].get_xticks()
    assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), ticks


def test_fit_shrinks_large_slices_only():
    assert viz.fit(np.zeros((1500, 1200), np.uint8), 1024).shape == (1024, 819)
    assert viz.fit(np.zeros((256, 256), np.uint8), 1024).shape == (256, 256)
    mask = np.zeros((2048, 2048), np.uint8)
    mask[1000:1100, 1000:1100] = 1
    assert set(np.unique(viz.fit(mask, 1024, nearest=True))) == {0, 1}


def test_overlay_opacity_and_outlines():
    flair = np.full((64, 64), 100, np.uint8)
    pred = np.zeros((64, 64), np.uint8)
    pred[20:40, 20:40] = 1
    faint, solid = viz.overlay(flair, pred, alpha=0.0), viz.overlay(flair, pred, alpha=1.0)
    assert (solid[30, 30] == (255, 0, 0)).all() and faint[30, 30, 0] == faint[30, 30, 1]  # tint only with alpha
    assert (faint[20, 20] == (255, 40, 40)).all()  # the outline stays at any opacity
    truth = np.zeros_like(pred)
    truth[10:30, 10:30] = 1
    assert (viz.overlay(flair, pred, truth)[10, 10] == viz.TRUTH_RGB).all()
