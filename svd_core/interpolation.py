"""Frame interpolation (paper App. D.5): 5-frame model conditioned on the first and last frame, 4x frame rate.

Variant `svd_interp` (`SPEC`, svd_core.variants.SVD_INTERP): SVD's architecture with
  * UNet input = noise (4) + latent sequence (4) + binary mask (1) = 9 channels: the latent sequence is
    {z_s, z_m, z_m, z_m, z_e}: the VAE latents of frames 0 and T-1, noise-augmented in latent space, and the learned
    mask embedding z_m in R^{c x h x w} (`conditioner.embedders.3.mask_embedding`) at the T-2 middle frames; the
    mask channel is 1 on the given frames, 0 on the generated ones;
  * cross-attention context = CLIP image embeddings of the first and the last frame (2 tokens, every frame);
  * vector conditioning as SVD (fps of the 5-frame sequence, motion bucket, cond_aug: adm 768).
Key layout = SVD's plus `conditioner.embedders.3.mask_embedding` (4, 72, 128) for 576 x 1024, with
`input_blocks.0.0.weight` (320, 9, 3, 3).

Mask embedding at other sizes: z_m has the spec's latent size (height / 8 x width / 8); a video of another size
uses z_m resized bilinearly (antialiased when shrinking, half-pixel centres), `mask_embedding_at`; training at
another size trains z_m through that resize.

Frame-rate convention (one for training and generation): the fps micro-conditioning is the frame rate of the
model's 5-frame sequence, i.e. of the interpolated video = (T-1) = 4x the input video's (`sequence_fps`). The
paper's base models make 7 fps videos, so generation defaults to 28 fps (`SPEC.fps`), and the training preset
samples 5 consecutive frames at target_fps 28 (stride round(clip fps / 28)): the two given training frames are
4/28 s = 1/7 s apart, exactly as two consecutive frames of a 7 fps input at generation time, and both embed the
window's real frame rate (`Conditioner.micro_vector`, as every model).

For the training issue:
  * `init_from(base_model)`: the interpolation model initialised from a base video model (paper App. D.5: the base
    text-to-video model; an SVD image-to-video model works too): new conv_in input channels and the mask embedding
    start at zero, so on the base's input channels the UNet computes exactly the base's;
  * `trainable_parameters(model)`: UNet + mask embedding;
  * `concat_sequence` and `noised_end_latents`, which the trainer's conditioning (`training.tasks.interpolation_cond`)
    shares with generation.
For users: `interpolation_conditioning` (one pair per video) and `interpolate_video` (a whole clip, 4x frame rate).
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from . import model as _model
from .denoiser import VideoCond
from .guidance import Guidance, defaults_for
from .memory import ff_chunk_of
from .pipeline import Conditioning, _module_device, check_run, decode, prepare_image, sample
from .progress import CancelFn, ProgressFn, report, shifted
from .validation import MAX_SEED, check, check_request
from .variants import SVD_INTERP, SVD_VECTOR, ModelSpec, get_variant

SPEC = SVD_INTERP
_COND_SEED_OFFSET = 0x9E3779B97F4A7C15  # cond-aug noise streams, kept apart from the sampling-noise streams


def _check_model(model) -> ModelSpec:
    spec = model.spec
    if spec.cond_mode != "interpolation":
        raise ValueError(f"frame interpolation needs an interpolation model (cond_mode 'interpolation', e.g. "
                         f"svd_interp); {spec.name} is a {spec.cond_mode!r}-conditioned model")
    return spec


def sequence_fps(input_fps: float) -> float:
    """fps conditioning of an interpolation window for an input video at `input_fps`: the 5-frame sequence (and
    the interpolated video) runs (T-1) = 4x faster (paper App. D.5: three new frames between two given ones)."""
    return float(input_fps) * (SPEC.num_frames - 1)


def spec_for(base: ModelSpec) -> ModelSpec:
    """The interpolation variant of a base model's architecture: SVD_INTERP's conditioning and defaults on the base's
    UNet widths, VAE, CLIP sizes and latent scale (SVD_INTERP itself for a full-size base)."""
    z = base.vae.z_channels
    spec = replace(SVD_INTERP, unet=replace(base.unet, in_channels=2 * z + 1,
                                            adm_in_channels=sum(d for _, d in SVD_VECTOR)),
                   vae=replace(base.vae, decoder=SVD_INTERP.vae.decoder, first_stage_encoder=True,
                               first_stage_quant=False), clip=base.clip, scale_factor=base.scale_factor)
    if (spec.unet, spec.vae, spec.clip, spec.scale_factor) == (SVD_INTERP.unet, SVD_INTERP.vae, SVD_INTERP.clip,
                                                              SVD_INTERP.scale_factor):
        return SVD_INTERP
    return replace(spec, name=f"{base.name}_interp", height=base.height, width=base.width, steps=base.steps)


@torch.no_grad()
def _copy_prefix(dst_sd: dict, src_sd: dict, src_prefix: str, dst_prefix: str) -> list[str]:
    """Copy every `src_prefix*` tensor into `dst_prefix*` where the shapes match; returns the destination keys."""
    done = []
    for key, value in src_sd.items():
        if key.startswith(src_prefix):
            target = dst_sd.get(dst_prefix + key[len(src_prefix):])
            if target is not None and target.shape == value.shape:
                target.copy_(value)
                done.append(dst_prefix + key[len(src_prefix):])
    return done


def init_from(base_model, spec: "str | ModelSpec | None" = None, device=None, dtype: torch.dtype | None = None,
              image_tower=None):
    """Interpolation model from a base video model (paper App. D.5: finetuned from the base text-to-video model; an
    SVD / SVD-XT image-to-video model works too). `spec` defaults to `spec_for(base_model.spec)`.

    conv_in grows to 9 input channels: the base's columns are copied and the new ones start at zero (latent
    sequence + mask after a text-to-video base, the mask after SVD), so on the base's input channels the new UNet
    computes exactly the base's; label_emb keeps the base's fps / motion columns (a text base's cond_aug columns
    start at zero); zero mask embedding. A text-to-video base has no conditioning VAE encoder and no CLIP image
    tower: the encoder is copied from the base's first stage (identity quant_conv), the image tower from
    `image_tower` (any image-conditioned SVD-family model with the same CLIP size, e.g. a released SVD), which a
    text base therefore requires. See `svd_core.model.init_from` for the transfer report."""
    spec = get_variant(spec) if spec is not None else spec_for(base_model.spec)
    if spec.cond_mode != "interpolation":
        raise ValueError(f"init_from: {spec.name} is not an interpolation variant")
    if base_model.spec.cond_mode == "text" and image_tower is None:
        raise ValueError(f"init_from: the text-to-video base {base_model.spec.name} has no CLIP image tower, which "
                         f"the interpolation model conditions on; pass image_tower=<an SVD model> (e.g. "
                         f"svd_core.load('svd.safetensors')) and train the saved result")
    model = _model.init_from(base_model, spec, device=device, dtype=dtype)
    report, dst_sd = model.transfer_report, model.state_dict()
    enc = f"conditioner.embedders.{spec.cond_encoder_index}.encoder."
    filled = []
    if base_model.spec.cond_mode == "text":
        src_sd = base_model.state_dict()
        filled += _copy_prefix(dst_sd, src_sd, "first_stage_model.encoder.", enc + "encoder.")
        if "first_stage_model.quant_conv.weight" in src_sd:
            filled += _copy_prefix(dst_sd, src_sd, "first_stage_model.quant_conv.", enc + "quant_conv.")
        else:  # the first stage encodes without quant_conv: the same posterior through an identity 1x1 conv
            w = dst_sd[enc + "quant_conv.weight"]
            w.zero_()
            w[:, :, 0, 0].copy_(torch.eye(w.shape[0]))
            dst_sd[enc + "quant_conv.bias"].zero_()
            filled += [enc + "quant_conv.weight", enc + "quant_conv.bias"]
    if image_tower is not None:
        tower = "conditioner.embedders.0.open_clip."
        filled += _copy_prefix(dst_sd, image_tower.state_dict(), tower, tower)
    report["copied"] += [k for k in filled if k not in report["copied"]]
    report["new"] = [k for k in report["new"] if k not in set(filled)]
    return model


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    """What trains: every UNet parameter plus the learned mask embedding (the VAE and CLIP stay frozen)."""
    _check_model(model)
    return list(model.unet.parameters()) + [model.conditioner.vae_encoder.mask_embedding]


def mask_embedding_at(model, h: int, w: int) -> torch.Tensor:
    """The learned mask embedding z_m (c x h0 x w0, the spec's latent size) at latent size h x w: z_m itself when the
    sizes agree, else resized bilinearly (antialiased when shrinking, align_corners False); differentiable."""
    emb = model.conditioner.vae_encoder.mask_embedding
    if tuple(emb.shape[-2:]) != (h, w):
        emb = F.interpolate(emb[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]  # c h w
    return emb


def concat_sequence(model, first_latent: torch.Tensor, last_latent: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Latents b c h w of the ends -> UNet concat input (b t) (c+1) h w: [z_s, z_m x (t-2), z_e] + binary mask."""
    if num_frames < 3:
        raise ValueError(f"num_frames={num_frames}: interpolation needs at least 3 (first, middle, last)")
    b, c, h, w = first_latent.shape
    emb = mask_embedding_at(model, h, w).to(first_latent.dtype)
    middle = repeat(emb, "c h w -> b t c h w", b=b, t=num_frames - 2)  # learned stand-in for unknown latents
    seq = torch.cat([first_latent[:, None], middle, last_latent[:, None]], dim=1)  # b t c h w
    mask = torch.zeros(b, num_frames, 1, h, w, dtype=seq.dtype, device=seq.device)
    mask[:, 0] = 1.0
    mask[:, -1] = 1.0  # 1 = given frame, 0 = frame to generate
    return rearrange(torch.cat([seq, mask], dim=2), "b t c h w -> (b t) c h w")


def augment_latent(model, latent: torch.Tensor, cond_aug: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Noise augmentation of a conditioning frame in latent space (paper App. D.5, "which we apply in the latent
    space"): cond_aug sigma (b,) is a noise level in the diffusion's units (scaled latents, EDM sigma_data 1), i.e.
    z * s + sigma * eps there; on the unscaled latent mode the concat carries (as SVD's concat frame) that is
    z + (sigma / s) * eps, s = spec.scale_factor. latent, noise: b c h w."""
    aug = cond_aug.to(latent.device, torch.float32).view(-1, 1, 1, 1) / model.spec.scale_factor
    return (latent.float() + aug * noise.to(latent.device, torch.float32)).to(latent.dtype)


def noised_end_latents(model, first: torch.Tensor, last: torch.Tensor, cond_aug: torch.Tensor,
                       gens: Sequence[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean [-1, 1] end frames b 3 H W -> their VAE latents (mode, unscaled) noise-augmented in latent space
    (`augment_latent`); video i draws its noise from gens[i], first frame's then last frame's. Shared by training
    (`training.tasks.interpolation_cond`) and generation (`interpolation_conditioning`)."""
    enc = model.conditioner.vae_encoder
    p = next(enc.parameters())
    if len(gens) != first.shape[0]:
        raise ValueError(f"{len(gens)} generators for {first.shape[0]} videos")
    with torch.no_grad():
        lat_first, lat_last = enc(first.to(p.device, p.dtype)), enc(last.to(p.device, p.dtype))  # b c h w each
    shape = lat_first.shape[1:]
    noise = [(torch.randn(shape, generator=g), torch.randn(shape, generator=g)) for g in gens]
    noise_first, noise_last = (torch.stack([n[i] for n in noise]) for i in (0, 1))  # b c h w each
    cond_aug = torch.as_tensor(cond_aug, dtype=torch.float32).flatten()
    return augment_latent(model, lat_first, cond_aug, noise_first), augment_latent(model, lat_last, cond_aug,
                                                                                   noise_last)


def _encode_ends(model, first: torch.Tensor, last: torch.Tensor, cond_aug: torch.Tensor,
                 gens: Sequence[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[-1, 1] end frames b 3 H W -> (CLIP tokens b 2 d of the clean frames, noise-augmented latents b c h w x 2)."""
    conditioner = model.conditioner
    device = _module_device(conditioner)
    dtype = next(conditioner.parameters()).dtype
    with torch.no_grad():
        clip = torch.cat([conditioner.clip(first.to(device, dtype)), conditioner.clip(last.to(device, dtype))], 1)
    return (clip,) + noised_end_latents(model, first, last, cond_aug, gens)  # b 2 d, b c h w, b c h w


def _assemble(model, clip, lat_first, lat_last, vector: torch.Tensor, num_frames: int) -> VideoCond:
    crossattn = repeat(clip, "b n d -> (b t) n d", t=num_frames)  # both end tokens, for every frame
    concat = concat_sequence(model, lat_first, lat_last, num_frames)
    return VideoCond(crossattn, concat, vector)


@torch.inference_mode()
def interpolation_conditioning(model, first: torch.Tensor, last: torch.Tensor, *, width: int | None = None,
                               height: int | None = None, fps: float | None = None,
                               motion_bucket_id: float | None = None, cond_aug: float | None = None,
                               resize_mode: str = "stretch", seed: int = 0,
                               seeds: Sequence[int] | None = None) -> Conditioning:
    """Pairs of end frames (b 3 h w each, [0, 1]) -> conditioning of b 5-frame videos (frames 1-3 generated).

    `fps` is the frame rate of the 5-frame sequence (`sequence_fps` of the input's; default SPEC.fps = 28 for a
    7 fps input, the training preset's target_fps). The two given frames are noise-augmented in latent space
    (`augment_latent`). The unconditional branch zeroes the CLIP tokens and the whole concat input (as the
    reference zeroes its conditioning frames); `seeds` (one per pair) fixes each pair's cond-aug noise
    independently of batching."""
    spec = _check_model(model)
    if first.shape != last.shape:
        raise ValueError(f"first {tuple(first.shape)} and last {tuple(last.shape)} frames must have the same shape")
    width, height = width or spec.width, height or spec.height
    check_request(dict(fps=fps, motion_bucket_id=motion_bucket_id, cond_aug=cond_aug))  # fps: of the 5 frames
    fps = spec.fps if fps is None else fps
    motion = spec.motion_bucket_id if motion_bucket_id is None else motion_bucket_id
    cond_aug = spec.cond_aug if cond_aug is None else cond_aug
    a = prepare_image(first, width, height, resize_mode)
    z = prepare_image(last, width, height, resize_mode)
    b, t = a.shape[0], spec.num_frames
    seeds = list(seeds) if seeds is not None else [seed + i for i in range(b)]
    if len(seeds) != b:
        raise ValueError(f"seeds has {len(seeds)} values for {b} pairs")
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    clip, lat_a, lat_z = _encode_ends(model, a, z, torch.full((b,), float(cond_aug)), gens)
    vector = model.conditioner.micro_vector(b, t, fps=fps, motion_bucket_id=motion, cond_aug=cond_aug)  # (b t) adm
    cond = _assemble(model, clip, lat_a, lat_z, vector, t)
    uncond = VideoCond(torch.zeros_like(cond.crossattn), torch.zeros_like(cond.concat), cond.vector)
    return Conditioning(cond, uncond, t, b, height, width, spec.vae.z_channels)


def _auto_size(v: int) -> int:
    return max(64, int(round(v / 64.0)) * 64)


def _interpolation_plan(n: int, H: int, W: int, t: int):
    """Memory sizing of interpolating an n-frame H x W video, k pairs per batch at width w: one batch of k t-frame
    windows sampled and decoded at a time; the generated frames, their concatenation and the output video
    ((n-1)(t-1)+1 frames, float32 at H x W) held at the end (memory.check_request_fits' `plan`)."""
    pairs = n - 1
    kept = (2 * pairs * (t - 2) + 2 * (pairs * (t - 1) + 1)) * 3 * H * W * 4

    def plan(k: int, w: int) -> dict:
        return dict(frames=min(k, pairs) * t, kept_bytes=kept)
    return plan


def interpolate_video(model, frames: torch.Tensor, *, batch_size: int = 4, width: int | None = None,
                      height: int | None = None, fps: float | None = None, motion_bucket_id: float | None = None,
                      cond_aug: float | None = None, guidance: Guidance | None = None, sampler: str = "euler",
                      schedule: str = "karras", steps: int | None = None, seed: int = 0,
                      decode_t: int | None = None, callback: ProgressFn | None = None,
                      cancel: CancelFn | None = None) -> torch.Tensor:
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
    width = _auto_size(W) if width is None else width
    height = _auto_size(H) if height is None else height
    t, batch_size = spec.num_frames, check("batch_size", batch_size)
    checked = check_run(model, None, dict(batch_size=batch_size, width=width, height=height, fps=fps,
                                          motion_bucket_id=motion_bucket_id, cond_aug=cond_aug, steps=steps,
                                          seed=seed, decode_t=t if decode_t is None else decode_t),
                        guidance=guidance, sampler=sampler, schedule=schedule, resize_mode="stretch", device=None,
                        offload=False, autocast_dtype=None, ff_chunk_size=ff_chunk_of(model),
                        batch=1, count=min(batch_size, n - 1), plan=_interpolation_plan(n, H, W, t),
                        unit=("pair per batch", "pairs per batch"), labels={"frames": "batch_size"})
    seed = 0 if seed is None else checked["seed"]
    if seed + n - 2 > MAX_SEED:
        raise ValueError(f"seed={seed} is impossible: pair j is sampled with seed + j, so for {n - 1} pairs the seed "
                         f"must be at most {MAX_SEED - n + 2}")
    steps = spec.steps if steps is None else checked["steps"]
    guidance = guidance or defaults_for(spec)
    pairs = n - 1
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
        latent = sample(model, cond, guidance, sampler=sampler, schedule=schedule, steps=steps, noise=noise,
                        callback=shifted(callback, done, total, "interpolating"), cancel=cancel)
        video = decode(model, latent, t, decode_t=decode_t or t, cancel=cancel)  # b t 3 h w in [0, 1]
        mid = rearrange(video[:, 1:-1], "b m c h w -> (b m) c h w")
        if (mid.shape[-2], mid.shape[-1]) != (H, W):
            mid = F.interpolate(mid, size=(H, W), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        middles.append(rearrange(mid, "(b m) c h w -> b m c h w", m=t - 2))
        done += steps + 1
        report(callback, cancel, done, total, "interpolating", f"interpolation cancelled after {hi}/{pairs} pairs")
    mids = torch.cat(middles).to(frames.dtype)  # pairs m 3 H W
    out = torch.cat([frames[:-1, None].cpu(), mids.cpu()], dim=1)  # pairs (1+m) 3 H W: original, then generated
    return torch.cat([rearrange(out, "p k c h w -> (p k) c h w"), frames[-1:].cpu()])


__all__ = ["SPEC", "sequence_fps", "spec_for", "init_from", "trainable_parameters", "mask_embedding_at",
           "concat_sequence", "augment_latent", "noised_end_latents", "interpolation_conditioning",
           "interpolate_video"]
