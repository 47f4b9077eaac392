"""Per-frame classifier-free guidance scales (SVD paper App. D.4.1, Fig. 15; reference sgm `guiders.py`).

A guider gives every frame its own scale w_t and combines the two model branches as
``uncond + w_t * (cond - uncond)`` (Ho & Salimans 2022 CFG, applied per frame).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

import torch
from einops import rearrange

__all__ = ["KINDS", "FUSINGS", "frame_scales", "combine", "Guidance", "defaults_for"]

KINDS = ("vanilla", "linear", "triangle", "trapezoid", "ramp_hold")
FUSINGS = ("max", "mean", "multiply")
Period = Union[float, Sequence[float]]


def _check_num_frames(num_frames) -> int:
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be an integer >= 1, got {num_frames!r}")
    return num_frames


def _check_scale(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number, got {name}={value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {name}={value!r}")
    return v


def _periods(period: Period) -> tuple[float, ...]:
    """A single period or a non-empty list of periods, each a finite number > 0."""
    items = (period,) if isinstance(period, (int, float)) and not isinstance(period, bool) else period
    try:
        out = tuple(float(p) for p in items)
    except (TypeError, ValueError):
        raise ValueError(f"period must be a number > 0 or a non-empty list of them, got period={period!r}") from None
    if not out or any(not (math.isfinite(p) and p > 0) for p in out):
        raise ValueError(f"period must be a number > 0 or a non-empty list of them, got period={period!r}")
    return out


def _check_edge_perc(value) -> float:
    v = _check_scale("edge_perc", value)
    if not 0 <= v <= 0.5:
        raise ValueError(f"edge_perc must satisfy 0 <= edge_perc <= 0.5 (fraction of frames per edge), "
                         f"got edge_perc={value!r}")
    return v


def _triangle_wave(values: torch.Tensor, period: float) -> torch.Tensor:
    """Reference `TrianglePredictionGuider.triangle_wave`: 2 |v/p - floor(v/p + 1/2)|, in [0, 1]."""
    return 2 * (values / period - torch.floor(values / period + 0.5)).abs()


def frame_scales(
    kind: str,
    num_frames: int,
    min_scale: float = 1.0,
    max_scale: float = 2.5,
    *,
    period: Period = 1.0,
    period_fusing: str = "max",
    ramp: float = 0.25,
    edge_perc: float = 0.1,
) -> torch.Tensor:
    """Guidance scale per frame, float32 (num_frames,), for the guiders of SVD App. D.4.1 / Fig. 15.

    * ``"vanilla"``: constant ``max_scale`` (reference `VanillaCFG`).
    * ``"linear"``: ``linspace(min_scale, max_scale, num_frames)`` (reference `LinearPredictionGuider`).
    * ``"triangle"``: reference `TrianglePredictionGuider`: with ``v = linspace(0, 1, num_frames)``, one
      triangle wave ``2 |v/p - floor(v/p + 0.5)|`` per period ``p`` (``period`` is a number or a list),
      fused elementwise by ``period_fusing`` ("max", "mean" or "multiply"), mapped to
      ``wave * (max_scale - min_scale) + min_scale``. With period 1 it is ``min_scale`` at both ends and
      ``max_scale`` in the middle.
    * ``"trapezoid"``: reference `TrapezoidPredictionGuider` value for value: with ``n = int(num_frames *
      edge_perc)`` (default ``edge_perc`` 0.1, the reference's), ``linspace(min_scale, max_scale, n)`` over the first
      ``n`` frames, **1.0** (no guidance) on the ``num_frames - 2n`` middle frames, and the rise reversed over the
      last ``n`` frames (``0 <= edge_perc <= 0.5``).
    * ``"ramp_hold"``: with ``u = linspace(0, 1, num_frames)``, ``w = clamp(min(u, 1 - u) / ramp, 0, 1)`` and
      scale ``min_scale + w (max_scale - min_scale)``: it rises linearly from ``min_scale`` at the first frame
      to ``max_scale`` over the first ``ramp`` fraction of the clip, stays at ``max_scale``, and falls back to
      ``min_scale`` over the last ``ramp`` fraction (``0 < ramp <= 0.5``; ``ramp = 0.5`` is the period-1
      triangle). This suite's own shape (it was called "trapezoid" before it followed the reference).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown guidance kind {kind!r}; expected one of {list(KINDS)}")
    t = _check_num_frames(num_frames)
    lo = _check_scale("min_scale", min_scale)
    hi = _check_scale("max_scale", max_scale)
    if kind == "vanilla":
        out = torch.full((t,), hi, dtype=torch.float64)
    elif kind == "linear":
        out = torch.linspace(lo, hi, t, dtype=torch.float64)
    elif kind == "triangle":
        if period_fusing not in FUSINGS:
            raise ValueError(f"unknown period_fusing {period_fusing!r}; expected one of {list(FUSINGS)}")
        values = torch.linspace(0, 1, t, dtype=torch.float64)
        waves = torch.stack([_triangle_wave(values, p) for p in _periods(period)])  # (n_periods, t)
        if period_fusing == "max":
            wave = waves.max(dim=0).values
        elif period_fusing == "mean":
            wave = waves.mean(dim=0)
        else:
            wave = waves.prod(dim=0)
        out = wave * (hi - lo) + lo
    elif kind == "trapezoid":
        n = int(t * _check_edge_perc(edge_perc))  # the reference's int(num_frames * edge_perc), floor
        rise = torch.linspace(lo, hi, n, dtype=torch.float64)
        out = torch.cat([rise, torch.ones(t - 2 * n, dtype=torch.float64), rise.flip(0)])
    else:  # ramp_hold
        r = _check_scale("ramp", ramp)
        if not (0 < r <= 0.5):
            raise ValueError(f"ramp must satisfy 0 < ramp <= 0.5 (fraction of frames per slope), got ramp={ramp!r}")
        u = torch.linspace(0, 1, t, dtype=torch.float64)
        w = (torch.minimum(u, 1 - u) / r).clamp(0, 1)
        out = lo + w * (hi - lo)
    return out.to(torch.float32)


def combine(uncond: torch.Tensor, cond: torch.Tensor, scales: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Per-frame CFG, uncond + w_t (cond - uncond), on "(b t) ..." tensors (reference `LinearPredictionGuider.__call__`)."""
    t = _check_num_frames(num_frames)
    if uncond.shape != cond.shape:
        raise ValueError(f"uncond and cond must have the same shape, got {tuple(uncond.shape)} and {tuple(cond.shape)}")
    if uncond.ndim < 1 or uncond.shape[0] % t != 0:
        raise ValueError(
            f"the leading size of uncond/cond ({uncond.shape[0] if uncond.ndim else 'none'}) must be a multiple of "
            f"num_frames={t} (layout '(b t) ...', frames contiguous per video)"
        )
    scales = torch.as_tensor(scales)
    if scales.ndim != 1 or scales.shape[0] != t:
        raise ValueError(f"scales must have shape ({t},) = (num_frames,), got {tuple(scales.shape)}")
    u = rearrange(uncond, "(b t) ... -> b t ...", t=t)  # (b t) ... -> b t ...
    c = rearrange(cond, "(b t) ... -> b t ...", t=t)  # (b t) ... -> b t ...
    w = scales.to(device=uncond.device, dtype=uncond.dtype).reshape(1, t, *([1] * (u.ndim - 2)))  # 1 t 1...
    return rearrange(u + w * (c - u), "b t ... -> (b t) ...")  # b t ... -> (b t) ...


@dataclass(frozen=True)
class Guidance:
    """A guider's settings (SVD App. D.4.1); `.scales(T)` gives the per-frame vector for T frames."""

    kind: str = "linear"
    min_scale: float = 1.0
    max_scale: float = 2.5
    period: Union[float, tuple[float, ...]] = 1.0
    period_fusing: str = "max"
    ramp: float = 0.25
    edge_perc: float = 0.1

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown guidance kind {self.kind!r}; expected one of {list(KINDS)}")
        object.__setattr__(self, "min_scale", _check_scale("min_scale", self.min_scale))
        object.__setattr__(self, "max_scale", _check_scale("max_scale", self.max_scale))
        p = _periods(self.period)
        # keep a single period a float, a list a tuple (hashable, JSON-friendly)
        object.__setattr__(self, "period", p[0] if isinstance(self.period, (int, float)) else p)
        if self.period_fusing not in FUSINGS:
            raise ValueError(f"unknown period_fusing {self.period_fusing!r}; expected one of {list(FUSINGS)}")
        r = _check_scale("ramp", self.ramp)
        if not (0 < r <= 0.5):
            raise ValueError(f"ramp must satisfy 0 < ramp <= 0.5 (fraction of frames per slope), got ramp={self.ramp!r}")
        object.__setattr__(self, "ramp", r)
        object.__setattr__(self, "edge_perc", _check_edge_perc(self.edge_perc))

    def scales(self, num_frames: int) -> torch.Tensor:
        """Per-frame scales, float32 (num_frames,)."""
        return frame_scales(self.kind, num_frames, self.min_scale, self.max_scale,
                            period=self.period, period_fusing=self.period_fusing, ramp=self.ramp,
                            edge_perc=self.edge_perc)

    def combine(self, uncond: torch.Tensor, cond: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Per-frame CFG with these settings on "(b t) ..." tensors."""
        return combine(uncond, cond, self.scales(num_frames), num_frames)


def defaults_for(variant) -> Guidance:
    """The reference sampling guider of a model variant (svd: linear 1.0-2.5; svd_xt*: 1.5-3.0; sv3d_*: triangle 1.0-2.5)."""
    from .variants import get_variant  # the variant table holds guider, min_cfg, max_cfg

    spec = get_variant(variant)
    return Guidance(kind=spec.guider, min_scale=spec.min_cfg, max_scale=spec.max_cfg)
