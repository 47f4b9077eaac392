"""EDM samplers as plain functions in k-diffusion's contract (Karras et al. 2022; Lu et al. 2022, DPM-Solver++).

Contract, shared by every sampler::

    sample_x(model, x, sigmas, extra_args=None, callback=None, disable=None, *, generator=None, ...)

* ``model(x, sigma_batch, **extra_args)`` returns the denoised estimate D(x; sigma) with x's shape;
  ``sigma_batch`` has shape ``(x.shape[0],)``. The samplers never look at the other axes, so x may be
  ``(b t) c h w`` video latents or anything else.
* ``x`` is the starting sample at noise level ``sigmas[0]`` (``noise * sigmas[0]`` for text/image-to-video,
  ``latent + noise * sigmas[0]`` for video-to-video). The reference sgm samplers scale the noise by
  ``sqrt(1 + sigma_max^2)`` instead; that is the caller's choice, not the sampler's.
* ``sigmas``: 1-D, descending, usually ending in 0 (see `svd_core.schedules`); ``len(sigmas) - 1`` steps run.
* ``callback(dict(i=, x=, sigma=, sigma_hat=, denoised=))`` is called once per step after the model call;
  raising from it cancels sampling (the exception propagates unchanged).
* ``disable`` is passed to tqdm (True hides the bar, None hides it when not attached to a terminal).
* All randomness comes from ``generator`` (a ``torch.Generator``) through
  ``torch.randn(shape, generator=generator, device=generator.device, dtype=...)``; the global RNG is never
  used. Noise is drawn on the generator's device and moved to x's device, so a CPU generator gives the same
  noise whatever device x lives on. Samplers that need noise raise a ValueError when ``generator`` is None.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
from tqdm.auto import trange

__all__ = [
    "sample_euler",
    "sample_heun",
    "sample_euler_ancestral",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "SAMPLERS",
    "sample",
    "get_ancestral_step",
]

Model = Callable[..., torch.Tensor]
Callback = Optional[Callable[[dict], Any]]


# ----------------------------------------------------------------------------------------------- helpers
def _prepare(x: torch.Tensor, sigmas, extra_args) -> tuple[list[float], torch.dtype, dict]:
    """Validate inputs; return sigmas as Python floats (float64 step maths), the sigma dtype, and extra_args."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point torch.Tensor, got {type(x).__name__}"
                         + (f" of dtype {x.dtype}" if isinstance(x, torch.Tensor) else ""))
    if x.ndim < 1:
        raise ValueError("x must have a leading batch dimension, got a 0-d tensor")
    s = torch.as_tensor(sigmas)
    if s.ndim != 1 or s.numel() < 2:
        raise ValueError(f"sigmas must be a 1-D sequence of at least 2 noise levels (steps + 1), got shape {tuple(s.shape)}")
    vals = [float(v) for v in s.detach().to("cpu", torch.float64)]
    if any(not math.isfinite(v) or v < 0 for v in vals):
        raise ValueError(f"sigmas must be finite and >= 0, got {vals}")
    if any(b > a for a, b in zip(vals, vals[1:])):
        raise ValueError(f"sigmas must be non-increasing (from high noise to low), got {vals}")
    if any(v == 0 for v in vals[:-1]):
        raise ValueError(f"sigmas may be 0 only in the last entry (the clean sample), got {vals}")
    # The model sees sigmas in float32 (or float64 if given so), never in a half dtype that would round them.
    sigma_dtype = s.dtype if s.dtype in (torch.float32, torch.float64) else torch.float32
    return vals, sigma_dtype, ({} if extra_args is None else extra_args)


def _sigma_batch(x: torch.Tensor, sigma: float, dtype: torch.dtype) -> torch.Tensor:
    """One sigma per batch element: shape (x.shape[0],)."""
    return torch.full((x.shape[0],), sigma, device=x.device, dtype=dtype)


def _require_generator(generator, sampler: str, why: str) -> None:
    """Stochastic steps need an explicit torch.Generator (the global RNG is never used)."""
    if generator is None:
        raise ValueError(
            f"{sampler}: {why} needs random noise, but generator is None; pass "
            f"generator=torch.Generator(device).manual_seed(seed) (or make the sampler deterministic)"
        )
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"{sampler}: generator must be a torch.Generator, got {type(generator).__name__}")


def _noise(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Standard normal noise shaped like x, drawn from `generator` on its own device, then moved to x."""
    n = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
    return n.to(x.device)


def _to_d(x: torch.Tensor, sigma: float, denoised: torch.Tensor) -> torch.Tensor:
    """Probability-flow ODE derivative dx/dsigma = (x - D(x; sigma)) / sigma (Karras et al. 2022 eq. 3 with sigma(t) = t)."""
    return (x - denoised) / sigma


def _check_nonneg(sampler: str, **values: float) -> None:
    for name, v in values.items():
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{sampler}: {name} must be a finite number >= 0, got {name}={v!r}")


def _churn_gamma(sigma: float, n_sigmas: int, s_churn: float, s_tmin: float, s_tmax: float) -> float:
    """Karras et al. 2022 Alg. 2 line 5 as in sgm `EDMSampler`: min(S_churn/(len(sigmas)-1), sqrt(2)-1) inside [S_tmin, S_tmax]."""
    if s_churn > 0 and s_tmin <= sigma <= s_tmax:
        return min(s_churn / (n_sigmas - 1), 2**0.5 - 1)
    return 0.0


def get_ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a step into a deterministic move to sigma_down and fresh noise sigma_up, sigma_down^2 + sigma_up^2 = sigma_to^2 (DDIM eta, Song et al. 2021)."""
    if eta == 0 or sigma_to == 0:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * math.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2))
    sigma_down = math.sqrt(max(sigma_to**2 - sigma_up**2, 0.0))
    return sigma_down, sigma_up


def _emit(callback: Callback, i: int, x, sigma: float, sigma_hat: float, denoised) -> None:
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})


# ----------------------------------------------------------------------------------------------- EDM Euler / Heun
def _edm_sample(
    name: str, second_order: bool, model: Model, x, sigmas, extra_args, callback, disable,
    generator, s_churn, s_tmin, s_tmax, s_noise,
) -> torch.Tensor:
    """Shared loop of Karras et al. 2022 Alg. 2 (churn) with an Euler (Alg. 1 line 5) or Heun (Alg. 1 lines 6-8) step."""
    vals, sdt, extra_args = _prepare(x, sigmas, extra_args)
    _check_nonneg(name, s_churn=s_churn, s_noise=s_noise)
    n = len(vals)
    if s_churn > 0 and any(_churn_gamma(v, n, s_churn, s_tmin, s_tmax) > 0 for v in vals[:-1]):
        _require_generator(generator, name, f"s_churn={s_churn}")
    for i in trange(n - 1, disable=disable, desc=name):
        sigma, sigma_next = vals[i], vals[i + 1]
        gamma = _churn_gamma(sigma, n, s_churn, s_tmin, s_tmax)
        sigma_hat = sigma * (gamma + 1.0)
        if gamma > 0:
            # Alg. 2 lines 6-7: raise the noise level from sigma to sigma_hat with fresh noise.
            eps = _noise(x, generator) * s_noise
            x = x + eps * math.sqrt(sigma_hat**2 - sigma**2)
        denoised = model(x, _sigma_batch(x, sigma_hat, sdt), **extra_args)
        _emit(callback, i, x, sigma, sigma_hat, denoised)
        d = _to_d(x, sigma_hat, denoised)
        dt = sigma_next - sigma_hat
        x_next = x + d * dt  # Euler step (Alg. 1 line 5)
        if second_order and sigma_next > 0:
            # Heun correction (Alg. 1 lines 6-8); the final step to sigma = 0 stays an Euler step.
            denoised_2 = model(x_next, _sigma_batch(x, sigma_next, sdt), **extra_args)
            d_2 = _to_d(x_next, sigma_next, denoised_2)
            x_next = x + (d + d_2) * (0.5 * dt)
        x = x_next
    return x


@torch.no_grad()
def sample_euler(
    model: Model, x: torch.Tensor, sigmas, extra_args: Optional[dict] = None, callback: Callback = None,
    disable: Optional[bool] = None, *, generator: Optional[torch.Generator] = None,
    s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
) -> torch.Tensor:
    """Euler sampler with optional churn (Karras et al. 2022 Alg. 2 without the 2nd-order step; sgm `EulerEDMSampler`)."""
    return _edm_sample("sample_euler", False, model, x, sigmas, extra_args, callback, disable,
                       generator, s_churn, s_tmin, s_tmax, s_noise)


@torch.no_grad()
def sample_heun(
    model: Model, x: torch.Tensor, sigmas, extra_args: Optional[dict] = None, callback: Callback = None,
    disable: Optional[bool] = None, *, generator: Optional[torch.Generator] = None,
    s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
) -> torch.Tensor:
    """Heun 2nd-order sampler with optional churn (Karras et al. 2022 Alg. 1/2; sgm `HeunEDMSampler`)."""
    return _edm_sample("sample_heun", True, model, x, sigmas, extra_args, callback, disable,
                       generator, s_churn, s_tmin, s_tmax, s_noise)


# ----------------------------------------------------------------------------------------------- ancestral
@torch.no_grad()
def sample_euler_ancestral(
    model: Model, x: torch.Tensor, sigmas, extra_args: Optional[dict] = None, callback: Callback = None,
    disable: Optional[bool] = None, *, generator: Optional[torch.Generator] = None,
    eta: float = 1.0, s_noise: float = 1.0,
) -> torch.Tensor:
    """Ancestral Euler: Euler step to sigma_down, then add sigma_up fresh noise (k-diffusion; Song et al. 2021 DDIM eta)."""
    vals, sdt, extra_args = _prepare(x, sigmas, extra_args)
    _check_nonneg("sample_euler_ancestral", eta=eta, s_noise=s_noise)
    if eta > 0 and any(v > 0 for v in vals[1:]):
        _require_generator(generator, "sample_euler_ancestral", f"eta={eta}")
    for i in trange(len(vals) - 1, disable=disable, desc="sample_euler_ancestral"):
        sigma, sigma_next = vals[i], vals[i + 1]
        denoised = model(x, _sigma_batch(x, sigma, sdt), **extra_args)
        _emit(callback, i, x, sigma, sigma, denoised)
        sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next, eta)
        x = x + _to_d(x, sigma, denoised) * (sigma_down - sigma)
        if sigma_next > 0 and sigma_up > 0:
            x = x + _noise(x, generator) * (s_noise * sigma_up)
    return x


# ----------------------------------------------------------------------------------------------- DPM-Solver++
@torch.no_grad()
def sample_dpmpp_2m(
    model: Model, x: torch.Tensor, sigmas, extra_args: Optional[dict] = None, callback: Callback = None,
    disable: Optional[bool] = None, *, generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """DPM-Solver++(2M), multistep 2nd order in lambda = -log sigma (Lu et al. 2022, Alg. 2; deterministic)."""
    vals, sdt, extra_args = _prepare(x, sigmas, extra_args)
    old_denoised = None
    h_last = None
    for i in trange(len(vals) - 1, disable=disable, desc="sample_dpmpp_2m"):
        sigma, sigma_next = vals[i], vals[i + 1]
        denoised = model(x, _sigma_batch(x, sigma, sdt), **extra_args)
        _emit(callback, i, x, sigma, sigma, denoised)
        if sigma_next == 0:
            x = denoised  # limit of the update as lambda_next -> inf
            h = None
        else:
            h = math.log(sigma) - math.log(sigma_next)  # lambda_next - lambda, lambda = -log sigma
            if old_denoised is None or h_last is None:
                d = denoised  # first step: DPM-Solver++(1) = DDIM
            else:
                r = h_last / h
                d = denoised * (1 + 1 / (2 * r)) - old_denoised * (1 / (2 * r))
            x = x * (sigma_next / sigma) - d * math.expm1(-h)
        old_denoised = denoised
        h_last = h
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(
    model: Model, x: torch.Tensor, sigmas, extra_args: Optional[dict] = None, callback: Callback = None,
    disable: Optional[bool] = None, *, generator: Optional[torch.Generator] = None,
    eta: float = 1.0, s_noise: float = 1.0, solver_type: str = "midpoint",
) -> torch.Tensor:
    """DPM-Solver++(2M) SDE (Lu et al. 2022 SDE-DPM-Solver++; k-diffusion), Gaussian noise instead of a Brownian tree."""
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"sample_dpmpp_2m_sde: solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    vals, sdt, extra_args = _prepare(x, sigmas, extra_args)
    _check_nonneg("sample_dpmpp_2m_sde", eta=eta, s_noise=s_noise)
    if eta > 0 and any(v > 0 for v in vals[1:]):
        _require_generator(generator, "sample_dpmpp_2m_sde", f"eta={eta}")
    old_denoised = None
    h_last = None
    for i in trange(len(vals) - 1, disable=disable, desc="sample_dpmpp_2m_sde"):
        sigma, sigma_next = vals[i], vals[i + 1]
        denoised = model(x, _sigma_batch(x, sigma, sdt), **extra_args)
        _emit(callback, i, x, sigma, sigma, denoised)
        if sigma_next == 0:
            x = denoised
            h = None
        else:
            h = math.log(sigma) - math.log(sigma_next)
            eta_h = eta * h
            # phi = 1 - exp(-h - eta h): weight of the data prediction in the exponential integrator.
            phi = -math.expm1(-h - eta_h)
            x = x * (sigma_next / sigma * math.exp(-eta_h)) + denoised * phi
            if old_denoised is not None and h_last is not None:
                r = h_last / h
                if solver_type == "heun":
                    coef = phi / (-h - eta_h) + 1
                else:  # midpoint
                    coef = 0.5 * phi
                x = x + (denoised - old_denoised) * (coef / r)
            if eta > 0:
                # Fresh noise keeps the marginal at sigma_next: std sigma_next * sqrt(1 - exp(-2 eta h)).
                x = x + _noise(x, generator) * (sigma_next * math.sqrt(-math.expm1(-2 * eta_h)) * s_noise)
        old_denoised = denoised
        h_last = h
    return x


# ----------------------------------------------------------------------------------------------- registry
SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "euler_ancestral": sample_euler_ancestral,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
}


def sample(
    name: str, model: Model, x: torch.Tensor, sigmas, extra_args: Optional[dict] = None, callback: Callback = None,
    disable: Optional[bool] = None, *, generator: Optional[torch.Generator] = None, **options: Any,
) -> torch.Tensor:
    """Run the sampler registered under `name` (see SAMPLERS) with k-diffusion's contract."""
    fn = SAMPLERS.get(name)
    if fn is None:
        raise ValueError(f"unknown sampler {name!r}; expected one of {sorted(SAMPLERS)}")
    return fn(model, x, sigmas, extra_args, callback, disable, generator=generator, **options)
