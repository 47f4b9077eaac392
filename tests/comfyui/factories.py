"""File factories named by `workflows/*.test.json` ("tests.comfyui.factories:NAME"): called as NAME(path, **kwargs)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def tiny_checkpoint(path: Path, variant: str = "tiny", seed: int = 0) -> None:
    """A tiny random checkpoint in the real key layout: `variant` is a name of svd_core.testing.TINY_VARIANTS
    (tiny, tiny_xt, tiny_sv3d_p, ...), loadable by the pack's checkpoint loader."""
    from svd_core import testing

    testing.make_tiny_checkpoint(path, spec=variant, seed=seed)


def test_image(path: Path, width: int = 160, height: int = 96, seed: int = 0, alpha: bool = False) -> None:
    """A smooth colour gradient with a bright disc (deterministic), saved as PNG; with `alpha` an RGBA PNG whose
    disc is the only opaque part (an SV3D object on a transparent background)."""
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = x / max(width - 1, 1)
    g = y / max(height - 1, 1)
    b = ((x - width / 2) ** 2 + (y - height / 2) ** 2 < (min(width, height) / 4) ** 2).astype(np.float32)
    rgb = np.stack([r, g, 0.3 + 0.7 * b], axis=-1)
    rng = np.random.default_rng(seed)
    rgb = np.clip(rgb + rng.normal(0, 0.02, rgb.shape), 0, 1)
    if alpha:
        rgb = np.concatenate([rgb, b[..., None]], axis=-1)  # opaque disc, transparent elsewhere
    Image.fromarray((rgb * 255).astype(np.uint8)).save(path)


def tiny_diffusers_folder(path: Path, seed: int = 0, num_frames: int = 4) -> None:
    """A tiny random StableVideoDiffusionPipeline folder (unet/, vae/, image_encoder/, model_index.json) written by
    diffusers and transformers themselves, at TINY's widths, for the pack's diffusers-folder loader."""
    import json

    import torch
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    chans = (32, 64, 128, 128)
    unet = UNetSpatioTemporalConditionModel(
        sample_size=16, in_channels=8, out_channels=4, block_out_channels=chans, layers_per_block=2,
        cross_attention_dim=64, num_attention_heads=tuple(c // 32 for c in chans), num_frames=num_frames,
        addition_time_embed_dim=256, projection_class_embeddings_input_dim=768, transformer_layers_per_block=1)
    vae = AutoencoderKLTemporalDecoder(block_out_channels=chans, layers_per_block=2, latent_channels=4,
                                       down_block_types=("DownEncoderBlock2D",) * 4)
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=64, projection_dim=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
        image_size=56, patch_size=14, hidden_act="gelu"))
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(path / "unet", safe_serialization=True)
    vae.save_pretrained(path / "vae", safe_serialization=True)
    clip.save_pretrained(path / "image_encoder", safe_serialization=True)
    (path / "model_index.json").write_text(json.dumps({
        "_class_name": "StableVideoDiffusionPipeline", "unet": ["diffusers", "UNetSpatioTemporalConditionModel"],
        "vae": ["diffusers", "AutoencoderKLTemporalDecoder"],
        "image_encoder": ["transformers", "CLIPVisionModelWithProjection"]}, indent=2))


def tiny_controlnet(path: Path, seed: int = 0, zero_conv_scale: float = 0.05) -> None:
    """A tiny random ControlNet in the released layout (lllyasviel's `control_model.` keys: input_hint_block,
    input_blocks, zero_convs, middle_block, middle_block_out; ComfyUI 0.3.75 comfy/cldm/cldm.py builds it) whose
    residuals fit the TINY SVD UNet: its spatial structure (model_channels, channel_mult, num_res_blocks,
    context_dim, adm vector; attention from the second level on) with 4 latent input channels (ComfyUI feeds a
    ControlNet the scaled noisy latent without the concatenated image latent) and an RGB hint. The zero
    convolutions are random and non-zero (`zero_conv_scale`) so the ControlNet changes the video. ComfyUI's
    `load_controlnet` detects its config from the keys (`model_config_from_unet(..., use_base_if_no_match=True)`)."""
    import sys

    import torch
    from safetensors.torch import save_file

    from svd_core import testing

    from .comfy_harness import comfyui_dir

    if str(comfyui_dir()) not in sys.path:
        sys.path.insert(0, str(comfyui_dir()))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # no accelerator probing in the test process
    import comfy.cldm.cldm
    import comfy.model_detection
    import comfy.ops

    unet = testing.tiny_model("tiny", seed=seed).unet
    unet_sd = {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}
    config = comfy.model_detection.detect_unet_config(unet_sd, "model.diffusion_model.")
    # the noisy latent only; an RGB hint; ComfyUI builds a detected ControlNet with 64-channel heads (its
    # supported_models_base.BASE default), so no attention at the 32-channel level (residual shapes do not change)
    config.update(in_channels=4, hint_channels=3, num_heads=-1, num_head_channels=64,
                  transformer_depth=[0, 0] + config["transformer_depth"][2:])
    config.pop("out_channels", None)
    net = comfy.cldm.cldm.ControlNet(**config, device="meta", operations=comfy.ops.disable_weight_init)
    net = net.to_empty(device="cpu")
    testing.randomize_(net, seed + 1)
    gen = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith(("zero_convs.", "middle_block_out.")):
                p.copy_(zero_conv_scale * torch.randn(p.shape, generator=gen))
    save_file({f"control_model.{k}": v.contiguous() for k, v in net.state_dict().items()}, str(path))
