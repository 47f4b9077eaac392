"""Keyframe-aware clipping (paper App. C): snap shot bounds to keyframes and cut clips by packet copy."""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..atomic import atomic_path
from ..video_io import keyframe_times, open_video, stream_fps
from . import CurationError
from .cuts import Cancelled


def source_id(path: str | os.PathLike) -> str:
    """Stable id of a source video: file stem plus a hash of its absolute path (names clips and work files)."""
    p = Path(path).resolve()
    digest = hashlib.sha1(str(p).encode()).hexdigest()[:8]
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in p.stem)[:48]
    return f"{stem}-{digest}"


@dataclass
class ClipSpec:
    """One clip of a source: [start, end) in seconds and frames, both on keyframes of the source."""

    source: str
    index: int
    start: float
    end: float
    start_frame: int
    end_frame: int
    path: str = ""

    @property
    def clip_id(self) -> str:
        return Path(self.path).stem if self.path else f"{source_id(self.source)}_{self.index:04d}"

    def to_dict(self) -> dict:
        return {**asdict(self), "clip_id": self.clip_id}


def snap_shots(cut_frames: Sequence[int], keyframes: Sequence[int], frame_count: int,
               min_frames: int = 1) -> list[tuple[int, int]]:
    """Shots between cuts, each start snapped forward and each end snapped back to a keyframe (never across a cut)."""
    keys = sorted(set(int(k) for k in keyframes if 0 <= k < frame_count)) + [frame_count]
    bounds = [0, *sorted(int(c) for c in cut_frames if 0 < c < frame_count), frame_count]
    out = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        start = next((k for k in keys if k >= a), frame_count)  # first keyframe inside the shot
        end = max((k for k in keys if k <= b), default=0)  # last keyframe (or the end) not past the next cut
        if end - start >= max(min_frames, 1):
            out.append((start, end))
    return out


_OWN_CONTAINER = {"gif": ".gif", "vp8": ".webm"}  # codecs MP4 cannot hold: their clips keep their container
_MUXERS = {".gif": "gif", ".webm": "webm", ".mp4": "mp4"}


def clip_suffix(src: str | os.PathLike) -> str:
    """The container of a source's clips: .mp4 (H.264, VP9, MPEG-4, ... by packet copy); GIF and VP8 sources, which
    MP4 cannot hold, give .gif / .webm clips."""
    with open_video(src) as container:
        return _OWN_CONTAINER.get(container.streams.video[0].codec_context.name, ".mp4")


def _packet_copy(src: str, dst: str, start_frame: int, end_frame: int) -> int:
    """Copy the packets of frames [start_frame, end_frame) (keyframe aligned) into `dst`; returns packets written."""
    import av

    with open_video(src) as inp:
        ist = inp.streams.video[0]
        fps = stream_fps(ist)
        t0 = ist.start_time or 0
        tb = ist.time_base
        to_pts = lambda f: t0 + int(round(f / fps / tb))  # noqa: E731
        start_pts, end_pts = to_pts(start_frame), to_pts(end_frame)
        tol = int(round(0.5 / fps / tb))  # half a frame, in stream ticks
        inp.seek(start_pts, stream=ist, backward=True, any_frame=False)
        with av.open(dst, "w", format=_MUXERS.get(Path(dst).suffix.lower(), "mp4")) as out:
            ost = out.add_stream_from_template(ist)
            started, written, offset = False, 0, None
            for pk in inp.demux(ist):
                if pk.dts is None and pk.pts is None:
                    continue  # demuxer flush packet
                if not started:
                    if not (pk.is_keyframe and pk.pts is not None and pk.pts >= start_pts - tol):
                        continue
                    started = True
                elif pk.is_keyframe and pk.pts is not None and pk.pts >= end_pts - tol:
                    break  # next GOP starts at (or after) the clip end: everything before it is complete
                if offset is None:
                    offset = min(pk.pts, pk.dts if pk.dts is not None else pk.pts)
                pk.pts = None if pk.pts is None else pk.pts - offset
                pk.dts = None if pk.dts is None else pk.dts - offset
                pk.stream = ost
                out.mux(pk)
                written += 1
    return written


def write_clip(src: str, dst: str, start_frame: int, end_frame: int) -> str:
    """Write one clip atomically (temp file in the same folder, then rename); the source is only read."""
    dst_p = Path(dst)
    dst_p.parent.mkdir(parents=True, exist_ok=True)
    if dst_p.resolve() == Path(src).resolve():
        raise CurationError(f"clip path {dst!r} is the source itself; choose another output folder")
    with atomic_path(dst_p, keep_suffix=True) as tmp:  # the temp name keeps the clip's extension
        if _packet_copy(src, str(tmp), start_frame, end_frame) == 0:
            raise CurationError(f"no packets between frames {start_frame} and {end_frame} of {src!r}")
    return str(dst_p)


def clip_video(src: str, cut_frames: Sequence[int], fps: float, frame_count: int, out_dir: str | os.PathLike, *,
               keyframes: Sequence[float] | None = None, min_duration: float = 1.0,
               progress: Callable[[int, int], None] | None = None,
               cancel: Callable[[], bool] | None = None) -> list[ClipSpec]:
    """Cut `src` at keyframe-snapped shot bounds into `out_dir/<source id>/<source id>_NNNN.mp4` (App. C; GIF
    and VP8 sources: .gif / .webm, see `clip_suffix`).

    Clips shorter than `min_duration` seconds are dropped; existing complete clips are kept (resumable)."""
    if min_duration < 0:
        raise CurationError(f"min_duration {min_duration} must be >= 0 seconds")
    key_t = keyframe_times(src) if keyframes is None else keyframes
    key_f = [int(round(t * fps)) for t in key_t]
    shots = snap_shots(cut_frames, key_f, frame_count, min_frames=max(1, int(round(min_duration * fps))))
    sid = source_id(src)
    folder, suffix = Path(out_dir) / sid, clip_suffix(src)
    specs = []
    for k, (a, b) in enumerate(shots):
        if cancel is not None and cancel():
            raise Cancelled(f"clipping of {src!r} cancelled after {k} clips")
        dst = folder / f"{sid}_{k:04d}{suffix}"
        if not dst.exists():
            write_clip(src, str(dst), a, b)
        specs.append(ClipSpec(str(src), k, a / fps, b / fps, a, b, str(dst)))
        if progress is not None:
            progress(k + 1, len(shots))
    return specs
