"""Conditioning embedders (paper Sec. 4.3, App. D.2): CLIP image embedding, concat-frame VAE encoder, and the
sinusoidal micro-conditioning vector (fps, motion bucket, cond_aug; SV3D polar / azimuth).

Micro-conditioning has one owner here: `Conditioner.micro_vector` embeds the user-facing values (`MICRO_VALUES`:
fps, motion bucket, cond_aug, camera elevation and azimuth in degrees) as the variant's vector inputs name them
(`MICRO_INPUTS`); every generation path and the trainer call it, so no other module converts fps to fps_id."""
from __future__ import annotations

from typing import Callable

import kornia
import torch
from einops import rearrange
from open_clip.model import CLIPVisionCfg, _build_vision_tower
from torch import nn

from .layers import timestep_embedding
from .ops import resolve
from .vae import CondEncoder
from .variants import CLIPSpec, ModelSpec

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_preprocess(image: torch.Tensor, size: int) -> torch.Tensor:
    """[-1, 1] images -> CLIP input: antialiased bicubic resize to size x size, then CLIP mean/std (reference)."""
    x = kornia.geometry.resize(image, (size, size), interpolation="bicubic", align_corners=True, antialias=True)
    x = (x + 1.0) / 2.0
    return kornia.enhance.normalize(x, torch.tensor(CLIP_MEAN, device=x.device), torch.tensor(CLIP_STD, device=x.device))


class OpenCLIPModel(nn.Module):
    """open_clip CLIP with the text transformer deleted, as the released files keep it (`visual` + leftovers).

    The vision tower is open_clip's own (`_build_vision_tower` takes no operations: a host keeps it whole on its
    device, 1.2 GiB at fp16); the leftovers built here take `operations`."""

    def __init__(self, spec: CLIPSpec, operations=None):
        super().__init__()
        ops = resolve(operations)
        self.visual = _build_vision_tower(spec.embed_dim, CLIPVisionCfg(
            image_size=spec.image_size, layers=spec.layers, width=spec.width, head_width=spec.head_width,
            patch_size=spec.patch_size, mlp_ratio=spec.mlp_ratio))
        # text-tower leftovers: never used for image conditioning, kept so files round-trip key for key
        self.token_embedding = ops.Embedding(spec.text_vocab_size, spec.text_width)
        self.positional_embedding = nn.Parameter(torch.empty(spec.text_context_length, spec.text_width))
        self.ln_final = ops.LayerNorm(spec.text_width)
        self.text_projection = nn.Parameter(torch.empty(spec.text_width, spec.embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]))


class OpenCLIPImageEmbedder(nn.Module):
    """`FrozenOpenCLIPImagePredictionEmbedder`: image in [-1, 1] -> pooled, projected CLIP embedding (b 1 d)."""

    TEXT_LEFTOVERS = ("token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias",
                      "text_projection", "logit_scale")

    def __init__(self, spec: CLIPSpec, operations=None):
        super().__init__()
        self.open_clip = nn.Module()
        self.open_clip.model = OpenCLIPModel(spec, operations)
        self.image_size = spec.image_size

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image: b 3 h w in [-1, 1] -> b 1 d (one cross-attention token)."""
        visual = self.open_clip.model.visual
        x = clip_preprocess(image.float(), self.image_size).to(visual.conv1.weight.dtype)
        return visual(x)[:, None, :]  # b d -> b 1 d


# ---------------------------------------------------------------------------------------- micro-conditioning

# The values a user (a node, the CLI, a training clip) gives, in their own units: frames per second, motion bucket
# (0-255), conditioning-frame noise level, camera elevation and azimuth in degrees.
MICRO_VALUES = ("fps", "motion_bucket_id", "cond_aug", "elevation", "azimuth")


def _fps_id(fps: torch.Tensor) -> torch.Tensor:
    """fps_id = fps - 1: reference `scripts/sampling/simple_video_sample.py` embeds `fps_id` (default 6) and writes
    the video at fps_id + 1 = 7 fps; diffusers' SVD pipeline embeds fps - 1 too."""
    return fps - 1.0


def _polar_rad(elevation: torch.Tensor) -> torch.Tensor:
    """SV3D_p polar angle = 90 - elevation, in radians (reference `simple_video_sample.py`, sv3d_p branch)."""
    return torch.deg2rad(90.0 - elevation)


def _relative_azimuth_rad(azimuth: torch.Tensor) -> torch.Tensor:
    """SV3D_p azimuth relative to each video's last view (the input image's camera), in [0, 360) degrees, radians:
    b t -> b t (Python's `%`: fmod, then + 360 where negative)."""
    rel = torch.fmod(azimuth - azimuth[:, -1:], 360.0)
    return torch.deg2rad(torch.where(rel < 0, rel + 360.0, rel))


def _same(value: torch.Tensor) -> torch.Tensor:
    return value


# Each vector input a spec may name -> (the user-facing value it embeds, how; b t -> b t in float64).
# t2v's `motion_score` is in motion-bucket units, as SVD's motion_bucket_id (svd_core.text2video).
MICRO_INPUTS: dict[str, tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = {
    "fps_id": ("fps", _fps_id),
    "motion_bucket_id": ("motion_bucket_id", _same),
    "motion_score": ("motion_bucket_id", _same),
    "cond_aug": ("cond_aug", _same),
    "elevation_deg": ("elevation", _same),
    "polars_rad": ("elevation", _polar_rad),
    "azimuths_rad": ("azimuth", _relative_azimuth_rad),
}


def micro_values(spec: ModelSpec) -> tuple[str, ...]:
    """The user-facing values a variant embeds, in embedder order: SVD fps, motion_bucket_id, cond_aug; SV3D_u
    cond_aug; SV3D_p cond_aug, elevation, azimuth; SVD-MV SVD's + elevation; t2v fps, motion_bucket_id."""
    return tuple(dict.fromkeys(MICRO_INPUTS[k][0] for k, _ in spec.vector_inputs if k in MICRO_INPUTS))


def per_frame(values: "torch.Tensor | float | list", batch: int, num_frames: int, name: str,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A scalar, a per-video (b) or a per-frame (t) / (b t) list -> one value per frame, shape (b t)."""
    v = torch.as_tensor(values, dtype=dtype).flatten()
    if v.numel() == 1:
        return v.repeat(batch * num_frames)
    if v.numel() == batch:
        return v.repeat_interleave(num_frames)
    if v.numel() == num_frames:
        return v.repeat(batch)
    if v.numel() == batch * num_frames:
        return v
    raise ValueError(f"{name} has {v.numel()} values; expected 1, one per video ({batch}) or one per frame "
                     f"({num_frames})")


def micro_inputs(keys: "tuple[str, ...]", batch: int, num_frames: int,
                 values: "dict[str, torch.Tensor | float | list | None]") -> dict[str, torch.Tensor]:
    """User-facing values (`MICRO_VALUES`; None = not given; values the keys do not embed are ignored) -> the
    embedder inputs `keys` name, one float32 per frame (b t). Converted in float64, rounded once."""
    unknown = sorted(set(values) - set(MICRO_VALUES))
    if unknown:
        raise ValueError(f"unknown micro-conditioning value(s) {unknown}; expected some of {list(MICRO_VALUES)}")
    out = {}
    for key in keys:
        if key not in MICRO_INPUTS:
            raise ValueError(f"vector input {key!r} has no user-facing value; known inputs: {sorted(MICRO_INPUTS)}")
        name, convert = MICRO_INPUTS[key]
        if values.get(name) is None:
            raise ValueError(f"no {name} given: this model embeds it (vector input {key!r}; the model's inputs are "
                             f"{list(keys)})")
        frames = per_frame(values[name], batch, num_frames, name, torch.float64).view(batch, num_frames)
        out[key] = convert(frames).flatten().float()  # b t -> (b t)
    return out


class VectorEmbedder(nn.Module):
    """`ConcatTimestepEmbedderND`: each scalar -> `outdim`-wide sinusoidal embedding; no weights."""

    def __init__(self, key: str, outdim: int):
        super().__init__()
        self.key, self.outdim = key, outdim

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """values: n (one per frame) or n d -> n (d outdim)."""
        values = values.reshape(values.shape[0], -1)  # n d
        emb = timestep_embedding(rearrange(values, "n d -> (n d)"), self.outdim)
        return rearrange(emb, "(n d) e -> n (d e)", n=values.shape[0])


class EncoderEmbedder(nn.Module):
    """`VideoPredictionEmbedderWithEncoder`: the conditioning frame's VAE latent (mode, unscaled: the reference
    config leaves its scale_factor at 1.0, and so does diffusers' pipeline)."""

    def __init__(self, spec: ModelSpec, operations=None):
        super().__init__()
        self.encoder = CondEncoder(spec.vae, operations)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.encoder.encode(image)


class InterpolationEncoderEmbedder(EncoderEmbedder):
    """Interpolation concat embedder (paper App. D.5): the VAE encoder plus the learned mask embedding
    z_m in R^{c x h x w} that stands in for the latents of the frames to generate (key
    `conditioner.embedders.N.mask_embedding`, shape (z_channels, height / 8, width / 8) at the spec's training size,
    e.g. 4 x 72 x 128 for 576 x 1024; zero-initialised). Other sizes use the map resized bilinearly
    (`svd_core.interpolation.mask_embedding_at`)."""

    def __init__(self, spec: ModelSpec, operations=None):
        super().__init__(spec, operations)
        f = 2 ** (len(spec.vae.ch_mult) - 1)  # VAE downsampling factor (8)
        self.mask_embedding = nn.Parameter(torch.zeros(spec.vae.z_channels, spec.height // f, spec.width // f))


class Conditioner(nn.Module):
    """`GeneralConditioner` with the embedders at the reference indices (keys `embedders.N.`).

    cond_mode "image"/"interpolation": 0 = CLIP image tower, `cond_encoder_index` = VAE encoder, the rest vectors;
    cond_mode "text": 0 = open_clip text tower (`embedders.0.model.`), then one embedder per vector input."""

    def __init__(self, spec: ModelSpec, operations=None):
        """`operations`: the layer namespace of the layers built here (`svd_core.ops`; default torch.nn)."""
        super().__init__()
        self.mode = spec.cond_mode
        if spec.cond_mode not in ("image", "interpolation", "text"):
            raise ValueError(f"spec {spec.name!r}: cond_mode={spec.cond_mode!r}; expected image, interpolation or text")
        vectors = iter(spec.vector_inputs)
        embedders: list[nn.Module] = []
        if spec.cond_mode == "text":
            from .text_encoder import OpenCLIPTextEmbedder

            embedders.append(OpenCLIPTextEmbedder(spec.clip))
            embedders.extend(VectorEmbedder(*v) for v in vectors)
        else:
            encoder = InterpolationEncoderEmbedder if spec.cond_mode == "interpolation" else EncoderEmbedder
            for i in range(2 + len(spec.vector_inputs)):
                if i == 0:
                    embedders.append(OpenCLIPImageEmbedder(spec.clip, operations))
                elif i == spec.cond_encoder_index:
                    embedders.append(encoder(spec, operations))
                else:
                    embedders.append(VectorEmbedder(*next(vectors)))
        self.embedders = nn.ModuleList(embedders)
        self.vector_keys = tuple(k for k, _ in spec.vector_inputs)

    @property
    def clip(self) -> OpenCLIPImageEmbedder:
        if self.mode == "text":
            raise ValueError("this is a text-to-video model: it has a text tower (conditioner.text), no CLIP image tower")
        return self.embedders[0]

    @property
    def text(self):
        """The open_clip text tower (cond_mode "text" only)."""
        if self.mode != "text":
            raise ValueError(f"this model's conditioner is {self.mode!r}-conditioned: it has no text tower")
        return self.embedders[0]

    @property
    def vae_encoder(self) -> EncoderEmbedder:
        found = next((e for e in self.embedders if isinstance(e, EncoderEmbedder)), None)
        if found is None:
            raise ValueError("this model's conditioner has no VAE encoder (text-to-video: use first_stage_model)")
        return found

    def vector(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-frame micro-conditioning vector, concatenated in embedder order: n -> n adm."""
        missing = [k for k in self.vector_keys if k not in values]
        if missing:
            raise ValueError(f"missing vector conditioning {missing}; this model expects {list(self.vector_keys)}")
        parts = [e(values[e.key]) for e in self.embedders if isinstance(e, VectorEmbedder)]
        return torch.cat(parts, dim=-1)

    def micro_vector(self, batch: int, num_frames: int, **values) -> torch.Tensor:
        """The micro-conditioning vector (b t) adm of `batch` videos of `num_frames` frames from the user-facing
        values (`MICRO_VALUES`: fps, motion_bucket_id, cond_aug, elevation, azimuth; each a scalar, per video (b),
        per frame (t) or (b t)) that this model embeds; the others are ignored. The one place they are converted
        (fps_id = fps - 1, SV3D_p polar and relative azimuth in radians): generation and training call it."""
        inputs = micro_inputs(self.vector_keys, batch, num_frames, values)
        device = next(self.parameters()).device
        return self.vector({k: v.to(device) for k, v in inputs.items()})  # (b t) adm
