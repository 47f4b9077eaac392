"""Rule-based state-dict key conversion between the reference (sgm) layout and diffusers.

UNet: sgm `VideoUNet` (keys without `model.diffusion_model.`) <-> diffusers `UNetSpatioTemporalConditionModel`.
VAE: sgm first stage (keys without `first_stage_model.`) <-> diffusers `AutoencoderKLTemporalDecoder`
(temporal decoder) or `AutoencoderKL` (image decoder, `temporal=False`).

The rules are parameterised by the block structure (number of resolution levels = len(channel_mult),
num_res_blocks, and for the UNet which levels carry attention), so they hold for tiny test configs and for the
released sizes alike. Nothing here reads files.

diffusers' `AutoencoderKLTemporalDecoder` has a `quant_conv` that the sgm video first stage lacks (its encoder
output goes straight to the Gaussian): sgm -> diffusers inserts an identity `quant_conv`; diffusers -> sgm folds
a non-identity `quant_conv` into `encoder.conv_out` (both are linear), so encoding is preserved both ways.
"""
from __future__ import annotations

import re
from typing import Mapping

import torch

from .variants import UNetSpec, VAESpec

__all__ = [
    "unet_layout",
    "vae_layout",
    "unet_sgm_to_diffusers",
    "unet_diffusers_to_sgm",
    "unet_image_sgm_to_diffusers",
    "unet_image_diffusers_to_sgm",
    "vae_sgm_to_diffusers",
    "vae_diffusers_to_sgm",
    "state_dict_sgm_to_diffusers",
    "state_dict_diffusers_to_sgm",
]

# ----------------------------------------------------------------------------------------------- layouts


def unet_layout(spec: UNetSpec) -> dict:
    """Keyword arguments of the UNet rules for a `UNetSpec` (attention where 2**level is in attention_resolutions)."""
    levels = len(spec.channel_mult)
    return {
        "num_levels": levels,
        "num_res_blocks": spec.num_res_blocks,
        "attention_levels": tuple(lv for lv in range(levels) if 2**lv in tuple(spec.attention_resolutions)),
    }


def vae_layout(spec: VAESpec) -> dict:
    """Keyword arguments of the VAE rules for a `VAESpec`."""
    return {"num_levels": len(spec.ch_mult), "num_res_blocks": spec.num_res_blocks, "temporal": spec.decoder == "temporal"}


def _attn_levels(num_levels: int, attention_levels) -> tuple[int, ...]:
    # SVD: attention at every level but the coarsest (attention_resolutions (4, 2, 1) with 4 levels)
    return tuple(range(num_levels - 1)) if attention_levels is None else tuple(attention_levels)


def _rename(rest: str, pairs: tuple[tuple[str, str], ...], src: int, what: str, key: str) -> str:
    """Replace the first matching dotted prefix of `rest` using (sgm, diffusers) `pairs`, read from side `src`."""
    for pair in pairs:
        a, b = pair[src], pair[1 - src]
        if rest == a or rest.startswith(a + "."):
            return b + rest[len(a):]
    raise KeyError(f"{what}: no rule for {key!r} (unknown part {rest!r})")


def _unknown(key: str, what: str) -> KeyError:
    return KeyError(f"{what}: no rule for key {key!r}; is the block structure (num_levels/num_res_blocks) right?")


# ----------------------------------------------------------------------------------------------- UNet

_UNET_FIXED = (
    ("time_embed.0", "time_embedding.linear_1"),
    ("time_embed.2", "time_embedding.linear_2"),
    ("label_emb.0.0", "add_embedding.linear_1"),
    ("label_emb.0.2", "add_embedding.linear_2"),
    ("input_blocks.0.0", "conv_in"),
    ("out.0", "conv_norm_out"),
    ("out.2", "conv_out"),
)
# openaimodel ResBlock -> diffusers ResnetBlock2D / TemporalResnetBlock (inside a SpatioTemporalResBlock)
_UNET_RES_INNER = (
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("emb_layers.1", "time_emb_proj"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("skip_connection", "conv_shortcut"),
)
_UNET_RES = (("time_mixer", "time_mixer"),) + tuple(
    (f"time_stack.{a}", f"temporal_res_block.{b}") for a, b in _UNET_RES_INNER
) + tuple((a, f"spatial_res_block.{b}") for a, b in _UNET_RES_INNER)
# SpatialVideoTransformer -> TransformerSpatioTemporalModel
_UNET_ATTN = (
    ("time_pos_embed.0", "time_pos_embed.linear_1"),
    ("time_pos_embed.2", "time_pos_embed.linear_2"),
    ("time_stack", "temporal_transformer_blocks"),
    ("transformer_blocks", "transformer_blocks"),
    ("time_mixer", "time_mixer"),
    ("norm", "norm"),
    ("proj_in", "proj_in"),
    ("proj_out", "proj_out"),
)


def _unet_input_table(num_levels: int, num_res_blocks: int) -> dict[int, tuple[int, int | None]]:
    """input_blocks index -> (level, resnet index or None for the downsampler)."""
    table, n = {}, 1
    for level in range(num_levels):
        for i in range(num_res_blocks):
            table[n] = (level, i)
            n += 1
        if level != num_levels - 1:
            table[n] = (level, None)
            n += 1
    return table


def unet_sgm_to_diffusers(
    key: str, num_levels: int = 4, num_res_blocks: int = 2, attention_levels: tuple[int, ...] | None = None
) -> str:
    """sgm VideoUNet key (no `model.diffusion_model.`) -> diffusers UNetSpatioTemporalConditionModel key."""
    what = "unet_sgm_to_diffusers"
    attn = _attn_levels(num_levels, attention_levels)
    for a, b in _UNET_FIXED:
        if key.startswith(a + "."):
            return b + key[len(a):]
    if m := re.fullmatch(r"input_blocks\.(\d+)\.(\d+)\.(.+)", key):
        n, j, rest = int(m[1]), int(m[2]), m[3]
        level, i = _unet_input_table(num_levels, num_res_blocks).get(n, (None, None))
        if level is None:
            raise _unknown(key, what)
        if i is None:
            if j == 0 and rest.startswith("op."):
                return f"down_blocks.{level}.downsamplers.0.conv.{rest[3:]}"
        elif j == 0:
            return f"down_blocks.{level}.resnets.{i}." + _rename(rest, _UNET_RES, 0, what, key)
        elif j == 1 and level in attn:
            return f"down_blocks.{level}.attentions.{i}." + _rename(rest, _UNET_ATTN, 0, what, key)
    elif m := re.fullmatch(r"middle_block\.(\d)\.(.+)", key):
        j, rest = int(m[1]), m[2]
        if j in (0, 2):
            return f"mid_block.resnets.{j // 2}." + _rename(rest, _UNET_RES, 0, what, key)
        if j == 1:
            return "mid_block.attentions.0." + _rename(rest, _UNET_ATTN, 0, what, key)
    elif m := re.fullmatch(r"output_blocks\.(\d+)\.(\d+)\.(.+)", key):
        n, j, rest = int(m[1]), int(m[2]), m[3]
        up, i = divmod(n, num_res_blocks + 1)
        level = num_levels - 1 - up
        has_attn = level in attn
        if level >= 0:
            if j == 0:
                return f"up_blocks.{up}.resnets.{i}." + _rename(rest, _UNET_RES, 0, what, key)
            if j == 1 and has_attn:
                return f"up_blocks.{up}.attentions.{i}." + _rename(rest, _UNET_ATTN, 0, what, key)
            if j == 1 + has_attn and i == num_res_blocks and level != 0 and rest.startswith("conv."):
                return f"up_blocks.{up}.upsamplers.0.{rest}"
    raise _unknown(key, what)


def unet_diffusers_to_sgm(
    key: str, num_levels: int = 4, num_res_blocks: int = 2, attention_levels: tuple[int, ...] | None = None
) -> str:
    """diffusers UNetSpatioTemporalConditionModel key -> sgm VideoUNet key (no `model.diffusion_model.`)."""
    what = "unet_diffusers_to_sgm"
    attn = _attn_levels(num_levels, attention_levels)
    for a, b in _UNET_FIXED:
        if key.startswith(b + "."):
            return a + key[len(b):]
    inverse = {v: n for n, v in _unet_input_table(num_levels, num_res_blocks).items()}
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.+)", key):
        level, kind, i, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "downsamplers" and i == 0 and rest.startswith("conv.") and (level, None) in inverse:
            return f"input_blocks.{inverse[(level, None)]}.0.op.{rest[5:]}"
        if kind == "resnets" and (level, i) in inverse:
            return f"input_blocks.{inverse[(level, i)]}.0." + _rename(rest, _UNET_RES, 1, what, key)
        if kind == "attentions" and (level, i) in inverse and level in attn:
            return f"input_blocks.{inverse[(level, i)]}.1." + _rename(rest, _UNET_ATTN, 1, what, key)
    elif m := re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d)\.(.+)", key):
        kind, k, rest = m[1], int(m[2]), m[3]
        if kind == "resnets" and k in (0, 1):
            return f"middle_block.{2 * k}." + _rename(rest, _UNET_RES, 1, what, key)
        if kind == "attentions" and k == 0:
            return "middle_block.1." + _rename(rest, _UNET_ATTN, 1, what, key)
    elif m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.+)", key):
        up, kind, i, rest = int(m[1]), m[2], int(m[3]), m[4]
        level = num_levels - 1 - up
        has_attn = level in attn
        if 0 <= level and (i <= num_res_blocks or kind == "upsamplers"):
            base = up * (num_res_blocks + 1)
            if kind == "resnets":
                return f"output_blocks.{base + i}.0." + _rename(rest, _UNET_RES, 1, what, key)
            if kind == "attentions" and has_attn:
                return f"output_blocks.{base + i}.1." + _rename(rest, _UNET_ATTN, 1, what, key)
            if kind == "upsamplers" and i == 0 and level != 0 and rest.startswith("conv."):
                return f"output_blocks.{base + num_res_blocks}.{1 + has_attn}.{rest}"
    raise _unknown(key, what)


# The image UNet (SD 2.x, reference `openaimodel.UNetModel`) is the video UNet without these parts (paper Sec. 3):
# the same keys otherwise, so its rules are the video rules with diffusers' 2-D `ResnetBlock2D` in place of the
# spatio-temporal block's `spatial_res_block`.
VIDEO_ONLY_PARTS = ("time_stack", "time_mixer", "time_pos_embed", "label_emb")


def is_video_only(key: str) -> bool:
    """True for a video-UNet key (no `model.diffusion_model.`) that an image UNet does not have."""
    return any(part in VIDEO_ONLY_PARTS for part in key.split("."))


def unet_image_sgm_to_diffusers(
    key: str, num_levels: int = 4, num_res_blocks: int = 2, attention_levels: tuple[int, ...] | None = None
) -> str:
    """SD 2.x image UNet key (no `model.diffusion_model.`) -> diffusers `UNet2DConditionModel` key."""
    if is_video_only(key):
        raise KeyError(f"unet_image_sgm_to_diffusers: {key!r} is a video-UNet key; an image UNet has no "
                       f"{VIDEO_ONLY_PARTS}")
    return unet_sgm_to_diffusers(key, num_levels, num_res_blocks, attention_levels).replace(
        ".spatial_res_block.", ".")


def unet_image_diffusers_to_sgm(
    key: str, num_levels: int = 4, num_res_blocks: int = 2, attention_levels: tuple[int, ...] | None = None
) -> str:
    """diffusers `UNet2DConditionModel` key -> SD 2.x image UNet key (inverse of `unet_image_sgm_to_diffusers`)."""
    video_key = re.sub(r"^((?:down_blocks|up_blocks)\.\d+\.resnets\.\d+\.|mid_block\.resnets\.\d+\.)",
                       r"\1spatial_res_block.", key)
    out = unet_diffusers_to_sgm(video_key, num_levels, num_res_blocks, attention_levels)
    if is_video_only(out):
        raise KeyError(f"unet_image_diffusers_to_sgm: {key!r} is not a UNet2DConditionModel key of an SD 2.x UNet")
    return out


# ----------------------------------------------------------------------------------------------- VAE

_VAE_RES = (("nin_shortcut", "conv_shortcut"), ("norm1", "norm1"), ("conv1", "conv1"), ("norm2", "norm2"), ("conv2", "conv2"))
_VAE_VIDEO_RES = (
    ("mix_factor", "time_mixer.mix_factor"),
    ("time_stack.in_layers.0", "temporal_res_block.norm1"),
    ("time_stack.in_layers.2", "temporal_res_block.conv1"),
    ("time_stack.out_layers.0", "temporal_res_block.norm2"),
    ("time_stack.out_layers.3", "temporal_res_block.conv2"),
) + tuple((a, f"spatial_res_block.{b}") for a, b in _VAE_RES)
_VAE_ATTN = (("norm", "group_norm"), ("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0"))
_VAE_SQUEEZE = re.compile(r"(en|de)coder\.mid\.attn_1\.(q|k|v|proj_out)\.weight")


def vae_sgm_to_diffusers(
    key: str, num_levels: int = 4, num_res_blocks: int = 2, temporal: bool = True
) -> tuple[str, bool]:
    """sgm first-stage key (no `first_stage_model.`) -> (diffusers key, squeeze_1x1_conv_to_linear)."""
    what = "vae_sgm_to_diffusers"
    squeeze = _VAE_SQUEEZE.fullmatch(key) is not None
    if key.split(".")[0] in ("quant_conv", "post_quant_conv") and not temporal:
        return key, False
    m = re.fullmatch(r"(encoder|decoder)\.(.+)", key)
    if m is None:
        raise _unknown(key, what)
    side, rest = m[1], m[2]
    dec_res = _VAE_VIDEO_RES if (side == "decoder" and temporal) else _VAE_RES
    if rest.startswith("conv_in.") or (rest.startswith("conv_out.") and "time_mix_conv" not in rest):
        return key, False
    if rest.startswith("conv_out.time_mix_conv.") and side == "decoder" and temporal:
        return "decoder.time_conv_out." + rest[len("conv_out.time_mix_conv."):], False
    if rest.startswith("norm_out."):
        return f"{side}.conv_norm_out." + rest[len("norm_out."):], False
    if mm := re.fullmatch(r"mid\.block_([12])\.(.+)", rest):
        return f"{side}.mid_block.resnets.{int(mm[1]) - 1}." + _rename(mm[2], dec_res, 0, what, key), False
    if mm := re.fullmatch(r"mid\.attn_1\.(.+)", rest):
        return f"{side}.mid_block.attentions.0." + _rename(mm[1], _VAE_ATTN, 0, what, key), squeeze
    if side == "encoder" and (mm := re.fullmatch(r"down\.(\d+)\.(block\.(\d+)|downsample)\.(.+)", rest)):
        level = int(mm[1])
        if level < num_levels:
            if mm[3] is not None and int(mm[3]) < num_res_blocks:
                return f"encoder.down_blocks.{level}.resnets.{mm[3]}." + _rename(mm[4], _VAE_RES, 0, what, key), False
            if mm[2] == "downsample" and level != num_levels - 1 and mm[4].startswith("conv."):
                return f"encoder.down_blocks.{level}.downsamplers.0.{mm[4]}", False
    if side == "decoder" and (mm := re.fullmatch(r"up\.(\d+)\.(block\.(\d+)|upsample)\.(.+)", rest)):
        level = int(mm[1])
        up = num_levels - 1 - level
        if up >= 0:
            if mm[3] is not None and int(mm[3]) <= num_res_blocks:
                return f"decoder.up_blocks.{up}.resnets.{mm[3]}." + _rename(mm[4], dec_res, 0, what, key), False
            if mm[2] == "upsample" and level != 0 and mm[4].startswith("conv."):
                return f"decoder.up_blocks.{up}.upsamplers.0.{mm[4]}", False
    raise _unknown(key, what)


def vae_diffusers_to_sgm(
    key: str, num_levels: int = 4, num_res_blocks: int = 2, temporal: bool = True
) -> tuple[str, bool]:
    """diffusers VAE key -> (sgm first-stage key, unsqueeze_linear_to_1x1_conv).

    diffusers' `quant_conv` of the temporal layout has no sgm key (see `state_dict_diffusers_to_sgm`): KeyError.
    """
    what = "vae_diffusers_to_sgm"
    if key.split(".")[0] in ("quant_conv", "post_quant_conv") and not temporal:
        return key, False
    m = re.fullmatch(r"(encoder|decoder)\.(.+)", key)
    if m is None:
        raise KeyError(
            f"{what}: no rule for key {key!r}"
            + (" (the sgm video first stage has no quant_conv: use state_dict_diffusers_to_sgm, which folds it "
               "into encoder.conv_out)" if key.startswith("quant_conv.") else "")
        )
    side, rest = m[1], m[2]
    dec_res = _VAE_VIDEO_RES if (side == "decoder" and temporal) else _VAE_RES
    if rest.startswith("conv_in.") or rest.startswith("conv_out."):
        return key, False
    if rest.startswith("time_conv_out.") and side == "decoder" and temporal:
        return "decoder.conv_out.time_mix_conv." + rest[len("time_conv_out."):], False
    if rest.startswith("conv_norm_out."):
        return f"{side}.norm_out." + rest[len("conv_norm_out."):], False
    if mm := re.fullmatch(r"mid_block\.resnets\.([01])\.(.+)", rest):
        return f"{side}.mid.block_{int(mm[1]) + 1}." + _rename(mm[2], dec_res, 1, what, key), False
    if mm := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", rest):
        sgm_key = f"{side}.mid.attn_1." + _rename(mm[1], _VAE_ATTN, 1, what, key)
        return sgm_key, _VAE_SQUEEZE.fullmatch(sgm_key) is not None
    if side == "encoder" and (mm := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|downsamplers)\.(\d+)\.(.+)", rest)):
        level, kind, i, tail = int(mm[1]), mm[2], int(mm[3]), mm[4]
        if level < num_levels:
            if kind == "resnets" and i < num_res_blocks:
                return f"encoder.down.{level}.block.{i}." + _rename(tail, _VAE_RES, 1, what, key), False
            if kind == "downsamplers" and i == 0 and level != num_levels - 1 and tail.startswith("conv."):
                return f"encoder.down.{level}.downsample.{tail}", False
    if side == "decoder" and (mm := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)\.(.+)", rest)):
        up, kind, i, tail = int(mm[1]), mm[2], int(mm[3]), mm[4]
        level = num_levels - 1 - up
        if level >= 0:
            if kind == "resnets" and i <= num_res_blocks:
                return f"decoder.up.{level}.block.{i}." + _rename(tail, dec_res, 1, what, key), False
            if kind == "upsamplers" and i == 0 and level != 0 and tail.startswith("conv."):
                return f"decoder.up.{level}.upsample.{tail}", False
    raise _unknown(key, what)


# ----------------------------------------------------------------------------------------------- state dicts


def _check_kind(kind: str) -> None:
    if kind not in ("unet", "vae"):
        raise ValueError(f"kind must be 'unet' or 'vae', got {kind!r}")


def state_dict_sgm_to_diffusers(sd: Mapping[str, torch.Tensor], kind: str, **layout) -> dict[str, torch.Tensor]:
    """Rename an sgm UNet or VAE state dict (prefix stripped) to diffusers; 1x1-conv attention weights become linear.

    `layout`: num_levels, num_res_blocks (+ attention_levels for the UNet, temporal for the VAE); see
    `unet_layout` / `vae_layout`. For the temporal VAE with an encoder, an identity `quant_conv` is added.
    """
    _check_kind(kind)
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if kind == "unet":
            out[unet_sgm_to_diffusers(key, **layout)] = value
            continue
        new_key, squeeze = vae_sgm_to_diffusers(key, **layout)
        if squeeze:
            value = value[:, :, 0, 0]  # o i 1 1 -> o i
        out[new_key] = value
    if kind == "vae" and layout.get("temporal", True) and "encoder.conv_out.weight" in sd:
        w = sd["encoder.conv_out.weight"]
        moments = w.shape[0]
        eye = torch.eye(moments, dtype=w.dtype, device=w.device)
        out["quant_conv.weight"] = eye[:, :, None, None]  # o i -> o i 1 1 identity
        out["quant_conv.bias"] = torch.zeros(moments, dtype=w.dtype, device=w.device)
    return out


def state_dict_diffusers_to_sgm(sd: Mapping[str, torch.Tensor], kind: str, **layout) -> dict[str, torch.Tensor]:
    """Inverse of `state_dict_sgm_to_diffusers`; a temporal VAE's `quant_conv` is folded into `encoder.conv_out`."""
    _check_kind(kind)
    out: dict[str, torch.Tensor] = {}
    temporal_vae = kind == "vae" and layout.get("temporal", True)
    for key, value in sd.items():
        if kind == "unet":
            out[unet_diffusers_to_sgm(key, **layout)] = value
            continue
        if temporal_vae and key in ("quant_conv.weight", "quant_conv.bias"):
            continue
        new_key, unsqueeze = vae_diffusers_to_sgm(key, **layout)
        if unsqueeze:
            value = value[:, :, None, None]  # o i -> o i 1 1
        out[new_key] = value
    if temporal_vae and "quant_conv.weight" in sd:
        _fold_quant_conv(out, sd["quant_conv.weight"], sd.get("quant_conv.bias"))
    return out


def _fold_quant_conv(out: dict[str, torch.Tensor], weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Fold a 1x1 conv applied after encoder.conv_out into it: W' = Q W, b' = Q b + q (exact, both linear)."""
    if "encoder.conv_out.weight" not in out:
        raise KeyError("quant_conv given without encoder.conv_out: cannot fold it into the sgm encoder")
    q = weight.reshape(weight.shape[0], weight.shape[1])  # o i 1 1 -> o i
    qb = torch.zeros(q.shape[0], dtype=q.dtype, device=q.device) if bias is None else bias
    if torch.equal(q, torch.eye(q.shape[0], dtype=q.dtype, device=q.device)) and not qb.any():
        return  # identity: nothing to fold (keeps round trips bit-exact)
    w, b = out["encoder.conv_out.weight"], out["encoder.conv_out.bias"]
    q64 = q.double()
    out["encoder.conv_out.weight"] = torch.einsum("om,mikl->oikl", q64, w.double()).to(w.dtype)
    out["encoder.conv_out.bias"] = (q64 @ b.double() + qb.double()).to(b.dtype)
