"""Issue 12: the whole-run Python API entry points besides img2vid / orbit (long_video.sample_windows and chain,
interpolation.interpolate_video, multiview.multiview, text2video.text2vid) check every argument and bound their
memory before any model work: an out-of-range value is one ValueError naming the argument, an impossible size a
MemoryBudgetError with the estimate and what fits, and no module of the model has run (forward hooks count)."""
from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from svd_core import interpolation as interp
from svd_core import long_video as LV
from svd_core import multiview as mv
from svd_core import text2video as t2v
from svd_core.memory import SLACK, MemoryBudgetError, estimate_request
from svd_core.model import build
from svd_core.pipeline import image_conditioning
from svd_core.testing import TINY
from svd_core.validation import MAX_SEED

GiB = 2 ** 30


@pytest.fixture(scope="module")
def svd(tiny_models):
    return tiny_models("tiny", seed=0)


@contextmanager
def nothing_runs(model):
    """Fail if any module of `model` (UNet, VAE, CLIP, text tower, ...) runs a forward inside the block."""
    calls = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: calls.append(type(mod).__name__))
             for m in model.modules()]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
    assert calls == [], f"the model ran before the request was refused: {calls[:5]}"


def _refused(model, fn, error, needle, **kwargs):
    with nothing_runs(model), pytest.raises(error, match=needle):
        fn(**kwargs)


def _budget(monkeypatch, nbytes):
    monkeypatch.setattr("svd_core.memory.available_bytes", lambda device="cpu": nbytes)


# --------------------------------------------------------------------------------------------- long videos


@pytest.mark.parametrize("kwargs,needle", [
    (dict(window=4, overlap=4), r"overlap=4 is impossible: it must be smaller than window=4"),
    (dict(window=0), r"window=0 is impossible: expected an integer in \[1, "),
    (dict(steps=0), r"steps=0 is impossible"),
    (dict(seed=-1), r"seed=-1 is impossible"),
    (dict(blend="gauss"), r"blend='gauss' is not one of \['pyramid', 'flat'\]"),
    (dict(sigma_schedule="cosine"), r"sigma_schedule='cosine' is not one of"),
    (dict(sampler="nope"), r"sampler='nope' is not one of"),
])
def test_sliding_windows_refuse_bad_values_before_sampling(svd, kwargs, needle):
    cond = image_conditioning(svd, torch.rand(1, 3, 64, 64), num_frames=6, seed=1)
    _refused(svd, lambda **kw: LV.sample_windows(svd, cond, **kw), ValueError, needle, **kwargs)


def test_sliding_windows_memory_counts_the_whole_video_and_one_window(svd, monkeypatch):
    cond = image_conditioning(svd, torch.rand(1, 3, 64, 64), num_frames=6, seed=1)
    _budget(monkeypatch, SLACK + 2 ** 16)  # room for almost nothing beyond the fixed slack
    needle = (r"6 frames at 128x128 need about .* GiB on cpu .* decoding 0.0 GiB\) .*"
              r"(at most \d frames? fit|not even one frame fits)")
    _refused(svd, lambda: LV.sample_windows(svd, cond, window=4, overlap=2, steps=1), MemoryBudgetError, needle)
    # the UNet term follows the window, the latents the whole video: 1000 frames in windows of 4 need far less
    # than 1000 frames at once, and more than 4
    meta = build(TINY, device="meta")
    kw = dict(height=64, width=64, decode_t=4, decode=False)
    windowed = estimate_request(meta, frames=1000, unet_frames=4, **kw).total
    assert estimate_request(meta, frames=4, **kw).total < windowed < estimate_request(meta, frames=1000, **kw).total


@pytest.mark.parametrize("n,window,overlap,schedule", [(1, 4, 2, "uniform"), (6, 4, 2, "uniform"),
                                                        (7, 4, 1, "uniform"), (37, 14, 6, "uniform"),
                                                        (8, 4, 2, "looped"), (9, 4, 3, "looped"),
                                                        (50, 25, 12, "looped")])
def test_window_count_is_the_schedules_length(n, window, overlap, schedule):
    assert LV.window_count(n, window, overlap, schedule) == len(LV.window_schedule(n, window, overlap, schedule))


@pytest.mark.parametrize("kwargs,needle", [
    (dict(num_frames=0), r"num_frames=0 is impossible"),
    (dict(clip_frames=1), r"clip_frames=1 is impossible: expected an integer in \[2, "),
    (dict(motion_bucket_id=300), r"motion_bucket_id=300 is impossible: expected a finite number in \[0, 255\]"),
    (dict(fps=0), r"fps=0 is impossible"),
    (dict(decode_t=0), r"decode_t=0 is impossible"),
    (dict(width=100), r"width=100 is impossible: .*a multiple of 64"),
    (dict(color_match="lab"), r"color_match='lab' is not one of"),
    (dict(resize_mode="zoom"), r"resize_mode='zoom' is not one of"),
    (dict(seed=MAX_SEED), r"seed=18446744073709551615 is impossible: clip k is sampled with seed \+ k, so for 2 "
                          r"clips the seed must be at most 18446744073709551614"),
])
def test_chain_refuses_bad_values_before_any_clip(svd, kwargs, needle):
    args = {**dict(num_frames=7, clip_frames=4, width=64, height=64, steps=1), **kwargs}
    _refused(svd, lambda **kw: LV.chain(svd, torch.rand(1, 3, 64, 64), **kw), ValueError, needle, **args)


def test_chain_of_a_million_frames_is_refused_with_what_fits(svd, monkeypatch):
    _budget(monkeypatch, 2 * GiB)
    needle = r"1000000 frames at 64x64 need about 4\d\.\d GiB on cpu .* at most (\d+) frames fit \(set num_frames\)"
    with nothing_runs(svd), pytest.raises(MemoryBudgetError, match=needle) as info:
        LV.chain(svd, torch.rand(1, 3, 64, 64), num_frames=10 ** 6, clip_frames=4, width=64, height=64, steps=1)
    fit = int(info.value.args[0].split("at most ")[1].split()[0])
    # the output alone (n x 3 x 64 x 64 float32) bounds it: about 2 GiB / 48 KiB, less the slack and one clip
    assert 20_000 < fit < 2 * GiB // (3 * 64 * 64 * 4)


# --------------------------------------------------------------------------------------------- interpolation


@pytest.fixture(scope="module")
def interp_model(tiny_models):
    return tiny_models("tiny_interp", seed=2)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(batch_size=0), r"batch_size=0 is impossible"),
    (dict(width=0), r"width=0 is impossible"),
    (dict(height=96), r"height=96 is impossible"),
    (dict(steps=0), r"steps=0 is impossible"),
    (dict(decode_t=0), r"decode_t=0 is impossible"),
    (dict(motion_bucket_id=1000), r"motion_bucket_id=1000 is impossible"),
    (dict(cond_aug=float("nan")), r"cond_aug=nan is impossible"),
    (dict(schedule="linear"), r"schedule='linear' is not one of"),
    (dict(seed=MAX_SEED - 1), r"seed=18446744073709551614 is impossible: pair j is sampled with seed \+ j, so for 3 "
                              r"pairs the seed must be at most 18446744073709551613"),
])
def test_interpolation_refuses_bad_values_before_sampling(interp_model, kwargs, needle):
    frames = torch.rand(4, 3, 64, 64)
    _refused(interp_model, lambda **kw: interp.interpolate_video(interp_model, frames, **kw), ValueError, needle,
             steps=kwargs.pop("steps", 1), **kwargs)


def test_interpolation_memory_counts_the_output_and_names_batch_size(interp_model, monkeypatch):
    frames = torch.rand(3, 3, 64, 64)
    _budget(monkeypatch, SLACK + 2 ** 16)
    needle = r"2 pairs per batch at 64x64 need about .* (at most 1 pair per batch fit \(set batch_size\)|not even one)"
    _refused(interp_model, lambda: interp.interpolate_video(interp_model, frames, batch_size=4, steps=1),
             MemoryBudgetError, needle)
    # a long input keeps its (n-1)*4+1 output frames: 100k frames at 64x64 cannot fit in 2 GiB, whatever the batch
    _budget(monkeypatch, 2 * GiB)
    long = torch.zeros(1, 3, 64, 64).expand(100_000, 3, 64, 64)  # no memory: one frame viewed 100k times
    _refused(interp_model, lambda: interp.interpolate_video(interp_model, long, batch_size=1, steps=1),
             MemoryBudgetError, r"1 pair per batch at 64x64 need about .* not even one pair per batch fits")


# --------------------------------------------------------------------------------------------- multi-view


@pytest.fixture(scope="module")
def sv3d(tiny_models):
    return tiny_models("tiny_sv3d_p", seed=3)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(steps=0), r"steps=0 is impossible"),
    (dict(width=65), r"width=65 is impossible"),
    (dict(cond_aug=-1.0), r"cond_aug=-1.0 is impossible"),
    (dict(decode_t=0), r"decode_t=0 is impossible"),
    (dict(seed=2 ** 64), r"seed=18446744073709551616 is impossible"),
    (dict(sampler="nope"), r"sampler='nope' is not one of"),
    (dict(noise_device="gpu"), r"noise_device='gpu' is not one of"),
])
def test_multiview_refuses_bad_values_before_sampling(sv3d, kwargs, needle):
    _refused(sv3d, lambda **kw: mv.multiview(sv3d, torch.rand(1, 3, 64, 64), mv.static_orbit(5), **kw), ValueError,
             needle, **kwargs)


def test_multiview_memory(sv3d, monkeypatch):
    _budget(monkeypatch, GiB)
    _refused(sv3d, lambda: mv.multiview(sv3d, torch.rand(1, 3, 64, 64), mv.static_orbit(5), width=2 ** 16,
                                        height=2 ** 16, steps=1),
             MemoryBudgetError, r"5 frames at 65536x65536 need about .* not even one frame fits")


# --------------------------------------------------------------------------------------------- text-to-video


@pytest.fixture(scope="module")
def t2v_model(tiny_models):
    return tiny_models("tiny_t2v", seed=4)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(motion_score=1000.0), r"motion_score=1000.0 is impossible: expected a finite number in \[0, 255\]"),
    (dict(fps=0.5), r"fps=0.5 is impossible"),
    (dict(num_frames=0), r"num_frames=0 is impossible"),
    (dict(steps=0), r"steps=0 is impossible"),
    (dict(height=0), r"height=0 is impossible"),
    (dict(schedule="nope"), r"schedule='nope' is not one of"),
])
def test_text2vid_refuses_bad_values_before_encoding(t2v_model, kwargs, needle):
    _refused(t2v_model, lambda **kw: t2v.text2vid(t2v_model, "a red ball", **kw), ValueError, needle, **kwargs)


def test_text2vid_memory_counts_every_prompt(t2v_model, monkeypatch):
    _budget(monkeypatch, GiB)
    needle = r"200000 frames at 128x64 need about .* at most (\d+) frames fit \(set num_frames\)"
    with nothing_runs(t2v_model), pytest.raises(MemoryBudgetError, match=needle) as info:
        t2v.text2vid(t2v_model, ["a", "b"], num_frames=100_000, steps=1)
    fit = int(info.value.args[0].split("at most ")[1].split()[0])
    assert 0 < fit < 200_000
