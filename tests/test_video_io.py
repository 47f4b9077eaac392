"""svd_core.video_io, the one media module: round trips for every container of the one extension list, that list
shared by the CLI --out check, the evaluation loader, the curation scanner and training, clear errors for files
that are not videos, and matplotlib figures to PNG."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from svd_core import video_io as V
from svd_core.eval.standins import moving_square

# decoded - written, mean over pixels (0..255): H.264 at CRF 18 and VP9 lose a little to yuv420p chroma; GIF is
# written with the fixed 3-3-2 palette (rgb8), up to ~40 levels off per channel
MEAN_ERROR = {"libx264": 4.0, "libvpx-vp9": 4.0, "gif": 24.0}
DECODER = {"libx264": "h264", "libvpx-vp9": "vp9", "gif": "gif"}


@pytest.fixture(scope="module")
def clip():
    return moving_square(num_frames=6, height=32, width=48, seed=3, speed=6)  # t h w 3 uint8


@pytest.mark.parametrize("ext", V.VIDEO_EXTENSIONS)
def test_every_extension_round_trips(tmp_path, clip, ext):
    """write -> read for every extension of the one list: frame count, size, rate, codec and pixel values."""
    spec = V.CONTAINERS[ext]
    out = V.write_video(clip, tmp_path / f"v{ext}", fps=8)
    assert out == tmp_path / f"v{ext}" and [p.name for p in tmp_path.iterdir()] == [out.name]
    assert spec.starts(out.read_bytes()[:16])  # the signature check_output asks of a file it may replace
    got = V.read_frames(out)
    assert got.shape == clip.shape and got.dtype == np.uint8
    err = np.abs(got.astype(np.float64) - clip)
    assert err.mean() < MEAN_ERROR[spec.codec]
    per_frame = np.abs(got[:, None].astype(np.float64) - clip[None]).mean(axis=(2, 3, 4))  # decoded x written
    assert per_frame.argmin(axis=1).tolist() == list(range(len(clip)))  # every frame back in its place
    video, fps = V.read_video(out)
    assert video.shape == (6, 3, 32, 48) and torch.equal((video * 255).round().byte().permute(0, 2, 3, 1),
                                                         torch.from_numpy(got))
    assert fps == pytest.approx(8.0, rel=0.05 if ext == ".gif" else 1e-6)  # GIF delays are centiseconds
    info = V.probe(out)
    assert (info.frame_count, info.width, info.height, info.codec) == (6, 48, 32, DECODER[spec.codec])
    assert V.read_frames(out, num_frames=4, fps=4).shape[0] == 4  # resampled: every other frame
    assert np.array_equal(V.read_frames(out, num_frames=3, fps=4), got[[0, 2, 4]])


def test_tensor_and_uint8_frames_write_the_same_video(tmp_path, clip):
    """The writer takes the reader's uint8 frames and the pipeline's float tensors alike; odd sizes are cropped
    to even for the yuv420p codecs."""
    as_tensor = torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 255.0  # t h w c -> t c h w
    a = V.read_frames(V.write_video(clip, tmp_path / "a.mp4"))
    b = V.read_frames(V.write_video(as_tensor, tmp_path / "b.mp4"))
    assert np.array_equal(a, b)
    assert V.read_frames(V.write_video(clip[:, :31, :47], tmp_path / "odd.webm")).shape == (6, 30, 46, 3)
    assert V.read_frames(V.write_video(clip[:, :31, :47], tmp_path / "odd.gif")).shape == (6, 31, 47, 3)
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        V.write_video(clip[..., :2], tmp_path / "c.mp4")
    with pytest.raises(ValueError, match="frames of 48x1 pixels cannot be written as .mkv: libx264 needs at least 2x2"):
        V.write_video(clip[:, :1], tmp_path / "thin.mkv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "b.mp4", "odd.gif", "odd.webm"]


def test_one_extension_list_everywhere(tmp_path):
    """The CLI --out check, the evaluation's and the curation's listings, the voting server's types and the
    training scan all use the one list (the same object), so they accept exactly the same files."""
    from svd_core.curation.config import CurationConfig
    from svd_core.eval import study
    from svd_core.training import data

    assert V.VIDEO_EXTENSIONS == tuple(V.CONTAINERS)
    assert study.VIDEO_EXTENSIONS is V.VIDEO_EXTENSIONS and data.VIDEO_EXTENSIONS is V.VIDEO_EXTENSIONS
    assert study.MEDIA_TYPES is V.MEDIA_TYPES
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    wanted = []
    for i, ext in enumerate(V.VIDEO_EXTENSIONS):
        for name in (f"v{i}{ext}", f"sub/w{i}{ext.upper()}"):
            (src / name).write_bytes(b"")
            wanted.append(str(src / name))
    for name in ("x.flv", "y.txt", "z.png", ".v0.mp4.svd-partial-1-0123abcd.mp4"):  # others, our unfinished write
        (src / name).write_bytes(b"")
    assert V.list_videos(src, recursive=True) == sorted(wanted)  # curation / training scan
    assert V.list_videos(src) == sorted(w for w in wanted if "/sub/" not in w)
    assert V.list_videos(src, frame_folders=True) == sorted(w for w in wanted if "/sub/" not in w)  # no images
    (src / "frames").mkdir()
    (src / "frames" / "0.png").write_bytes(b"")
    assert str(src / "frames") in V.list_videos(src, frame_folders=True)  # evaluation: a frame folder is a video
    assert CurationConfig(source_dir=str(src), out_dir=str(tmp_path / "out")).source_list() == sorted(wanted)
    for ext in V.VIDEO_EXTENSIONS:
        assert V.check_output(tmp_path / "out" / f"new{ext}", "--out") == ("video", tmp_path / "out" / f"new{ext}")
        assert study.media_type(f"a{ext}") == V.CONTAINERS[ext].mime
    with pytest.raises(V.OutputError, match=r"--out='.*x\.flv': unsupported extension '\.flv'; use \.mp4, \.m4v"):
        V.check_output(tmp_path / "x.flv", "--out")
    assert study.media_type("a.flv") is None


def test_existing_files_of_each_container_are_replaced_only_when_ours(tmp_path, clip):
    """check_output's content signature, per container: a file of ours is replaced, anything else is kept."""
    for ext in V.VIDEO_EXTENSIONS:
        ours = V.write_video(clip[:2], tmp_path / f"ours{ext}")
        assert V.write_video(clip[:3], ours) == ours and V.probe(ours).frame_count == 3
        foreign = tmp_path / f"foreign{ext}"
        foreign.write_bytes(b"user data, not a video")
        with pytest.raises(V.OutputError, match="is not a .* video we could have written; it is left alone"):
            V.write_video(clip, foreign)
        assert foreign.read_bytes() == b"user data, not a video"


@pytest.mark.parametrize("reader", ["read_frames", "read_video", "probe", "keyframe_times", "iter_frames"])
def test_unreadable_files_give_one_clear_error(tmp_path, clip, reader):
    """Missing, not a video, truncated, or an unknown type: one MediaError naming the file, for every reader."""
    read = {"iter_frames": lambda p: list(V.iter_frames(p))}.get(reader, getattr(V, reader))
    with pytest.raises(V.MediaError, match=r"nope\.mp4' does not exist or is not a file; pass an existing video"):
        read(tmp_path / "nope.mp4")
    (tmp_path / "notes.mp4").write_text("not a video at all")
    (tmp_path / "data.xyz").write_bytes(bytes(range(256)) * 4)
    good = V.write_video(clip, tmp_path / "good.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(good[: len(good) // 2])  # the moov index is at the end: lost
    for name in ("notes.mp4", "data.xyz", "cut.mp4"):
        with pytest.raises(V.MediaError, match=rf"video '.*{name}' could not be opened by PyAV \(.+\); expected a "
                                               rf"video file \(\.mp4 \.m4v"):
            read(tmp_path / name)


def test_read_image_matches_load_image(tmp_path):
    """The evaluation's uint8 reader and the pipeline's float loader decode alike (alpha composited on white)."""
    from PIL import Image

    rgba = np.random.default_rng(0).integers(0, 256, size=(9, 11, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.fromarray(rgba[..., :3]).save(tmp_path / "b.png")
    assert np.array_equal(V.read_image(tmp_path / "b.png"), rgba[..., :3])
    loaded = V.load_image(tmp_path / "a.png")[0].permute(1, 2, 0).numpy()  # 1 c h w -> h w c
    assert np.array_equal(V.read_image(tmp_path / "a.png"), (loaded * 255 + 0.5).astype(np.uint8))
    alpha = rgba[..., 3:] / 255.0
    assert np.abs(V.read_image(tmp_path / "a.png") - (rgba[..., :3] * alpha + 255 * (1 - alpha))).max() <= 1


def test_figure_to_rgb_and_png(tmp_path):
    """One figure helper: the returned array is the PNG written (atomically) at the same size."""
    from PIL import Image

    fig, ax = V.new_figure(figsize=(3, 2), dpi=50)
    ax.plot([0, 1, 2], [2, 0, 1], color="#c0392b")
    rgb = V.figure_to_rgb(fig, tmp_path / "plots" / "f.png")
    assert rgb.shape == (100, 150, 3) and rgb.dtype == np.uint8
    assert [p.name for p in (tmp_path / "plots").iterdir()] == ["f.png"]
    png = np.asarray(Image.open(tmp_path / "plots" / "f.png").convert("RGB"))
    assert np.array_equal(png, rgb)
    assert (np.abs(rgb.astype(int) - (0xC0, 0x39, 0x2B)).sum(-1) < 30).any()  # the red line was drawn
