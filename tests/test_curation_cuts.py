"""Cascaded cut detection and keyframe-aware clipping on real footage (paper Sec. 3.1, App. C, Fig. 11)."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from svd_core.curation.clipping import clip_video, snap_shots
from svd_core.curation.cuts import (DEFAULT_CASCADE, SINGLE_CONTENT, CascadeLevel, cascade_from_dicts,
                                   cascade_from_thresholds, detect_cuts)
from svd_core.curation import CurationError
from svd_core.video_io import MediaError, keyframe_times, probe
from test_curation_support import BIKES_CUTS, bikes, bikes_frames, media, read_rgb, write_video  # noqa: F401

REPO = Path(__file__).resolve().parents[1]


def test_bikes_probe_and_keyframes(bikes):
    info = probe(bikes)
    assert (info.width, info.height, info.frame_count, info.fps) == (640, 272, 250, 25.0)
    assert info.duration == pytest.approx(10.0)
    assert keyframe_times(bikes) == pytest.approx([0.0, *BIKES_CUTS])


def test_cascade_finds_the_five_hard_cuts_within_one_frame(bikes):
    result = detect_cuts(bikes)
    assert result.fps == 25.0 and result.frame_count == 250
    assert len(result.cuts) == len(BIKES_CUTS)
    assert np.abs(np.array(result.cuts) - BIKES_CUTS).max() <= 1 / 25 + 1e-9
    assert result.cut_frames == [30, 76, 137, 187, 242]
    # the native content level finds them all; the merge leaves no duplicates from the coarse levels
    assert result.per_level[0] == [30, 76, 137, 187, 242]
    assert result.shots()[0] == (0, 30) and result.shots()[-1] == (242, 250)


def test_cross_fade_found_by_cascade_missed_by_single_content_detector(media):
    lo, hi = media["fade_span"]
    single = detect_cuts(media["fade"], SINGLE_CONTENT)
    assert single.cuts == []  # per-frame change of a 1 s dissolve never reaches the threshold (Fig. 11)
    cascade = detect_cuts(media["fade"], DEFAULT_CASCADE)
    assert len(cascade.cuts) == 1
    assert lo - 0.1 <= cascade.cuts[0] <= hi + 0.1
    assert cascade.per_level[0] == [] and cascade.per_level[2]  # found by the 2 fps level


def test_static_video_has_no_cuts(media):
    assert detect_cuts(media["static"]).cuts == []


def test_cascade_config_errors():
    with pytest.raises(CurationError, match="detector 'sobel' is unknown"):
        CascadeLevel("sobel")
    with pytest.raises(CurationError, match="unknown keys \\['rate'\\]"):
        cascade_from_dicts([{"detector": "content", "rate": 2}])
    with pytest.raises(CurationError, match="fps -1"):
        CascadeLevel("content", -1.0)
    levels = cascade_from_dicts([{"detector": "adaptive", "fps": 4.0, "threshold": 2.0}])
    assert levels == (CascadeLevel("adaptive", 4.0, 2.0),)


def test_missing_video_error(tmp_path):
    with pytest.raises(MediaError, match="does not exist"):
        detect_cuts(tmp_path / "nope.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(MediaError, match="could not be opened"):
        probe(bad)


def test_cancel_raises_the_engines_one_cancelled(bikes):
    """Curation cancels with svd_core.progress.Cancelled, the class generation raises (one cancel protocol)."""
    from svd_core import pipeline
    from svd_core.progress import Cancelled

    assert Cancelled is pipeline.Cancelled
    with pytest.raises(Cancelled, match="cancelled at frame 0"):
        detect_cuts(bikes, cancel=lambda: True)


def test_cli_cuts_json(bikes):
    out = subprocess.run([sys.executable, "-m", "svd_core", "curate", "cuts", bikes, "--json"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["fps"] == 25.0
    assert np.abs(np.array(data["cuts"]) - BIKES_CUTS).max() <= 1 / 25 + 1e-9


def test_snap_shots_never_cross_a_cut():
    # cuts at 10 and 25; keyframes every 8 frames: shot [0,10) -> [0,8); [10,25) -> [16,24); [25,40) -> [32,40)
    assert snap_shots([10, 25], [0, 8, 16, 24, 32], 40) == [(0, 8), (16, 24), (32, 40)]
    # a shot without a keyframe inside is dropped
    assert snap_shots([10, 14], [0, 8, 16], 30) == [(0, 8), (16, 30)]
    assert snap_shots([10], [0, 8, 16], 30, min_frames=10) == [(16, 30)]


def test_clips_are_frame_exact_packet_copies(bikes, bikes_frames, tmp_path):
    before = hashlib.sha1(Path(bikes).read_bytes()).hexdigest()
    result = detect_cuts(bikes)
    specs = clip_video(bikes, result.cut_frames, result.fps, result.frame_count, tmp_path, min_duration=0.5)
    assert hashlib.sha1(Path(bikes).read_bytes()).hexdigest() == before  # the source is never modified
    # the last shot (242..250, 0.32 s) is shorter than min_duration and dropped
    assert [(s.start_frame, s.end_frame) for s in specs] == [(0, 30), (30, 76), (76, 137), (137, 187), (187, 242)]
    for s in specs:
        frames = read_rgb(s.path)
        assert len(frames) == s.end_frame - s.start_frame
        for a, b in zip(frames, bikes_frames[s.start_frame:s.end_frame]):
            np.testing.assert_array_equal(a, b)  # packet copy: decoded pixels identical, no re-encode
        assert probe(s.path).duration == pytest.approx(s.end - s.start, abs=1e-3)
    assert not list(tmp_path.rglob("*.tmp*"))  # nothing half-written left behind
    # min_duration 2 s keeps only the 2.44 s, 2.0 s and 2.2 s shots
    again = clip_video(bikes, result.cut_frames, result.fps, result.frame_count, tmp_path / "b", min_duration=2.0)
    assert [(s.start, s.end) for s in again] == [(3.04, 5.48), (5.48, 7.48), (7.48, 9.68)]


def test_clipping_snaps_to_keyframes_of_a_long_gop(bikes_frames, tmp_path):
    # 100 frames, keyframes every 20: a cut at 50 gives clips [0, 40) and [60, 100)
    src = write_video(tmp_path / "gop.mp4", bikes_frames[:100], gop=20)
    keys = keyframe_times(src)
    assert keys[:3] == pytest.approx([0.0, 0.8, 1.6])
    specs = clip_video(src, [50], 25.0, 100, tmp_path / "out", min_duration=0.0)
    assert [(s.start_frame, s.end_frame) for s in specs] == [(0, 40), (60, 100)]
    src_frames = read_rgb(src)
    clip = read_rgb(specs[1].path)
    assert len(clip) == 40
    np.testing.assert_array_equal(clip[0], src_frames[60])


def test_clips_of_webm_and_gif_sources_are_packet_copies(bikes_frames, tmp_path):
    """The curation scans every container of the one list: our VP9 .webm is cut into .mp4 clips (MP4 holds VP9,
    the reason .webm is written as VP9); a VP8 .webm and a .gif, which MP4 cannot hold, keep their container."""
    import av

    from svd_core.video_io import read_frames
    from svd_core.video_io import write_video as write_media

    frames = np.ascontiguousarray(np.stack(bikes_frames[:20])[:, ::4, ::4])  # t 68 160 3
    vp8 = tmp_path / "src" / "vp8.webm"
    vp8.parent.mkdir()
    with av.open(str(vp8), "w") as out:  # a .webm from elsewhere: VP8
        s = out.add_stream("libvpx", rate=25)
        s.width, s.height, s.pix_fmt = 160, 68, "yuv420p"
        for f in frames:
            out.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(s.encode())
    sources = {"vp9.webm": (write_media(frames, tmp_path / "src" / "vp9.webm", fps=25), ".mp4", "vp9"),
               "vp8.webm": (vp8, ".webm", "vp8"),
               "anim.gif": (write_media(frames, tmp_path / "src" / "anim.gif", fps=25), ".gif", "gif")}
    for name, (src, suffix, codec) in sources.items():
        specs = clip_video(str(src), [], 25.0, 20, tmp_path / "clips", min_duration=0.0)
        assert len(specs) == 1 and Path(specs[0].path).suffix == suffix, name
        assert probe(specs[0].path).codec == codec
        np.testing.assert_array_equal(read_frames(specs[0].path), read_frames(src))


def test_cascade_from_the_nodes_thresholds():
    """The Detect Cuts node's inputs: defaults give DEFAULT_CASCADE, a 0 rate or fade threshold drops that level."""
    assert cascade_from_thresholds() == DEFAULT_CASCADE
    only_hard = cascade_from_thresholds(30.0, mid_fps=0, slow_fps=0, fade_threshold=0)
    assert only_hard == (CascadeLevel("content", None, 30.0, 0.5),)
    slow = cascade_from_thresholds(mid_fps=0, slow_fps=3.0, slow_threshold=2.0, fade_threshold=0)
    assert [(lv.detector, lv.fps, lv.threshold) for lv in slow] == [("content", None, 27.0), ("adaptive", 3.0, 2.0)]
