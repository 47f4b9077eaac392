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


@pytest.mark.parametrize("change,message", [
    ({"--checkpoint": "missing.safetensors"}, "checkpoint not found"),
    ({"--image": "missing.png"}, "image not found"),
    ({"--image": "in.txt"}, "not a readable image"),
    ({"--width": "100"}, "argument --width: 100 is impossible: expected an integer in [64, 1048576], a multiple of 64"),
    ({"--frames": "0"}, "argument --frames: 0 is impossible"),
    ({"--checkpoint": "tiny_sv3d_p.safetensors"}, "use `python -m svd_core orbit`"),
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
    assert "variant tiny_sv3d_p" in capsys.readouterr().out
