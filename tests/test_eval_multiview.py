"""Multi-view metrics: PSNR / SSIM known answers, LPIPS with user weights (parity with the lpips package),
CLIP-S through open_clip with user weights (parity with open_clip's own model)."""
import math
import warnings

import numpy as np
import pytest
import torch

from svd_core.eval.multiview import (clip_preprocess, clip_similarity, load_clip, load_lpips, lpips_distance, psnr,
                                     ssim, view_metrics)
from svd_core.eval.standins import random_lpips, tiny_clip


def test_psnr_known_pairs():
    gt = torch.full((3, 8, 8, 3), 0.5)
    assert psnr(gt + 0.1, gt).tolist() == pytest.approx([20.0] * 3, abs=1e-4)  # MSE 0.01 -> 20 dB
    assert psnr(gt + 0.01, gt)[0] == pytest.approx(40.0, abs=1e-3)
    assert math.isinf(psnr(gt, gt)[0])
    a = np.zeros((1, 4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0, 0] = 255  # one channel of one pixel off by 1.0: MSE = 1/48
    assert psnr(b, a)[0] == pytest.approx(10 * math.log10(48), abs=1e-4)


def test_ssim_known_values():
    x = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    assert ssim(x, x).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    # constant images: only the luminance term remains, (2ab + C1) / (a^2 + b^2 + C1), C1 = 0.01^2
    a, b, c1 = 0.2, 0.6, 0.01 ** 2
    got = ssim(torch.full((1, 16, 16, 3), a), torch.full((1, 16, 16, 3), b))[0]
    assert got == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), abs=1e-5)
    assert ssim(x, 1 - x).mean() < 0.5


def test_shape_mismatch_is_explained():
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(torch.rand(2, 8, 8, 3), torch.rand(3, 8, 8, 3))


@pytest.fixture(scope="module")
def lpips_reference():
    import lpips

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lpips.LPIPS(pretrained=True, net="alex", pnet_rand=True, verbose=False)


@pytest.mark.parametrize("layout", ["lpips", "torchvision"])
def test_lpips_user_weights_match_the_package(tmp_path, lpips_reference, layout):
    path = tmp_path / ("w.safetensors" if layout == "lpips" else "alexnet.pth")
    random_lpips(path, seed=0, torchvision_layout=layout == "torchvision")
    model = load_lpips(str(path))
    x, y = torch.rand(3, 64, 64, 3), torch.rand(3, 64, 64, 3)
    ref = lpips_reference(x.permute(0, 3, 1, 2), y.permute(0, 3, 1, 2), normalize=True).flatten()
    got = lpips_distance(model, x, y, batch_size=2)
    assert torch.allclose(got, ref.detach(), atol=1e-6)
    assert lpips_distance(model, x, x).abs().max() < 1e-7


def test_lpips_wrong_weights(tmp_path):
    from safetensors.torch import save_file

    save_file({"foo.weight": torch.zeros(2)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="not LPIPS-alex weights"):
        load_lpips(str(tmp_path / "bad.safetensors"))
    random_lpips(tmp_path / "alex.safetensors")
    with pytest.raises(ValueError, match="LPIPS-vgg"):
        load_lpips(str(tmp_path / "alex.safetensors"), net="vgg")
    with pytest.raises(FileNotFoundError):
        load_lpips(str(tmp_path / "missing.pth"))


def test_clip_s_with_user_weights_matches_open_clip(tmp_path):
    import open_clip

    name = tiny_clip(tmp_path / "clip.safetensors", config_dir=tmp_path)
    model = load_clip(name, str(tmp_path / "clip.safetensors"))
    ref = open_clip.create_model(name, pretrained=None)
    from safetensors.torch import load_file
    ref.load_state_dict(load_file(str(tmp_path / "clip.safetensors")))
    ref.eval()
    x, y = torch.rand(4, 40, 48, 3), torch.rand(4, 40, 48, 3)
    got = clip_similarity(model, x, y, batch_size=3)
    px, py = clip_preprocess(ref, x.permute(0, 3, 1, 2)), clip_preprocess(ref, y.permute(0, 3, 1, 2))
    assert px.shape == (4, 3, 32, 32)
    with torch.no_grad():
        want = torch.nn.functional.cosine_similarity(ref.encode_image(px), ref.encode_image(py), dim=-1)
    assert torch.allclose(got, want, atol=1e-5)
    assert clip_similarity(model, x, x).tolist() == pytest.approx([1.0] * 4, abs=1e-5)
    with pytest.raises(FileNotFoundError, match="CLIP weights"):
        load_clip(name, str(tmp_path / "none.safetensors"))


def test_view_metrics_table(tmp_path):
    random_lpips(tmp_path / "l.safetensors")
    lp = load_lpips(str(tmp_path / "l.safetensors"))
    gt = torch.rand(3, 32, 32, 3, generator=torch.Generator().manual_seed(1))
    gen = (gt + 0.1).clamp(0, 1)
    m = view_metrics(gen, gt, lpips_model=lp, metrics=("psnr", "ssim", "lpips"))
    assert list(m.per_view) == ["psnr", "ssim", "lpips"] and len(m.per_view["psnr"]) == 3
    assert m.mean["psnr"] == pytest.approx(np.mean(m.per_view["psnr"]))
    text = m.format()
    assert text.splitlines()[0].split() == ["view", "psnr↑", "ssim↑", "lpips↓"]
    assert text.splitlines()[-1].startswith("mean")
    with pytest.raises(ValueError, match="unknown metric"):
        view_metrics(gen, gt, metrics=("fid",))
