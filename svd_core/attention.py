"""Attention and transformer blocks of the video UNet (paper App. D.1; reference `attention.py`, `video_attention.py`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from .layers import AlphaBlender, GroupNorm32, add_into, add_to, records, timestep_embedding
from .ops import bypassable, layer_class, resolve


# Feed-forwards run this many token rows at a time by default (inference): the GEGLU's 8x-wide intermediate is
# the UNet's largest tensor (2.2 GiB at SVD-XT's first level), and row slices of it are as fast on CPU (64x8 CFG
# forward, 1 thread: 8192 and 2048 rows take the same time). Self-attentions run on whole sequences of about as
# many rows (at least one), so their q, k, v never span the batch.
DEFAULT_FF_CHUNK = 2048

# GEGLU without autograd computes its two halves as two Linears into contiguous buffers (see GEGLU.forward);
# False: one projection and its halves as views (the bench's ablation switch)
GEGLU_SPLIT = True


def _starts(total: int, step: int, meta: bool) -> range | tuple[int, ...]:
    """Slice starts over `total` rows; on the meta device (memory planning: shapes only, the slices' working
    sets are alike) only the first and the last slice run."""
    starts = range(0, total, step)
    return (starts[0], starts[-1]) if meta and len(starts) > 2 else starts


def _run_chunked(fn, x: torch.Tensor, chunk_size: int | None, module: nn.Module | None = None,
                 residual: bool = False) -> torch.Tensor:
    """Apply a token-wise `fn` to `chunk_size` tokens at a time (bounded peak memory; identical maths);
    `residual`: `x + fn(x)`.

    Only when no graph is recorded through `x` or `module`'s parameters (a graph keeps every slice's
    intermediates alive anyway); slices are written into one preallocated output, or with `residual` added into
    x itself (x must then be a fresh intermediate of the caller's: each slice is read before it is overwritten,
    and no full-size output exists)."""
    rows = x.shape[0] * x.shape[1]
    if records(x, *(module.parameters() if module else ())):
        return add_into(fn(x), x) if residual else fn(x)
    if not chunk_size or rows <= chunk_size:
        return x.add_(fn(x)) if residual else fn(x)
    flat = x.view(rows, x.shape[2])  # b n c -> (b n) c: every token is independent in a feed-forward
    out = None
    for start in _starts(rows, chunk_size, x.is_meta):
        y = fn(flat[None, start:start + chunk_size])[0]  # 1 rows c -> rows c
        if residual:
            flat[start:start + y.shape[0]] += y
            continue
        if out is None:
            out = y.new_empty((rows, y.shape[-1]))
        out[start:start + y.shape[0]] = y
    if residual:
        return x
    return out.reshape(x.shape[0], x.shape[1], out.shape[-1])


def _attend_in_slices(fn, x: torch.Tensor, chunk_size: int | None, module: nn.Module) -> torch.Tensor:
    """`x + fn(x)` for a `fn` that mixes tokens only within each sequence (a pre-norm attention branch).

    Without a graph, `fn` runs on max(1, chunk_size // tokens) sequences at a time and each slice's result is added
    into x itself (x must be a fresh intermediate of the caller's): the branch's q, k, v and output exist for one
    slice only. Same sums as the whole batch at once."""
    if records(x, *module.parameters()):
        return add_into(fn(x), x)
    per = max(1, chunk_size // x.shape[1]) if chunk_size else x.shape[0]  # sequences per slice
    if per >= x.shape[0]:
        return x.add_(fn(x))
    for start in _starts(x.shape[0], per, x.is_meta):
        x[start:start + per] += fn(x[start:start + per])
    return x


class CrossAttention(nn.Module):
    """Multi-head (cross-)attention through `scaled_dot_product_attention`; keys match the reference."""

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 8, dim_head: int = 64,
                 operations=None):
        super().__init__()
        ops = resolve(operations)
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.to_q = ops.Linear(query_dim, inner, bias=False)
        self.to_k = ops.Linear(context_dim, inner, bias=False)
        self.to_v = ops.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(ops.Linear(inner, query_dim), nn.Dropout(0.0))

    def single_key(self, context: torch.Tensor) -> torch.Tensor:
        """Attention to one key: softmax over a single logit is exactly 1, so every query receives
        `to_out(to_v(context))` whatever it is (SVD's CLIP token). b 1 c, to broadcast over the queries."""
        return self.to_out(self.to_v(context))

    @staticmethod
    def one_key_each(x: torch.Tensor, context: torch.Tensor | None) -> bool:
        """Cross-attention where every sequence of `x` has a context of exactly one token."""
        return context is not None and context is not x and context.shape[1] == 1 and context.shape[0] == x.shape[0]

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                norm: nn.Module | None = None) -> torch.Tensor:
        """`norm`: applied to x first (the block's pre-norm), here so that the normalised copy is freed once
        projected; each intermediate is dropped as soon as the next one exists."""
        if self.one_key_each(x, context):
            # skips the q/k projections and the attention kernel (same result bit for bit)
            return self.single_key(context).expand(-1, x.shape[1], -1)  # b 1 c -> b n c
        x = x if norm is None else norm(x)
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        x = context = None
        # b n (h d) -> b h n d: heads become a batch axis, tokens mix inside each head only
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        q = k = v = None
        out = rearrange(out, "b h n d -> b n (h d)")
        return self.to_out(out)


class GEGLU(nn.Module):
    """Gated GELU projection (Shazeer 2020), `proj` key as in the reference."""

    def __init__(self, dim_in: int, dim_out: int, operations=None):
        super().__init__()
        self.proj = resolve(operations).Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        proj = self.proj
        if records(x, proj.weight, proj.bias) or not bypassable(proj):
            x, gate = proj(x).chunk(2, dim=-1)
            return x * F.gelu(gate)
        # without autograd: the two halves of the projection as two Linears on the weight's row blocks (views),
        # each into its own contiguous buffer, GELU and the product in place. Same peak as the whole projection;
        # an in-place GELU on the row-strided half of one buffer runs 4x slower on CPU (not vectorised: 18.5 vs
        # 4.4 ms for 16384 x 256 float32), the two Linears as fast as one (bench --ablate "GEGLU as two Linears")
        if not GEGLU_SPLIT:
            x, gate = proj(x).chunk(2, dim=-1)  # the result is a row-strided view of the projection's buffer
            torch.ops.aten.gelu_(gate)
            return x.mul_(gate)
        inner = proj.weight.shape[0] // 2
        bias = (None, None) if proj.bias is None else (proj.bias[:inner], proj.bias[inner:])
        gate = torch.ops.aten.gelu_(F.linear(x, proj.weight[inner:], bias[1]))
        return F.linear(x, proj.weight[:inner], bias[0]).mul_(gate)


class FeedForward(nn.Module):
    """`net = [GEGLU, Dropout, Linear]` with inner width 4 x dim."""

    def __init__(self, dim: int, dim_out: int | None = None, mult: int = 4, operations=None):
        super().__init__()
        inner = int(dim * mult)
        self.net = nn.Sequential(GEGLU(dim, inner, operations), nn.Dropout(0.0),
                                 resolve(operations).Linear(inner, dim_out or dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Spatial block: self-attention over (h w), cross-attention to the context, feed-forward."""

    def __init__(self, dim: int, n_heads: int, d_head: int, context_dim: int, operations=None):
        super().__init__()
        ops = resolve(operations)
        self.attn1 = CrossAttention(dim, heads=n_heads, dim_head=d_head, operations=operations)
        self.ff = FeedForward(dim, operations=operations)
        self.attn2 = CrossAttention(dim, context_dim=context_dim, heads=n_heads, dim_head=d_head,
                                    operations=operations)
        self.norm1, self.norm2, self.norm3 = ops.LayerNorm(dim), ops.LayerNorm(dim), ops.LayerNorm(dim)
        self.ff_chunk_size: int | None = DEFAULT_FF_CHUNK

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        # without a graph the residuals accumulate into x (the caller's fresh proj_in output: the caller keeps
        # its name on it, so a sum in a new buffer would leave it alive); with one, into the branch output
        x = _attend_in_slices(lambda t: self.attn1(t, norm=self.norm1), x, self.ff_chunk_size, self)
        if self.attn2.one_key_each(x, context):
            cross = self.attn2.single_key(context)  # b 1 c: the same for every query, so norm2 is not needed
        else:
            cross = self.attn2(x, context=context, norm=self.norm2)
        x = add_to(x, cross)  # norm2's backward may read x: in place only without a graph
        return _run_chunked(lambda t: self.ff(self.norm3(t)), x, self.ff_chunk_size, self, residual=True)


class VideoTransformerBlock(nn.Module):
    """Temporal block: attention along t for every spatial location (paper Sec. 3, `time_stack`)."""

    def __init__(self, dim: int, n_heads: int, d_head: int, context_dim: int, operations=None):
        super().__init__()
        ops = resolve(operations)
        inner = n_heads * d_head
        self.norm_in = ops.LayerNorm(dim)
        self.ff_in = FeedForward(dim, dim_out=inner, operations=operations)
        self.attn1 = CrossAttention(inner, heads=n_heads, dim_head=d_head, operations=operations)
        self.ff = FeedForward(inner, dim_out=dim, operations=operations)
        self.norm2 = ops.LayerNorm(inner)
        self.attn2 = CrossAttention(inner, context_dim=context_dim, heads=n_heads, dim_head=d_head,
                                    operations=operations)
        self.norm1, self.norm3 = ops.LayerNorm(inner), ops.LayerNorm(inner)
        self.is_res = inner == dim
        self.ff_chunk_size: int | None = DEFAULT_FF_CHUNK

    def forward(self, x: torch.Tensor, context: torch.Tensor, timesteps: int,
                emb: torch.Tensor | None = None) -> torch.Tensor:
        """x: (b t) s c; context: (b s) n c, or b n c when shared by all locations of a video; emb: (b t) 1 c,
        added to x on the way in (the frame position embedding of `SpatialVideoTransformer`)."""
        s = x.shape[1]
        return rearrange(self.time_major(x, context, timesteps, emb), "(b s) t c -> (b t) s c", s=s)

    def time_major(self, x: torch.Tensor, context: torch.Tensor, timesteps: int,
                   emb: torch.Tensor | None = None) -> torch.Tensor:
        """`forward` with the result left "(b s) t c" (frames innermost), for a caller that reads it through a
        view instead of copying it back."""
        s = x.shape[1]
        x = _time_major(x, emb, timesteps)  # attend along time, per location
        ff_in = lambda t: self.ff_in(self.norm_in(t))  # noqa: E731
        x = _run_chunked(ff_in, x, self.ff_chunk_size, self, residual=self.is_res)  # x: fresh, ours
        x = _attend_in_slices(lambda t: self.attn1(t, norm=self.norm1), x, self.ff_chunk_size, self)
        x = self._cross(x, context, s)
        return _run_chunked(lambda t: self.ff(self.norm3(t)), x, self.ff_chunk_size, self, residual=self.is_res)

    def _cross(self, x: torch.Tensor, context: torch.Tensor, s: int) -> torch.Tensor:
        """x + attn2(norm2(x), context) on "(b s) t c"."""
        if context.shape[0] * s == x.shape[0]:  # one context per video: share it across the s locations
            if context.shape[1] == 1:
                # single key: every query of a video receives the same b 1 c vector; norm2 is not needed
                out = self.attn2.single_key(context)[:, None]  # b 1 1 c, broadcast over s and t
                xv = x.unflatten(0, (-1, s))  # (b s) t c -> b s t c (a view)
                return add_to(xv, out).flatten(0, 1)
            context = repeat(context, "b n c -> (b s) n c", s=s)
        return self.attn2(x, context=context, norm=self.norm2) + x


def _time_major(x: torch.Tensor, emb: torch.Tensor | None, timesteps: int) -> torch.Tensor:
    """(b t) s c (+ emb, (b t) 1 c) -> (b s) t c. Without a graph, the sum is written straight into the permuted
    layout (one pass, one buffer, instead of a sum and its rearranged copy)."""
    bt, s, c = x.shape
    b = bt // timesteps
    if emb is None:
        y = rearrange(x, "(b t) s c -> (b s) t c", t=timesteps)
        return y.clone() if timesteps == 1 or s == 1 else y  # a view then: the block adds into its own copy
    if records(x, emb) or x.dtype != emb.dtype or torch.compiler.is_compiling():  # (a compiler fuses it anyway)
        return rearrange(x + emb, "(b t) s c -> (b s) t c", t=timesteps)
    out = torch.empty(b * s, timesteps, c, dtype=x.dtype, device=x.device)
    xv = x.view(b, timesteps, s, c).transpose(1, 2)  # (b t) s c -> b s t c (a view)
    ev = emb.view(b, timesteps, 1, c).transpose(1, 2)  # (b t) 1 c -> b 1 t c
    torch.add(xv, ev, out=out.view(b, s, timesteps, c))  # (b s) t c seen as b s t c
    return out


class SpatialVideoTransformer(nn.Module):
    """Spatial transformer followed by a temporal one, blended by a learned `time_mixer` (reference)."""

    def __init__(self, channels: int, n_heads: int, d_head: int, context_dim: int, groups: int = 32,
                 operations=None):
        super().__init__()
        ops = resolve(operations)
        inner = n_heads * d_head
        self.norm = layer_class(GroupNorm32, operations)(groups, channels, eps=1e-6)
        self.proj_in = ops.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(inner, n_heads, d_head, context_dim,
                                                                       operations)])
        self.time_stack = nn.ModuleList([VideoTransformerBlock(inner, n_heads, d_head, context_dim, operations)])
        self.proj_out = ops.Linear(inner, channels)
        self.time_pos_embed = nn.Sequential(ops.Linear(channels, channels * 4), nn.SiLU(),
                                            ops.Linear(channels * 4, channels))
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
            x_mix = mix_block.time_major(x, time_context, num_frames, emb)  # (b s) t c
            x = self._blend(x, x_mix, image_only_indicator, num_frames)
        x = self.proj_out(x)
        x = rearrange(x, "bt (h w) c -> bt c h w", h=h, w=w)  # a channels-last view
        if not x_in.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous()  # keep an NCHW network NCHW (the next group norm is slow on channels-last)
        return add_into(x, x_in)

    def _blend(self, x: torch.Tensor, x_mix: torch.Tensor, image_only_indicator: torch.Tensor,
               num_frames: int) -> torch.Tensor:
        """`time_mixer(x, x_mix)` for x: (b t) s c and x_mix: (b s) t c, read through a (b t) s c view.

        Without a graph, a x + (1 - a) x_mix = x + (1 - a)(x_mix - x) is written into x (the spatial block's
        fresh output): no copy of x_mix back to (b t) s c and no third buffer."""
        bt, s, c = x.shape
        b = bt // num_frames
        x_mix = x_mix.view(b, s, num_frames, c).transpose(1, 2)  # (b s) t c -> b t s c (a view)
        alpha = self.time_mixer.alpha(image_only_indicator).view(b, num_frames, 1, 1)  # b t 1 1, float32
        xv = x.view(b, num_frames, s, c)
        if records(x, x_mix, alpha):
            return torch.lerp(x_mix, xv, alpha.to(x.dtype)).reshape(bt, s, c)
        return xv.lerp_(x_mix, (1.0 - alpha).to(x.dtype)).view(bt, s, c)


def attention_heads(channels: int, num_head_channels: int) -> tuple[int, int]:
    """(heads, head dim) for a level of `channels` with fixed head width (reference `num_head_channels`)."""
    if channels % num_head_channels:
        raise ValueError(f"channels {channels} not divisible by num_head_channels {num_head_channels}")
    return channels // num_head_channels, num_head_channels


__all__ = ["DEFAULT_FF_CHUNK", "CrossAttention", "FeedForward", "BasicTransformerBlock", "VideoTransformerBlock",
           "SpatialVideoTransformer", "attention_heads"]
