"""Pipeline stages (paper App. C), each resumable: results go to one JSON file per unit, written atomically."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..video_io import first_middle_last, probe, read_frames_at
from .clipping import clip_video, source_id
from .config import CurationConfig
from .cuts import cascade_from_dicts, detect_cuts
from .manifest import atomic_write_bytes


def _load_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _save_json(path: Path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj).encode())


def cut_and_clip(source: str, cfg: CurationConfig, progress=None, cancel=None) -> list[dict]:
    """Detect cuts, clip by packet copy, probe each clip; one manifest row per clip. Done sources are read back."""
    cached = _load_json(cfg.work_dir / "clips" / f"{source_id(source)}.json")
    if cached is not None:
        return cached
    cuts = detect_cuts(source, cascade_from_dicts(cfg.cascade), analysis_width=cfg.analysis_width,
                       merge_window=cfg.merge_window, progress=progress, cancel=cancel)
    return clip_rows(source, cuts.cut_frames, cuts.fps, cuts.frame_count, cfg, cancel=cancel)


def detect_many(sources, cascade, progress=None, cancel=None) -> list[dict]:
    """Cuts of several videos (`CutResult.to_dict()` each), with progress per video and cancel."""
    out = []
    for i, source in enumerate(sources):
        out.append(detect_cuts(source, cascade, cancel=cancel).to_dict())
        if progress is not None:
            progress(i + 1, len(sources))
    return out


def clip_many(cuts, cfg: CurationConfig, progress=None, cancel=None) -> list[dict]:
    """`clip_rows` of every video's cuts (`detect_many`'s dicts): one manifest row per clip, cached per video."""
    rows: list[dict] = []
    for i, c in enumerate(cuts):
        rows += clip_rows(c["path"], c["cut_frames"], c["fps"], c["frame_count"], cfg, cancel=cancel)
        if progress is not None:
            progress(i + 1, len(cuts))
    return rows


def clip_rows(source: str, cut_frames, fps: float, frame_count: int, cfg: CurationConfig, cancel=None) -> list[dict]:
    """Clip one source at its cuts (keyframe-snapped, packet copy) and describe each clip as a manifest row."""
    done = cfg.work_dir / "clips" / f"{source_id(source)}.json"
    cached = _load_json(done)
    if cached is not None:
        return cached
    specs = clip_video(source, cut_frames, fps, frame_count, cfg.clip_dir, min_duration=cfg.min_duration,
                       cancel=cancel)
    rows = []
    for spec in specs:
        info = probe(spec.path)
        rows.append({"clip_id": spec.clip_id, "source": str(source), "start": spec.start, "end": spec.end,
                     "start_frame": spec.start_frame, "end_frame": spec.end_frame, "path": spec.path,
                     "duration": info.frame_count / info.fps, "frame_count": info.frame_count, "fps": info.fps,
                     "width": info.width, "height": info.height})
    _save_json(done, rows)  # written last: its presence means every clip file of this source is complete
    return rows


class Stage:
    """One annotation stage: `compute(row) -> new columns`, cached per clip under work/<name>/<clip id>.json."""

    name = "stage"

    def __init__(self, cfg: CurationConfig):
        self.cfg = cfg

    def compute(self, row: dict) -> dict:
        raise NotImplementedError

    def __call__(self, row: dict) -> dict:
        path = self.cfg.work_dir / self.name / f"{row['clip_id']}.json"
        result = _load_json(path)
        if result is None:
            result = self.compute(row)
            _save_json(path, result)
        return {**row, **result}


class MotionStage(Stage):
    """Farneback motion score (and the optional finer pass)."""

    name = "motion"

    def compute(self, row):
        from .motion import motion_scores

        return motion_scores(row["path"], fine=self.cfg.motion_fine)


class TextStage(Stage):
    """CRAFT text-area ratio on the first/middle/last frames."""

    name = "text"
    _detector = None

    def compute(self, row):
        from .text_area import CraftTextDetector, text_area_score

        if self._detector is None:
            self._detector = CraftTextDetector(self.cfg.craft_weights, self.cfg.device, self.cfg.craft_canvas)
        return text_area_score(self._detector, row["path"])


class CaptionStage(Stage):
    """CoCa caption of the middle frame, plus the video-captioner and LLM-merge hooks."""

    name = "captions"
    _coca = None

    def compute(self, row):
        from .captions import CocaCaptioner, caption_clip, load_hook

        if self._coca is None and self.cfg.coca_model:
            self._coca = CocaCaptioner(self.cfg.coca_model, self.cfg.coca_weights, self.cfg.device,
                                       self.cfg.caption_method, self.cfg.caption_max_len)
        return caption_clip(row["path"], self._coca, load_hook(self.cfg.video_caption_hook),
                            load_hook(self.cfg.llm_merge_hook))


class ClipStage(Stage):
    """CLIP embeddings of first/middle/last frames, aesthetics score and CLIP score to each caption."""

    name = "clip"
    _models = None

    def compute(self, row):
        from .clip_models import ClipEmbedder, aesthetic_scores, clip_similarity, load_aesthetic_mlp

        if self._models is None:
            emb = ClipEmbedder(self.cfg.clip_model, self.cfg.clip_weights, self.cfg.device)
            mlp = load_aesthetic_mlp(self.cfg.aesthetic_weights, self.cfg.device) if self.cfg.aesthetic_weights \
                else None
            self._models = (emb, mlp)
        emb, mlp = self._models
        frames = read_frames_at(row["path"], first_middle_last(int(row["frame_count"])))
        image_embs = emb.embed_images(frames)  # 3 d
        mean = image_embs.mean(axis=0)
        out = {"clip_embedding": (mean / max(np.linalg.norm(mean), 1e-12)).astype(np.float32).tolist()}
        if mlp is not None:
            out["aesthetic"] = float(aesthetic_scores(mlp, image_embs).mean())
        captions = {k: v for k, v in row.items() if k.startswith("caption_") and isinstance(v, str) and v}
        if captions:
            sims = clip_similarity(image_embs, emb.embed_texts(list(captions.values())))
            for (key, _), s in zip(captions.items(), sims):
                out["clip_score_" + key[len("caption_"):]] = float(s)
            out["clip_score"] = float(np.mean(sims))
        return out


def build_stages(cfg: CurationConfig) -> list[Stage]:
    """The annotation stages a config turns on, in dependency order (captions before CLIP score)."""
    stages: list[Stage] = []
    if cfg.motion:
        stages.append(MotionStage(cfg))
    if cfg.text:
        stages.append(TextStage(cfg))
    if cfg.coca_model or cfg.video_caption_hook:
        stages.append(CaptionStage(cfg))
    if cfg.clip_model:
        stages.append(ClipStage(cfg))
    return stages
