"""Video and image files through PyAV / Pillow: mp4 (H.264), webm (VP9), gif, PNG sequences; written atomically."""
from __future__ import annotations

import os
import shutil
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

CONTAINERS = {".mp4": ("libx264", "yuv420p"), ".webm": ("libvpx-vp9", "yuv420p"), ".gif": ("gif", "rgb8")}


def load_image(path: "str | os.PathLike", keep_alpha: bool = False) -> torch.Tensor:
    """An image file -> 1 3 H W float in [0, 1] (RGB; alpha composited on white), or 1 4 H W RGBA when `keep_alpha`
    and the file has an alpha channel (SV3D inputs: the object is cropped by its alpha)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            if keep_alpha and (im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info):
                arr = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
                return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()  # h w c -> 1 c h w
            if im.mode in ("RGBA", "LA", "P"):
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im)
            arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except UnidentifiedImageError:
        raise ValueError(f"{path}: not a readable image (expected PNG, JPEG, WebP, ...)") from None
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()  # h w c -> 1 c h w


def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    """t 3 h w in [0, 1] -> t h w 3 uint8."""
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be (T, 3, H, W) in [0, 1]; got {tuple(frames.shape)}")
    return (frames.clamp(0, 1).permute(0, 2, 3, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()


def write_video(frames: torch.Tensor, path: "str | os.PathLike", fps: float = 7.0, crf: int = 18) -> Path:
    """Frames t 3 h w in [0, 1] -> `path` (.mp4, .webm, .gif, or a folder / `.png` for a PNG sequence)."""
    import av
    from PIL import Image

    path = Path(path)
    pixels = _to_uint8(frames)
    suffix = path.suffix.lower()
    if suffix in ("", ".png"):  # PNG sequence: a folder of frame_00000.png ...
        folder = path.with_suffix("") if suffix == ".png" else path
        tmp = Path(tempfile.mkdtemp(dir=folder.parent if folder.parent.exists() else None, prefix=f".{folder.name}."))
        for i, frame in enumerate(pixels):
            Image.fromarray(frame).save(tmp / f"frame_{i:05d}.png")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        return folder
    if suffix not in CONTAINERS:
        raise ValueError(f"unsupported output {path.name!r}: use .mp4, .webm, .gif or a folder / .png for PNG frames")
    codec, pix_fmt = CONTAINERS[suffix]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=suffix)
    os.close(fd)
    try:
        rate = Fraction(fps).limit_denominator(1000)
        with av.open(tmp, mode="w") as container:
            stream = container.add_stream(codec, rate=rate)
            stream.width, stream.height = pixels.shape[2], pixels.shape[1]
            stream.pix_fmt = pix_fmt
            if codec == "libx264":
                stream.options = {"crf": str(crf)}
            for frame in pixels:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_video(path: "str | os.PathLike") -> tuple[torch.Tensor, float]:
    """A video file -> (frames t 3 h w in [0, 1], fps)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        frames = [torch.from_numpy(f.to_ndarray(format="rgb24")) for f in container.decode(stream)]
    video = torch.stack(frames).permute(0, 3, 1, 2).float() / 255.0  # t h w c -> t c h w
    return video, fps
