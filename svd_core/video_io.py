"""Media files, the one owner: videos and images read, written and probed through PyAV / Pillow, and matplotlib
figures rendered to PNG. Every other module (CLI, evaluation, curation, training) reads and writes media here.

One container table, `CONTAINERS`, and one extension list, its keys `VIDEO_EXTENSIONS`: what the CLI writes
(`--out`), what the evaluation and the curation list and read, what training scans for. One codec per container:
H.264 (libx264, CRF) in .mp4 / .m4v / .mov / .mkv / .avi, palette GIF in .gif and VP9 in .webm, not VP8: at the same
quality VP9 files are smaller, and VP9 is the WebM codec MP4 can hold, so the curation cuts our .webm into .mp4 clips
by packet copy (paper App. C), which VP8 refuses.

Outputs never destroy what we did not write (issue 12): `check_output` refuses an existing file that is not a
video of the kind we write (by extension and content) and a folder holding anything but our frame files; files
are written through `svd_core.atomic` (temp file, then rename, normal permissions). Input images are checked
for size from their header before decoding, and every Pillow mode is scaled to [0, 1] correctly. A file that is
missing, corrupt or not a video gives one `MediaError` naming it, never a PyAV traceback.
"""
from __future__ import annotations

import io
import os
import re
import warnings
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from .atomic import atomic_dir, atomic_path, atomic_write_bytes, is_partial, temp_path_for


def _ftyp(b: bytes) -> bool:  # ISO-BMFF (mp4, m4v, mov): an `ftyp` box first
    return b[4:8] == b"ftyp"


def _ebml(b: bytes) -> bool:  # Matroska / WebM: the EBML header
    return b[:4] == b"\x1a\x45\xdf\xa3"


def _png(b: bytes) -> bool:
    return b[:8] == b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Container:
    """How we write one container: codec and pixel format, the HTTP Content-Type, and how our files start (the
    content signature `check_output` asks of an existing file before replacing it)."""

    codec: str
    pix_fmt: str
    mime: str
    starts: Callable[[bytes], bool]


CONTAINERS = {
    ".mp4": Container("libx264", "yuv420p", "video/mp4", _ftyp),
    ".m4v": Container("libx264", "yuv420p", "video/mp4", _ftyp),  # Apple's MP4 flavour (ffmpeg muxer `ipod`)
    ".mov": Container("libx264", "yuv420p", "video/quicktime", _ftyp),
    ".mkv": Container("libx264", "yuv420p", "video/x-matroska", _ebml),
    ".webm": Container("libvpx-vp9", "yuv420p", "video/webm", _ebml),
    ".avi": Container("libx264", "yuv420p", "video/x-msvideo", lambda b: b[:4] == b"RIFF" and b[8:12] == b"AVI "),
    ".gif": Container("gif", "rgb8", "image/gif", lambda b: b[:6] in (b"GIF87a", b"GIF89a")),
}
VIDEO_EXTENSIONS = tuple(CONTAINERS)  # THE list of video extensions: written, read, listed and scanned
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
               ".bmp": "image/bmp"}
IMAGE_EXTENSIONS = tuple(IMAGE_TYPES)  # images read as views / frames of a frame folder
# Content-Type by extension; the voting server sends nothing else
MEDIA_TYPES = {**{ext: c.mime for ext, c in CONTAINERS.items()}, **IMAGE_TYPES}
FRAMES_SUFFIXES = ("", ".png")  # a folder (or NAME.png -> folder NAME) of frame_00000.png ...
FRAME_NAME = re.compile(r"^frame_\d{5,}\.png$")
MAX_IMAGE_PIXELS = 50_000_000  # input images above 50 megapixels are refused before decoding (the model needs ~0.6)
MIN_FPS, MAX_FPS = 0.01, 1000.0  # frame rates the containers' time bases represent (1/100 s .. 1 ms per frame)
MAX_GIF_FPS = 100.0  # GIF frame delays are whole centiseconds


class MediaError(ValueError):
    """A media file that cannot be read (missing, corrupt, no video stream) or frames that cannot be written; the
    message names the file and what is expected."""


class OutputError(MediaError):
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
            raise MediaError(f"{path}: the image has {size}, over the input limit of {max_pixels / 1e6:.0f} "
                             f"megapixels; downscale it first (the model works at about 1024x576)") from None
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise MediaError(f"{path}: the image is {w}x{h} ({w * h / 1e6:.0f} megapixels), over the input limit of "
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


def _decode_image(path: "str | os.PathLike", max_pixels: int, keep_alpha: bool) -> np.ndarray:
    """An image file -> h w c float32 in [0, 1] (see `_to_rgb_array`), size-checked before decoding."""
    from PIL import UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        im = _open_checked(path, max_pixels)
    except UnidentifiedImageError:
        raise MediaError(f"{path}: not a readable image (expected PNG, JPEG, WebP, ...)") from None
    except OSError as exc:
        raise MediaError(f"{path}: the image cannot be read ({exc})") from None
    with im:
        try:
            im.load()
            arr = _to_rgb_array(im, keep_alpha)
        except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated / corrupt data, unsupported modes
            raise MediaError(f"{path}: the image cannot be decoded ({type(exc).__name__}: {exc}); re-save it as "
                             f"PNG or JPEG") from None
    return arr


def load_image(path: "str | os.PathLike", max_pixels: int = MAX_IMAGE_PIXELS,
               keep_alpha: bool = False) -> torch.Tensor:
    """An image file -> 1 3 H W float in [0, 1] (RGB; alpha composited on white; 16-bit and float images scaled
    from their own range), or 1 4 H W RGBA when `keep_alpha` and the file has an alpha channel (SV3D inputs: the
    object is cropped by its alpha). Images over `max_pixels` are refused from the header, before decoding."""
    arr = _decode_image(path, max_pixels, keep_alpha)
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None].contiguous()  # h w c -> 1 c h w


def read_image(path: "str | os.PathLike", max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """An image file -> h w 3 uint8 RGB, decoded like `load_image` (evaluation views, frames of a frame folder)."""
    arr = _decode_image(path, max_pixels, keep_alpha=False)
    return (arr * 255.0 + 0.5).astype(np.uint8)  # exact for 8-bit images: v / 255 * 255 + 0.5 floors to v


# --------------------------------------------------------------------------------------------- output checks


def _sniff(path: Path, suffix: str) -> bool:
    """Whether the file at `path` starts like a `suffix` file we write (an empty file holds nothing to lose)."""
    with open(path, "rb") as f:
        head = f.read(16)
    return not head or (_png(head) if suffix == ".png" else CONTAINERS[suffix].starts(head))


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
        raise OutputError(f"{option}={str(path)!r}: unsupported extension {path.suffix!r}; use "
                          f"{', '.join(VIDEO_EXTENSIONS)}, or a folder (or NAME.png) for PNG frames")
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


def _to_uint8(frames: "torch.Tensor | np.ndarray") -> np.ndarray:
    """t 3 h w float in [0, 1] (a tensor), or t h w 3 uint8 pixels as `read_frames` returns them -> t h w 3 uint8."""
    if isinstance(frames, np.ndarray) and frames.dtype == np.uint8:
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"uint8 frames must be (T, H, W, 3); got {frames.shape}")
        return np.ascontiguousarray(frames)
    frames = torch.as_tensor(frames)
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


def write_video(frames: "torch.Tensor | np.ndarray", path: "str | os.PathLike", fps: float = 7.0, crf: int = 18,
                option: str = "path") -> Path:
    """Frames (t 3 h w float in [0, 1], or t h w 3 uint8) -> `path`: a `VIDEO_EXTENSIONS` file in its container's
    codec, or a folder / `.png` for a PNG sequence. yuv420p codecs need even sizes: an odd last row / column is
    cropped.

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

    spec = CONTAINERS[target.suffix.lower()]
    if spec.pix_fmt == "yuv420p":  # 2x2 chroma blocks: even sizes only
        h, w = pixels.shape[1:3]
        if h < 2 or w < 2:
            raise ValueError(f"frames of {w}x{h} pixels cannot be written as {target.suffix}: {spec.codec} needs at "
                             f"least 2x2; write .gif or PNG frames")
        pixels = np.ascontiguousarray(pixels[:, : h - h % 2, : w - w % 2])
    with atomic_path(target, keep_suffix=True) as tmp:  # the temp name keeps the extension: it picks the muxer
        rate = Fraction(fps).limit_denominator(1000)
        with av.open(str(tmp), mode="w") as container:
            stream = container.add_stream(spec.codec, rate=rate)
            stream.width, stream.height = pixels.shape[2], pixels.shape[1]
            stream.pix_fmt = spec.pix_fmt
            if spec.codec == "libx264":
                stream.options = {"crf": str(crf)}
            for frame in pixels:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return target


# --------------------------------------------------------------------------------------------- reading, probing


@dataclass(frozen=True)
class VideoInfo:
    """Container-level facts about one video stream (the curation's Table 1 columns come from these)."""

    path: str
    fps: float
    frame_count: int
    duration: float
    width: int
    height: int
    codec: str

    def to_dict(self) -> dict:
        return asdict(self)


def open_video(path: "str | os.PathLike"):
    """The PyAV container of an existing file with a video stream; anything else is one MediaError."""
    import av

    p = Path(path)
    if not p.is_file():
        raise MediaError(f"video {str(p)!r} does not exist or is not a file; pass an existing video path")
    try:
        container = av.open(str(p))
    except Exception as exc:  # noqa: BLE001 -- av raises many classes (InvalidDataError, OSError, ...)
        raise MediaError(f"video {str(p)!r} could not be opened by PyAV ({exc}); expected a video file "
                         f"({' '.join(VIDEO_EXTENSIONS)})") from None
    if not container.streams.video:
        container.close()
        raise MediaError(f"{str(p)!r} has no video stream; expected a video file")
    return container


def stream_fps(stream) -> Fraction:
    """The frame rate of a PyAV video stream (average, else guessed, else base rate)."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise MediaError(f"cannot tell the frame rate of {stream.container.name!r}")
    return Fraction(rate)


def _decoded(path, frames: Iterator) -> Iterator:
    """`frames` (a PyAV decode) with a corrupt stream turned into one MediaError naming `path`."""
    import av

    try:
        yield from frames
    except av.error.FFmpegError as exc:
        raise MediaError(f"could not decode video {str(path)!r}: {exc}") from None


def probe(path: "str | os.PathLike") -> VideoInfo:
    """Read fps, frame count, duration and resolution; counts packets when the header has no frame count."""
    with open_video(path) as container:
        stream = container.streams.video[0]
        fps = stream_fps(stream)
        frames = int(stream.frames or 0)
        if frames <= 0:  # some containers (webm, mkv) do not store a count: demux and count
            frames = sum(1 for pk in _decoded(path, container.demux(stream)) if pk.size > 0)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1e6
        else:
            duration = frames / float(fps)
        return VideoInfo(str(path), float(fps), frames, duration, stream.codec_context.width,
                         stream.codec_context.height, stream.codec_context.name)


def keyframe_times(path: "str | os.PathLike") -> list[float]:
    """Presentation times (s, relative to the stream start) of every keyframe, read by demuxing only (App. C)."""
    with open_video(path) as container:
        stream = container.streams.video[0]
        start = stream.start_time or 0
        times = [float((pk.pts - start) * stream.time_base) for pk in _decoded(path, container.demux(stream))
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


def iter_frames(path: "str | os.PathLike", *, fps: float | None = None, width: int | None = None,
                short_side: int | None = None, fmt: str = "rgb24") -> Iterator[tuple[int, float, np.ndarray]]:
    """Yield (frame index, time in s, h w c uint8 frame), subsampled to `fps` (nearest frames) and resized."""
    with open_video(path) as container:
        stream = container.streams.video[0]
        native = float(stream_fps(stream))
        start = stream.start_time or 0
        step = None if fps is None or fps >= native else native / fps
        next_pick = 0.0
        for index, frame in enumerate(_decoded(path, container.decode(stream))):
            t = float((frame.pts - start) * stream.time_base) if frame.pts is not None else index / native
            if step is not None:
                if index + 0.5 < next_pick:
                    continue
                next_pick += step
            w, h = _scaled_size(frame.width, frame.height, width, short_side)
            yield index, t, frame.reformat(width=w, height=h, format=fmt).to_ndarray()


def read_frames_at(path: "str | os.PathLike", indices: Sequence[int], *,
                   width: int | None = None) -> list[np.ndarray]:
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
        raise MediaError(f"video {str(path)!r} decodes to no frames; expected at least one frame")
    return [got.get(i, last[1]) for i in indices]  # an index past the end reads the last frame


def first_middle_last(frame_count: int) -> list[int]:
    """Frame indices of the first, middle and last frame (App. C: text, CLIP and aesthetics use these)."""
    if frame_count <= 0:
        raise MediaError(f"frame_count {frame_count} must be positive")
    return [0, (frame_count - 1) // 2, frame_count - 1]


def read_frames(path: "str | os.PathLike", num_frames: int | None = None, fps: float | None = None) -> np.ndarray:
    """A video file or a frame folder (`list_images`, sorted) -> t h w 3 uint8 RGB. With `fps`, frames are picked
    at times i / fps (nearest earlier frame), so clips recorded at other rates are resampled; `num_frames` keeps
    the first frames."""
    if os.path.isdir(path):
        frames = np.stack([read_image(f) for f in list_images(path)])  # t h w c
        return frames[:num_frames] if num_frames else frames
    frames, times = [], []
    for _, t, frame in iter_frames(path):
        frames.append(frame)
        times.append(t)
        if fps is None and num_frames and len(frames) >= num_frames:
            break
    if not frames:
        raise MediaError(f"video {str(path)!r} has no decodable frames")
    video = np.stack(frames)  # t h w c
    if fps is not None:
        times_arr = np.asarray(times) - times[0]
        n = num_frames or int(np.floor(times_arr[-1] * fps)) + 1
        idx = np.searchsorted(times_arr, np.arange(n) / fps + 1e-6, side="right") - 1
        video = video[np.clip(idx, 0, len(frames) - 1)]
    elif num_frames:
        video = video[:num_frames]
    return video


def read_video(path: "str | os.PathLike") -> tuple[torch.Tensor, float]:
    """A video file -> (frames t 3 h w float in [0, 1], fps)."""
    pixels = torch.from_numpy(read_frames(path))
    return pixels.permute(0, 3, 1, 2).float() / 255.0, probe(path).fps  # t h w c -> t c h w


# --------------------------------------------------------------------------------------------- listing


def list_videos(folder: "str | os.PathLike", recursive: bool = False, frame_folders: bool = False) -> list[str]:
    """Sorted `VIDEO_EXTENSIONS` files in `folder` (case-insensitive; below it too when `recursive`); with
    `frame_folders`, a sub-folder holding images counts as one video. Our unfinished writes (`atomic`) are not."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"video folder {str(root)!r} does not exist or is not a folder; pass a folder that "
                                f"holds videos ({' '.join(VIDEO_EXTENSIONS)})")
    out = [p for p in (root.rglob("*") if recursive else root.iterdir()) if not is_partial(p.name) and (
           (p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS) or (frame_folders and p.is_dir() and list_images(p)))]
    return sorted(str(p) for p in out)


def list_images(folder: "str | os.PathLike") -> list[str]:
    """`IMAGE_EXTENSIONS` files in `folder`, sorted by name (multi-view sets, frame folders)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder {str(folder)!r} does not exist or is not a folder")
    return [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.lower().endswith(IMAGE_EXTENSIONS)]


# --------------------------------------------------------------------------------------------- figures


def new_figure(figsize: tuple[float, float] = (6, 4), dpi: int = 100):
    """A matplotlib figure on the Agg canvas (no GUI backend, safe off the main thread) and its one axes."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def figure_to_rgb(fig, path: "str | os.PathLike | None" = None) -> np.ndarray:
    """Lay out and render a `new_figure` -> h w 3 uint8; with `path`, also written there as PNG atomically."""
    fig.tight_layout()
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()  # h w 3
    if path is not None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        atomic_write_bytes(path, buf.getvalue())
    return rgb
