"""Pluggable video feature extractors for FVD (I3D TorchScript by default) and clip preprocessing."""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

# name -> factory(**kwargs) -> FeatureExtractor
_REGISTRY: dict[str, Callable[..., "FeatureExtractor"]] = {}


class FeatureExtractor:
    """Maps a batch of clips (b, t, c, h, w) float in [0, 1] to features (b, d); `id` names it for caches."""

    id: str = "base"

    def __call__(self, videos: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


def register_extractor(name: str, factory: Callable[..., FeatureExtractor]) -> None:
    """Make `factory` available to `get_extractor(name, ...)`, the CLI `--extractor` and the nodes."""
    _REGISTRY[name] = factory


def get_extractor(name: str, **kwargs) -> FeatureExtractor:
    if name not in _REGISTRY:
        raise ValueError(f"unknown feature extractor {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**kwargs)


def file_sha256(path: str, limit: int | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:limit] if limit else h.hexdigest()


class I3DTorchScript(FeatureExtractor):
    """The I3D TorchScript of StyleGAN-V / the paper (`i3d_torchscript.pt`), called with
    `rescale=True, resize=True, return_features=True` on (b, c, t, h, w) clips in [0, 255]."""

    def __init__(self, path: str, device: str | torch.device = "cpu"):
        if not path or not os.path.isfile(path):
            raise FileNotFoundError(
                f"I3D TorchScript {path!r} not found: supply the file `i3d_torchscript.pt` (StyleGAN-V's FVD "
                "detector) with --i3d, or put it in ComfyUI's models/svd_eval folder for the FVD nodes")
        self.device = torch.device(device)
        try:
            self.model = torch.jit.load(path, map_location=self.device).eval()
        except RuntimeError as exc:
            raise ValueError(f"{path!r} is not a TorchScript file (torch.jit.load failed: {exc})") from exc
        self.id = f"i3d-{file_sha256(path, 16)}"

    @torch.no_grad()
    def __call__(self, videos: torch.Tensor) -> torch.Tensor:
        if videos.ndim != 5:
            raise ValueError(f"I3D expects clips (b, t, c, h, w), got shape {tuple(videos.shape)}")
        x = videos.to(self.device, torch.float32).permute(0, 2, 1, 3, 4) * 255.0  # b t c h w -> b c t h w
        feats = self.model(x, rescale=True, resize=True, return_features=True)
        return feats.reshape(feats.shape[0], -1).float().cpu()  # b d


register_extractor("i3d", I3DTorchScript)


@dataclass(frozen=True)
class ClipPreprocess:
    """Frame count / rate and spatial resizing applied to every clip before feature extraction."""

    num_frames: int | None = 16
    fps: float | None = None  # resample decoded videos to this rate (None: keep every frame)
    resize_short: int | None = None  # antialiased resize so the short side has this length
    crop: tuple[int, int] | None = None  # center crop (h, w) after the resize

    def to_dict(self) -> dict:
        return asdict(self)


def preprocess_clip(frames, pre: ClipPreprocess) -> torch.Tensor:
    """(t, h, w, c) uint8 / float[0,1] frames -> (t, c, h', w') float in [0, 1] per `pre`."""
    x = torch.as_tensor(np.asarray(frames)) if not torch.is_tensor(frames) else frames
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected frames (t, h, w, 3), got shape {tuple(x.shape)}")
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if pre.num_frames:
        if x.shape[0] < pre.num_frames:
            raise ValueError(f"clip has {x.shape[0]} frames, the protocol needs {pre.num_frames}; "
                             "generate longer clips or lower num_frames")
        x = x[: pre.num_frames]
    x = x.permute(0, 3, 1, 2)  # t h w c -> t c h w
    if pre.resize_short:
        h, w = x.shape[-2:]
        s = pre.resize_short / min(h, w)
        size = (max(1, round(h * s)), max(1, round(w * s)))
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    if pre.crop:
        ch, cw = pre.crop
        h, w = x.shape[-2:]
        if ch > h or cw > w:
            raise ValueError(f"center crop {ch}x{cw} is larger than the resized frame {h}x{w}")
        top, left = (h - ch) // 2, (w - cw) // 2
        x = x[..., top: top + ch, left: left + cw]
    return x.contiguous()
