"""Comparison grid image: one column per model, frames over time down the rows, labelled, for a quick look."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def sample_frame_indices(num_frames: int, count: int) -> list[int]:
    """`count` indices spread evenly over [0, num_frames - 1], first and last included."""
    if num_frames < 1:
        raise ValueError("a video in the grid has no frames")
    count = max(1, min(count, num_frames))
    return np.linspace(0, num_frames - 1, count).round().astype(int).tolist()


def _label_strip(text: str, width: int, height: int) -> torch.Tensor:
    """(height, width, 3) float image with `text` drawn in white on dark grey (PIL's default font)."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (width, height), (32, 32, 32))
    draw = ImageDraw.Draw(im)
    try:
        box = draw.textbbox((0, 0), text)
        tw, th = box[2] - box[0], box[3] - box[1]
    except AttributeError:  # very old Pillow
        tw, th = len(text) * 6, 11
    draw.text((max(2, (width - tw) // 2), max(0, (height - th) // 2 - 1)), text, fill=(235, 235, 235))
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)


def comparison_grid(videos: list[torch.Tensor], labels: list[str] | None = None, num_frames: int = 4,
                    cell_height: int | None = None, gap: int = 4, models_as_columns: bool = True,
                    label_height: int = 18) -> torch.Tensor:
    """Videos (t, h, w, 3) in [0, 1] -> one (1, H, W, 3) image: models side by side, `num_frames` time steps.

    Every cell is resized (antialiased) to a common height, widths follow each video's aspect ratio; with
    `models_as_columns=False` the grid is transposed (one film strip per model).
    """
    if not videos:
        raise ValueError("comparison grid needs at least one video (connect an IMAGE batch to images_1)")
    labels = list(labels or [])
    labels += [f"model {i + 1}" for i in range(len(labels), len(videos))]
    for i, v in enumerate(videos):
        if v.ndim != 4 or v.shape[-1] != 3:
            raise ValueError(f"video {i + 1} ({labels[i]}): expected frames (t, h, w, 3), got {tuple(v.shape)}")
    ch = cell_height or max(int(v.shape[1]) for v in videos)
    cw = max(max(1, round(int(v.shape[2]) * ch / int(v.shape[1]))) for v in videos)
    cells = []  # per model: list of (ch, cw, 3) frames
    for v in videos:
        idx = sample_frame_indices(v.shape[0], num_frames)
        frames = v[idx].float().permute(0, 3, 1, 2)  # t h w c -> t c h w
        frames = F.interpolate(frames, size=(ch, cw), mode="bilinear", antialias=True, align_corners=False)
        frames = frames.clamp(0, 1).permute(0, 2, 3, 1)  # t c h w -> t h w c
        cells.append(list(frames))
    rows = max(len(c) for c in cells)
    n = len(videos)
    bg = 0.1
    if models_as_columns:  # column j = model j, row i = time step i; a label above each column
        H, W = label_height + rows * ch + (rows - 1) * gap, n * cw + (n - 1) * gap
        out = torch.full((H, W, 3), bg)
        for j, col in enumerate(cells):
            x0 = j * (cw + gap)
            out[:label_height, x0: x0 + cw] = _label_strip(labels[j], cw, label_height)
            for i, f in enumerate(col):
                y0 = label_height + i * (ch + gap)
                out[y0: y0 + ch, x0: x0 + cw] = f
    else:  # row j = model j, column i = time step i; a label left of each row
        lw = 96
        H, W = n * ch + (n - 1) * gap, lw + rows * (cw + gap)
        out = torch.full((H, W, 3), bg)
        for j, row in enumerate(cells):
            y0 = j * (ch + gap)
            out[y0: y0 + ch, :lw] = _label_strip(labels[j], lw, ch)
            for i, f in enumerate(row):
                x0 = lw + gap + i * (cw + gap)
                out[y0: y0 + ch, x0: x0 + cw] = f
    return out[None]  # 1 H W 3
