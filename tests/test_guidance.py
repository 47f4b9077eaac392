"""Per-frame classifier-free guidance (SVD App. D.4.1, Fig. 15; reference sgm Linear/TrianglePredictionGuider)."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from svd_core.guidance import Guidance, combine, defaults_for, frame_scales


def test_vanilla_is_constant_max():
    torch.testing.assert_close(frame_scales("vanilla", 5, 1.0, 3.0), torch.full((5,), 3.0))


def test_linear_equals_linspace():
    s = frame_scales("linear", 14, 1.0, 2.5)
    assert s.dtype == torch.float32 and s.shape == (14,)
    expected = [1.0 + i * 1.5 / 13 for i in range(14)]
    torch.testing.assert_close(s, torch.tensor(expected), rtol=0, atol=1e-6)
    torch.testing.assert_close(frame_scales("linear", 25, 1.5, 3.0), torch.linspace(1.5, 3.0, 25))
    assert frame_scales("linear", 1, 1.5, 3.0).tolist() == [1.5]  # linspace(a, b, 1) = [a]


def _triangle(v: float, p: float) -> float:
    """The reference triangle wave, written independently with math.floor."""
    return 2 * abs(v / p - math.floor(v / p + 0.5))


def test_triangle_matches_reference_formula_T21():
    t, lo, hi = 21, 1.0, 2.5
    s = frame_scales("triangle", t, lo, hi, period=1.0)
    expected = [_triangle(i / (t - 1), 1.0) * (hi - lo) + lo for i in range(t)]
    torch.testing.assert_close(s, torch.tensor(expected), rtol=0, atol=1e-6)
    # shape: min at both ends, max in the middle, symmetric, rising linearly by 2 * 1.5 / 20 = 0.15 per frame
    assert s[0].item() == pytest.approx(lo) and s[-1].item() == pytest.approx(lo)
    assert s[10].item() == pytest.approx(hi) and int(s.argmax()) == 10
    torch.testing.assert_close(s, s.flip(0))
    torch.testing.assert_close(s[1:11] - s[:10], torch.full((10,), 0.15), rtol=0, atol=1e-5)


@pytest.mark.parametrize("fusing", ["max", "mean", "multiply"])
def test_triangle_period_list_fusing(fusing):
    t, lo, hi, periods = 21, 1.0, 2.5, [1.0, 0.5]
    s = frame_scales("triangle", t, lo, hi, period=periods, period_fusing=fusing)
    expected = []
    for i in range(t):
        waves = [_triangle(i / (t - 1), p) for p in periods]
        w = {"max": max(waves), "mean": sum(waves) / len(waves), "multiply": waves[0] * waves[1]}[fusing]
        expected.append(w * (hi - lo) + lo)
    torch.testing.assert_close(s, torch.tensor(expected), rtol=0, atol=1e-6)
    # the fusings really differ: at v = 0.25 the two waves are 0.5 and 1.0
    w_at_quarter = {"max": 1.0, "mean": 0.75, "multiply": 0.5}[fusing]
    assert s[5].item() == pytest.approx(lo + w_at_quarter * (hi - lo))


def test_triangle_period_tuple_equals_single_float_for_one_period():
    torch.testing.assert_close(frame_scales("triangle", 9, period=[1.0]), frame_scales("triangle", 9, period=1.0))


@pytest.mark.parametrize("num_frames, edge_perc, lo, hi, expected", [
    # n = int(14 * 0.1) = 1: linspace(1.0, 2.5, 1) = [1.0]; 12 middle frames at 1.0
    (14, 0.1, 1.0, 2.5, [1.0] + [1.0] * 12 + [1.0]),
    # n = int(25 * 0.1) = 2: [1.5, 3.0], 21 ones, [3.0, 1.5]
    (25, 0.1, 1.5, 3.0, [1.5, 3.0] + [1.0] * 21 + [3.0, 1.5]),
    # n = int(21 * 0.25) = 5: linspace(1, 3, 5) = 1, 1.5, 2, 2.5, 3
    (21, 0.25, 1.0, 3.0, [1.0, 1.5, 2.0, 2.5, 3.0] + [1.0] * 11 + [3.0, 2.5, 2.0, 1.5, 1.0]),
    # n = int(10 * 0.5) = 5: no middle
    (10, 0.5, 2.0, 4.0, [2.0, 2.5, 3.0, 3.5, 4.0, 4.0, 3.5, 3.0, 2.5, 2.0]),
    # n = int(7 * 0.1) = 0: every frame 1.0
    (7, 0.1, 1.0, 2.5, [1.0] * 7),
])
def test_trapezoid_matches_reference_trapezoid_prediction_guider(num_frames, edge_perc, lo, hi, expected):
    """Reference sgm/modules/diffusionmodules/guiders.py `TrapezoidPredictionGuider`: rise =
    linspace(min_scale, max_scale, int(num_frames * edge_perc)), then ones(num_frames - 2 * len(rise)), then the
    rise flipped; default edge_perc 0.1. Values hand-computed from that definition."""
    s = frame_scales("trapezoid", num_frames, lo, hi, edge_perc=edge_perc)
    torch.testing.assert_close(s, torch.tensor(expected), rtol=0, atol=1e-6)
    g = Guidance(kind="trapezoid", min_scale=lo, max_scale=hi, edge_perc=edge_perc)
    torch.testing.assert_close(g.scales(num_frames), s)
    assert Guidance(kind="trapezoid").edge_perc == 0.1  # the reference default


def test_ramp_hold_shape():
    t, lo, hi = 21, 1.0, 3.0
    s = frame_scales("ramp_hold", t, lo, hi, ramp=0.25)
    u = [i / 20 for i in range(t)]
    expected = [lo + min(min(x, 1 - x) / 0.25, 1.0) * (hi - lo) for x in u]
    torch.testing.assert_close(s, torch.tensor(expected), rtol=0, atol=1e-6)
    assert s[0].item() == pytest.approx(lo) and s[-1].item() == pytest.approx(lo)
    # rises over frames 0..5 (u <= 0.25), flat at max for 5..15, falls over 15..20
    assert torch.all(s[1:6] > s[:5]) and torch.all(s[16:] < s[15:20])
    torch.testing.assert_close(s[5:16], torch.full((11,), hi))
    torch.testing.assert_close(s, s.flip(0))
    # ramp = 0.5 is the period-1 triangle
    torch.testing.assert_close(frame_scales("ramp_hold", t, lo, hi, ramp=0.5), frame_scales("triangle", t, lo, hi))


def test_combine_batch2_applies_frame_scale_to_both_videos():
    b, t, c = 2, 5, 3
    scales = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    uncond = torch.randn(b * t, c, 2, 2, generator=torch.Generator().manual_seed(0))  # (b t) c h w
    cond = torch.randn(b * t, c, 2, 2, generator=torch.Generator().manual_seed(1))
    out = combine(uncond, cond, scales, t)
    assert out.shape == uncond.shape
    for video in range(b):
        for frame in range(t):
            row = video * t + frame  # frames contiguous per video
            expected = uncond[row] + scales[frame] * (cond[row] - uncond[row])
            torch.testing.assert_close(out[row], expected)
    # a frame-major ("(t b)") reading would give a different answer: the test above can tell them apart
    wrong = uncond + scales.repeat_interleave(b)[:, None, None, None] * (cond - uncond)
    assert not torch.allclose(out, wrong)


def test_combine_scale_one_is_cond_and_zero_is_uncond():
    u, c = torch.zeros(4, 2), torch.ones(4, 2)
    torch.testing.assert_close(combine(u, c, torch.ones(2), 2), c)
    torch.testing.assert_close(combine(u, c, torch.zeros(2), 2), u)


def test_combine_errors():
    u = torch.zeros(6, 2)
    with pytest.raises(ValueError, match=r"leading size of uncond/cond \(6\) must be a multiple of num_frames=4"):
        combine(u, u, torch.ones(4), 4)
    with pytest.raises(ValueError, match=r"scales must have shape \(3,\) = \(num_frames,\), got \(2,\)"):
        combine(u, u, torch.ones(2), 3)
    with pytest.raises(ValueError, match=r"same shape, got \(6, 2\) and \(6, 3\)"):
        combine(u, torch.zeros(6, 3), torch.ones(3), 3)
    with pytest.raises(ValueError, match=r"num_frames must be an integer >= 1, got 0"):
        combine(u, u, torch.ones(3), 0)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: frame_scales("cosine", 5), r"unknown guidance kind 'cosine'; expected one of \['vanilla', 'linear', 'triangle', 'trapezoid', 'ramp_hold'\]"),
        (lambda: frame_scales("linear", 0), r"num_frames must be an integer >= 1, got 0"),
        (lambda: frame_scales("triangle", 5, period=0.0), r"period must be a number > 0 or a non-empty list of them, got period=0.0"),
        (lambda: frame_scales("triangle", 5, period=[]), r"period must be a number > 0"),
        (lambda: frame_scales("triangle", 5, period_fusing="min"), r"unknown period_fusing 'min'; expected one of \['max', 'mean', 'multiply'\]"),
        (lambda: frame_scales("ramp_hold", 5, ramp=0.7), r"ramp must satisfy 0 < ramp <= 0.5.*got ramp=0.7"),
        (lambda: frame_scales("linear", 5, max_scale=float("nan")), r"max_scale must be a finite number"),
        (lambda: Guidance(kind="nope"), r"unknown guidance kind 'nope'"),
        (lambda: Guidance(ramp=0.0), r"ramp must satisfy 0 < ramp <= 0.5"),
        (lambda: frame_scales("trapezoid", 5, edge_perc=0.6), r"edge_perc must satisfy 0 <= edge_perc <= 0.5.*0.6"),
        (lambda: Guidance(kind="trapezoid", edge_perc=-0.1), r"edge_perc must satisfy 0 <= edge_perc <= 0.5"),
    ],
)
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_guidance_dataclass():
    g = Guidance(kind="triangle", min_scale=1.0, max_scale=2.5, period=[1.0, 0.5], period_fusing="mean")
    assert g.period == (1.0, 0.5)
    hash(g)  # frozen and hashable
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.kind = "linear"
    torch.testing.assert_close(g.scales(21), frame_scales("triangle", 21, 1.0, 2.5, period=[1.0, 0.5], period_fusing="mean"))
    u, c = torch.zeros(42, 1), torch.ones(42, 1)
    torch.testing.assert_close(g.combine(u, c, 21)[:, 0], g.scales(21).repeat(2))


@pytest.mark.parametrize(
    "variant, kind, lo, hi",
    [
        ("svd", "linear", 1.0, 2.5),
        ("svd_xt", "linear", 1.5, 3.0),
        ("svd_xt_1_1", "linear", 1.5, 3.0),
        ("sv3d_u", "triangle", 1.0, 2.5),
        ("sv3d_p", "triangle", 1.0, 2.5),
    ],
)
def test_defaults_for_variants(variant, kind, lo, hi):
    g = defaults_for(variant)
    assert (g.kind, g.min_scale, g.max_scale) == (kind, lo, hi)


def test_defaults_for_unknown_variant():
    with pytest.raises(ValueError, match=r"unknown variant 'sd15'"):
        defaults_for("sd15")
