"""What every generation node shares: the pack's ComfyUI types, ComfyUI-managed models, progress and interrupt.

Devices and memory come from `comfy.model_management` (`--cpu`, low-VRAM offload, the *Free model and node cache*
button), progress from `comfy.utils.ProgressBar`, interrupts from
`comfy.model_management.throw_exception_if_processing_interrupted()`.
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch
from einops import rearrange

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
from comfy_api.latest import io

# ComfyUI socket types of the pack (prefixed: core already has MODEL, CONDITIONING, GUIDER, ...)
SVDModel = io.Custom("SVDSUITE_MODEL")
SVDConditioning = io.Custom("SVDSUITE_CONDITIONING")
SVDGuidance = io.Custom("SVDSUITE_GUIDANCE")
SVDOrbit = io.Custom("SVDSUITE_ORBIT")

PREFIX = "SVDSuite_"
SEED_MAX = 0xFFFFFFFFFFFFFFFF
DTYPES = {"auto": None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# latent dict key carrying frames per video, so decode/sampling know where one video ends ("(b t) c h w")
FRAMES_KEY = "svd_num_frames"


def engine():
    """`svd_core.pipeline`, imported on first use so registering the nodes stays cheap."""
    from svd_core import pipeline

    return pipeline


class NodeInputError(ValueError):
    """A bad input value, reported with the node id and input that fix it."""


def bad_input(node_id: str, input_name: str, message: str) -> NodeInputError:
    return NodeInputError(f"{node_id}: input '{input_name}': {message}")


def check_inputs(cls, **values: Any) -> bool | str:
    """ComfyUI's own checks (min, max, combo options) for inputs a node's `validate_inputs` takes over.

    ComfyUI 0.3.75 skips its range checks for every input named in `validate_inputs` and never checks V3 combo
    values, so the nodes re-apply the schema here; the message names the node, the input and the fix.
    """
    inputs = {i.id: i for i in cls.define_schema().inputs}
    for name, value in values.items():
        spec = inputs[name]
        if value is None:  # linked input: known only at run time
            continue
        options = getattr(spec, "options", None)
        if isinstance(spec, io.Combo.Input) and options is not None and value not in options:
            shown = options if len(options) <= 12 else options[:12] + ["..."]
            return f"{cls.ID}: input '{name}' = {value!r} is not one of {shown}"
        low, high = getattr(spec, "min", None), getattr(spec, "max", None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if low is not None and value < low:
                return f"{cls.ID}: input '{name}' = {value} is below the minimum {low}"
            if high is not None and value > high:
                return f"{cls.ID}: input '{name}' = {value} is above the maximum {high}"
    return True


@dataclass
class LoadedSVD:
    """A checkpoint as it travels between nodes: ComfyUI's ModelPatcher owns device placement and unloading."""

    patcher: comfy.model_patcher.ModelPatcher
    name: str

    @property
    def spec(self):
        return self.patcher.model.spec

    def acquire(self) -> torch.nn.Module:
        """Load onto ComfyUI's compute device (freeing other models if needed) and return the module."""
        mm.load_models_gpu([self.patcher])
        return self.patcher.model


# Reuse across prompts: the same file (path, mtime) and dtype give the same LoadedSVD while anything (ComfyUI's
# node cache, a running prompt) still holds it; once ComfyUI frees its caches the model is released.
_LOADED: "weakref.WeakValueDictionary[tuple, LoadedSVD]" = weakref.WeakValueDictionary()
_LOAD_LOCK = threading.Lock()


def load_cached(key: tuple, name: str, loader: Callable[[torch.device, "torch.dtype | None"], torch.nn.Module],
                dtype_choice: str) -> LoadedSVD:
    load_device = mm.get_torch_device()
    offload_device = mm.unet_offload_device()
    dtype = DTYPES[dtype_choice]
    if dtype is None:  # ComfyUI's choice for this device (fp32 on CPU)
        dtype = torch.float16 if mm.should_use_fp16(load_device) else torch.float32
    full_key = key + (str(dtype), str(load_device))
    with _LOAD_LOCK:
        hit = _LOADED.get(full_key)
        if hit is not None:
            return hit
        module = loader(offload_device, dtype)
        module.eval().requires_grad_(False)
        loaded = LoadedSVD(comfy.model_patcher.ModelPatcher(module, load_device=load_device,
                                                            offload_device=offload_device), name)
        _LOADED[full_key] = loaded
        return loaded


class Progress:
    """ComfyUI progress bar plus interrupt check, as a k-diffusion style step callback."""

    def __init__(self, total: int):
        self.total = max(int(total), 1)
        self.bar = comfy.utils.ProgressBar(self.total)
        self.done = 0
        mm.throw_exception_if_processing_interrupted()

    def absolute(self, done: int, total: int | None = None) -> None:
        """`done` of `total` units finished (the engine's callback); raises InterruptProcessingException on Cancel."""
        self.done = int(done)
        self.bar.update_absolute(self.done, total if total is not None else self.total)
        mm.throw_exception_if_processing_interrupted()


def image_to_bchw(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE (B, H, W, 3) in 0..1 -> (B, 3, H, W) float32."""
    return rearrange(image[..., :3].float(), "b h w c -> b c h w")  # b h w c -> b c h w


def frames_to_image(frames: torch.Tensor) -> torch.Tensor:
    """Engine frames (B, T, 3, H, W) in 0..1 -> ComfyUI IMAGE (B*T, H, W, 3) float32 on the intermediate device."""
    out = rearrange(frames, "b t c h w -> (b t) h w c")  # videos stacked frame after frame
    return out.to(device=mm.intermediate_device(), dtype=torch.float32).clamp(0, 1).contiguous()


def latent_out(samples: torch.Tensor, num_frames: int) -> dict:
    """Engine latent "(b t) 4 h w" -> ComfyUI LATENT dict (frames of one video contiguous)."""
    return {"samples": samples.to(mm.intermediate_device()), FRAMES_KEY: int(num_frames)}


def latent_frames(latent: dict) -> int:
    """Frames per video of a LATENT (ours carry it; a foreign latent counts as one video)."""
    samples = latent["samples"]
    t = int(latent.get(FRAMES_KEY, samples.shape[0]))
    if t < 1 or samples.shape[0] % t:
        raise ValueError(f"latent has {samples.shape[0]} frames, not a whole number of {t}-frame videos")
    return t
