"""Noise-level (sigma) schedules for EDM sampling (Karras et al. 2022, Sec. 3 and eq. 5).

Every schedule returns a 1-D float32 tensor of ``steps + 1`` sigmas: ``steps`` descending positive noise
levels followed by a trailing 0 (the clean sample), the layout k-diffusion samplers expect. The maths runs in
float64 and is cast to float32 once at the end, so a schedule does not depend on the caller's default dtype.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

__all__ = ["karras_sigmas", "exponential_sigmas", "SCHEDULES", "get_sigmas"]

# Reference `EDMDiscretization` defaults for the SVD configs (scripts/sampling/configs/*.yaml).
SIGMA_MIN = 0.002
SIGMA_MAX = 700.0
RHO = 7.0


def _check_steps(n, name: str = "steps") -> int:
    """Validate a step count (an int >= 1; bools are rejected)."""
    if isinstance(n, bool) or not isinstance(n, int):
        # Accept integral floats / numpy ints, reject anything else with a clear message.
        try:
            as_int = int(n)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be an integer >= 1, got {n!r}") from None
        if isinstance(n, bool) or as_int != n:
            raise ValueError(f"{name} must be an integer >= 1, got {n!r}")
        n = as_int
    if n < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {n}")
    return n


def _check_range(sigma_min, sigma_max) -> tuple[float, float]:
    """Validate 0 < sigma_min < sigma_max (both finite)."""
    try:
        lo, hi = float(sigma_min), float(sigma_max)
    except (TypeError, ValueError):
        raise ValueError(
            f"sigma_min and sigma_max must be numbers with 0 < sigma_min < sigma_max, "
            f"got sigma_min={sigma_min!r}, sigma_max={sigma_max!r}"
        ) from None
    if not (math.isfinite(lo) and lo > 0):
        raise ValueError(f"sigma_min must be a finite number > 0, got sigma_min={sigma_min!r}")
    if not (math.isfinite(hi) and hi > lo):
        raise ValueError(
            f"sigma_max must be a finite number greater than sigma_min, "
            f"got sigma_max={sigma_max!r} with sigma_min={sigma_min!r} (expected 0 < sigma_min < sigma_max)"
        )
    return lo, hi


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    """(n,) float64 -> (n + 1,) float32 with the trailing 0 of the clean sample."""
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(torch.float32)


def karras_sigmas(n: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO) -> torch.Tensor:
    """Karras et al. 2022 eq. 5 (reference `EDMDiscretization`): (max^(1/rho) + i/(n-1) (min^(1/rho) - max^(1/rho)))^rho, then 0."""
    n = _check_steps(n, "n")
    lo, hi = _check_range(sigma_min, sigma_max)
    rho = float(rho)
    if not (math.isfinite(rho) and rho > 0):
        raise ValueError(f"rho must be a finite number > 0, got rho={rho!r}")
    # i / (n - 1) for i = 0..n-1; a single step (n = 1) is just sigma_max, like torch.linspace(0, 1, 1) = [0].
    ramp = torch.arange(n, dtype=torch.float64) / max(n - 1, 1)
    max_inv_rho = hi ** (1.0 / rho)
    min_inv_rho = lo ** (1.0 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return _append_zero(sigmas)


def exponential_sigmas(n: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX) -> torch.Tensor:
    """Log-linear schedule: log sigma evenly spaced from log sigma_max to log sigma_min (k-diffusion `get_sigmas_exponential`), then 0."""
    n = _check_steps(n, "n")
    lo, hi = _check_range(sigma_min, sigma_max)
    ramp = torch.arange(n, dtype=torch.float64) / max(n - 1, 1)
    sigmas = torch.exp(math.log(hi) + ramp * (math.log(lo) - math.log(hi)))
    return _append_zero(sigmas)


# name -> f(n, sigma_min, sigma_max) returning n + 1 float32 sigmas ending in 0.
SCHEDULES: dict[str, Callable[..., torch.Tensor]] = {
    "karras": karras_sigmas,
    "exponential": exponential_sigmas,
}


def get_sigmas(
    schedule: str,
    steps: int,
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    denoise: float = 1.0,
) -> torch.Tensor:
    """Sigmas for `steps` sampling steps of a named schedule; denoise < 1 keeps the schedule's low-noise tail.

    Partial denoising (video-to-video) follows ComfyUI's `KSampler.set_steps` / `BasicScheduler` exactly:
    a longer schedule of ``int(steps / denoise)`` steps is built (Python ``int`` truncation, as ComfyUI does;
    note this is truncation, not rounding: steps=10, denoise=0.6 builds 16 steps) and only its last
    ``steps + 1`` sigmas are kept, so exactly ``steps`` model steps run, starting part-way down the schedule
    at a lower noise level. ``denoise = 1`` is the full schedule. The result always has ``steps + 1`` entries
    ending in 0.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {sorted(SCHEDULES)}")
    steps = _check_steps(steps, "steps")
    try:
        d = float(denoise)
    except (TypeError, ValueError):
        raise ValueError(f"denoise must be a number with 0 < denoise <= 1, got denoise={denoise!r}") from None
    if not (0.0 < d <= 1.0):  # also rejects NaN
        raise ValueError(f"denoise must satisfy 0 < denoise <= 1, got denoise={denoise!r}")
    fn = SCHEDULES[schedule]
    if d == 1.0:
        return fn(steps, sigma_min, sigma_max)
    total = max(int(steps / d), steps)  # steps / d >= steps in exact maths; max() guards float edge cases
    sigmas = fn(total, sigma_min, sigma_max)  # (total + 1,)
    return sigmas[-(steps + 1):].clone()  # (steps + 1,)
