"""Conditioning embedders (paper Sec. 4.3, App. D.2): CLIP image embedding, concat-frame VAE encoder, and the
sinusoidal micro-conditioning vector (fps, motion bucket, cond_aug; SV3D polar / azimuth)."""
from __future__ import annotations

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
