"""Multi-process training under `torchrun` (paper App. D trains on many GPUs): process group from the
environment, DDP for every mode, FSDP (per-block sharding, `fully_shard`) for full finetuning."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_from_env(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK); gloo on CPU, nccl on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def device_for(info: DistInfo, requested: str | None = None) -> torch.device:
    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda", info.local_rank)
    return torch.device("cpu")


def wrap(module: nn.Module, strategy: str, mode: str, info: DistInfo, device: torch.device):
    """-> (the callable that runs the UNet for the loss, the strategy used). Single process: the module itself."""
    if not info.enabled:
        return module, "single"
    if strategy == "auto":
        strategy = "ddp"
    if strategy == "fsdp":
        if mode != "full":
            raise ValueError(f"strategy fsdp shards the full model; mode={mode!r} trains a small part: use ddp")
        from torch.distributed.fsdp import fully_shard

        unet = module.unet
        for block in list(unet.input_blocks) + [unet.middle_block] + list(unet.output_blocks):
            for layer in block:  # the blocks are ModuleLists: shard their layers (res blocks, transformers)
                fully_shard(layer)
        fully_shard(unet)  # root: time/label embeddings and the output head
        return unet, "fsdp"
    from torch.nn.parallel import DistributedDataParallel as DDP

    # find_unused_parameters: with a one-token context the cross-attention never calls to_q / to_k (softmax over
    # one key is 1), so their weights (and LoRA layers) get no gradient in image-to-video training
    ddp = DDP(module, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    return ddp, "ddp"


def all_mean(value: float, info: DistInfo, device: torch.device) -> float:
    """Mean of a float over the processes (logging only)."""
    if not info.enabled:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / info.world


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
