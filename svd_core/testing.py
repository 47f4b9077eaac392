"""Tiny random models in the real key layout, for tests, demos, benchmarks and workflow checks (no blobs shipped)."""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from .variants import (SV3D_P, SV3D_U, SVD_IMAGE_DECODER, SVD_INTERP, SVD_MV, SVD_XT, TEXT2VIDEO, TINY, CLIPSpec,
                       ModelSpec, get_variant)


def _tiny(parent: ModelSpec, name: str, **changes) -> ModelSpec:
    """A released variant's structure (vector inputs, VAE kind, guider) at TINY's widths."""
    adm = sum(d for _, d in parent.vector_inputs)
    sizes = dict(num_frames=TINY.num_frames, height=TINY.height, width=TINY.width, steps=TINY.steps,
                 decode_t=TINY.decode_t)
    sizes.update(changes)
    return replace(parent, name=name, unet=replace(TINY.unet, adm_in_channels=adm), vae=replace(
        TINY.vae, decoder=parent.vae.decoder, first_stage_encoder=parent.vae.first_stage_encoder,
        first_stage_quant=parent.vae.first_stage_quant), clip=TINY.clip, custom=True, **sizes)


TINY_XT = _tiny(SVD_XT, "tiny_xt", num_frames=6)
TINY_IMAGE_DECODER = _tiny(SVD_IMAGE_DECODER, "tiny_image_decoder")
TINY_SV3D_U = _tiny(SV3D_U, "tiny_sv3d_u", num_frames=5)
TINY_SV3D_P = _tiny(SV3D_P, "tiny_sv3d_p", num_frames=5)
# the paper's other generators at TINY's widths (interpolation keeps its 5 frames and 9 input channels)
TINY_INTERP = replace(_tiny(SVD_INTERP, "tiny_interp", num_frames=5, decode_t=5),
                      unet=replace(TINY.unet, in_channels=9, adm_in_channels=768))
TINY_SVD_MV = _tiny(SVD_MV, "tiny_svd_mv", num_frames=5)
# text tower: real 49408-token vocabulary (open_clip's tokenizer), 2 narrow layers, 16-token context
TINY_T2V = replace(_tiny(TEXT2VIDEO, "tiny_t2v", height=64, width=128),
                   unet=replace(TINY.unet, in_channels=4, adm_in_channels=512),
                   clip=CLIPSpec(embed_dim=64, image_size=56, patch_size=14, width=64, layers=2, head_width=32,
                                 text_context_length=16, text_vocab_size=49408, text_width=64, text_layers=2,
                                 text_heads=2))
# Stage I (svd_core.stage1): the text-to-video model with SD 2.x's image autoencoder, at TINY's widths
TINY_STAGE1 = replace(TINY_T2V, name="tiny_stage1", vae=replace(TINY_T2V.vae, decoder="image", first_stage_quant=True))
TINY_VARIANTS = {s.name: s for s in (TINY, TINY_XT, TINY_IMAGE_DECODER, TINY_SV3D_U, TINY_SV3D_P, TINY_INTERP,
                                     TINY_SVD_MV, TINY_T2V, TINY_STAGE1)}


@torch.no_grad()
def randomize_(module: nn.Module, seed: int = 0, scale: float = 1.0) -> nn.Module:
    """Fill every parameter (zero-initialised output layers and mix factors too) with seeded random values.

    Weights get N(0, 1/fan_in) so activations keep unit scale through deep stacks; norms get 1 + noise.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        if p.ndim >= 2:
            fan_in = math.prod(p.shape[1:])
            p.copy_(torch.randn(p.shape, generator=gen) * (scale / math.sqrt(fan_in)))
        elif name.endswith("mix_factor"):
            p.copy_(torch.randn(p.shape, generator=gen))
        elif name.endswith("weight"):  # 1-D weights are GroupNorm / LayerNorm gains
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
        else:
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return module


def tiny_model(variant: "str | ModelSpec" = TINY, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A randomised tiny model (structure of `variant`, default the TINY SVD)."""
    from .model import build

    spec = TINY_VARIANTS.get(variant, None) if isinstance(variant, str) else variant
    spec = spec or get_variant(variant)
    model = build(spec, device="cpu")
    randomize_(model, seed)
    return model.to(dtype)


def make_tiny_checkpoint(path: "str | Path", spec: "str | ModelSpec" = TINY, seed: int = 0,
                         dtype: torch.dtype = torch.float32) -> Path:
    """Write a tiny random checkpoint in the released layout, its spec in the safetensors metadata."""
    from .loading import save

    model = tiny_model(spec, seed=seed, dtype=dtype)
    return save(model, path)


def make_tiny_sd2_checkpoint(path: "str | Path", seed: int = 0) -> Path:
    """A tiny random Stable Diffusion 2.x checkpoint in the original layout (`model.diffusion_model.` image UNet,
    `first_stage_model.` autoencoder, `cond_stage_model.model.` OpenCLIP text tower, a DDPM buffer) at TINY_STAGE1's
    widths: the input of `svd_core.stage1` in tests and demos."""
    from .convert import is_video_only
    from .loading import save_tensors

    model = tiny_model(TINY_STAGE1, seed=seed)
    tensors = {}
    for key, value in model.state_dict().items():
        if key.startswith("model.diffusion_model.") and not is_video_only(key[len("model.diffusion_model."):]):
            tensors[key] = value
        elif key.startswith("first_stage_model."):
            tensors[key] = value
        elif key.startswith("conditioner.embedders.0.model."):
            tensors["cond_stage_model.model." + key[len("conditioner.embedders.0.model."):]] = value
    tensors["alphas_cumprod"] = torch.linspace(0.999, 0.005, 1000)
    return save_tensors(tensors, path)


def make_test_video(path: "str | Path", frames: int = 4, width: int = 64, height: int = 64, fps: float = 7.0,
                    seed: int = 0) -> Path:
    """A small deterministic video (moving gradient + disc) written with PyAV: input for video workflows' tests."""
    from .video_io import write_video

    gen = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    video = []
    for i in range(frames):
        cx = 0.25 + 0.5 * i / max(frames - 1, 1)
        disc = (((x - cx) ** 2 + (y - 0.5) ** 2) < 0.04).float()
        video.append(torch.stack([x, y, 0.3 + 0.7 * disc]))  # 3 h w
    video = (torch.stack(video) + 0.01 * torch.randn(frames, 3, height, width, generator=gen)).clamp(0, 1)
    return write_video(video, path, fps=fps)


def header_only_png(path: "str | Path", width: int, height: int) -> Path:
    """A PNG whose header claims width x height (8-bit RGB) but holds almost no data: a hostile input that only
    the header can be read of (tests of image-size limits, without writing a huge file)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path = Path(path)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


# ---- the diffusers peer on the same weights (parity tests, benchmarks); diffusers/transformers imported lazily ----
def hf_clip_from_open_clip(visual_sd: dict, spec: CLIPSpec):
    """open_clip `visual.*` -> transformers CLIPVisionModelWithProjection (inverse of our diffusers loader map): the
    peer's image encoder on our weights."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(hidden_size=spec.width, intermediate_size=int(spec.width * spec.mlp_ratio),
                           projection_dim=spec.embed_dim, num_hidden_layers=spec.layers,
                           num_attention_heads=spec.width // spec.head_width, image_size=spec.image_size,
                           patch_size=spec.patch_size, hidden_act="gelu", layer_norm_eps=1e-5)
    hf = CLIPVisionModelWithProjection(cfg)
    sd = {"vision_model.embeddings.class_embedding": visual_sd["class_embedding"],
          "vision_model.embeddings.patch_embedding.weight": visual_sd["conv1.weight"],
          "vision_model.embeddings.position_embedding.weight": visual_sd["positional_embedding"],
          "vision_model.pre_layrnorm.weight": visual_sd["ln_pre.weight"],
          "vision_model.pre_layrnorm.bias": visual_sd["ln_pre.bias"],
          "vision_model.post_layernorm.weight": visual_sd["ln_post.weight"],
          "vision_model.post_layernorm.bias": visual_sd["ln_post.bias"],
          "visual_projection.weight": visual_sd["proj"].t()}
    for i in range(spec.layers):
        s, d = f"transformer.resblocks.{i}.", f"vision_model.encoder.layers.{i}."
        for p in ("weight", "bias"):
            q, k, v = visual_sd[s + f"attn.in_proj_{p}"].chunk(3)
            sd.update({d + f"self_attn.q_proj.{p}": q, d + f"self_attn.k_proj.{p}": k, d + f"self_attn.v_proj.{p}": v,
                       d + f"self_attn.out_proj.{p}": visual_sd[s + f"attn.out_proj.{p}"],
                       d + f"layer_norm1.{p}": visual_sd[s + f"ln_1.{p}"],
                       d + f"layer_norm2.{p}": visual_sd[s + f"ln_2.{p}"],
                       d + f"mlp.fc1.{p}": visual_sd[s + f"mlp.c_fc.{p}"],
                       d + f"mlp.fc2.{p}": visual_sd[s + f"mlp.c_proj.{p}"]})
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    if unexpected or not all("position_ids" in k for k in missing):
        raise RuntimeError(f"open_clip -> transformers CLIP map is stale: missing {missing}, unexpected {unexpected}")
    return hf.eval()


def diffusers_pipeline(model, num_frames: int):
    """diffusers' StableVideoDiffusionPipeline on `model`'s weights (UNet, temporal VAE, CLIP image encoder) with the
    reference sampler (Euler, Karras sigmas 700 -> 0.002, v-prediction): the peer of parity tests and benchmarks."""
    from diffusers import (AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, StableVideoDiffusionPipeline,
                           UNetSpatioTemporalConditionModel)
    from transformers import CLIPImageProcessor

    from .convert import state_dict_sgm_to_diffusers, unet_layout, vae_layout

    spec = model.spec
    mc = spec.unet.model_channels
    unet = UNetSpatioTemporalConditionModel(
        sample_size=spec.height // 8, in_channels=8, out_channels=4, block_out_channels=tuple(mc * c for c in spec.unet.channel_mult),
        addition_time_embed_dim=256, projection_class_embeddings_input_dim=768, layers_per_block=2,
        cross_attention_dim=spec.unet.context_dim,
        num_attention_heads=tuple(mc * c // spec.unet.num_head_channels for c in spec.unet.channel_mult),
        num_frames=num_frames)
    unet.load_state_dict(state_dict_sgm_to_diffusers(model.unet.state_dict(), "unet", **unet_layout(spec.unet)))
    ch = spec.vae.ch
    vae = AutoencoderKLTemporalDecoder(down_block_types=("DownEncoderBlock2D",) * len(spec.vae.ch_mult),
                                       block_out_channels=tuple(ch * c for c in spec.vae.ch_mult), latent_channels=4,
                                       layers_per_block=2)
    vae.load_state_dict(state_dict_sgm_to_diffusers(model.first_stage_model.state_dict(), "vae",
                                                    **vae_layout(spec.vae)))
    visual = model.conditioner.clip.open_clip.model.visual.state_dict()
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="v_prediction", interpolation_type="linear", use_karras_sigmas=True, sigma_min=0.002,
        sigma_max=700.0, timestep_spacing="leading", timestep_type="continuous", steps_offset=1,
        final_sigmas_type="zero")
    return StableVideoDiffusionPipeline(vae=vae.eval(), image_encoder=hf_clip_from_open_clip(visual, spec.clip),
                                        unet=unet.eval(), scheduler=scheduler,
                                        feature_extractor=CLIPImageProcessor())
