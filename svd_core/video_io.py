"""Video and image files through PyAV / Pillow: mp4 (H.264), webm (VP9), gif, PNG sequences.

Outputs never destroy what we did not write (issue 12): `check_output` refuses an existing file that is not a
video of the kind we write (by extension and content) and a folder holding anything but our frame files; files
are written through `svd_core.atomic` (temp file, then rename, normal permissions). Input images are checked
for size from their header before decoding, and every Pillow mode is scaled to [0, 1] correctly.
"""
from __future__ import annotations

import os
import re
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_dir, atomic_path, is_partial, temp_path_for

CONTAINERS = {".mp4": ("libx264", "yuv420p"), ".webm": ("libvpx-vp9", "yuv420p"), ".gif": ("gif", "rgb8")}
FRAMES_SUFFIXES = ("", ".png")  # a folder (or NAME.png -> folder NAME) of frame_00000.png ...
FRAME_NAME = re.compile(r"^frame_\d{5,}\.png$")
# content signatures of what we write: ISO-BMFF `ftyp` box at offset 4, EBML header, GIF header, PNG signature
_SIGNATURES = {".mp4": lambda b: b[4:8] == b"ftyp", ".webm": lambda b: b[:4] == b"\x1a\x45\xdf\xa3",
               ".gif": lambda b: b[:6] in (b"GIF87a", b"GIF89a"), ".png": lambda b: b[:8] == b"\x89PNG\r\n\x1a\n"}
MAX_IMAGE_PIXELS = 50_000_000  # input images above 50 megapixels are refused before decoding (the model needs ~0.6)
MIN_FPS, MAX_FPS = 0.01, 1000.0  # frame rates the containers' time bases represent (1/100 s .. 1 ms per frame)
MAX_GIF_FPS = 100.0  # GIF frame delays are whole centiseconds


class OutputError(ValueError):
    """An output path we must not or cannot write; the message names the option that sets it."""


# --------------------------------------------------------------------------------------------- input images


def _open_checked(path: Path, max_pixels: int):
    """Open (header only) and refuse images over `max_pixels` before any pixel is decoded."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(path)
        except Image.DecompressionBombError as exc:  # Pillow's own hard limit (~179 MP), hit inside open()
            found = re.search(r"\((\d+) pixels\)", str(exc))
            size = f"{int(found[1]) / 1e6:.0f} megapixels" if found else "more than Pillow's limit"
            raise ValueError(f"{path}: the image has {size}, over the input limit of {max_pixels / 1e6:.0f} "
                             f"megapixels; downscale it first (the model works at about 1024x576)") from None
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise ValueError(f"{path}: the image is {w}x{h} ({w * h / 1e6:.0f} megapixels), over the input limit of "
                         f"{max_pixels / 1e6:.0f} megapixels; downscale it first (the model works at about 1024x576)")
    return im


def _full_scale(mode: str, values: np.ndarray) -> float:
    """The value of white in a single-channel high-bit-depth image: 16-bit PNG/TIFF land in I;16* or I (0..65535),
    32-bit integers use their full range; float images are [0, 1] unless their values say 0..255 or 0..65535."""
    top = float(values.max()) if values.size else 0.0
    if mode.startswith("I;16"):
        return 65535.0
    if mode == "I":
        return 65535.0 if top <= 65535 else 2.0 ** 31 - 1
    return 1.0 if top <= 1.0 else 255.0 if top <= 255.0 else 65535.0  # F


def _has_alpha(im) -> bool:
    return im.mode in ("RGBA", "LA", "La", "RGBa", "PA") or (im.mode == "P" and "transparency" in im.info)


def _to_rgb_array(im, keep_alpha: bool = False) -> np.ndarray:
    """A decoded Pillow image of any mode -> h w 3 float32 in [0, 1], transparency composited on white; h w 4 RGBA
    when `keep_alpha` and the image has an alpha channel."""
    from PIL import Image

    if keep_alpha and _has_alpha(im):
        return np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        gray = np.asarray(im).astype(np.float32)  # h w, the image's own integer / float values
        gray = np.clip(gray / _full_scale(im.mode, gray), 0.0, 1.0)
        return np.repeat(gray[..., None], 3, axis=2)
    if _has_alpha(im):
        im = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im)
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0  # 1, L, P, CMYK, YCbCr, RGB, ...


def load_image(path: "str | os.PathLike", max_pixels: int = MAX_IMAGE_PIXELS,
               keep_alpha: bool = False) -> torch.Tensor:
    """An image file -> 1 3 H W float in [0, 1] (RGB; alpha composited on white; 16-bit and float images scaled
    from their own range), or 1 4 H W RGBA when `keep_alpha` and the file has an alpha channel (SV3D inputs: the
    object is cropped by its alpha). Images over `max_pixels` are refused from the header, before decoding."""
    from PIL import UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        im = _open_checked(path, max_pixels)
    except UnidentifiedImageError:
        raise ValueError(f"{path}: not a readable image (expected PNG, JPEG, WebP, ...)") from None
    except OSError as exc:
        raise ValueError(f"{path}: the image cannot be read ({exc})") from None
    with im:
        try:
            im.load()
            arr = _to_rgb_array(im, keep_alpha)
        except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated / corrupt data, unsupported modes
            raise ValueError(f"{path}: the image cannot be decoded ({type(exc).__name__}: {exc}); re-save it as "
                             f"PNG or JPEG") from None
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None].contiguous()  # h w c -> 1 c h w


# --------------------------------------------------------------------------------------------- output checks


def _sniff(path: Path, suffix: str) -> bool:
    """Whether the file at `path` starts like a `suffix` file we write (an empty file holds nothing to lose)."""
    with open(path, "rb") as f:
        head = f.read(16)
    return not head or _SIGNATURES[suffix](head)


def _writable_ancestor(path: Path, option: str) -> None:
    """The nearest existing folder above `path` must take new files: probed by creating and removing one of our
    clearly named temp files there (permission bits alone say nothing for root, read-only mounts or /proc)."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{option}={str(path)!r}: {str(parent)!r} is not a folder; choose another {option}")
    probe = temp_path_for(parent / path.name)
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{option}={str(path)!r}: cannot write in {str(parent)!r} ({exc.strerror or exc}); choose "
                          f"another {option}") from None


def output_target(path: "str | os.PathLike") -> tuple[str, Path]:
    """("frames", folder) or ("video", file) for an output path, by its extension (no file-system access)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in FRAMES_SUFFIXES:
        return "frames", path.with_suffix("") if suffix == ".png" else path
    return "video", path


def check_output(path: "str | os.PathLike", option: str = "path") -> tuple[str, Path]:
    """Refuse, before any work, an output we must not write: an unknown extension, an unwritable folder, an
    existing file that is not a video we could have written, a folder holding anything but our frames, a link.
    Returns `output_target(path)`. Messages name `option` (e.g. `--out`)."""
    path = Path(path)
    kind, target = output_target(path)
    if kind == "video" and path.suffix.lower() not in CONTAINERS:
        raise OutputError(f"{option}={str(path)!r}: unsupported extension {path.suffix!r}; use .mp4, .webm, .gif, or a "
                          f"folder (or NAME.png) for PNG frames")
    if not target.name or target.name in (".", "..") or is_partial(target.name):
        raise OutputError(f"{option}={str(path)!r}: name a new file or folder to write, not {str(target)!r}")
    if target.is_symlink():
        raise OutputError(f"{option}={str(path)!r}: {str(target)!r} is a symbolic link; name the real file or folder")
    if target.exists():
        if kind == "video":
            if not target.is_file():
                raise OutputError(f"{option}={str(path)!r} exists and is not a file; choose another {option}")
            if not _sniff(target, target.suffix.lower()):
                raise OutputError(f"{option}={str(path)!r} exists and is not a {target.suffix.lower()} video we could "
                                  f"have written; it is left alone: choose another {option} or move it yourself")
        else:
            if not target.is_dir():
                raise OutputError(f"{option}={str(path)!r}: {str(target)!r} exists and is not a folder; PNG frames go "
                                  f"into a new or empty folder: choose another {option}")
            foreign = [p.name for p in target.iterdir()
                       if not (FRAME_NAME.match(p.name) and p.is_file() and not p.is_symlink() and _sniff(p, ".png"))]
            if foreign:
                raise OutputError(f"{option}={str(path)!r}: the folder {str(target)!r} holds {len(foreign)} entries "
                                  f"that are not our frame files (e.g. {sorted(foreign)[0]!r}); PNG frames go into a new or "
                                  f"empty folder, or one holding only frame_NNNNN.png: choose another {option}")
    _writable_ancestor(target / "frame_00000.png" if kind == "frames" and target.is_dir() else target, option)
    return kind, target


def check_fps(fps, option: str = "fps", path: "str | os.PathLike | None" = None) -> float:
    """A frame rate the containers can represent: a finite number in [MIN_FPS, MAX_FPS] (GIF: MAX_GIF_FPS)."""
    try:
        v = float(fps)
    except (TypeError, ValueError):
        raise ValueError(f"{option}={fps!r} is not a number; expected frames per second in "
                         f"[{MIN_FPS:g}, {MAX_FPS:g}]") from None
    if not (MIN_FPS <= v <= MAX_FPS):  # NaN fails too
        raise ValueError(f"{option}={fps!r} is impossible: expected frames per second in [{MIN_FPS:g}, {MAX_FPS:g}]")
    if path is not None and Path(path).suffix.lower() == ".gif" and v > MAX_GIF_FPS:
        raise ValueError(f"{option}={fps!r} is impossible for a .gif: GIF frame delays are whole centiseconds, at "
                         f"most {MAX_GIF_FPS:g} fps; lower the rate (--out-fps) or write .mp4 / .webm")
    return v


# --------------------------------------------------------------------------------------------- writing


def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    """t 3 h w in [0, 1] -> t h w 3 uint8."""
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be (T, 3, H, W) in [0, 1]; got {tuple(frames.shape)}")
    return (frames.clamp(0, 1).permute(0, 2, 3, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()


def _write_frames(pixels: np.ndarray, folder: Path) -> Path:
    """PNG frames into `folder`: written in a temp folder first; a new folder is one rename, an existing one (empty
    or holding only our frames, see `check_output`) gets each frame by rename and loses only stale frame files."""
    from PIL import Image

    names = [f"frame_{i:05d}.png" for i in range(len(pixels))]
    with atomic_dir(folder) as tmp:
        for name, frame in zip(names, pixels):
            Image.fromarray(frame).save(tmp / name)
        if not folder.exists():
            os.replace(tmp, folder)
            return folder
        for name in names:
            os.replace(tmp / name, folder / name)
    keep = set(names)
    for old in folder.iterdir():  # our frames of a longer earlier run (check_output allowed nothing else)
        if old.name not in keep and FRAME_NAME.match(old.name) and old.is_file() and not old.is_symlink():
            old.unlink()
    return folder


def write_video(frames: torch.Tensor, path: "str | os.PathLike", fps: float = 7.0, crf: int = 18,
                option: str = "path") -> Path:
    """Frames t 3 h w in [0, 1] -> `path` (.mp4, .webm, .gif, or a folder / `.png` for a PNG sequence).

    Refuses (OutputError naming `option`) what `check_output` refuses; the file appears complete or not at all."""
    kind, target = check_output(path, option)
    fps = check_fps(fps, "fps", target)
    pixels = _to_uint8(frames)
    try:
        return _write_frames(pixels, target) if kind == "frames" else _write_container(pixels, target, fps, crf)
    except OSError as exc:  # disk full, permissions changed since the check: nothing half-written is left
        raise OutputError(f"{option}={str(path)!r}: writing failed ({exc.strerror or exc}); nothing was "
                          f"written") from None


def _write_container(pixels: np.ndarray, target: Path, fps: float, crf: int) -> Path:
    import av

    codec, pix_fmt = CONTAINERS[target.suffix.lower()]
    with atomic_path(target, keep_suffix=True) as tmp:  # the temp name keeps the extension: it picks the muxer
        rate = Fraction(fps).limit_denominator(1000)
        with av.open(str(tmp), mode="w") as container:
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
    return target


def read_video(path: "str | os.PathLike") -> tuple[torch.Tensor, float]:
    """A video file -> (frames t 3 h w in [0, 1], fps)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        frames = [torch.from_numpy(f.to_ndarray(format="rgb24")) for f in container.decode(stream)]
    video = torch.stack(frames).permute(0, 3, 1, 2).float() / 255.0  # t h w c -> t c h w
    return video, fps
