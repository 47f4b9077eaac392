"""Zero-shot UCF-101 FVD of a text-to-video model, end to end (paper Sec. 4.3, Table 2; App. E).

The protocol: one video per planned sample, prompted with its UCF-101 class name as words
(`protocols.action_to_prompt`, "ApplyEyeMakeup" -> "apply eye makeup"), vanilla classifier-free guidance with
scale 7, 16 frames with fps conditioning 25, rendered at the protocol's 320x576; then I3D statistics of the samples
against the real UCF-101 videos, both preprocessed as `protocols.UCF101` says (16 frames @ 25 fps, antialiased
resize to 240x432, center crop 240x320).

Sample count: `DEFAULT_NUM_SAMPLES` = 10,000 videos spread over the classes in the real set's class proportions
(the zero-shot UCF-101 protocol of the methods the paper's Table 2 compares against, Make-A-Video / Video LDM:
10k samples following the dataset's class distribution); `samples_per_class=N` gives every class N instead, and
`num_samples=None` as many as the real set holds.

Resumable: the run's settings and its full plan (class, prompt, seed per sample) go to `OUT/manifest.json` before
the first video; every video is written to a temp file and renamed (`video_io.write_video`), then recorded in the
manifest (rewritten atomically). A rerun with the same settings skips every finished video (a file renamed into
place but not yet recorded is adopted: seeds are per sample, so it is the video the plan asks for) and continues;
a rerun with other settings is refused. Sample i uses seed `seed + i` on its own, so an interrupted and resumed run
produces the same videos, hence the same FVD, as an uninterrupted one. Real-set statistics are cached
(`fvd.files_stats`, keyed by file list, extractor and preprocessing).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..atomic import atomic_path
from ..video_io import list_videos, write_video
from .features import FeatureExtractor
from .fvd import files_stats, fvd_from_stats
from .protocols import UCF101, UCF101_CLASSES, action_to_prompt

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "svd_core.eval.ucf101/1"
VIDEO_DIR = "videos"
CFG_SCALE = 7.0  # paper: classifier-free guidance scale 7 for the UCF-101 samples
DEFAULT_NUM_SAMPLES = 10_000
MAX_SAMPLES = 1_000_000  # bounds the plan and manifest held in memory
_UCF_NAME = re.compile(r"^v_([A-Za-z]+)_g\d+_c\d+$")  # UCF-101 file stems: v_ApplyEyeMakeup_g08_c01
Progress = Callable[[int, int], None]  # (videos done, videos planned)


@dataclass(frozen=True)
class UCF101Settings:
    """How every sample is generated; defaults are the paper's values (Sec. 4.3 / App. E) at the protocol's size."""

    cfg_scale: float = CFG_SCALE
    num_frames: int = UCF101.preprocess.num_frames  # 16
    fps: float = UCF101.sample_fps  # 25: fps conditioning and the written files' rate
    height: int = UCF101.sample_size[0]  # 320
    width: int = UCF101.sample_size[1]  # 576
    steps: int | None = None  # None: the model variant's default
    sampler: str = "euler"
    schedule: str = "karras"
    motion_score: float | None = None  # None: the variant's default
    negative_prompt: str = ""
    seed: int = 0  # sample i uses seed + i
    model: str = ""  # identifies the checkpoint (file name, size, mtime) so a resumed run uses the same one

    def __post_init__(self):
        if not (self.cfg_scale > 0 and np.isfinite(self.cfg_scale)):
            raise ValueError(f"cfg_scale={self.cfg_scale!r} must be a finite number > 0 (paper: 7)")
        if self.num_frames < UCF101.preprocess.num_frames:
            raise ValueError(f"num_frames={self.num_frames} is below the {UCF101.preprocess.num_frames} frames the "
                             "UCF-101 FVD protocol feeds to I3D; use --frames 16 (the paper's value)")
        if self.fps <= 0:
            raise ValueError(f"fps={self.fps!r} must be > 0 (paper: 25)")
        for name, v in (("height", self.height), ("width", self.width)):
            if v < 64 or v % 64:
                raise ValueError(f"{name}={v} must be a multiple of 64 and at least 64 (protocol: 320x576)")
        ch, cw = UCF101.preprocess.crop
        if self.width * ch < self.height * cw:  # short side -> 240, then a 240x320 crop: needs w / h >= 4 / 3
            raise ValueError(f"{self.width}x{self.height} (w x h) is narrower than UCF-101's 4:3 frame, so the "
                             f"protocol's {cw}x{ch} crop does not fit; use a width >= 4/3 of the height (320x576)")


@dataclass(frozen=True)
class Sample:
    index: int
    cls: str
    prompt: str
    seed: int

    @property
    def file(self) -> str:
        return f"{VIDEO_DIR}/{self.index:05d}_{self.cls}.mp4"


@dataclass
class UCF101Result:
    fvd: float
    protocol: str
    num_generated: int
    num_real: int
    generated_now: int  # videos this call generated (0 when every video was already there)
    out_dir: str
    classes: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------------- real set


def video_class(path: str) -> str | None:
    """UCF-101 class of a real video: from the file name `v_<Class>_gNN_cNN.*`, else its folder's name."""
    stem = os.path.splitext(os.path.basename(path))[0]
    m = _UCF_NAME.match(stem)
    if m:
        return m.group(1)
    parent = os.path.basename(os.path.dirname(path))
    return parent if parent in UCF101_CLASSES else None


def real_videos(real_dir: str) -> list[str]:
    """Every video under `real_dir`: the official layout `Class/v_Class_gNN_cNN.avi`, a flat folder, or both."""
    if not os.path.isdir(real_dir):
        raise FileNotFoundError(f"real UCF-101 folder {real_dir!r} does not exist (--real: the folder of the "
                                "dataset's videos, e.g. UCF-101/ with one sub-folder per class)")
    files = list_videos(real_dir, recursive=True)
    files += [p for p in list_videos(real_dir, frame_folders=True) if os.path.isdir(p)]  # top-level frame folders
    if len(files) < 2:
        raise ValueError(f"real UCF-101 folder {real_dir!r} holds {len(files)} video(s); FVD needs at least 2")
    return sorted(files)


def class_counts(files: Sequence[str]) -> dict[str, int]:
    """Videos per class, in UCF-101's class order (classes of unknown name after them, sorted)."""
    counts: dict[str, int] = {}
    for f in files:
        c = video_class(f)
        if c is not None:
            counts[c] = counts.get(c, 0) + 1
    order = {c: i for i, c in enumerate(UCF101_CLASSES)}
    return dict(sorted(counts.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


# ------------------------------------------------------------------------------------------------- the plan


def allocate(num_samples: int, counts: dict[str, int]) -> dict[str, int]:
    """Split `num_samples` over the classes in proportion to `counts` (largest remainders, ties to the earlier
    class), so the samples follow the real set's class distribution."""
    if not 1 <= num_samples <= MAX_SAMPLES:
        raise ValueError(f"num_samples must be between 1 and {MAX_SAMPLES}, got {num_samples}")
    total = sum(counts.values())
    if total < 1:
        raise ValueError("no classes to sample from")
    exact = {c: num_samples * n / total for c, n in counts.items()}
    out = {c: int(np.floor(v)) for c, v in exact.items()}
    left = num_samples - sum(out.values())
    for c in sorted(exact, key=lambda c: -(exact[c] - out[c]))[:left]:  # stable sort: ties keep class order
        out[c] += 1
    return out


def plan_samples(per_class: dict[str, int], seed: int = 0) -> list[Sample]:
    """Samples interleaved class by class (the k-th sample of every class before any class's (k+1)-th), so an
    interrupted run's prefix is spread over the classes; sample i gets seed `seed + i`."""
    classes = list(per_class)
    out, k = [], 0
    while len(out) < sum(per_class.values()):
        for c in classes:
            if k < per_class[c]:
                out.append(Sample(len(out), c, action_to_prompt(c), seed + len(out)))
        k += 1
    return out


def ucf101_prompts(num_samples: int = 2048, classes: tuple[str, ...] = UCF101_CLASSES) -> list[tuple[str, str]]:
    """Class-balanced (class, prompt) list: every class `num_samples // n` times, the remainder spread over
    the first classes, interleaved class by class so any prefix of the list stays balanced (the plan of
    `make_plan` with equal class weights)."""
    return [(s.cls, s.prompt) for s in plan_samples(allocate(num_samples, {c: 1 for c in classes}))]


def make_plan(counts: dict[str, int] | None, num_samples: int | None = DEFAULT_NUM_SAMPLES,
              samples_per_class: int | None = None, classes: Sequence[str] | None = None,
              seed: int = 0) -> list[Sample]:
    """The samples to generate. Classes: `classes`, else those of the real set (`counts`), else all 101.
    `samples_per_class` wins over `num_samples`; `num_samples=None` means as many as the real set has."""
    counts = dict(counts or {})
    if classes:
        unknown = [c for c in classes if c not in UCF101_CLASSES and c not in counts]
        if unknown:
            raise ValueError(f"unknown UCF-101 class(es) {unknown[:5]}; expected names like "
                             f"{', '.join(UCF101_CLASSES[:3])} (classInd.txt spelling)")
        counts = {c: counts.get(c, 1) for c in classes}
    elif not counts:
        counts = {c: 1 for c in UCF101_CLASSES}  # class of the real videos unknown: balanced over all 101
    if samples_per_class is not None:
        if not 1 <= samples_per_class * len(counts) <= MAX_SAMPLES:
            raise ValueError(f"samples_per_class must be >= 1 and give at most {MAX_SAMPLES} videos, got "
                             f"{samples_per_class} x {len(counts)} classes")
        return plan_samples({c: samples_per_class for c in counts}, seed)
    n = sum(counts.values()) if num_samples is None else num_samples
    return plan_samples(allocate(n, counts), seed)


# ------------------------------------------------------------------------------------------------- manifest


def _write_json(path: str, data: dict) -> None:
    """Written atomically by `svd_core.atomic` (normal permissions, nothing left on error)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)


def _open_manifest(out_dir: str, settings: UCF101Settings, plan: list[Sample]) -> dict:
    """The run's manifest: created with the settings and plan, or read back and checked against them."""
    path = os.path.join(out_dir, MANIFEST)
    planned = [{"index": s.index, "class": s.cls, "prompt": s.prompt, "seed": s.seed, "file": s.file} for s in plan]
    want = {"format": MANIFEST_FORMAT, "protocol": UCF101.name, "settings": asdict(settings), "plan": planned}
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                have = json.load(f)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: unreadable manifest ({exc}); use another --out folder") from None
        if not isinstance(have, dict) or have.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"{path} is not a UCF-101 run manifest; use another --out folder")
        for key in ("protocol", "settings", "plan"):
            if have.get(key) != want[key]:
                diff = ""
                if key == "settings":
                    diff = ": " + ", ".join(f"{k} {have[key].get(k)!r} -> {v!r}" for k, v in want[key].items()
                                            if have[key].get(k) != v)
                raise ValueError(f"{out_dir} holds a UCF-101 run with other {key}{diff}; resume it with the same "
                                 "options, or use another --out folder")
        have.setdefault("done", [])
        return have
    os.makedirs(os.path.join(out_dir, VIDEO_DIR), exist_ok=True)
    want["done"] = []
    _write_json(path, want)
    return want


# ------------------------------------------------------------------------------------------------- driver


def generate(model, out_dir: str, plan: list[Sample], settings: UCF101Settings = UCF101Settings(), *,
             device=None, progress: Progress | None = None, generate_fn=None) -> tuple[list[str], int]:
    """Generate the planned videos into `out_dir/videos`, skipping those already there; returns (all video
    paths in plan order, videos generated by this call). `generate_fn(sample, settings) -> (t, h, w, 3) uint8`
    replaces the text-to-video call (tests, other generators)."""
    gen = generate_fn or _text2vid_fn(model, device)  # checks the model before anything is written
    manifest = _open_manifest(out_dir, settings, plan)
    done = set(manifest["done"])
    paths = [os.path.join(out_dir, s.file) for s in plan]
    for s, p in zip(plan, paths):  # finished but unrecorded (killed between rename and manifest write): adopt
        if s.index not in done and os.path.isfile(p):
            done.add(s.index)
    made = 0
    for s, p in zip(plan, paths):
        if s.index in done and os.path.isfile(p):
            continue
        frames = gen(s, settings)
        write_video(frames, p, fps=settings.fps)
        made += 1
        done.add(s.index)
        manifest["done"] = sorted(done)
        _write_json(os.path.join(out_dir, MANIFEST), manifest)
        if progress:
            progress(len(done), len(plan))
    if made == 0 and progress:
        progress(len(done), len(plan))
    manifest["done"] = sorted(done)
    _write_json(os.path.join(out_dir, MANIFEST), manifest)
    return paths, made


def _text2vid_fn(model, device):
    """One sample: the class-name prompt, vanilla CFG at `cfg_scale` on every frame, the settings' size/fps."""
    from ..guidance import Guidance
    from ..text2video import text2vid

    if getattr(getattr(model, "spec", None), "cond_mode", None) != "text":
        name = getattr(getattr(model, "spec", None), "name", type(model).__name__)
        raise ValueError(f"UCF-101 zero-shot FVD needs a text-to-video checkpoint (variant t2v); {name} is not "
                         "text-conditioned: pass a t2v checkpoint with --checkpoint")

    def run(s: Sample, st: UCF101Settings) -> np.ndarray:
        video = text2vid(model, s.prompt, negative_prompt=st.negative_prompt, num_frames=st.num_frames,
                         width=st.width, height=st.height, fps=st.fps, motion_score=st.motion_score,
                         guidance=Guidance("vanilla", min_scale=st.cfg_scale, max_scale=st.cfg_scale),
                         sampler=st.sampler, schedule=st.schedule, steps=st.steps, seed=s.seed, device=device)
        frames = video[0].permute(0, 2, 3, 1).float().cpu().numpy()  # t 3 h w -> t h w 3
        return (np.clip(frames, 0, 1) * 255 + 0.5).astype(np.uint8)

    return run


def model_id(path: str) -> str:
    """Checkpoint identity for the manifest: file name, size and modification time (no multi-GB hashing)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} not found (--checkpoint: a text-to-video .safetensors file)")
    st = os.stat(path)
    return f"{os.path.basename(os.path.normpath(path))}|{st.st_size}|{st.st_mtime_ns}"


def evaluate_ucf101(model, real_dir: str, out_dir: str, extractor: FeatureExtractor, *,
                    settings: UCF101Settings = UCF101Settings(), num_samples: int | None = DEFAULT_NUM_SAMPLES,
                    samples_per_class: int | None = None, classes: Sequence[str] | None = None,
                    cache_dir: str | None = None, batch_size: int = 8, device=None,
                    progress: Progress | None = None, generate_fn=None) -> UCF101Result:
    """Generate (or resume) the samples, then FVD against the real set under the UCF-101 protocol.

    Statistics (real set and samples) are cached in `cache_dir` (default `out_dir/fvd_stats`) and reused while
    the files, the extractor and the preprocessing are unchanged.
    """
    real = real_videos(real_dir)
    counts = class_counts(real)
    plan = make_plan(counts, num_samples, samples_per_class, classes, settings.seed)
    if len(plan) < 2:
        raise ValueError(f"{len(plan)} sample planned; FVD needs at least 2 (raise --num-samples)")
    paths, made = generate(model, out_dir, plan, settings, device=device, progress=progress,
                           generate_fn=generate_fn)
    pre = UCF101.preprocess
    cache = cache_dir or os.path.join(out_dir, "fvd_stats")
    real_stats = files_stats(real, extractor, pre, batch_size=batch_size, cache_dir=cache, name="ucf101-real")
    gen_stats = files_stats(paths, extractor, pre, batch_size=batch_size, cache_dir=cache, name="generated")
    value = fvd_from_stats(gen_stats, real_stats)
    per_class: dict[str, int] = {}
    for s in plan:
        per_class[s.cls] = per_class.get(s.cls, 0) + 1
    result = UCF101Result(value, UCF101.name, len(plan), len(real), made, os.path.abspath(out_dir), per_class)
    _write_json(os.path.join(out_dir, "fvd.json"), result.as_dict())
    return result
