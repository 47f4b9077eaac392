"""The one sampling driver (svd_core.sampling.drive) and the one progress protocol (svd_core.progress):
`pipeline.sample` and `long_video.sample_windows` are the driver over their denoiser, bit for bit; progress is
`(done, total, stage)`, monotonic, ends at total; cancel and a raising callback stop sampling within one step."""
from __future__ import annotations

import pytest
import torch

from svd_core import long_video as LV
from svd_core import pipeline as P
from svd_core import progress as PR
from svd_core import sampling as S
from svd_core.guidance import Guidance
from svd_core.testing import tiny_model
from tests.test_long_video import MICRO, _image

G = Guidance("linear", 1.0, 2.0)


@pytest.fixture(scope="module")
def model():
    return tiny_model(MICRO, seed=0)


@pytest.fixture(scope="module")
def cond(model):
    return P.image_conditioning(model, _image(), num_frames=6, seed=1)


@pytest.fixture
def sigma_calls(monkeypatch):
    """Every schedule the driver builds: proof that a caller went through `sampling.drive`."""
    calls = []
    real = S.get_sigmas

    def spy(*args, **kw):
        calls.append(args)
        return real(*args, **kw)

    monkeypatch.setattr(S, "get_sigmas", spy)
    return calls


def test_pipeline_sample_is_the_driver_over_the_guided_denoiser(model, cond, sigma_calls):
    out = P.sample(model, cond, G, sampler="euler_ancestral", steps=2, seed=3)
    assert len(sigma_calls) == 1 and sigma_calls[0][:2] == ("karras", 2)
    direct = S.drive(P.GuidedDenoiser(model, cond, G), model.spec, cond.latent_shape, sampler="euler_ancestral",
                     steps=2, seed=3)
    assert torch.equal(out, direct)
    # the driver's start: unit noise from the seed, scaled by sqrt(1 + sigma_max^2) (reference EulerEDMSampler)
    sigmas = S.get_sigmas("karras", 2, model.spec.sigma_min, model.spec.sigma_max)
    noise = torch.randn(cond.latent_shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(S.start_sample(noise, sigmas), noise * (1 + sigmas[0] ** 2) ** 0.5)
    assert not torch.equal(out, P.sample(model, cond, G, sampler="euler_ancestral", steps=2, seed=4))


def test_sample_windows_is_the_driver_over_the_windowed_denoiser(model, cond, sigma_calls):
    out = LV.sample_windows(model, cond, G, window=4, overlap=2, steps=2, seed=0)
    assert len(sigma_calls) == 1
    denoiser = LV.WindowedDenoiser(model, cond, G, window=4, overlap=2)
    direct = S.drive(denoiser, model.spec, cond.latent_shape, steps=2, seed=0)
    assert torch.equal(out, direct) and denoiser.calls == 2 * 2  # 2 windows x 2 euler steps


def test_driver_video_to_video_starts_from_the_latent(model, cond):
    init = torch.randn(cond.latent_shape, generator=torch.Generator().manual_seed(9))
    noise = torch.randn(cond.latent_shape, generator=torch.Generator().manual_seed(8))
    sigmas = S.get_sigmas("karras", 2, model.spec.sigma_min, model.spec.sigma_max, denoise=0.5)
    torch.testing.assert_close(S.start_sample(noise, sigmas, init), init + sigmas[0] * noise)
    out = P.sample(model, cond, G, steps=2, noise=noise, init_latent=init, denoise=0.5)
    direct = S.drive(P.GuidedDenoiser(model, cond, G), model.spec, cond.latent_shape, steps=2, noise=noise,
                     init_latent=init, denoise=0.5)
    assert torch.equal(out, direct)
    with pytest.raises(ValueError, match=r"init_latent has shape \(1, 4, 8, 8\), expected \(6, 4, 8, 8\)"):
        S.drive(P.GuidedDenoiser(model, cond, G), model.spec, cond.latent_shape, steps=2, init_latent=init[:1],
                denoise=0.5)
    with pytest.raises(ValueError, match="unknown sampler 'ddim'"):
        S.drive(P.GuidedDenoiser(model, cond, G), model.spec, cond.latent_shape, sampler="ddim")


def test_sampling_progress_is_monotonic_and_ends_at_total(model, cond):
    seen = []
    LV.sample_windows(model, cond, G, window=4, overlap=2, steps=3, seed=0, callback=lambda *a: seen.append(a))
    assert seen == [(1, 3, "sampling"), (2, 3, "sampling"), (3, 3, "sampling")]


@pytest.mark.parametrize("how", ["cancel", "raise"])
def test_cancel_or_a_raising_callback_stops_window_sampling_promptly(model, cond, monkeypatch, how):
    evaluations = []
    real = type(model).denoise

    def counting(self, *a, **kw):
        evaluations.append(1)
        return real(self, *a, **kw)

    monkeypatch.setattr(type(model), "denoise", counting)
    steps = []

    class Stop(Exception):
        pass

    def callback(done, total, stage=None):
        steps.append(done)
        if how == "raise":
            raise Stop

    cancel = (lambda: len(steps) >= 1) if how == "cancel" else None
    with pytest.raises(PR.Cancelled if how == "cancel" else Stop,
                       match="sampling cancelled between windows" if how == "cancel" else None):
        LV.sample_windows(model, cond, G, window=4, overlap=2, steps=5, seed=0, callback=callback, cancel=cancel)
    assert steps == [1]
    assert len(evaluations) == 2  # step 1's two windows only: cancel stops step 2 before its first window


def test_shifted_and_report():
    seen = []
    inner = PR.shifted(lambda *a: seen.append(a), 6, 12, "sampling")
    inner(1, 3, "sampling")
    inner(3, 3)
    assert seen == [(7, 12, "sampling"), (9, 12, "sampling")] and PR.shifted(None, 0, 1, "x") is None
    PR.report(lambda *a: seen.append(a), lambda: False, 2, 4, "decoding", "never")
    assert seen[-1] == (2, 4, "decoding")
    with pytest.raises(PR.Cancelled, match="decoding cancelled after 2/4 chunks"):
        PR.report(lambda *a: seen.append(a), lambda: True, 2, 4, "decoding", "decoding cancelled after 2/4 chunks")
    assert len(seen) == 3  # cancelled: not reported


def test_cfg_batching_is_chosen_by_memory_and_gives_the_same_samples(model, cond):
    """`pipeline.sample(cfg_batch=)` (issue 16 item 3): "auto" runs the CFG branches in one batch when the guided
    step's estimate fits the free memory, one video at a time when it does not, as ComfyUI's sampler batches cond
    and uncond; "together" / "in turn" are obeyed whatever the memory; the samples agree; the UNet's own setting
    is restored (and an explicit one kept under "auto")."""
    from svd_core.memory import ff_chunk_of, guided_step_bytes

    need = guided_step_bytes(model.spec, cond.batch * cond.num_frames, cond.height, cond.width, 4, ff_chunk_of(model))
    forwards = []  # videos in each UNet pass: 2 (both branches) together, 1 in turn
    hook = model.unet.input_blocks[0].register_forward_pre_hook(
        lambda m, a: forwards.append(a[0].shape[0] // cond.num_frames))
    runs = {}
    try:
        for name, kw in {"auto, fits": dict(free_memory=need), "auto, short": dict(free_memory=need - 1),
                         "together, short": dict(cfg_batch="together", free_memory=1),
                         "in turn, ample": dict(cfg_batch="in turn", free_memory=2 ** 50)}.items():
            forwards.clear()
            runs[name] = (P.sample(model, cond, G, steps=2, seed=3, **kw), sorted(set(forwards)))
            assert model.unet.video_chunk is None, name  # restored
        model.unet.set_video_chunk(1)  # the caller's own choice: "auto" keeps it
        forwards.clear()
        runs["explicit chunk"] = (P.sample(model, cond, G, steps=2, seed=3, free_memory=2 ** 50),
                                  sorted(set(forwards)))
        assert model.unet.video_chunk == 1
    finally:
        model.unet.set_video_chunk(None)
        hook.remove()
    assert runs["auto, fits"][1] == runs["together, short"][1] == [2]
    assert runs["auto, short"][1] == runs["in turn, ample"][1] == runs["explicit chunk"][1] == [1]
    base = runs["auto, fits"][0]
    for name, (out, _) in runs.items():  # float32 rounding of another GEMM batch, grown by x ~ 700 noise: 2e-4
        torch.testing.assert_close(out, base, rtol=1e-3, atol=1e-3, msg=name)
    with pytest.raises(ValueError, match="cfg_batch='sometimes' is not one of 'auto', 'together', 'in turn'"):
        P.sample(model, cond, G, steps=1, cfg_batch="sometimes")
