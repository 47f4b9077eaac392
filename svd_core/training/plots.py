"""Loss curve of a run (training loss per step, validation loss per check) as a PNG and an RGB array."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from ..video_io import figure_to_rgb, new_figure


def loss_curve(losses: Sequence[tuple[int, float]], val: Sequence[tuple[int, float]] = (),
               path: str | os.PathLike | None = None, title: str = "training loss") -> np.ndarray:
    """Plot (step, loss) pairs (log y axis, with a moving average) -> h w 3 uint8; written atomically to `path`."""
    fig, ax = new_figure()
    if losses:
        s, v = np.array([x[0] for x in losses]), np.array([x[1] for x in losses], dtype=np.float64)
        ax.plot(s, v, color="#9bb7d4", linewidth=0.8, label="train (per step)")
        k = max(1, len(v) // 20)
        if k > 1:
            avg = np.convolve(v, np.ones(k) / k, mode="valid")
            ax.plot(s[k - 1:], avg, color="#3b6ea8", linewidth=1.5, label=f"train (mean of {k})")
    if val:
        ax.plot([x[0] for x in val], [x[1] for x in val], "o-", color="#c0392b", label="validation")
    if losses or val:
        ax.set_yscale("log")
        ax.legend()
    ax.set_xlabel("step")
    ax.set_ylabel("weighted EDM loss")
    ax.set_title(title)
    return figure_to_rgb(fig, path)
