"""Meta-device memory accounting: the activation peak of a full-size forward without allocating it.

Modules built on the `meta` device run their real forward code on shape-only tensors. `LiveBytes` watches every
ATen op under a dispatch mode, adds the storage of each new output and subtracts it when the storage dies, so its
peak is the largest sum of simultaneously alive activations: what a device allocator must hold beyond the weights
(kernel workspaces and allocator fragmentation come on top). It is exact for the code as written: views, in-place
ops and frees count as they happen.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

GiB = 2 ** 30


class LiveBytes(TorchDispatchMode):
    """Tracks the bytes of alive op outputs (by storage) and their high-water mark."""

    def __init__(self):
        super().__init__()
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def _sweep(self) -> None:
        for key in [k for k, (ref, _) in self._live.items() if ref.expired()]:
            self.current -= self._live.pop(key)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self._sweep()  # storages freed since the last op (their addresses may be reused now)
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in self._live:  # a view or an in-place result reuses a known storage
                    self._live[key] = (StorageWeakRef(storage), storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


def activation_peak(fn: Callable[[], object]) -> int:
    """Peak bytes of activations alive at once while `fn()` runs (inference mode), its result included."""
    with torch.inference_mode(), LiveBytes() as live:
        out = fn()
        del out
    return live.peak


@dataclass(frozen=True)
class MemoryPlan:
    """Weights and activation peaks of one full-size generation, in bytes."""

    variant: str
    frames: int
    height: int
    width: int
    dtype: torch.dtype
    weights: dict[str, int]
    unet_peak: int  # one guided UNet forward: both branches in one batch of 2 x frames
    decode_peak: int  # one temporal-decoder window of `decode_t` frames
    decode_t: int

    def lines(self) -> list[str]:
        w = self.weights
        total = sum(w.values())
        out = [f"full-size plan (meta-device accounting): {self.variant}, {self.frames} frames at "
               f"{self.width}x{self.height}, {str(self.dtype).replace('torch.', '')}"]
        out += [f"  weights {name:<12} {n / GiB:6.2f} GiB" for name, n in w.items()]
        out.append(f"  UNet forward (cond + uncond batch)  activation peak {self.unet_peak / GiB:6.2f} GiB")
        out.append(f"  VAE decode, decode_t={self.decode_t:<2}          activation peak {self.decode_peak / GiB:6.2f} GiB")
        out.append(f"  sampling with offloading (UNet on the device, then the VAE): "
                   f"{(w['unet'] + self.unet_peak) / GiB:.2f} GiB, then {(w['vae'] + self.decode_peak) / GiB:.2f} GiB; "
                   f"everything resident: {(total + max(self.unet_peak, self.decode_peak)) / GiB:.2f} GiB")
        return out


def full_size_plan(variant: str = "svd_xt", frames: int | None = None, height: int = 576, width: int = 1024,
                   dtype: torch.dtype = torch.float16, decode_t: int = 14) -> MemoryPlan:
    """Build `variant` on the meta device and account one guided UNet step and one decoder window."""
    from .model import build

    model = build(variant, device="meta").to(dtype)
    model.set_channels_last(True)
    frames = frames or model.spec.num_frames
    u = model.spec.unet
    b = 2 * frames  # conditional and unconditional branches in one forward
    h, w = height // 8, width // 8
    x = torch.empty(b, u.in_channels, h, w, device="meta", dtype=dtype)
    t = torch.empty(b, device="meta")
    ctx = torch.empty(b, 1, u.context_dim, device="meta", dtype=dtype)
    y = torch.empty(b, u.adm_in_channels, device="meta", dtype=dtype)
    unet_peak = activation_peak(lambda: model.unet(x, t, context=ctx, y=y, num_video_frames=frames))
    z = torch.empty(decode_t, model.first_stage_model.spec.z_channels, h, w, device="meta", dtype=dtype)
    decode_peak = activation_peak(lambda: model.first_stage_model.decode(z, decode_t))
    size = torch.tensor([], dtype=dtype).element_size()
    weights = {name: sum(p.numel() for p in mod.parameters()) * size for name, mod in
               (("unet", model.unet), ("vae", model.first_stage_model), ("conditioner", model.conditioner))}
    return MemoryPlan(variant, frames, height, width, dtype, weights, unet_peak, decode_peak, decode_t)


__all__ = ["LiveBytes", "activation_peak", "MemoryPlan", "full_size_plan"]
