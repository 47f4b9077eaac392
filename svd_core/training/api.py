"""One call from data to trained outputs, shared by the CLI (`python -m svd_core train`) and the ComfyUI nodes."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .config import TrainConfig
from .data import CachedDataset, build_cache, load_records, make_windows, split
from .distributed import DistInfo, barrier
from .trainer import Trainer


@dataclass
class PreparedData:
    dataset: CachedDataset
    train_idx: list
    val_idx: list
    windows: list


def prepare_data(model, cfg: TrainConfig, source: str | os.PathLike, cache_dir: str | os.PathLike,
                 info: DistInfo | None = None, progress: Callable[[int, int], None] | None = None,
                 cancel: Callable[[], bool] | None = None, max_per_clip: int = 0, records=None) -> PreparedData:
    """Clips -> windows -> cached latents / CLIP embeddings (rank 0 encodes, the others wait and read)."""
    info = info or DistInfo()
    records = records if records is not None else load_records(source, cancel)
    windows = make_windows(records, cfg.num_frames, cfg.frame_stride, cfg.target_fps, max_per_clip)
    if info.is_main:
        paths = build_cache(model, windows, cache_dir, cfg.height, cfg.width, progress, cancel)
    barrier(info)
    if not info.is_main:
        paths = build_cache(model, windows, cache_dir, cfg.height, cfg.width)  # every file exists: reads only
    if len(paths) < len(windows):
        raise RuntimeError(f"caching cancelled after {len(paths)} of {len(windows)} windows (finished files are kept)")
    train_idx, val_idx = split(len(paths), cfg.val_fraction, cfg.val_items, cfg.seed)
    dataset = CachedDataset(paths, cfg.motion_scale, records=[w.record for w in windows])  # live captions
    return PreparedData(dataset, train_idx, val_idx, windows)


def train(model, cfg: TrainConfig, data: PreparedData, out_dir: str | os.PathLike, *, resume: bool = True,
          device: torch.device | None = None, info: DistInfo | None = None, lora_init: str = "",
          progress=None, cancel=None, log=None, export: bool = True) -> tuple[Trainer, dict]:
    """Train `model` in place (pass a copy), resuming from out_dir's state when asked; export outputs at the end."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    trainer = Trainer(model, cfg, data.dataset, data.train_idx, data.val_idx, out_dir, device=device,
                      dist_info=info, lora_init=lora_init)
    if resume and trainer.resume() and log:
        log(f"resumed from {trainer.state_path} at step {trainer.step}")
    result = trainer.run(progress=progress, cancel=cancel, log=log)
    if trainer.info.enabled:
        err = trainer.sync_error()
        if log:
            log(f"ranks in sync: {trainer.info.world} processes ({trainer.strategy}), max weight difference {err:.3g}")
    outputs = trainer.export() if export else {}
    trainer.write_loss_curve()
    return trainer, {"result": result, **outputs}
