"""Tiny random stand-ins for the user-supplied evaluation weights (I3D TorchScript, LPIPS, CLIP), with the real
calling conventions and file formats, plus small synthetic video sets: for tests and workflow checks only."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

TINY_CLIP_NAME = "svd-eval-tiny-clip"
TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}


class TinyI3D(nn.Module):
    """Same signature as StyleGAN-V's `i3d_torchscript.pt`: forward(x (b, c, t, h, w), rescale, resize,
    return_features) -> features (b, dim) or class probabilities (b, classes)."""

    def __init__(self, dim: int = 16, classes: int = 10):
        super().__init__()
        self.conv = nn.Conv3d(3, 8, kernel_size=3, stride=2, padding=1)
        self.proj = nn.Linear(8 * 8, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        if rescale:
            x = x * (2.0 / 255.0) - 1.0  # [0, 255] -> [-1, 1], like the real detector
        if resize:
            x = F.interpolate(x, size=(x.shape[2], 32, 32), mode="trilinear", align_corners=False)
        h = F.adaptive_avg_pool3d(torch.relu(self.conv(x)), (2, 2, 2)).flatten(1)  # b (c 2 2 2)
        feats = self.proj(h)
        if return_features:
            return feats
        return torch.softmax(self.head(feats), dim=-1)


def tiny_i3d(path, dim: int = 16, seed: int = 0) -> None:
    """Write a scripted `TinyI3D` (TorchScript, like the real file) to `path`."""
    torch.manual_seed(seed)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.jit.script(TinyI3D(dim).eval()).save(str(path))


def random_lpips(path, net: str = "alex", seed: int = 0, torchvision_layout: bool = False) -> None:
    """LPIPS weights with a random backbone (the package's shipped linear heads) in the format `load_lpips`
    reads: the LPIPS state dict, or with `torchvision_layout` only the backbone as `features.N.*`."""
    import warnings

    import lpips
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = lpips.LPIPS(pretrained=True, net=net, pnet_rand=True, verbose=False)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()
          if not k.startswith(("lins.", "scaling_layer."))}
    if torchvision_layout:
        sd = {"features." + k.split(".", 2)[2]: v for k, v in sd.items() if k.startswith("net.")}
    path = str(path)
    if path.endswith(".safetensors"):
        save_file(sd, path)
    else:
        torch.save(sd, path)


def tiny_clip(weights_path, config_dir=None, seed: int = 0) -> str:
    """Register the tiny open_clip config (also written as JSON to `config_dir`), save random weights to
    `weights_path` (.safetensors); returns the model name for `create_model`."""
    import open_clip
    from safetensors.torch import save_file

    cfg_dir = Path(config_dir or os.path.dirname(os.path.abspath(weights_path)))
    cfg_dir.mkdir(parents=True, exist_ok=True)
    cfg_file = cfg_dir / f"{TINY_CLIP_NAME}.json"
    cfg_file.write_text(json.dumps(TINY_CLIP_CFG))
    open_clip.add_model_config(str(cfg_file))
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY_CLIP_NAME, pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights_path))
    return TINY_CLIP_NAME


def moving_square(num_frames: int = 8, height: int = 32, width: int = 48, speed: float = 2.0, seed: int = 0,
                  noise: float = 0.0) -> np.ndarray:
    """(t, h, w, 3) uint8 clip: a coloured square moving over a gradient, optionally with noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, np.full_like(x, 0.3)], -1) * 200  # h w c
    color = rng.uniform(100, 255, size=3)
    side = max(4, height // 4)
    x0, y0 = rng.integers(0, width - side), rng.integers(0, height - side)
    frames = []
    for t in range(num_frames):
        f = base.copy()
        xs = int(x0 + speed * t) % max(1, width - side)
        f[y0: y0 + side, xs: xs + side] = color
        if noise:
            f = f + rng.normal(0, noise, f.shape)
        frames.append(np.clip(f, 0, 255))
    return np.stack(frames).astype(np.uint8)


def video_set(folder, n: int = 4, seed: int = 0, noise: float = 0.0, ext: str = ".webm", **kw) -> list[str]:
    """Write `n` moving-square clips to `folder`; returns their paths."""
    from ..video_io import write_video

    paths = []
    for i in range(n):
        p = os.path.join(str(folder), f"clip{i:03d}{ext}")
        write_video(moving_square(seed=seed + i, noise=noise, **kw), p, fps=8)
        paths.append(p)
    return paths


def video_file(path, seed: int = 0, noise: float = 0.0, **kw) -> None:
    """One moving-square clip at `path` (workflow input factory)."""
    from ..video_io import write_video

    write_video(moving_square(seed=seed, noise=noise, **kw), path, fps=8)


def votes_csv(path, strengths: dict[str, float] | None = None, n: int = 400, seed: int = 0,
              axes=("visual_quality", "prompt_following")) -> None:
    """A synthetic tournament: winners drawn from the Elo model with the given strengths."""
    from .elo import Vote, expected_score, write_votes_csv

    strengths = strengths or {"svd_xt": 300.0, "svd": 150.0, "baseline": 0.0}
    rng = np.random.default_rng(seed)
    models = sorted(strengths)
    votes = []
    for i in range(n):
        a, b = rng.choice(models, 2, replace=False)
        p = float(expected_score(strengths[a], strengths[b]))
        votes.append(Vote(str(a), str(b), "a" if rng.random() < p else "b", axes[i % len(axes)]))
    write_votes_csv(votes, str(path))
