"""Video sets on disk for evaluation: list, decode (PyAV) and write clips; frame folders count as videos."""
from __future__ import annotations

import os

import numpy as np

from ..atomic import atomic_path

VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".gif")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def list_videos(folder: str) -> list[str]:
    """Video files and frame folders (a sub-folder of images is one video) in `folder`, sorted by name."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"video folder {folder!r} does not exist or is not a folder")
    out = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if os.path.isfile(path) and name.lower().endswith(VIDEO_EXTS):
            out.append(path)
        elif os.path.isdir(path) and any(f.lower().endswith(IMAGE_EXTS) for f in os.listdir(path)):
            out.append(path)
    return out


def list_images(folder: str) -> list[str]:
    """Image files in `folder`, sorted by name (multi-view sets: one file per view)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder {folder!r} does not exist or is not a folder")
    return [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.lower().endswith(IMAGE_EXTS)]


def read_image(path: str) -> np.ndarray:
    """(h, w, 3) uint8 RGB."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def read_video(path: str, num_frames: int | None = None, fps: float | None = None) -> np.ndarray:
    """Decode to (t, h, w, 3) uint8 RGB; with `fps`, frames are picked at times i / fps (nearest earlier
    frame), so clips recorded at other rates are resampled; `num_frames` keeps the first frames."""
    if os.path.isdir(path):
        frames = np.stack([read_image(f) for f in list_images(path)])  # t h w c
        return frames[:num_frames] if num_frames else frames
    import av

    frames, times = [], []
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                t = frame.time if frame.time is not None else len(times) / float(stream.average_rate or 25)
                times.append(float(t))
                if fps is None and num_frames and len(frames) >= num_frames:
                    break
    except av.error.FFmpegError as exc:
        raise ValueError(f"could not decode video {path!r}: {exc}") from exc
    if not frames:
        raise ValueError(f"video {path!r} has no decodable frames")
    video = np.stack(frames)  # t h w c
    if fps is not None:
        times_arr = np.asarray(times) - times[0]
        n = num_frames or int(np.floor(times_arr[-1] * fps)) + 1
        want = np.arange(n) / fps
        idx = np.searchsorted(times_arr, want + 1e-6, side="right") - 1
        video = video[np.clip(idx, 0, len(frames) - 1)]
    elif num_frames:
        video = video[:num_frames]
    return video


def write_video(path: str, frames: np.ndarray, fps: float = 8, codec: str | None = None) -> None:
    """Encode (t, h, w, 3) uint8 frames; the codec follows the extension (.webm: VP8, else H.264);
    written to a temp file, then renamed."""
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"write_video: expected (t, h, w, 3) frames, got shape {frames.shape}")
    if frames.dtype != np.uint8:
        frames = (np.clip(frames, 0, 1) * 255 + 0.5).astype(np.uint8)
    ext = os.path.splitext(path)[1].lower()
    codec = codec or {".webm": "libvpx", ".gif": "gif"}.get(ext, "libx264")
    h, w = frames.shape[1:3]
    if codec != "gif" and (h % 2 or w % 2):
        frames = frames[:, : h - h % 2, : w - w % 2]  # yuv420p needs even sizes
    with atomic_path(path, keep_suffix=True) as tmp:  # the temp name keeps the extension: it picks the muxer
        with av.open(str(tmp), mode="w", format={".webm": "webm", ".gif": "gif"}.get(ext, None)) as out:
            stream = out.add_stream(codec, rate=int(round(fps)))
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "rgb8" if codec == "gif" else "yuv420p"
            for f in frames:
                out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
            out.mux(stream.encode(None))
