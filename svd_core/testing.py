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
TINY_VARIANTS = {s.name: s for s in (TINY, TINY_XT, TINY_IMAGE_DECODER, TINY_SV3D_U, TINY_SV3D_P, TINY_INTERP,
                                     TINY_SVD_MV, TINY_T2V)}


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
