"""Training settings: per-stage presets with the paper's values (App. D) and the run configuration."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..config_check import check_instance, check_types, read_config, suggest

MODES = ("lora", "temporal", "full", "time_embed", "spatial")
TASKS = ("img2vid", "interpolation", "text2video", "multiview")


class ConfigError(ValueError):
    """A bad training setting: the message names the key, the value and what is expected."""


@dataclass(frozen=True)
class Preset:
    """One training stage of the paper (App. D): noise distribution, learning rate, frames, size, mode."""

    name: str
    p_mean: float
    p_std: float
    lr: float
    num_frames: int
    height: int
    width: int
    mode: str = "full"
    task: str = "img2vid"
    lora_rank: int = 16
    steps: int = 10000  # the paper's iteration count for the stage where it states one (App. D), else 10k
    description: str = ""
    target_fps: float = 7.0  # frame rate the training windows are sampled at (TrainConfig.target_fps)
    # the paper's global batch size (0: not stated); recorded, not applied: a run reaches it with
    # batch_size x grad_accum x processes as the hardware allows
    paper_batch_size: int = 0


# Values from the paper's App. D (and the reference README); sizes are the stage's training resolution.
# Stage order (paper Sec. 4.1, App. D.2): a video model built from SD 2.1 (`svd_core.stage1`, temporal layers at
# identity) -> time_embed_warmup -> image_finetune (31k image iterations in all) -> video_pretrain ->
# video_pretrain_hires -> the finetunes of App. D.3-D.6.
PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("time_embed_warmup", -1.2, 1.0, 1e-4, 1, 512, 512, mode="time_embed", task="text2video", steps=1000,
           description="Stage I: the first 1k of SD 2.1's 31k EDM finetuning iterations train only the time "
                       "embedding, at SD 2.1's 512x512, P_mean -1.2, P_std 1 (App. D.2)"),
    Preset("image_finetune", -1.2, 1.0, 1e-4, 1, 256, 384, mode="spatial", task="text2video", steps=30000,
           description="Stage I: then all of the image model's layers for 30k iterations at 256x384, P_mean -1.2, "
                       "P_std 1 (App. D.2); the temporal layers stay at their identity init"),
    Preset("video_pretrain", -1.2, 1.0, 1e-4, 14, 256, 384, task="text2video", steps=150000, paper_batch_size=1536,
           description="Stage II video pretraining, 14 frames at 256x384, 150k iterations at batch 1536, lr 1e-4, "
                       "15% text dropout (App. D.2)"),
    Preset("video_pretrain_hires", 0.0, 1.0, 1e-4, 14, 320, 576, task="text2video", steps=100000,
           paper_batch_size=768,
           description="video pretraining continued at 320x576 with P_mean shifted to 0, 100k iterations at batch "
                       "768 (App. D.2)"),
    Preset("text2video_finetune", 0.5, 1.4, 3e-5, 14, 576, 1024, task="text2video", steps=50000,
           paper_batch_size=768,
           description="text-to-video high-quality finetune, P_mean 0.5, P_std 1.4, 50k iterations at batch 768 "
                       "(App. D.3)"),
    Preset("img2vid", 0.7, 1.6, 3e-5, 14, 320, 576, steps=50000, paper_batch_size=768,
           description="image-to-video finetune, P_mean 0.7, P_std 1.6, 50k iterations at batch 768 (App. D.4)"),
    Preset("img2vid_hires", 1.0, 1.6, 3e-5, 14, 576, 1024, steps=50000, paper_batch_size=768,
           description="image-to-video at 576x1024 (14 or 25 frames), P_mean 1.0, P_std 1.6, 50k iterations at "
                       "batch 768 (App. D.4)"),
    Preset("interpolation", 1.0, 1.2, 1e-4, 5, 576, 1024, task="interpolation", target_fps=28.0, steps=10000,
           paper_batch_size=256,
           description="frame interpolation from the base video model, 5 frames at 28 fps (4x a 7 fps video), "
                       "lr 1e-4, P_mean 1.0, P_std 1.2, 10k iterations at batch 256 (App. D.5)"),
    Preset("multiview", 0.7, 1.6, 1e-5, 21, 576, 576, task="multiview", steps=12000, paper_batch_size=16,
           description="multi-view finetune from SVD, lr 1e-5, 21 views at 576x576, 12k iterations at batch 16 "
                       "(App. D.6)"),
    Preset("camera_lora", 0.7, 1.6, 1e-4, 14, 320, 576, mode="lora", lora_rank=16, steps=5000,
           description="camera-motion LoRA, rank 16 in the temporal attention, 5k iterations (App. D.4.2)"),
)}


@dataclass
class TrainConfig:
    """Everything one training run needs; a preset fills what is not given (`TrainConfig.from_preset`)."""

    # what to train
    preset: str = "img2vid"
    mode: str = "full"  # lora | temporal | full
    task: str = "img2vid"
    # objective (App. D)
    p_mean: float = 0.7
    p_std: float = 1.6
    cond_aug_mean: float = -3.0  # log sigma of the conditioning-frame noise ~ N(-3, 0.5^2)
    cond_aug_std: float = 0.5
    cond_dropout: float = 0.15  # classifier-free guidance dropout
    # data
    num_frames: int = 14
    height: int = 320
    width: int = 576
    frame_stride: int = 0  # 0: chosen per clip so the sampled frames are close to target_fps
    target_fps: float = 7.0
    motion_scale: float = 32.0  # motion_bucket_id = clamp(round(motion * motion_scale), 0, 255)
    val_fraction: float = 0.1
    val_items: int = 4
    # optimisation
    lr: float = 3e-5
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 100
    steps: int = 1000
    batch_size: int = 1  # global batch (split over processes)
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    ema_decay: float = 0.9999
    lora_rank: int = 16
    lora_alpha: float = 0.0  # 0: alpha = rank (scale 1)
    lora_ff: bool = False  # also adapt the temporal feed-forward (svd_core.lora include_ff)
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    gradient_checkpointing: bool = False
    seed: int = 0
    # scale-out
    strategy: str = "auto"  # auto | ddp | fsdp (fsdp: full finetuning only)
    # outputs
    checkpoint_every: int = 500
    validate_every: int = 250
    sample_every: int = 0  # 0: samples at validation only when sample_steps > 0
    sample_steps: int = 0
    keep_checkpoints: int = 2
    name: str = "svd_train"

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> "TrainConfig":
        """The preset's values, then `overrides` (unknown keys are errors that name the key)."""
        if not isinstance(preset, str) or preset not in PRESETS:
            hint = suggest(preset, PRESETS) if isinstance(preset, str) else f"; expected one of {sorted(PRESETS)}"
            raise ConfigError(f"unknown preset {preset!r}{hint}")
        p = PRESETS[preset]
        base = cls(preset=preset, mode=p.mode, task=p.task, p_mean=p.p_mean, p_std=p.p_std, lr=p.lr,
                   num_frames=p.num_frames, height=p.height, width=p.width, lora_rank=p.lora_rank, steps=p.steps,
                   target_fps=p.target_fps)
        return base.override(**overrides)

    def override(self, **overrides: Any) -> "TrainConfig":
        known = [f.name for f in fields(self)]
        for key in overrides:
            if key not in known:
                raise ConfigError(f"unknown training setting {key!r}{suggest(key, known)}")
        cfg = replace(self, **{k: (tuple(v) if isinstance(v, list) else v) for k, v in overrides.items()})
        cfg.validate()
        return cfg

    def validate(self) -> None:
        def need(ok: bool, key: str, expected: str) -> None:
            if not ok:
                raise ConfigError(f"training setting {key}={getattr(self, key)!r} is invalid: expected {expected}")
        check_instance(self, "training setting", ConfigError)  # types first: bools are bools, numbers finite
        need(self.mode in MODES, "mode", f"one of {MODES}")
        need(self.task in TASKS, "task", f"one of {TASKS}")
        need(self.p_std > 0, "p_std", "> 0")
        need(0.0 <= self.cond_dropout < 1.0, "cond_dropout", "in [0, 1)")
        need(self.num_frames >= 1, "num_frames", ">= 1")
        for k in ("height", "width"):
            need(getattr(self, k) >= 64 and getattr(self, k) % 64 == 0, k, "a multiple of 64, at least 64")
        need(self.lr > 0, "lr", "> 0")
        need(self.steps >= 1, "steps", ">= 1")
        need(self.batch_size >= 1, "batch_size", ">= 1")
        need(self.grad_accum >= 1, "grad_accum", ">= 1")
        need(0.0 <= self.ema_decay < 1.0, "ema_decay", "in [0, 1)")
        need(self.lora_rank >= 1, "lora_rank", ">= 1")
        need(self.precision in ("fp32", "bf16"), "precision", "fp32 or bf16")
        need(self.strategy in ("auto", "ddp", "fsdp"), "strategy", "auto, ddp or fsdp")
        need(self.strategy != "fsdp" or self.mode == "full", "strategy", "fsdp only with mode=full")
        need(self.frame_stride >= 0, "frame_stride", ">= 0")
        need(self.target_fps > 0, "target_fps", "> 0")
        need(self.motion_scale > 0, "motion_scale", "> 0")
        need(self.checkpoint_every >= 1, "checkpoint_every", ">= 1")
        need(self.validate_every >= 0, "validate_every", ">= 0")
        need(0.0 <= self.val_fraction < 1.0, "val_fraction", "in [0, 1)")
        for k in ("warmup_steps", "val_items", "sample_every", "sample_steps", "seed"):
            need(getattr(self, k) >= 0, k, ">= 0")
        for k in ("weight_decay", "lora_alpha", "cond_aug_std"):
            need(getattr(self, k) >= 0, k, ">= 0")
        need(self.max_grad_norm > 0, "max_grad_norm", "> 0")
        need(self.keep_checkpoints >= 1, "keep_checkpoints", ">= 1")
        need(all(0.0 <= b < 1.0 for b in self.betas), "betas", "two numbers in [0, 1)")
        need(bool(self.name) and not any(c in self.name for c in '/\\:') and self.name not in (".", ".."), "name",
             "a plain file-name prefix (no folders)")

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        data = dict(data)
        preset = data.pop("preset", "img2vid")
        return cls.from_preset(preset, **data)


@dataclass
class RunConfig:
    """A headless run (`python -m svd_core train CONFIG`): model, data, output folder and the training settings."""

    model: str  # checkpoint path, or "tiny" / "tiny:SEED" / a TINY variant name for a random tiny model
    data: str  # curation manifest (.parquet) or a folder of clips
    out_dir: str
    train: TrainConfig = field(default_factory=TrainConfig)
    resume: bool = True
    lora_init: str = ""  # an existing LoRA file to continue from (mode lora)

    @classmethod
    def load(cls, path: str | os.PathLike, overrides: dict | None = None) -> "RunConfig":
        """Read a JSON or TOML file: top-level model/data/out_dir, and a [train] table (preset + overrides)."""
        p = Path(path)
        data = read_config(p, ConfigError, "training config")
        where = f"training config {str(p)!r}"
        train = data.pop("train", {})
        if not isinstance(train, dict):
            raise ConfigError(f"{where}: train = {train!r} must be a table of training settings (preset, steps, ...)")
        train = dict(train)
        for key, value in (overrides or {}).items():
            if key in ("model", "data", "out_dir", "resume", "lora_init"):
                data[key] = value
            else:
                train[key] = value
        check_types(cls, data, where, ConfigError)  # unknown keys (with a suggestion) and types of the run keys
        missing = [k for k in ("model", "data", "out_dir") if k not in data]
        if missing:
            raise ConfigError(f"{where}: missing {missing}; a run config needs model, data and out_dir")
        base = p.parent
        for key in ("data", "out_dir", "lora_init"):
            v = data.get(key)
            if v and not os.path.isabs(v):
                data[key] = str(base / v)
        m = data["model"]
        if not m.startswith("tiny") and not os.path.isabs(m):
            data["model"] = str(base / m)
        try:
            return cls(train=TrainConfig.from_dict(train), **data)
        except ConfigError as exc:
            raise ConfigError(f"{where} (or --set): {exc}") from None
