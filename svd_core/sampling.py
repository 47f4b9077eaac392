"""The one sampling driver of the engine: noise schedule, starting sample, sampler loop, progress and cancel over any
denoiser ``D(x; sigma)`` (EDM, Karras et al. 2022, Alg. 1-2; reference sgm `modules/diffusionmodules/sampling.py`
`EulerEDMSampler.prepare_sampling_loop` and `scripts/sampling/simple_video_sample.py`).

`pipeline.sample` (a guided denoiser over one clip) and `long_video.sample_windows` (the blend of guided denoisers
over sliding windows) differ only in the denoiser they hand to `drive`; everything else (the sampler check, the
variant's default steps and seed, the sigmas, the seeded noise and its sqrt(1 + sigma_max^2) scaling, the per-step
progress and cancel) is written once, here. The samplers keep k-diffusion's contract (`svd_core.samplers`).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from .progress import CancelFn, ProgressFn, report
from .samplers import SAMPLERS
from .schedules import get_sigmas

__all__ = ["NOISE_DEVICES", "draw_noise", "start_sample", "drive"]

Denoiser = Callable[..., torch.Tensor]  # k-diffusion style model(x, sigma_batch) -> D(x; sigma)
# where the initial noise is drawn: "cpu" (a seeded CPU generator: the same numbers on every machine, the default)
# or "device" (a generator on the UNet's device, as the reference's torch.randn(shape, device="cuda"))
NOISE_DEVICES = ("cpu", "device")


def draw_noise(shape: Sequence[int], *, generator: torch.Generator, seed: int, noise_device: str = "cpu",
               device: torch.device | str | None = None) -> torch.Tensor:
    """Unit Gaussian noise of `shape`: from `generator` ("cpu"), or from a generator on `device` seeded with `seed`
    ("device", default: the generator's; reference: `torch.manual_seed(seed)`, `torch.randn(shape, device=device)`)."""
    if noise_device not in NOISE_DEVICES:
        raise ValueError(f"noise_device={noise_device!r}; expected one of {NOISE_DEVICES}")
    if noise_device == "cpu":
        return torch.randn(tuple(shape), generator=generator, device=generator.device)
    device = torch.device(device) if device is not None else generator.device
    return torch.randn(tuple(shape), generator=torch.Generator(device).manual_seed(seed), device=device)


def start_sample(noise: torch.Tensor, sigmas: torch.Tensor, init_latent: torch.Tensor | None = None) -> torch.Tensor:
    """The sample at noise level sigmas[0]: ``init + sigma_0 n`` from a clean latent (video-to-video, SDEdit), else
    ``sqrt(1 + sigma_0^2) n``: the reference scales unit noise by sqrt(1 + sigma_max^2), not sigma_max
    (EulerEDMSampler, diffusers alike)."""
    if init_latent is not None:
        return init_latent.float() + noise.float().to(init_latent.device) * sigmas[0]
    return noise.float() * torch.sqrt(1.0 + sigmas[0] ** 2)


def drive(denoiser: Denoiser, spec, shape: Sequence[int], *, device: torch.device | str | None = None,
          sampler: str = "euler", schedule: str = "karras", steps: int | None = None, seed: int | None = None,
          generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
          init_latent: torch.Tensor | None = None, denoise: float = 1.0, noise_device: str = "cpu",
          callback: ProgressFn | None = None, cancel: CancelFn | None = None,
          sampler_options: dict | None = None,
          on_denoised: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
    """Sample a latent of `shape` with `denoiser` -> the final sample (on `device`, where the denoiser runs).

    `spec` (a `ModelSpec`) gives sigma_min / sigma_max and, for `steps` / `seed` None, the variant's reference values.
    `noise` None draws it seeded (`draw_noise`); `generator` (default: a CPU one seeded with `seed`) also feeds the
    stochastic samplers. `init_latent` with `denoise` < 1 starts part-way down the schedule (video-to-video).
    After every step `cancel()` is polled (True raises `Cancelled`), `on_denoised(x0)` gets the step's x0 prediction
    (live previews) and ``callback(i, steps, "sampling")`` is called."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {sorted(SAMPLERS)}")
    if noise_device not in NOISE_DEVICES:
        raise ValueError(f"noise_device={noise_device!r}; expected one of {NOISE_DEVICES}")
    shape = tuple(shape)
    steps = spec.steps if steps is None else steps
    seed = spec.seed if seed is None else seed
    sigmas = get_sigmas(schedule, steps, spec.sigma_min, spec.sigma_max, denoise=denoise)
    generator = generator or torch.Generator().manual_seed(seed)
    if noise is None:
        noise = draw_noise(shape, generator=generator, seed=seed, noise_device=noise_device, device=device)
    if tuple(noise.shape) != shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {shape}")
    if init_latent is not None and tuple(init_latent.shape) != shape:
        raise ValueError(f"init_latent has shape {tuple(init_latent.shape)}, expected {shape}")
    if init_latent is None and denoise < 1.0:
        raise ValueError(f"denoise={denoise} < 1 needs an init_latent (an encoded video) to start from")
    x = start_sample(noise, sigmas, init_latent)
    if device is not None:
        x = x.to(device)  # the loop runs where the denoiser is; noise was drawn on the generator's device
    total = len(sigmas) - 1

    def on_step(info: dict) -> None:
        done = info["i"] + 1
        if on_denoised is not None:
            on_denoised(info["denoised"])
        report(callback, cancel, done, total, "sampling", f"sampling cancelled at step {done}/{total}")

    return SAMPLERS[sampler](denoiser, x, sigmas, callback=on_step, disable=True, generator=generator,
                             **(sampler_options or {}))
