"""One call from data to trained outputs, shared by the CLI (`python -m svd_core train`) and the ComfyUI nodes
(paper App. D): `prepare_data` + `train` for the CLI; `model_to_train`, `run` and `validation_samples` for the
nodes, which only convert ComfyUI types around them."""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .config import ConfigError, TrainConfig
from .data import CachedDataset, build_cache, load_records, make_windows, split
from .distributed import DistInfo, barrier
from .trainer import ResumeError, Trainer, TrainResult

# generators a training run can start from a base SVD model (paper App. D.4 multi-view, D.5 interpolation, E text)
TARGETS = ("interpolation", "multiview", "text2video")


class RunInputError(ValueError):
    """A run that cannot start: `what` names the part at fault ("settings", "dataset", "resume"), the message says
    why and how to fix it."""

    def __init__(self, what: str, message: str):
        super().__init__(message)
        self.what = what


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


def model_to_train(base: torch.nn.Module, target: str | None = None, loras=()) -> torch.nn.Module:
    """A private float32 CPU copy of `base` (the shared, loaded model is never changed) with the LoRA stack `loras`
    ((lora, strength), ...) merged, turned into the generator `target` (one of TARGETS, None: as it is) at the base's
    own architecture (`<module>.spec_for`: the released variant for a full-size base)."""
    if target is not None and target not in TARGETS:
        raise ValueError(f"target {target!r} is not one of {TARGETS} (or None: train the model as loaded)")
    model = copy.deepcopy(base).to("cpu", torch.float32)
    for t in list(model.parameters()) + list(model.buffers()):
        t.data = t.data.clone()  # plain tensors (a model made under inference mode cannot train)
    if loras:
        from ..lora import merge

        merge(model, [(lora.to("cpu"), strength) for lora, strength in loras])
    if target is None:
        return model
    from .. import interpolation, multiview, text2video

    module = {"interpolation": interpolation, "multiview": multiview, "text2video": text2video}[target]
    return module.init_from(model)


@dataclass
class TrainingRun:
    """A finished (or resumed and finished) training run: the trainer (model copy, LoRA, EMA, data; it saves
    checkpoints and LoRAs), the trained model with its LoRA merged (what generation samples), the loss curve and a
    one-paragraph report."""

    trainer: Trainer
    result: TrainResult
    data: PreparedData
    run_dir: str
    name: str
    model: torch.nn.Module
    loss_curve: np.ndarray  # h w 3 uint8
    report: str


def run(base: torch.nn.Module, cfg: TrainConfig, source: str | os.PathLike, run_dir: str | os.PathLike,
        cache_dir: str | os.PathLike, *, target: str | None = None, loras=(), records=None, max_per_clip: int = 0,
        resume: bool = True, device: torch.device | None = None, progress=None, cancel=None) -> TrainingRun:
    """Train a private copy of `base` (`model_to_train`: LoRAs merged, grown into `target`; then the task's model,
    `tasks.model_for_task`) on `source`'s clips (or its loaded `records`) with `cfg`: cached data, the training loop
    (resuming from run_dir's state when asked; Cancel saves it and raises `trainer.Interrupted`), no exports. A bad
    setting, dataset or saved state raises RunInputError."""
    from .tasks import model_for_task

    try:
        cfg.validate()
    except ConfigError as exc:
        raise RunInputError("settings", str(exc)) from None
    model = model_to_train(base, target, loras)
    model = model_for_task(model, cfg.task).to(device or "cpu")  # interpolation: from the base model (D.5)
    try:
        data = prepare_data(model, cfg, source, cache_dir, records=records, max_per_clip=max_per_clip,
                            progress=progress, cancel=cancel)
    except (RuntimeError, ValueError) as exc:  # no windows, unreadable clips, caching cancelled
        raise RunInputError("dataset", str(exc)) from exc
    if progress is not None:
        progress(0, cfg.steps)
    try:
        trainer, out = train(model, cfg, data, run_dir, resume=resume, device=device, progress=progress,
                             cancel=cancel, export=False)
    except ResumeError as exc:  # a damaged or foreign saved state: names the file and how to start fresh
        raise RunInputError("resume", str(exc)) from None
    curve = trainer.write_loss_curve()
    trainer.close()
    trained = copy.deepcopy(trainer.model)
    if trainer.lora is not None:
        from ..lora import merge

        merge(trained, [(trainer.lora_copy(), 1.0)])
    result = out["result"]
    return TrainingRun(trainer, result, data, str(run_dir), cfg.name, trained, curve, _report(cfg, result, data))


def _report(cfg: TrainConfig, result: TrainResult, data: PreparedData) -> str:
    first = result.val[0][1] if result.val else float("nan")
    last = result.val[-1][1] if result.val else float("nan")
    return (f"{cfg.name}: {cfg.preset} ({cfg.mode}, task {cfg.task}) {result.step}/{cfg.steps} steps in "
            f"{result.seconds:.1f} s; {len(data.train_idx)} training / {len(data.val_idx)} validation windows; "
            f"validation loss {first:.4f} -> {last:.4f}; state {result.state_path}")


def validation_samples(trainer: Trainer, *, steps: int, videos: int, cfg_scale: float = 1.0, use_lora: bool = True,
                       seed: int = 0) -> torch.Tensor:
    """Videos sampled from the first `videos` validation clips' (else training clips') first frames with their fps
    and motion, with or without the trained LoRA: b t 3 H W in [0, 1]. Image-to-video runs only."""
    if trainer.cfg.task != "img2vid":
        raise ValueError(f"validation samples need an image-to-video run; this one is {trainer.cfg.task}")
    indices = (trainer.val_idx or trainer.train_idx)[:videos]
    handle = trainer.handle
    if trainer.lora is not None and handle is None:  # `run` took the LoRA hooks off: attach them for sampling
        from ..lora import attach

        trainer.handle = attach(trainer.model, [(trainer.lora, 1.0)])
    try:
        return trainer.sample(steps=steps, indices=indices, use_lora=use_lora, seed=seed, cfg_scale=cfg_scale)
    finally:
        if handle is None:
            trainer.close()
