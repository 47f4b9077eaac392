"""Issue 12 regressions: outputs never destroy what we did not write, requests are bounded in memory, every CLI
option and API argument is checked before the model loads (one-line errors, exit status 2, no traceback)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import svd_core.cli.img2vid as cli_img2vid
import svd_core.cli.orbit as cli_orbit
from svd_core import atomic
from svd_core.__main__ import main
from svd_core.memory import MemoryBudgetError, activation_peak, estimate_request
from svd_core.model import build
from svd_core.testing import TINY, TINY_XT, header_only_png, make_tiny_checkpoint
from svd_core.video_io import OutputError, check_output, load_image, read_video, write_video


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.fixture
def image(tmp_path):
    p = tmp_path / "in.png"
    Image.fromarray((np.random.default_rng(0).random((40, 48, 3)) * 255).astype("uint8")).save(p)
    return p


@pytest.fixture
def no_real_load(monkeypatch):
    """Fail the test if the CLI gets as far as loading weights (validation must refuse first)."""
    def refuse(args):
        raise AssertionError("the model was loaded although the request is invalid")
    for module in (cli_img2vid, cli_orbit):  # the commands hold their own reference to common.load_model
        monkeypatch.setattr(module, "load_model", refuse)


def _cli(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's errors
        code = exc.code
    out = capsys.readouterr()
    return code, out.err


def _clean_error(code, err, *needles):
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


def _frames(t=3, h=32, w=32, seed=0):
    return torch.rand(t, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --------------------------------------------------------------------------------------------- (a) safe outputs


def test_out_folder_with_user_files_is_refused_untouched(tmp_path, ckpt, image, capsys, no_real_load):
    keep = tmp_path / "work"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    (keep / "frame_00000.png").write_bytes(b"not a png")  # named like ours, but not a PNG
    code, err = _cli(["img2vid", "--checkpoint", str(ckpt), "--image", str(image), "--out", str(keep)], capsys)
    _clean_error(code, err, "--out", "not our frame files")
    assert (keep / "notes.txt").read_text() == "mine" and _listing(keep) == ["frame_00000.png", "notes.txt"]


def test_out_dot_never_touches_the_working_directory(tmp_path, ckpt, image, capsys, monkeypatch, no_real_load):
    monkeypatch.chdir(tmp_path)
    before = _listing(tmp_path)
    code, err = _cli(["img2vid", "--checkpoint", str(ckpt), "--image", str(image), "--out", "."], capsys)
    _clean_error(code, err, "--out='.'")
    assert _listing(tmp_path) == before


def test_frames_go_to_a_new_folder_or_replace_only_our_frames(tmp_path):
    folder = tmp_path / "frames"
    write_video(_frames(5), folder)
    assert _listing(folder) == [f"frame_{i:05d}.png" for i in range(5)]
    second = _frames(3, seed=1)
    write_video(second, tmp_path / "frames.png")  # NAME.png is the folder NAME; 3 frames replace 5
    assert _listing(folder) == [f"frame_{i:05d}.png" for i in range(3)]
    got = np.asarray(Image.open(folder / "frame_00002.png"), dtype=np.float32) / 255
    assert np.abs(got - second[2].permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6  # the new frames
    assert _listing(tmp_path) == ["frames"] + [f"frames/frame_{i:05d}.png" for i in range(3)]  # no temp left
    empty = tmp_path / "empty"
    empty.mkdir()
    write_video(_frames(2), empty)
    assert _listing(empty) == ["frame_00000.png", "frame_00001.png"]


def test_existing_file_replaced_only_if_it_is_our_kind_of_video(tmp_path):
    out = tmp_path / "clip.mp4"
    out.write_text("my thesis")  # not an MP4: refused, untouched
    with pytest.raises(OutputError, match=r"out=.*clip.mp4.* is not a .mp4 video we could have written"):
        write_video(_frames(), out, option="out")
    assert out.read_text() == "my thesis"
    out.write_bytes(b"")  # an empty file holds nothing to lose
    write_video(_frames(), out)
    assert read_video(out)[0].shape == (3, 3, 32, 32)
    write_video(_frames(4), out)  # a video we wrote is replaced
    assert read_video(out)[0].shape[0] == 4
    gif = tmp_path / "a.gif"
    gif.write_bytes(out.read_bytes())  # an MP4 named .gif: content and extension disagree
    with pytest.raises(OutputError, match="is not a .gif video"):
        write_video(_frames(), gif)
    (tmp_path / "dir.mp4").mkdir()
    with pytest.raises(OutputError, match="exists and is not a file"):
        check_output(tmp_path / "dir.mp4")
    (tmp_path / "link.mp4").symlink_to(out)
    with pytest.raises(OutputError, match="symbolic link"):
        check_output(tmp_path / "link.mp4")
    with pytest.raises(OutputError, match="is not a folder"):
        check_output(out / "inside.gif")  # a file where a folder would have to be


def test_outputs_get_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        video = write_video(_frames(), tmp_path / "v.webm")
        folder = write_video(_frames(2), tmp_path / "f")
        save = atomic.atomic_write_bytes(tmp_path / "data.bin", b"x")
    finally:
        os.umask(old)
    assert video.stat().st_mode & 0o777 == 0o644 and save.stat().st_mode & 0o777 == 0o644
    assert folder.stat().st_mode & 0o777 == 0o755 and (folder / "frame_00000.png").stat().st_mode & 0o777 == 0o644


def test_interrupted_write_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    import av

    out = tmp_path / "v.mp4"
    write_video(_frames(2), out)
    before = out.read_bytes()

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_video(_frames(3), out)
    monkeypatch.setattr(Image.Image, "save", interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_video(_frames(3), tmp_path / "frames")
    assert out.read_bytes() == before and _listing(tmp_path) == ["v.mp4"]


def test_ctrl_c_in_the_cli_is_one_line_and_leaves_nothing(tmp_path, ckpt, image, capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli_img2vid, "load_model", interrupted)
    code, err = _cli(["img2vid", "--checkpoint", str(ckpt), "--image", str(image), "--out", str(tmp_path / "o.mp4")],
                     capsys)
    assert code == 130 and err.strip() == "python -m svd_core img2vid: interrupted; unfinished output files were removed"
    assert _listing(tmp_path) == ["in.png"]


def test_stale_temps_of_dead_runs_are_swept_and_nothing_else(tmp_path):
    target = tmp_path / "v.mp4"
    dead = 2 ** 22 + 12345  # above the default pid_max: no such process
    stale = tmp_path / f".v.mp4{atomic.MARKER}{dead}-0123abcd.mp4"
    stale.write_bytes(b"half")
    live = tmp_path / f".v.mp4{atomic.MARKER}1-0123abcd.mp4"  # pid 1 runs
    live.write_bytes(b"busy")
    other = tmp_path / f".w.mp4{atomic.MARKER}{dead}-0123abcd.mp4"  # another target's: not ours to sweep now
    other.write_bytes(b"x")
    user = tmp_path / ".v.mp4.tmp"
    user.write_bytes(b"user file")
    stale_dir = tmp_path / f".frames{atomic.MARKER}{dead}-0123abcd"
    stale_dir.mkdir()
    (stale_dir / "frame_00000.png").write_bytes(b"x")
    write_video(_frames(), target)
    write_video(_frames(1), tmp_path / "frames")
    assert not stale.exists() and not stale_dir.exists()
    assert live.exists() and other.exists() and user.read_bytes() == b"user file"


def test_unwritable_and_unknown_outputs_fail_before_loading(tmp_path, ckpt, image, capsys, no_real_load):
    base = ["img2vid", "--checkpoint", str(ckpt), "--image", str(image)]
    code, err = _cli(base + ["--out", "/proc/svd_suite_test/x.mp4"], capsys)
    _clean_error(code, err, "--out", "cannot write")
    code, err = _cli(base + ["--out", str(tmp_path / "x.txt")], capsys)
    _clean_error(code, err, "--out", "unsupported extension '.txt'")
    assert _listing(tmp_path) == ["in.png"]


def test_routed_writers_make_normal_files(tmp_path):
    from svd_core.loading import save_tensors

    old = os.umask(0o022)
    try:
        p = save_tensors({"a": torch.zeros(2)}, tmp_path / "t.safetensors")
    finally:
        os.umask(old)
    assert p.stat().st_mode & 0o777 == 0o644 and _listing(tmp_path) == ["t.safetensors"]


def test_eval_writers_are_atomic_with_normal_permissions(tmp_path):
    """The votes table, the study manifest and the UCF-101 manifest go through svd_core.atomic: 0644 under umask
    022 (mkstemp made them 0600), and a write failing half-way keeps the old file and leaves no temp file."""
    from svd_core.eval.elo import Vote, read_votes_csv, write_votes_csv
    from svd_core.eval.study import Study, StudyItem, save_study
    from svd_core.eval.ucf101 import _write_json

    votes = [Vote("m,1", "m2", "a"), Vote("m2", 'm"3', "tie", "motion")]  # names that need CSV quoting
    study = Study("s", [StudyItem("i1", "a cat", None, {"m1": str(tmp_path / "m1" / "i1.mp4")})])
    writers = [("votes.csv", lambda p: write_votes_csv(votes, p), lambda p: write_votes_csv(votes + [object()], p)),
               ("study.json", lambda p: save_study(study, p),
                lambda p: save_study(Study("s", [StudyItem("i1"), object()]), p)),
               ("manifest.json", lambda p: _write_json(p, {"a": 1}), lambda p: _write_json(p, {"a": 1, "b": object()}))]
    old = os.umask(0o022)
    try:
        for name, write, failing in writers:
            path = tmp_path / name
            write(str(path))
            first = path.read_bytes()
            with pytest.raises((AttributeError, TypeError)):
                failing(str(path))
            assert path.read_bytes() == first and path.stat().st_mode & 0o777 == 0o644, name
    finally:
        os.umask(old)
    assert _listing(tmp_path) == ["manifest.json", "study.json", "votes.csv"]  # no temp file left
    assert read_votes_csv(str(tmp_path / "votes.csv")) == votes
    assert json.loads((tmp_path / "study.json").read_text())["items"][0]["videos"] == {"m1": "m1/i1.mp4"}
    # a manifest that holds the organiser token (it unlocks the results) is readable by its owner only
    study.organiser_token = "t" * 32
    old = os.umask(0o022)
    try:
        save_study(study, str(tmp_path / "secret.json"))
    finally:
        os.umask(old)
    assert (tmp_path / "secret.json").stat().st_mode & 0o777 == 0o600
    assert json.loads((tmp_path / "secret.json").read_text())["organiser_token"] == "t" * 32


# --------------------------------------------------------------------------------------------- (b) resource bounds


@pytest.mark.parametrize("option,value,needle", [("--frames", "100000", "at 128x128 at most "),
                                                 ("--width", "65536", "4 frames fit up to ")])
def test_huge_requests_are_refused_with_what_fits(ckpt, image, tmp_path, capsys, monkeypatch, no_real_load,
                                                  option, value, needle):
    monkeypatch.setattr("svd_core.memory.available_bytes", lambda device="cpu": 4 * 2 ** 30)
    code, err = _cli(["img2vid", "--checkpoint", str(ckpt), "--image", str(image), "--out", str(tmp_path / "o.mp4"),
                      option, value], capsys)
    _clean_error(code, err, "need about", "GiB on cpu", "only 4.0 GiB is available", needle)
    fit = int(err.split(needle)[1].split()[0].split("x")[0])
    model = build(TINY, device="meta")
    if option == "--frames":
        assert "(set --frames)" in err
        sizes = [dict(frames=fit), dict(frames=fit + 1)]
        kw = dict(height=128, width=128)
    else:
        assert "(set --width)" in err and fit % 64 == 0
        sizes = [dict(width=fit), dict(width=fit + 64)]
        kw = dict(height=128, frames=TINY.num_frames)
    # the advice is exact for the estimate of what the run needs at least: --cfg-in-turn auto (the default) runs
    # the CFG branches one after the other when both at once would not fit
    ok, too_big = (estimate_request(model, decode_t=TINY.decode_t, cfg=False, **kw, **s).total for s in sizes)
    assert ok <= 4 * 2 ** 30 < too_big


def test_api_refuses_before_allocating():
    model = build(TINY, device="meta")  # nothing could even be computed: the check must come first
    with pytest.raises(MemoryBudgetError, match=r"100000 frames at 128x128 need about .* at most \d+ frames fit"):
        from svd_core.pipeline import img2vid

        img2vid(model, torch.rand(1, 3, 64, 64), num_frames=100000, device="cpu")


def test_estimate_bounds_the_meta_device_accounting():
    model = build(TINY_XT, device="meta")
    model.set_channels_last(True)
    u, t, h, w = TINY_XT.unet, 6, 128, 128
    b = 2 * t
    x = torch.empty(b, u.in_channels, h // 8, w // 8, device="meta")
    unet = activation_peak(lambda: model.unet(x, torch.empty(b, device="meta"),
                                              context=torch.empty(b, 1, u.context_dim, device="meta"),
                                              y=torch.empty(b, u.adm_in_channels, device="meta"), num_video_frames=t))
    z = torch.empty(t, 4, h // 8, w // 8, device="meta")
    dec = activation_peak(lambda: model.first_stage_model.decode(z, t))
    est = estimate_request(model, frames=t, height=h, width=w, decode_t=t, dtype=torch.float32)
    assert unet <= est.sampling <= 3 * unet + 2 ** 24 and dec <= est.decoding
    assert sum(est.weights.values()) == 4 * sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("side", [13000, 20000])
def test_huge_images_are_refused_from_the_header(tmp_path, side, monkeypatch):
    from PIL import Image

    p = header_only_png(tmp_path / "big.png", side, side)
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self.size))
    with pytest.raises(ValueError, match=rf"{side}x{side} \({side * side / 1e6:.0f} megapixels\)|"
                                         rf"{side * side / 1e6:.0f} megapixels, over the input limit of 50"):
        load_image(p)
    assert decoded == []  # refused from the header: no pixel decoded


def test_huge_image_cli_error(tmp_path, ckpt, capsys, no_real_load):
    p = header_only_png(tmp_path / "big.png", 20000, 20000)
    code, err = _cli(["img2vid", "--checkpoint", str(ckpt), "--image", str(p), "--out", str(tmp_path / "o.mp4")],
                     capsys)
    _clean_error(code, err, "--image", "400 megapixels, over the input limit of 50 megapixels")


# --------------------------------------------------------------------------------------------- (c) image modes


@pytest.mark.parametrize("mode,make,expected", [
    ("I;16", lambda: Image.fromarray(np.full((8, 8), 32768, np.uint16)), 32768 / 65535),
    ("I", lambda: Image.fromarray(np.full((8, 8), 16384, np.int32)), 16384 / 65535),
    ("F", lambda: Image.fromarray(np.full((8, 8), 0.25, np.float32)), 0.25),
    ("LA", lambda: Image.fromarray(np.dstack([np.full((8, 8), 0, np.uint8), np.full((8, 8), 128, np.uint8)]),
                                   "LA"), 127 / 255),
    ("CMYK", lambda: Image.new("CMYK", (8, 8), (0, 0, 0, 128)), 127 / 255),
    ("P", lambda: _palette_with_transparency(), 1.0),
])
def test_every_pillow_mode_is_scaled_right(tmp_path, mode, make, expected):
    im = make()
    assert im.mode == mode
    path = tmp_path / ("im.tiff" if mode in ("F", "CMYK", "I") else "im.png")
    im.save(path)
    x = load_image(path)
    assert x.shape == (1, 3, 8, 8) and x.dtype == torch.float32
    assert torch.allclose(x, torch.full_like(x, expected), atol=1.5 / 255)


def _palette_with_transparency():
    im = Image.new("P", (8, 8), 0)
    im.putpalette([0, 0, 0] * 256)
    im.info["transparency"] = 0  # black, fully transparent: white after compositing
    return im


def test_sixteen_bit_png_is_not_white(tmp_path):
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    x = load_image(tmp_path / "g16.png")
    assert (x > 0.99).float().mean() < 0.02  # was 99.5 % white
    assert torch.allclose(x[0, 0], torch.from_numpy(ramp.astype(np.float32) / 65535), atol=1e-6)


# --------------------------------------------------------------------------------------------- (c) options


@pytest.mark.parametrize("extra,needles", [
    (["--steps", "0"], ["argument --steps: 0 is impossible", "[1, 1000]"]),
    (["--width", "0"], ["argument --width: 0 is impossible", "multiple of 64"]),
    (["--height", "100"], ["argument --height: 100 is impossible"]),
    (["--decode-t", "0"], ["argument --decode-t: 0 is impossible"]),
    (["--motion-bucket", "1000"], ["argument --motion-bucket: 1000 is impossible", "[0, 255]"]),
    (["--out-fps", "-1"], ["argument --out-fps: '-1' is impossible"]),
    (["--ff-chunk", "-1"], ["argument --ff-chunk: -1 is impossible"]),
    (["--min-cfg", "nan"], ["argument --min-cfg: nan is impossible", "finite"]),
    (["--max-cfg", "inf"], ["argument --max-cfg: inf is impossible"]),
    (["--fps", "0"], ["argument --fps: 0 is impossible"]),
    (["--cond-aug", "-0.1"], ["argument --cond-aug: -0.1 is impossible"]),
    (["--seed", "-1"], ["argument --seed: -1 is impossible"]),
    (["--frames", "2.5"], ["argument --frames: '2.5' is not an integer"]),
    (["--overlap", "4", "--decode-t", "4"], ["--overlap 4 must be smaller than --decode-t 4"]),
    (["--device", "quantum"], ["argument --device: 'quantum' is not a device"]),
    (["--cfg-in-turn", "sometimes"], ["argument --cfg-in-turn: invalid choice: 'sometimes'", "'auto', 'on', 'off'"]),
])
def test_bad_options_fail_before_the_model_loads(tmp_path, ckpt, image, capsys, no_real_load, extra, needles):
    code, err = _cli(["img2vid", "--checkpoint", str(ckpt), "--image", str(image), "--out",
                      str(tmp_path / "o.mp4")] + extra, capsys)
    _clean_error(code, err, *needles)
    assert _listing(tmp_path) == ["in.png"]


@pytest.mark.parametrize("extra,needle", [
    (["--elevations", "0,nan,10"], "argument --elevations: value 2=nan is impossible"),
    (["--elevation", "95"], "argument --elevation: 95 is impossible"),
    (["--azimuths", "a,b"], "argument --azimuths: 'a,b' is not a comma-separated list"),
    (["--steps", "0"], "argument --steps: 0 is impossible"),
])
def test_orbit_options(tmp_path, ckpt, image, capsys, no_real_load, extra, needle):
    code, err = _cli(["orbit", "--checkpoint", str(ckpt), "--image", str(image), "--out", str(tmp_path / "o.gif")]
                     + extra, capsys)
    _clean_error(code, err, needle)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(steps=0), "steps=0 is impossible"),
    (dict(width=0), "width=0 is impossible"),
    (dict(decode_t=0), "decode_t=0 is impossible"),
    (dict(motion_bucket_id=1000), "motion_bucket_id=1000 is impossible"),
    (dict(ff_chunk_size=-1), "ff_chunk_size=-1 is impossible"),
    (dict(fps=float("nan")), "fps=nan is impossible"),
    (dict(overlap=3, decode_t=3), "overlap=3 is impossible"),
    (dict(sampler="nope"), "sampler='nope' is not one of"),
    (dict(seed=2 ** 64), "seed=18446744073709551616 is impossible"),
])
def test_api_checks_name_the_argument(kwargs, needle):
    from svd_core.guidance import Guidance
    from svd_core.pipeline import img2vid

    model = build(TINY, device="meta")  # checks come before any compute: a meta model suffices
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace("[", r"\[")):
        img2vid(model, torch.rand(1, 3, 64, 64), **kwargs)
    with pytest.raises(ValueError, match=r"guidance.max_scale=150.0 is impossible: expected a finite number in "
                                         r"\[0, 100\]"):
        img2vid(model, torch.rand(1, 3, 64, 64), guidance=Guidance("linear", 1.0, 150.0))


@pytest.mark.parametrize("kwargs,needle", [
    (dict(elevations=[0.0, float("nan"), 0.0, 0.0, 0.0]), r"elevations\[1\]=nan is impossible"),
    (dict(azimuths=[0.0, 1.0, float("inf"), 3.0, 4.0]), r"azimuths\[2\]=inf is impossible"),
    (dict(steps=0), "steps=0 is impossible"),
])
def test_orbit_api_checks(kwargs, needle):
    from svd_core.pipeline import orbit
    from svd_core.testing import TINY_SV3D_P

    with pytest.raises(ValueError, match=needle):
        orbit(build(TINY_SV3D_P, device="meta"), torch.rand(1, 3, 64, 64), **kwargs)
