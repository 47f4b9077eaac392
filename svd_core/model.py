"""The whole SVD-family model as one module with the released checkpoints' key layout."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .conditioner import Conditioner
from .denoiser import VideoCond, denoise
from .unet import VideoUNet
from .vae import FirstStage
from .variants import ModelSpec, get_variant


class DiffusionWrapper(nn.Module):
    """Holds the UNet under `model.diffusion_model.` as the reference's `OpenAIWrapper` does."""

    def __init__(self, unet: VideoUNet):
        super().__init__()
        self.diffusion_model = unet


@dataclass
class LoadReport:
    """What a load consumed: absent optional parts and keys the file had that the model does not."""

    source: str = ""
    variant: str = ""
    detected_from: str = ""
    file_dtypes: dict[str, int] = field(default_factory=dict)
    missing_optional: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{self.source}: variant {self.variant} ({self.detected_from}); tensors by dtype {self.file_dtypes}"]
        if self.missing_optional:
            lines.append(f"  absent optional parts ({len(self.missing_optional)} tensors, unused at inference): "
                         + ", ".join(_group_names(self.missing_optional)))
        if self.unexpected:
            lines.append(f"  unexpected keys ({len(self.unexpected)}), not loaded: " + ", ".join(self.unexpected[:20])
                         + (" ..." if len(self.unexpected) > 20 else ""))
        return "\n".join(lines)


def _group_names(keys: list[str]) -> list[str]:
    groups: dict[str, int] = {}
    for k in keys:
        parts = k.split(".")
        head = ".".join(parts[:5]) if k.startswith("conditioner.") else ".".join(parts[:3])
        groups[head] = groups.get(head, 0) + 1
    return [f"{g}.* ({n})" for g, n in groups.items()]


class SVDModel(nn.Module):
    """UNet (`model.diffusion_model`), VAE (`first_stage_model`), embedders (`conditioner`) and the denoiser."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        _check_spec(spec)
        self.spec = spec
        self.model = DiffusionWrapper(VideoUNet(spec.unet))
        self.first_stage_model = FirstStage(spec.vae)
        self.conditioner = Conditioner(spec)
        self.load_report: LoadReport | None = None

    @property
    def unet(self) -> VideoUNet:
        return self.model.diffusion_model

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: VideoCond, num_frames: int) -> torch.Tensor:
        """D(x; sigma) with the variant's EDM preconditioning (paper App. D.2)."""
        return denoise(self.unet, x, sigma, cond, num_frames)


def _check_spec(spec: ModelSpec) -> None:
    if spec.unet.adm_in_channels != spec.adm_in_channels:
        raise ValueError(f"spec {spec.name!r}: unet.adm_in_channels={spec.unet.adm_in_channels} but the vector "
                         f"inputs {spec.vector_inputs} add up to {spec.adm_in_channels}")
    if spec.unet.context_dim != spec.clip.embed_dim:
        raise ValueError(f"spec {spec.name!r}: unet.context_dim={spec.unet.context_dim} must equal the CLIP "
                         f"embedding width clip.embed_dim={spec.clip.embed_dim}")
    if spec.unet.in_channels != 2 * spec.vae.z_channels and spec.unet.in_channels < spec.vae.z_channels:
        raise ValueError(f"spec {spec.name!r}: unet.in_channels={spec.unet.in_channels} too small for "
                         f"{spec.vae.z_channels} latent channels")


def build(variant: "str | ModelSpec" = "svd_xt", device: "str | torch.device" = "cpu",
          dtype: torch.dtype | None = None) -> SVDModel:
    """Build a variant (name or spec). On `device="meta"` nothing is allocated: the full layout, no memory."""
    spec = get_variant(variant)
    with torch.device(device):
        model = SVDModel(spec)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval().requires_grad_(False)
