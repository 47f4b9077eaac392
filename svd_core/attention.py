"""Attention and transformer blocks of the video UNet (paper App. D.1; reference `attention.py`, `video_attention.py`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from .layers import AlphaBlender, GroupNorm32, timestep_embedding


def _run_chunked(fn, x: torch.Tensor, chunk_size: int | None) -> torch.Tensor:
    """Apply a token-wise `fn` to `chunk_size` tokens at a time (bounded peak memory; identical maths)."""
    rows = x.shape[0] * x.shape[1]
    if not chunk_size or rows <= chunk_size:
        return fn(x)
    flat = x.reshape(1, rows, x.shape[2])  # b n c -> 1 (b n) c: every token is independent in a feed-forward
    out = torch.cat([fn(part) for part in flat.split(chunk_size, dim=1)], dim=1)
    return out.reshape(x.shape[0], x.shape[1], out.shape[2])


class CrossAttention(nn.Module):
    """Multi-head (cross-)attention through `scaled_dot_product_attention`; keys match the reference."""

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 8, dim_head: int = 64):
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        if context is not x and context.shape[1] == 1 and context.shape[0] == x.shape[0]:
            # One key: softmax over a single logit is exactly 1, so every query receives v itself.
            # Skips the q/k projections and the attention kernel (SVD's CLIP token; same result bit for bit).
            return self.to_out(self.to_v(context)).expand(-1, x.shape[1], -1)  # b 1 c -> b n c
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        # b n (h d) -> b h n d: heads become a batch axis, tokens mix inside each head only
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = rearrange(out, "b h n d -> b n (h d)")
        return self.to_out(out)


class GEGLU(nn.Module):
    """Gated GELU projection (Shazeer 2020), `proj` key as in the reference."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """`net = [GEGLU, Dropout, Linear]` with inner width 4 x dim."""

    def __init__(self, dim: int, dim_out: int | None = None, mult: int = 4):
        super().__init__()
        inner = int(dim * mult)
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Dropout(0.0), nn.Linear(inner, dim_out or dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Spatial block: self-attention over (h w), cross-attention to the context, feed-forward."""

    def __init__(self, dim: int, n_heads: int, d_head: int, context_dim: int):
        super().__init__()
        self.attn1 = CrossAttention(dim, heads=n_heads, dim_head=d_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim=context_dim, heads=n_heads, dim_head=d_head)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ff_chunk_size: int | None = None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context=context) + x
        return _run_chunked(lambda t: self.ff(self.norm3(t)), x, self.ff_chunk_size) + x


class VideoTransformerBlock(nn.Module):
    """Temporal block: attention along t for every spatial location (paper Sec. 3, `time_stack`)."""

    def __init__(self, dim: int, n_heads: int, d_head: int, context_dim: int):
        super().__init__()
        inner = n_heads * d_head
        self.norm_in = nn.LayerNorm(dim)
        self.ff_in = FeedForward(dim, dim_out=inner)
        self.attn1 = CrossAttention(inner, heads=n_heads, dim_head=d_head)
        self.ff = FeedForward(inner, dim_out=dim)
        self.norm2 = nn.LayerNorm(inner)
        self.attn2 = CrossAttention(inner, context_dim=context_dim, heads=n_heads, dim_head=d_head)
        self.norm1, self.norm3 = nn.LayerNorm(inner), nn.LayerNorm(inner)
        self.is_res = inner == dim
        self.ff_chunk_size: int | None = None

    def forward(self, x: torch.Tensor, context: torch.Tensor, timesteps: int) -> torch.Tensor:
        """x: (b t) s c; context: (b s) n c, or b n c when shared by all locations of a video."""
        bt, s, c = x.shape
        x = rearrange(x, "(b t) s c -> (b s) t c", t=timesteps)  # attend along time, per location
        ff_in = lambda t: self.ff_in(self.norm_in(t))  # noqa: E731
        x = _run_chunked(ff_in, x, self.ff_chunk_size) + x if self.is_res else _run_chunked(ff_in, x, self.ff_chunk_size)
        x = self.attn1(self.norm1(x)) + x
        x = self._cross(self.norm2(x), context, s) + x
        ff = lambda t: self.ff(self.norm3(t))  # noqa: E731
        x = _run_chunked(ff, x, self.ff_chunk_size) + x if self.is_res else _run_chunked(ff, x, self.ff_chunk_size)
        return rearrange(x, "(b s) t c -> (b t) s c", s=s)

    def _cross(self, x: torch.Tensor, context: torch.Tensor, s: int) -> torch.Tensor:
        if context.shape[0] * s == x.shape[0]:  # one context per video: share it across the s locations
            if context.shape[1] == 1:
                # single key: the output is to_out(to_v(context)) for every query; broadcast per video
                out = self.attn2.to_out(self.attn2.to_v(context))  # b 1 c
                return repeat(out, "b 1 c -> (b s) t c", s=s, t=x.shape[1])
            context = repeat(context, "b n c -> (b s) n c", s=s)
        return self.attn2(x, context=context)


class SpatialVideoTransformer(nn.Module):
    """Spatial transformer followed by a temporal one, blended by a learned `time_mixer` (reference)."""

    def __init__(self, channels: int, n_heads: int, d_head: int, context_dim: int, groups: int = 32):
        super().__init__()
        inner = n_heads * d_head
        self.norm = GroupNorm32(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(inner, n_heads, d_head, context_dim)])
        self.time_stack = nn.ModuleList([VideoTransformerBlock(inner, n_heads, d_head, context_dim)])
        self.proj_out = nn.Linear(inner, channels)
        self.time_pos_embed = nn.Sequential(nn.Linear(channels, channels * 4), nn.SiLU(), nn.Linear(channels * 4, channels))
        self.time_mixer = AlphaBlender("b t -> (b t) 1 1")
        self.channels = channels

    def forward(self, x, context, num_frames, image_only_indicator, time_context=None):
        """x: (b t) c h w; context: (b t) n c spatial; time_context: b n c (default: frame 0's context)."""
        _, _, h, w = x.shape
        x_in = x
        if time_context is None:
            time_context = context[::num_frames]  # (b t) n c -> b n c: the first frame's context per video
        x = self.norm(x)
        x = rearrange(x, "bt c h w -> bt (h w) c")
        x = self.proj_in(x)
        frame_idx = torch.arange(num_frames, device=x.device).repeat(x.shape[0] // num_frames)  # (b t)
        t_emb = timestep_embedding(frame_idx, self.channels, max_period=10000).to(x.dtype)
        emb = self.time_pos_embed(t_emb)[:, None, :]  # (b t) 1 c
        for block, mix_block in zip(self.transformer_blocks, self.time_stack):
            x = block(x, context=context)
            x_mix = mix_block(x + emb, context=time_context, timesteps=num_frames)
            x = self.time_mixer(x, x_mix, image_only_indicator)
        x = self.proj_out(x)
        x = rearrange(x, "bt (h w) c -> bt c h w", h=h, w=w)
        return x + x_in


def attention_heads(channels: int, num_head_channels: int) -> tuple[int, int]:
    """(heads, head dim) for a level of `channels` with fixed head width (reference `num_head_channels`)."""
    if channels % num_head_channels:
        raise ValueError(f"channels {channels} not divisible by num_head_channels {num_head_channels}")
    return channels // num_head_channels, num_head_channels


__all__ = ["CrossAttention", "FeedForward", "BasicTransformerBlock", "VideoTransformerBlock",
           "SpatialVideoTransformer", "attention_heads"]
