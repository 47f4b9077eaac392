"""A human-preference study: prompts / images, each model's video for it, and attention-check pairs."""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field

import numpy as np

from .video_io import IMAGE_EXTS, VIDEO_EXTS, read_video, write_video

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
    check_every: int = 5  # every N-th pair a session sees is an attention check (when checks exist)
    max_failed_checks: int = 0  # sessions failing more checks than this are left out of the leaderboard

    @property
    def models(self) -> list[str]:
        return sorted({m for it in self.items for m in it.videos})

    def question(self, axis: str) -> str:
        return AXIS_QUESTIONS.get(axis, f"Which video is better ({axis.replace('_', ' ')})?")

    def validate(self) -> "Study":
        if not any(len(it.videos) >= 2 for it in self.items):
            raise ValueError(f"study {self.name!r}: no item has videos of two or more models to compare")
        ids = [it.id for it in self.items] + [c.id for c in self.checks]
        if len(ids) != len(set(ids)):
            raise ValueError(f"study {self.name!r}: item / check ids must be unique")
        for it in self.items:
            for m, p in it.videos.items():
                if not os.path.isfile(p):
                    raise FileNotFoundError(f"study {self.name!r}, item {it.id!r}, model {m!r}: video {p!r} not found")
        for c in self.checks:
            for p in (c.good, c.bad):
                if not os.path.isfile(p):
                    raise FileNotFoundError(f"study {self.name!r}, attention check {c.id!r}: {p!r} not found")
        if not self.axes:
            raise ValueError(f"study {self.name!r}: at least one axis is needed")
        return self

    def to_json(self, root: str | None = None) -> dict:
        rel = (lambda p: os.path.relpath(p, root) if (p and root) else p)
        return {"name": self.name, "axes": list(self.axes), "check_every": self.check_every,
                "max_failed_checks": self.max_failed_checks,
                "items": [{"id": i.id, "prompt": i.prompt, "image": rel(i.image),
                           "videos": {m: rel(p) for m, p in i.videos.items()}} for i in self.items],
                "attention_checks": [{"id": c.id, "prompt": c.prompt, "image": rel(c.image), "good": rel(c.good),
                                      "bad": rel(c.bad)} for c in self.checks]}


def load_study(path: str) -> Study:
    """Read a study manifest (JSON); relative paths are relative to the manifest's folder."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"study manifest {path!r} not found")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    root = os.path.dirname(os.path.abspath(path))
    ab = (lambda p: os.path.normpath(os.path.join(root, p)) if p else None)
    try:
        items = [StudyItem(str(i["id"]), i.get("prompt", ""), ab(i.get("image")),
                           {m: ab(p) for m, p in i["videos"].items()}) for i in data["items"]]
        checks = [AttentionCheck(str(c["id"]), ab(c["good"]), ab(c["bad"]), c.get("prompt", ""), ab(c.get("image")))
                  for c in data.get("attention_checks", [])]
    except KeyError as exc:
        raise ValueError(f"{path}: study manifest entry lacks the key {exc}") from exc
    return Study(data.get("name", os.path.splitext(os.path.basename(path))[0]), items, checks,
                 tuple(data.get("axes", ("visual_quality", "prompt_following"))),
                 int(data.get("check_every", 5)), int(data.get("max_failed_checks", 0))).validate()


def save_study(study: Study, path: str) -> None:
    import tempfile

    root = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=root, suffix=".json.tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(study.to_json(root), f, indent=2)
    os.replace(tmp, path)


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
            if ext.lower() in VIDEO_EXTS:
                by_stem.setdefault(stem, {})[model] = os.path.join(d, f)
    items = []
    for stem, vids in sorted(by_stem.items()):
        image = None
        if image_dir:
            image = next((os.path.join(image_dir, stem + e) for e in IMAGE_EXTS
                          if os.path.isfile(os.path.join(image_dir, stem + e))), None)
        first = os.path.dirname(next(iter(vids.values())))
        items.append(StudyItem(stem, _prompt_for(stem, first, prompts), image, vids))
    study = Study(name, items, **kw)
    if num_checks:
        study.checks = make_attention_checks(study, num_checks, check_dir or os.path.join(
            os.path.dirname(next(iter(model_dirs.values()))), f".{name}_checks"), seed)
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
            write_video(bad, degrade(read_video(it.videos[m]), seed + k), fps=8)
        checks.append(AttentionCheck(f"check{k}", it.videos[m], bad, it.prompt, it.image))
    return checks
