"""Shared UNet layers: float32 GroupNorm, sinusoidal embeddings, ResBlocks, resampling, alpha blending."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with float32 statistics (reference `normalization`, stable under fp16/bf16).

    PyTorch's CPU and CUDA group-norm kernels accumulate mean and variance of half / bfloat16 inputs in float32
    and normalise in float32 before rounding, which is what the reference's `x.float()` round trip achieves; calling
    the kernel directly gives the same statistics without two full-size dtype copies per norm.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.group_norm(x, self.num_groups, weight, bias, self.eps)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding `[cos(t f), sin(t f)]`, f = max_period^(-i/half) (DDPM / reference order)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class AlphaBlender(nn.Module):
    """Learned blend `a x_spatial + (1 - a) x_temporal`, a = sigmoid(mix_factor), a = 1 on image-only frames."""

    def __init__(self, pattern: str, alpha: float = 0.5):
        super().__init__()
        self.mix_factor = nn.Parameter(torch.tensor([alpha]))
        self.pattern = pattern  # how the per-frame alpha (b t) broadcasts over the features

    def forward(self, x_spatial, x_temporal, image_only_indicator: torch.Tensor) -> torch.Tensor:
        alpha = torch.where(image_only_indicator.bool(), torch.ones_like(image_only_indicator, dtype=torch.float32),
                            torch.sigmoid(self.mix_factor.float()))  # b t
        alpha = rearrange(alpha, self.pattern)
        return alpha.to(x_spatial.dtype) * x_spatial + (1.0 - alpha).to(x_spatial.dtype) * x_temporal


def _conv(dims: int, *args, **kwargs) -> nn.Module:
    return {2: nn.Conv2d, 3: nn.Conv3d}[dims](*args, **kwargs)


class ResBlock(nn.Module):
    """openaimodel ResBlock: `in_layers`, `emb_layers`, `out_layers`, `skip_connection` (2-D or 3-D)."""

    def __init__(self, channels: int, emb_channels: int | None, out_channels: int | None = None, dims: int = 2,
                 kernel_size: int | Sequence[int] = 3, exchange_temb_dims: bool = False, groups: int = 32):
        """`emb_channels=None`: no timestep embedding (`skip_t_emb`, the VAE's temporal `time_stack`)."""
        super().__init__()
        out_channels = out_channels or channels
        padding = [k // 2 for k in kernel_size] if isinstance(kernel_size, Sequence) else kernel_size // 2
        self.in_layers = nn.Sequential(GroupNorm32(groups, channels), nn.SiLU(),
                                       _conv(dims, channels, out_channels, kernel_size, padding=padding))
        self.emb_layers = None if emb_channels is None else nn.Sequential(nn.SiLU(), nn.Linear(emb_channels,
                                                                                                   out_channels))
        self.out_layers = nn.Sequential(GroupNorm32(groups, out_channels), nn.SiLU(), nn.Dropout(0.0),
                                        _conv(dims, out_channels, out_channels, kernel_size, padding=padding))
        self.skip_connection = nn.Identity() if out_channels == channels else _conv(dims, channels, out_channels, 1)
        self.exchange_temb_dims = exchange_temb_dims

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.in_layers(x)
        if self.emb_layers is None:
            return self.skip_connection(x) + self.out_layers(h)
        emb_out = self.emb_layers(emb).to(h.dtype)
        while emb_out.ndim < h.ndim:
            emb_out = emb_out[..., None]
        if self.exchange_temb_dims:
            emb_out = rearrange(emb_out, "b t c ... -> b c t ...")  # per-frame embedding onto the time axis
        return self.skip_connection(x) + self.out_layers(h + emb_out)


class VideoResBlock(ResBlock):
    """Spatial ResBlock + temporal `time_stack` (kernel 3x1x1) blended by `time_mixer` (paper Sec. 3)."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None,
                 video_kernel_size: Sequence[int] = (3, 1, 1), groups: int = 32):
        super().__init__(channels, emb_channels, out_channels, groups=groups)
        out_channels = out_channels or channels
        self.time_stack = ResBlock(out_channels, emb_channels, out_channels, dims=3,
                                   kernel_size=tuple(video_kernel_size), exchange_temb_dims=True, groups=groups)
        self.time_mixer = AlphaBlender("b t -> b 1 t 1 1")

    def forward(self, x, emb, num_frames: int, image_only_indicator: torch.Tensor) -> torch.Tensor:
        x = super().forward(x, emb)
        x = rearrange(x, "(b t) c h w -> b c t h w", t=num_frames)  # frames onto a conv3d depth axis
        x_temporal = self.time_stack(x, rearrange(emb, "(b t) c -> b t c", t=num_frames))
        x = self.time_mixer(x, x_temporal, image_only_indicator)
        return rearrange(x, "b c t h w -> (b t) c h w")


class Downsample(nn.Module):
    """Stride-2 3x3 conv (`op` key)."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest 2x upsampling then a 3x3 conv (`conv` key)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def set_channels_last(module: nn.Module, enabled: bool = True) -> nn.Module:
    """Store conv weights channels-last (NHWC / NDHWC). oneDNN and cuDNN run such convs without layout
    reorders: on CPU bfloat16 the temporal VAE decodes about 2x faster. Same maths, rounding may differ."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            fmt = (torch.channels_last if m.weight.ndim == 4 else torch.channels_last_3d) if enabled \
                else torch.contiguous_format
            m.weight.data = m.weight.data.contiguous(memory_format=fmt)
    return module


def like_weight(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`x` in the memory format of a 4-D conv weight (channels-last activations for channels-last convs)."""
    if x.ndim == 4 and weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous():
        return x.contiguous(memory_format=torch.channels_last)
    return x
