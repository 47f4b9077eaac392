"""Property test of `python -m svd_core img2vid / orbit` options (issue 12), bounded and cheap (validation only).

Each example draws every option from a pool of valid values and one of malformed ones (zero, negative, NaN, inf,
huge, text, empty, paths that must not be written) and runs the CLI in process up to the point where weights would
be loaded. Property: a request with any malformed value ends in a clean error (exit status 2, one line, no
traceback), a request of valid values only reaches the model load, and nothing is ever written or removed.
"""
from __future__ import annotations

import contextlib
import io
import os
from collections import Counter
from fractions import Fraction
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import svd_core  # noqa: E402
import svd_core.cli.img2vid as cli_img2vid  # noqa: E402
import svd_core.cli.orbit as cli_orbit  # noqa: E402
from svd_core.__main__ import main  # noqa: E402
from svd_core.model import build  # noqa: E402
from svd_core.testing import TINY, TINY_SV3D_P, header_only_png  # noqa: E402

OUTCOMES: Counter = Counter()

# option -> (valid values, malformed values); valid ones keep the tiny request small and consistent
NUMERIC = {
    "--frames": (["1", "3", "4"], ["0", "-2", "2.5", "nan", "1e3x", "", "1000001", "٣"]),
    "--width": (["64", "128"], ["0", "100", "-64", "63", "inf", "abc", "1048640"]),
    "--height": (["64", "128"], ["0", "65", "-128", "1e9", " "]),
    "--steps": (["1", "2", "25"], ["0", "-1", "1001", "nan", "3.0", "10**3"]),
    "--seed": (["0", "42", str(2 ** 64 - 1)], ["-1", str(2 ** 64), "1.5", "seed"]),
    "--cond-aug": (["0", "0.02"], ["-0.1", "nan", "inf", "11", "x"]),
    "--min-cfg": (["1", "1.5"], ["nan", "-inf", "-1", "101", ""]),
    "--max-cfg": (["2.5", "3"], ["inf", "nan", "1e400", "-0.5"]),
    "--decode-t": (["14", "2"], ["0", "-3", "1.5", "nan"]),
    "--overlap": (["0", "1"], ["-1", "0.5", "nan"]),
    "--ff-chunk": (["0", "8192"], ["-1", "1e4", "nan"]),
    "--out-fps": (["7", "0.5", "30", "100"], ["-1", "0", "nan", "inf", "1e6", "0.001", "fast"]),
    "--device": (["cpu"], ["quantum", "cuda:99", "cpu:x", "", "meta"]),
}
IMG2VID = {
    "--fps": (["7", "1", "30"], ["0", "-7", "nan", "inf", "1e9"]),
    "--motion-bucket": (["127", "0", "255"], ["256", "1000", "-1", "nan", "lots"]),
}
ORBIT = {
    "--elevation": (["10", "-90", "90"], ["91", "-91", "nan", "up"]),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A sandbox: a tiny SVD and SV3D checkpoint, images good and bad, an output folder with a user file."""
    root = tmp_path_factory.mktemp("fuzz")
    # checkpoint files stand in for tiny ones: their meta-device model is built from the spec (reading real files
    # is the loader's own test subject); any other path goes to the real loader and must fail cleanly
    specs = {"svd": TINY, "sv3d": TINY_SV3D_P}
    ckpts = {name: root / f"{name}.safetensors" for name in specs}
    for p in ckpts.values():
        p.write_bytes(b"stand-in")
    Image.fromarray((np.random.default_rng(0).random((40, 48, 3)) * 255).astype("uint8")).save(root / "in.png")
    Image.fromarray(np.full((16, 16), 30000, np.uint16)).save(root / "g16.png")
    (root / "notes.txt").write_text("user data")
    (root / "user.mp4").write_text("not a video")
    (root / "folder").mkdir()
    (root / "folder" / "keep.txt").write_text("user data")
    (root / "dir.safetensors").mkdir()
    header_only_png(root / "big.png", 20000, 20000)
    (root / "run").mkdir()  # the working directory of the runs: relative paths land here
    metas = {}
    real_load = svd_core.load
    by_path = {str(p): specs[name] for name, p in ckpts.items()}

    def cached_load(path, *, device="cpu", dtype=None, **kw):
        if str(path) in by_path:
            assert device == "meta", "weights must not be loaded in a validation-only test"
            key = (str(path), str(dtype))
            if key not in metas:
                metas[key] = build(by_path[str(path)], device="meta").to(dtype or torch.float32)
            return metas[key]
        return real_load(path, device=device, dtype=dtype, **kw)

    return {"root": root, "ckpts": ckpts, "load": cached_load}


def _paths(world):
    r = world["root"]
    good_out = [str(r / "run" / "new.mp4"), "rel/clip.webm", "frames_out", str(r / "run" / "x.gif"), "seq.png"]
    bad_out = [".", "..", str(r), str(r / "folder"), str(r / "notes.txt"), str(r / "user.mp4"), "x.txt", "x.jpg",
               "/proc/svd_fuzz/x.mp4", str(r / "notes.txt" / "x.mp4"), "", "clip.MP3", "a\0b.mp4"]
    good_img = [str(r / "in.png"), str(r / "g16.png")]
    bad_img = [str(r / "notes.txt"), str(r / "missing.png"), str(r), "", str(r / "svd.safetensors"),
               str(r / "big.png")]
    bad_ckpt = [str(r / "notes.txt"), str(r / "missing.safetensors"), str(r / "dir.safetensors"), ""]
    return good_out, bad_out, good_img, bad_img, bad_ckpt


def _option(values: tuple[list[str], list[str]]):
    good, bad = values
    ok, malformed = st.tuples(st.sampled_from(good), st.just(True)), st.tuples(st.sampled_from(bad), st.just(False))
    return st.sampled_from((0, 1, 1, 2)).flatmap(lambda k: (ok, st.none(), malformed)[k])  # about 1 in 4 malformed


@st.composite
def requests(draw, world):
    good_out, bad_out, good_img, bad_img, bad_ckpt = _paths(world)
    command = draw(st.sampled_from(["img2vid", "orbit"]))
    ckpt = str(world["ckpts"]["svd" if command == "img2vid" else "sv3d"])
    def pick(good, bad):  # mostly valid, so that requests with one malformed value among valid ones are common
        ok, malformed = st.tuples(st.sampled_from(good), st.just(True)), st.tuples(st.sampled_from(bad), st.just(False))
        return draw(st.sampled_from((True,) * 5 + (False,)).flatmap(lambda k: ok if k else malformed))  # ~1 in 6 bad

    chosen = {"--checkpoint": pick([ckpt], bad_ckpt), "--image": pick(good_img, bad_img),
              "--out": pick(good_out, bad_out)}
    pools = {**NUMERIC, **(IMG2VID if command == "img2vid" else ORBIT)}
    for option in draw(st.lists(st.sampled_from(sorted(pools)), max_size=4, unique=True)):
        value = draw(_option(pools[option]))
        if value is not None:
            chosen[option] = value
    if command == "orbit" and draw(st.booleans()):
        n = int(chosen.get("--frames", ("5", True))[0]) if chosen.get("--frames", ("", True))[1] else 5
        good = ",".join(str(10 * i) for i in range(n))
        chosen["--elevations"] = draw(st.sampled_from([(good, True), ("0,nan", False), ("", False),
                                                       ("0;1", False), (good + ",95", False)]))
    return command, chosen


def _snapshot(root: Path):
    return sorted((str(p.relative_to(root)), p.stat().st_size if p.is_file() else -1) for p in root.rglob("*"))


class _Accepted(Exception):
    pass


def _accept(args):
    raise _Accepted


@settings(max_examples=int(os.environ.get("SVD_FUZZ_EXAMPLES", 80)), deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_cli_options_clean_error_or_accepted_nothing_written(world, data):
    command, chosen = data.draw(requests(world))
    argv = [command] + [s for option, (value, _) in chosen.items() for s in (option, value)]
    all_valid = all(ok for _, ok in chosen.values())
    decode_t = chosen.get("--decode-t", ("14", True))
    overlap = chosen.get("--overlap", ("0", True))
    if decode_t[1] and overlap[1] and int(overlap[0]) >= int(decode_t[0]):
        all_valid = False  # a valid pair that does not go together
    if command == "orbit" and "--elevations" in chosen and chosen["--elevations"][1]:
        frames = chosen.get("--frames", ("5", True))
        all_valid = all_valid and frames[1]
    root = world["root"]
    before = _snapshot(root)
    err = io.StringIO()
    cwd = os.getcwd()
    os.chdir(root / "run")
    try:
        with mock.patch.object(cli_img2vid, "load_model", _accept), mock.patch.object(cli_orbit, "load_model", _accept), \
                mock.patch.object(svd_core, "load", world["load"]), contextlib.redirect_stderr(err), \
                contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(list(argv))
            except SystemExit as exc:
                code = exc.code
            except _Accepted:
                code = "accepted"
    finally:
        os.chdir(cwd)
    message = err.getvalue()
    if code == "accepted":
        OUTCOMES["valid, accepted"] += 1
        assert all_valid, f"accepted a malformed request: {argv}"
    else:
        OUTCOMES["malformed, clean error" if not all_valid else "valid, refused"] += 1
        assert code == 2, (argv, code, message)
        assert "Traceback" not in message and len(message.strip().splitlines()) == 1, (argv, message)
        assert all_valid is False, f"refused a valid request: {argv}: {message}"
    assert _snapshot(root) == before, f"{argv} wrote or removed files"


@settings(max_examples=12, deadline=None, database=None)
@given(fps=st.floats(0.01, 1000.0), frames=st.integers(1, 3), ext=st.sampled_from([".mp4", ".webm", ".gif", ""]))
def test_valid_output_rates_write_what_was_asked(tmp_path_factory, fps, frames, ext):
    """Every --out-fps the CLI accepts gives a readable file of the right length, and nothing else on disk."""
    from svd_core.video_io import MAX_GIF_FPS, read_video, write_video

    folder = tmp_path_factory.mktemp("rates")
    if ext == ".gif" and fps > MAX_GIF_FPS:  # refused up front (CLI: --out-fps / --fps), nothing written
        with pytest.raises(ValueError, match="is impossible for a .gif"):
            write_video(torch.rand(frames, 3, 32, 32), folder / "v.gif", fps=fps)
        assert not list(folder.iterdir())
        OUTCOMES["gif over 100 fps, clean error"] += 1
        return
    video = torch.rand(frames, 3, 32, 32, generator=torch.Generator().manual_seed(frames))
    out = write_video(video, folder / f"v{ext}", fps=fps)
    OUTCOMES["valid output rate, written"] += 1
    assert [p.name for p in folder.iterdir()] == [out.name]
    if ext:
        got, rate = read_video(out)
        assert got.shape == (frames, 3, 32, 32)
        if ext != ".gif":  # GIF delays are centiseconds
            assert rate == pytest.approx(float(Fraction(fps).limit_denominator(1000)), rel=1e-3) or frames == 1
    else:
        assert sorted(p.name for p in out.iterdir()) == [f"frame_{i:05d}.png" for i in range(frames)]


IMAGE_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "I", "I;16", "F")


@settings(max_examples=40, deadline=None, database=None)
@given(mode=st.sampled_from(IMAGE_MODES), fmt=st.sampled_from(["PNG", "TIFF", "JPEG", "WEBP", "GIF"]),
       size=st.tuples(st.integers(1, 24), st.integers(1, 24)), cut=st.one_of(st.none(), st.integers(0, 120)),
       seed=st.integers(0, 3))
def test_any_image_file_loads_in_range_or_fails_cleanly(tmp_path_factory, mode, fmt, size, cut, seed):
    """Every Pillow mode in every format, whole or truncated: an RGB tensor in [0, 1] or one ValueError."""
    from svd_core.video_io import load_image

    folder = tmp_path_factory.mktemp("img")
    rng = np.random.default_rng(seed)
    im = Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8")).convert(mode)
    path = folder / f"im.{fmt.lower()}"
    try:
        im.save(path, format=fmt)
    except (OSError, ValueError, KeyError):  # this format cannot store this mode
        OUTCOMES["image mode not storable, skipped"] += 1
        return
    if cut is not None:
        path.write_bytes(path.read_bytes()[:cut])  # truncated / emptied file
    try:
        x = load_image(path)
    except ValueError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
        OUTCOMES["malformed image, clean error"] += 1
        return
    assert x.shape == (1, 3, size[1], size[0]) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and torch.isfinite(x).all()
    OUTCOMES["image loaded in range"] += 1


def test_zz_report_fuzz_outcomes():
    """Prints the outcome counts of the property test above (run with -s to see them)."""
    print(f"\nCLI fuzz outcomes: {dict(OUTCOMES)}")
    assert not OUTCOMES or OUTCOMES["valid, refused"] == 0
