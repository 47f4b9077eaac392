"""Long videos (svd_core.long_video): window schedules, per-frame blending, consistent conditioning slices,
one window per model call, exact equality with plain sampling when one window covers the video, chaining with
colour-drift correction."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from svd_core import long_video as LV
from svd_core.denoiser import VideoCond
from svd_core.guidance import Guidance
from svd_core.pipeline import Conditioning, image_conditioning, sample
from svd_core.testing import tiny_model
from svd_core.variants import TINY

MICRO = replace(TINY, name="micro", unet=replace(TINY.unet, channel_mult=(1, 2), num_res_blocks=1,
                                                 attention_resolutions=(1, 2)),
                vae=replace(TINY.vae, num_res_blocks=1), height=64, width=64)


def test_uniform_schedule():
    assert LV.window_schedule(4, 4, 2) == [[0, 1, 2, 3]]
    assert LV.window_schedule(3, 4, 2) == [[0, 1, 2]]
    assert LV.window_schedule(6, 4, 2) == [[0, 1, 2, 3], [2, 3, 4, 5]]
    # the last window is flush with the end even when the stride does not divide
    assert LV.window_schedule(7, 4, 1) == [[0, 1, 2, 3], [3, 4, 5, 6]]
    assert LV.window_schedule(8, 4, 1) == [[0, 1, 2, 3], [3, 4, 5, 6], [4, 5, 6, 7]]
    for n in range(1, 40):
        wins = LV.window_schedule(n, 14, 6)
        assert sorted({f for w in wins for f in w}) == list(range(n))
        assert all(len(w) == min(n, 14) for w in wins)


def test_looped_schedule_wraps_around():
    wins = LV.window_schedule(8, 4, 2, "looped")
    assert wins == [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7], [6, 7, 0, 1]]
    # the last frames share a window with the first ones
    assert any(7 in w and 0 in w for w in wins)
    for n in range(5, 30):
        wins = LV.window_schedule(n, 4, 1, "looped")
        counts = torch.zeros(n)
        for w in wins:
            counts[w] += 1
        assert (counts >= 1).all() and len(wins) == -(-n // 3)


def test_schedule_errors():
    with pytest.raises(ValueError, match="overlap=4 must be smaller than window=4"):
        LV.window_schedule(10, 4, 4)
    with pytest.raises(ValueError, match="window schedule 'spiral'"):
        LV.window_schedule(10, 4, 1, "spiral")
    with pytest.raises(ValueError, match="blend 'gauss'"):
        LV.window_weights(4, "gauss")
    assert LV.window_weights(5).tolist() == [1, 2, 3, 2, 1]


class FakeModel:
    """D(x) = value chosen per frame from the conditioning (no network): exposes what the blending does."""

    def __init__(self, spec, mode):
        self.spec, self.mode = spec, mode
        self.unet = nn.Linear(1, 1)
        self.frames_seen = []

    def denoise(self, x, sigma, cond, num_frames):
        self.frames_seen.append(num_frames)
        assert x.shape[0] % num_frames == 0 and cond.vector.shape[0] == x.shape[0]
        b = x.shape[0] // num_frames
        if self.mode == "vector":  # each frame's own conditioning value (fps per frame)
            v = cond.vector[:, 0]
        else:  # position inside the window
            v = torch.arange(num_frames, dtype=x.dtype).repeat(b)
        return v.view(-1, 1, 1, 1).expand_as(x).clone()


def _fake_cond(n, batch=1, h=2, w=2):
    vec = torch.arange(batch * n, dtype=torch.float32)[:, None].repeat(1, 3)  # a distinct value per frame
    c = VideoCond(torch.zeros(batch * n, 1, 8), torch.zeros(batch * n, 4, h, w), vec)
    u = VideoCond(torch.zeros(batch * n, 1, 8), torch.zeros(batch * n, 4, h, w), vec)
    return Conditioning(c, u, n, batch, h * 8, w * 8)


@pytest.mark.parametrize("schedule", ["uniform", "looped"])
def test_conditioning_sliced_consistently(schedule):
    """Every frame gets its own per-frame conditioning in every window: the blend returns it unchanged."""
    model = FakeModel(MICRO, "vector")
    cond = _fake_cond(11, batch=2)
    den = LV.WindowedDenoiser(model, cond, Guidance("vanilla", 1.0, 1.0), window=4, overlap=2, schedule=schedule)
    x = torch.zeros(22, 4, 2, 2)
    out = den(x, torch.ones(22))
    assert torch.allclose(out[:, 0, 0, 0], torch.arange(22, dtype=torch.float32))
    assert set(model.frames_seen) == {4}  # one window of the trained length per model call
    assert den.calls == len(LV.window_schedule(11, 4, 2, schedule))


def test_blend_weights_by_hand():
    """N=6, window 4, overlap 2: frame 2 is position 2 of window 0 (pyramid weight 2) and position 0 of window 1
    (weight 1): (2*2 + 0*1) / 3."""
    model = FakeModel(MICRO, "position")
    den = LV.WindowedDenoiser(model, _fake_cond(6), Guidance("vanilla", 1.0, 1.0), window=4, overlap=2)
    out = den(torch.zeros(6, 4, 2, 2), torch.ones(6))[:, 0, 0, 0]
    expected = [0, 1, (2 * 2 + 0 * 1) / 3, (1 * 3 + 2 * 1) / 3, 2, 3]
    assert torch.allclose(out, torch.tensor(expected))
    flat = LV.WindowedDenoiser(model, _fake_cond(6), Guidance("vanilla", 1.0, 1.0), window=4, overlap=2, blend="flat")
    assert torch.allclose(flat(torch.zeros(6, 4, 2, 2), torch.ones(6))[:, 0, 0, 0],
                          torch.tensor([0, 1, 1, 2, 2, 3.0]))
    # looped, N=8: frame 0 is position 0 of window 0 (weight 1) and position 2 of the wrapped window (weight 2)
    loop = LV.WindowedDenoiser(model, _fake_cond(8), Guidance("vanilla", 1.0, 1.0), window=4, overlap=2,
                               schedule="looped")
    out = loop(torch.zeros(8, 4, 2, 2), torch.ones(8))[:, 0, 0, 0]
    assert out[0].item() == pytest.approx((0 * 1 + 2 * 2) / 3)


def test_guidance_scales_per_window():
    """CFG inside each window uses the guider's scales for the window length (linear 1 -> 3 over 4 frames)."""
    class CFGModel(FakeModel):
        def denoise(self, x, sigma, cond, num_frames):
            self.frames_seen.append(num_frames)
            return cond.crossattn[:, 0, 0].view(-1, 1, 1, 1).expand_as(x).clone()  # uncond 0, cond 1

    n = 6
    c = VideoCond(torch.ones(n, 1, 8), torch.zeros(n, 4, 2, 2), torch.zeros(n, 3))
    u = VideoCond(torch.zeros(n, 1, 8), torch.zeros(n, 4, 2, 2), torch.zeros(n, 3))
    den = LV.WindowedDenoiser(CFGModel(MICRO, ""), Conditioning(c, u, n, 1, 16, 16), Guidance("linear", 1.0, 3.0),
                              window=4, overlap=2, blend="flat")
    out = den(torch.zeros(n, 4, 2, 2), torch.ones(n))[:, 0, 0, 0]
    s = torch.linspace(1, 3, 4)  # per-window scales; D = 0 + w (1 - 0) = w
    expected = torch.stack([s[0], s[1], (s[2] + s[0]) / 2, (s[3] + s[1]) / 2, s[2], s[3]])
    assert torch.allclose(out, expected)


@pytest.fixture(scope="module")
def model():
    return tiny_model(MICRO, seed=0)


def _image(h=64, w=64):
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return torch.stack([x, y, 0.5 * torch.ones_like(x)])[None]


def test_one_window_equals_plain_sampling(model):
    cond = image_conditioning(model, _image(), num_frames=4, seed=1)
    g = Guidance("linear", 1.0, 2.5)
    ref = sample(model, cond, g, steps=2, seed=3)
    out = LV.sample_windows(model, cond, g, window=4, overlap=2, steps=2, seed=3)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("schedule", ["uniform", "looped"])
def test_sliding_windows_on_tiny_model(model, schedule):
    cond = image_conditioning(model, _image(), num_frames=6, seed=1)
    steps = []
    out = LV.sample_windows(model, cond, Guidance("linear", 1.0, 2.0), window=4, overlap=2, schedule=schedule,
                            steps=1, seed=0, callback=lambda i, n, stage: steps.append((i, n, stage)))
    assert out.shape == (6, 4, 8, 8) and torch.isfinite(out).all()
    assert steps == [(1, 1, "sampling")]
    x0s = []  # live previews: the blended x0 of the whole video per step; euler's last step lands on it
    again = LV.sample_windows(model, cond, Guidance("linear", 1.0, 2.0), window=4, overlap=2, schedule=schedule,
                              steps=1, seed=0, on_denoised=x0s.append)
    assert len(x0s) == 1 and torch.allclose(x0s[0], out, atol=1e-3)  # x + (x0 - x) in fp32 at sigma 700
    assert torch.equal(again, out)  # watching changes nothing
    with pytest.raises(LV.Cancelled):
        LV.sample_windows(model, cond, steps=2, window=4, cancel=lambda: True)


def test_chain_stops_when_the_progress_callback_raises(model, monkeypatch):
    """ComfyUI's Cancel raises from the progress callback: the chain stops in the first clip's sampling, before
    any decoding or a second clip."""
    decoded = []
    monkeypatch.setattr(LV, "decode", lambda *a, **kw: decoded.append(1))
    events = []

    class Interrupted(Exception):  # as comfy.model_management.InterruptProcessingException
        pass

    def callback(done, total, stage=None):
        events.append((done, total, stage))
        raise Interrupted

    with pytest.raises(Interrupted):
        LV.chain(model, _image(), num_frames=7, clip_frames=4, steps=3, seed=0, callback=callback)
    assert events == [(1, 6, "sampling")] and decoded == []


def test_match_color():
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(2, 5, 3, 4, 4, generator=gen) * 0.3 + 0.5
    drifted = ref * 1.7 - 0.2
    mean, std = LV._stats(ref)
    fixed = LV.match_color(drifted, mean, std)
    m2, s2 = LV._stats(fixed)
    assert torch.allclose(m2, mean, atol=1e-5) and torch.allclose(s2, std, atol=1e-5)
    assert torch.allclose(fixed, ref, atol=1e-5)  # an affine drift is undone exactly


@pytest.mark.parametrize("color_match", ["latent", "pixel"])
def test_chain(model, color_match, monkeypatch):
    """7 frames from 4-frame clips: two clips, the second conditioned on the first one's last decoded frame."""
    seen, events = [], []
    real = LV.image_conditioning

    def spy(m, image, **kw):
        seen.append(image.clone())
        return real(m, image, **kw)

    monkeypatch.setattr(LV, "image_conditioning", spy)
    frames = LV.chain(model, _image(), num_frames=7, clip_frames=4, steps=1, seed=0, color_match=color_match,
                      guidance=Guidance("linear", 1.0, 2.0), callback=lambda *a: events.append(a))
    assert frames.shape == (1, 7, 3, 64, 64) and frames.min() >= 0 and frames.max() <= 1
    assert len(seen) == 2
    # one progress signature: (done, total, stage); each stage counts up to its total (2 clips x 1 step)
    assert events == [(1, 2, "sampling"), (1, 2, "clips"), (2, 2, "sampling"), (2, 2, "clips")]
    assert torch.equal(seen[1], frames[:, 3])  # clip 0 is the colour reference: its frames are not altered
    with pytest.raises(ValueError, match="color_match='lab'"):
        LV.chain(model, _image(), num_frames=7, clip_frames=4, color_match="lab")
