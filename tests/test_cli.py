"""`python -m svd_core img2vid / orbit / info` on tiny checkpoints in the real layout; files read back with PyAV."""
from __future__ import annotations

import subprocess
import sys

import av
import numpy as np
import pytest
from PIL import Image

from svd_core.__main__ import main
from svd_core.testing import TINY_SV3D_P, make_tiny_checkpoint
from svd_core.video_io import read_video


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    Image.fromarray((np.random.default_rng(0).random((90, 160, 3)) * 255).astype("uint8")).save(d / "in.png")
    return {"dir": d, "image": d / "in.png", "svd": make_tiny_checkpoint(d / "tiny_svd.safetensors"),
            "sv3d": make_tiny_checkpoint(d / "tiny_sv3d_p.safetensors", spec=TINY_SV3D_P)}


def test_img2vid_writes_a_playable_mp4(files):
    out = files["dir"] / "clip.mp4"
    cmd = [sys.executable, "-m", "svd_core", "img2vid", "--checkpoint", str(files["svd"]), "--image",
           str(files["image"]), "--out", str(out), "--steps", "2", "--fps", "8", "--seed", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and "sampling" in proc.stderr  # progress bar on stderr
    with av.open(str(out)) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert (stream.width, stream.height) == (128, 128)
        assert float(stream.average_rate) == pytest.approx(8.0)
        assert sum(1 for _ in c.decode(stream)) == 4


@pytest.mark.parametrize("name", ["clip.webm", "clip.gif", "frames"])
def test_other_formats(files, name):
    out = files["dir"] / name
    assert main(["img2vid", "--checkpoint", str(files["svd"]), "--image", str(files["image"]), "--out", str(out),
                 "--steps", "1", "--frames", "3"]) == 0
    if name == "frames":
        pngs = sorted(out.glob("frame_*.png"))
        assert len(pngs) == 3 and Image.open(pngs[0]).size == (128, 128)
    else:
        video, _ = read_video(out)
        assert video.shape == (3, 3, 128, 128)


def test_orbit_on_sv3d(files):
    out = files["dir"] / "orbit.mp4"
    assert main(["orbit", "--checkpoint", str(files["sv3d"]), "--image", str(files["image"]), "--out", str(out),
                 "--steps", "1", "--elevations", "0,5,10,15,20"]) == 0
    video, _ = read_video(out)
    assert video.shape[0] == 5


def test_orbit_prepares_an_rgba_object_and_keeps_the_input_as_last_view(files):
    """Reference simple_video_sample.py, sv3d branch: an RGBA object is cut to its alpha's bounding box, centred on
    a white square (image_frame_ratio) and the last generated view replaced by that input; both can be turned off."""
    import torch

    from svd_core.object_image import object_input

    rgba = np.zeros((90, 160, 4), dtype=np.uint8)
    rgba[20:60, 30:50] = (200, 40, 40, 255)  # an opaque red box, transparent elsewhere
    Image.fromarray(rgba).save(files["dir"] / "object.png")
    base = ["orbit", "--checkpoint", str(files["sv3d"]), "--image", str(files["dir"] / "object.png"), "--steps", "1",
            "--image-frame-ratio", "0.5"]
    assert main(base + ["--out", str(files["dir"] / "views")]) == 0
    assert main(base + ["--out", str(files["dir"] / "raw"), "--no-replace-last-view"]) == 0
    pngs = sorted((files["dir"] / "views").glob("frame_*.png"))
    last = np.asarray(Image.open(pngs[-1]), dtype=np.float32) / 255.0
    src = torch.from_numpy(rgba.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    expected = object_input(src, width=128, height=128, image_frame_ratio=0.5)[0].permute(1, 2, 0).numpy()
    assert len(pngs) == 5 and np.abs(last - expected).max() <= 1 / 255
    assert np.all(last[:16] == 1.0) and last[64, 64, 0] > 0.7 > last[64, 64, 1]  # white around, red box centred
    raw = np.asarray(Image.open(sorted((files["dir"] / "raw").glob("frame_*.png"))[-1]), dtype=np.float32) / 255.0
    assert np.abs(raw - expected).max() > 0.05


def test_help_states_the_per_variant_defaults(capsys):
    """Reference simple_video_sample.py: num_steps 25 / 30 / 50 per version, seed 23."""
    with pytest.raises(SystemExit):
        main(["img2vid", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "25 svd / svd_image_decoder, 30 svd_xt / svd_xt_1_1 / svd_xt_image_decoder, 50 sv3d_u / sv3d_p" in text
    assert "23 as the reference script" in text and "--noise-device {cpu,device}" in text


@pytest.mark.parametrize("change,message", [
    ({"--checkpoint": "missing.safetensors"}, "checkpoint not found"),
    ({"--image": "missing.png"}, "image not found"),
    ({"--image": "in.txt"}, "not a readable image"),
    ({"--width": "100"}, "argument --width: 100 is impossible: expected an integer in [64, 1048576], a multiple of 64"),
    ({"--frames": "0"}, "argument --frames: 0 is impossible"),
    ({"--checkpoint": "tiny_sv3d_p.safetensors"}, "use `python -m svd_core orbit`"),
    ({"--decode-tile": "2"}, "--decode-tile must be an int >= 4, got 2"),
    ({"--decode-tile": "8", "--decode-tile-overlap": "4"}, "--decode-tile-overlap must be less than half the tile"),
])
def test_clear_errors(files, change, message, capsys):
    (files["dir"] / "in.txt").write_text("not an image")
    args = {"--checkpoint": str(files["svd"]), "--image": str(files["image"]), "--out": str(files["dir"] / "x.mp4"),
            "--steps": "1"}
    args.update({k: str(files["dir"] / v) if k in ("--checkpoint", "--image") else v for k, v in change.items()})
    try:
        code = main(["img2vid"] + [s for kv in args.items() for s in kv])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err  # one line, no traceback
    assert not (files["dir"] / "x.mp4").exists()  # nothing half-written


def test_info_reports_variant(files, capsys):
    assert main(["info", str(files["sv3d"])]) == 0
    out = capsys.readouterr().out
    assert "variant tiny_sv3d_p" in out and "defaults: 4 steps, seed 23" in out  # the spec's (tiny: 4 steps)


@pytest.fixture
def load_once(monkeypatch):
    """`svd_core.load` read and built once per (file, device, dtype, layer operations) in a test, each call handed a
    private copy: runs of one test that differ in sampling or decoding options only do not pay the checkpoint read
    and model build again (the loader is tests/test_engine.py's subject)."""
    import copy

    import svd_core

    real, built = svd_core.load, {}

    def load(path, *, device="cpu", dtype=None, operations=None, **kw):
        key = (str(path), str(device), str(dtype), repr(operations), repr(sorted(kw.items())))
        if key not in built:
            built[key] = real(path, device=device, dtype=dtype, operations=operations, **kw)
        return copy.deepcopy(built[key])

    monkeypatch.setattr(svd_core, "load", load)


@pytest.mark.slow  # four tiny img2vid runs
def test_memory_options_fp8_cfg_in_turn_and_decode_tiles(files, load_once):
    """--cfg-in-turn gives the same video (float32); --decode-tile and --fp8-weights (bf16 compute) run and stay
    close to it."""
    def frames(name, *extra):
        out = files["dir"] / name
        assert main(["img2vid", "--checkpoint", str(files["svd"]), "--image", str(files["image"]), "--out", str(out),
                     "--steps", "1", "--frames", "3", *extra]) == 0
        return np.stack([np.asarray(Image.open(p), dtype=np.float32) / 255 for p in sorted(out.glob("*.png"))])

    plain = frames("plain", "--dtype", "float32")
    assert np.abs(frames("in_turn", "--dtype", "float32", "--cfg-in-turn") - plain).max() <= 2 / 255
    tiled = frames("tiled", "--dtype", "float32", "--decode-tile", "8", "--decode-tile-overlap", "2")
    assert tiled.shape == plain.shape and 0 < np.abs(tiled - plain).mean() < 0.1
    fp8 = frames("fp8", "--dtype", "bfloat16", "--fp8-weights", "--cfg-in-turn")
    assert fp8.shape == plain.shape and np.abs(fp8 - plain).mean() < 0.2
