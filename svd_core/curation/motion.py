"""Motion score (paper App. C): OpenCV Farneback flow at 2 fps, flow maps with a 16 px short side, averaged."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..video_io import iter_frames
from . import CurationError
from .cuts import Cancelled


@dataclass(frozen=True)
class FlowPass:
    """One Farneback pass: frames sampled at `fps`, flow computed at `compute_short_side` px, reported at `map_short_side`."""

    fps: float = 2.0
    compute_short_side: int = 16
    map_short_side: int = 16
    levels: int = 1
    winsize: int = 5


COARSE = FlowPass()  # the paper's pass: flow maps of 16 px short side
FINE = FlowPass(fps=2.0, compute_short_side=128, levels=3, winsize=15)  # optional finer pass, same units


def _flow(prev: np.ndarray, nxt: np.ndarray, spec: FlowPass) -> np.ndarray:
    import cv2

    # h w 2 flow in pixels of the compute resolution
    return cv2.calcOpticalFlowFarneback(prev, nxt, None, pyr_scale=0.5, levels=spec.levels, winsize=spec.winsize,
                                        iterations=3, poly_n=5, poly_sigma=1.1, flags=0)


def _to_map(flow: np.ndarray, spec: FlowPass) -> np.ndarray:
    """Resize a flow field to the map resolution (short side `map_short_side`), vectors rescaled to map pixels."""
    import cv2

    h, w = flow.shape[:2]
    if min(h, w) == spec.map_short_side:
        return flow
    s = spec.map_short_side / min(h, w)
    size = (max(1, int(round(w * s))), max(1, int(round(h * s))))
    return cv2.resize(flow, size, interpolation=cv2.INTER_AREA) * s  # h' w' 2, in map pixels


def flow_magnitudes(path: str | os.PathLike, spec: FlowPass = COARSE, cancel=None) -> np.ndarray:
    """Per-pair mean flow magnitude (t-1,) over the sampled frames of one clip."""
    import cv2

    if spec.compute_short_side < spec.map_short_side:
        raise CurationError(f"compute_short_side {spec.compute_short_side} must be >= map_short_side "
                            f"{spec.map_short_side}")
    mags, prev = [], None
    for index, _, rgb in iter_frames(path, fps=spec.fps, short_side=spec.compute_short_side):
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        if prev is not None:
            fmap = _to_map(_flow(prev, gray, spec), spec)  # h w 2
            mags.append(float(np.linalg.norm(fmap, axis=-1).mean()))  # mean over space
        prev = gray
        if cancel is not None and cancel():
            raise Cancelled(f"motion scoring of {str(path)!r} cancelled at frame {index}")
    return np.asarray(mags, dtype=np.float64)


def motion_score(path: str | os.PathLike, spec: FlowPass = COARSE, cancel=None) -> float:
    """Flow magnitude averaged over time and space (App. C); 0.0 for a clip with fewer than two samples."""
    mags = flow_magnitudes(path, spec, cancel)
    return float(mags.mean()) if mags.size else 0.0


def motion_scores(path: str | os.PathLike, fine: bool = False, cancel=None) -> dict[str, float]:
    """The paper's coarse score, plus the finer pass when asked: {'motion': .., 'motion_fine': ..}."""
    out = {"motion": motion_score(path, COARSE, cancel)}
    if fine:
        out["motion_fine"] = motion_score(path, FINE, cancel)
    return out
