"""KL autoencoder of SVD: image `Encoder`, image `Decoder`, temporal `VideoDecoder` (paper Sec. 4, App. D.1).

Same maths and state-dict key names as the reference (Stability-AI/generative-models,
`sgm/modules/diffusionmodules/model.py` and `sgm/modules/autoencoding/temporal_ae.py`, time_mode "conv-only"),
so released checkpoints load with the `first_stage_model.` / `conditioner.embedders.N.encoder.` prefix stripped.

Frames of a video are contiguous along the batch axis: a latent batch is "(b t) c h w".
Every module builds under `with torch.device("meta"):` (no init work beyond allocation).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .layers import (GroupNorm32, ResBlock, add_into, add_to, group_norm_affine, like_weight, memory_format_of,
                     normalize_affine, records, silu_after_norm, upsample_conv)
from .ops import bypassable, layer_class, resolve
from .variants import VAESpec

__all__ = [
    "ResnetBlock",
    "AttnBlock",
    "Downsample",
    "Upsample",
    "VideoResBlock",
    "AE3DConv",
    "Encoder",
    "Decoder",
    "FirstStage",
    "CondEncoder",
    "LOGVAR_RANGE",
]

# DiagonalGaussianDistribution clamps the log-variance to this range (reference `distributions.py`).
LOGVAR_RANGE = (-30.0, 20.0)


# Without autograd, per-frame (spatial) layers run on slices of at most this many pixels (frames x h x w) and write
# into one output: their maths is per frame, so the result does not depend on it, and only a slice of each
# intermediate is alive at a time. The temporal layers always see every frame at once. From 128x64 pixels up a
# slice is one frame: convs on a frame of that size are as fast as on a batch (bench/bench_vs_diffusers.py: 64x8
# bfloat16 decode of 8x8 latents, peak 22.0 MiB at 256 * 256 pixels, 12.0 at this size; diffusers 32.0).
SPATIAL_CHUNK_PIXELS = 128 * 64


def per_frame(fn, x: torch.Tensor, module: nn.Module, scale: int = 1) -> torch.Tensor:
    """`fn(x)` for a per-frame `fn` (of `module`) over "(b t) c h w", a slice of frames at a time when no graph
    is recorded.

    `fn(x_slice, out=out_slice)` writes a slice's result straight into the output (its last op takes `out=`)."""
    n, _, h, w = x.shape
    step = max(1, SPATIAL_CHUNK_PIXELS // (h * w * scale * scale))
    if n <= step or records(x, *module.parameters()) or torch.compiler.is_compiling():
        return fn(x)  # (a compiler plans the buffers itself, and cannot trace `out=` into a slice)
    first = fn(x[:step])  # step c' h' w': the first slice tells the output's channels, size and dtype
    out = torch.empty((n,) + first.shape[1:], dtype=first.dtype, device=first.device,
                      memory_format=memory_format_of(x))
    out[:step] = first
    del first
    for i in range(step, n, step):
        fn(x[i:i + step], out=out[i:i + step])
    return out


def normalize(channels: int, groups: int, operations=None) -> nn.GroupNorm:
    """Encoder/Decoder `Normalize`: GroupNorm with eps 1e-6 (reference `model.py`; same keys as nn.GroupNorm)."""
    return layer_class(GroupNorm32, operations)(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """Pre-activation residual block without timestep embedding: GN-SiLU-conv twice, 1x1 `nin_shortcut` if widths differ."""

    def __init__(self, in_channels: int, out_channels: int, groups: int = 32, operations=None):
        super().__init__()
        ops = resolve(operations)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = normalize(in_channels, groups, operations)
        self.conv1 = ops.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = normalize(out_channels, groups, operations)
        self.conv2 = ops.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = ops.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return per_frame(self._forward, x, self)

    def _forward(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(x)
        h = self.conv1(silu_after_norm(h))
        h = self.norm2(h)
        h = self.conv2(silu_after_norm(h))  # dropout is 0 in every released config
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        if out is not None:
            return torch.add(h, x, out=out)  # x + h into a slice of the frame-sliced output
        return add_into(h, x)  # x + h, accumulated into the fresh conv output


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1-conv q/k/v/proj_out, residual (reference `AttnBlock`)."""

    def __init__(self, channels: int, groups: int = 32, operations=None):
        super().__init__()
        ops = resolve(operations)
        self.norm = normalize(channels, groups, operations)
        self.q = ops.Conv2d(channels, channels, kernel_size=1)
        self.k = ops.Conv2d(channels, channels, kernel_size=1)
        self.v = ops.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = ops.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h_ = self.norm(x)
        height, width = x.shape[-2:]
        # b c h w -> b 1 (h w) c: one head, every pixel a token
        q, k, v = (rearrange(m(h_), "b c h w -> b 1 (h w) c").contiguous() for m in (self.q, self.k, self.v))
        h_ = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(c)) v
        h_ = rearrange(h_, "b 1 (h w) c -> b c h w", h=height, w=width)
        return x + self.proj_out(h_)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after asymmetric zero padding (0, 1, 0, 1) (reference `Downsample`, with_conv)."""

    def __init__(self, channels: int, operations=None):
        super().__init__()
        self.conv = resolve(operations).Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    """Nearest-neighbour x2 then 3x3 conv (reference `Upsample`, with_conv)."""

    def __init__(self, channels: int, operations=None):
        super().__init__()
        self.conv = resolve(operations).Conv2d(channels, channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return per_frame(self._forward, x, self, scale=2)

    def _forward(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return upsample_conv(x, self.conv, out)  # conv(nearest_2x(x)) without the upsampled copy


class VideoResBlock(ResnetBlock):
    """Spatial `ResnetBlock` then a temporal `time_stack`, blended by alpha = sigmoid(mix_factor) (paper Sec. 3, App. D.1)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        groups: int = 32,
        video_kernel_size: tuple[int, int, int] = (3, 1, 1),
        alpha: float = 0.0,
        operations=None,
    ):
        super().__init__(in_channels, out_channels, groups, operations)
        # openaimodel 3-D ResBlock with skip_t_emb: GN32-SiLU-Conv3d twice over "b c t h w", identity skip
        self.time_stack = ResBlock(out_channels, None, dims=3, kernel_size=tuple(video_kernel_size), groups=groups,
                                   operations=operations)
        self.mix_factor = nn.Parameter(torch.tensor([float(alpha)]))  # merge_strategy "learned"

    def spatial(self, x: torch.Tensor) -> torch.Tensor:
        """The spatial half: the image `ResnetBlock`, frame by frame."""
        return super().forward(x)

    def forward(self, x: torch.Tensor, num_frames: int, skip_video: bool = False) -> torch.Tensor:
        x = self.spatial(x)
        if skip_video:  # per-frame decoding: the spatial path alone (reference `skip_video`)
            return x
        return self.temporal(x, num_frames)

    def temporal(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """The temporal half on the spatial half's output. Without autograd `x` is updated in place: callers
        that run the halves separately (the decoder) free the block's input before this half."""
        x = rearrange(x, "(b t) c h w -> b c t h w", t=num_frames)  # frames onto a conv3d depth axis
        # a (x + h_t) + (1 - a) x = x + a h_t: the blend and the time_stack's identity skip in one kernel
        alpha = torch.sigmoid(self.mix_factor).to(x.dtype)
        if _by_rows(self.time_stack, x):
            _add_time_stack_by_rows(self.time_stack, x, alpha)
        else:
            x = add_to(x, self.time_stack.residual(x), alpha)
        return rearrange(x, "b c t h w -> (b t) c h w")


# Without autograd, the temporal half of a decoder block on more than this many frame-pixels (t x h x w) runs on
# slices of rows: its (3, 1, 1) convolutions mix frames, never pixels, so only the group norms need the whole map,
# and their statistics are gathered first (`layers.group_norm_affine`). The block's input and one more map stay alive
# instead of three (SVD-XT decode_t 14 at 1024x576: the decoder's peak goes from 3.2 to about 2 full-size maps).
TEMPORAL_ROWS_PIXELS = 14 * 32 * 1024


def _by_rows(time_stack: ResBlock, x: torch.Tensor) -> bool:
    norms = (time_stack.in_layers[0], time_stack.out_layers[0])
    return (x.ndim == 5 and x.shape[2] * x.shape[3] * x.shape[4] > TEMPORAL_ROWS_PIXELS and x.shape[3] > 1
            and not records(x, *time_stack.parameters()) and all(bypassable(n) for n in norms)
            and time_stack.emb_layers is None and isinstance(time_stack.skip_connection, nn.Identity))


def _norm_silu(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """silu(x * scale + shift) as a fresh tensor in x's dtype and layout (normalised in float32, `GroupNorm32`)."""
    return F.silu(normalize_affine(x, scale, shift), inplace=True)


def _add_time_stack_by_rows(time_stack: ResBlock, x: torch.Tensor, alpha: torch.Tensor) -> None:
    """x += alpha * time_stack.residual(x), in place, slice of rows by slice of rows (see TEMPORAL_ROWS_PIXELS):
    the group norms with whole-map statistics, normalised in float32 like `GroupNorm32`; then SiLU and the
    (3, 1, 1) convolution on each slice. The intermediate map between the two convolutions is the only other
    full-size tensor; it takes x's layout (channels-last-3d in the decoder), so no pass transposes memory."""
    norm1, _, conv1 = time_stack.in_layers
    norm2, conv2 = time_stack.out_layers[0], time_stack.out_layers[-1]
    rows = max(1, TEMPORAL_ROWS_PIXELS // (x.shape[2] * x.shape[4]))
    pixels = rows * x.shape[2] * x.shape[4]  # a slice of rows at a time
    scale, shift = group_norm_affine(x, norm1, pixels)
    mid = None
    for r in range(0, x.shape[3], rows):
        h = conv1(_norm_silu(x[:, :, :, r:r + rows], scale, shift))  # b c t rh w: mixes frames only
        if mid is None:
            mid = torch.empty_like(x, dtype=h.dtype)  # x's strides (preserve_format)
        mid[:, :, :, r:r + rows] = h
        del h
    scale, shift = group_norm_affine(mid, norm2, pixels)
    for r in range(0, x.shape[3], rows):
        h = _norm_silu(mid[:, :, :, r:r + rows], scale, shift)
        x[:, :, :, r:r + rows].addcmul_(conv2(h), alpha)  # b c t rh w: this slice of x + a h_t


class AE3DConv(nn.Conv2d):
    """Decoder `conv_out`: a 3x3 Conv2d per frame followed by `time_mix_conv`, a Conv3d over "b c t h w"."""

    _cast_by_ops = False

    def __init__(
        self, in_channels: int, out_channels: int, video_kernel_size: tuple[int, int, int] = (3, 1, 1),
        operations=None, **kwargs
    ):
        super().__init__(in_channels, out_channels, **kwargs)
        padding = tuple(k // 2 for k in video_kernel_size)
        self.time_mix_conv = resolve(operations).Conv3d(out_channels, out_channels, tuple(video_kernel_size),
                                                        padding=padding)

    def forward(self, x: torch.Tensor, num_frames: int, skip_video: bool = False) -> torch.Tensor:  # type: ignore[override]
        x = super().forward(x)
        if skip_video:
            return x
        x = rearrange(x, "(b t) c h w -> b c t h w", t=num_frames)
        x = self.time_mix_conv(x)
        return rearrange(x, "b c t h w -> (b t) c h w")


class Encoder(nn.Module):
    """Image encoder to the 2*z_channels Gaussian moments (reference `Encoder`, double_z, no attn_resolutions)."""

    def __init__(self, spec: VAESpec, operations=None):
        super().__init__()
        ops = resolve(operations)
        ch, mult, g = spec.ch, tuple(spec.ch_mult), spec.norm_groups
        self.num_resolutions, self.num_res_blocks = len(mult), spec.num_res_blocks
        self.conv_in = ops.Conv2d(spec.in_channels, ch, kernel_size=3, stride=1, padding=1)
        in_mult = (1,) + mult
        self.down = nn.ModuleList()
        block_in = ch
        for level in range(self.num_resolutions):
            block_in, block_out = ch * in_mult[level], ch * mult[level]
            stage = nn.Module()
            stage.block = nn.ModuleList()
            for _ in range(self.num_res_blocks):
                stage.block.append(ResnetBlock(block_in, block_out, g, operations))
                block_in = block_out
            if level != self.num_resolutions - 1:
                stage.downsample = Downsample(block_in, operations)
            self.down.append(stage)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, g, operations)
        self.mid.attn_1 = AttnBlock(block_in, g, operations)
        self.mid.block_2 = ResnetBlock(block_in, block_in, g, operations)
        self.norm_out = normalize(block_in, g, operations)
        self.conv_out = ops.Conv2d(block_in, 2 * spec.z_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level, stage in enumerate(self.down):
            for block in stage.block:
                h = block(h)
            if level != self.num_resolutions - 1:
                h = stage.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        h = self.norm_out(h)
        return self.conv_out(silu_after_norm(h))


class Decoder(nn.Module):
    """Latent to image decoder; `temporal=True` builds the `VideoDecoder` ("conv-only": VideoResBlock + AE3DConv)."""

    def __init__(self, spec: VAESpec, temporal: bool, operations=None):
        super().__init__()
        ops = resolve(operations)
        ch, mult, g = spec.ch, tuple(spec.ch_mult), spec.norm_groups
        self.temporal = temporal
        self.num_resolutions, self.num_res_blocks = len(mult), spec.num_res_blocks
        kernel = tuple(spec.video_kernel_size)

        def resblock(cin: int, cout: int) -> nn.Module:
            if temporal:
                return VideoResBlock(cin, cout, g, kernel, operations=operations)
            return ResnetBlock(cin, cout, g, operations)

        block_in = ch * mult[-1]
        self.conv_in = ops.Conv2d(spec.z_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = resblock(block_in, block_in)
        self.mid.attn_1 = AttnBlock(block_in, g, operations)  # "conv-only": the mid attention stays spatial
        self.mid.block_2 = resblock(block_in, block_in)
        up: list[nn.Module] = []
        for level in reversed(range(self.num_resolutions)):
            block_out = ch * mult[level]
            stage = nn.Module()
            stage.block = nn.ModuleList()
            for _ in range(self.num_res_blocks + 1):
                stage.block.append(resblock(block_in, block_out))
                block_in = block_out
            if level != 0:
                stage.upsample = Upsample(block_in, operations)
            up.insert(0, stage)  # up[0] is the full-resolution stage, as in the reference
        self.up = nn.ModuleList(up)
        self.norm_out = normalize(block_in, g, operations)
        if temporal:
            self.conv_out = layer_class(AE3DConv, operations)(block_in, spec.out_channels, kernel, operations,
                                                        kernel_size=3, stride=1, padding=1)
        else:
            self.conv_out = ops.Conv2d(block_in, spec.out_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, z: torch.Tensor, num_frames: int = 1, skip_video: bool = False) -> torch.Tensor:
        """`skip_video`: a temporal decoder decodes each frame on its own through its spatial layers."""
        layers: list[nn.Module] = [self.mid.block_1, self.mid.attn_1, self.mid.block_2]
        for level in reversed(range(self.num_resolutions)):
            layers += list(self.up[level].block) + ([self.up[level].upsample] if level != 0 else [])
        h = self.conv_in(z)
        pending = None  # an upsampling folded into the next block's frame slices
        for layer in layers:
            if isinstance(layer, Upsample) and not records(h, *layer.parameters()):
                pending = layer
                continue
            if pending is not None and isinstance(layer, ResnetBlock):
                # nearest 2x + conv, then the block's spatial half, slice of frames by slice: the upsampled
                # (wider) map never exists whole
                up = pending
                h = per_frame(lambda s, out=None: layer._forward(up._forward(s), out=out), h, layer, scale=2)
                pending = None
                if isinstance(layer, VideoResBlock) and not skip_video:
                    h = layer.temporal(h, num_frames)
                continue
            if pending is not None:
                h, pending = pending(h), None
            if isinstance(layer, VideoResBlock):
                h = layer.spatial(h)  # rebinding h frees the block's input before the temporal half runs
                if not skip_video:
                    h = layer.temporal(h, num_frames)
            else:
                h = layer(h)
        if pending is not None:
            h = pending(h)
        h = self.norm_out(h)
        h = silu_after_norm(h)
        return self.conv_out(h, num_frames, skip_video) if self.temporal else self.conv_out(h)


def _check_image(x: torch.Tensor, spec: VAESpec, what: str) -> None:
    if x.ndim != 4 or x.shape[1] != spec.in_channels:
        raise ValueError(
            f"{what} expects images of shape (N, {spec.in_channels}, H, W) in [-1, 1], got {tuple(x.shape)}"
        )
    factor = 2 ** (len(spec.ch_mult) - 1)
    if x.shape[-1] % factor or x.shape[-2] % factor:
        raise ValueError(
            f"{what}: image size {tuple(x.shape[-2:])} must be divisible by {factor} (the VAE downsampling factor); "
            "resize or crop the input image"
        )


def _split_moments(moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DiagonalGaussian moments (N, 2z, h, w) -> mean, clamped logvar (reference `DiagonalGaussianDistribution`)."""
    mean, logvar = torch.chunk(moments, 2, dim=1)  # n (2 z) h w -> 2 x (n z h w)
    return mean, torch.clamp(logvar, *LOGVAR_RANGE)


class FirstStage(nn.Module):
    """`first_stage_model`: encoder (optional), quant convs (image-AE layout only), temporal or image decoder."""

    def __init__(self, spec: VAESpec, operations=None):
        super().__init__()
        if spec.decoder not in ("temporal", "image"):
            raise ValueError(f"VAESpec.decoder must be 'temporal' or 'image', got {spec.decoder!r}")
        ops = resolve(operations)
        self.spec = spec
        self.encoder = Encoder(spec, operations) if spec.first_stage_encoder else None
        if spec.first_stage_quant:
            self.quant_conv = ops.Conv2d(2 * spec.z_channels, 2 * spec.z_channels, kernel_size=1)
            self.post_quant_conv = ops.Conv2d(spec.z_channels, spec.z_channels, kernel_size=1)
        else:
            self.quant_conv = self.post_quant_conv = None
        self.decoder = Decoder(spec, temporal=spec.decoder == "temporal", operations=operations)

    @property
    def temporal(self) -> bool:
        """True for the `VideoDecoder` (its output depends on how many frames are decoded together)."""
        return self.decoder.temporal

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.spec.ch_mult) - 1)

    def encode_dist(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (N, 3, H, W) in [-1, 1] -> posterior (mean, logvar), each (N, z, H/f, W/f), for training."""
        if self.encoder is None:
            raise ValueError(
                "this first stage has no encoder (decoder-only layout, e.g. sv3d): encode images with the "
                "conditioner's VAE copy (CondEncoder) or load a checkpoint whose first_stage_model has an encoder"
            )
        _check_image(x, self.spec, "FirstStage.encode")
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return _split_moments(moments)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) in [-1, 1] -> unscaled latent mode (N, z, H/f, W/f)."""
        return self.encode_dist(x)[0]

    def decode(self, z: torch.Tensor, num_frames: int = 1, skip_video: bool = False) -> torch.Tensor:
        """Unscaled latents "(b t) c h w" -> images "(b t) 3 H W"; the image decoder ignores `num_frames`,
        `skip_video` runs a temporal decoder frame by frame (its spatial layers only)."""
        if z.ndim != 4 or z.shape[1] != self.spec.z_channels:
            raise ValueError(f"FirstStage.decode expects latents (N, {self.spec.z_channels}, h, w), got {tuple(z.shape)}")
        if self.temporal:
            if not isinstance(num_frames, int) or num_frames < 1:
                raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
            if z.shape[0] % num_frames:
                raise ValueError(
                    f"latent batch {z.shape[0]} is not a multiple of num_frames={num_frames}: the temporal decoder "
                    "needs whole videos laid out as (b t) c h w"
                )
        z = like_weight(z, self.decoder.conv_in.weight)  # channels-last weights take channels-last latents
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z, num_frames, skip_video) if self.temporal else self.decoder(z, num_frames)


class CondEncoder(nn.Module):
    """Conditioner's `AutoencoderKLModeOnly` copy (`conditioner.embedders.N.encoder.`): encode = quant_conv(encoder(x)) mode."""

    def __init__(self, spec: VAESpec, operations=None):
        super().__init__()
        ops = resolve(operations)
        self.spec = spec
        self.encoder = Encoder(spec, operations)
        self.decoder = Decoder(spec, temporal=False, operations=operations)  # in the files, never used at inference
        self.quant_conv = ops.Conv2d(2 * spec.z_channels, 2 * spec.z_channels, kernel_size=1)
        self.post_quant_conv = ops.Conv2d(spec.z_channels, spec.z_channels, kernel_size=1)

    def drop_decoder(self, include_post_quant_conv: bool = True) -> "CondEncoder":
        """Remove the unused decoder (and by default post_quant_conv): released files may omit them; returns self."""
        self.decoder = None
        if include_post_quant_conv:
            self.post_quant_conv = None
        return self

    def encode_dist(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (N, 3, H, W) in [-1, 1] -> posterior (mean, logvar)."""
        _check_image(x, self.spec, "CondEncoder.encode")
        return _split_moments(self.quant_conv(self.encoder(x)))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) in [-1, 1] -> unscaled latent mode (N, z, H/f, W/f) (the concat-frame latent)."""
        return self.encode_dist(x)[0]
