"""Schedules and EDM samplers on a problem with a known answer: Gaussian data with its exact denoiser.

Data x0 ~ N(mu, s^2) elementwise. Then x_sigma = x0 + sigma n ~ N(mu, s^2 + sigma^2) and the exact denoiser is
D(x; sigma) = E[x0 | x_sigma = x] = mu + s^2 / (s^2 + sigma^2) (x - mu). The probability-flow ODE
dx/dsigma = (x - D)/sigma = (x - mu) sigma / (s^2 + sigma^2) keeps (x - mu) / sqrt(s^2 + sigma^2) constant, so
x_T at sigma_max ends at x0 = mu + (x_T - mu) s / sqrt(s^2 + sigma_max^2).
"""
from __future__ import annotations

import math

import pytest
import torch

from svd_core.samplers import (
    SAMPLERS,
    get_ancestral_step,
    sample,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
)
from svd_core.schedules import SCHEDULES, exponential_sigmas, get_sigmas, karras_sigmas

MU, S = 0.7, 0.5
SIGMA_MAX = 700.0


class GaussianDenoiser:
    """Exact D(x; sigma) for x0 ~ N(MU, S^2); records the sigma batches it was called with."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, sigma, **extra):
        self.calls.append((sigma.clone(), dict(extra)))
        assert sigma.shape == (x.shape[0],)
        sig = sigma.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))  # b -> b 1 ...
        return MU + S**2 / (S**2 + sig**2) * (x - MU)


def ode_endpoint(x_t, sigma_max=SIGMA_MAX):
    return MU + (x_t - MU) * S / math.sqrt(S**2 + sigma_max**2)


def start(shape=(2, 64), seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype) * SIGMA_MAX


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------ schedules
def test_karras_sigmas_match_formula():
    n = 25
    sig = karras_sigmas(n)
    assert sig.dtype == torch.float32 and sig.shape == (n + 1,)
    rho, lo, hi = 7.0, 0.002, 700.0
    expected = [(hi ** (1 / rho) + i / (n - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho for i in range(n)] + [0.0]
    torch.testing.assert_close(sig, torch.tensor(expected, dtype=torch.float32), rtol=1e-6, atol=0)
    assert sig[0].item() == pytest.approx(700.0, rel=1e-7)
    assert sig[-2].item() == pytest.approx(0.002, rel=1e-6)
    assert sig[-1].item() == 0.0
    assert torch.all(sig[1:] < sig[:-1])  # strictly descending


def test_karras_single_step_and_custom_range():
    assert karras_sigmas(1).tolist() == [700.0, 0.0]
    sig = karras_sigmas(3, sigma_min=0.1, sigma_max=10.0, rho=1.0)  # rho = 1 is linear in sigma
    torch.testing.assert_close(sig, torch.tensor([10.0, 5.05, 0.1, 0.0]))


def test_exponential_is_log_linear():
    sig = exponential_sigmas(10, 0.01, 100.0)
    assert sig.shape == (11,) and sig[-1] == 0 and sig.dtype == torch.float32
    logs = sig[:-1].double().log()
    steps = logs[1:] - logs[:-1]
    # constant log-ratio: log(0.01 / 100) / 9 per step
    torch.testing.assert_close(steps, torch.full_like(steps, math.log(1e-4) / 9), rtol=1e-5, atol=1e-6)
    assert sig[0].item() == pytest.approx(100.0, rel=1e-6) and sig[-2].item() == pytest.approx(0.01, rel=1e-6)
    assert exponential_sigmas(1, 0.01, 100.0).tolist() == [100.0, 0.0]


def test_get_sigmas_full_and_denoise_tail():
    torch.testing.assert_close(get_sigmas("karras", 25), karras_sigmas(25))
    torch.testing.assert_close(get_sigmas("exponential", 8, 0.1, 50.0), exponential_sigmas(8, 0.1, 50.0))
    # denoise 0.5: a 50-step schedule, keep its last 25 steps (+ the trailing 0)
    tail = get_sigmas("karras", 25, denoise=0.5)
    assert tail.shape == (26,) and tail[-1] == 0
    torch.testing.assert_close(tail, karras_sigmas(50)[-26:])
    assert tail[0] < 700.0 / 10  # starts part-way down, far below sigma_max
    # ComfyUI truncates: 10 / 0.6 = 16.67 -> 16-step schedule
    torch.testing.assert_close(get_sigmas("karras", 10, denoise=0.6), karras_sigmas(16)[-11:])
    # lower denoise -> lower starting noise
    starts = [get_sigmas("karras", 10, denoise=d)[0].item() for d in (1.0, 0.8, 0.5, 0.2)]
    assert starts == sorted(starts, reverse=True) and len(set(starts)) == 4


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(schedule="karras", steps=0), r"steps must be an integer >= 1, got 0"),
        (dict(schedule="karras", steps=2.5), r"steps must be an integer >= 1, got 2.5"),
        (dict(schedule="karras", steps=10, denoise=0.0), r"0 < denoise <= 1, got denoise=0.0"),
        (dict(schedule="karras", steps=10, denoise=1.5), r"0 < denoise <= 1, got denoise=1.5"),
        (dict(schedule="karras", steps=10, sigma_min=0.0), r"sigma_min must be a finite number > 0, got sigma_min=0.0"),
        (dict(schedule="karras", steps=10, sigma_min=5.0, sigma_max=1.0), r"sigma_max=1.0 with sigma_min=5.0.*0 < sigma_min < sigma_max"),
        (dict(schedule="cosine", steps=10), r"unknown schedule 'cosine'; expected one of \['exponential', 'karras'\]"),
    ],
)
def test_get_sigmas_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_sigmas(**kwargs)


def test_schedule_registry():
    assert set(SCHEDULES) == {"karras", "exponential"}
    with pytest.raises(ValueError, match=r"n must be an integer >= 1, got -1"):
        karras_sigmas(-1)
    with pytest.raises(ValueError, match=r"rho must be a finite number > 0"):
        karras_sigmas(5, rho=0)


# ------------------------------------------------------------------------------------------------ ODE accuracy
DETERMINISTIC = {"euler": sample_euler, "heun": sample_heun, "dpmpp_2m": sample_dpmpp_2m}


def ode_error(fn, steps, x_t):
    out = fn(GaussianDenoiser(), x_t, karras_sigmas(steps).double(), disable=True)
    return (out - ode_endpoint(x_t)).abs().max().item()


# (max error allowed at 320 steps, smallest error ratio allowed when the steps double from 160 to 320)
# With sigma_max = 700 and data std 0.5 the schedule spans 5.5 decades, so few-step errors are O(0.1-1) and
# the solvers only reach their asymptotic order from ~20 steps; measured at 320 steps: Euler 0.020,
# Heun 4.6e-4, DPM++(2M) 4.6e-4 (|x0 - mu| itself is up to ~1.5). First order halves the error per doubling
# (ratio ~2), second order quarters it (ratio ~4); the bounds below leave ~20-50% slack on those.
ORDER = {"euler": (0.025, 1.8), "heun": (1e-3, 3.5), "dpmpp_2m": (1e-3, 3.5)}


@pytest.mark.parametrize("name", sorted(DETERMINISTIC))
def test_deterministic_samplers_converge_to_ode_endpoint(name):
    x_t = start()
    errors = [ode_error(DETERMINISTIC[name], n, x_t) for n in (20, 40, 80, 160, 320)]
    # error strictly decreases as the step count grows ...
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    # ... lands on the closed form (a sampler that ignores the model or skips steps misses by O(1)) ...
    max_error, min_ratio = ORDER[name]
    assert errors[-1] < max_error, errors
    # ... at the solver's convergence order
    assert errors[-2] / errors[-1] > min_ratio, errors


def test_heun_more_accurate_than_euler():
    x_t = start()
    # measured Euler/Heun error ratio: 2.7 at 25 steps, 6.1 at 50, 13 at 100 (Heun's 2nd order pays off
    # from ~20 steps on this 5.5-decade schedule; at <= 10 steps both are far off)
    for n, factor in ((25, 2.0), (50, 4.0), (100, 8.0)):
        e_euler, e_heun = ode_error(sample_euler, n, x_t), ode_error(sample_heun, n, x_t)
        assert e_heun * factor < e_euler, (n, e_euler, e_heun)


def test_euler_with_zero_churn_and_ancestral_eta0_are_the_ode():
    x_t = start()
    sig = karras_sigmas(12).double()
    ref = sample_euler(GaussianDenoiser(), x_t, sig, disable=True)
    torch.testing.assert_close(sample_euler_ancestral(GaussianDenoiser(), x_t, sig, disable=True, eta=0.0), ref)
    torch.testing.assert_close(
        sample_dpmpp_2m_sde(GaussianDenoiser(), x_t, sig, disable=True, eta=0.0),
        sample_dpmpp_2m(GaussianDenoiser(), x_t, sig, disable=True),
    )


# ------------------------------------------------------------------------------------------------ distributions
# (sampler, options, steps, std tolerance). First-order samplers (Euler, Euler with churn, Euler ancestral)
# shrink the sample std by O(1/steps) on this 5.5-decade schedule: measured std - s at 200 steps is -0.010,
# -0.012 and -0.021, so they run 200 steps with a 0.03 tolerance. Second-order ones (Heun, DPM++ 2M, 2M SDE)
# measured within 0.007 at 100 steps, so 100 steps and 0.015.
ALL_CONFIGS = [
    ("euler", {}, 200, 0.03),
    ("euler", dict(s_churn=5.0), 200, 0.03),
    ("euler_ancestral", {}, 200, 0.03),
    ("heun", {}, 100, 0.015),
    ("heun", dict(s_churn=5.0, s_tmin=0.05, s_tmax=50.0), 100, 0.015),
    ("dpmpp_2m", {}, 100, 0.015),
    ("dpmpp_2m_sde", dict(solver_type="midpoint"), 100, 0.015),
    ("dpmpp_2m_sde", dict(solver_type="heun"), 100, 0.015),
]


@pytest.mark.parametrize("name, options, steps, std_tol", ALL_CONFIGS)
def test_samples_have_data_mean_and_std(name, options, steps, std_tol):
    # 100k elements: the standard error of the mean is s / sqrt(1e5) = 0.0016 and of the std about
    # s / sqrt(2e5) = 0.0011. Mean tolerance 0.01 = 6 standard errors (measured |bias| <= 0.0033 for all);
    # the std tolerance (above) covers the discretization bias. A sampler that returns the start, the data
    # mean, or unscaled noise misses by >= 0.5; one with the wrong noise amount misses the std by >> 0.03.
    x_t = start((4, 25_000), seed=1, dtype=torch.float32)
    out = sample(name, GaussianDenoiser(), x_t, karras_sigmas(steps), disable=True, generator=gen(7), **options)
    assert out.shape == x_t.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert abs(out.mean().item() - MU) < 0.01, out.mean().item()
    assert abs(out.std().item() - S) < std_tol, out.std().item()


# ------------------------------------------------------------------------------------------------ reproducibility
STOCHASTIC = [
    ("euler", dict(s_churn=2.0)),
    ("heun", dict(s_churn=2.0)),
    ("euler_ancestral", {}),
    ("dpmpp_2m_sde", {}),
]


@pytest.mark.parametrize("name, options", STOCHASTIC)
def test_seed_reproducibility(name, options):
    x_t = start((2, 256), dtype=torch.float32)
    sig = karras_sigmas(8)
    a = sample(name, GaussianDenoiser(), x_t, sig, disable=True, generator=gen(123), **options)
    # drawing from the global RNG in between must not matter
    torch.randn(10)
    b = sample(name, GaussianDenoiser(), x_t, sig, disable=True, generator=gen(123), **options)
    c = sample(name, GaussianDenoiser(), x_t, sig, disable=True, generator=gen(124), **options)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("name, options", STOCHASTIC)
def test_global_rng_untouched_and_generator_required(name, options):
    x_t = start((2, 16), dtype=torch.float32)
    state = torch.random.get_rng_state()
    sample(name, GaussianDenoiser(), x_t, karras_sigmas(4), disable=True, generator=gen(0), **options)
    assert torch.equal(state, torch.random.get_rng_state())
    with pytest.raises(ValueError, match=r"needs random noise, but generator is None"):
        sample(name, GaussianDenoiser(), x_t, karras_sigmas(4), disable=True, **options)


def test_deterministic_samplers_need_no_generator():
    x_t = start((2, 16), dtype=torch.float32)
    for name in ("euler", "heun", "dpmpp_2m"):
        a = sample(name, GaussianDenoiser(), x_t, karras_sigmas(4), disable=True)
        b = sample(name, GaussianDenoiser(), x_t, karras_sigmas(4), disable=True, generator=gen(5))
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------ contract
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_callback_once_per_step_and_model_contract(name):
    x_t = start((3, 8), dtype=torch.float32)
    sig = karras_sigmas(6)
    seen = []
    model = GaussianDenoiser()
    sample(name, model, x_t, sig, extra_args={"cond": "c"}, callback=seen.append, disable=True, generator=gen(0))
    assert [d["i"] for d in seen] == list(range(6))
    for d in seen:
        assert set(d) == {"i", "x", "sigma", "sigma_hat", "denoised"}
        assert d["x"].shape == x_t.shape and d["denoised"].shape == x_t.shape
        assert d["sigma"] == pytest.approx(sig[d["i"]].item())
    # Heun: 2 model calls per step except the last Euler step to sigma 0; all others 1 per step
    assert len(model.calls) == (2 * 6 - 1 if name == "heun" else 6)
    assert all(extra == {"cond": "c"} for _, extra in model.calls)
    assert model.calls[0][0].tolist() == pytest.approx([700.0] * 3)


def test_callback_can_cancel():
    class Cancelled(Exception):
        pass

    def cb(d):
        if d["i"] == 2:
            raise Cancelled

    model = GaussianDenoiser()
    with pytest.raises(Cancelled):
        sample_heun(model, start((1, 4)), karras_sigmas(10), callback=cb, disable=True)
    assert len(model.calls) == 2 * 2 + 1  # steps 0 and 1 (two calls each), then step 2's first call


def test_churn_gamma_matches_reference_rule():
    # sgm EulerEDMSampler: gamma = min(s_churn / (len(sigmas) - 1), sqrt(2) - 1) where s_tmin <= sigma <= s_tmax
    sig = karras_sigmas(10)
    for s_churn, expected_gamma in ((3.0, 0.3), (20.0, 2**0.5 - 1)):
        seen = []
        sample_euler(GaussianDenoiser(), start((1, 4), dtype=torch.float32), sig, callback=seen.append,
                     disable=True, generator=gen(0), s_churn=s_churn, s_tmin=0.1, s_tmax=100.0)
        for d in seen:
            sigma = sig[d["i"]].item()
            gamma = expected_gamma if 0.1 <= sigma <= 100.0 else 0.0
            assert d["sigma_hat"] == pytest.approx(sigma * (1 + gamma), rel=1e-6), (d["i"], sigma)
        assert any(d["sigma_hat"] == d["sigma"] for d in seen) and any(d["sigma_hat"] > d["sigma"] for d in seen)


def test_ancestral_step_split():
    down, up = get_ancestral_step(10.0, 5.0, eta=1.0)
    assert down**2 + up**2 == pytest.approx(25.0)
    assert up == pytest.approx(math.sqrt(25 * (100 - 25) / 100))
    assert get_ancestral_step(10.0, 5.0, eta=0.0) == (5.0, 0.0)
    assert get_ancestral_step(10.0, 0.0) == (0.0, 0.0)


def test_video_shaped_latents_and_partial_schedule():
    # "(b t) c h w" latents, denoise < 1 starts from a noised clean latent and returns near the data mean
    x0 = torch.full((2 * 3, 4, 2, 2), MU)
    sig = get_sigmas("karras", 50, denoise=0.3)  # tail of a 166-step schedule, from sigma ~1.37
    x = x0 + torch.randn(x0.shape, generator=gen(3)) * sig[0]
    out = sample_dpmpp_2m(GaussianDenoiser(), x, sig, disable=True)
    assert out.shape == x0.shape
    expected = MU + (x - MU) * S / math.sqrt(S**2 + sig[0].item() ** 2)  # ODE from sig[0] to 0
    # measured max error 1.0e-3 at 50 steps (|x - mu| is up to ~4); an untouched x would miss by ~1
    torch.testing.assert_close(out, expected, atol=3e-3, rtol=0)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda x: sample("dpm_fast", GaussianDenoiser(), x, karras_sigmas(3)),
         r"unknown sampler 'dpm_fast'; expected one of \['dpmpp_2m', 'dpmpp_2m_sde', 'euler', 'euler_ancestral', 'heun'\]"),
        (lambda x: sample_euler(GaussianDenoiser(), x, torch.tensor([1.0, 2.0, 0.0])), r"non-increasing"),
        (lambda x: sample_euler(GaussianDenoiser(), x, torch.tensor([1.0])), r"at least 2 noise levels"),
        (lambda x: sample_euler(GaussianDenoiser(), x, torch.tensor([1.0, 0.0, 0.0])), r"0 only in the last entry"),
        (lambda x: sample_euler(GaussianDenoiser(), x, karras_sigmas(3), s_noise=-1.0), r"s_noise must be a finite number >= 0"),
        (lambda x: sample_dpmpp_2m_sde(GaussianDenoiser(), x, karras_sigmas(3), generator=gen(0), solver_type="rk4"),
         r"solver_type must be 'midpoint' or 'heun', got 'rk4'"),
        (lambda x: sample_euler_ancestral(GaussianDenoiser(), x, karras_sigmas(3), generator=1234),
         r"generator must be a torch.Generator, got int"),
    ],
)
def test_sampler_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call(start((1, 4), dtype=torch.float32))
