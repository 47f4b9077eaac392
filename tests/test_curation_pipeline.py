"""The whole curation pipeline (paper Sec. 3): in-process and on Ray Data, resumable, manifest, Table 1, CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from svd_core.curation import pipeline as pipeline_mod
from svd_core.curation.config import CurationConfig, load_config
from svd_core.curation.manifest import read_manifest, table1_stats
from svd_core.curation.stages import MotionStage
from svd_core.curation import CurationError
from test_curation_support import bikes, bikes_frames, media, tiny_models  # noqa: F401

REPO = Path(__file__).resolve().parents[1]


def _cfg(out, bikes, media, tiny_models, **kw):
    (clip_cfg, clip_w), (coca_cfg, coca_w) = tiny_models["clip"], tiny_models["coca"]
    base = dict(out_dir=str(out), sources=[bikes, media["static"]], min_duration=0.5, clip_model=clip_cfg,
                clip_weights=clip_w, aesthetic_weights=tiny_models["aesthetic"], coca_model=coca_cfg,
                coca_weights=coca_w, caption_max_len=8, filters=[{"column": "motion", "percent": 25.0}])
    base.update(kw)
    return CurationConfig(**base)


def _mtimes(folder: Path) -> dict:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, bikes, media, tiny_models):
    out = tmp_path_factory.mktemp("curate-local")
    cfg = _cfg(out, bikes, media, tiny_models)
    seen = []
    result = pipeline_mod.run(cfg, progress=lambda d, t: seen.append((d, t)))
    return cfg, result, seen


def test_local_pipeline_manifest_and_stats(local_run, bikes, media):
    cfg, result, seen = local_run
    rows = read_manifest(result.manifest)
    assert [r["clip_id"].rsplit("_", 1)[1] for r in rows] == ["0000", "0001", "0002", "0003", "0004", "0000"]
    bike_rows = [r for r in rows if r["source"] == bikes]
    assert [(r["start"], r["end"]) for r in bike_rows] == [(0.0, 1.2), (1.2, 3.04), (3.04, 5.48), (5.48, 7.48),
                                                           (7.48, 9.68)]
    for col in ("path", "duration", "frame_count", "fps", "width", "height", "motion", "aesthetic", "clip_score",
                "clip_score_coca", "caption_coca", "clip_embedding"):
        assert all(r.get(col) is not None for r in rows), col
    assert all(len(r["clip_embedding"]) == 32 for r in rows)
    static = next(r for r in rows if r["source"] == media["static"])
    assert static["motion"] < min(r["motion"] for r in bike_rows)
    stats = table1_stats(rows)
    assert stats["clips"] == 6 and stats["videos"] == 2 and stats["clips_per_video"] == 3.0
    assert stats["mean_duration_s"] == pytest.approx((1.2 + 1.84 + 2.44 + 2.0 + 2.2 + 2.0) / 6)
    assert stats["mean_frames"] == pytest.approx((30 + 46 + 61 + 50 + 55 + 50) / 6)
    assert result.stats == stats
    # bottom 25% motion removed: the static clip and the slowest bikes clip
    kept = read_manifest(result.filtered_manifest)
    assert len(kept) == 4 and result.report.steps[0]["removed"] == 2 and static["clip_id"] not in {
        r["clip_id"] for r in kept}
    summary = json.loads((Path(cfg.out_dir) / "stats.json").read_text())
    assert summary["filters"]["steps"][0]["removed"] == 2
    from PIL import Image

    img = Image.open(result.histogram)
    assert img.size == (600, 400)
    assert seen[-1][0] == seen[-1][1] == 6 * 3  # progress reached clips x stages
    assert not list(Path(cfg.out_dir).rglob("*.tmp*"))


def test_rerun_reprocesses_nothing(local_run, monkeypatch):
    cfg, result, _ = local_run
    before = _mtimes(Path(cfg.out_dir) / "work") | _mtimes(Path(cfg.out_dir) / "clips")

    def boom(*a, **k):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(MotionStage, "compute", boom)
    monkeypatch.setattr("svd_core.curation.stages.detect_cuts", boom)
    again = pipeline_mod.run(cfg)
    assert _mtimes(Path(cfg.out_dir) / "work") | _mtimes(Path(cfg.out_dir) / "clips") == before
    assert [r["motion"] for r in again.rows] == [r["motion"] for r in result.rows]


def test_crash_leftovers_are_ignored_and_missing_work_redone(tmp_path, bikes, media, tiny_models):
    cfg = _cfg(tmp_path, bikes, media, tiny_models, clip_model=None, clip_weights=None, aesthetic_weights=None,
               coca_model=None, coca_weights=None)
    first = pipeline_mod.run(cfg)
    # simulate a crash: one motion result lost, a half-written temp file left, the per-source index lost
    victim = first.rows[2]["clip_id"]
    (tmp_path / "work" / "motion" / f"{victim}.json").unlink()
    (tmp_path / "work" / "motion" / f".{victim}.json.999.tmp").write_text("{half")
    index = next((tmp_path / "work" / "clips").glob("bikes-*.json"))
    index.unlink()
    clip_times = {p: p.stat().st_mtime_ns for p in (tmp_path / "clips").rglob("*.mp4")}
    calls = []
    orig = MotionStage.compute

    def counting(self, row):
        calls.append(row["clip_id"])
        return orig(self, row)

    import svd_core.curation.stages as stages

    stages.MotionStage.compute = counting
    try:
        second = pipeline_mod.run(cfg)
    finally:
        stages.MotionStage.compute = orig
    assert calls == [victim]
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "clips").rglob("*.mp4")} == clip_times  # clips kept
    assert [r["motion"] for r in second.rows] == pytest.approx([r["motion"] for r in first.rows])


def test_ray_pipeline_matches_local_and_resumes(tmp_path, local_run):
    import ray

    cfg, local, _ = local_run
    # start from the local run's work with one clip's CLIP results missing: Ray redoes only that clip
    import shutil

    shutil.copytree(cfg.out_dir, tmp_path / "out")
    victim = local.rows[0]["clip_id"]
    (tmp_path / "out" / "work" / "clip" / f"{victim}.json").unlink()
    rows_json = {}
    for p in (tmp_path / "out" / "work" / "clips").glob("*.json"):  # point the copied rows at the copied clips
        rows = json.loads(p.read_text())
        for r in rows:
            r["path"] = r["path"].replace(cfg.out_dir, str(tmp_path / "out"))
        p.write_text(json.dumps(rows))
        rows_json[p.name] = rows
    before = _mtimes(tmp_path / "out" / "work")
    rcfg = CurationConfig(**{**cfg.to_dict(), "out_dir": str(tmp_path / "out"), "runner": "ray"})
    seen = []
    try:
        result = pipeline_mod.run(rcfg, progress=lambda d, t: seen.append((d, t)))
    finally:
        ray.shutdown()
    after = _mtimes(tmp_path / "out" / "work")
    changed = sorted(p for p in after if before.get(p) != after[p])
    assert changed == [str(tmp_path / "out" / "work" / "clip" / f"{victim}.json")]
    assert seen[-1] == (6, 6)
    by_id = {r["clip_id"]: r for r in result.rows}
    for r in local.rows:
        assert by_id[r["clip_id"]]["motion"] == pytest.approx(r["motion"])
        assert by_id[r["clip_id"]]["aesthetic"] == pytest.approx(r["aesthetic"], abs=1e-5)
        assert by_id[r["clip_id"]]["caption_coca"] == r["caption_coca"]
    assert result.stats == local.stats and result.report.kept == local.report.kept


def test_config_toml_and_cli_run_and_stats(tmp_path, bikes):
    cfg_path = tmp_path / "curate.toml"
    cfg_path.write_text(f'out_dir = "out"\nsources = ["{bikes}"]\nmin_duration = 2.0\nfilters = "lvd-f"\n'
                        f'motion = true\n')
    cfg = load_config(cfg_path)
    assert cfg.out_dir == str(tmp_path / "out") and cfg.filters == "lvd-f"
    out = subprocess.run([sys.executable, "-m", "svd_core", "curate", "run", str(cfg_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=180)
    # lvd-f needs aesthetic / clip_score / text_area columns that this config does not compute
    assert out.returncode == 2 and "filter column 'aesthetic' is not in the manifest" in out.stderr
    cfg_path.write_text(f'out_dir = "out"\nsources = ["{bikes}"]\nmin_duration = 2.0\n'
                        f'filters = [{{column = "motion", percent = 50.0}}]\n')
    out = subprocess.run([sys.executable, "-m", "svd_core", "curate", "run", str(cfg_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert "3 clips in, 2 kept" in out.stdout
    stats = subprocess.run([sys.executable, "-m", "svd_core", "curate", "stats",
                            str(tmp_path / "out" / "manifest.parquet"), "--json"], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    data = json.loads(stats.stdout)
    assert data["clips"] == 3 and data["mean_duration_s"] == pytest.approx((2.44 + 2.0 + 2.2) / 3)
    assert data["clips_per_video"] == 3.0


def test_config_errors(tmp_path):
    with pytest.raises(CurationError, match="runner 'spark' is unknown"):
        CurationConfig(out_dir=str(tmp_path), runner="spark")
    with pytest.raises(CurationError, match="clip_model and clip_weights go together"):
        CurationConfig(out_dir=str(tmp_path), clip_model="ViT-L-14")
    with pytest.raises(CurationError, match="no source videos"):
        CurationConfig(out_dir=str(tmp_path)).source_list()
    bad = tmp_path / "c.json"
    bad.write_text(json.dumps({"out_dir": "o", "colour": 1}))
    with pytest.raises(CurationError, match="unknown keys \\['colour'\\]"):
        load_config(bad)
