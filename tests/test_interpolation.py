"""Frame interpolation (paper App. D.5): variant layout, weight transfer from SVD, conditioning, 4x video."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from svd_core import interpolation as interp
from svd_core import loading, testing
from svd_core.denoiser import VideoCond
from svd_core.model import build
from svd_core.variants import SVD_INTERP

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"
MASK = "conditioner.embedders.3.mask_embedding"


@pytest.fixture(scope="module")
def svd(tiny_models):
    return tiny_models("tiny", seed=1)


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_models("tiny_interp", seed=2)


def test_full_size_layout_is_svd_plus_mask_channel_and_embedding():
    ref = json.loads((REFERENCE / "svd_xt.keys.json").read_text())["keys"]
    m = build(SVD_INTERP, device="meta")
    shapes = {k: list(v.shape) for k, v in m.state_dict().items()}
    assert set(shapes) == set(ref) | {MASK}
    assert shapes[MASK] == [4, 72, 128]  # z_m in R^{c x h x w} at 576 x 1024 (paper App. D.5)
    assert shapes[CONV_IN] == [320, 9, 3, 3]  # noise 4 + latent sequence 4 + mask 1
    assert {k: v for k, v in shapes.items() if k not in (MASK, CONV_IN)} == \
        {k: v for k, v in ref.items() if k != CONV_IN}
    # recognised from shapes alone (no metadata)
    spec, how = loading.detect_spec({k: tuple(v) for k, v in shapes.items()}, {}, "my_interp.safetensors")
    assert spec.name == "svd_interp" and "interpolation" in how


def test_concat_sequence_holds_ends_mask_embedding_and_mask(model):
    emb = model.conditioner.vae_encoder.mask_embedding
    assert emb.shape == (4, 16, 16)  # c x h x w at the spec's 128 x 128
    first, last = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16)
    out = interp.concat_sequence(model, first, last, 5).view(2, 5, 5, 16, 16)  # (b t) c h w -> b t c h w
    assert torch.equal(out[:, 0, :4], first) and torch.equal(out[:, 4, :4], last)
    assert torch.equal(out[:, 1:4, :4], emb.expand(2, 3, 4, 16, 16))  # the learned map itself, per pixel
    assert out[:, :, 4].amax(dim=(-1, -2)).tolist() == [[1, 0, 0, 0, 1]] * 2
    assert out[:, :, 4].amin(dim=(-1, -2)).tolist() == [[1, 0, 0, 0, 1]] * 2


def test_mask_embedding_is_a_spatial_map_resized_bilinearly_at_other_sizes(model):
    """Paper App. D.5: a learned mask embedding z_m in R^{c x h x w}. Our convention for other latent sizes: z_m
    resized bilinearly (half-pixel centres, antialiased when shrinking); a constant map stays that constant."""
    emb = model.conditioner.vae_encoder.mask_embedding
    assert emb.abs().amax(dim=0).std() > 0  # the random tiny model's map varies over space
    up = interp.mask_embedding_at(model, 32, 24)
    ref = torch.nn.functional.interpolate(emb[None], size=(32, 24), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(up, ref)
    # a 2x downsample is antialiased: a triangle filter stretched 2x, taps 1/8 3/8 3/8 1/8 (renormalised at edges)
    centre = torch.arange(8.0)[:, None] * 2 + 1.0  # output pixel centres in input pixels
    taps = (1 - ((torch.arange(16.0)[None] + 0.5 - centre).abs() / 2)).clamp(min=0)  # 8 16
    taps = taps / taps.sum(dim=1, keepdim=True)
    down = interp.mask_embedding_at(model, 8, 8)
    torch.testing.assert_close(down, taps @ emb @ taps.T)  # c 16 16 -> c 8 8, separable
    assert interp.mask_embedding_at(model, 16, 16) is emb
    out = interp.concat_sequence(model, torch.zeros(1, 4, 3, 5), torch.zeros(1, 4, 3, 5), 5)  # odd size works
    torch.testing.assert_close(out[1:4, :4], interp.mask_embedding_at(model, 3, 5).expand(3, 4, 3, 5))
    with torch.no_grad():
        saved = emb.clone()
        emb.copy_(torch.arange(4.0).view(4, 1, 1).expand(4, 16, 16))
        try:
            torch.testing.assert_close(interp.mask_embedding_at(model, 40, 7),
                                       torch.arange(4.0).view(4, 1, 1).expand(4, 40, 7))
        finally:
            emb.copy_(saved)


def test_init_from_svd_copies_weights_and_starts_as_svd(svd):
    m = interp.init_from(svd, testing.TINY_INTERP)
    src, dst = svd.state_dict(), m.state_dict()
    assert torch.equal(dst[CONV_IN][:, :8], src[CONV_IN]) and not dst[CONV_IN][:, 8].any()
    assert not dst[MASK].any()
    assert sorted(m.transfer_report["sliced"]) == [CONV_IN] and m.transfer_report["new"] == [MASK]
    assert all(torch.equal(dst[k], src[k]) for k in m.transfer_report["copied"])
    assert len(m.transfer_report["copied"]) == len(src) - 1
    # the mask channel has zero weight: the new model's D(x; s) equals SVD's on the same latent sequence
    gen = torch.Generator().manual_seed(0)
    x, lat = torch.randn(5, 4, 8, 8, generator=gen), torch.randn(5, 4, 8, 8, generator=gen)
    ctx, vec = torch.randn(5, 2, 64, generator=gen), torch.randn(5, 768, generator=gen)
    mask = torch.tensor([1.0, 0, 0, 0, 1]).view(5, 1, 1, 1).expand(5, 1, 8, 8)
    sigma = torch.full((5,), 3.0)
    with torch.no_grad():
        a = m.denoise(x, sigma, VideoCond(ctx, torch.cat([lat, mask], 1), vec), 5)
        b = svd.denoise(x, sigma, VideoCond(ctx, lat, vec), 5)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not an interpolation variant"):
        interp.init_from(svd, testing.TINY)


def test_training_conditioning_gradients_reach_mask_embedding(model):
    """The trainer's one conditioning path (`training.tasks.interpolation_cond` on cached windows, guidance dropout
    by `objective.drop_conditioning`): gradients reach the mask embedding, CLIP tokens of the clean ends."""
    from svd_core.training import tasks
    from svd_core.training.config import TrainConfig
    from svd_core.training.data import collate, encode_window
    from svd_core.training.objective import drop_conditioning

    params = interp.trainable_parameters(model)
    assert params[-1] is model.conditioner.vae_encoder.mask_embedding
    assert len(params) == len(list(model.unet.parameters())) + 1
    model.conditioner.vae_encoder.mask_embedding.requires_grad_(True)
    try:
        frames = torch.rand(2, 5, 3, 64, 64, generator=torch.Generator().manual_seed(3))
        batch = collate([dict(encode_window(model, f), fps=torch.tensor(28.0), motion_bucket_id=torch.tensor(127.0))
                         for f in frames])
        gens = [torch.Generator().manual_seed(i) for i in range(2)]
        cfg = TrainConfig.from_preset("interpolation", height=64, width=64)
        cond = tasks.interpolation_cond(model, batch, 5, gens, cfg)
        assert cond.crossattn.shape == (10, 2, 64) and cond.concat.shape == (10, 5, 8, 8)
        assert cond.vector.shape == (10, 768)
        cond.concat[:, :4].sum().backward()
        grad = model.conditioner.vae_encoder.mask_embedding.grad  # through the 16 -> 8 resize: weights sum to 1
        assert grad.shape == (4, 16, 16) and (grad > 0).all()  # every cell of the map learns
        torch.testing.assert_close(grad.sum(dim=(1, 2)), torch.full((4,), 2 * 3 * 8 * 8.0))  # 2 videos x 3 frames
        # the two CLIP tokens are the clean first and last frames
        with torch.no_grad():
            first = model.conditioner.clip(frames[:, 0] * 2 - 1)
            last = model.conditioner.clip(frames[:, -1] * 2 - 1)
        torch.testing.assert_close(cond.crossattn[0::5], torch.cat([first, last], 1))
        dropped = drop_conditioning(cond, torch.tensor([1.0, 0.0]), 5)
        assert not dropped.crossattn[5:].any() and not dropped.concat[5:].any()
        assert torch.equal(dropped.crossattn[:5], cond.crossattn[:5]) and torch.equal(dropped.vector, cond.vector)
    finally:
        model.conditioner.vae_encoder.mask_embedding.grad = None
        model.conditioner.vae_encoder.mask_embedding.requires_grad_(False)


def test_interpolate_video_4x_with_originals_unchanged(model):
    frames = torch.rand(3, 3, 60, 90, generator=torch.Generator().manual_seed(4))
    calls = []
    out = interp.interpolate_video(model, frames, batch_size=2, steps=1, seed=5,
                                   callback=lambda i, n, stage: calls.append((i, n, stage)))
    assert out.shape == (9, 3, 60, 90)  # (n - 1) * 4 + 1
    for j in range(3):
        assert torch.equal(out[4 * j], frames[j])  # originals pass through bit for bit
    assert calls == [(1, 2, "interpolating"), (2, 2, "interpolating")]  # 1 step + 1 decode per batch of pairs
    # pair j always uses seed + j: batching does not change the result
    one = interp.interpolate_video(model, frames, batch_size=1, steps=1, seed=5)
    torch.testing.assert_close(one, out, rtol=1e-4, atol=1e-4)
    assert (out[1:4] - out[5:8]).abs().max() > 1e-3  # different pairs, different frames


def test_interpolation_errors_name_the_problem(model, svd):
    with pytest.raises(ValueError, match="at least 2 frames"):
        interp.interpolate_video(model, torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="needs an interpolation model"):
        interp.interpolate_video(svd, torch.rand(2, 3, 64, 64))
    with pytest.raises(ValueError, match="batch_size"):
        interp.interpolate_video(model, torch.rand(2, 3, 64, 64), batch_size=0)


def test_checkpoint_round_trip_keeps_the_mask_embedding(tmp_path, model):
    path = loading.save(model, tmp_path / "interp.safetensors")
    loaded = loading.load(path)
    assert loaded.spec == model.spec and loaded.spec.cond_mode == "interpolation"
    assert torch.equal(loaded.conditioner.vae_encoder.mask_embedding, model.conditioner.vae_encoder.mask_embedding)
    assert torch.equal(loaded.state_dict()[CONV_IN], model.state_dict()[CONV_IN])
