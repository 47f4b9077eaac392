"""Chunked video decoding and encoding with the first stage (reference `DiffusionEngine.decode_first_stage`).

The temporal decoder mixes frames, so its output depends on how many frames are decoded together: `decode_t`
(reference `decoding_t`, default 14) is a user-visible setting, never derived from free memory, so a seed gives
the same video on every machine. Chunks are cut per video (frames of a video are contiguous: "(b t) c h w");
the last chunk of a video may be shorter and is decoded with its own length, as the reference does.
`overlap` > 0 decodes overlapping windows and cross-fades the shared frames with linear weights to hide seams.

`tile` (latent pixels) additionally decodes each window in overlapping spatial tiles (`tile_windows`) and blends
them with per-axis ramps (`spatial_weights`): the decoder's activations shrink to a tile's, the result differs from
the whole-frame decode only near the seams (the decoder's mid attention and its convolutions' context see one tile);
a single tile is the whole-frame decode bit for bit.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from einops import rearrange

from .vae import FirstStage

__all__ = ["decode_video", "encode_video", "chunk_windows", "tile_windows", "spatial_weights", "check_tiling",
           "RAMPS"]

RAMPS = ("linear", "cosine")


def chunk_windows(num_frames: int, decode_t: int, overlap: int = 0) -> list[tuple[int, int]]:
    """Frame windows [start, end) covering 0..num_frames, each at most `decode_t` long, neighbours sharing `overlap`."""
    windows, start = [], 0
    while True:
        end = min(start + decode_t, num_frames)
        windows.append((start, end))
        if end == num_frames:
            return windows
        start = end - overlap


def _blend_weights(windows: list[tuple[int, int]], index: int) -> torch.Tensor:
    """Per-frame weights of window `index`: linear ramps over the frames shared with its neighbours, 1 elsewhere.

    In a shared run of o frames the incoming window weighs (k+1)/(o+1) and the outgoing one (o-k)/(o+1), k = 0..o-1:
    the two sum to one on every frame.
    """
    start, end = windows[index]
    w = torch.ones(end - start, dtype=torch.float64)
    if index > 0:
        shared = windows[index - 1][1] - start
        if shared > 0:
            w[:shared] = torch.arange(1, shared + 1, dtype=torch.float64) / (shared + 1)
    if index + 1 < len(windows):
        shared = end - windows[index + 1][0]
        if shared > 0:
            w[-shared:] = w[-shared:] * torch.arange(shared, 0, -1, dtype=torch.float64) / (shared + 1)
    return w


def tile_windows(size: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Windows [start, end) of at most `tile` covering 0..size, neighbours sharing exactly `overlap` (`chunk_windows`).

    Starts step by tile - overlap; with 2 overlap < tile, tile i + 2 starts at s + 2 (tile - overlap) > s + tile,
    after tile i's end: every position lies in at most two tiles. The last tile is longer than `overlap`."""
    return chunk_windows(size, tile, overlap)


def spatial_weights(windows: list[tuple[int, int]], index: int, scale: int, ramp: str = "linear") -> torch.Tensor:
    """Weights along one axis of the decoded tile `index` (`windows` in latents, `scale` pixels per latent).

    The shared pixels of two neighbours get `_blend_weights`' linear ramps r and 1 - r ((k+1)/(o+1), (o-k)/(o+1)),
    or for "cosine" sin^2(pi r / 2) and sin^2(pi (1 - r) / 2) = cos^2(pi r / 2): the pair sums to one on every
    pixel, and a pixel lies in at most two tiles (`tile_windows`), so the weights of all tiles sum to one along the
    axis. The 2-D weight of a tile is the product of its row and column weights, and sum_ij a_i(y) b_j(x) =
    (sum_i a_i(y)) (sum_j b_j(x)) = 1: the blend is a convex combination of the tiles at every pixel."""
    w = _blend_weights([(a * scale, b * scale) for a, b in windows], index)
    if ramp == "cosine":
        w = torch.sin(w * (math.pi / 2)) ** 2
    return w


def _decode_tiled(decode: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, tile: int, overlap: int,
                  ramp: str) -> torch.Tensor:
    """`decode(z)` for latents "n c h w", tile by tile (tile x tile latents, neighbours sharing >= `overlap`),
    each decoded tile weighted by `spatial_weights` and summed into the output "n 3 H W"."""
    rows, cols = tile_windows(z.shape[-2], tile, overlap), tile_windows(z.shape[-1], tile, overlap)
    if len(rows) == 1 and len(cols) == 1:
        return decode(z)
    out = None
    for i, (y0, y1) in enumerate(rows):
        for j, (x0, x1) in enumerate(cols):
            piece = decode(z[..., y0:y1, x0:x1])  # n 3 (f th) (f tw)
            f = piece.shape[-1] // (x1 - x0)  # the decoder's upsampling factor
            if out is None:
                out = piece.new_zeros(piece.shape[:-2] + (z.shape[-2] * f, z.shape[-1] * f))
            wy = spatial_weights(rows, i, f, ramp).to(piece)
            wx = spatial_weights(cols, j, f, ramp).to(piece)
            out[..., y0 * f:y1 * f, x0 * f:x1 * f] += piece * (wy[:, None] * wx[None, :])  # (H) x (W) -> H W
    return out


def check_tiling(tile: int | None, overlap: int | None = None, ramp: str = "linear",
                 labels: dict[str, str] | None = None) -> tuple[int | None, int | None]:
    """(tile, overlap) checked: tile None or 0 (whole frames) or an int >= 4 latent pixels; overlap (default
    tile // 4) an int with 2 overlap < tile; ramp one of RAMPS. `labels` name the options in errors."""
    labels = {"tile": "tile", "tile_overlap": "tile_overlap", "tile_ramp": "tile_ramp", **(labels or {})}
    if tile is None or (tile == 0 and not isinstance(tile, bool)):
        return None, None
    _check_int(labels["tile"], tile, 4)
    overlap = tile // 4 if overlap is None else overlap
    _check_int(labels["tile_overlap"], overlap, 0)
    if 2 * overlap >= tile:
        raise ValueError(f"{labels['tile_overlap']} must be less than half the tile (2 * overlap < tile), got "
                         f"{labels['tile_overlap']}={overlap}, {labels['tile']}={tile}")
    if ramp not in RAMPS:
        raise ValueError(f"{labels['tile_ramp']}={ramp!r}; expected one of {RAMPS}")
    return tile, overlap


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def decode_video(
    first_stage: FirstStage,
    z: torch.Tensor,
    num_frames: int,
    decode_t: int = 14,
    overlap: int = 0,
    scale_factor: float = 0.18215,
    image_decoder: bool = False,
    clamp: bool = True,
    callback: Callable[[int, int], None] | None = None,
    tile: int | None = None,
    tile_overlap: int | None = None,
    tile_ramp: str = "linear",
) -> torch.Tensor:
    """Scaled latents "(b t) 4 h w" -> frames "(b t) 3 H W" in [-1, 1], decoding `decode_t` frames at a time per video.

    `image_decoder=True` (or an image-decoder first stage) decodes every frame on its own, ignoring time.
    `clamp=False` returns the raw decoder output. `callback(done, total)` reports decoded frames after every chunk.
    `tile` (latent pixels, None: whole frames) decodes in spatial tiles sharing `tile_overlap` latent pixels
    (default tile // 4), blended with `tile_ramp` ("linear" or "cosine") weights.
    """
    _check_int("num_frames", num_frames, 1)
    _check_int("decode_t", decode_t, 1)
    _check_int("overlap", overlap, 0)
    tile, tile_overlap = check_tiling(tile, tile_overlap, tile_ramp)
    if overlap >= decode_t:
        raise ValueError(
            f"overlap must be smaller than decode_t (0 <= overlap < decode_t), got overlap={overlap}, decode_t={decode_t}"
        )
    if not scale_factor or scale_factor <= 0:
        raise ValueError(f"scale_factor must be > 0, got {scale_factor!r}")
    if z.ndim != 4:
        raise ValueError(f"decode_video expects latents (N, C, h, w) with N = batch*frames, got shape {tuple(z.shape)}")
    if z.shape[0] % num_frames:
        raise ValueError(
            f"latent batch N={z.shape[0]} is not divisible by num_frames={num_frames}: pass the frames of every "
            "video contiguously ((b t) c h w) and the matching num_frames"
        )
    z = z / scale_factor
    total = z.shape[0]

    def run(zz: torch.Tensor, n: int, **kw) -> torch.Tensor:
        if tile is None:
            return first_stage.decode(zz, n, **kw)
        return _decode_tiled(lambda piece: first_stage.decode(piece, n, **kw), zz, tile, tile_overlap, tile_ramp)

    if image_decoder or not first_stage.temporal:
        # per-frame decoder: chunks only bound memory, the result does not depend on them
        pieces = []
        for start in range(0, total, decode_t):
            # a temporal decoder decodes per frame through its spatial layers (reference `skip_video`)
            pieces.append(run(z[start:start + decode_t], 1, skip_video=first_stage.temporal))
            if callback is not None:
                callback(min(start + decode_t, total), total)
        out = torch.cat(pieces, dim=0)
    else:
        videos = rearrange(z, "(b t) c h w -> b t c h w", t=num_frames)
        windows = chunk_windows(num_frames, decode_t, overlap)
        work = videos.shape[0] * sum(end - start for start, end in windows)  # frames decoded, overlaps included
        outs, done = [], 0
        for video in videos:  # t c h w
            frames = None
            weight_sum = torch.zeros(num_frames, dtype=torch.float64)
            for index, (start, end) in enumerate(windows):
                decoded = run(video[start:end], end - start)  # t 3 H W, t = window length
                if frames is None:
                    frames = decoded.new_zeros((num_frames,) + tuple(decoded.shape[1:]))
                if overlap == 0:
                    frames[start:end] = decoded
                else:
                    w = _blend_weights(windows, index)
                    weight_sum[start:end] += w
                    frames[start:end] += decoded * w.to(decoded)[:, None, None, None]  # t -> t 1 1 1
                done += end - start
                if callback is not None:
                    callback(done, work)
            if overlap:
                # the ramps already sum to one on every frame; dividing only guards against rounding
                frames = frames / weight_sum.to(frames)[:, None, None, None]  # t -> t 1 1 1
            outs.append(frames)
        out = rearrange(torch.stack(outs), "b t c h w -> (b t) c h w")
    return out.clamp(-1.0, 1.0) if clamp else out


def encode_video(
    first_stage,
    x: torch.Tensor,
    scale_factor: float = 0.18215,
    encode_t: int = 14,
    sample_posterior: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Frames "(b t) 3 H W" in [-1, 1] -> scaled latents "(b t) 4 h w" (video-to-video); per-frame, `encode_t` at a time.

    `first_stage` is a `FirstStage` with an encoder or a `CondEncoder`. The latent is the posterior's mean (mode), or
    with `sample_posterior` a draw `mean + exp(logvar / 2) * eps`, eps from `generator` (CPU by default), as the
    reference first stage encodes (`DiagonalGaussianRegularizer(sample=True)` ->
    `DiagonalGaussianDistribution.sample`, sgm/modules/autoencoding/regularizers, distributions.py).
    """
    _check_int("encode_t", encode_t, 1)
    if not scale_factor or scale_factor <= 0:
        raise ValueError(f"scale_factor must be > 0, got {scale_factor!r}")
    if x.ndim != 4:
        raise ValueError(f"encode_video expects frames (N, 3, H, W) with N = batch*frames, got shape {tuple(x.shape)}")
    if not sample_posterior:
        latents = [first_stage.encode(x[start:start + encode_t]) for start in range(0, x.shape[0], encode_t)]
        return torch.cat(latents, dim=0) * scale_factor
    generator = generator or torch.Generator().manual_seed(0)
    latents = []
    for start in range(0, x.shape[0], encode_t):
        mean, logvar = first_stage.encode_dist(x[start:start + encode_t])
        eps = torch.randn(mean.shape, generator=generator, device=generator.device, dtype=torch.float32)
        latents.append(mean + torch.exp(0.5 * logvar) * eps.to(mean))
    return torch.cat(latents, dim=0) * scale_factor
