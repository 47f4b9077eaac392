"""VAE: reference key layouts on the meta device, parity with diffusers at a small size, chunked video decoding."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from svd_core.convert import state_dict_diffusers_to_sgm, state_dict_sgm_to_diffusers, vae_layout
from svd_core.vae import CondEncoder, FirstStage
from svd_core.vae_decode import (_blend_weights, chunk_windows, decode_video, encode_video, spatial_weights,
                                 tile_windows)
from svd_core.variants import SV3D_U, SVD, SVD_IMAGE_DECODER, VAESpec

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
SMALL = VAESpec(ch=32, ch_mult=(1, 2, 4, 4), num_res_blocks=2, norm_groups=32)
SMALL_IMAGE = replace(SMALL, decoder="image", first_stage_quant=True)
FRAMES = 6


def _reference_keys(variant: str, prefix: str) -> dict[str, list[int]]:
    keys = json.loads((REFERENCE / f"{variant}.keys.json").read_text())["keys"]
    return {k[len(prefix):]: list(v) for k, v in keys.items() if k.startswith(prefix)}


def _shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


# ------------------------------------------------------------------------------------------ key layouts


@pytest.mark.parametrize(
    "variant,spec,cond_index",
    [("svd_xt", SVD, 3), ("svd_image_decoder", SVD_IMAGE_DECODER, 3), ("sv3d_u", SV3D_U, 1)],
)
def test_full_size_keys_and_shapes_match_reference(variant, spec, cond_index):
    with torch.device("meta"):
        first_stage = FirstStage(spec.vae)
        cond = CondEncoder(spec.vae)
    assert all(p.is_meta for p in first_stage.parameters())
    assert spec.cond_encoder_index == cond_index
    assert _shapes(first_stage) == _reference_keys(variant, "first_stage_model.")
    want_cond = _reference_keys(variant, f"conditioner.embedders.{cond_index}.encoder.")
    assert _shapes(cond) == want_cond
    cond.drop_decoder()
    assert _shapes(cond) == {k: v for k, v in want_cond.items() if not k.startswith(("decoder.", "post_quant_conv."))}


def test_first_stage_layout_flags():
    with torch.device("meta"):
        video, image, dec_only = FirstStage(SVD.vae), FirstStage(SVD_IMAGE_DECODER.vae), FirstStage(SV3D_U.vae)
    assert video.temporal and not image.temporal and not dec_only.temporal
    assert dec_only.encoder is None and video.quant_conv is None and image.quant_conv is not None
    with pytest.raises(ValueError, match="decoder must be 'temporal' or 'image', got 'video'"):
        FirstStage(replace(SVD.vae, decoder="video"))


# ------------------------------------------------------------------------------------------ helpers


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Every parameter random (mix_factor and zero-initialised convs included), scaled so activations stay O(1)."""
    gen = torch.Generator().manual_seed(seed)
    norm_weights = {id(m.weight) for m in module.modules() if isinstance(m, torch.nn.GroupNorm)}
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim > 1:  # conv weights: fan-in scaled
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(math.prod(p.shape[1:])))
            elif name.endswith("mix_factor"):
                p.copy_(torch.randn(p.shape, generator=gen))
            elif id(p) in norm_weights:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            else:  # biases
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    mix = [p for n, p in module.named_parameters() if n.endswith("mix_factor")]
    assert all(p.abs().item() > 0 for p in mix)


@pytest.fixture(scope="module")
def temporal_pair():
    """Our small temporal FirstStage and diffusers' AutoencoderKLTemporalDecoder with the same random weights."""
    from diffusers import AutoencoderKLTemporalDecoder

    torch.manual_seed(0)
    ours = FirstStage(SMALL).eval()
    _randomise(ours, seed=1)
    theirs = AutoencoderKLTemporalDecoder(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        block_out_channels=(32, 64, 128, 128),
        layers_per_block=2,
        latent_channels=4,
    ).eval()
    converted = state_dict_sgm_to_diffusers(ours.state_dict(), "vae", **vae_layout(SMALL))
    theirs.load_state_dict(converted, strict=True)
    return ours, theirs


@pytest.fixture(scope="module")
def image_pair():
    """Our small image-decoder FirstStage and diffusers' AutoencoderKL with the same random weights."""
    from diffusers import AutoencoderKL

    ours = FirstStage(SMALL_IMAGE).eval()
    _randomise(ours, seed=2)
    theirs = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 64, 128, 128),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
    ).eval()
    converted = state_dict_sgm_to_diffusers(ours.state_dict(), "vae", **vae_layout(SMALL_IMAGE))
    theirs.load_state_dict(converted, strict=True)
    return ours, theirs


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


# ------------------------------------------------------------------------------------------ parity


@torch.no_grad()
def test_temporal_decode_matches_diffusers(temporal_pair):
    ours, theirs = temporal_pair
    z = torch.randn(2 * FRAMES, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    got = ours.decode(z, FRAMES)
    want = theirs.decode(z, num_frames=FRAMES).sample
    diff = _maxdiff(got, want)
    print(f"\n[parity] temporal decode (2 videos x {FRAMES} frames, 16x16 latents) max abs diff {diff:.3e}, "
          f"output std {want.std():.3f}")
    assert got.shape == (2 * FRAMES, 3, 128, 128)
    assert want.std() > 0.05  # the comparison is not between near-constant outputs
    assert diff < 1e-4
    # the temporal layers do act: a lone frame decodes differently than inside its video
    assert _maxdiff(ours.decode(z[:1], 1), got[:1]) > 1e-3


@torch.no_grad()
def test_encode_matches_diffusers(temporal_pair):
    ours, theirs = temporal_pair
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(4)) * 2 - 1
    got = ours.encode(x)
    want = theirs.encode(x).latent_dist.mode()
    diff = _maxdiff(got, want)
    print(f"\n[parity] encode mode max abs diff {diff:.3e}")
    assert got.shape == (3, 4, 8, 8) and diff < 1e-4
    mean, logvar = ours.encode_dist(x)
    assert torch.equal(mean, got)
    assert _maxdiff(logvar, theirs.encode(x).latent_dist.logvar) < 1e-4


@torch.no_grad()
def test_diffusers_quant_conv_folds_into_sgm_encoder(temporal_pair):
    """A non-identity diffusers quant_conv converts to the sgm layout (no quant_conv) with the same encoding."""
    _, theirs = temporal_pair
    sd = {k: v.clone() for k, v in theirs.state_dict().items()}
    gen = torch.Generator().manual_seed(5)
    sd["quant_conv.weight"] = torch.eye(8)[:, :, None, None] + 0.3 * torch.randn(8, 8, 1, 1, generator=gen)
    sd["quant_conv.bias"] = 0.1 * torch.randn(8, generator=gen)
    theirs_q = type(theirs).from_config(theirs.config).eval()
    theirs_q.load_state_dict(sd)
    ours = FirstStage(SMALL).eval()
    ours.load_state_dict(state_dict_diffusers_to_sgm(sd, "vae", **vae_layout(SMALL)), strict=True)
    x = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    diff = _maxdiff(ours.encode(x), theirs_q.encode(x).latent_dist.mode())
    print(f"\n[parity] encode with folded quant_conv max abs diff {diff:.3e}")
    assert diff < 1e-4


@torch.no_grad()
def test_image_decoder_and_cond_encoder_match_diffusers_autoencoder_kl(image_pair):
    ours, theirs = image_pair
    gen = torch.Generator().manual_seed(6)
    z = torch.randn(3, 4, 16, 16, generator=gen)
    diff_dec = _maxdiff(ours.decode(z, 99), theirs.decode(z).sample)  # image decoder ignores num_frames
    x = torch.rand(2, 3, 64, 64, generator=gen) * 2 - 1
    want_enc = theirs.encode(x).latent_dist.mode()
    diff_enc = _maxdiff(ours.encode(x), want_enc)
    # the conditioner's AutoencoderKLModeOnly copy has the same layout: encode = quant_conv(encoder(x)) mode
    cond = CondEncoder(SMALL).eval()
    cond.load_state_dict(ours.state_dict(), strict=True)
    diff_cond = _maxdiff(cond.encode(x), want_enc)
    print(f"\n[parity] image decode {diff_dec:.3e}, image-AE encode {diff_enc:.3e}, CondEncoder encode {diff_cond:.3e}")
    assert diff_dec < 1e-4 and diff_enc < 1e-4 and diff_cond < 1e-4
    cond.drop_decoder()
    assert torch.equal(cond.encode(x), cond.encode(x)) and cond.decoder is None


def test_time_stack_group_norm_runs_in_float32():
    from svd_core.layers import GroupNorm32  # what the VAE time_stack uses

    norm = GroupNorm32(4, 8)
    x = (torch.randn(2, 8, 3, 4, 4) * 300).half()
    out = norm(x)
    assert out.dtype == torch.float16
    assert torch.equal(out, torch.nn.functional.group_norm(x.float(), 4, norm.weight, norm.bias, 1e-5).half())


# ------------------------------------------------------------------------------------------ chunked decoding


def _reference_chunked(first_stage, z, num_frames, decode_t, scale=0.18215):
    """The reference loop for one video: decode `decode_t` frames at a time, the last chunk with its own length."""
    z = z / scale
    return torch.cat([first_stage.decode(z[s:s + decode_t], len(z[s:s + decode_t])) for s in range(0, num_frames, decode_t)])


@torch.no_grad()
def test_decode_video_chunking(temporal_pair):
    ours, _ = temporal_pair
    z = torch.randn(2 * FRAMES, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    full = ours.decode(z / 0.18215, FRAMES)
    # one chunk covers each video: the same as decoding the whole video at once (bit-exact for one video,
    # within float rounding of the different batch size for two)
    one = ours.decode(z[:FRAMES] / 0.18215, FRAMES)
    for decode_t in (FRAMES, FRAMES + 5):
        assert torch.equal(decode_video(ours, z[:FRAMES], FRAMES, decode_t=decode_t, clamp=False), one)
        assert _maxdiff(decode_video(ours, z, FRAMES, decode_t=decode_t, clamp=False), full) < 1e-5
    # smaller chunks: the temporal decoder sees fewer frames, so the result changes, as in the reference
    chunked = decode_video(ours, z, FRAMES, decode_t=4, clamp=False)
    assert _maxdiff(chunked, full) > 1e-3
    for video in range(2):
        frames = slice(video * FRAMES, (video + 1) * FRAMES)  # chunks never cross videos
        assert _maxdiff(chunked[frames], _reference_chunked(ours, z[frames], FRAMES, 4)) < 1e-5
    clamped = decode_video(ours, z, FRAMES, decode_t=4)
    assert clamped.min() >= -1 and clamped.max() <= 1 and torch.equal(clamped, chunked.clamp(-1, 1))


@torch.no_grad()
def test_decode_video_overlap_blending(temporal_pair):
    ours, _ = temporal_pair
    z = torch.randn(FRAMES, 4, 8, 8, generator=torch.Generator().manual_seed(8))
    plain = decode_video(ours, z, FRAMES, decode_t=3, overlap=0, clamp=False)
    assert torch.equal(plain, torch.cat([ours.decode(z[:3] / 0.18215, 3), ours.decode(z[3:] / 0.18215, 3)]))
    blended = decode_video(ours, z, FRAMES, decode_t=4, overlap=2, clamp=False)
    assert blended.shape == (FRAMES, 3, 64, 64)
    windows = chunk_windows(FRAMES, 4, 2)
    assert windows == [(0, 4), (2, 6)]
    a = ours.decode(z[0:4] / 0.18215, 4)
    b = ours.decode(z[2:6] / 0.18215, 4)
    assert _maxdiff(blended[:2], a[:2]) < 1e-6 and _maxdiff(blended[4:], b[2:]) < 1e-6
    # shared frames 2, 3: linear cross-fade with weights (2/3, 1/3) then (1/3, 2/3)
    assert _maxdiff(blended[2], a[2] * 2 / 3 + b[0] / 3) < 1e-5
    assert _maxdiff(blended[3], a[3] / 3 + b[1] * 2 / 3) < 1e-5
    assert _maxdiff(blended, plain) > 1e-3


def test_chunk_windows_and_weights():
    assert chunk_windows(14, 14) == [(0, 14)]
    assert chunk_windows(25, 14) == [(0, 14), (14, 25)]
    assert chunk_windows(25, 8, 3) == [(0, 8), (5, 13), (10, 18), (15, 23), (20, 25)]
    windows = chunk_windows(25, 8, 3)
    total = torch.zeros(25, dtype=torch.float64)
    for i, (s, e) in enumerate(windows):
        total[s:e] += _blend_weights(windows, i)
    assert torch.allclose(total, torch.ones(25, dtype=torch.float64))


@torch.no_grad()
def test_image_decoder_decodes_frame_by_frame(image_pair):
    ours, _ = image_pair
    z = torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    per_frame = torch.cat([ours.decode(z[i:i + 1] / 0.18215) for i in range(5)])
    for decode_t in (1, 2, 14):
        out = decode_video(ours, z, 5, decode_t=decode_t, image_decoder=True, clamp=False)
        assert _maxdiff(out, per_frame) < 1e-5


@torch.no_grad()
def test_encode_video_scales_and_chunks(temporal_pair):
    ours, _ = temporal_pair
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(10)) * 2 - 1
    want = ours.encode(x) * 0.18215
    assert _maxdiff(encode_video(ours, x, encode_t=2), want) < 1e-5
    assert _maxdiff(encode_video(ours, x, scale_factor=1.0), want / 0.18215) < 1e-5


# ------------------------------------------------------------------------------------------ errors


def test_bad_arguments_give_clear_errors(temporal_pair, image_pair):
    ours, _ = temporal_pair
    image, _ = image_pair
    z = torch.zeros(6, 4, 4, 4)
    with pytest.raises(ValueError, match=r"decode_t must be an int >= 1, got 0"):
        decode_video(ours, z, 6, decode_t=0)
    with pytest.raises(ValueError, match=r"overlap must be smaller than decode_t .* overlap=4, decode_t=4"):
        decode_video(ours, z, 6, decode_t=4, overlap=4)
    with pytest.raises(ValueError, match=r"overlap must be an int >= 0, got -1"):
        decode_video(ours, z, 6, decode_t=4, overlap=-1)
    with pytest.raises(ValueError, match=r"latent batch N=6 is not divisible by num_frames=4"):
        decode_video(ours, z, 4)
    with pytest.raises(ValueError, match=r"num_frames must be an int >= 1, got 0"):
        decode_video(ours, z, 0)
    with pytest.raises(ValueError, match=r"scale_factor must be > 0"):
        decode_video(ours, z, 6, scale_factor=0.0)
    # a temporal decoder asked to decode per frame runs its spatial layers only, each frame on its own
    per_frame = decode_video(ours, z, 6, image_decoder=True, clamp=False)
    alone = torch.cat([ours.decode(z[i:i + 1] / 0.18215, 1, skip_video=True) for i in range(6)])
    # the same maths; batch-6 and batch-1 convs take different oneDNN kernels (fp32 summation order: up to 1.2e-5
    # seen on this CPU), while a temporal mix-up moves values by > 1e-3
    assert _maxdiff(per_frame, alone) < 5e-5
    assert _maxdiff(per_frame, decode_video(ours, z, 6, clamp=False)) > 1e-3
    with pytest.raises(ValueError, match=r"decode_video expects latents \(N, C, h, w\)"):
        decode_video(ours, z[None], 6)
    with pytest.raises(ValueError, match=r"latent batch 6 is not a multiple of num_frames=4"):
        ours.decode(z, 4)
    with pytest.raises(ValueError, match=r"expects latents \(N, 4, h, w\), got \(6, 3, 4, 4\)"):
        image.decode(z[:, :3])
    with pytest.raises(ValueError, match=r"image size \(30, 32\) must be divisible by 8"):
        ours.encode(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"expects images of shape \(N, 3, H, W\)"):
        ours.encode(torch.zeros(1, 4, 32, 32))
    with pytest.raises(ValueError, match=r"encode_t must be an int >= 1"):
        encode_video(ours, torch.zeros(1, 3, 32, 32), encode_t=0)
    decoder_only = FirstStage(replace(SMALL, decoder="image", first_stage_encoder=False))
    with pytest.raises(ValueError, match=r"this first stage has no encoder \(decoder-only layout"):
        decoder_only.encode(torch.zeros(1, 3, 32, 32))


# ------------------------------------------------------------------------------------------ spatial tiles (issue 13)
TILE_REL_TOL = 0.12  # relative L2 of a tiled decode vs the whole frame: tile 12 / overlap 5 on 16x16 latents (0.09)


@given(size=st.integers(1, 80), tile=st.integers(4, 40), overlap=st.integers(0, 19), scale=st.sampled_from([1, 8]),
       ramp=st.sampled_from(["linear", "cosine"]))
@settings(max_examples=60, deadline=2000)
def test_spatial_tile_weights_sum_to_one(size, tile, overlap, scale, ramp):
    if 2 * overlap >= tile:
        overlap = (tile - 1) // 2
    windows = tile_windows(size, tile, overlap)
    assert windows[0][0] == 0 and windows[-1][1] == size
    cover = torch.zeros(size, dtype=torch.int64)
    total = torch.zeros(size * scale, dtype=torch.float64)
    for i, (s, e) in enumerate(windows):
        cover[s:e] += 1
        total[s * scale:e * scale] += spatial_weights(windows, i, scale, ramp)
    assert cover.max() <= 2 and cover.min() >= 1
    assert torch.allclose(total, torch.ones_like(total))  # the 2-D weights are products: they sum to one too


@torch.no_grad()
def test_spatially_tiled_decode(temporal_pair):
    ours, _ = temporal_pair
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(8))
    full = decode_video(ours, z, 2, clamp=False)
    assert torch.equal(decode_video(ours, z, 2, clamp=False, tile=16), full)  # one tile: the whole frame
    narrow = decode_video(ours, z, 2, clamp=False, tile=12, tile_overlap=2)
    tiled = decode_video(ours, z, 2, clamp=False, tile=12, tile_overlap=5)  # tiles (0, 12) and (7, 16)
    errors = [((t - full).norm() / full.norm()).item() for t in (narrow, tiled)]
    assert 0 < errors[1] < TILE_REL_TOL < errors[0]  # more overlap, closer to the whole-frame decode
    # away from every seam a pixel is its tile's own decode: latent rows / columns 0..6 lie in tile (0, 12) only
    own = decode_video(ours, z[..., :12, :12], 2, clamp=False)
    assert _maxdiff(tiled[..., :56, :56], own[..., :56, :56]) < 1e-5
    cosine = decode_video(ours, z, 2, clamp=False, tile=12, tile_overlap=5, tile_ramp="cosine")
    assert ((cosine - full).norm() / full.norm()).item() < TILE_REL_TOL and _maxdiff(cosine, tiled) > 1e-4
    with pytest.raises(ValueError, match="tile_overlap must be less than half the tile"):
        decode_video(ours, z, 2, tile=8, tile_overlap=4)
    with pytest.raises(ValueError, match="tile_ramp='box'"):
        decode_video(ours, z, 2, tile=8, tile_ramp="box")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@torch.no_grad()
def test_temporal_half_by_rows_matches_whole_map(temporal_pair, monkeypatch, channels_last):
    """The decoder blocks' temporal half on slices of rows (group-norm statistics gathered first) is the
    whole-map computation up to float rounding, in both memory formats (the statistics and the map between the
    two convolutions follow the layout); so is the upsampling folded into the next block's frame slices (checked
    against diffusers by test_temporal_decode_matches_diffusers)."""
    import svd_core.vae as vae
    from svd_core.layers import set_channels_last

    ours, _ = temporal_pair
    set_channels_last(ours, channels_last)
    try:
        _by_rows_vs_whole(vae, ours, monkeypatch)
    finally:
        set_channels_last(ours, False)  # the fixture is shared


def _by_rows_vs_whole(vae, ours, monkeypatch):
    z = torch.randn(FRAMES, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    monkeypatch.setattr(vae, "TEMPORAL_ROWS_PIXELS", 10 ** 12)  # never by rows
    whole = decode_video(ours, z, FRAMES, clamp=False)
    calls = []
    original = vae._add_time_stack_by_rows
    monkeypatch.setattr(vae, "_add_time_stack_by_rows", lambda *a: calls.append(1) or original(*a))
    monkeypatch.setattr(vae, "TEMPORAL_ROWS_PIXELS", 1)  # one row per slice
    rows = decode_video(ours, z, FRAMES, clamp=False)
    assert len(calls) == sum(isinstance(m, vae.VideoResBlock) for m in ours.decoder.modules())  # all 14
    assert _maxdiff(rows, whole) < 1e-4 * whole.abs().max().item()
