"""FVD with an I3D TorchScript stand-in (real calling convention), caching, the UCF-101 protocol, video I/O."""
import os

import numpy as np
import pytest
import torch

from svd_core.eval import features as feat_mod
from svd_core.eval.features import ClipPreprocess, I3DTorchScript, get_extractor, preprocess_clip, register_extractor
from svd_core.eval.fvd import compute_stats, folder_stats, fvd_folders, fvd_tensors, split_batch
from svd_core.eval.protocols import UCF101, UCF101_CLASSES, action_to_prompt, get_protocol
from svd_core.eval.ucf101 import ucf101_prompts
from svd_core.eval.standins import moving_square, tiny_i3d, video_set
from svd_core.video_io import list_videos, read_frames, write_video


@pytest.fixture(scope="module")
def i3d_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("i3d") / "i3d_torchscript.pt"
    tiny_i3d(p)
    return str(p)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    video_set(root / "a", n=5, seed=0)
    video_set(root / "a2", n=5, seed=100)
    video_set(root / "noisy", n=5, seed=0, noise=60.0)
    return root


def test_extractor_calls_torchscript_with_the_stylegan_v_convention(i3d_path):
    ext = I3DTorchScript(i3d_path)
    clips = torch.rand(2, 6, 3, 20, 24)  # b t c h w in [0, 1]
    got = ext(clips)
    ref = torch.jit.load(i3d_path)(clips.permute(0, 2, 1, 3, 4) * 255.0, rescale=True, resize=True,
                                   return_features=True)
    assert got.shape == (2, 16) and torch.allclose(got, ref)
    assert ext.id.startswith("i3d-") and get_extractor("i3d", path=i3d_path).id == ext.id


def test_extractor_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="i3d_torchscript.pt"):
        I3DTorchScript(str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not torchscript")
    with pytest.raises(ValueError, match="not a TorchScript"):
        I3DTorchScript(str(tmp_path / "junk.pt"))
    with pytest.raises(ValueError, match="unknown feature extractor 'nope'"):
        get_extractor("nope")


def test_fvd_of_a_set_with_itself_is_zero_and_noise_increases_it(i3d_path, sets):
    ext, pre = I3DTorchScript(i3d_path), ClipPreprocess(num_frames=8)
    assert fvd_folders(str(sets / "a"), str(sets / "a"), ext, pre) < 1e-6
    similar = fvd_folders(str(sets / "a"), str(sets / "a2"), ext, pre)
    noisy = fvd_folders(str(sets / "a"), str(sets / "noisy"), ext, pre)
    assert 0 < similar < noisy


def test_pluggable_extractor_and_tensor_api():
    calls = []

    class MeanColor(feat_mod.FeatureExtractor):
        id = "mean-color"

        def __call__(self, videos):
            calls.append(tuple(videos.shape))
            return videos.mean(dim=(1, 3, 4))  # b t c h w -> b c

    register_extractor("mean-color", MeanColor)
    ext = get_extractor("mean-color")
    a = [np.full((4, 8, 8, 3), v, np.uint8) for v in (10, 20, 30)]
    b = [np.full((4, 8, 8, 3), v, np.uint8) for v in (110, 120, 130)]
    fvd = fvd_tensors(a, b, ext, ClipPreprocess(num_frames=4), batch_size=2)
    # features are (v/255) on 3 channels; equal covariances, so FVD = |mu_a - mu_b|^2 = 3 * (100/255)^2
    assert fvd == pytest.approx(3 * (100 / 255) ** 2, rel=1e-6)
    assert calls[0] == (2, 4, 3, 8, 8)
    frames = torch.rand(12, 8, 8, 3)
    assert [c.shape for c in split_batch(frames, 4)] == [(4, 8, 8, 3)] * 3
    with pytest.raises(ValueError, match="frames_per_video=5"):
        split_batch(frames, 5)


def test_stats_are_cached_and_reused(i3d_path, sets, tmp_path, monkeypatch):
    ext, pre = I3DTorchScript(i3d_path), ClipPreprocess(num_frames=8)
    cache = tmp_path / "cache"
    first = folder_stats(str(sets / "a"), ext, pre, cache_dir=str(cache))
    files = list(cache.glob("*.safetensors"))
    assert len(files) == 1
    n_calls = []
    orig = I3DTorchScript.__call__
    monkeypatch.setattr(I3DTorchScript, "__call__", lambda self, x: n_calls.append(1) or orig(self, x))
    again = folder_stats(str(sets / "a"), ext, pre, cache_dir=str(cache))
    assert not n_calls and np.allclose(again.mu, first.mu) and np.allclose(again.sigma, first.sigma)
    # a different protocol does not reuse the cache; a stats file works as a set
    folder_stats(str(sets / "a"), ext, ClipPreprocess(num_frames=6), cache_dir=str(cache))
    assert n_calls and len(list(cache.glob("*.safetensors"))) == 2
    assert fvd_folders(str(files[0]), str(sets / "a"), ext, pre) < 1e-6


def test_folder_errors(i3d_path, tmp_path):
    ext = I3DTorchScript(i3d_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fvd_folders(str(tmp_path / "nope"), str(tmp_path), ext, ClipPreprocess())
    video_set(tmp_path / "one", n=1)
    with pytest.raises(ValueError, match="at least 2 videos"):
        folder_stats(str(tmp_path / "one"), ext, ClipPreprocess(num_frames=8))
    with pytest.raises(ValueError, match="needs 16"):
        compute_stats([moving_square(num_frames=8)] * 2, ext, ClipPreprocess(num_frames=16))


def test_ucf101_preset_preprocessing():
    assert UCF101.preprocess.num_frames == 16 and UCF101.preprocess.fps == 25
    assert UCF101.sample_size == (320, 576) and get_protocol("ucf101") is UCF101
    clip = torch.rand(20, 320, 576, 3)
    out = preprocess_clip(clip, UCF101.preprocess)
    assert out.shape == (16, 3, 240, 320)
    resized = torch.nn.functional.interpolate(clip[:16].permute(0, 3, 1, 2), size=(240, 432), mode="bilinear",
                                              antialias=True, align_corners=False).clamp(0, 1)
    assert torch.allclose(out, resized[..., :, 56:376])  # center crop of the 240x432 frame
    ucf_sized = preprocess_clip(torch.rand(16, 240, 320, 3), UCF101.preprocess)  # real UCF frames: unchanged
    assert ucf_sized.shape == (16, 3, 240, 320)


def test_ucf101_prompts_are_class_balanced():
    assert len(UCF101_CLASSES) == len(set(UCF101_CLASSES)) == 101
    assert action_to_prompt("ApplyEyeMakeup") == "apply eye makeup" and action_to_prompt("YoYo") == "yo yo"
    prompts = ucf101_prompts(2048)
    counts = {}
    for c, _ in prompts:
        counts[c] = counts.get(c, 0) + 1
    assert len(counts) == 101 and max(counts.values()) - min(counts.values()) <= 1
    assert prompts[0] == ("ApplyEyeMakeup", "apply eye makeup")


def test_read_video_resamples_to_the_protocol_fps(tmp_path):
    t = 20
    frames = np.zeros((t, 16, 16, 3), np.uint8)
    for i in range(t):
        frames[i] = i * 12  # frame index encoded in brightness
    write_video(frames, tmp_path / "v50.mp4", fps=50)
    got = read_frames(str(tmp_path / "v50.mp4"), num_frames=8, fps=25)
    assert got.shape[0] == 8
    idx = np.round(got.reshape(8, -1).mean(1) / 12).astype(int)
    assert idx.tolist() == [0, 2, 4, 6, 8, 10, 12, 14]
    # frame folders count as videos
    os.makedirs(tmp_path / "frames")
    from PIL import Image
    for i in range(3):
        Image.fromarray(frames[i]).save(tmp_path / "frames" / f"{i:03d}.png")
    assert str(tmp_path / "frames") in list_videos(str(tmp_path), frame_folders=True)
    assert read_frames(str(tmp_path / "frames")).shape == (3, 16, 16, 3)
