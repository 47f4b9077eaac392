"""A human-preference study: prompts / images, each model's video for it, and attention-check pairs.

A manifest is untrusted input: `load_study` checks its size, every key's type and range, names, media types and
sizes, and that every media file resolves (symlinks followed) inside the study's media root, before anything is
served (paper App. E.1.2 describes the study; the limits are ours).
"""
from __future__ import annotations

import json
import os
import random
import re
import stat
from dataclasses import dataclass, field

import numpy as np

from ..atomic import atomic_path
from ..video_io import IMAGE_EXTENSIONS, MEDIA_TYPES, VIDEO_EXTENSIONS, read_frames, write_video

MAX_MANIFEST_BYTES = 4 << 20
MAX_MEDIA_BYTES = 2 << 30  # one video / image file
MAX_ITEMS = 10_000  # items + attention checks
MAX_MODELS = 32  # videos per item
MAX_AXES = 8
MAX_TEXT = 2000  # prompt length
_AXIS_RE = re.compile(r"[a-z][a-z0-9_]{0,39}")
_CTRL_RE = re.compile(r"[\x00-\x1f\x7f]")

AXIS_QUESTIONS = {
    "visual_quality": "Which video has the better visual quality?",
    "prompt_following": "Which video follows the prompt / image better?",
}


@dataclass
class StudyItem:
    """One prompt (and/or conditioning image) with one video per model."""

    id: str
    prompt: str = ""
    image: str | None = None
    videos: dict[str, str] = field(default_factory=dict)


@dataclass
class AttentionCheck:
    """A pair with an obvious answer: `good` must win on every axis, otherwise the voter was not attentive."""

    id: str
    good: str
    bad: str
    prompt: str = ""
    image: str | None = None


@dataclass
class Study:
    """Manifest of a voting study; paths are absolute after loading."""

    name: str
    items: list[StudyItem]
    checks: list[AttentionCheck] = field(default_factory=list)
    axes: tuple[str, ...] = ("visual_quality", "prompt_following")
    check_every: int = 5  # one pair in every block of N a participant sees is an attention check (random position)
    max_failed_checks: int = 0  # participants failing more checks than this are left out of the leaderboard
    media_roots: tuple[str, ...] = ()  # every media file must resolve inside one of these (set by the loaders)
    organiser_token: str | None = None  # from the manifest; otherwise the server draws one

    @property
    def models(self) -> list[str]:
        return sorted({m for it in self.items for m in it.videos})

    def question(self, axis: str) -> str:
        return AXIS_QUESTIONS.get(axis, f"Which video is better ({axis.replace('_', ' ')})?")

    def validate(self) -> "Study":
        """Names, ids, axes and ranges, then every media file: inside `media_roots`, a served type, a size bound."""
        where = f"study {self.name!r}"
        check_name(self.name, f"{where}: name")
        if not any(len(it.videos) >= 2 for it in self.items):
            raise ValueError(f"{where}: no item has videos of two or more models to compare")
        if len(self.items) + len(self.checks) > MAX_ITEMS:
            raise ValueError(f"{where}: {len(self.items) + len(self.checks)} items and checks; at most {MAX_ITEMS}")
        ids = [it.id for it in self.items] + [c.id for c in self.checks]
        for i in ids:
            check_name(i, f"{where}: item / check id")
        if len(ids) != len(set(ids)):
            raise ValueError(f"{where}: item / check ids must be unique")
        if not self.axes:
            raise ValueError(f"{where}: at least one axis is needed")
        for ax in self.axes[:MAX_AXES + 1]:  # names first: a set of them needs hashable strings
            if not isinstance(ax, str) or not _AXIS_RE.fullmatch(ax):
                raise ValueError(f"{where}: axis {str(ax)[:80]!r} must be lower-case letters, digits and '_' "
                                 "(e.g. 'visual_quality')")
        if len(self.axes) > MAX_AXES or len(set(self.axes)) != len(self.axes):
            raise ValueError(f"{where}: axes {list(self.axes)[:MAX_AXES + 1]!r} must be at most {MAX_AXES} "
                             "distinct names")
        _int_in(self.check_every, 1, 1000, f"{where}: check_every")
        _int_in(self.max_failed_checks, 0, 1000, f"{where}: max_failed_checks")
        if self.organiser_token is not None:
            check_token(self.organiser_token, f"{where}: organiser_token")
        if not self.media_roots:
            raise ValueError(f"{where}: no media root; load it with load_study or study_from_folders")
        roots = [os.path.realpath(r) for r in self.media_roots]
        for it in self.items:
            if len(it.videos) > MAX_MODELS:
                raise ValueError(f"{where}, item {it.id!r}: {len(it.videos)} models; at most {MAX_MODELS}")
            for m, p in it.videos.items():
                check_name(m, f"{where}, item {it.id!r}: model name")
                if m.startswith("__"):
                    raise ValueError(f"{where}, item {it.id!r}: model name {m!r} must not start with '__'")
                it.videos[m] = check_media(p, roots, "video", f"{where}, item {it.id!r}, model {m!r}")
            if it.image:
                it.image = check_media(it.image, roots, "image", f"{where}, item {it.id!r}: image")
        for c in self.checks:
            c.good = check_media(c.good, roots, "video", f"{where}, attention check {c.id!r}: good")
            c.bad = check_media(c.bad, roots, "video", f"{where}, attention check {c.id!r}: bad")
            if c.image:
                c.image = check_media(c.image, roots, "image", f"{where}, attention check {c.id!r}: image")
        return self

    def to_json(self, root: str | None = None) -> dict:
        rel = (lambda p: os.path.relpath(p, root) if (p and root) else p)
        return {"name": self.name, "axes": list(self.axes), "check_every": self.check_every,
                "max_failed_checks": self.max_failed_checks,
                "items": [{"id": i.id, "prompt": i.prompt, "image": rel(i.image),
                           "videos": {m: rel(p) for m, p in i.videos.items()}} for i in self.items],
                "attention_checks": [{"id": c.id, "prompt": c.prompt, "image": rel(c.image), "good": rel(c.good),
                                      "bad": rel(c.bad)} for c in self.checks],
                **({"organiser_token": self.organiser_token} if self.organiser_token else {})}


def load_study(path: str) -> Study:
    """Read a study manifest (JSON); relative paths are relative to the manifest's folder, which is the study's
    media root: every video / image must resolve inside it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"study manifest {path!r} not found")
    if os.path.getsize(path) > MAX_MANIFEST_BYTES:
        raise ValueError(f"study manifest {path!r} is {os.path.getsize(path)} bytes; at most {MAX_MANIFEST_BYTES}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"study manifest {path!r} is not valid JSON ({type(exc).__name__}: "
                         f"{str(exc)[:200]})") from None
    root = os.path.dirname(os.path.abspath(path))
    where = f"study manifest {path!r}"
    _typed(data, dict, where, "an object")
    known = {"name", "axes", "check_every", "max_failed_checks", "items", "attention_checks", "organiser_token"}
    if set(data) - known:
        raise ValueError(f"{where}: unknown key(s) {sorted(set(data) - known)!r}; expected {sorted(known)}")

    def ab(p, what):
        if p is None:
            return None
        _typed(p, str, what, "a path (string) relative to the manifest")
        if not p or "\x00" in p:
            raise ValueError(f"{what}: empty or invalid path {p!r}")
        return os.path.normpath(os.path.join(root, p))

    items = []
    for n, i in enumerate(_typed(data.get("items"), list, f"{where}: items", "a list")):
        w = f"{where}: items[{n}]"
        _typed(i, dict, w, "an object with id, videos and optionally prompt, image")
        videos = _typed(i.get("videos"), dict, f"{w}.videos", "an object of model name -> video path")
        items.append(StudyItem(_text(i.get("id"), f"{w}.id", required=True), _text(i.get("prompt", ""), f"{w}.prompt"),
                               ab(i.get("image"), f"{w}.image"),
                               {_text(m, f"{w}.videos key", required=True): ab(p, f"{w}.videos[{m!r}]")
                                for m, p in videos.items()}))
    checks = []
    for n, c in enumerate(_typed(data.get("attention_checks", []), list, f"{where}: attention_checks", "a list")):
        w = f"{where}: attention_checks[{n}]"
        _typed(c, dict, w, "an object with id, good, bad")
        checks.append(AttentionCheck(_text(c.get("id"), f"{w}.id", required=True),
                                     ab(_typed(c.get("good"), str, f"{w}.good", "a video path"), f"{w}.good"),
                                     ab(_typed(c.get("bad"), str, f"{w}.bad", "a video path"), f"{w}.bad"),
                                     _text(c.get("prompt", ""), f"{w}.prompt"), ab(c.get("image"), f"{w}.image")))
    name = data.get("name", os.path.splitext(os.path.basename(path))[0])
    axes = _typed(data.get("axes", ["visual_quality", "prompt_following"]), list, f"{where}: axes", "a list of names")
    token = data.get("organiser_token")
    return Study(_text(name, f"{where}: name", required=True), items, checks, tuple(axes),
                 _int_in(data.get("check_every", 5), 1, 1000, f"{where}: check_every"),
                 _int_in(data.get("max_failed_checks", 0), 0, 1000, f"{where}: max_failed_checks"),
                 media_roots=(root,), organiser_token=None if token is None else str(token)).validate()


# ------------------------------------------------------------------ checks of untrusted values
def _typed(value, kind, what: str, expected: str):
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{what}: expected {expected}, got {type(value).__name__} {str(value)[:80]!r}")
    return value


def _int_in(value, lo: int, hi: int, what: str) -> int:
    _typed(value, int, what, f"an integer in [{lo}, {hi}]")
    if not lo <= value <= hi:
        raise ValueError(f"{what}: {value} is outside [{lo}, {hi}]")
    return value


def _text(value, what: str, required: bool = False) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and required:
        value = str(value)  # numeric ids are fine
    _typed(value, str, what, "a string")
    if len(value) > MAX_TEXT or (required and not value.strip()):
        raise ValueError(f"{what}: expected a non-empty string of at most {MAX_TEXT} characters")
    return value


def check_name(value, what: str) -> str:
    """Names (study, models, ids) end up in the database, CSV exports and pages: 1-100 printable characters."""
    if not isinstance(value, str) or not value.strip() or len(value) > 100 or _CTRL_RE.search(value):
        raise ValueError(f"{what}: {str(value)[:120]!r} must be 1-100 printable characters (no control characters "
                         "or line breaks)")
    return value


def check_token(value, what: str) -> str:
    """An organiser token: 16-200 printable ASCII characters without spaces."""
    if not isinstance(value, str) or not re.fullmatch(r"[!-~]{16,200}", value):
        raise ValueError(f"{what}: an organiser token must be 16-200 printable ASCII characters without spaces "
                         "(leave it out and the server draws a random one)")
    return value


def media_type(path: str) -> str | None:
    """The Content-Type the voting server sends for `path`, or None when it would not serve it."""
    return MEDIA_TYPES.get(os.path.splitext(path)[1].lower())


def inside(path: str, roots) -> bool:
    """`path` resolved (symlinks followed) lies inside one of `roots` (already resolved)."""
    real = os.path.realpath(path)
    return any(os.path.commonpath([real, r]) == r for r in roots)


class MediaOutsideError(ValueError):
    """A study names a media file outside its media folder(s): refused, never served."""


def check_media(path: str, roots, kind: str, what: str) -> str:
    """The resolved path of a servable media file: inside a root, a video (or image) type, a regular file within
    `MAX_MEDIA_BYTES`."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"{what}: expected a file path, got {path!r}")
    allowed = VIDEO_EXTENSIONS if kind == "video" else IMAGE_EXTENSIONS
    if os.path.splitext(path)[1].lower() not in allowed or media_type(path) is None:
        raise ValueError(f"{what}: {os.path.basename(path)!r} is not a {kind} file ({', '.join(allowed)})")
    if not inside(path, roots):
        raise MediaOutsideError(f"{what}: {path!r} lies outside the study's media folder(s) {', '.join(roots)}; "
                                "keep the media next to the manifest")
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError:
        raise FileNotFoundError(f"{what}: {path!r} not found") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{what}: {path!r} is not a regular file")
    if st.st_size > MAX_MEDIA_BYTES:
        raise ValueError(f"{what}: {path!r} is {st.st_size} bytes; at most {MAX_MEDIA_BYTES}")
    return real


def save_study(study: Study, path: str) -> None:
    """The study manifest, written atomically by `svd_core.atomic` (nothing left on error); owner-only when it holds
    the organiser token, which unlocks the results."""
    root = os.path.dirname(os.path.abspath(path))
    with atomic_path(path, private=bool(study.organiser_token)) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(study.to_json(root), f, indent=2)


def _prompt_for(stem: str, folder: str, prompts: dict[str, str]) -> str:
    if stem in prompts:
        return prompts[stem]
    txt = os.path.join(folder, stem + ".txt")
    if os.path.isfile(txt):
        with open(txt, encoding="utf-8") as f:
            return f.read().strip()
    return stem.replace("_", " ")


def study_from_folders(name: str, model_dirs: dict[str, str], prompts: dict[str, str] | None = None,
                       image_dir: str | None = None, num_checks: int = 0, check_dir: str | None = None,
                       seed: int = 0, **kw) -> Study:
    """Items matched by file stem across one folder per model (prompt: `prompts[stem]`, `STEM.txt`, or the
    stem); conditioning image `image_dir/STEM.png` when present; `num_checks` degraded-copy attention checks."""
    prompts = prompts or {}
    by_stem: dict[str, dict[str, str]] = {}
    for model, d in model_dirs.items():
        if not os.path.isdir(d):
            raise FileNotFoundError(f"video folder {d!r} of model {model!r} not found")
        for f in sorted(os.listdir(d)):
            stem, ext = os.path.splitext(f)
            if ext.lower() in VIDEO_EXTENSIONS:
                by_stem.setdefault(stem, {})[model] = os.path.join(d, f)
    items = []
    for stem, vids in sorted(by_stem.items()):
        image = None
        if image_dir:
            image = next((os.path.join(image_dir, stem + e) for e in IMAGE_EXTENSIONS
                          if os.path.isfile(os.path.join(image_dir, stem + e))), None)
        first = os.path.dirname(next(iter(vids.values())))
        items.append(StudyItem(stem, _prompt_for(stem, first, prompts), image, vids))
    roots = [*model_dirs.values(), *([image_dir] if image_dir else [])]
    study = Study(name, items, media_roots=tuple(os.path.abspath(r) for r in roots), **kw)
    if num_checks:
        check_dir = check_dir or os.path.join(os.path.dirname(next(iter(model_dirs.values()))), f".{name}_checks")
        study.checks = make_attention_checks(study, num_checks, check_dir, seed)
        study.media_roots += (os.path.abspath(check_dir),)
    return study.validate()


def degrade(frames: np.ndarray, seed: int = 0) -> np.ndarray:
    """An obviously worse copy: 8x blocky downsampling, strong noise and frozen motion (the first frame)."""
    rng = np.random.default_rng(seed)
    t, h, w, _ = frames.shape
    first = frames[0].astype(np.float32)
    small = first[:: 8, :: 8]
    blocky = np.repeat(np.repeat(small, 8, 0), 8, 1)[:h, :w]  # h w c
    noisy = blocky + rng.normal(0, 60, size=(t, h, w, 3))  # t h w c
    return np.clip(noisy, 0, 255).astype(np.uint8)


def make_attention_checks(study: Study, n: int, out_dir: str, seed: int = 0) -> list[AttentionCheck]:
    """`n` checks: a random item's video against its degraded copy (written once to `out_dir`)."""
    rng = random.Random(seed)
    os.makedirs(out_dir, exist_ok=True)
    checks = []
    candidates = [(it, m) for it in study.items for m in sorted(it.videos)]
    for k in range(n):
        it, m = rng.choice(candidates)
        bad = os.path.join(out_dir, f"check{k}_{it.id}_{m}.webm")
        if not os.path.isfile(bad):
            write_video(degrade(read_frames(it.videos[m]), seed + k), bad, fps=8)
        checks.append(AttentionCheck(f"check{k}", it.videos[m], bad, it.prompt, it.image))
    return checks
