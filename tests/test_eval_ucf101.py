"""Zero-shot UCF-101 FVD driver (paper Sec. 4.3 / Table 2, App. E): class-name prompts, CFG 7, 16 frames at 25 fps,
320x576, samples in the real set's class proportions; resumable generation; FVD against a (fake) real set with the
I3D stand-in, through the Python API and `python -m svd_core eval ucf101`."""
import json
import os
from dataclasses import replace

import numpy as np
import pytest
import torch

from svd_core import testing
from svd_core import text2video as t2v
from svd_core.__main__ import main
from svd_core.eval import ucf101
from svd_core.eval.features import I3DTorchScript
from svd_core.eval.standins import moving_square, tiny_i3d
from svd_core.video_io import read_frames, write_video

# the fake real set: UCF-101's layout (Class/v_Class_gNN_cNN.avi), 3 classes with 3 / 2 / 1 videos
REAL = {"ApplyEyeMakeup": 3, "Archery": 2, "YoYo": 1}
SMALL = dict(height=64, width=128, steps=1)  # tiny model's size; the paper's values are tested on their own
# the tiny text-to-video model with one res block per level (16 frames are decoded per sample: keeps tests fast)
THIN_T2V = replace(testing.TINY_T2V, name="tiny_t2v_thin", unet=replace(testing.TINY_T2V.unet, num_res_blocks=1),
                   vae=replace(testing.TINY_T2V.vae, ch=16, norm_groups=16, num_res_blocks=1))


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("UCF-101")
    k = 0
    for cls, n in REAL.items():
        for i in range(n):
            write_video(moving_square(num_frames=20, height=32, width=48, seed=k, noise=10.0),
                        root / cls / f"v_{cls}_g{i + 1:02d}_c01.avi", fps=25)
            k += 1
    return str(root)


@pytest.fixture(scope="module")
def i3d(tmp_path_factory):
    p = tmp_path_factory.mktemp("i3d") / "i3d_torchscript.pt"
    tiny_i3d(p)
    return str(p)


@pytest.fixture(scope="module")
def model():
    return testing.tiny_model(THIN_T2V, seed=3)


def test_settings_and_generation_calls_use_the_papers_values(monkeypatch, tmp_path):
    """Paper Sec. 4.3 / App. E: class names as prompts, classifier-free guidance scale 7, 16 frames at 25 fps,
    samples at 320x576 (the protocol's size, then resized/cropped to UCF's 240x320 for I3D)."""
    st = ucf101.UCF101Settings()
    assert (st.cfg_scale, st.num_frames, st.fps, st.height, st.width) == (7.0, 16, 25.0, 320, 576)
    calls = []

    def spy(model, prompt, **kw):
        calls.append(dict(kw, prompt=prompt))
        return torch.zeros(1, kw["num_frames"], 3, 16, 16)

    monkeypatch.setattr(t2v, "text2vid", spy)
    plan = ucf101.make_plan({"ApplyEyeMakeup": 1, "YoYo": 1}, num_samples=2, seed=40)
    fake = type("M", (), {"spec": testing.TINY_VARIANTS["tiny_t2v"]})()
    ucf101.generate(fake, str(tmp_path), plan)
    assert [c["prompt"] for c in calls] == ["apply eye makeup", "yo yo"]
    assert [c["seed"] for c in calls] == [40, 41]
    for c in calls:
        assert (c["num_frames"], c["fps"], c["height"], c["width"]) == (16, 25.0, 320, 576)
        g = c["guidance"]
        assert g.kind == "vanilla" and torch.equal(g.scales(16), torch.full((16,), 7.0))
    # the CLI's defaults are the same values
    import argparse

    from svd_core.cli import common
    from svd_core.eval import cli
    from svd_core.eval.cli import add_arguments
    assert cli.SAMPLER_CHOICES == common.SAMPLER_CHOICES and cli.DEFAULT_UCF_SAMPLES == ucf101.DEFAULT_NUM_SAMPLES
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    a = parser.parse_args(["ucf101", "--checkpoint", "c", "--real", "r", "--out", "o"])
    assert (a.cfg, a.frames, a.fps, a.height, a.width, a.num_samples) == (7.0, 16, 25.0, 320, 576, "10000")
    man = json.loads((tmp_path / "manifest.json").read_text())
    assert man["protocol"] == "ucf101" and man["settings"]["cfg_scale"] == 7.0
    assert [(p["class"], p["prompt"], p["seed"]) for p in man["plan"]] == [("ApplyEyeMakeup", "apply eye makeup", 40),
                                                                          ("YoYo", "yo yo", 41)]


def test_plan_follows_the_real_class_distribution(real_dir):
    """Samples follow the real set's class distribution (10k in total by default, the zero-shot protocol of the
    methods in the paper's Table 2), or a fixed count per class, or as many as the real set holds."""
    files = ucf101.real_videos(real_dir)
    assert len(files) == 6 and ucf101.class_counts(files) == REAL
    # 10 over 3:2:1 -> exact 5, 3.33, 1.67 -> floors 5, 3, 1 and the one left to the largest remainder (YoYo)
    assert ucf101.allocate(10, REAL) == {"ApplyEyeMakeup": 5, "Archery": 3, "YoYo": 2}
    assert ucf101.allocate(10_000, {c: 1 for c in ucf101.UCF101_CLASSES}) == \
        {c: 100 if i < 1 else 99 for i, c in enumerate(ucf101.UCF101_CLASSES)}  # 10000 = 101 * 99 + 1
    plan = ucf101.make_plan(REAL, num_samples=10, seed=7)
    assert [s.cls for s in plan[:4]] == ["ApplyEyeMakeup", "Archery", "YoYo", "ApplyEyeMakeup"]
    assert [s.seed for s in plan] == list(range(7, 17)) and plan[2].prompt == "yo yo"
    assert [s.file for s in plan[:2]] == ["videos/00000_ApplyEyeMakeup.mp4", "videos/00001_Archery.mp4"]
    assert len(ucf101.make_plan(REAL, num_samples=None)) == 6
    assert [s.cls for s in ucf101.make_plan(REAL, samples_per_class=2)].count("YoYo") == 2
    assert {s.cls for s in ucf101.make_plan({}, num_samples=202)} == set(ucf101.UCF101_CLASSES)
    assert [s.cls for s in ucf101.make_plan(REAL, num_samples=3, classes=["Archery"])] == ["Archery"] * 3
    with pytest.raises(ValueError, match="unknown UCF-101 class"):
        ucf101.make_plan(REAL, classes=["Archery", "Juggling"])
    assert ucf101.video_class("/x/Biking/clip.mp4") == "Biking" and ucf101.video_class("/x/y/clip.mp4") is None


def test_resumable_run_gives_the_same_fvd_without_regenerating(model, real_dir, i3d, tmp_path, monkeypatch):
    """An interruption after k videos, then a rerun: the k finished videos are kept (not regenerated), the rest
    are generated, and the FVD equals that of an uninterrupted run (per-sample seeds)."""
    ext = I3DTorchScript(i3d)
    settings = ucf101.UCF101Settings(**SMALL)
    cache = str(tmp_path / "stats")
    full = ucf101.evaluate_ucf101(model, real_dir, str(tmp_path / "full"), ext, settings=settings, num_samples=2,
                                  cache_dir=cache)
    assert full.num_generated == 2 and full.generated_now == 2 and full.num_real == 6 and full.protocol == "ucf101"
    assert full.classes == {"ApplyEyeMakeup": 1, "Archery": 1} and full.fvd > 0  # 2 over 3:2:1 -> 1, 1, 0

    class Killed(Exception):
        pass

    def kill_after_1(done, total):
        if done == 1:
            raise Killed

    out = tmp_path / "resumed"
    with pytest.raises(Killed):
        ucf101.evaluate_ucf101(model, real_dir, str(out), ext, settings=settings, num_samples=2, cache_dir=cache,
                               progress=kill_after_1)
    kept = sorted((out / "videos").iterdir())
    assert [p.name for p in kept] == ["00000_ApplyEyeMakeup.mp4"]
    assert json.loads((out / "manifest.json").read_text())["done"] == [0]
    stamps = {p.name: p.stat().st_mtime_ns for p in kept}
    prompts = []
    real_text2vid = t2v.text2vid
    monkeypatch.setattr(t2v, "text2vid", lambda m, p, **kw: prompts.append(p) or real_text2vid(m, p, **kw))
    extracted = []
    real_call = I3DTorchScript.__call__
    monkeypatch.setattr(I3DTorchScript, "__call__", lambda self, x: extracted.append(len(x)) or real_call(self, x))
    res = ucf101.evaluate_ucf101(model, real_dir, str(out), ext, settings=settings, num_samples=2, cache_dir=cache)
    assert prompts == ["archery"]  # sample 1 only
    assert res.generated_now == 1 and res.fvd == full.fvd
    assert {p.name: p.stat().st_mtime_ns for p in kept} == stamps
    assert sum(extracted) == 2  # generated clips only: the real set's statistics came from the cache
    for i, name in enumerate(sorted(os.listdir(out / "videos"))):  # same videos as the uninterrupted run
        assert np.array_equal(read_frames(out / "videos" / name), read_frames(tmp_path / "full/videos" / name))
    man = json.loads((out / "manifest.json").read_text())
    assert man["done"] == [0, 1] and [p["seed"] for p in man["plan"]] == [0, 1]
    assert json.loads((out / "fvd.json").read_text())["fvd"] == res.fvd
    # killed between a video's rename and its manifest entry: the finished file is adopted, nothing regenerated
    man["done"] = [0]
    (out / "manifest.json").write_text(json.dumps(man))
    prompts.clear()
    again = ucf101.evaluate_ucf101(model, real_dir, str(out), ext, settings=settings, num_samples=2,
                                   cache_dir=cache)
    assert prompts == [] and again.generated_now == 0 and again.fvd == full.fvd
    assert sum(extracted) == 2  # unchanged files: both sets' statistics from the cache
    # resuming with other settings is refused, naming the difference
    with pytest.raises(ValueError, match=r"other settings: cfg_scale 7.0 -> 5.0"):
        ucf101.evaluate_ucf101(model, real_dir, str(out), ext, num_samples=2,
                               settings=ucf101.UCF101Settings(cfg_scale=5.0, **SMALL))
    with pytest.raises(ValueError, match="other plan"):
        ucf101.evaluate_ucf101(model, real_dir, str(out), ext, settings=settings, num_samples=3)


def test_errors_name_the_fix(real_dir, i3d, tmp_path):
    ext = I3DTorchScript(i3d)
    svd = testing.tiny_model("tiny", seed=0)
    with pytest.raises(ValueError, match="text-to-video checkpoint"):
        ucf101.evaluate_ucf101(svd, real_dir, str(tmp_path / "o"), ext, num_samples=2)
    with pytest.raises(FileNotFoundError, match="--real"):
        ucf101.evaluate_ucf101(svd, str(tmp_path / "none"), str(tmp_path / "o"), ext)
    with pytest.raises(ValueError, match="num_frames=8 .* 16"):
        ucf101.UCF101Settings(num_frames=8)
    with pytest.raises(ValueError, match="narrower than UCF-101's 4:3 frame"):
        ucf101.UCF101Settings(height=64, width=64)  # 240x240 after the resize: no 240x320 crop
    with pytest.raises(ValueError, match="width=100 must be a multiple of 64"):
        ucf101.UCF101Settings(width=100)
    with pytest.raises(ValueError, match="between 1 and 1000000"):
        ucf101.make_plan(REAL, num_samples=10**9)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="unreadable manifest"):
        ucf101.generate(None, str(tmp_path / "junk"), ucf101.make_plan(REAL, num_samples=2),
                        generate_fn=lambda s, st: np.zeros((16, 8, 8, 3), np.uint8))
    assert not (tmp_path / "o").exists()  # the model is checked before anything is written


def test_cli_reports_fvd_with_the_protocol_name(real_dir, i3d, tmp_path, capsys):
    ckpt = testing.make_tiny_checkpoint(tmp_path / "t2v.safetensors", THIN_T2V, seed=3)
    args = ["eval", "ucf101", "--checkpoint", str(ckpt), "--real", real_dir, "--out", str(tmp_path / "run"),
            "--i3d", i3d, "--num-samples", "2", "--height", "64", "--width", "128", "--steps", "1",
            "--device", "cpu", "--json"]
    assert main(args) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["protocol"] == "ucf101" and res["num_generated"] == 2 and res["generated_now"] == 2 and res["fvd"] > 0
    assert main(args[:-1]) == 0  # rerun: nothing generated, same value, text form
    out = capsys.readouterr().out
    assert out.startswith(f"FVD (ucf101): {res['fvd']:.4f}") and "0 new" in out
    assert main(args[:-1] + ["--cfg", "3"]) == 2
    assert "other settings: cfg_scale 7.0 -> 3.0" in capsys.readouterr().err
    assert main(["eval", "ucf101", "--checkpoint", str(ckpt), "--real", real_dir, "--out", str(tmp_path / "x"),
                 "--i3d", str(tmp_path / "no.pt")]) == 2
    assert "i3d_torchscript.pt" in capsys.readouterr().err
