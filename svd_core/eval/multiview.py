"""Per-view image metrics between generated and ground-truth views: PSNR, SSIM, LPIPS, CLIP-S (paper Fig. 9)."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

METRICS = ("psnr", "ssim", "lpips", "clip_s")
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False, "clip_s": True}


def _as_views(x, name: str) -> torch.Tensor:
    """(v, h, w, 3) uint8 or float[0,1] (ComfyUI IMAGE layout) -> (v, 3, h, w) float32 in [0, 1]."""
    t = torch.as_tensor(np.asarray(x)) if not torch.is_tensor(x) else x
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"{name}: expected views (v, h, w, 3), got shape {tuple(t.shape)}")
    t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
    return t.permute(0, 3, 1, 2).contiguous()  # v h w c -> v c h w


def _pair(gen, gt) -> tuple[torch.Tensor, torch.Tensor]:
    g, r = _as_views(gen, "generated"), _as_views(gt, "ground truth")
    if g.shape != r.shape:
        raise ValueError(f"generated views {tuple(g.shape)} and ground-truth views {tuple(r.shape)} differ in "
                         "shape (v, c, h, w); resize the generated views or pick matching view counts")
    return g, r


def psnr(gen, gt, max_val: float = 1.0) -> torch.Tensor:
    """PSNR per view: 10 log10(max^2 / MSE); identical views give +inf."""
    g, r = _pair(gen, gt)
    mse = (g.double() - r.double()).pow(2).flatten(1).mean(1)
    return (10.0 * torch.log10(max_val ** 2 / mse)).float()


def ssim(gen, gt, window_size: int = 11) -> torch.Tensor:
    """SSIM per view (Gaussian window 11, sigma 1.5; kornia.metrics.ssim), averaged over pixels and channels."""
    import kornia

    g, r = _pair(gen, gt)
    return kornia.metrics.ssim(g, r, window_size, max_val=1.0).flatten(1).mean(1)


# ---------------------------------------------------------------- LPIPS
def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path!r} not found")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    return sd


def load_lpips(path: str, net: str = "alex", device: str | torch.device = "cpu") -> torch.nn.Module:
    """`lpips.LPIPS` (v0.1) with user-supplied network weights; nothing is downloaded.

    `path` (.safetensors / .pth) holds either the full LPIPS state dict (`net.sliceK.N.*` backbone +
    `linK.model.1.weight` heads, as `lpips.LPIPS().state_dict()` writes it), or only the torchvision backbone
    (`features.N.*`, e.g. torchvision's alexnet / vgg16 file), in which case the linear heads are the ones the
    `lpips` package ships. Unknown or missing backbone tensors are an error.
    """
    import lpips

    with warnings.catch_warnings():  # torchvision's "pretrained is deprecated" note for the random backbone
        warnings.simplefilter("ignore")
        model = lpips.LPIPS(pretrained=True, net=net, pnet_rand=True, verbose=False)
    sd = _read_state_dict(path)
    own = model.state_dict()
    if any(k.startswith("features.") for k in sd):  # torchvision backbone -> net.sliceK.N.*
        by_index = {}
        for k in own:
            if k.startswith("net.slice"):
                _, _, idx, rest = k.split(".", 3)  # net, sliceK, N, weight
                by_index[f"features.{idx}.{rest}"] = k
        unknown = [k for k in sd if k not in by_index]
        if unknown:
            raise ValueError(f"{path}: tensors {unknown[:4]} are not part of the LPIPS-{net} backbone")
        sd = {by_index[k]: v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if not k.startswith("scaling_layer.")}
    unknown = [k for k in sd if k not in own]
    if unknown:
        raise ValueError(f"{path}: tensors {unknown[:4]} are not LPIPS-{net} weights (wrong --lpips-net?)")
    missing = [k for k in own if k.startswith("net.") and k not in sd]
    if missing:
        raise ValueError(f"{path}: LPIPS-{net} backbone tensors missing, e.g. {missing[:3]}")
    for k, v in sd.items():
        if own[k].shape != v.shape:
            raise ValueError(f"{path}: {k} has shape {tuple(v.shape)}, LPIPS-{net} expects {tuple(own[k].shape)}")
    if any(k.startswith("lin") for k in sd):  # the list `lins` aliases lin0..linK: fill both names
        for k in list(sd):
            if k.startswith("lin") and not k.startswith("lins."):
                sd["lins." + k[3:]] = sd[k]
    model.load_state_dict(sd, strict=False)
    return model.eval().to(device)


@torch.no_grad()
def lpips_distance(model: torch.nn.Module, gen, gt, batch_size: int = 8) -> torch.Tensor:
    """LPIPS per view (inputs in [0, 1], mapped to [-1, 1] by the model)."""
    g, r = _pair(gen, gt)
    dev = next(model.parameters()).device
    out = [model(g[i: i + batch_size].to(dev), r[i: i + batch_size].to(dev), normalize=True).flatten().cpu()
           for i in range(0, g.shape[0], batch_size)]
    return torch.cat(out)


# ---------------------------------------------------------------- CLIP-S
def load_clip(model_name: str, weights: str, device: str | torch.device = "cpu") -> torch.nn.Module:
    """open_clip `create_model(name, pretrained=None)` + the user's weights file (nothing is downloaded)."""
    import open_clip

    if not weights or not os.path.isfile(weights):
        raise FileNotFoundError(f"CLIP weights {weights!r} not found: supply the open_clip checkpoint of "
                                f"{model_name} (.safetensors / .bin / .pt)")
    model = open_clip.create_model(model_name, pretrained=None, device="cpu")
    open_clip.load_checkpoint(model, weights)
    return model.eval().to(device)


def clip_preprocess(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(v, 3, h, w) [0,1] -> resized (bicubic, antialiased, short side), center-cropped, CLIP-normalised."""
    visual = model.visual
    size = visual.image_size if isinstance(visual.image_size, int) else visual.image_size[0]
    cfg = getattr(visual, "preprocess_cfg", {}) or {}
    mean = torch.tensor(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))).view(1, 3, 1, 1)
    std = torch.tensor(cfg.get("std", (0.26862954, 0.26130258, 0.27577711))).view(1, 3, 1, 1)
    h, w = x.shape[-2:]
    s = size / min(h, w)
    x = F.interpolate(x, size=(max(size, round(h * s)), max(size, round(w * s))), mode="bicubic",
                      antialias=True, align_corners=False).clamp(0, 1)
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    x = x[..., top: top + size, left: left + size]
    return (x - mean) / std


@torch.no_grad()
def clip_similarity(model: torch.nn.Module, gen, gt, batch_size: int = 8) -> torch.Tensor:
    """CLIP-S per view: cosine similarity of the CLIP image embeddings of generated and ground-truth view."""
    g, r = _pair(gen, gt)
    dev = next(model.parameters()).device
    sims = []
    for i in range(0, g.shape[0], batch_size):
        eg = model.encode_image(clip_preprocess(model, g[i: i + batch_size]).to(dev))
        er = model.encode_image(clip_preprocess(model, r[i: i + batch_size]).to(dev))
        sims.append(F.cosine_similarity(eg.float(), er.float(), dim=-1).cpu())
    return torch.cat(sims)


# ---------------------------------------------------------------- table
@dataclass
class ViewMetrics:
    """Per-view values of each metric and their means (a row of the paper's Fig. 9 table)."""

    per_view: dict[str, list[float]] = field(default_factory=dict)

    @property
    def mean(self) -> dict[str, float]:
        return {k: float(np.mean(v)) for k, v in self.per_view.items()}

    def as_dict(self) -> dict:
        return {"per_view": self.per_view, "mean": self.mean}

    def format(self) -> str:
        keys = list(self.per_view)
        arrows = {k: ("↑" if HIGHER_IS_BETTER.get(k, True) else "↓") for k in keys}
        head = f"{'view':<6}" + "".join(f"{k + arrows[k]:>11}" for k in keys)
        n = len(next(iter(self.per_view.values()))) if keys else 0
        rows = [f"{i:<6}" + "".join(f"{self.per_view[k][i]:11.4f}" for k in keys) for i in range(n)]
        return "\n".join([head, *rows, f"{'mean':<6}" + "".join(f"{self.mean[k]:11.4f}" for k in keys)]) + "\n"


def view_metrics(gen, gt, lpips_model: torch.nn.Module | None = None, clip_model: torch.nn.Module | None = None,
                 metrics: tuple[str, ...] = METRICS) -> ViewMetrics:
    """Every requested metric per view; LPIPS / CLIP-S need their models (skipped when the model is None)."""
    out: dict[str, list[float]] = {}
    for m in metrics:
        if m == "psnr":
            out[m] = psnr(gen, gt).tolist()
        elif m == "ssim":
            out[m] = ssim(gen, gt).tolist()
        elif m == "lpips" and lpips_model is not None:
            out[m] = lpips_distance(lpips_model, gen, gt).tolist()
        elif m == "clip_s" and clip_model is not None:
            out[m] = clip_similarity(clip_model, gen, gt).tolist()
        elif m not in METRICS:
            raise ValueError(f"unknown metric {m!r}; expected some of {', '.join(METRICS)}")
    return ViewMetrics(out)
