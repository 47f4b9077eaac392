"""Dataset out (paper Sec. 3, Table 1, Fig. 2): Parquet manifest, Table 1 statistics, motion-score histogram."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..atomic import atomic_write_bytes as _atomic_write_bytes
from ..video_io import figure_to_rgb, new_figure
from . import CurationError

# Columns every manifest row has (scores and captions are added by the stages that ran).
BASE_COLUMNS = ("clip_id", "source", "start", "end", "start_frame", "end_frame", "path", "duration", "frame_count",
                "fps", "width", "height")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> str:
    """Write bytes to a temp file beside `path`, then rename (svd_core.atomic): never half-written."""
    return str(_atomic_write_bytes(path, data))


def write_manifest(rows: Sequence[dict], path: str | os.PathLike) -> str:
    """One Parquet row per clip (source, start/end, path, every score, captions), written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [dict(r) for r in rows]
    columns: list[str] = list(BASE_COLUMNS)
    for r in rows:
        columns += [k for k in r if k not in columns]
    table = pa.table({c: [r.get(c) for r in rows] for c in columns}) if rows else pa.table(
        {c: pa.array([], pa.string()) for c in BASE_COLUMNS})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return atomic_write_bytes(path, buf.getvalue())


def read_manifest(path: str | os.PathLike) -> list[dict]:
    """Rows of a manifest written by `write_manifest`."""
    import pyarrow.parquet as pq

    if not Path(path).is_file():
        raise CurationError(f"manifest {str(path)!r} does not exist; run the pipeline (curate run) to write one")
    return pq.read_table(str(path)).to_pylist()


def table1_stats(rows: Sequence[dict]) -> dict:
    """The paper's Table 1 columns: #clips, mean clip duration (s), total duration (h), mean #frames, clips per video."""
    rows = list(rows)
    if not rows:
        return {"clips": 0, "videos": 0, "mean_duration_s": 0.0, "total_duration_h": 0.0, "mean_frames": 0.0,
                "clips_per_video": 0.0}
    dur = np.array([float(r["duration"]) for r in rows])
    frames = np.array([float(r["frame_count"]) for r in rows])
    videos = len({r["source"] for r in rows})
    return {"clips": len(rows), "videos": videos, "mean_duration_s": float(dur.mean()),
            "total_duration_h": float(dur.sum() / 3600.0), "mean_frames": float(frames.mean()),
            "clips_per_video": len(rows) / videos}


def format_stats(stats: dict) -> str:
    """Table 1 as text."""
    return "\n".join([
        f"clips            {stats['clips']}",
        f"videos           {stats['videos']}",
        f"mean duration    {stats['mean_duration_s']:.2f} s",
        f"total duration   {stats['total_duration_h'] * 3600:.1f} s ({stats['total_duration_h']:.4f} h)",
        f"mean frames      {stats['mean_frames']:.1f}",
        f"clips per video  {stats['clips_per_video']:.2f}",
    ])


def motion_histogram(rows: Sequence[dict], path: str | os.PathLike | None = None, column: str = "motion",
                     bins: int = 50) -> np.ndarray:
    """Histogram of the motion scores like the paper's Fig. 2; returns the PNG as an h w 3 uint8 RGB array."""
    values = np.array([r[column] for r in rows if r.get(column) is not None], dtype=np.float64)
    fig, ax = new_figure()
    if values.size:
        ax.hist(values, bins=bins, color="#3b6ea8")
        ax.axvline(float(np.median(values)), color="k", linestyle="--", linewidth=1, label="median")
        ax.legend()
    ax.set_xlabel(f"{column} score (Farneback flow, 16 px maps)")
    ax.set_ylabel("clips")
    ax.set_title(f"{column} scores of {values.size} clips")
    return figure_to_rgb(fig, path)
