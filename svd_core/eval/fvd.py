"""FVD: Frechet distance of I3D (or any pluggable extractor) feature statistics of two video sets."""
from __future__ import annotations

import logging
import os
from typing import Callable, Iterable

import torch

from ..video_io import list_videos, read_frames
from .features import ClipPreprocess, FeatureExtractor, preprocess_clip
from .frechet import FeatureStats, frechet_distance, stats_cache_key

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]  # (done, total)


def compute_stats(clips: Iterable, extractor: FeatureExtractor, pre: ClipPreprocess, batch_size: int = 8,
                  total: int | None = None, progress: Progress | None = None) -> FeatureStats:
    """Feature mean / covariance of a set of clips, each (t, h, w, 3) uint8 or float in [0, 1]."""
    stats, batch, done = FeatureStats(meta={"extractor": extractor.id, "preprocess": pre.to_dict()}), [], 0

    def flush():
        nonlocal done
        x = torch.stack(batch)  # b t c h w
        stats.append(extractor(x))
        done += len(batch)
        batch.clear()
        if progress:
            progress(done, total or done)

    for clip in clips:
        x = preprocess_clip(clip, pre)  # t c h w
        if batch and x.shape != batch[0].shape:
            raise ValueError(f"clips differ in shape after preprocessing: {tuple(x.shape)} vs "
                             f"{tuple(batch[0].shape)}; set a protocol / num_frames so all clips match")
        batch.append(x)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if stats.n < 2:
        raise ValueError(f"FVD needs at least 2 videos per set, got {stats.n}")
    return stats


def folder_stats(folder: str, extractor: FeatureExtractor, pre: ClipPreprocess, batch_size: int = 8,
                 cache_dir: str | None = None, progress: Progress | None = None) -> FeatureStats:
    """Statistics of every video in `folder`, read from / written to `cache_dir` when given (see `files_stats`)."""
    files = list_videos(folder, frame_folders=True)
    if len(files) < 2:
        raise ValueError(f"FVD needs at least 2 videos in {folder!r}, found {len(files)} "
                         "(video files or folders of frames)")
    stats = files_stats(files, extractor, pre, batch_size, cache_dir, progress,
                        name=os.path.basename(os.path.normpath(folder)))
    stats.meta["folder"] = os.path.abspath(folder)
    return stats


def files_stats(files: list[str], extractor: FeatureExtractor, pre: ClipPreprocess, batch_size: int = 8,
                cache_dir: str | None = None, progress: Progress | None = None, name: str = "videos") -> FeatureStats:
    """Statistics of the given video files / frame folders, read from / written to `cache_dir` when given.

    The cache file name hashes the file list (paths, sizes, mtimes), the extractor id and the preprocessing,
    so a changed video set or protocol recomputes instead of reusing stale statistics.
    """
    cache = None
    if cache_dir:
        key = stats_cache_key(files, extractor.id, pre.to_dict())
        cache = os.path.join(cache_dir, f"fvdstats-{name}-{key}.safetensors")
        if os.path.isfile(cache):
            log.info("FVD: reusing cached statistics %s", cache)
            return FeatureStats.load(cache)
    clips = (read_frames(f, num_frames=pre.num_frames, fps=pre.fps) for f in files)
    stats = compute_stats(clips, extractor, pre, batch_size, total=len(files), progress=progress)
    stats.meta["num_videos"] = len(files)
    if cache:
        stats.save(cache)
    return stats


def load_or_folder_stats(source: str, extractor: FeatureExtractor, pre: ClipPreprocess, **kw) -> FeatureStats:
    """`source` is a folder of videos or a `.safetensors` statistics file written earlier."""
    if os.path.isfile(source) and source.endswith(".safetensors"):
        stats = FeatureStats.load(source)
        if stats.meta.get("extractor") not in (None, extractor.id):
            raise ValueError(f"{source}: statistics were computed with extractor {stats.meta.get('extractor')!r}, "
                             f"not {extractor.id!r}; recompute them with the same I3D file")
        return stats
    return folder_stats(source, extractor, pre, **kw)


def fvd_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def fvd_folders(dir_a: str, dir_b: str, extractor: FeatureExtractor, pre: ClipPreprocess, **kw) -> float:
    """FVD between two folders of videos (or cached statistics files)."""
    return fvd_from_stats(load_or_folder_stats(dir_a, extractor, pre, **kw),
                          load_or_folder_stats(dir_b, extractor, pre, **kw))


def split_batch(frames: torch.Tensor, frames_per_video: int) -> list[torch.Tensor]:
    """A ComfyUI IMAGE batch (n*t, h, w, c) -> n clips (t, h, w, c)."""
    if frames.ndim != 4:
        raise ValueError(f"expected an IMAGE batch (frames, h, w, c), got shape {tuple(frames.shape)}")
    n = frames.shape[0]
    if frames_per_video < 1 or n % frames_per_video:
        raise ValueError(f"IMAGE batch of {n} frames does not split into videos of frames_per_video="
                         f"{frames_per_video}; set frames_per_video to the clip length (a divisor of {n})")
    return list(frames.reshape(n // frames_per_video, frames_per_video, *frames.shape[1:]))  # (n t) h w c -> n, t h w c


def fvd_tensors(clips_a, clips_b, extractor: FeatureExtractor, pre: ClipPreprocess, batch_size: int = 8,
                progress: Progress | None = None) -> float:
    """FVD between two lists of clips (t, h, w, 3)."""
    total = len(clips_a) + len(clips_b)
    a = compute_stats(clips_a, extractor, pre, batch_size, total,
                      progress=(lambda d, t: progress(d, total)) if progress else None)
    b = compute_stats(clips_b, extractor, pre, batch_size, total,
                      progress=(lambda d, t: progress(len(clips_a) + d, total)) if progress else None)
    return fvd_from_stats(a, b)

