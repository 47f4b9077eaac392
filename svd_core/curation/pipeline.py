"""The curation pipeline in-process (paper Sec. 3): sources -> cuts/clips -> scores -> manifest -> filters -> stats."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .config import CurationConfig
from .cuts import Cancelled
from .filtering import FilterReport, apply_filters, filters_from_dicts
from .manifest import atomic_write_bytes, motion_histogram, table1_stats, write_manifest
from .ray_runner import ray_rows
from .stages import build_stages, cut_and_clip

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]


@dataclass
class CurationResult:
    """Where a run wrote its outputs, and its Table 1 statistics and filter report."""

    manifest: str
    filtered_manifest: str
    stats: dict
    filtered_stats: dict
    report: FilterReport
    histogram: str | None
    rows: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def finalize(rows: Sequence[dict], cfg: CurationConfig) -> CurationResult:
    """Write manifest.parquet (all clips), manifest_filtered.parquet, filter_report.json, stats.json, motion_hist.png."""
    out = Path(cfg.out_dir)
    rows = sorted(rows, key=lambda r: r["clip_id"])
    manifest = write_manifest(rows, out / "manifest.parquet")
    kept, report = apply_filters(rows, filters_from_dicts(cfg.filters))
    filtered = write_manifest(kept, out / "manifest_filtered.parquet")
    stats, fstats = table1_stats(rows), table1_stats(kept)
    hist = None
    if any("motion" in r for r in rows):
        hist = str(out / "motion_hist.png")
        motion_histogram(rows, hist)
    summary = {"stats": stats, "filtered_stats": fstats,
               "filters": {"total": report.total, "kept": report.kept, "steps": report.steps}}
    atomic_write_bytes(out / "stats.json", json.dumps(summary, indent=2).encode())
    return CurationResult(manifest, filtered, stats, fstats, report, hist, rows)


def run_local(cfg: CurationConfig, progress: ProgressFn | None = None, cancel: CancelFn | None = None,
              sources: Sequence[str] | None = None) -> CurationResult:
    """Run every stage in this process; work already written under out_dir/work is reused, not redone."""
    t0 = time.time()
    sources = list(sources) if sources is not None else cfg.source_list()
    stages = build_stages(cfg)
    clips: list[dict] = []
    for i, src in enumerate(sources):
        if cancel is not None and cancel():
            raise Cancelled(f"curation cancelled after {i} of {len(sources)} sources")
        clips += cut_and_clip(src, cfg, cancel=cancel)
        if progress is not None:
            progress(i + 1, len(sources))  # phase 1: sources, then phase 2: clips x stages
    total = max(len(clips) * len(stages), 1)
    done = 0
    rows = []
    for row in clips:
        for stage in stages:
            if cancel is not None and cancel():
                raise Cancelled(f"curation cancelled at clip {row['clip_id']} ({stage.name})")
            row = stage(row)
            done += 1
            if progress is not None:
                progress(done, total)
        rows.append(row)
    result = finalize(rows, cfg)
    result.seconds = time.time() - t0
    return result


def run(cfg: CurationConfig, progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> CurationResult:
    """Run with the configured runner ('local' in-process or 'ray' through Ray Data)."""
    if cfg.runner != "ray":
        return run_local(cfg, progress, cancel)
    t0 = time.time()
    result = finalize(ray_rows(cfg, progress, cancel), cfg)
    result.seconds = time.time() - t0
    return result


def annotate(rows: Sequence[dict], stage, progress: ProgressFn | None = None,
             cancel: CancelFn | None = None) -> list[dict]:
    """Apply one stage to every clip row (cached per clip), with progress and cancel (the nodes' entry point)."""
    out = []
    for i, row in enumerate(rows):
        if cancel is not None and cancel():
            raise Cancelled(f"{stage.name} cancelled after {i} of {len(rows)} clips (finished clips are kept)")
        out.append(stage(row))
        if progress is not None:
            progress(i + 1, len(rows))
    return out


def cut_and_clip_many(sources: Sequence[str], cfg: CurationConfig, progress: ProgressFn | None = None,
                      cancel: CancelFn | None = None) -> list[dict]:
    """Cut and clip several sources (cached per source), with progress and cancel."""
    rows: list[dict] = []
    for i, src in enumerate(sources):
        if cancel is not None and cancel():
            raise Cancelled(f"clipping cancelled after {i} of {len(sources)} sources")
        rows += cut_and_clip(src, cfg, cancel=cancel)
        if progress is not None:
            progress(i + 1, len(sources))
    return rows
