"""The curation pipeline on Ray Data (paper Sec. 3 at scale): the source list as a dataset, one map per stage; the
rows go back to `pipeline.run`, which writes the outputs as for a local run (`pipeline.finalize`)."""
from __future__ import annotations

import os
from pathlib import Path

from .config import CurationConfig
from .cuts import Cancelled
from .stages import CaptionStage, ClipStage, MotionStage, TextStage, build_stages, cut_and_clip

# Model stages run in one actor each (their models load once); a fraction of a CPU each so that on a
# 2-CPU machine the read / clip / motion tasks are never starved by actors holding every CPU.
ACTOR_CPUS = 0.25


def _clip_rows(row: dict, cfg: CurationConfig) -> list[dict]:
    return cut_and_clip(row["source"], cfg)


def _motion(row: dict, cfg: CurationConfig) -> dict:
    return MotionStage(cfg)(row)


def ensure_ray(cfg: CurationConfig):
    """Connect to `ray_address`, or start a local Ray with `ray_num_cpus` CPUs and no dashboard."""
    import ray

    if not ray.is_initialized():
        pkg_root = str(Path(__file__).resolve().parents[2])  # workers import svd_core from here
        env = {"PYTHONPATH": os.pathsep.join(p for p in (pkg_root, os.environ.get("PYTHONPATH")) if p)}
        if cfg.ray_address:
            ray.init(address=cfg.ray_address, runtime_env={"env_vars": env}, log_to_driver=False)
        else:
            ray.init(num_cpus=cfg.ray_num_cpus, include_dashboard=False, runtime_env={"env_vars": env},
                     log_to_driver=False)
    return ray


def ray_rows(cfg: CurationConfig, progress=None, cancel=None) -> list[dict]:
    """Every clip's row after every stage. Same stages and work files as `pipeline.run_local`, so a restart in either
    mode reprocesses nothing already written."""
    ray = ensure_ray(cfg)
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress is None  # our own bar when the caller gives a progress callback
    sources = cfg.source_list()
    clips = ray.data.from_items([{"source": s} for s in sources]).flat_map(
        _clip_rows, fn_kwargs={"cfg": cfg}).materialize()
    total = clips.count()
    if progress is not None:
        progress(0, total)
    ds = clips
    for stage in build_stages(cfg):
        if isinstance(stage, MotionStage):
            ds = ds.map(_motion, fn_kwargs={"cfg": cfg})
        else:
            cls = {"text": TextStage, "captions": CaptionStage, "clip": ClipStage}[stage.name]
            ds = ds.map(cls, fn_constructor_args=(cfg,), concurrency=1, num_cpus=ACTOR_CPUS)
    rows = []
    for row in ds.iter_rows():
        rows.append(dict(row))
        if progress is not None:
            progress(len(rows), total)
        if cancel is not None and cancel():
            raise Cancelled(f"curation cancelled after {len(rows)} of {total} clips (finished work is kept)")
    for r in rows:  # numpy arrays from Arrow back to plain lists for Parquet / JSON
        if "clip_embedding" in r and r["clip_embedding"] is not None:
            r["clip_embedding"] = [float(x) for x in r["clip_embedding"]]
    return rows
