"""Training data: clips from a curation manifest or a folder, fixed-length windows with their real fps and motion
score, and a per-dataset cache of VAE latents and CLIP embeddings so epochs never re-encode (paper App. D)."""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from ..loading import save_tensors
from ..video_io import VIDEO_EXTENSIONS, iter_frames, list_videos, probe

CACHE_VERSION = 1


class DataError(ValueError):
    """Bad training data: the message names the file or column and what is expected."""


@dataclass(frozen=True)
class ClipRecord:
    """One clip: its file, real frame rate, motion score (Farneback, App. C), optional camera, and its captions:
    `captions` the synthetic ones by manifest column ((column, text) pairs of `CAPTION_WEIGHTS`, sampled per
    example by `sample_caption`), `caption` a plain one (a manifest's `caption` column, a folder clip's .txt)
    used when the clip has no synthetic caption."""

    path: str
    fps: float
    motion: float
    caption: str = ""
    clip_id: str = ""
    elevation: float | None = None
    captions: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Window:
    """`num_frames` frames of a clip, every `stride`-th from `start`: fps of the window = clip fps / stride."""

    record: ClipRecord
    start: int
    stride: int
    num_frames: int

    @property
    def fps(self) -> float:
        return self.record.fps / self.stride

    @property
    def key(self) -> str:
        st = os.stat(self.record.path)
        text = json.dumps([os.path.realpath(self.record.path), st.st_size, st.st_mtime_ns, self.start, self.stride,
                           self.num_frames])
        return hashlib.sha1(text.encode()).hexdigest()[:20]


# --------------------------------------------------------------------------------------------- micro-conditioning


def window_fps(fps: float) -> float:
    """A window's frame rate as training batches carry it (frames per second, as generation takes it; the
    conditioner embeds it, `Conditioner.micro_vector`); at least 1 fps."""
    if fps < 1:
        raise DataError(f"a clip window has {fps:.3f} fps; at least 1 fps is needed (lower frame_stride)")
    return float(fps)


def motion_bucket(motion: float, scale: float = 32.0) -> float:
    """motion_bucket_id = clamp(round(scale * motion), 0, 255).

    `motion` is the curation motion score: mean Farneback flow magnitude in pixels of a 16 px short-side map
    between frames 0.5 s apart (App. C). With the default scale 32, 4 px (a quarter of the map per half second)
    reaches the middle bucket 127 (the sampling default) and 8 px saturates at 255."""
    return float(min(255, max(0, round(scale * float(motion)))))


def sample_caption(captions: Mapping[str, str], fallback: str = "", generator: torch.Generator | None = None) -> str:
    """One caption for one training example, as the paper samples them (App. C / E.2.2): CoCa 0.5, video captioner
    (V-BLIP) 0.25, LLM 0.25 (`CAPTION_WEIGHTS`), renormalised over the captions this clip has; `fallback` when it
    has none. One uniform draw from `generator` (the example's own: reproducible, independent of batching)."""
    from ..curation.captions import CAPTION_WEIGHTS

    present = [(c, w) for c, w in CAPTION_WEIGHTS.items() if captions.get(c)]
    if not present:
        return fallback
    u = float(torch.rand(1, generator=generator)) * sum(w for _, w in present)
    for column, w in present:
        u -= w
        if u < 0:
            return str(captions[column])
    return str(captions[present[-1][0]])  # u == total up to rounding


# --------------------------------------------------------------------------------------------- sources


def records_from_manifest(path: str | os.PathLike, motion_column: str = "motion") -> list[ClipRecord]:
    """Clips of a curation manifest (Parquet: path, fps, motion, the `CAPTION_WEIGHTS` caption columns the caption
    stage writes, optionally a plain `caption` column; `svd_core.curation.manifest`)."""
    from ..curation.captions import CAPTION_WEIGHTS
    from ..curation.manifest import read_manifest

    rows = read_manifest(path)
    if not rows:
        raise DataError(f"manifest {str(path)!r} has no clips")
    base = Path(path).parent
    out = []
    for i, r in enumerate(rows):
        for col in ("path", "fps"):
            if r.get(col) is None:
                raise DataError(f"manifest {str(path)!r} row {i}: column {col!r} is missing")
        motion = r.get(motion_column)
        if motion is None:
            raise DataError(f"manifest {str(path)!r} row {i} ({r.get('clip_id', '')}): no {motion_column!r} score; "
                            f"run the motion stage of the curation (Curation: Motion Score) first")
        p = r["path"] if os.path.isabs(r["path"]) else str(base / r["path"])
        captions = tuple((c, str(r[c])) for c in CAPTION_WEIGHTS if r.get(c))
        out.append(ClipRecord(p, float(r["fps"]), float(motion), str(r.get("caption") or ""),
                              str(r.get("clip_id", i)), r.get("elevation"), captions))
    return out


def records_from_folder(folder: str | os.PathLike, cancel: Callable[[], bool] | None = None) -> list[ClipRecord]:
    """Every video of a folder as a clip; fps from the container, motion scored like the curation (App. C)."""
    from ..curation.motion import motion_score

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"clip folder {str(folder)!r} does not exist")
    files = [Path(f) for f in list_videos(folder, recursive=True)]
    if not files:
        raise DataError(f"no videos ({' '.join(VIDEO_EXTENSIONS)}) in {str(folder)!r}")
    out = []
    for p in files:
        cap = p.with_suffix(".txt")
        out.append(ClipRecord(str(p), probe(p).fps, motion_score(p, cancel=cancel),
                              cap.read_text().strip() if cap.is_file() else "", p.stem))
    return out


def load_records(source: str | os.PathLike, cancel=None) -> list[ClipRecord]:
    """A manifest (.parquet) or a folder of clips."""
    s = str(source)
    if s.endswith(".parquet"):
        return records_from_manifest(s)
    return records_from_folder(s, cancel)


def make_windows(records: Sequence[ClipRecord], num_frames: int, frame_stride: int = 0, target_fps: float = 7.0,
                 max_per_clip: int = 0) -> list[Window]:
    """Non-overlapping windows of every clip; stride `frame_stride`, or round(fps / target_fps) when 0."""
    windows = []
    for r in records:
        stride = frame_stride or max(1, round(r.fps / target_fps))
        span = (num_frames - 1) * stride + 1
        count = probe(r.path).frame_count
        starts = list(range(0, count - span + 1, span))
        if max_per_clip:
            starts = starts[:max_per_clip]
        windows += [Window(r, s, stride, num_frames) for s in starts]
    if not windows:
        raise DataError(f"no clip has {num_frames} frames at the chosen stride; use fewer frames or a smaller "
                        f"frame_stride / larger target_fps")
    return windows


def _fit(frame: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """3 h w in [0, 1] -> 3 height width: aspect-preserving resize (antialiased) and centre crop."""
    h, w = frame.shape[-2:]
    s = max(height / h, width / w)
    nh, nw = max(height, round(h * s)), max(width, round(w * s))
    x = F.interpolate(frame[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)[0]
    top, left = (nh - height) // 2, (nw - width) // 2
    return x[:, top:top + height, left:left + width]


def read_window(window: Window, height: int, width: int) -> torch.Tensor:
    """The window's frames, t 3 height width in [0, 1] (decoded by `video_io`, resized and centre-cropped)."""
    wanted = {window.start + i * window.stride: i for i in range(window.num_frames)}
    frames: list[torch.Tensor | None] = [None] * window.num_frames
    for index, _, frame in iter_frames(window.record.path):
        if index in wanted:
            rgb = torch.from_numpy(frame).permute(2, 0, 1).float() / 255.0  # h w c -> c h w
            frames[wanted[index]] = _fit(rgb, height, width)
        if index >= max(wanted):
            break
    if any(f is None for f in frames):
        raise DataError(f"{window.record.path}: could not decode frames {sorted(wanted)} (the clip is shorter)")
    return torch.stack(frames)


# --------------------------------------------------------------------------------------------- cache


def model_fingerprint(model) -> str:
    """Hash of the encoders the cache depends on (VAE encoder, CLIP image tower) and the latent scale."""
    h = hashlib.sha1(str(model.spec.scale_factor).encode())
    text = getattr(model.spec, "cond_mode", "image") == "text"
    for module in (model.first_stage_model,) + (() if text else (model.conditioner.clip,)):
        for name, t in sorted(module.state_dict().items()):
            if "decoder" in name:
                continue
            h.update(name.encode())
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes()[:1 << 16])
            h.update(str(float(t.detach().float().sum())).encode())
    return h.hexdigest()[:16]


@torch.no_grad()
def encode_window(model, frames: torch.Tensor) -> dict[str, torch.Tensor]:
    """t 3 H W in [0, 1] -> scaled VAE latents (t 4 h w), CLIP embeddings of the first and last frame (2 d) and
    those two frames as uint8 (2 3 H W; noised and VAE-encoded per step for the concat, App. D.2)."""
    from ..pipeline import encode

    latents = encode(model, frames[None])  # 1 t 3 H W -> (1 t) 4 h w
    ends = torch.stack([frames[0], frames[-1]])  # 2 3 H W
    if getattr(model.spec, "cond_mode", "image") == "text":  # text-to-video: no image tower, captions instead
        clip = torch.zeros(2, 1)
    else:
        clip_mod = model.conditioner.clip
        dev = next(clip_mod.parameters()).device
        dt = next(clip_mod.parameters()).dtype
        clip = clip_mod((ends * 2 - 1).to(dev, dt))[:, 0].float().cpu()  # 2 1 d -> 2 d
    images = (ends * 255).round().clamp(0, 255).to(torch.uint8)
    return {"latents": latents.float().contiguous(), "clip": clip, "images": images}


def build_cache(model, windows: Sequence[Window], cache_dir: str | os.PathLike, height: int, width: int,
                progress: Callable[[int, int], None] | None = None,
                cancel: Callable[[], bool] | None = None) -> list[Path]:
    """Encode every window once into `cache_dir/<model fingerprint>/<HxW>/<window key>.safetensors`; existing
    files are reused, so a second epoch, a resumed run or another run on the same data encodes nothing."""
    root = Path(cache_dir) / model_fingerprint(model) / f"{height}x{width}"
    paths = []
    for i, w in enumerate(windows):
        path = root / f"{w.key}.safetensors"
        if not path.is_file():
            tensors = encode_window(model, read_window(w, height, width))
            meta = {"cache_version": str(CACHE_VERSION), "window": json.dumps(
                {"record": asdict(w.record), "start": w.start, "stride": w.stride, "num_frames": w.num_frames})}
            save_tensors(tensors, path, meta)
        paths.append(path)
        if progress is not None:
            progress(i + 1, len(windows))
        if cancel is not None and cancel():
            break
    return paths


class CachedDataset(torch.utils.data.Dataset):
    """Cached windows -> dict(latents t 4 h w, clip 2 d, images 2 3 H W uint8, fps, motion_bucket_id, motion,
    caption, captions, index). `records` (one per path, e.g. the windows' records): captions come from them rather
    than from the cache metadata, so captions added to the manifest after the cache was built are used."""

    def __init__(self, paths: Sequence[Path], motion_scale: float = 32.0, preload: bool = True,
                 records: Sequence[ClipRecord] | None = None):
        self.paths = list(paths)
        self.motion_scale = motion_scale
        self.records = list(records) if records is not None else None
        if self.records is not None and len(self.records) != len(self.paths):
            raise DataError(f"{len(self.records)} clip records for {len(self.paths)} cached windows")
        self._items = [self._load(i) for i in range(len(self.paths))] if preload else None

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, i: int) -> dict:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(self.paths[i]), framework="pt") as f:
                item = {k: f.get_tensor(k) for k in f.keys()}
                info = json.loads((f.metadata() or {})["window"])
            rec = info["record"]
            fps, motion = rec["fps"] / info["stride"], float(rec["motion"])
        except (SafetensorError, OSError, KeyError, ValueError, TypeError, ZeroDivisionError) as exc:
            raise DataError(f"latent cache file {self.paths[i]} is damaged or foreign ({type(exc).__name__}: {exc}); "
                            f"delete it (or its cache folder) and run again: it is rebuilt") from None
        item["fps"] = torch.tensor(window_fps(fps), dtype=torch.float64)  # converted once, by the conditioner
        item["motion_bucket_id"] = torch.tensor(motion_bucket(motion, self.motion_scale))
        item["motion"] = torch.tensor(motion)
        live = asdict(self.records[i]) if self.records is not None else rec
        item["caption"] = live.get("caption", "")
        item["captions"] = {str(c): str(t) for c, t in live.get("captions", ())}  # column -> text (sample_caption)
        if rec.get("elevation") is not None:
            item["elevation"] = torch.tensor(float(rec["elevation"]))
        item["index"] = i
        return item

    def __getitem__(self, i: int) -> dict:
        return self._items[i] if self._items is not None else self._load(i)


def collate(items: Sequence[dict]) -> dict:
    """Stack a list of items into a batch (captions stay a list)."""
    out = {}
    for k in items[0]:
        vals = [it[k] for it in items]
        out[k] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else (
            torch.tensor(vals) if k == "index" else vals)
    return out


def split(n: int, val_fraction: float, val_items: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """Deterministic train / validation split of n windows (validation windows never train)."""
    if n < 2 or val_fraction <= 0:
        return list(range(n)), []
    k = min(max(1, math.ceil(n * val_fraction)), val_items or n - 1, n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919)).tolist()
    val = sorted(perm[:k])
    return [i for i in range(n) if i not in set(val)], val


def global_batches(train_indices: Sequence[int], batch_size: int, step: int, seed: int) -> list[int]:
    """The global batch of step `step`: epochs are seeded permutations of the train windows, cut into batches.
    Depends only on (seed, step), so every process and a resumed run agree on it (data sharding, exact resume)."""
    n = len(train_indices)
    per_epoch = max(1, n // batch_size) if n >= batch_size else 1
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000003 + epoch)).tolist()
    if n < batch_size:  # tiny datasets: repeat the permutation
        perm = (perm * (batch_size // n + 1))
    return [train_indices[i] for i in perm[k * batch_size:(k + 1) * batch_size]]
