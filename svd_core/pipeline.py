"""Image-to-video and orbit pipelines (paper Sec. 4.3 / 4.5, reference `scripts/sampling/simple_video_sample.py`):
conditioning, guided EDM sampling, chunked decoding; each stage callable on its own (the ComfyUI nodes do)."""
from __future__ import annotations

import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from einops import repeat

from .attention import DEFAULT_FF_CHUNK
from .conditioner import micro_values
from .denoiser import VideoCond
from .guidance import Guidance, defaults_for
from .object_image import object_input, replace_last_view
from .progress import CancelFn, Cancelled, ProgressFn, report  # noqa: F401 (Cancelled: re-exported)
from .ops import compute_dtype
from .samplers import SAMPLERS
from .sampling import NOISE_DEVICES, drive  # noqa: F401 (NOISE_DEVICES: re-exported for the nodes and CLI)
from .validation import check_choice, check_request
from .vae_decode import check_tiling, decode_video, encode_video

RESIZE_MODES = ("crop", "pad", "stretch")


@dataclass
class Conditioning:
    """Both guidance branches for a batch of videos, plus what sampling and decoding need to know."""

    cond: VideoCond
    uncond: VideoCond
    num_frames: int
    batch: int
    height: int
    width: int
    latent_channels: int = 4

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        return (self.batch * self.num_frames, self.latent_channels, self.height // 8, self.width // 8)


# --------------------------------------------------------------------------------------------- image handling


def prepare_image(image: torch.Tensor, width: int, height: int, resize_mode: str = "crop",
                  trained: tuple[int, int] | None = None) -> torch.Tensor:
    """b 3 h w in [0, 1] -> b 3 height width in [-1, 1]: aspect-preserving resize, then center crop or pad."""
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be (batch, 3, H, W) or (3, H, W) RGB in [0, 1]; got shape {tuple(image.shape)}")
    for name, v in (("width", width), ("height", height)):
        if v < 64 or v % 64:
            raise ValueError(f"{name}={v} is impossible: it must be a multiple of 64 and at least 64 "
                             f"(the VAE downsamples 8x and the UNet 8x more); set the {name} input accordingly")
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode={resize_mode!r}; expected one of {RESIZE_MODES}")
    if trained and (height, width) != tuple(trained):
        warnings.warn(f"generating at {width}x{height}, but this model was trained at {trained[1]}x{trained[0]}: "
                      f"expect weaker results off the trained resolution", stacklevel=3)
    image = image.float().clamp(0, 1)
    h, w = image.shape[-2:]
    if resize_mode == "stretch":
        out = F.interpolate(image, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    else:
        scale = max(height / h, width / w) if resize_mode == "crop" else min(height / h, width / w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        out = F.interpolate(image, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True) \
            if (nh, nw) != (h, w) else image
        if resize_mode == "crop":
            top, left = (nh - height) // 2, (nw - width) // 2
            out = out[..., top:top + height, left:left + width]
        else:  # pad with mid-grey, the image centred
            canvas = torch.full((out.shape[0], 3, height, width), 0.5, dtype=out.dtype, device=out.device)
            top, left = (height - nh) // 2, (width - nw) // 2
            canvas[..., top:top + nh, left:left + nw] = out
            out = canvas
    return out.clamp(0, 1) * 2.0 - 1.0


# --------------------------------------------------------------------------------------------- conditioning


def _module_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def _check_frames(num_frames: int) -> int:
    if not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames={num_frames!r} is impossible: expected an integer >= 1")
    return num_frames


@torch.inference_mode()
def _frame_conditioning(model, image: torch.Tensor, num_frames: int, cond_aug: float, micro: dict,
                        generator: torch.Generator | None) -> Conditioning:
    """Shared by SVD and SV3D: CLIP token of the clean frame, VAE latent of the noised frame, vector per frame from
    the user-facing `micro` values (`Conditioner.micro_vector`)."""
    conditioner = model.conditioner
    device = _module_device(conditioner)
    dtype = compute_dtype(conditioner)
    b, _, height, width = image.shape
    # cond_frames = image + cond_aug * noise, in [-1, 1] space (reference); noise drawn first, from the generator
    noise = torch.randn(image.shape, generator=generator, device=generator.device if generator else "cpu")
    cond_frames = (image + cond_aug * noise.to(image.device)).to(device, dtype)
    clip = conditioner.clip(image.to(device, dtype))  # b 1 d, from the clean image
    latent = conditioner.vae_encoder(cond_frames)  # b 4 h w (mode, unscaled as in the reference)
    vec = conditioner.micro_vector(b, num_frames, **micro)  # (b t) adm
    crossattn = repeat(clip, "b n d -> (b t) n d", t=num_frames)  # every frame attends to the image token
    concat = repeat(latent, "b c h w -> (b t) c h w", t=num_frames)  # the frame's latent copied across time
    cond = VideoCond(crossattn, concat, vec)
    # unconditional branch: zero CLIP token and zero concat latent (force_uc_zero_embeddings), same vector
    uncond = VideoCond(torch.zeros_like(crossattn), torch.zeros_like(concat), vec)
    return Conditioning(cond, uncond, num_frames, b, height, width, latent.shape[1])


def image_conditioning(model, image: torch.Tensor, *, num_frames: int | None = None, width: int | None = None,
                       height: int | None = None, fps: float | None = None, motion_bucket_id: float | None = None,
                       cond_aug: float | None = None, resize_mode: str = "crop", seed: int | None = None,
                       generator: torch.Generator | None = None) -> Conditioning:
    """SVD / SVD-XT conditioning of `image` (b 3 h w in [0, 1]) with the variant's reference defaults (seed None:
    the variant's, 23)."""
    spec = model.spec
    if "fps" not in micro_values(spec):
        raise ValueError(f"image_conditioning needs an SVD/SVD-XT model; {spec.name} takes {spec.vector_inputs} "
                         f"(use orbit_conditioning for SV3D)")
    check_request(dict(fps=fps, motion_bucket_id=motion_bucket_id, cond_aug=cond_aug, seed=seed))  # nodes call this
    num_frames = _check_frames(spec.num_frames if num_frames is None else num_frames)
    fps = spec.fps if fps is None else fps
    motion = spec.motion_bucket_id if motion_bucket_id is None else motion_bucket_id
    cond_aug = spec.cond_aug if cond_aug is None else cond_aug
    img = prepare_image(image, spec.width if width is None else width, spec.height if height is None else height,
                        resize_mode, (spec.height, spec.width))
    generator = generator or torch.Generator().manual_seed(spec.seed if seed is None else seed)
    # fps in frames per second: the conditioner embeds it as the model was trained (fps_id = fps - 1)
    micro = dict(fps=fps, motion_bucket_id=motion, cond_aug=cond_aug)
    return _frame_conditioning(model, img, num_frames, cond_aug, micro, generator)


def orbit_angles(num_frames: int, elevations: float | Sequence[float] = 10.0,
                 azimuths: Sequence[float] | None = None) -> tuple[list[float], list[float]]:
    """SV3D camera orbit in degrees: default azimuths evenly spaced `linspace(0, 360, n+1)[1:] % 360` (reference)."""
    elev = [float(elevations)] * num_frames if isinstance(elevations, (int, float)) else [float(e) for e in elevations]
    if azimuths is None:
        azimuths = [(360.0 * (i + 1) / num_frames) % 360 for i in range(num_frames)]
    azim = [float(a) for a in azimuths]
    if len(elev) != num_frames or len(azim) != num_frames:
        raise ValueError(f"orbit needs one elevation and one azimuth per frame: {num_frames} frames, got "
                         f"{len(elev)} elevations and {len(azim)} azimuths")
    if any(not -90 <= e <= 90 for e in elev):
        raise ValueError(f"elevations must lie in [-90, 90] degrees, got {elev}")
    return elev, azim


def orbit_conditioning(model, image: torch.Tensor, *, elevations: float | Sequence[float] = 10.0,
                       azimuths: Sequence[float] | None = None, num_frames: int | None = None,
                       width: int | None = None, height: int | None = None, cond_aug: float | None = None,
                       resize_mode: str = "crop", seed: int | None = None,
                       generator: torch.Generator | None = None, mask: torch.Tensor | None = None,
                       recenter: bool = True, image_frame_ratio: float | None = None) -> Conditioning:
    """SV3D_u / SV3D_p conditioning: cond_aug 1e-5; SV3D_p adds polar = 90 - elevation and the azimuth per frame,
    made relative to the last view (reference `simple_video_sample.py`), in radians. An RGBA `image` or a `mask`
    (1 = object) is cropped, centred and put on white first (`object_image.object_input`, reference sv3d branch)."""
    spec = model.spec
    if "fps" in micro_values(spec):
        raise ValueError(f"orbit_conditioning needs an SV3D model; {spec.name} is an image-to-video model")
    check_request(dict(cond_aug=cond_aug, seed=seed))  # the nodes call this stage directly
    num_frames = _check_frames(spec.num_frames if num_frames is None else num_frames)
    elev, azim = orbit_angles(num_frames, elevations, azimuths)
    cond_aug = spec.cond_aug if cond_aug is None else cond_aug
    w = spec.width if width is None else width
    h = spec.height if height is None else height
    image = object_input(image, mask, width=w, height=h, recenter=recenter, image_frame_ratio=image_frame_ratio)
    img = prepare_image(image, w, h, resize_mode, (spec.height, spec.width))
    generator = generator or torch.Generator().manual_seed(spec.seed if seed is None else seed)
    # SV3D_p embeds the camera (polar, azimuth relative to the last view); SV3D_u only cond_aug
    micro = dict(cond_aug=cond_aug, elevation=elev, azimuth=azim)
    return _frame_conditioning(model, img, num_frames, cond_aug, micro, generator)


# --------------------------------------------------------------------------------------------- sampling


class GuidedDenoiser:
    """k-diffusion style `model(x, sigma) -> D(x; sigma)` with per-frame CFG; both branches in one forward."""

    def __init__(self, model, cond: Conditioning, guidance: Guidance, autocast_dtype: torch.dtype | None = None):
        self.unet_device = _module_device(model.unet)
        self.dtype = compute_dtype(model.unet)  # fp8-stored weights compute in their recorded dtype
        self.model, self.guidance, self.num_frames = model, guidance, cond.num_frames
        self.scales = guidance.scales(cond.num_frames)
        self.cfg = bool((self.scales != 1.0).any())  # all scales 1: the conditional branch alone is exact
        both = cond.uncond.cat(cond.cond) if self.cfg else cond.cond
        self.both = both.to(self.unet_device, self.dtype)
        self.autocast_dtype = autocast_dtype

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_) -> torch.Tensor:
        x_in = x.to(self.unet_device, self.dtype)
        sigma = sigma.to(self.unet_device)
        if self.cfg:
            x_in, sigma = torch.cat([x_in, x_in]), torch.cat([sigma, sigma])  # [uncond; cond]
        ctx = torch.autocast(self.unet_device.type, dtype=self.autocast_dtype) if self.autocast_dtype else nullcontext()
        with ctx:
            out = self.model.denoise(x_in, sigma, self.both, self.num_frames).to(x.dtype)
        if not self.cfg:
            return out.to(x.device)
        uncond, cond = out.chunk(2)
        return self.guidance.combine(uncond, cond, self.num_frames).to(x.device)


@contextmanager
def cfg_batching(model, cond: Conditioning, denoiser: GuidedDenoiser, cfg_batch: str, free_memory: int | None):
    """The UNet's CFG batching for one sampling run, chosen by `memory.cfg_in_turn` (the one owner of the choice):
    "auto" weighs the guided step's estimated need (`memory.guided_step_bytes`) against `free_memory` (default:
    what the UNet's device has free now, `memory.available_bytes`); "in turn" / "together" force it. A UNet whose
    video chunk the caller already set (`set_video_chunk`) keeps it under "auto"; one without the switch (a host's
    own UNet) and unguided runs are left alone. The UNet's setting is restored afterwards. Yields the choice."""
    from .memory import available_bytes, cfg_in_turn, check_cfg_batch, ff_chunk_of, guided_step_bytes

    check_cfg_batch(cfg_batch)
    unet = model.unet
    before = getattr(unet, "video_chunk", None)
    if not denoiser.cfg or not hasattr(unet, "set_video_chunk") or (cfg_batch == "auto" and before is not None):
        yield before == 1
        return
    if cfg_batch == "auto":
        free = available_bytes(denoiser.unet_device) if free_memory is None else free_memory
        elem = torch.tensor([], dtype=denoiser.dtype).element_size()
        need = guided_step_bytes(model.spec, cond.batch * cond.num_frames, cond.height, cond.width, elem,
                                 ff_chunk_of(model))
        in_turn = cfg_in_turn("auto", need, free)
    else:
        in_turn = cfg_in_turn(cfg_batch, 0, None)
    unet.set_video_chunk(1 if in_turn else None)
    try:
        yield in_turn
    finally:
        unet.set_video_chunk(before)


@torch.inference_mode()
def sample(model, cond: Conditioning, guidance: Guidance | None = None, *, sampler: str = "euler",
           schedule: str = "karras", steps: int | None = None, seed: int | None = None,
           generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
           init_latent: torch.Tensor | None = None, denoise: float = 1.0, callback: ProgressFn | None = None,
           cancel: CancelFn | None = None, autocast_dtype: torch.dtype | None = None,
           sampler_options: dict | None = None, noise_device: str = "cpu",
           on_denoised: Callable[[torch.Tensor], None] | None = None, cfg_batch: str = "auto",
           free_memory: int | None = None) -> torch.Tensor:
    """Guided EDM sampling -> latent (b t) 4 h w. `init_latent` + `denoise < 1` is video-to-video.
    `on_denoised` gets each step's x0 prediction (b t) 4 h w, scaled latent, before `callback` (live previews).

    `steps` / `seed` None: the variant's reference values (`ModelSpec.steps`, `.seed`). `noise_device` "device"
    draws the initial noise on the UNet's device from a generator seeded with `seed` (reference
    `simple_video_sample.py`: `torch.manual_seed(seed)`, `torch.randn(shape, device=device)`); "cpu" (default) draws
    it from `generator` (reproducible across machines). `cfg_batch` "auto" (default) runs the CFG branches in one
    batch when the step fits in `free_memory` bytes (default: the device's free memory), one after the other
    otherwise; "together" / "in turn" force it (`cfg_batching`; the same samples either way)."""
    shape = cond.latent_shape
    if init_latent is not None and tuple(init_latent.shape) != shape:
        raise ValueError(f"init_latent has shape {tuple(init_latent.shape)} but the conditioning asks for {shape} "
                         f"({cond.batch} video(s) x {cond.num_frames} frames at {cond.width}x{cond.height})")
    denoiser = GuidedDenoiser(model, cond, guidance or defaults_for(model.spec), autocast_dtype)
    with cfg_batching(model, cond, denoiser, cfg_batch, free_memory):
        return drive(denoiser, model.spec, shape, device=denoiser.unet_device, sampler=sampler, schedule=schedule,
                     steps=steps, seed=seed, generator=generator, noise=noise, init_latent=init_latent,
                     denoise=denoise, noise_device=noise_device, callback=callback, cancel=cancel,
                     sampler_options=sampler_options, on_denoised=on_denoised)


# --------------------------------------------------------------------------------------------- decode / encode


@torch.inference_mode()
def decode(model, latent: torch.Tensor, num_frames: int, *, decode_t: int | None = None, overlap: int = 0,
           image_decoder: bool = False, callback: ProgressFn | None = None,
           cancel: CancelFn | None = None, tile: int | None = None, tile_overlap: int | None = None) -> torch.Tensor:
    """Latent (b t) 4 h w -> frames b t 3 H W in [0, 1], `decode_t` frames per chunk (never from free memory);
    `tile` latent pixels: spatial tiles sharing `tile_overlap` (`vae_decode.decode_video`; None/0: whole frames)."""
    fs = model.first_stage_model
    device, dtype = _module_device(fs), compute_dtype(fs)
    decode_t = model.spec.decode_t if decode_t is None else decode_t

    def progress(done, total):
        report(callback, cancel, done, total, "decoding", f"decoding cancelled after {done}/{total} chunks")

    frames = decode_video(fs, latent.to(device, dtype), num_frames, decode_t=decode_t, overlap=overlap,
                          scale_factor=model.spec.scale_factor,
                          image_decoder=image_decoder and model.spec.vae.decoder == "temporal", callback=progress,
                          tile=tile or None, tile_overlap=tile_overlap)
    frames = (frames.float() + 1.0) / 2.0  # [-1, 1] -> [0, 1]
    return frames.reshape(-1, num_frames, *frames.shape[1:]).clamp(0, 1).cpu()  # (b t) c h w -> b t c h w


@torch.inference_mode()
def encode(model, frames: torch.Tensor, *, sample_posterior: bool = False, seed: int | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Frames b t 3 H W in [0, 1] -> scaled latents (b t) 4 h w (for video-to-video with denoise < 1): the VAE
    posterior's mean, or with `sample_posterior` a seeded draw from it as the reference first stage encodes
    (`vae_decode.encode_video`; seed None: the variant's)."""
    if frames.ndim != 5 or frames.shape[2] != 3:
        raise ValueError(f"frames must be (batch, frames, 3, H, W) in [0, 1]; got {tuple(frames.shape)}")
    fs = model.first_stage_model
    device, dtype = _module_device(fs), compute_dtype(fs)
    x = frames.flatten(0, 1).to(device, dtype) * 2.0 - 1.0  # b t c h w -> (b t) c h w in [-1, 1]
    if sample_posterior:
        generator = generator or torch.Generator().manual_seed(model.spec.seed if seed is None else seed)
    return encode_video(fs, x, scale_factor=model.spec.scale_factor, sample_posterior=sample_posterior,
                        generator=generator).float().cpu()


# --------------------------------------------------------------------------------------------- whole pipelines


@contextmanager
def _placed(module: torch.nn.Module, device: torch.device, offload: bool):
    """Move `module` to the compute device for a stage, and back to the CPU after it when offloading."""
    if not offload:
        yield
        return
    module.to(device)
    try:
        yield
    finally:
        module.to("cpu")


def _run(model, make_cond, guidance, *, sampler, schedule, steps, seed, decode_t, overlap, image_decoder,
         callback, cancel, device, offload, autocast_dtype, sampler_options, noise=None,
         ff_chunk_size=DEFAULT_FF_CHUNK, channels_last=True, noise_device="cpu", decode_tile=None,
         decode_tile_overlap=None, cfg_batch="auto"):
    device = torch.device(device) if device is not None else _module_device(model.unet)
    seed = model.spec.seed if seed is None else seed
    model.unet.set_ff_chunk_size(ff_chunk_size)  # bounded feed-forward memory; identical results
    model.set_channels_last(channels_last)  # NHWC convs: no layout reorders in oneDNN / cuDNN
    generator = torch.Generator().manual_seed(seed)
    with _placed(model.conditioner, device, offload):
        cond = make_cond(generator)
    total = model.spec.steps if steps is None else steps

    with _placed(model.model, device, offload):
        latent = sample(model, cond, guidance, sampler=sampler, schedule=schedule, steps=total, generator=generator,
                        seed=seed, noise=noise, callback=callback, cancel=cancel, autocast_dtype=autocast_dtype,
                        sampler_options=sampler_options, noise_device=noise_device, cfg_batch=cfg_batch)
    with _placed(model.first_stage_model, device, offload):
        return decode(model, latent, cond.num_frames, decode_t=decode_t, overlap=overlap,
                      image_decoder=image_decoder, cancel=cancel, tile=decode_tile, tile_overlap=decode_tile_overlap,
                      callback=callback)


def check_run(model, image: torch.Tensor | None, values: dict, *, guidance: Guidance | None, sampler: str,
              schedule: str, resize_mode: str, device, offload: bool, autocast_dtype: torch.dtype | None,
              ff_chunk_size: int | None, batch: int | None = None, count: int | None = None,
              plan: Callable[[int, int], dict] | None = None, unit: tuple[str, str] = ("frame", "frames"),
              labels: dict[str, str] | None = None, cfg_batch: str = "together") -> dict:
    """Every argument of a whole run in range, and its memory within the device's, before any heavy work
    (issue 12): ValueError naming the argument (validation.RULES), MemoryBudgetError with what would fit.

    `image` None: `batch` videos without an input image (text-to-video). The memory check is one img2vid run
    of batch x num_frames frames unless `count` / `plan` / `unit` say otherwise (`memory.check_request_fits`:
    long videos, interpolation). `labels` name the arguments in messages; `cfg_batch` other than "together" (the
    default of the callers that always batch) sizes the guided step with its branches in turn, the least that
    `cfg_batching` can run. Returns the checked values."""
    from .memory import check_cfg_batch, check_request_fits

    spec = model.spec
    labels = labels or {}
    checked = check_request(values, labels)
    check_choice(labels.get("sampler", "sampler"), sampler, sorted(SAMPLERS))
    check_choice(labels.get("schedule", "schedule"), schedule, ("karras", "exponential"))
    check_choice(labels.get("resize_mode", "resize_mode"), resize_mode, RESIZE_MODES)
    check_cfg_batch(cfg_batch, labels.get("cfg_batch", "cfg_batch"))
    if guidance is not None:
        check_request({"min_scale": guidance.min_scale, "max_scale": guidance.max_scale},
                      {"min_scale": "guidance.min_scale", "max_scale": "guidance.max_scale"})
    if image is not None and image.ndim not in (3, 4):
        raise ValueError(f"image must be (batch, 3, H, W) or (3, H, W) RGB in [0, 1]; got shape {tuple(image.shape)}")
    if image is not None:
        batch = image.shape[0] if image.ndim == 4 else 1
    frames = spec.num_frames if checked.get("num_frames") is None else checked["num_frames"]
    decode_t = spec.decode_t if checked.get("decode_t") is None else checked["decode_t"]
    check_request_fits(model, frames=batch * frames if count is None else count,
                       height=spec.height if checked.get("height") is None else checked["height"],
                       width=spec.width if checked.get("width") is None else checked["width"],
                       decode_t=decode_t, device=device if device is not None else _module_device(model.unet),
                       dtype=autocast_dtype, ff_chunk=ff_chunk_size, offload=offload, plan=plan, unit=unit,
                       labels={k: labels[k] for k in ("frames", "width") if k in labels},
                       cfg=cfg_batch == "together")
    return checked


def img2vid(model, image: torch.Tensor, *, num_frames: int | None = None, width: int | None = None,
            height: int | None = None, fps: float | None = None, motion_bucket_id: float | None = None,
            cond_aug: float | None = None, resize_mode: str = "crop", guidance: Guidance | None = None,
            sampler: str = "euler", schedule: str = "karras", steps: int | None = None, seed: int | None = None,
            decode_t: int | None = None, overlap: int = 0, image_decoder: bool = False,
            callback: ProgressFn | None = None, cancel: CancelFn | None = None,
            device=None, offload: bool = False, autocast_dtype: torch.dtype | None = None,
            sampler_options: dict | None = None, noise: torch.Tensor | None = None,
            ff_chunk_size: int | None = DEFAULT_FF_CHUNK, channels_last: bool = True,
            noise_device: str = "cpu", decode_tile: int | None = None,
            decode_tile_overlap: int | None = None, cfg_batch: str = "auto") -> torch.Tensor:
    """One image (b 3 h w in [0, 1]) -> video frames b t 3 H W in [0, 1], reference defaults per variant (steps and
    seed None: the variant's `steps` and `seed`). `decode_tile` (latent pixels; None/0: whole frames) decodes in
    spatial tiles sharing `decode_tile_overlap` latent pixels (default a quarter tile). `cfg_batch`: the CFG
    branches in one batch or in turn, "auto" by the device's free memory (`cfg_batching`)."""
    check_tiling(decode_tile, decode_tile_overlap,
                 labels={"tile": "decode_tile", "tile_overlap": "decode_tile_overlap"})
    check_run(model, image, dict(num_frames=num_frames, width=width, height=height, fps=fps,
                                 motion_bucket_id=motion_bucket_id, cond_aug=cond_aug, steps=steps, seed=seed,
                                 decode_t=decode_t, overlap=overlap, ff_chunk_size=ff_chunk_size),
              guidance=guidance, sampler=sampler, schedule=schedule, resize_mode=resize_mode, device=device,
              offload=offload, autocast_dtype=autocast_dtype, ff_chunk_size=ff_chunk_size, cfg_batch=cfg_batch)

    def make_cond(gen):
        return image_conditioning(model, image, num_frames=num_frames, width=width, height=height, fps=fps,
                                  motion_bucket_id=motion_bucket_id, cond_aug=cond_aug, resize_mode=resize_mode,
                                  generator=gen)
    return _run(model, make_cond, guidance, sampler=sampler, schedule=schedule, steps=steps, seed=seed,
                decode_t=decode_t, overlap=overlap, image_decoder=image_decoder, callback=callback, cancel=cancel,
                device=device, offload=offload, autocast_dtype=autocast_dtype, sampler_options=sampler_options,
                noise=noise, ff_chunk_size=ff_chunk_size, channels_last=channels_last, noise_device=noise_device,
                decode_tile=decode_tile, decode_tile_overlap=decode_tile_overlap, cfg_batch=cfg_batch)


def orbit(model, image: torch.Tensor, *, elevations: float | Sequence[float] = 10.0,
          azimuths: Sequence[float] | None = None, num_frames: int | None = None, width: int | None = None,
          height: int | None = None, cond_aug: float | None = None, resize_mode: str = "crop",
          guidance: Guidance | None = None, sampler: str = "euler", schedule: str = "karras",
          steps: int | None = None, seed: int | None = None, decode_t: int | None = None, overlap: int = 0,
          callback: ProgressFn | None = None, cancel: CancelFn | None = None, device=None,
          offload: bool = False, autocast_dtype: torch.dtype | None = None,
          ff_chunk_size: int | None = DEFAULT_FF_CHUNK, channels_last: bool = True, mask: torch.Tensor | None = None,
          recenter: bool = True, image_frame_ratio: float | None = None, replace_last: bool = True,
          noise_device: str = "cpu", cfg_batch: str = "auto") -> torch.Tensor:
    """SV3D: one object image -> `num_frames` views around it (b t 3 H W in [0, 1]), triangle CFG by default.

    As the reference script's sv3d branch: an RGBA image (or `mask`, 1 = object) is cropped to the object, centred
    (`image_frame_ratio`) and put on white when `recenter`; with `replace_last` the last view (the input's camera)
    is replaced by that prepared input image. `cfg_batch`: as `img2vid`."""
    elev = [elevations] if isinstance(elevations, (int, float)) else elevations
    check_run(model, image, dict(num_frames=num_frames, width=width, height=height, cond_aug=cond_aug, steps=steps,
                                 seed=seed, decode_t=decode_t, overlap=overlap, ff_chunk_size=ff_chunk_size,
                                 elevations=list(elev), azimuths=None if azimuths is None else list(azimuths)),
              guidance=guidance, sampler=sampler, schedule=schedule, resize_mode=resize_mode, device=device,
              offload=offload, autocast_dtype=autocast_dtype, ff_chunk_size=ff_chunk_size, cfg_batch=cfg_batch)
    spec = model.spec
    w = spec.width if width is None else width
    h = spec.height if height is None else height
    ready = object_input(image, mask, width=w, height=h, recenter=recenter, image_frame_ratio=image_frame_ratio)
    ready = (prepare_image(ready, w, h, resize_mode) + 1.0) / 2.0  # b 3 H W in [0, 1]; the size warning comes later

    def make_cond(gen):
        return orbit_conditioning(model, ready, elevations=elevations, azimuths=azimuths, num_frames=num_frames,
                                  width=w, height=h, cond_aug=cond_aug, generator=gen)
    frames = _run(model, make_cond, guidance, sampler=sampler, schedule=schedule, steps=steps, seed=seed,
                  decode_t=decode_t, overlap=overlap, image_decoder=False, callback=callback, cancel=cancel,
                  device=device, offload=offload, autocast_dtype=autocast_dtype, sampler_options=None,
                  ff_chunk_size=ff_chunk_size, channels_last=channels_last, noise_device=noise_device,
                  cfg_batch=cfg_batch)
    return replace_last_view(frames, ready) if replace_last else frames
