"""Comparison grid: models side by side, frames over time, labels, transposed layout."""
import pytest
import torch

from svd_core.eval.grid import comparison_grid, sample_frame_indices


def test_frame_indices_cover_first_and_last():
    assert sample_frame_indices(14, 4) == [0, 4, 9, 13]
    assert sample_frame_indices(3, 8) == [0, 1, 2]


def test_grid_layout_places_each_model_in_its_column():
    a = torch.zeros(6, 20, 30, 3)
    b = torch.ones(8, 10, 15, 3)  # different size: resized to the common cell height 20 -> 20x30
    for t in range(6):
        a[t] = t / 10
    g = comparison_grid([a, b], ["svd", "svd_xt"], num_frames=3, gap=4, label_height=18)
    assert g.shape == (1, 18 + 3 * 20 + 2 * 4, 2 * 30 + 4, 3)
    # column 1, row i = model a at frames 0, 2(.5->2), 5
    for i, t in enumerate(sample_frame_indices(6, 3)):
        y0 = 18 + i * 24
        assert torch.allclose(g[0, y0 + 5: y0 + 15, 5:25], torch.full((10, 20, 3), t / 10), atol=1e-5)
        assert torch.allclose(g[0, y0 + 5: y0 + 15, 39:59], torch.ones(10, 20, 3), atol=1e-5)
    assert g[0, :18, :30].max() > 0.5  # label text drawn
    t = comparison_grid([a, b], num_frames=2, models_as_columns=False, gap=2)
    assert t.shape == (1, 2 * 20 + 2, 96 + 2 * (30 + 2), 3)


def test_grid_errors():
    with pytest.raises(ValueError, match="at least one video"):
        comparison_grid([])
    with pytest.raises(ValueError, match="video 1"):
        comparison_grid([torch.zeros(4, 4, 3)])
