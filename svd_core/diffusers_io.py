"""Load a diffusers `StableVideoDiffusionPipeline` folder (`unet/`, `vae/`, `image_encoder/`) into our layout."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from .convert import state_dict_diffusers_to_sgm, unet_layout, vae_layout
from .loading import CheckpointError, SafetensorsFile, TensorDict, assign_weights
from .model import LoadReport, SVDModel
from .variants import SV3D_P, SV3D_U, SVD, SVD_XT, CLIPSpec, ModelSpec, UNetSpec, VAESpec

_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                 "model.safetensors", "model.fp16.safetensors")


def _read_part(folder: Path, part: str) -> tuple[dict, dict[str, torch.Tensor]]:
    sub = folder / part
    config_path = sub / "config.json"
    if not config_path.exists():
        raise CheckpointError(f"{folder}: not a diffusers SVD folder ({part}/config.json missing); expected "
                              f"unet/, vae/ and image_encoder/ of a StableVideoDiffusionPipeline")
    weights = next((sub / n for n in _WEIGHT_NAMES if (sub / n).exists()), None)
    if weights is None:
        raise CheckpointError(f"{sub}: no .safetensors weights (looked for {', '.join(_WEIGHT_NAMES)}); "
                              f"pickled .bin weights are not loaded")
    reader = SafetensorsFile(weights)
    return json.loads(config_path.read_text()), {k: reader.tensor(k) for k in reader.entries}


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
        raise CheckpointError(f"image_encoder uses hidden_act={clip['hidden_act']!r}; SVD's ViT-H-14 uses 'gelu'")
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


def load_diffusers(folder: "str | Path", device="cpu", dtype: torch.dtype | None = None,
                   operations=None) -> SVDModel:
    """Map a diffusers SVD pipeline folder onto the released layout and load it (unused parts reported absent)."""
    folder = Path(folder)
    unet_cfg, unet_sd = _read_part(folder, "unet")
    vae_cfg, vae_sd = _read_part(folder, "vae")
    clip_cfg, clip_sd = _read_part(folder, "image_encoder")
    spec = spec_from_configs(unet_cfg, vae_cfg, clip_cfg)
    try:
        tensors = {f"model.diffusion_model.{k}": v for k, v in
                   state_dict_diffusers_to_sgm(unet_sd, "unet", **unet_layout(spec.unet)).items()}
        layout = vae_layout(spec.vae)
        tensors.update({f"first_stage_model.{k}": v for k, v in
                        state_dict_diffusers_to_sgm(vae_sd, "vae", **layout).items()})
        # the conditioner's encoder copy: diffusers' encoder + quant_conv, unfolded
        enc = {k: v for k, v in vae_sd.items() if k.startswith("encoder.")}
        cond = f"conditioner.embedders.{spec.cond_encoder_index}.encoder."
        tensors.update({cond + k: v for k, v in state_dict_diffusers_to_sgm(enc, "vae", **layout).items()})
        tensors.update({cond + k: vae_sd[k] for k in ("quant_conv.weight", "quant_conv.bias")})
        tensors.update({f"conditioner.embedders.0.open_clip.model.visual.{k}": v
                        for k, v in clip_hf_to_open_clip(clip_sd, spec.clip.layers).items()})
    except KeyError as exc:
        raise CheckpointError(f"{folder}: diffusers weights do not match their config: missing or unknown key {exc}") from None
    report = LoadReport(source=str(folder), variant=spec.name, detected_from="diffusers folder configs",
                        file_dtypes={})
    source = TensorDict(tensors)
    report.file_dtypes = dict(source.dtypes())
    with torch.device("meta"):
        model = SVDModel(spec, operations)
    return assign_weights(model, source, report, device=device, dtype=dtype)
