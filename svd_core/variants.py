"""Model variants as data: frozen specs derived from each other (paper Sec. 4, reference `configs/*.yaml`)."""
from __future__ import annotations

import difflib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .config_check import short_repr

# Per-frame vector conditioning: (input name, sinusoidal embedding width). The UNet's adm width is the sum.
SVD_VECTOR = (("fps_id", 256), ("motion_bucket_id", 256), ("cond_aug", 256))
SV3D_U_VECTOR = (("cond_aug", 256),)
SV3D_P_VECTOR = (("cond_aug", 256), ("polars_rad", 512), ("azimuths_rad", 512))


@dataclass(frozen=True)
class UNetSpec:
    """VideoUNet hyper-parameters (reference `VideoUNet`, paper App. D.1)."""

    in_channels: int = 8
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (4, 2, 1)
    num_head_channels: int = 64
    transformer_depth: int = 1
    context_dim: int = 1024
    adm_in_channels: int = 768
    video_kernel_size: tuple[int, int, int] = (3, 1, 1)
    norm_groups: int = 32


@dataclass(frozen=True)
class VAESpec:
    """KL autoencoder: encoder, temporal `VideoDecoder` or per-frame image decoder (reference `model.py`)."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    in_channels: int = 3
    out_channels: int = 3
    norm_groups: int = 32
    # "temporal": VideoDecoder with time_stack/mix_factor/time_mix_conv; "image": plain per-frame Decoder.
    decoder: str = "temporal"
    # first_stage_model has an encoder (SVD) or is decoder-only (SV3D: encoder is nn.Identity in the reference).
    first_stage_encoder: bool = True
    # first_stage_model has quant_conv / post_quant_conv (AutoencoderKL legacy layout: svd_image_decoder).
    first_stage_quant: bool = False
    video_kernel_size: tuple[int, int, int] = (3, 1, 1)


@dataclass(frozen=True)
class CLIPSpec:
    """open_clip image tower (ViT-H-14 for every released variant) plus the text-tower leftovers kept in files."""

    embed_dim: int = 1024
    image_size: int = 224
    patch_size: int = 14
    width: int = 1280
    layers: int = 32
    head_width: int = 80
    mlp_ratio: float = 4.0
    # leftovers of the deleted text tower that the released files still carry
    text_context_length: int = 77
    text_vocab_size: int = 49408
    text_width: int = 1024
    # text transformer depth and heads (open_clip ViT-H-14 text tower = SD 2.1's); used only by cond_mode "text"
    text_layers: int = 24
    text_heads: int = 16


@dataclass(frozen=True)
class ModelSpec:
    """One SVD-family model: architecture plus the reference's sampling defaults."""

    name: str = "svd"
    unet: UNetSpec = field(default_factory=UNetSpec)
    vae: VAESpec = field(default_factory=VAESpec)
    clip: CLIPSpec = field(default_factory=CLIPSpec)
    vector_inputs: tuple[tuple[str, int], ...] = SVD_VECTOR
    # index N of the conditioner's VAE-encoder copy (`conditioner.embedders.N.encoder.`)
    cond_encoder_index: int = 3
    scale_factor: float = 0.18215
    # sampling defaults (reference scripts/sampling/simple_video_sample.py and configs)
    num_frames: int = 14
    height: int = 576
    width: int = 1024
    # reference simple_video_sample.py: num_steps 25 (svd, svd_image_decoder), 30 (svd_xt*, svd_xt_image_decoder),
    # 50 (sv3d_u, sv3d_p); seed 23 for every version (torch.manual_seed(seed) before the conditioning noise)
    steps: int = 25
    seed: int = 23
    sigma_min: float = 0.002
    sigma_max: float = 700.0
    guider: str = "linear"  # a svd_core.guidance.KINDS name
    min_cfg: float = 1.0
    max_cfg: float = 2.5
    fps: int = 7  # frames per second; embedded as fps_id = fps - 1 (reference default fps_id 6)
    motion_bucket_id: int = 127
    cond_aug: float = 0.02
    decode_t: int = 14
    # True where a custom (non-released) spec must travel in the file's metadata to be reloaded.
    custom: bool = False
    # How the conditioner is built (every released variant: "image"):
    #   "image": CLIP image token + VAE latent of the conditioning frame copied over time (SVD, SV3D, SVD-MV);
    #   "interpolation": 2 CLIP tokens (first, last frame) + latent sequence with a learned mask embedding for the
    #       middle frames + binary mask channel (paper App. D.5; unet.in_channels = 4 + 4 + 1 = 9);
    #   "text": open_clip text tower tokens as cross-attention context, no concat (paper Sec. 4.2, unet.in_channels 4).
    cond_mode: str = "image"
    # Stage I (paper Sec. 4.1, App. D.2; svd_core.stage1): the prediction type of the image model the video model
    # was built from ("eps": SD 2.1 512-base, "v": SD 2.1 768-v), "" for every other model. The video model itself
    # always uses the EDM v-preconditioning (svd_core.denoiser); this records what the spatial weights learned.
    source_prediction: str = ""

    @property
    def adm_in_channels(self) -> int:
        return sum(d for _, d in self.vector_inputs)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        return spec_from_dict(json.loads(text))


# Types and ranges of every spec field a file's metadata may carry (untrusted input): generous around the released
# sizes (paper App. D.1, ViT-H-14), small enough that a meta-device build of the largest allowed spec stays under a
# second. (kind, ...): ("int", lo, hi), ("float", lo, hi), ("ints", lo, hi, min_len, max_len), ("bool",),
# ("choice", options), ("name",), ("vector",).
_SIZE, _WIDTH = ("int", 1, 64), ("int", 1, 8192)
_MULT, _KERNEL = ("ints", 1, 16, 1, 8), ("ints", 1, 15, 3, 3)
SPEC_LIMITS: dict[str, tuple] = {
    "unet.in_channels": _SIZE, "unet.out_channels": _SIZE, "unet.model_channels": ("int", 1, 4096),
    "unet.channel_mult": _MULT, "unet.num_res_blocks": ("int", 1, 8),
    "unet.attention_resolutions": ("ints", 1, 128, 0, 8), "unet.num_head_channels": ("int", 1, 1024),
    "unet.transformer_depth": ("int", 1, 8), "unet.context_dim": _WIDTH, "unet.adm_in_channels": ("int", 1, 16384),
    "unet.video_kernel_size": _KERNEL, "unet.norm_groups": ("int", 1, 256),
    "vae.ch": ("int", 1, 1024), "vae.ch_mult": _MULT, "vae.num_res_blocks": ("int", 1, 8), "vae.z_channels": _SIZE,
    "vae.in_channels": ("int", 1, 16), "vae.out_channels": ("int", 1, 16), "vae.norm_groups": ("int", 1, 256),
    "vae.decoder": ("choice", ("temporal", "image")), "vae.first_stage_encoder": ("bool",),
    "vae.first_stage_quant": ("bool",), "vae.video_kernel_size": _KERNEL,
    "clip.embed_dim": _WIDTH, "clip.image_size": ("int", 1, 4096), "clip.patch_size": ("int", 1, 1024),
    "clip.width": _WIDTH, "clip.layers": ("int", 1, 128), "clip.head_width": ("int", 1, 1024),
    "clip.mlp_ratio": ("float", 0.1, 16.0), "clip.text_context_length": ("int", 1, 4096),
    "clip.text_vocab_size": ("int", 1, 1_000_000), "clip.text_width": _WIDTH, "clip.text_layers": ("int", 1, 128),
    "clip.text_heads": ("int", 1, 256),
    "name": ("name",), "vector_inputs": ("vector",), "cond_encoder_index": ("int", -1, 16),
    "scale_factor": ("float", 1e-6, 100.0), "num_frames": ("int", 1, 1024), "height": ("int", 8, 16384),
    "width": ("int", 8, 16384), "steps": ("int", 1, 1000), "sigma_min": ("float", 1e-9, 1e4),
    "sigma_max": ("float", 1e-9, 1e6),
    "guider": ("choice", ("linear", "triangle", "vanilla", "trapezoid", "ramp_hold")),
    "min_cfg": ("float", 0.0, 100.0), "max_cfg": ("float", 0.0, 100.0), "fps": ("int", 1, 1000),
    "motion_bucket_id": ("int", 0, 1023), "cond_aug": ("float", 0.0, 100.0), "decode_t": ("int", 1, 1024),
    "custom": ("bool",), "cond_mode": ("choice", ("image", "interpolation", "text")),
    "seed": ("int", 0, 2 ** 64 - 1), "source_prediction": ("choice", ("", "eps", "v")),
}
_SUBSPECS = {"unet": UNetSpec, "vae": VAESpec, "clip": CLIPSpec}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_field(path: str, value: Any) -> Any:
    """One spec field from JSON, type- and range-checked (lists become tuples); ValueError names field and range."""
    kind, *args = SPEC_LIMITS[path]
    shown = short_repr(value)

    def fail(expected: str):
        raise ValueError(f"model spec field {path}={shown}: expected {expected}")

    if kind == "int":
        if not (_is_int(value) and args[0] <= value <= args[1]):
            fail(f"an integer in [{args[0]}, {args[1]}]")
    elif kind == "float":
        if not ((_is_int(value) or isinstance(value, float)) and args[0] <= value <= args[1]):
            fail(f"a number in [{args[0]:g}, {args[1]:g}]")
        value = float(value)
    elif kind == "ints":
        lo, hi, n_min, n_max = args
        if not (isinstance(value, list) and n_min <= len(value) <= n_max
                and all(_is_int(v) and lo <= v <= hi for v in value)):
            fail(f"a list of {n_min}-{n_max} integers in [{lo}, {hi}]")
        value = tuple(value)
    elif kind == "bool":
        if not isinstance(value, bool):
            fail("true or false")
    elif kind == "choice":
        if value not in args[0]:
            fail(f"one of {', '.join(args[0])}")
    elif kind == "name":
        if not (isinstance(value, str) and 1 <= len(value) <= 100 and value.isprintable()):
            fail("a printable name of 1-100 characters")
    elif kind == "vector":
        if not (isinstance(value, list) and 1 <= len(value) <= 16 and all(
                isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and 1 <= len(v[0]) <= 64
                and _is_int(v[1]) and 1 <= v[1] <= 4096 for v in value)):
            fail("a list of 1-16 [input name, embedding width in [1, 4096]] pairs")
        value = tuple((name, dim) for name, dim in value)
    return value


def _coerce(dc_type: type, data: Any, prefix: str = ""):
    """Build a (nested) frozen dataclass from JSON: every field type- and range-checked (`SPEC_LIMITS`), unknown
    fields named with the closest known one."""
    where = prefix.rstrip(".") or "the model spec"
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a JSON object, not {type(data).__name__}")
    kwargs = {}
    known = [f.name for f in fields(dc_type)]
    for key, value in data.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known fields: {', '.join(known)}"
            raise ValueError(f"unknown field {prefix}{key} in the model spec metadata{hint}")
        sub = _SUBSPECS.get(key) if dc_type is ModelSpec else None
        kwargs[key] = _coerce(sub, value, f"{key}.") if sub is not None else _check_field(prefix + key, value)
    return dc_type(**kwargs)


def spec_from_dict(data: dict[str, Any]) -> ModelSpec:
    return _coerce(ModelSpec, data)


SVD = ModelSpec()
SVD_XT = replace(SVD, name="svd_xt", num_frames=25, steps=30, min_cfg=1.5, max_cfg=3.0)
SVD_IMAGE_DECODER = replace(SVD, name="svd_image_decoder", vae=replace(SVD.vae, decoder="image", first_stage_quant=True))
# reference configs/svd_xt_image_decoder.yaml: the image-decoder layout with SVD-XT's frames, steps and guidance
SVD_XT_IMAGE_DECODER = replace(SVD_IMAGE_DECODER, name="svd_xt_image_decoder", num_frames=25, steps=30, min_cfg=1.5,
                               max_cfg=3.0)
SV3D_U = replace(
    SVD,
    name="sv3d_u",
    unet=replace(SVD.unet, adm_in_channels=256),
    vae=replace(SVD.vae, decoder="image", first_stage_encoder=False),
    vector_inputs=SV3D_U_VECTOR,
    cond_encoder_index=1,
    num_frames=21,
    height=576,
    width=576,
    steps=50,
    guider="triangle",
    min_cfg=1.0,
    max_cfg=2.5,
    cond_aug=1e-5,
)
SV3D_P = replace(SV3D_U, name="sv3d_p", unet=replace(SVD.unet, adm_in_channels=1280), vector_inputs=SV3D_P_VECTOR)

# A tiny model that keeps every structural feature of the real one (used by tests, demos and benchmarks).
TINY = replace(
    SVD,
    name="tiny",
    unet=replace(SVD.unet, model_channels=32, num_head_channels=32, context_dim=64),
    vae=replace(SVD.vae, ch=32, norm_groups=32),
    clip=CLIPSpec(embed_dim=64, image_size=56, patch_size=14, width=64, layers=2, head_width=32,
                  text_context_length=8, text_vocab_size=16, text_width=64),
    num_frames=4,
    height=128,
    width=128,
    steps=4,
    decode_t=4,
    custom=True,
)

# ---- the paper's other generators (no released weights: trainable architectures, spec travels in metadata) ----
# Frame interpolation (App. D.5): SVD's architecture, 5 frames, first + last frame given; input channels
# noise 4 + latent sequence 4 + binary mask 1 = 9; context = CLIP tokens of the first and last frame (2 tokens).
# Same vector conditioning as SVD (fps of the interpolated video = 4x the input's, motion bucket, cond_aug); mask
# embedding c x (height/8) x (width/8); trains from the base text-to-video model or SVD (`interpolation.init_from`).
SVD_INTERP = replace(SVD, name="svd_interp", unet=replace(SVD.unet, in_channels=9), cond_mode="interpolation",
                     num_frames=5, fps=28, guider="vanilla", min_cfg=1.5, max_cfg=1.5, decode_t=5, custom=True)
# SVD-MV (paper Sec. 4.5): SVD finetuned on 21-view orbits at 576x576, the camera elevation (degrees) fed through a
# 256-d sinusoidal embedding concatenated to the vector condition (adm 768 + 256 = 1024).
SVD_MV_VECTOR = SVD_VECTOR + (("elevation_deg", 256),)
SVD_MV = replace(SVD, name="svd_mv", unet=replace(SVD.unet, adm_in_channels=1024), vector_inputs=SVD_MV_VECTOR,
                 num_frames=21, height=576, width=576, guider="triangle", min_cfg=1.0, max_cfg=2.5, custom=True)
# Text-to-video base model (paper Sec. 4.2, App. E.5.4): open_clip ViT-H-14 text tower (SD 2.1's, penultimate
# layer tokens, 1024-d cross-attention), fps and motion micro-conditioning (adm 2 x 256), no concat input; the
# "motion_score" input is in motion-bucket units (0-255, default 127) at training and generation alike.
T2V_VECTOR = (("fps_id", 256), ("motion_score", 256))
TEXT2VIDEO = replace(SVD, name="t2v", unet=replace(SVD.unet, in_channels=4, adm_in_channels=512),
                     vector_inputs=T2V_VECTOR, cond_mode="text", cond_encoder_index=-1, num_frames=14, height=320,
                     width=576, guider="vanilla", min_cfg=7.5, max_cfg=7.5, cond_aug=0.0, custom=True)
GENERATORS = ("svd_interp", "svd_mv", "t2v")

VARIANTS: dict[str, ModelSpec] = {s.name: s for s in (SVD, SVD_XT, SVD_IMAGE_DECODER, SVD_XT_IMAGE_DECODER, SV3D_U,
                                                      SV3D_P, TINY, SVD_INTERP, SVD_MV, TEXT2VIDEO)}
# svd_xt_1_1 has the svd_xt layout and defaults
VARIANTS["svd_xt_1_1"] = replace(SVD_XT, name="svd_xt_1_1")
RELEASED = ("svd", "svd_xt", "svd_xt_1_1", "svd_image_decoder", "svd_xt_image_decoder", "sv3d_u",
            "sv3d_p")


def get_variant(name_or_spec: "str | ModelSpec") -> ModelSpec:
    if isinstance(name_or_spec, ModelSpec):
        return name_or_spec
    try:
        return VARIANTS[name_or_spec]
    except KeyError:
        raise ValueError(f"unknown variant {name_or_spec!r}; expected one of {sorted(VARIANTS)} or a ModelSpec") from None
