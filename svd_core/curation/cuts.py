"""Cascaded cut detection (paper Sec. 3.1, App. C): PySceneDetect detectors at three frame rates, merged."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Sequence

from ..progress import CancelFn, Cancelled, ProgressFn  # noqa: F401 (the engine's one protocol, re-exported)
from ..config_check import check_instance, check_types
from ..video_io import iter_frames, probe
from . import CurationError

DETECTORS = ("content", "adaptive", "threshold", "histogram")


@dataclass(frozen=True)
class CascadeLevel:
    """One detector of the cascade: a PySceneDetect detector fed frames sampled at `fps` (None = native rate)."""

    detector: str = "content"
    fps: float | None = None
    threshold: float = 27.0
    min_scene_len: float = 0.5  # seconds between two cuts of this level
    min_content_val: float = 15.0  # adaptive only: absolute floor on the content score

    def __post_init__(self):
        check_instance(self, "cascade level", CurationError)
        if self.detector not in DETECTORS:
            raise CurationError(f"cascade detector {self.detector!r} is unknown; expected one of {DETECTORS}")
        if self.fps is not None and self.fps <= 0:
            raise CurationError(f"cascade fps {self.fps} must be positive (or None for the native rate)")

    def build(self):
        """The PySceneDetect detector for this level."""
        from scenedetect.detectors import AdaptiveDetector, ContentDetector, HistogramDetector, ThresholdDetector

        msl = float(self.min_scene_len)
        if self.detector == "content":
            return ContentDetector(threshold=self.threshold, min_scene_len=msl)
        if self.detector == "adaptive":
            return AdaptiveDetector(adaptive_threshold=self.threshold, min_scene_len=msl,
                                    min_content_val=self.min_content_val)
        if self.detector == "histogram":
            return HistogramDetector(threshold=self.threshold, min_scene_len=msl)
        return ThresholdDetector(threshold=self.threshold, min_scene_len=msl)


# Paper-like defaults: hard cuts at the native rate, faster transitions at 8 fps, slow dissolves at 2 fps
# (a dissolve spread over a second becomes a jump between two samples half a second apart), and a
# brightness-threshold detector for fades to / from black.
DEFAULT_CASCADE: tuple[CascadeLevel, ...] = (
    CascadeLevel("content", None, 27.0, 0.5),
    CascadeLevel("adaptive", 8.0, 2.5, 0.5, 20.0),
    CascadeLevel("adaptive", 2.0, 1.5, 1.0, 20.0),
    CascadeLevel("threshold", None, 12.0, 0.5),
)
SINGLE_CONTENT: tuple[CascadeLevel, ...] = (CascadeLevel("content", None, 27.0, 0.5),)


def cascade_from_thresholds(hard_threshold: float = 27.0, mid_fps: float = 8.0, mid_threshold: float = 2.5,
                            slow_fps: float = 2.0, slow_threshold: float = 1.5,
                            fade_threshold: float = 12.0) -> tuple[CascadeLevel, ...]:
    """DEFAULT_CASCADE's four levels with other rates and thresholds (the curation node's inputs); a 0 rate or fade
    threshold drops that level."""
    levels = [CascadeLevel("content", None, hard_threshold, 0.5)]
    if mid_fps > 0:
        levels.append(CascadeLevel("adaptive", mid_fps, mid_threshold, 0.5, 20.0))
    if slow_fps > 0:
        levels.append(CascadeLevel("adaptive", slow_fps, slow_threshold, 1.0, 20.0))
    if fade_threshold > 0:
        levels.append(CascadeLevel("threshold", None, fade_threshold, 0.5))
    return tuple(levels)


def cascade_from_dicts(levels: Sequence[dict] | None) -> tuple[CascadeLevel, ...]:
    """Build a cascade from config dicts ({detector, fps, threshold, min_scene_len, min_content_val})."""
    if levels is None:
        return DEFAULT_CASCADE
    out = []
    for i, level in enumerate(levels):
        if not isinstance(level, dict):
            raise CurationError(f"cascade level {i} is {type(level).__name__}, expected a table like "
                                f"{{detector = 'content', fps = 8.0, threshold = 27.0}}")
        check_types(CascadeLevel, level, f"cascade level {i}", CurationError)
        out.append(CascadeLevel(**level))
    if not out:
        raise CurationError("cascade is empty; give at least one level")
    return tuple(out)


@dataclass
class CutResult:
    """Merged cut list of one video: times (s) and frame indices of the first frame of every new shot."""

    path: str
    fps: float
    frame_count: int
    duration: float
    cuts: list[float]
    cut_frames: list[int]
    per_level: list[list[int]] = field(default_factory=list)  # raw cut frames per cascade level

    def to_dict(self) -> dict:
        return asdict(self)

    def shots(self) -> list[tuple[int, int]]:
        """Shots as [start_frame, end_frame) ranges between consecutive cuts."""
        bounds = [0, *self.cut_frames, self.frame_count]
        return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


class _Level:
    """Feeds one detector the frames of its sampling rate and maps its cut timecodes back to native frames."""

    def __init__(self, spec: CascadeLevel, native_fps: float):
        from scenedetect.stats_manager import StatsManager

        self.spec = spec
        self.rate = float(native_fps if spec.fps is None or spec.fps >= native_fps else spec.fps)
        self.step = native_fps / self.rate
        self.detector = spec.build()
        self.stats = None
        if spec.detector in ("content", "adaptive") and self.step == 1.0:
            self.stats = StatsManager()  # native content scores, used to place coarse cuts on a frame
            self.detector.stats_manager = self.stats
        self.native_index: list[int] = []  # sample j -> native frame index
        self.next_pick = 0.0
        self.cuts: list[int] = []  # sample indices
        self.last_tc = None

    def wants(self, index: int) -> bool:
        if index + 0.5 < self.next_pick:
            return False
        self.next_pick += self.step
        return True

    def feed(self, index: int, bgr) -> None:
        from scenedetect.common import FrameTimecode

        j = len(self.native_index)
        self.native_index.append(index)
        self.last_tc = FrameTimecode(j, fps=self.rate)
        self.cuts += [tc.frame_num for tc in self.detector.process_frame(self.last_tc, bgr)]

    def finish(self) -> None:
        if self.last_tc is not None:
            self.cuts += [tc.frame_num for tc in self.detector.post_process(self.last_tc)]

    def native_score(self, index: int) -> float:
        from scenedetect.common import FrameTimecode
        from scenedetect.detectors import ContentDetector

        tc = FrameTimecode(index, fps=self.rate)
        key = ContentDetector.FRAME_SCORE_KEY
        if self.stats is None or not self.stats.metrics_exist(tc, [key]):
            return 0.0
        return float(self.stats.get_metrics(tc, [key])[0] or 0.0)


def detect_cuts(path: str | os.PathLike, cascade: Sequence[CascadeLevel] = DEFAULT_CASCADE, *,
                analysis_width: int = 256, merge_window: float = 0.5,
                progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> CutResult:
    """Run every cascade level over one decode of the video and merge the cuts (App. C)."""
    if not cascade:
        raise CurationError("cascade is empty; give at least one CascadeLevel")
    info = probe(path)
    levels = [_Level(spec, info.fps) for spec in cascade]
    total = max(info.frame_count, 1)
    seen = 0
    for index, _, bgr in iter_frames(path, width=analysis_width, fmt="bgr24"):
        for level in levels:
            if level.wants(index):
                level.feed(index, bgr)
        seen = index + 1
        if cancel is not None and index % 16 == 0 and cancel():
            raise Cancelled(f"cut detection of {str(path)!r} cancelled at frame {index}")
        if progress is not None and index % 25 == 0:
            progress(min(index, total), total)
    for level in levels:
        level.finish()
    frame_count = max(seen, 1)
    refine = next((lv for lv in levels if lv.stats is not None), None)

    candidates: list[tuple[int, float, int]] = []  # (native frame, -rate, cascade position)
    per_level: list[list[int]] = []
    for pos, level in enumerate(levels):
        frames = []
        for j in level.cuts:
            j = min(j, len(level.native_index) - 1)
            hi = level.native_index[j]
            if level.step > 1.0 and j > 0:  # coarse level: the change happened somewhere in (previous sample, hi]
                lo = level.native_index[j - 1] + 1
                if refine is not None:
                    hi = max(range(lo, hi + 1), key=refine.native_score)
                else:
                    hi = (lo + hi + 1) // 2
            if 0 < hi < frame_count:
                frames.append(hi)
        per_level.append(sorted(set(frames)))
        candidates += [(f, -level.rate, pos) for f in frames]

    # Merge: cuts closer than merge_window seconds are one cut; the finest-rate level places it.
    window = merge_window * info.fps
    merged: list[tuple[int, float, int]] = []
    for cand in sorted(candidates):
        if merged and cand[0] - merged[-1][0] < window:
            if (cand[1], cand[2]) < (merged[-1][1], merged[-1][2]):
                merged[-1] = cand
            continue
        merged.append(cand)
    cut_frames = [m[0] for m in merged]
    if progress is not None:
        progress(total, total)
    return CutResult(str(path), info.fps, frame_count, frame_count / info.fps,
                     [round(f / info.fps, 6) for f in cut_frames], cut_frames, per_level)
