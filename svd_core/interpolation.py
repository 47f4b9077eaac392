"""Frame interpolation (paper App. D.5): 5-frame model conditioned on the first and last frame, 4x frame rate.

Variant `svd_interp` (`SPEC`, svd_core.variants.SVD_INTERP): SVD's architecture with
  * UNet input = noise (4) + latent sequence (4) + binary mask (1) = 9 channels: the latent sequence holds the VAE
    latents of frames 0 and T-1 and the learned mask embedding (`conditioner.embedders.3.mask_embedding`, one value
    per latent channel) at the T-2 middle frames; the mask channel is 1 on the given frames, 0 on the generated ones;
  * cross-attention context = CLIP image embeddings of the first and the last frame (2 tokens, every frame);
  * vector conditioning as SVD (fps of the interpolated video, motion bucket, cond_aug: adm 768).
Key layout = SVD's plus `conditioner.embedders.3.mask_embedding` (4,), with `input_blocks.0.0.weight` (320, 9, 3, 3).

For the training issue:
  * `init_from(svd_model)`: the interpolation model initialised from an SVD checkpoint (conv_in's 9th input channel
    and the mask embedding start at zero, everything else copied);
  * `trainable_parameters(model)`: UNet + mask embedding;
  * `training_conditioning(model, frames, ...)`: the `VideoCond` of a training batch (paper: log sigma ~ N(1, 1.2^2)).
For users: `interpolation_conditioning` (one pair per video) and `interpolate_video` (a whole clip, 4x frame rate).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from . import model as _model
from .denoiser import VideoCond
from .guidance import Guidance, defaults_for
from .pipeline import Cancelled, Conditioning, _module_device, _per_frame, decode, prepare_image, sample
from .variants import SVD_INTERP, ModelSpec, get_variant

SPEC = SVD_INTERP
_COND_SEED_OFFSET = 0x9E3779B97F4A7C15  # cond-aug noise streams, kept apart from the sampling-noise streams


def _check_model(model) -> ModelSpec:
    spec = model.spec
    if spec.cond_mode != "interpolation":
        raise ValueError(f"frame interpolation needs an interpolation model (cond_mode 'interpolation', e.g. "
                         f"svd_interp); {spec.name} is a {spec.cond_mode!r}-conditioned model")
    return spec


def init_from(svd_model, spec: "str | ModelSpec" = SVD_INTERP, device=None, dtype: torch.dtype | None = None):
    """Interpolation model from an SVD / SVD-XT model: all shared weights copied, conv_in grown 8 -> 9 input
    channels (mask channel zero), zero mask embedding; see `svd_core.model.init_from` for the transfer report."""
    spec = get_variant(spec)
    if spec.cond_mode != "interpolation":
        raise ValueError(f"init_from: {spec.name} is not an interpolation variant")
    return _model.init_from(svd_model, spec, device=device, dtype=dtype)


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    """What trains: every UNet parameter plus the learned mask embedding (the VAE and CLIP stay frozen)."""
    _check_model(model)
    return list(model.unet.parameters()) + [model.conditioner.vae_encoder.mask_embedding]


def concat_sequence(model, first_latent: torch.Tensor, last_latent: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Latents b c h w of the ends -> UNet concat input (b t) (c+1) h w: [first, mask emb x (t-2), last] + mask."""
    if num_frames < 3:
        raise ValueError(f"num_frames={num_frames}: interpolation needs at least 3 (first, middle, last)")
    b, c, h, w = first_latent.shape
    emb = model.conditioner.vae_encoder.mask_embedding.to(first_latent.dtype)
    middle = repeat(emb, "c -> b t c h w", b=b, t=num_frames - 2, h=h, w=w)  # learned stand-in for unknown latents
    seq = torch.cat([first_latent[:, None], middle, last_latent[:, None]], dim=1)  # b t c h w
    mask = torch.zeros(b, num_frames, 1, h, w, dtype=seq.dtype, device=seq.device)
    mask[:, 0] = 1.0
    mask[:, -1] = 1.0  # 1 = given frame, 0 = frame to generate
    return rearrange(torch.cat([seq, mask], dim=2), "b t c h w -> (b t) c h w")


def _encode_ends(model, first: torch.Tensor, last: torch.Tensor, cond_aug: torch.Tensor,
                 noise: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[-1, 1] end frames b 3 H W -> (CLIP tokens b 2 d of the clean frames, noised-frame latents b c h w x 2)."""
    conditioner = model.conditioner
    device = _module_device(conditioner)
    dtype = next(conditioner.parameters()).dtype
    with torch.no_grad():
        clip = torch.cat([conditioner.clip(first.to(device, dtype)), conditioner.clip(last.to(device, dtype))], 1)
        aug = cond_aug.to(device, torch.float32).view(-1, 1, 1, 1)
        lat_first = conditioner.vae_encoder((first.to(device) + aug * noise[0].to(device)).to(dtype))
        lat_last = conditioner.vae_encoder((last.to(device) + aug * noise[1].to(device)).to(dtype))
    return clip, lat_first, lat_last  # b 2 d, b c h w, b c h w


def _assemble(model, clip, lat_first, lat_last, vector: torch.Tensor, num_frames: int) -> VideoCond:
    crossattn = repeat(clip, "b n d -> (b t) n d", t=num_frames)  # both end tokens, for every frame
    concat = concat_sequence(model, lat_first, lat_last, num_frames)
    return VideoCond(crossattn, concat, vector)


def _vector(model, b: int, t: int, fps, motion_bucket_id, cond_aug) -> torch.Tensor:
    device = _module_device(model.conditioner)
    values = {"fps_id": _per_frame(torch.as_tensor(fps, dtype=torch.float32) - 1, b, t, "fps"),
              "motion_bucket_id": _per_frame(motion_bucket_id, b, t, "motion_bucket_id"),
              "cond_aug": _per_frame(cond_aug, b, t, "cond_aug")}
    return model.conditioner.vector({k: v.to(device) for k, v in values.items()})  # (b t) adm


@torch.inference_mode()
def interpolation_conditioning(model, first: torch.Tensor, last: torch.Tensor, *, width: int | None = None,
                               height: int | None = None, fps: float | None = None,
                               motion_bucket_id: float | None = None, cond_aug: float | None = None,
                               resize_mode: str = "stretch", seed: int = 0,
                               seeds: Sequence[int] | None = None) -> Conditioning:
    """Pairs of end frames (b 3 h w each, [0, 1]) -> conditioning of b 5-frame videos (frames 1-3 generated).

    The unconditional branch zeroes the CLIP tokens and the whole concat input (as the reference zeroes its
    conditioning frames); `seeds` (one per pair) fixes each pair's cond-aug noise independently of batching."""
    spec = _check_model(model)
    if first.shape != last.shape:
        raise ValueError(f"first {tuple(first.shape)} and last {tuple(last.shape)} frames must have the same shape")
    width, height = width or spec.width, height or spec.height
    fps = spec.fps if fps is None else fps
    if fps < 1:
        raise ValueError(f"fps={fps} must be >= 1 (frames per second of the interpolated video)")
    motion = spec.motion_bucket_id if motion_bucket_id is None else motion_bucket_id
    cond_aug = spec.cond_aug if cond_aug is None else cond_aug
    if cond_aug < 0:
        raise ValueError(f"cond_aug={cond_aug} must be >= 0")
    a = prepare_image(first, width, height, resize_mode)
    z = prepare_image(last, width, height, resize_mode)
    b, t = a.shape[0], spec.num_frames
    seeds = list(seeds) if seeds is not None else [seed + i for i in range(b)]
    if len(seeds) != b:
        raise ValueError(f"seeds has {len(seeds)} values for {b} pairs")
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    noise_a = torch.stack([torch.randn(a.shape[1:], generator=g) for g in gens])
    noise_z = torch.stack([torch.randn(a.shape[1:], generator=g) for g in gens])
    clip, lat_a, lat_z = _encode_ends(model, a, z, torch.full((b,), float(cond_aug)), (noise_a, noise_z))
    cond = _assemble(model, clip, lat_a, lat_z, _vector(model, b, t, fps, motion, cond_aug), t)
    uncond = VideoCond(torch.zeros_like(cond.crossattn), torch.zeros_like(cond.concat), cond.vector)
    return Conditioning(cond, uncond, t, b, height, width, spec.vae.z_channels)


def training_conditioning(model, frames: torch.Tensor, *, fps: "float | torch.Tensor",
                          motion_bucket_id: "float | torch.Tensor" = 127.0,
                          cond_aug: "float | torch.Tensor | None" = None, drop_prob: float = 0.0,
                          generator: torch.Generator | None = None) -> VideoCond:
    """Conditioning of a training batch: `frames` b t 3 H W in [0, 1] (the clip; t = spec.num_frames, the ends are
    the conditioning), fps / motion per video or scalar; cond_aug None draws log sigma ~ N(-3, 0.5^2) per video.
    `drop_prob`: chance per video of the unconditional branch (zero CLIP tokens and concat) for CFG training.
    Gradients reach the mask embedding; CLIP and VAE run without grad. Returns VideoCond for (b t) frames; the
    denoising target is `pipeline.encode(model, frames)` (scaled latents of all t frames)."""
    _check_model(model)
    if frames.ndim != 5 or frames.shape[2] != 3:
        raise ValueError(f"frames must be (batch, frames, 3, H, W) in [0, 1]; got {tuple(frames.shape)}")
    b, t = frames.shape[:2]
    gen = generator or torch.Generator().manual_seed(0)
    from .training.objective import per_video_cond_aug  # training-only: not imported at start-up

    aug = per_video_cond_aug(cond_aug, b, gen)  # log sigma ~ N(-3.0, 0.5^2) per video when None (App. D.2)
    x = frames.float() * 2.0 - 1.0  # [0, 1] -> [-1, 1]
    noise = (torch.randn(x[:, 0].shape, generator=gen), torch.randn(x[:, 0].shape, generator=gen))
    clip, lat_a, lat_z = _encode_ends(model, x[:, 0], x[:, -1], aug, noise)
    vector = _vector(model, b, t, fps, motion_bucket_id, aug.repeat_interleave(t))
    cond = _assemble(model, clip, lat_a, lat_z, vector, t)
    if drop_prob > 0:
        keep = (torch.rand(b, generator=gen) >= drop_prob).to(cond.concat.device)
        keep_f = repeat(keep, "b -> (b t)", t=t).to(cond.concat.dtype)  # one decision per video
        cond = VideoCond(cond.crossattn * keep_f.view(-1, 1, 1).to(cond.crossattn.dtype),
                         cond.concat * keep_f.view(-1, 1, 1, 1), cond.vector)
    return cond


def _auto_size(v: int) -> int:
    return max(64, int(round(v / 64.0)) * 64)


def interpolate_video(model, frames: torch.Tensor, *, batch_size: int = 4, width: int | None = None,
                      height: int | None = None, fps: float | None = None, motion_bucket_id: float | None = None,
                      cond_aug: float | None = None, guidance: Guidance | None = None, sampler: str = "euler",
                      schedule: str = "karras", steps: int | None = None, seed: int = 0,
                      decode_t: int | None = None, callback: Callable[[int, int], None] | None = None,
                      cancel: Callable[[], bool] | None = None) -> torch.Tensor:
    """Video n 3 H W in [0, 1] -> 4x frame rate: (t-2) = 3 generated frames between every consecutive pair, the
    original frames passed through unchanged: output ((n-1)(t-1)+1) 3 H W. Pairs go through the model
    `batch_size` at a time at width x height (default: the input size rounded to multiples of 64), the generated
    frames are resized back to H x W. Pair j uses seed + j (results do not depend on batch_size)."""
    spec = _check_model(model)
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be (n, 3, H, W) in [0, 1]; got {tuple(frames.shape)}")
    n, _, H, W = frames.shape
    if n < 2:
        raise ValueError(f"a video of {n} frame(s) has no pair to interpolate; give at least 2 frames")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    width, height = width or _auto_size(W), height or _auto_size(H)
    guidance = guidance or defaults_for(spec)
    steps = steps or spec.steps
    t, pairs = spec.num_frames, n - 1
    chunks = math.ceil(pairs / batch_size)
    total, done = chunks * (steps + 1), 0
    middles = []
    for c in range(chunks):
        lo, hi = c * batch_size, min(pairs, (c + 1) * batch_size)
        cond = interpolation_conditioning(model, frames[lo:hi], frames[lo + 1:hi + 1], width=width, height=height,
                                          fps=fps, motion_bucket_id=motion_bucket_id, cond_aug=cond_aug,
                                          seeds=[(seed + j + _COND_SEED_OFFSET) % 2**63 for j in range(lo, hi)])
        noise = torch.cat([torch.randn((t,) + cond.latent_shape[1:], generator=torch.Generator().manual_seed(seed + j))
                           for j in range(lo, hi)])  # (b t) c h w, one generator per pair

        def step(i, _n, base=done):
            if callback:
                callback(base + i, total)
        latent = sample(model, cond, guidance, sampler=sampler, schedule=schedule, steps=steps, noise=noise,
                        callback=step, cancel=cancel)
        video = decode(model, latent, t, decode_t=decode_t or t, cancel=cancel)  # b t 3 h w in [0, 1]
        mid = rearrange(video[:, 1:-1], "b m c h w -> (b m) c h w")
        if (mid.shape[-2], mid.shape[-1]) != (H, W):
            mid = F.interpolate(mid, size=(H, W), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        middles.append(rearrange(mid, "(b m) c h w -> b m c h w", m=t - 2))
        done += steps + 1
        if cancel is not None and cancel():
            raise Cancelled(f"interpolation cancelled after {hi}/{pairs} pairs")
        if callback:
            callback(done, total)
    mids = torch.cat(middles).to(frames.dtype)  # pairs m 3 H W
    out = torch.cat([frames[:-1, None].cpu(), mids.cpu()], dim=1)  # pairs (1+m) 3 H W: original, then generated
    return torch.cat([rearrange(out, "p k c h w -> (p k) c h w"), frames[-1:].cpu()])


__all__ = ["SPEC", "init_from", "trainable_parameters", "concat_sequence", "interpolation_conditioning",
           "training_conditioning", "interpolate_video"]
