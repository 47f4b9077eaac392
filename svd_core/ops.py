"""Injectable layer operations: the namespace the model's weight-holding layers are built from.

Every `Linear`, `Conv2d`, `Conv3d`, `GroupNorm`, `LayerNorm` and `Embedding` of the UNet, the VAE and the
conditioner's own layers is built as `operations.<Name>(...)` with torch's signature, `operations` defaulting to
`torch.nn` (ComfyUI's convention: `comfy.ldm.modules.diffusionmodules.openaimodel` takes `operations=comfy.ops.*`).
A host passes its own namespace, e.g. ComfyUI's `comfy.ops.manual_cast` / `disable_weight_init`, whose layers
cast (and stream) their weights at each call: low-VRAM weight streaming and fp8 weight storage then work on this
engine. svd_core never imports ComfyUI; it only relies on those classes being torch layers with torch's
constructor signature.

The engine's own namespace `cast` does the same for the CLI (`store_fp8`: weights kept in `float8_e4m3fn`,
upcast layer by layer to the activation dtype at compute, as ComfyUI's `--fp8_e4m3fn-unet` does).

Layers with their own forward fast paths (`GroupNorm32`, `TemporalConv3d`, the VAE's `AE3DConv`, the folded
upsampling conv) read their weights directly; `layer_class(cls, operations)` rebuilds such a class on the
namespace's layer of the same kind, and the fast paths step aside (`casts_weights`) so the namespace's own
forward, with its weight casting, runs. The state-dict keys are the same whatever the namespace.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LAYER_NAMES = ("Linear", "Conv2d", "Conv3d", "GroupNorm", "LayerNorm", "Embedding")
FP8_DTYPES = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n))


def resolve(operations=None):
    """The namespace to build layers from: `operations`, or `torch.nn` when None."""
    return nn if operations is None else operations


def is_native(operations) -> bool:
    """True for the default namespace (torch.nn): the layers' own fast paths apply."""
    return operations is None or operations is nn


_DERIVED: dict[tuple[type, type], type] = {}


def _torch_base(cls: type) -> type:
    return next(c for c in cls.__mro__ if c.__module__.startswith("torch.nn") and c.__name__ in LAYER_NAMES)


def layer_class(cls: type, operations=None) -> type:
    """`cls` (a subclass of a torch layer with its own forward) built on the namespace's layer of that kind.

    The derived class puts `cls` first in the method order, then the namespace's layer (whose forward casts the
    weights), then torch's: `super().forward` inside `cls` reaches the namespace's forward. Cached per pair."""
    if is_native(operations):
        return cls
    base = getattr(operations, _torch_base(cls).__name__)
    key = (cls, base)
    if key not in _DERIVED:
        _DERIVED[key] = type(cls.__name__, (cls, base), {"_cast_by_ops": True, "__module__": cls.__module__})
    return _DERIVED[key]


def casts_weights(module: nn.Module) -> bool:
    """True when `module`'s weights must be read through its namespace's forward (a cast, a device transfer,
    a patch), not directly: any layer that is not a plain torch layer or one of the engine's own subclasses."""
    flag = getattr(module, "_cast_by_ops", None)
    if flag is not None:
        return flag
    return not type(module).__module__.startswith("torch.nn")


def bypassable(module: nn.Module) -> bool:
    """True when a fast path may read `module`'s weights itself instead of calling it: it does not cast them
    (`casts_weights`) and no forward hook is attached (an unmerged LoRA adds its low-rank term in one)."""
    return not (casts_weights(module) or module._forward_hooks or module._forward_pre_hooks)


def _cast(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """`t` on `like`'s device in `like`'s dtype (a per-call copy for fp8 / offloaded weights)."""
    if t is None:
        return None
    return t.to(device=like.device, dtype=like.dtype if like.is_floating_point() else t.dtype)


class CastWeights:
    """Marker of the engine's casting layers: weights stored in any dtype / on any device, cast per call."""


class cast:  # noqa: N801 - a namespace, spelled like the modules it stands in for (torch.nn, comfy.ops.manual_cast)
    """Layers that cast their weights to the input's dtype and device at every call (fp8 storage, offloading)."""

    class Linear(nn.Linear, CastWeights):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.linear(x, _cast(self.weight, x), _cast(self.bias, x))

    class Conv2d(nn.Conv2d, CastWeights):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self._conv_forward(x, _cast(self.weight, x), _cast(self.bias, x))

    class Conv3d(nn.Conv3d, CastWeights):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self._conv_forward(x, _cast(self.weight, x), _cast(self.bias, x))

    class GroupNorm(nn.GroupNorm, CastWeights):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.group_norm(x, self.num_groups, _cast(self.weight, x), _cast(self.bias, x), self.eps)

    class LayerNorm(nn.LayerNorm, CastWeights):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.layer_norm(x, self.normalized_shape, _cast(self.weight, x), _cast(self.bias, x), self.eps)

    class Embedding(nn.Embedding, CastWeights):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            weight = self.weight.to(x.device)
            if weight.dtype in FP8_DTYPES:
                weight = weight.to(torch.bfloat16)
            return F.embedding(x, weight, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq,
                               self.sparse)


def store_fp8(module: nn.Module, compute_dtype: torch.dtype = torch.bfloat16,
              weight_dtype: torch.dtype | None = None) -> nn.Module:
    """Keep the weights of `module`'s Linear / Conv layers in fp8 (`float8_e4m3fn`), biases, norms and other
    parameters in `compute_dtype`; each layer upcasts its weight at compute. Halves the weight bytes of an fp16
    model (the UNet: 2.84 -> 1.43 GiB for SVD-XT). `module` must be built with casting operations (`cast`, or a
    host's; `SVDModel(spec, operations={"unet": ops.cast})` for the UNet alone), since a plain torch layer cannot
    multiply an fp8 weight by a bf16 input."""
    weight_dtype = weight_dtype or torch.float8_e4m3fn
    if weight_dtype not in FP8_DTYPES:
        raise ValueError(f"weight_dtype={weight_dtype}; expected one of {FP8_DTYPES}")
    if compute_dtype in FP8_DTYPES or not compute_dtype.is_floating_point:
        raise ValueError(f"compute_dtype={compute_dtype}; expected a float dtype such as torch.bfloat16")
    module.to(compute_dtype)
    for name, m in module.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d)) and m.weight is not None:
            if not (isinstance(m, CastWeights) or casts_weights(m)):
                raise ValueError(f"store_fp8: layer {name!r} ({type(m).__name__}) cannot compute with fp8 weights; "
                                 f"build the model with operations=svd_core.ops.cast (or the host's casting ops)")
            m.weight = nn.Parameter(m.weight.data.to(weight_dtype), requires_grad=False)
    module.compute_dtype = compute_dtype
    return module


def compute_dtype(module: nn.Module) -> torch.dtype:
    """The dtype `module` computes in: its parameters' dtype, or for fp8-stored weights the `compute_dtype`
    recorded by `store_fp8` (the first non-fp8 float parameter's dtype otherwise)."""
    recorded = getattr(module, "compute_dtype", None)
    if isinstance(recorded, torch.dtype):
        return recorded
    fallback = None
    for p in module.parameters():
        if p.dtype not in FP8_DTYPES and p.is_floating_point():
            return p.dtype
        fallback = fallback or p.dtype
    return torch.bfloat16 if fallback in FP8_DTYPES else (fallback or torch.float32)


def weight_bytes(module: nn.Module) -> int:
    """Bytes of `module`'s parameters and buffers as stored (fp8 weights count one byte)."""
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


__all__ = ["LAYER_NAMES", "FP8_DTYPES", "resolve", "is_native", "layer_class", "casts_weights", "bypassable",
           "CastWeights", "cast", "store_fp8", "compute_dtype", "weight_bytes"]
