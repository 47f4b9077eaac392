"""Video reading for curation (PyAV): probing, frame sampling at a rate, keyframe timestamps (paper App. C)."""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")


class CurationError(ValueError):
    """Bad input to a curation stage; the message names the value, what was expected and what fixes it."""


@dataclass(frozen=True)
class VideoInfo:
    """Container-level facts about one video stream: the Table 1 columns come from these."""

    path: str
    fps: float
    frame_count: int
    duration: float
    width: int
    height: int
    codec: str

    def to_dict(self) -> dict:
        return asdict(self)


def _open(path: str | os.PathLike):
    import av

    p = Path(path)
    if not p.is_file():
        raise CurationError(f"video {str(p)!r} does not exist or is not a file; pass an existing video path")
    try:
        container = av.open(str(p))
    except Exception as exc:  # av raises many subclasses (InvalidDataError, ...)
        raise CurationError(f"video {str(p)!r} could not be opened by PyAV ({exc}); expected a video file") from exc
    if not container.streams.video:
        container.close()
        raise CurationError(f"{str(p)!r} has no video stream; expected a video file")
    return container


def _stream_fps(stream) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise CurationError(f"cannot tell the frame rate of {stream.container.name!r}")
    return Fraction(rate)


def probe(path: str | os.PathLike) -> VideoInfo:
    """Read fps, frame count, duration and resolution; counts packets when the header has no frame count."""
    with _open(path) as container:
        stream = container.streams.video[0]
        fps = _stream_fps(stream)
        frames = int(stream.frames or 0)
        if frames <= 0:  # some containers (webm, mkv) do not store a count: demux and count
            frames = sum(1 for pk in container.demux(stream) if pk.size > 0)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1e6
        else:
            duration = frames / float(fps)
        return VideoInfo(str(path), float(fps), frames, duration, stream.codec_context.width,
                         stream.codec_context.height, stream.codec_context.name)


def keyframe_times(path: str | os.PathLike) -> list[float]:
    """Presentation times (s, relative to the stream start) of every keyframe, read by demuxing only (App. C)."""
    with _open(path) as container:
        stream = container.streams.video[0]
        start = stream.start_time or 0
        times = [float((pk.pts - start) * stream.time_base) for pk in container.demux(stream)
                 if pk.pts is not None and pk.is_keyframe]
    return sorted(times)


def _scaled_size(width: int, height: int, target_width: int | None, short_side: int | None) -> tuple[int, int]:
    if short_side is not None:
        s = short_side / min(width, height)
    elif target_width is not None:
        s = target_width / width
    else:
        return width, height
    return max(2, int(round(width * s))), max(2, int(round(height * s)))


def iter_frames(path: str | os.PathLike, *, fps: float | None = None, width: int | None = None,
                short_side: int | None = None, fmt: str = "rgb24") -> Iterator[tuple[int, float, np.ndarray]]:
    """Yield (frame index, time in s, h w c uint8 frame), subsampled to `fps` (nearest frames) and resized."""
    with _open(path) as container:
        stream = container.streams.video[0]
        native = float(_stream_fps(stream))
        start = stream.start_time or 0
        step = None if fps is None or fps >= native else native / fps
        next_pick = 0.0
        for index, frame in enumerate(container.decode(stream)):
            t = float((frame.pts - start) * stream.time_base) if frame.pts is not None else index / native
            if step is not None:
                if index + 0.5 < next_pick:
                    continue
                next_pick += step
            w, h = _scaled_size(frame.width, frame.height, width, short_side)
            yield index, t, frame.reformat(width=w, height=h, format=fmt).to_ndarray()


def read_frames_at(path: str | os.PathLike, indices: Sequence[int], *, width: int | None = None) -> list[np.ndarray]:
    """Decode the frames with the given indices (e.g. first/middle/last), RGB h w c uint8."""
    wanted = sorted(set(int(i) for i in indices))
    got: dict[int, np.ndarray] = {}
    last = None
    for index, _, img in iter_frames(path, width=width):
        last = (index, img)
        if index in wanted:
            got[index] = img
            if len(got) == len(wanted):
                break
    if last is None:
        raise CurationError(f"video {str(path)!r} decodes to no frames; expected at least one frame")
    return [got.get(i, last[1]) for i in indices]  # an index past the end reads the last frame


def first_middle_last(frame_count: int) -> list[int]:
    """Frame indices of the first, middle and last frame (App. C: text, CLIP and aesthetics use these)."""
    if frame_count <= 0:
        raise CurationError(f"frame_count {frame_count} must be positive")
    return [0, (frame_count - 1) // 2, frame_count - 1]


def list_videos(folder: str | os.PathLike, extensions: Sequence[str] = VIDEO_EXTENSIONS,
                recursive: bool = True) -> list[str]:
    """Sorted video files under a folder (case-insensitive extension match)."""
    root = Path(folder)
    if not root.is_dir():
        raise CurationError(f"video folder {str(root)!r} does not exist; pass a folder that holds videos")
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    pattern = "**/*" if recursive else "*"
    return sorted(str(p) for p in root.glob(pattern) if p.is_file() and p.suffix.lower() in exts)


def source_id(path: str | os.PathLike) -> str:
    """Stable id of a source video: file stem plus a hash of its absolute path (names clips and work files)."""
    p = Path(path).resolve()
    digest = hashlib.sha1(str(p).encode()).hexdigest()[:8]
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in p.stem)[:48]
    return f"{stem}-{digest}"
