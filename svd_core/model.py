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

    def __init__(self, spec: ModelSpec, operations=None):
        """`operations`: the namespace the weight layers are built from (`svd_core.ops`: default torch.nn; a host's
        casting ops, e.g. ComfyUI's comfy.ops.manual_cast; `svd_core.ops.cast` for fp8 weight storage), or a dict
        of them per part ("unet", "vae", "conditioner"; absent parts: torch.nn)."""
        super().__init__()
        _check_spec(spec)
        self.spec = spec
        part = (lambda name: operations.get(name)) if isinstance(operations, dict) else (lambda name: operations)
        self.model = DiffusionWrapper(VideoUNet(spec.unet, part("unet")))
        self.first_stage_model = FirstStage(spec.vae, part("vae"))
        self.conditioner = Conditioner(spec, part("conditioner"))
        self.load_report: LoadReport | None = None

    @property
    def unet(self) -> VideoUNet:
        return self.model.diffusion_model

    def set_channels_last(self, enabled: bool = True) -> "SVDModel":
        """Channels-last convs for the UNet and the VAE decoder (faster on CPU / tensor cores, same maths)."""
        from .layers import set_channels_last

        set_channels_last(self.unet, enabled)
        set_channels_last(self.first_stage_model, enabled)
        return self

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: VideoCond, num_frames: int) -> torch.Tensor:
        """D(x; sigma) with the variant's EDM preconditioning (paper App. D.2)."""
        return denoise(self.unet, x, sigma, cond, num_frames)


def _check_spec(spec: ModelSpec) -> None:
    if spec.unet.adm_in_channels != spec.adm_in_channels:
        raise ValueError(f"spec {spec.name!r}: unet.adm_in_channels={spec.unet.adm_in_channels} but the vector "
                         f"inputs {spec.vector_inputs} add up to {spec.adm_in_channels}")
    if spec.cond_mode == "text":
        if spec.unet.context_dim != spec.clip.text_width:
            raise ValueError(f"spec {spec.name!r}: unet.context_dim={spec.unet.context_dim} must equal the text "
                             f"tower width clip.text_width={spec.clip.text_width} (penultimate-layer tokens)")
    elif spec.unet.context_dim != spec.clip.embed_dim:
        raise ValueError(f"spec {spec.name!r}: unet.context_dim={spec.unet.context_dim} must equal the CLIP "
                         f"embedding width clip.embed_dim={spec.clip.embed_dim}")
    if spec.unet.in_channels != 2 * spec.vae.z_channels and spec.unet.in_channels < spec.vae.z_channels:
        raise ValueError(f"spec {spec.name!r}: unet.in_channels={spec.unet.in_channels} too small for "
                         f"{spec.vae.z_channels} latent channels")


def build(variant: "str | ModelSpec" = "svd_xt", device: "str | torch.device" = "cpu",
          dtype: torch.dtype | None = None, operations=None) -> SVDModel:
    """Build a variant (name or spec). On `device="meta"` nothing is allocated: the full layout, no memory.
    `operations`: the layer namespace (see `SVDModel`)."""
    spec = get_variant(variant)
    with torch.device(device):
        model = SVDModel(spec, operations)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval().requires_grad_(False)


# ---- weight transfer between variants (training a new generator from a released checkpoint) ----
# Tensors whose input width grows between variants: copy the shared slice, zero the new columns, so the new model
# starts as the old one (the new inputs contribute nothing until trained).
GROWABLE = ("model.diffusion_model.input_blocks.0.0.weight",  # conv_in: (320, in_channels, 3, 3)
            "model.diffusion_model.label_emb.0.0.weight")    # adm input: (1280, adm)


@torch.no_grad()
def init_from(src: "SVDModel", spec: "str | ModelSpec", device=None, dtype: torch.dtype | None = None,
              strict_shapes: bool = True) -> "SVDModel":
    """A new `spec` model initialised from `src`: same-named, same-shaped tensors copied; the UNet's conv_in and
    label_emb input columns copied where they overlap (new columns zero: extra concat channels, extra vector
    embeddings; fewer: the leading ones kept, e.g. SVD -> text-to-video keeps the noise channels and fps/motion);
    tensors only `spec` has keep their init (zero mask embedding, fresh text tower). Returns the model in train
    layout with requires_grad False everywhere (the trainer decides what trains) and a `transfer_report` dict
    (copied / sliced / new / dropped key lists)."""
    spec = get_variant(spec)
    device = device or next(src.parameters()).device
    dtype = dtype or next(src.parameters()).dtype
    with torch.device(device):
        dst = SVDModel(spec)
    dst = dst.to(dtype)
    src_sd, dst_sd = src.state_dict(), dst.state_dict()
    report = {"copied": [], "sliced": [], "new": [], "dropped": sorted(k for k in src_sd if k not in dst_sd)}
    for key, target in dst_sd.items():
        source = src_sd.get(key)
        if source is None:
            report["new"].append(key)
        elif source.shape == target.shape:
            target.copy_(source)
            report["copied"].append(key)
        elif key in GROWABLE and source.ndim == target.ndim and source.shape[0] == target.shape[0]:
            n = min(source.shape[1], target.shape[1])
            target.zero_()
            target[:, :n].copy_(source[:, :n])  # o i ... : the first n input columns carry over
            report["sliced"].append(key)
        elif strict_shapes:
            raise ValueError(f"init_from {src.spec.name} -> {spec.name}: {key} has shape {list(source.shape)} in the "
                             f"source but {list(target.shape)} in the new variant (only {GROWABLE} may change)")
        else:
            report["new"].append(key)
    dst.transfer_report = report
    return dst.eval().requires_grad_(False)
