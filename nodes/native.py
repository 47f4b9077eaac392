"""Native ComfyUI types over the stages of one svd_core model: MODEL (the UNet), VAE and CLIP_VISION, no second
copy of any weight (issue 13 items 2 and 4).

* `NativeSVD` is a `comfy.model_base.SVD_img2vid` whose `diffusion_model` is the svd_core `VideoUNet` (through
  `UNetCall`, which shares the UNet's sub-modules, so the keys read `diffusion_model.<reference keys>` as ComfyUI's
  own SVD model): EDM v-prediction, sigma_data 1, sigmas 0.002..700 and latent_format SD15 as ComfyUI's
  `supported_models.SVD_img2vid`. Native `KSampler`, `SamplerCustomAdvanced`, CFG patches, LoRA patches work on it.
* `NativeVAE` decodes / encodes ComfyUI LATENTs (raw VAE latents) with the svd_core first stage; the temporal
  decoder treats a LATENT batch as one video, as native SVD sampling does (`num_video_frames = batch`).
* `NativeCLIPVision.encode_image` gives `image_embeds` from the conditioner's CLIP image tower with the reference's
  preprocessing (`svd_core.conditioner.clip_preprocess`), for native `CLIPVisionEncode` / `SVD_img2vid_Conditioning`.

Each stage has its own ModelPatcher (`stage_patchers`), so ComfyUI keeps only the running stage on the device.
"""
from __future__ import annotations


import torch
from torch import nn

import comfy.clip_vision
import comfy.latent_formats
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.supported_models_base

STAGES = ("unet", "vae", "conditioner")


class UNetCall(nn.Module):
    """ComfyUI's call `diffusion_model(x, timesteps, context=, y=, control=, transformer_options=,
    num_video_frames=, ...)` onto the svd_core UNet's `forward(x, timesteps, context, y, num_video_frames,
    image_only_indicator, time_context)`.

    It shares the UNet's sub-module, parameter and buffer tables (the same tensors, the same key names), so the
    native model's `state_dict()` reads `diffusion_model.<reference keys>` and ComfyUI's weight patches (LoRA,
    casting, offload) act on the svd_core UNet itself."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self._modules = unet._modules  # shared tables: no copy, same names (input_blocks.0.0.weight, ...)
        self._parameters = unet._parameters
        self._buffers = unet._buffers
        self.__dict__["unet"] = unet  # not registered: its children are already ours

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype (the activations'; fp8-stored weights compute in the dtype `store_fp8` recorded)."""
        from svd_core.ops import compute_dtype

        return compute_dtype(self.unet)

    def forward(self, x, timesteps, context=None, y=None, control=None, transformer_options=None,
                num_video_frames=None, image_only_indicator=None, time_context=None, **_):
        """x: (b t) c h w, the noisy latent scaled by c_in with the concat frame; timesteps: c_noise per (b t)."""
        frames = num_video_frames if num_video_frames is not None else x.shape[0]
        return self.unet(x, timesteps, context=context, y=y, num_video_frames=int(frames),
                         image_only_indicator=image_only_indicator, time_context=time_context,
                         control=control)  # ControlNet residuals, applied as ComfyUI's apply_control


class NativeConfig(comfy.supported_models_base.BASE):
    """ComfyUI's SVD_img2vid model config without building a UNet (ours is given)."""

    unet_config = {"disable_unet_model_creation": True}
    unet_extra_config = {}
    latent_format = comfy.latent_formats.SD15
    sampling_settings = {"sigma_max": 700.0, "sigma_min": 0.002, "sigma_data": 1.0}


class NativeSVD(comfy.model_base.SVD_img2vid):
    """A native ComfyUI MODEL over an svd_core `SVDModel`'s UNet (the same tensors)."""

    def __init__(self, svd_model, device=None):
        spec = svd_model.spec
        config = NativeConfig({"disable_unet_model_creation": True, "adm_in_channels": spec.unet.adm_in_channels,
                               "in_channels": spec.unet.in_channels, "context_dim": spec.unet.context_dim})
        config.sampling_settings.update(sigma_min=float(spec.sigma_min), sigma_max=float(spec.sigma_max))
        config.scale_factor = spec.scale_factor
        super().__init__(config, comfy.model_base.ModelType.V_PREDICTION_EDM, device=device)
        self.diffusion_model = UNetCall(svd_model.unet)
        if any(p.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) for p in svd_model.unet.parameters()):
            self.manual_cast_dtype = self.diffusion_model.dtype  # ComfyUI casts the inputs to it, not to fp8
        self.spec = spec
        from svd_core.conditioner import VectorEmbedder  # weightless sinusoidal embedders, one per vector input

        self._vector = [VectorEmbedder(k, d) for k, d in spec.vector_inputs]

    def encode_adm(self, **kwargs):
        """The micro-conditioning vector (paper Sec. 4.3) from a native CONDITIONING's keys, as the svd_core
        conditioner embeds it and under the names ComfyUI's own SVD / SV3D models read: `fps` (embedded as
        fps_id = fps - 1, as ComfyUI's SVD model and the reference do), `motion_bucket_id`, `augmentation_level`
        (cond_aug), SV3D `elevation` / `azimuth` in degrees, one or one per frame (polar = 90 - elevation, both in
        radians, as ComfyUI's SV3D_p). A per-frame vector under "svd_vector" ((t, adm), the pack's orbit
        conditioning, azimuths relative to the last view as the reference) is used as it is. Returns 1 or t rows."""
        if kwargs.get("svd_vector") is not None:
            return kwargs["svd_vector"]

        def per(value) -> torch.Tensor:
            return torch.as_tensor(value, dtype=torch.float32).flatten()

        values = {"fps_id": per(kwargs.get("fps", self.spec.fps)) - 1,
                  "motion_bucket_id": per(kwargs.get("motion_bucket_id", self.spec.motion_bucket_id)),
                  "cond_aug": per(kwargs.get("augmentation_level", 0.0))}
        if "elevation" in kwargs:
            values["polars_rad"] = torch.deg2rad(torch.fmod(90.0 - per(kwargs["elevation"]), 360.0))
        if "azimuth" in kwargs:
            values["azimuths_rad"] = torch.deg2rad(torch.fmod(per(kwargs["azimuth"]), 360.0))
        missing = [e.key for e in self._vector if e.key not in values]
        if missing:
            raise ValueError(f"{self.spec.name}: the conditioning gives no {missing}; use the SVD suite's "
                             f"conditioning node for this model (its native outputs carry them)")
        used = [values[e.key] for e in self._vector]
        rows = max(v.numel() for v in used)
        if any(v.numel() not in (1, rows) for v in used):
            raise ValueError(f"{self.spec.name}: conditioning values of {sorted({v.numel() for v in used})} "
                             f"frames; give one value or one per frame")
        return torch.cat([e(v.expand(rows)) for e, v in zip(self._vector, used)], dim=-1)  # rows adm


class NativeVAE:
    """The methods native `VAEDecode` / `VAEEncode` / `SVD_img2vid_Conditioning` call, over the svd_core first
    stage. LATENTs are raw VAE latents (ComfyUI's convention); pixels (B, H, W, C) in [0, 1]."""

    def __init__(self, svd_model, patcher: comfy.model_patcher.ModelPatcher):
        self.first_stage = svd_model.first_stage_model
        self.spec = svd_model.spec
        self.patcher = patcher
        self.latent_channels = self.spec.vae.z_channels
        self.downscale_ratio = self.upscale_ratio = 2 ** (len(self.spec.vae.ch_mult) - 1)
        self.latent_dim = 2
        self.output_channels = 3

    def spacial_compression_decode(self) -> int:
        return self.upscale_ratio

    def spacial_compression_encode(self) -> int:
        return self.downscale_ratio

    def temporal_compression_decode(self):
        return None

    def _load(self, pixels: int) -> torch.device:
        """Load the VAE stage with room for `pixels` output pixels per frame window."""
        mm.load_models_gpu([self.patcher], memory_required=pixels * self.spec.vae.ch * 4 * 8)
        return next(self.first_stage.parameters()).device

    @torch.inference_mode()
    def decode(self, samples: torch.Tensor, vae_options=None) -> torch.Tensor:
        """Raw latents (N, 4, h, w), one video of N frames -> IMAGE (N, H, W, 3) in [0, 1]."""
        from svd_core.vae_decode import decode_video

        if samples.ndim != 4:
            raise ValueError(f"SVD VAE decode: latent of shape {tuple(samples.shape)}; expected (frames, 4, h, w)")
        n, r = samples.shape[0], self.upscale_ratio
        window = min(n, self.spec.decode_t)
        device = self._load(window * samples.shape[-2] * samples.shape[-1] * r * r)
        dtype = next(self.first_stage.parameters()).dtype
        frames = decode_video(self.first_stage, samples.to(device, dtype), n, decode_t=self.spec.decode_t,
                              scale_factor=1.0)  # raw latent: no scale to undo
        return ((frames.float() + 1.0) / 2.0).clamp(0, 1).movedim(1, -1).to(mm.intermediate_device())  # n h w c

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """IMAGE (N, H, W, C) in [0, 1] -> raw latents (N, 4, H/8, W/8): the posterior's mean."""
        from svd_core.vae_decode import encode_video

        device = self._load(pixels.shape[1] * pixels.shape[2])
        dtype = next(self.first_stage.parameters()).dtype
        x = pixels[..., :3].movedim(-1, 1).to(device, dtype) * 2.0 - 1.0  # n h w c -> n c h w in [-1, 1]
        return encode_video(self.first_stage, x, scale_factor=1.0).float().to(mm.intermediate_device())


class NativeCLIPVision:
    """`encode_image` as native `CLIPVisionEncode` and `SVD_img2vid_Conditioning` call it, over the conditioner's
    CLIP image tower (reference preprocessing: bicubic resize of the whole image to 224 px; `crop` is not used)."""

    def __init__(self, svd_model, patcher: comfy.model_patcher.ModelPatcher):
        self.conditioner = svd_model.conditioner
        self.patcher = patcher

    @torch.inference_mode()
    def encode_image(self, image: torch.Tensor, crop=True):
        mm.load_models_gpu([self.patcher])
        clip = self.conditioner.clip
        device, dtype = next(clip.parameters()).device, next(clip.parameters()).dtype
        x = image[..., :3].movedim(-1, 1).to(device, dtype) * 2.0 - 1.0  # b h w c -> b c h w in [-1, 1]
        out = comfy.clip_vision.Output()
        out["image_embeds"] = clip(x)[:, 0].float().to(mm.intermediate_device())  # b 1 d -> b d
        out["mm_projected"] = None
        return out


def stage_patchers(svd_model, load_device, offload_device) -> dict[str, comfy.model_patcher.ModelPatcher]:
    """One ModelPatcher per stage over `svd_model`'s own modules: "unet" (a native MODEL), "vae", "conditioner"."""
    native = NativeSVD(svd_model, device=offload_device)
    return {"unet": comfy.model_patcher.ModelPatcher(native, load_device=load_device, offload_device=offload_device),
            "vae": comfy.model_patcher.ModelPatcher(svd_model.first_stage_model, load_device=load_device,
                                                    offload_device=offload_device),
            "conditioner": comfy.model_patcher.ModelPatcher(svd_model.conditioner, load_device=load_device,
                                                            offload_device=offload_device)}


def native_conditioning(cond, fps: float | None, motion_bucket_id: float | None, cond_aug: float):
    """svd_core image conditioning -> native (positive, negative) CONDITIONING of its first video.

    positive: the clean image's CLIP token and the latent of the frame noised once in [-1, 1] image space
    (`svd_core.pipeline`, reference), with fps / motion_bucket_id / augmentation_level for `NativeSVD.encode_adm`;
    negative: zero token and zero latent with the same vector (reference `force_uc_zero_embeddings`). `fps` None
    (SV3D orbits): the per-frame vector itself under "svd_vector"."""
    t = cond.num_frames
    token = cond.cond.crossattn[:1].float().cpu()  # (b t) 1 d -> 1 1 d: the first video's token
    latent = cond.cond.concat[:1].float().cpu()  # (b t) 4 h w -> 1 4 h w: its noised frame, raw latent
    keys = {"fps": fps, "motion_bucket_id": motion_bucket_id, "augmentation_level": cond_aug}
    if fps is None:  # SV3D: per-frame camera vectors, given whole (`NativeSVD.encode_adm`)
        keys = {"augmentation_level": cond_aug, "svd_vector": cond.cond.vector[:t].float().cpu()}  # (b t) adm -> t adm
    positive = [[token, {**keys, "concat_latent_image": latent}]]
    negative = [[torch.zeros_like(token), {**keys, "concat_latent_image": torch.zeros_like(latent)}]]
    empty = {"samples": torch.zeros((t, latent.shape[1], *latent.shape[-2:]))}
    return positive, negative, empty


def lora_reference(patcher) -> nn.Module:
    """A module with the names `svd_core.lora.load_lora` reads a LoRA file against (`model.diffusion_model.*`),
    over a native MODEL of the pack (no weights moved or copied), or None for another pack's model."""
    native = getattr(patcher, "model", None)
    if not isinstance(native, NativeSVD):
        return None
    holder = nn.Module()
    holder.spec = native.spec
    holder.model = nn.Module()
    holder.model.diffusion_model = native.diffusion_model.unet
    return holder


def lora_patched(patcher, adapter, strength: float):
    """`patcher` cloned with `adapter` (an `svd_core.lora.LoRA`) as ComfyUI weight patches at `strength`: keys
    `diffusion_model.<reference path>.weight`, the LoRA in ComfyUI's generic format (lora_up / lora_down / alpha,
    delta = strength * alpha / rank * up @ down as `svd_core.lora`), so it stacks with other LoRAs and ComfyUI
    unpatches it. Returns the clone and the layer paths the model lacks (none applied then)."""
    import comfy.lora
    from svd_core.lora import UNET_PREFIX, lora_state_dict

    tensors = {"diffusion_model." + k[len(UNET_PREFIX):]: v for k, v in lora_state_dict(adapter, "native").items()}
    key_map = comfy.lora.model_lora_keys_unet(patcher.model, {})
    wanted = {k.rsplit(".lora_up.weight", 1)[0] for k in tensors if k.endswith(".lora_up.weight")}
    missing = sorted(k for k in wanted if k not in key_map)
    if missing:
        return None, missing
    clone = patcher.clone()
    clone.add_patches(comfy.lora.load_lora(tensors, key_map, log_missing=False), float(strength))
    return clone, []


class NativeUNetView:
    """The svd_core model with its UNet run through a native MODEL (`patcher`): what the pack's sampler hands the
    engine when a MODEL is connected, so that MODEL's ComfyUI weight patches (LoRAs of any pack) and wrappers
    apply. `denoise` is the native model's `apply_model` (EDM v-prediction, the same D(x; sigma) as
    `svd_core.denoiser.denoise`); everything else (spec, conditioner, VAE) is the svd_core model's."""

    def __init__(self, svd_model, patcher):
        self.base, self.patcher = svd_model, patcher

    def __getattr__(self, name):
        return getattr(self.base, name)

    @property
    def unet(self) -> nn.Module:
        return self.patcher.model.diffusion_model

    def denoise(self, x, sigma, cond, num_frames: int):
        options = self.patcher.model_options.get("transformer_options", {})
        return self.patcher.model.apply_model(x, sigma, c_concat=cond.concat, c_crossattn=cond.crossattn,
                                              y=cond.vector, num_video_frames=int(num_frames),
                                              transformer_options=dict(options)).to(x.dtype)


def is_svd_model(patcher) -> bool:
    """A native MODEL with ComfyUI's SVD call convention (ours, or ComfyUI's own SVD / SV3D models)."""
    return isinstance(getattr(patcher, "model", None), comfy.model_base.SVD_img2vid)


def pack_conditioning(positive, negative, num_frames: int, native_model):
    """Native positive / negative CONDITIONING (first entry of each) -> the engine's `Conditioning` of one video of
    `num_frames` frames: the CLIP token (cross-attention), `concat_latent_image` (raw VAE latent, zeros if absent)
    and the micro-conditioning vector `native_model.encode_adm` builds from the entry's keys, each per frame."""
    from svd_core.denoiser import VideoCond
    from svd_core.pipeline import Conditioning

    def branch(entries, shape=None):
        token, options = entries[0]
        concat = options.get("concat_latent_image")
        if concat is None:
            if shape is None:
                raise ValueError("the positive conditioning has no concat_latent_image (the conditioning frame's "
                                 "latent): make it with SVD Image Conditioning or SVD_img2vid_Conditioning")
            concat = torch.zeros(shape)
        y = native_model.encode_adm(**options).float()
        rep = (lambda t: t.float().expand(num_frames, *t.shape[1:]).contiguous()
               if t.shape[0] == 1 else t.float())  # 1 ... -> t ... (one video)
        return VideoCond(rep(token), rep(concat[:1]), rep(y)), concat.shape

    cond, shape = branch(positive)
    uncond, _ = branch(negative, (1, *shape[1:]))
    return Conditioning(cond, uncond, num_frames, 1, shape[-2] * 8, shape[-1] * 8, shape[1])
