"""What trains (paper App. D): LoRA adapters on the temporal attention (camera motion, App. D.4.2, via
`svd_core.lora`), the temporal layers only, the whole UNet, or for Stage I (App. D.2) the time embedding only
(warm-up after the EDM switch) or the image model's layers only; the VAE and CLIP encoders always stay frozen."""
from __future__ import annotations

import torch
from torch import nn

# parameter-name fragments of the temporal layers a VideoUNet adds to the image model (paper Sec. 3)
TEMPORAL_KEYS = ("time_stack", "time_mixer", "time_pos_embed")


class TrainModule(nn.Module):
    """The UNet plus the LoRA being trained (if any) as one module: what DDP / FSDP wrap and checkpoints name.

    `forward` is the UNet's; the LoRA acts through forward hooks on the UNet's temporal projections."""

    def __init__(self, unet: nn.Module, lora: nn.Module | None = None,
                 extra: dict[str, nn.Parameter] | None = None):
        super().__init__()
        self.unet = unet
        self.lora = lora
        # conditioner parameters a task trains too (interpolation mask embedding), shared with the model
        self.extra = nn.ParameterDict(extra or {})

    def forward(self, *args, **kwargs):
        return self.unet(*args, **kwargs)


def is_temporal(name: str) -> bool:
    return any(k in name for k in TEMPORAL_KEYS)


def is_time_embed(name: str) -> bool:
    """The UNet's noise-level embedding MLP (`time_embed.0` / `.2`): what the Stage I warm-up trains after the
    switch to EDM's c_noise = ln(sigma)/4 (paper App. D.2)."""
    return name.startswith("time_embed.")


def prepare(model, mode: str, *, lora_rank: int = 16, lora_alpha: float = 0.0, seed: int = 0,
            lora_init: str = "", gradient_checkpointing: bool = False, extra: dict | None = None,
            lora_ff: bool = False):
    """Freeze everything, then unfreeze what `mode` trains. Returns (TrainModule, lora or None, adapter handle)."""
    model.requires_grad_(False)
    unet = model.unet
    unet.train()
    unet.gradient_checkpointing = bool(gradient_checkpointing)
    lora = handle = None
    if mode == "full":
        unet.requires_grad_(True)
    elif mode == "temporal":
        for name, p in unet.named_parameters():
            p.requires_grad_(is_temporal(name))
    elif mode == "time_embed":  # Stage I warm-up (App. D.2)
        for name, p in unet.named_parameters():
            p.requires_grad_(is_time_embed(name))
    elif mode == "spatial":  # Stage I image finetune: the image model's layers (svd_core.stage1), not the video ones
        from ..convert import is_video_only

        for name, p in unet.named_parameters():
            p.requires_grad_(not is_video_only(name))
    elif mode == "lora":
        from .. import lora as lora_lib

        dev = next(unet.parameters()).device
        if lora_init:
            lora = lora_lib.load_lora(lora_init, model).to(dev)
        else:
            lora = lora_lib.create_lora(model, rank=lora_rank, alpha=lora_alpha or None, seed=seed, device=dev,
                                        include_ff=lora_ff)
        lora.requires_grad_(True)
        handle = lora_lib.attach(model, [(lora, 1.0)])
    else:
        raise ValueError(f"mode={mode!r}; expected lora, temporal, full, time_embed or spatial")
    extra = dict(extra or {}) if mode != "lora" else {}
    for p in extra.values():
        p.requires_grad_(True)
    module = TrainModule(unet, lora, extra)
    if not any(p.requires_grad for p in module.parameters()):
        raise ValueError(f"mode={mode!r} left nothing to train in {model.spec.name}")
    return module, lora, handle


def trainable(module: nn.Module) -> dict[str, torch.Tensor]:
    """Name -> parameter of everything that trains, in a fixed order (names as in TrainModule)."""
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def count(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    return (sum(p.numel() for p in module.parameters() if p.requires_grad),
            sum(p.numel() for p in module.parameters()))
