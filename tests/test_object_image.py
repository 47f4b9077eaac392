"""SV3D input preparation and output as the reference script's sv3d branch (Stability-AI generative-models,
scripts/sampling/simple_video_sample.py): crop to the alpha's bounding box, centre on a square canvas
(image_frame_ratio), resize, composite on white; the last view replaced by the input view."""
from __future__ import annotations

import pytest
import torch

from svd_core import multiview as mv
from svd_core import pipeline as P
from svd_core.object_image import canvas_side, object_bbox, object_input, prepare_object, split_alpha
from svd_core.testing import tiny_model

RED = torch.tensor([1.0, 0.0, 0.0])


def rgba_object(h=100, w=80, box=(10, 30, 20, 40)):
    """1 4 h w: an opaque red rectangle (x, y, w, h) = box, green under the transparent background."""
    x, y, bw, bh = box
    img = torch.zeros(1, 4, h, w)
    img[:, 1] = 1.0  # green, invisible (alpha 0): must not leak into the result
    img[:, :3, y:y + bh, x:x + bw] = RED[:, None, None]
    img[:, 3, y:y + bh, x:x + bw] = 1.0
    return img


def test_bbox_and_canvas_follow_cv2_bounding_rect_and_the_reference_side():
    """Reference: x, y, w, h = cv2.boundingRect(alpha > 0); side_len = int(max(w, h) / image_frame_ratio), or
    in_w (= image.shape[0], the height) when image_frame_ratio is None (its default)."""
    rgb, alpha = split_alpha(rgba_object())
    assert object_bbox(alpha[0, 0]) == (10, 30, 20, 40)
    assert canvas_side((10, 30, 20, 40), 100, None) == 100
    assert canvas_side((10, 30, 20, 40), 100, 0.5) == 80
    assert canvas_side((10, 30, 20, 40), 100, 0.3) == 133  # int(40 / 0.3)
    with pytest.raises(ValueError, match=r"image_frame_ratio=1.5 must lie in \(0, 1\]"):
        canvas_side((0, 0, 1, 1), 10, 1.5)
    with pytest.raises(ValueError, match="alpha / mask is empty"):
        object_bbox(torch.zeros(5, 5))


def test_object_centred_on_white_at_the_reference_place_without_resize():
    """image_frame_ratio None: canvas side = input height 100; the object goes to rows center - h // 2 ... and
    columns center - w // 2 ... (center = side // 2), everything else white (rgb * a + (1 - a), a = 0)."""
    rgb, alpha = split_alpha(rgba_object())
    out = prepare_object(rgb, alpha, width=100, height=100)[0]  # side 100 = output: no resize, exact values
    expected = torch.ones(3, 100, 100)
    expected[:, 30:70, 40:60] = RED[:, None, None]  # top 50 - 20, left 50 - 10
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_object_rescaled_to_the_frame_ratio_and_centred():
    """image_frame_ratio 0.5: the object's longer side (40 px) becomes half the output side (80 of 160 px), its
    centre the frame's centre; the background is white."""
    rgb, alpha = split_alpha(rgba_object())
    out = prepare_object(rgb, alpha, width=160, height=160, image_frame_ratio=0.5)[0]
    red = (out[1] < 0.5) & (out[2] < 0.5)  # h w: object pixels (green and blue low)
    rows, cols = red.any(1).nonzero().flatten(), red.any(0).nonzero().flatten()
    assert rows.numel() == pytest.approx(80, abs=2) and cols.numel() == pytest.approx(40, abs=2)
    ys, xs = red.nonzero(as_tuple=True)
    assert ys.float().mean().item() == pytest.approx(79.5, abs=1.0)
    assert xs.float().mean().item() == pytest.approx(79.5, abs=1.0)
    torch.testing.assert_close(out[:, 60:100, 70:90], RED[:, None, None].expand(3, 40, 20), atol=1e-3, rtol=0)
    assert torch.all(out[:, :30] == 1.0) and torch.all(out[:, :, :50] == 1.0)  # white, no green leaks


def test_soft_alpha_and_mask_composite_on_white_and_mask_wins():
    """rgb * a + (1 - a) per pixel (reference white background); a MASK (1 = object) replaces the alpha."""
    img = rgba_object()
    img[:, 3, 30:70, 10:30] = 0.5
    rgb, alpha = split_alpha(img)
    out = prepare_object(rgb, alpha, width=100, height=100)[0]
    torch.testing.assert_close(out[:, 50, 50], torch.tensor([1.0, 0.5, 0.5]))
    mask = torch.zeros(1, 100, 80)
    mask[:, 0:10, 0:10] = 1.0  # a different object: the top-left green square
    rgb, alpha = split_alpha(img, mask)
    assert object_bbox(alpha[0, 0]) == (0, 0, 10, 10)
    plain = object_input(img[:, :3])  # no alpha, no mask: unchanged (prepare_image fits it later)
    assert torch.equal(plain, img[:, :3])
    kept = object_input(img, recenter=False)  # alpha but no recentring: composited on white, framing kept
    assert kept.shape == (1, 3, 100, 80) and torch.all(kept[:, :, 0, 0] == 1.0)
    with pytest.raises(ValueError, match=r"mask has shape \(1, 50, 50\)"):
        split_alpha(img, torch.ones(1, 50, 50))


def test_orbit_replaces_the_last_view_by_the_prepared_input():
    """Reference: samples_x[-1:] = value_dict["cond_frames_without_noise"] (the last view sits at the input's
    camera, relative azimuth 0); the other views are the model's."""
    model = tiny_model("tiny_sv3d_p", seed=3)
    img = rgba_object(h=96, w=64, box=(20, 20, 16, 32))
    kw = dict(width=64, height=64, steps=1, elevations=10.0, image_frame_ratio=0.5)
    views = P.orbit(model, img, **kw)
    raw = P.orbit(model, img, replace_last=False, **kw)
    ready = prepare_object(*split_alpha(img), 64, 64, 0.5)
    assert views.shape == (1, 5, 3, 64, 64)
    torch.testing.assert_close(views[:, -1], ready, atol=1e-6, rtol=0)
    assert torch.equal(views[:, :-1], raw[:, :-1]) and (raw[:, -1] - ready).abs().max() > 1e-2
    # the multi-view entry point does the same on SV3D
    mviews, _ = mv.multiview(model, img, mv.static_orbit(5), width=64, height=64, steps=1, image_frame_ratio=0.5)
    torch.testing.assert_close(mviews[:, -1], ready, atol=1e-6, rtol=0)
