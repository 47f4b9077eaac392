"""Exponential moving average of the trained weights (paper App. D: decay 0.9999; reference `LitEma` warm-up)."""
from __future__ import annotations

import torch


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t  # FSDP shards (DTensor) -> whole tensor


class EMA:
    """ema <- d ema + (1 - d) p with d = min(decay, (1 + n) / (10 + n)) after n updates (reference `LitEma`)."""

    def __init__(self, params: dict[str, torch.Tensor], decay: float = 0.9999):
        self.decay = float(decay)
        self.updates = 0
        self.shadow = {n: p.detach().clone().float() for n, p in params.items()}

    def current_decay(self) -> float:
        n = self.updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, params: dict[str, torch.Tensor]) -> None:
        d = self.current_decay()
        for n, p in params.items():
            self.shadow[n].lerp_(p.detach().float(), 1.0 - d)
        self.updates += 1

    def full_state(self) -> dict[str, torch.Tensor]:
        """The averaged weights as whole CPU tensors (gathers FSDP shards; collective under FSDP)."""
        return {n: _full(t).detach().cpu() for n, t in self.shadow.items()}

    @torch.no_grad()
    def load(self, tensors: dict[str, torch.Tensor], updates: int) -> None:
        for n, t in self.shadow.items():
            src = tensors[n]
            if hasattr(t, "full_tensor"):  # re-shard like the parameter
                from torch.distributed.tensor import distribute_tensor

                t.copy_(distribute_tensor(src.to(t.device), t.device_mesh, t.placements))
            else:
                t.copy_(src)
        self.updates = int(updates)
