"""Training of the SVD family (paper App. D): EDM objective, presets, cached data, LoRA / temporal / full
modes, EMA, resumable checkpoints, DDP / FSDP, used by `python -m svd_core train` and the training nodes."""
from .config import MODES, PRESETS, TASKS, ConfigError, Preset, RunConfig, TrainConfig
from .data import CachedDataset, ClipRecord, DataError, load_records, make_windows, motion_bucket, window_fps
from .objective import NoiseDistribution, edm_loss, edm_weight, sample_cond_aug
from .trainer import Interrupted, Trainer, TrainResult

__all__ = ["MODES", "PRESETS", "TASKS", "ConfigError", "Preset", "RunConfig", "TrainConfig", "CachedDataset",
           "ClipRecord", "DataError", "load_records", "make_windows", "motion_bucket", "window_fps", "NoiseDistribution",
           "edm_loss", "edm_weight", "sample_cond_aug", "Interrupted", "Trainer", "TrainResult"]
