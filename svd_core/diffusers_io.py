"""A diffusers `StableVideoDiffusionPipeline` (`unet/`, `vae/`, `image_encoder/`) in our terms: its three configs
-> our spec, its weights -> the released key layout. Nothing here reads files (`loading.load_diffusers` reads the
folder, checks and assigns); errors are ValueErrors, which the loader reports as the folder's CheckpointError."""
from __future__ import annotations

from dataclasses import replace

import torch

from .convert import state_dict_diffusers_to_sgm, unet_layout, vae_layout
from .variants import SV3D_P, SV3D_U, SVD, SVD_XT, CLIPSpec, ModelSpec, UNetSpec, VAESpec

PARTS = ("unet", "vae", "image_encoder")
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                "model.safetensors", "model.fp16.safetensors")


def spec_from_configs(unet: dict, vae: dict, clip: dict) -> ModelSpec:
    """Our spec from the three diffusers configs (released sizes map onto the released variants' defaults)."""
    chans = list(unet["block_out_channels"])
    heads = unet["num_attention_heads"]
    heads = heads if isinstance(heads, (list, tuple)) else [heads] * len(chans)
    mc = chans[0]
    adm = unet["projection_class_embeddings_input_dim"]
    parent = {768: SVD_XT if unet.get("num_frames", 25) == 25 else SVD, 256: SV3D_U, 1280: SV3D_P}.get(adm, SVD)
    unet_spec = UNetSpec(in_channels=unet["in_channels"], out_channels=unet["out_channels"], model_channels=mc,
                         channel_mult=tuple(c // mc for c in chans), num_res_blocks=unet["layers_per_block"],
                         num_head_channels=mc // heads[0], context_dim=unet["cross_attention_dim"],
                         adm_in_channels=adm, norm_groups=32)
    vch = vae["block_out_channels"]
    vae_spec = VAESpec(ch=vch[0], ch_mult=tuple(c // vch[0] for c in vch), num_res_blocks=vae["layers_per_block"],
                       z_channels=vae["latent_channels"], norm_groups=vae.get("norm_num_groups", 32))
    if clip.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"image_encoder uses hidden_act={clip['hidden_act']!r}; SVD's ViT-H-14 uses 'gelu'")
    clip_spec = replace(CLIPSpec(), embed_dim=clip["projection_dim"], image_size=clip["image_size"],
                        patch_size=clip["patch_size"], width=clip["hidden_size"], layers=clip["num_hidden_layers"],
                        head_width=clip["hidden_size"] // clip["num_attention_heads"],
                        mlp_ratio=clip["intermediate_size"] / clip["hidden_size"])
    released = (unet_spec == replace(parent.unet, adm_in_channels=adm) and vae_spec == replace(
        SVD.vae, first_stage_encoder=True) and clip_spec == CLIPSpec())
    return replace(parent, unet=unet_spec, vae=replace(vae_spec, decoder="temporal", first_stage_encoder=True),
                   clip=clip_spec, num_frames=unet.get("num_frames", parent.num_frames), custom=not released,
                   name=parent.name if released else f"{parent.name}_custom")


def clip_hf_to_open_clip(sd: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """transformers `CLIPVisionModelWithProjection` keys -> open_clip `visual.*` (q/k/v fused into in_proj)."""
    out = {
        "class_embedding": sd["vision_model.embeddings.class_embedding"],
        "conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
        "positional_embedding": sd["vision_model.embeddings.position_embedding.weight"],
        "ln_pre.weight": sd["vision_model.pre_layrnorm.weight"],
        "ln_pre.bias": sd["vision_model.pre_layrnorm.bias"],
        "ln_post.weight": sd["vision_model.post_layernorm.weight"],
        "ln_post.bias": sd["vision_model.post_layernorm.bias"],
        "proj": sd["visual_projection.weight"].t(),  # (embed width) -> (width embed): open_clip multiplies x @ proj
    }
    for i in range(layers):
        src, dst = f"vision_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for p in ("weight", "bias"):
            out[dst + f"attn.in_proj_{p}"] = torch.cat([sd[src + f"self_attn.{n}_proj.{p}"] for n in "qkv"])
            out[dst + f"attn.out_proj.{p}"] = sd[src + f"self_attn.out_proj.{p}"]
            out[dst + f"ln_1.{p}"] = sd[src + f"layer_norm1.{p}"]
            out[dst + f"ln_2.{p}"] = sd[src + f"layer_norm2.{p}"]
            out[dst + f"mlp.c_fc.{p}"] = sd[src + f"mlp.fc1.{p}"]
            out[dst + f"mlp.c_proj.{p}"] = sd[src + f"mlp.fc2.{p}"]
    return out


def sgm_tensors(spec: ModelSpec, unet_sd: dict[str, torch.Tensor], vae_sd: dict[str, torch.Tensor],
                clip_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The three parts' diffusers / transformers weights under the released (sgm) keys of `spec`'s model: UNet,
    first stage, the conditioner's encoder copy (encoder + quant_conv, unfolded) and the CLIP image tower."""
    try:
        tensors = {f"model.diffusion_model.{k}": v for k, v in
                   state_dict_diffusers_to_sgm(unet_sd, "unet", **unet_layout(spec.unet)).items()}
        layout = vae_layout(spec.vae)
        tensors.update({f"first_stage_model.{k}": v for k, v in
                        state_dict_diffusers_to_sgm(vae_sd, "vae", **layout).items()})
        enc = {k: v for k, v in vae_sd.items() if k.startswith("encoder.")}
        cond = f"conditioner.embedders.{spec.cond_encoder_index}.encoder."
        tensors.update({cond + k: v for k, v in state_dict_diffusers_to_sgm(enc, "vae", **layout).items()})
        tensors.update({cond + k: vae_sd[k] for k in ("quant_conv.weight", "quant_conv.bias")})
        tensors.update({f"conditioner.embedders.0.open_clip.model.visual.{k}": v
                        for k, v in clip_hf_to_open_clip(clip_sd, spec.clip.layers).items()})
    except KeyError as exc:
        raise ValueError(f"diffusers weights do not match their config: missing or unknown key {exc}") from None
    return tensors
