"""Shared UNet layers: float32 GroupNorm, sinusoidal embeddings, ResBlocks, resampling, alpha blending.

Inference fast paths (same maths, no autograd graph recorded): the SiLU after a norm overwrites the norm's fresh
output, residual sums accumulate into the branch output, and the temporal (k, 1, 1) convolutions run as (k, 1)
2-D convolutions over "b c t (h w)" (oneDNN takes those on every thread count; PyTorch sends single-threaded small
batch 3-D convs with 1x1 spatial taps to its slow im2col path).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .ops import bypassable, layer_class, resolve


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with float32 statistics (reference `normalization`, stable under fp16/bf16).

    PyTorch's CPU and CUDA group-norm kernels accumulate mean and variance of half / bfloat16 inputs in float32
    and normalise in float32 before rounding, which is what the reference's `x.float()` round trip achieves; calling
    the kernel directly gives the same statistics without two full-size dtype copies per norm.
    Built on a host's operations (`ops.layer_class`), the host's forward (its weight cast) runs instead.
    """

    _cast_by_ops = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = canonical_strides(x)
        if self._cast_by_ops:
            return super().forward(x)
        if _small_channels_last(x, self.num_groups) and self.affine and not records(x, self.weight, self.bias) \
                and not torch.compiler.is_compiling():
            # the squares' float32 slice buffer no larger than x: the peak stays x + the output, as in the kernel
            pixels = -(-x[0, 0].numel() * x.element_size() // 4)
            scale, shift = group_norm_affine(x, self, pixels)
            return normalize_affine(x, scale, shift)
        weight = None if self.weight is None else self.weight.to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.group_norm(x, self.num_groups, weight, bias, self.eps)


# PyTorch's channels-last group-norm kernel reduces each pixel's group of C / G channels one pixel at a time below
# this many pixels per sample (its `feature_map_threshold`), not vectorised when a group has few channels. There,
# per-channel sums down the pixel axis are several times faster (1 thread, float32 / bfloat16 ms, kernel -> sums:
# 16x128x16x16 10.5 -> 0.9 / 10.9 -> 1.4; 16x320x16x16 14.2 -> 4.4 / 15.4 -> 5.5; 16x64x8x8 1.7 -> 0.4 / 2.1 ->
# 0.5); from 16 channels a group (16x512x16x16: 7.4 -> 7.4 / 4.0 -> 12.0) or this many pixels the kernel is fast.
CHANNELS_LAST_NORM_PIXELS = 1024
CHANNELS_LAST_NORM_GROUP = 16


def is_channels_last(x: torch.Tensor) -> bool:
    """A 4-D / 5-D tensor laid out channels-last (-3d), not merely ambiguous (a plain contiguous tensor is not)."""
    if x.ndim not in (4, 5) or x.is_contiguous():
        return False
    return x.is_contiguous(memory_format=torch.channels_last if x.ndim == 4 else torch.channels_last_3d)


def _small_channels_last(x: torch.Tensor, groups: int) -> bool:
    """A channels-last CPU map (4-D or 5-D) with fewer than CHANNELS_LAST_NORM_PIXELS pixels per sample and fewer
    than CHANNELS_LAST_NORM_GROUP channels a group: where PyTorch's CPU kernel is slow (measured on CPU only; other
    devices keep their own kernel)."""
    return (x.device.type == "cpu" and x.numel() > 0 and is_channels_last(x)
            and x.shape[1] // groups < CHANNELS_LAST_NORM_GROUP and x[0, 0].numel() < CHANNELS_LAST_NORM_PIXELS)


def normalize_affine(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """x * scale + shift computed in float32 (scale / shift are), as a fresh tensor in x's dtype and layout.

    A half x is normalised a slice of rows (its h axis) at a time, each float32 slice rounded into the output: the
    float32 temporary stays within a quarter of x's bytes from 8 rows up (an `out=` in x's dtype would need none,
    but that mixed-dtype kernel is 6x slower on CPU)."""
    if x.dtype == torch.float32:
        return torch.addcmul(shift, x, scale)
    out = torch.empty_like(x)
    axis = x.ndim - 2  # h of "n c h w" and of "b c t h w"
    rows = x.shape[axis]
    step = max(1, rows * x.element_size() // 16)
    for start in range(0, rows, step):
        piece = x.narrow(axis, start, min(step, rows - start))
        out.narrow(axis, start, piece.shape[axis]).copy_(torch.addcmul(shift, piece, scale))
    return out


def channel_sums(x: torch.Tensor, pixels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum, sum of squares) of each channel of x "b c ..." per sample, float64 "b c", read `pixels` pixels at a
    time in x's own layout (no transposing copy; one slice-sized float32 buffer for the squares).

    Channels-last (how the convs run): every pixel's channels are contiguous, so "b (...) c" is a view and each
    slice is a row block summed down its columns; otherwise "b c (...)" is summed along its rows."""
    b, c = x.shape[:2]
    last = is_channels_last(x)
    flat = x.movedim(1, -1).reshape(b, -1, c) if last else x.reshape(b, c, -1)  # b P c / b c P
    axis = 1 if last else 2
    s1 = torch.zeros(b, c, dtype=torch.float64, device=x.device)
    s2 = torch.zeros_like(s1)
    square = None
    for start in range(0, flat.shape[axis], pixels):
        piece = flat.narrow(axis, start, min(pixels, flat.shape[axis] - start))
        if square is None or square.shape != piece.shape:
            square = torch.empty(piece.shape, dtype=torch.float32, device=x.device)
        if piece.dtype == torch.float32:
            torch.mul(piece, piece, out=square)
        else:  # half inputs: widen first, so the squares are float32 products, not rounded half ones
            square.copy_(piece).square_()
        s1 += piece.sum(axis, dtype=torch.float32)
        s2 += square.sum(axis)
    return s1, s2


def group_norm_affine(x: torch.Tensor, norm: nn.GroupNorm, pixels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, shift) with norm(x) = x * scale + shift for x "b c ...": per-channel sums in float32
    over slices of `pixels` pixels (`channel_sums`), gathered into the group statistics in float64 (the float32
    statistics `GroupNorm32` promises). Shapes b c 1 ..., float32, to broadcast over x."""
    b, c = x.shape[:2]
    g = norm.num_groups
    s1, s2 = channel_sums(x, pixels)
    count = x.numel() // (b * g)
    mean = s1.view(b, g, -1).sum(-1) / count  # b c -> b g
    rstd = torch.rsqrt((s2.view(b, g, -1).sum(-1) / count - mean * mean).clamp_min(0) + norm.eps)  # b g
    per_channel = lambda t: t.repeat_interleave(c // g, dim=1)  # noqa: E731 - b g -> b c
    scale = per_channel(rstd) * norm.weight.double()
    shift = norm.bias.double() - per_channel(mean) * scale
    trailing = (1,) * (x.ndim - 2)
    return scale.float().view(b, c, *trailing), shift.float().view(b, c, *trailing)


def canonical_strides(x: torch.Tensor) -> torch.Tensor:
    """A channels-last `x` with the textbook strides (a view).

    oneDNN gives a batch of one frame / video an arbitrary batch stride; PyTorch's group norm then misreads the
    layout, copies its input to NCHW and returns NCHW, and the next channels-last conv copies it back.
    (as_strided keeps x's storage offset when given none: no `storage_offset()` call, which torch.compile cannot
    trace.)"""
    if x.requires_grad or not is_channels_last(x):  # (as_strided's backward is a scatter)
        return x
    c, spatial = x.shape[1], x.shape[2:]
    strides = [c] * len(spatial)  # innermost spatial axis steps over the channels
    for i in range(len(spatial) - 2, -1, -1):
        strides[i] = strides[i + 1] * spatial[i + 1]  # ... d h w: each axis steps over the ones inside it
    batch = strides[0] * spatial[0]
    return x.as_strided(x.shape, (batch, 1, *strides))


def records(*tensors: torch.Tensor | None) -> bool:
    """True when autograd records a graph through any of `tensors` (grad mode and one of them requires grad)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def reusable(x: torch.Tensor, *others: torch.Tensor | None) -> bool:
    """True when a fresh intermediate `x` may be overwritten by an op with `others`: no graph records them.

    Inference, no_grad, and a frozen model in grad mode alike take the fast paths, so all three give the same
    bits; a graph-recording forward (training) keeps every tensor its backward may read."""
    return not records(x, *others)


def add_into(h: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """`h + other`, accumulated into `h` (a fresh conv output: its backward never reads it) when dtypes agree."""
    return h.add_(other) if h.dtype == other.dtype else h + other


def add_to(x: torch.Tensor, other: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """`x + other` (`x + weight * other` with a weight), in place in `x` when no graph records the operands
    (a backward may read `x`, so unlike `add_into` this needs no graph) and their dtypes agree."""
    operands = (other,) if weight is None else (other, weight)
    in_place = reusable(x, *operands) and all(t.dtype == x.dtype for t in operands)
    if weight is None:
        return x.add_(other) if in_place else x + other
    return x.addcmul_(weight, other) if in_place else torch.addcmul(x, weight, other)


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    """`channels_last` for a 4-D tensor laid out channels-last (not merely ambiguous), else `contiguous_format`."""
    if t.ndim == 4 and is_channels_last(t):
        return torch.channels_last
    return torch.contiguous_format


def silu_after_norm(x: torch.Tensor) -> torch.Tensor:
    """SiLU of a norm's fresh output, overwriting it when no graph is recorded."""
    return F.silu(x, inplace=reusable(x))


class NormSiLU(nn.SiLU):
    """SiLU placed right after a norm (`silu_after_norm`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return silu_after_norm(x)


class TemporalConv3d(nn.Conv3d):
    """Conv3d with a (k, 1, 1) kernel (mixes frames only), computed as a (k, 1) Conv2d over "b c t (h w)".

    Same weights and keys as the reference Conv3d. Channels-last-3d inputs stay channels-last: the flattening of
    (h w) is a view in both memory formats. Built on a host's operations (`ops.layer_class`), the host's Conv3d
    runs."""

    _cast_by_ops = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._cast_by_ops or self.kernel_size[1:] != (1, 1) or self.stride != (1, 1, 1) \
                or self.dilation != (1, 1, 1) or self.groups != 1 or self.padding_mode != "zeros" \
                or self.padding[1:] != (0, 0) or x.ndim != 5:
            return super().forward(x)
        h, w = x.shape[-2:]
        weight = self.weight.squeeze(-1)  # o i k 1 1 -> o i k 1 (channels-last-3d stays channels-last)
        y = F.conv2d(x.flatten(3), weight, self.bias, padding=(self.padding[0], 0))  # b c t (h w)
        return y.unflatten(3, (h, w))  # b c t (h w) -> b c t h w


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

    def alpha(self, image_only_indicator: torch.Tensor) -> torch.Tensor:
        """Per-frame alpha in float32, shaped by `pattern` to broadcast over the features."""
        alpha = torch.where(image_only_indicator.bool(), torch.ones_like(image_only_indicator, dtype=torch.float32),
                            torch.sigmoid(self.mix_factor.float()))  # b t
        return rearrange(alpha, self.pattern)

    def forward(self, x_spatial, x_temporal, image_only_indicator: torch.Tensor) -> torch.Tensor:
        # a x_s + (1 - a) x_t = x_t + a (x_s - x_t): one fused kernel instead of three
        return torch.lerp(x_temporal, x_spatial, self.alpha(image_only_indicator).to(x_spatial.dtype))


def _conv(dims: int, *args, operations=None, **kwargs) -> nn.Module:
    return {2: resolve(operations).Conv2d, 3: layer_class(TemporalConv3d, operations)}[dims](*args, **kwargs)


class ResBlock(nn.Module):
    """openaimodel ResBlock: `in_layers`, `emb_layers`, `out_layers`, `skip_connection` (2-D or 3-D)."""

    def __init__(self, channels: int, emb_channels: int | None, out_channels: int | None = None, dims: int = 2,
                 kernel_size: int | Sequence[int] = 3, exchange_temb_dims: bool = False, groups: int = 32,
                 operations=None):
        """`emb_channels=None`: no timestep embedding (`skip_t_emb`, the VAE's temporal `time_stack`).
        `operations`: the layer namespace (`svd_core.ops`; default torch.nn)."""
        super().__init__()
        ops, norm = resolve(operations), layer_class(GroupNorm32, operations)
        out_channels = out_channels or channels
        padding = [k // 2 for k in kernel_size] if isinstance(kernel_size, Sequence) else kernel_size // 2
        self.in_layers = nn.Sequential(norm(groups, channels), NormSiLU(), _conv(
            dims, channels, out_channels, kernel_size, padding=padding, operations=operations))
        self.emb_layers = None if emb_channels is None else nn.Sequential(nn.SiLU(), ops.Linear(emb_channels,
                                                                                                    out_channels))
        self.out_layers = nn.Sequential(norm(groups, out_channels), NormSiLU(), nn.Dropout(0.0), _conv(
            dims, out_channels, out_channels, kernel_size, padding=padding, operations=operations))
        self.skip_connection = nn.Identity() if out_channels == channels else _conv(
            dims, channels, out_channels, 1, operations=operations)
        self.exchange_temb_dims = exchange_temb_dims

    def residual(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        """The residual branch alone: `forward(x) = skip_connection(x) + residual(x)`.

        The layers run one by one (not through the Sequential) so each intermediate is freed once the next
        layer has consumed it."""
        h = x
        for layer in self.in_layers:
            h = layer(h)
        if self.emb_layers is not None:
            emb_out = self.emb_layers(emb).to(h.dtype)
            while emb_out.ndim < h.ndim:
                emb_out = emb_out[..., None]
            if self.exchange_temb_dims:
                emb_out = rearrange(emb_out, "b t c ... -> b c t ...")  # per-frame embedding onto the time axis
            h = add_into(h, emb_out)  # h is the in_layers conv's fresh output
        for layer in self.out_layers:
            h = layer(h)
        return h

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        # the branch output is a fresh conv output (its backward never reads it): accumulate the skip into it
        return add_into(self.residual(x, emb), self.skip_connection(x))


class VideoResBlock(ResBlock):
    """Spatial ResBlock + temporal `time_stack` (kernel 3x1x1) blended by `time_mixer` (paper Sec. 3)."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None,
                 video_kernel_size: Sequence[int] = (3, 1, 1), groups: int = 32, operations=None):
        super().__init__(channels, emb_channels, out_channels, groups=groups, operations=operations)
        out_channels = out_channels or channels
        self.time_stack = ResBlock(out_channels, emb_channels, out_channels, dims=3,
                                   kernel_size=tuple(video_kernel_size), exchange_temb_dims=True, groups=groups,
                                   operations=operations)
        self.time_mixer = AlphaBlender("b t -> b 1 t 1 1")

    def forward(self, x, emb, num_frames: int, image_only_indicator: torch.Tensor) -> torch.Tensor:
        x = super().forward(x, emb)
        x = rearrange(x, "(b t) c h w -> b c t h w", t=num_frames)  # frames onto a conv3d depth axis
        h_t = self.time_stack.residual(x, rearrange(emb, "(b t) c -> b t c", t=num_frames))
        # a x + (1 - a) (x + h_t) = x + (1 - a) h_t: the mixer and the time_stack's identity skip in one kernel
        w_t = (1.0 - self.time_mixer.alpha(image_only_indicator)).to(x.dtype)  # b 1 t 1 1
        x = add_to(x, h_t, w_t)
        return rearrange(x, "b c t h w -> (b t) c h w")


class Downsample(nn.Module):
    """Stride-2 3x3 conv (`op` key)."""

    def __init__(self, channels: int, operations=None):
        super().__init__()
        self.op = resolve(operations).Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


def _fold_taps(weight: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """3 taps along `dim` -> the 2 taps each output phase of a nearest-2x upsampling sees: even outputs read
    source pixels (i-1, i) with (w0, w1 + w2); odd outputs read (i, i+1) with (w0 + w1, w2)."""
    w0, w1, w2 = weight.unbind(dim)
    return torch.stack([w0, w1 + w2], dim), torch.stack([w0 + w1, w2], dim)


def upsample_conv(x: torch.Tensor, conv: nn.Conv2d, out: torch.Tensor | None = None) -> torch.Tensor:
    """`conv(nearest_2x(x))` for a 3x3, stride-1, padding-1 conv, computed on `x` itself.

    Each of the four output phases (row parity a, column parity b) is a 2x2 conv of the source image, so the four
    folded kernels run as one conv with 4x the output channels and padding 1, and phase (a, b) is its (h, w)
    window at offset (a, b), written to out[..., a::2, b::2]. 16 instead of 36 multiply-adds per source pixel and
    channel pair, and the 4x-size upsampled input never exists. Same sums in another order. `out`: write the
    result there (a slice of a larger output). A conv that is not `ops.bypassable` (a host's cast, a hook) runs as
    itself on the upsampled input (its weights are read through its own forward)."""
    # half-precision kernels are so fast that the four phase copies only pay off on large images (measured on
    # CPU: 15-20% faster from 64x64 sources, slower at 16x16); float32 gains 1.6-1.7x at every size
    small_half = x.dtype != torch.float32 and x.shape[-2] * x.shape[-1] < 64 * 64
    if records(x, conv.weight, conv.bias) or not bypassable(conv) or small_half or conv.kernel_size != (3, 3) \
            or conv.stride != (1, 1) or conv.padding != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1 \
            or conv.padding_mode != "zeros" or x.ndim != 4:
        y = conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return y if out is None else out.copy_(y)
    n, _, h, w = x.shape
    o = conv.out_channels
    kernels = [k for rows in _fold_taps(conv.weight.float(), 2) for k in _fold_taps(rows, 3)]  # (a, b) order
    weight = torch.cat(kernels, 0).to(conv.weight.dtype)  # (a b o) i 2 2
    del kernels
    weight = weight.contiguous(memory_format=memory_format_of(conv.weight))
    bias = None if conv.bias is None else conv.bias.repeat(4)
    y = F.conv2d(x, weight, bias, padding=1)  # n (a b o) (h+1) (w+1): window (r, s) reads rows r-1, r
    if out is None:
        out = torch.empty((n, o, 2 * h, 2 * w), dtype=y.dtype, device=y.device, memory_format=memory_format_of(y))
    for phase, (a, b) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        out[:, :, a::2, b::2] = y[:, phase * o:(phase + 1) * o, a:a + h, b:b + w]  # odd phases read rows i, i+1
    return out


class Upsample(nn.Module):
    """Nearest 2x upsampling then a 3x3 conv (`conv` key)."""

    def __init__(self, channels: int, operations=None):
        super().__init__()
        self.conv = resolve(operations).Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_conv(x, self.conv)


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
    if x.ndim == 4 and memory_format_of(weight) == torch.channels_last:
        return x.contiguous(memory_format=torch.channels_last)
    return x
