"""The video UNet (reference `VideoUNet`; paper Sec. 3 and App. D.1): spatial layers interleaved with temporal ones."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import SpatialVideoTransformer, attention_heads
from .layers import Downsample, GroupNorm32, Upsample, VideoResBlock, add_to, like_weight, timestep_embedding
from .ops import layer_class, resolve
from .variants import UNetSpec


class TimestepEmbedSequential(nn.ModuleList):
    """Runs a level's modules, giving each the inputs it needs (ResBlocks: emb; transformers: context)."""

    def forward(self, x, emb, context, num_frames, image_only_indicator, time_context=None):
        for layer in self:
            x = self._layer(layer, x, emb, context, num_frames, image_only_indicator, time_context)
        return x

    def forward_owned(self, parts: list, emb, context, num_frames, image_only_indicator, time_context=None):
        """`forward(torch.cat(parts, 1), ...)` that takes ownership of `parts` (a decoder level's input and its
        skip, referenced nowhere else: the caller drops its names): the list is emptied once concatenated and the
        concatenation is freed once the first layer has consumed it, so neither outlives its use (inference)."""
        x = torch.cat(parts, dim=1)  # b (c_h + c_skip) h w
        parts.clear()
        for layer in self:
            x = self._layer(layer, x, emb, context, num_frames, image_only_indicator, time_context)
        return x

    @staticmethod
    def _layer(layer, x, emb, context, num_frames, image_only_indicator, time_context):
        if isinstance(layer, VideoResBlock):
            return layer(x, emb, num_frames, image_only_indicator)
        if isinstance(layer, SpatialVideoTransformer):
            return layer(x, context, num_frames, image_only_indicator, time_context)
        return layer(x)


class VideoUNet(nn.Module):
    """`forward(x, timesteps, context, y, num_video_frames, image_only_indicator)` as in the reference."""

    def __init__(self, spec: UNetSpec, operations=None):
        """`operations`: the namespace every weight layer is built from (`svd_core.ops`; default torch.nn)."""
        super().__init__()
        self.spec = spec
        ops = resolve(operations)
        mc, groups = spec.model_channels, spec.norm_groups
        emb_dim = mc * 4
        self.time_embed = nn.Sequential(ops.Linear(mc, emb_dim), nn.SiLU(), ops.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Sequential(
            nn.Sequential(ops.Linear(spec.adm_in_channels, emb_dim), nn.SiLU(), ops.Linear(emb_dim, emb_dim)))

        def res(cin, cout):
            return VideoResBlock(cin, emb_dim, cout, spec.video_kernel_size, groups=groups, operations=operations)

        def attn(ch):
            heads, d_head = attention_heads(ch, spec.num_head_channels)
            return SpatialVideoTransformer(ch, heads, d_head, spec.context_dim, groups=groups, operations=operations)

        self.input_blocks = nn.ModuleList([TimestepEmbedSequential([ops.Conv2d(spec.in_channels, mc, 3, padding=1)])])
        skip_chans, ch, ds = [mc], mc, 1
        for level, mult in enumerate(spec.channel_mult):
            for _ in range(spec.num_res_blocks):
                layers = [res(ch, mult * mc)]
                ch = mult * mc
                if ds in spec.attention_resolutions:
                    layers.append(attn(ch))
                self.input_blocks.append(TimestepEmbedSequential(layers))
                skip_chans.append(ch)
            if level != len(spec.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential([Downsample(ch, operations)]))
                skip_chans.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential([res(ch, ch), attn(ch), res(ch, ch)])
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(spec.channel_mult))[::-1]:
            for i in range(spec.num_res_blocks + 1):
                layers = [res(ch + skip_chans.pop(), mult * mc)]
                ch = mult * mc
                if ds in spec.attention_resolutions:
                    layers.append(attn(ch))
                if level and i == spec.num_res_blocks:
                    layers.append(Upsample(ch, operations))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(layers))
        self.out = nn.Sequential(layer_class(GroupNorm32, operations)(groups, ch), nn.SiLU(),
                                 ops.Conv2d(mc, spec.out_channels, 3, padding=1))
        self.gradient_checkpointing = False
        self.video_chunk: int | None = None

    def set_video_chunk(self, videos: int | None) -> None:
        """Without autograd, run batches of more than `videos` videos `videos` at a time (the CFG batch: the
        unconditional and conditional branches one after the other with 1): every video's activations are
        independent (frames mix only within a video), so the result is the same and the activation peak shrinks
        with the batch (SVD-XT 25 x 1024x576 fp16, CFG: 4.9 -> 2.5 GiB). None or 0: the whole batch at once."""
        if videos is not None and (isinstance(videos, bool) or not isinstance(videos, int) or videos < 0):
            raise ValueError(f"video chunk must be None or an int >= 0, got {videos!r}")
        self.video_chunk = videos or None

    def set_ff_chunk_size(self, chunk_size: int | None) -> None:
        """Run transformer feed-forwards on slices of `chunk_size` rows, and self-attentions on slices of whole
        sequences of about as many rows (inference): lower peak memory, same result. None or 0 runs them whole;
        the default is `attention.DEFAULT_FF_CHUNK`."""
        for m in self.modules():
            if hasattr(m, "ff_chunk_size"):
                m.ff_chunk_size = chunk_size

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None,
                y: torch.Tensor | None = None, num_video_frames: int | None = None,
                image_only_indicator: torch.Tensor | None = None, time_context: torch.Tensor | None = None,
                control: dict | None = None):
        """x: (b t) c h w; timesteps, y: per (b t); context: (b t) n c; image_only_indicator: b t.

        `control`: ControlNet residuals as a host passes them, {"input": [...], "middle": [...], "output": [...]}
        (ComfyUI's `apply_control`, openaimodel.py): each list is consumed from its end, "input" after every input
        block (before its skip is kept), "middle" after the middle block, "output" onto each skip as the decoder
        takes it; None entries are skipped. The lists are not modified."""
        if num_video_frames is None or x.shape[0] % num_video_frames:
            raise ValueError(f"num_video_frames={num_video_frames} must divide the batch of {x.shape[0]} frames")
        if image_only_indicator is None:
            image_only_indicator = torch.zeros(x.shape[0] // num_video_frames, num_video_frames, device=x.device)
        videos = x.shape[0] // num_video_frames
        if self.video_chunk and videos > self.video_chunk and not torch.is_grad_enabled():
            return self._forward_by_videos(x, timesteps, context, y, num_video_frames, image_only_indicator,
                                           time_context, control)
        emb = self.time_embed(timestep_embedding(timesteps, self.spec.model_channels).to(x.dtype))
        emb = emb + self.label_emb(y.to(emb.dtype))
        args = (emb, context, num_video_frames, image_only_indicator, time_context)
        checkpointing = self.gradient_checkpointing and self.training
        if checkpointing:  # recompute each block's activations in backward
            def run(module, h):
                return checkpoint(module, h, *args, use_reentrant=False)
        else:
            def run(module, h):
                return module(h, *args)
        residuals = {k: list(v) for k, v in (control or {}).items() if k in CONTROL_KEYS and v}
        hs, h = [], like_weight(x, self.input_blocks[0][0].weight)
        for index, module in enumerate(self.input_blocks):
            h = apply_control(run(module, h), residuals, "input", index)
            hs.append(h)
        h = apply_control(run(self.middle_block, h), residuals, "middle", 0)
        for index, module in enumerate(self.output_blocks):
            skip = apply_control(hs.pop(), residuals, "output", index)
            if checkpointing:
                h = run(module, torch.cat([h, skip], dim=1))
                continue
            # hand h and the skip over: the block frees them (and their concatenation) once consumed
            parts, h, skip = [h, skip], None, None
            h = module.forward_owned(parts, *args)
        return self.out(h.to(x.dtype))

    def _forward_by_videos(self, x, timesteps, context, y, num_frames, image_only_indicator, time_context, control):
        """`forward` on `video_chunk` videos at a time, written into one output (see `set_video_chunk`)."""
        n, step = x.shape[0], self.video_chunk * num_frames

        def part(t, lo, hi, per_frame=True):
            if t is None:
                return None
            rows = t.shape[0] if per_frame else t.shape[0] * num_frames
            if rows != n:  # shared by every video (a broadcast residual, one context for all)
                return t
            return t[lo:hi] if per_frame else t[lo // num_frames:hi // num_frames]

        chunk, self.video_chunk = self.video_chunk, None
        out = None
        try:
            for lo in range(0, n, step):
                hi = min(lo + step, n)
                ctrl = None if control is None else {k: [part(c, lo, hi) for c in v] for k, v in control.items()}
                piece = self.forward(x[lo:hi], part(timesteps, lo, hi), part(context, lo, hi), part(y, lo, hi),
                                     num_frames, part(image_only_indicator, lo, hi, per_frame=False),
                                     part(time_context, lo, hi, per_frame=False), ctrl)
                if out is None:
                    out = piece.new_empty((n,) + tuple(piece.shape[1:]))
                out[lo:hi] = piece  # (b t) c h w: this piece's videos
                del piece
        finally:
            self.video_chunk = chunk
        return out


CONTROL_KEYS = ("input", "middle", "output")


def apply_control(h: torch.Tensor, residuals: dict, name: str, index: int) -> torch.Tensor:
    """`h` plus the last residual left in `residuals[name]` (popped), in h's dtype; `h` unchanged when the list is
    absent or empty or the residual is None (ComfyUI's `apply_control`). A residual of another shape is an error."""
    queue = residuals.get(name)
    if not queue:
        return h
    ctrl = queue.pop()
    if ctrl is None:
        return h
    if ctrl.shape[1:] != h.shape[1:] or ctrl.shape[0] not in (1, h.shape[0]):
        raise ValueError(f"control residual for {name} block {index} has shape {tuple(ctrl.shape)} but the block's "
                         f"output is {tuple(h.shape)}: the ControlNet does not match this UNet or this latent size")
    return add_to(h, ctrl.to(device=h.device, dtype=h.dtype))

