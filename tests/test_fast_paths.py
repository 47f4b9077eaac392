"""Inference fast paths (in-place activations and residuals, fused blends, frame-sliced VAE layers, (k,1)-conv
temporal convolutions, channels-last strides): same results as the plain graph-recording forward, inputs untouched."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import svd_core.vae as vae_mod
from svd_core.attention import GEGLU, _run_chunked
from svd_core.layers import ResBlock, TemporalConv3d, canonical_strides, set_channels_last, upsample_conv
from svd_core.testing import tiny_model
from svd_core.variants import VAESpec
from svd_core.vae import FirstStage

SMALL_VAE = VAESpec(ch=32, ch_mult=(1, 2, 4, 4), num_res_blocks=2, norm_groups=32)


def _unet_inputs(model, frames=4, b=2, size=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    spec = model.spec.unet
    x = torch.randn(b * frames, 8, size, size, generator=g)
    t = torch.tensor([0.3, -0.7]).repeat_interleave(frames)
    ctx = torch.randn(b * frames, 1, spec.context_dim, generator=g)
    y = torch.randn(b * frames, spec.adm_in_channels, generator=g)
    return x, t, ctx, y


@pytest.mark.parametrize("channels_last", [False, True])
def test_unet_inference_equals_recorded_forward_and_leaves_inputs(channels_last):
    model = tiny_model(seed=0)
    model.set_channels_last(channels_last)
    x, t, ctx, y = _unet_inputs(model)
    copies = [a.clone() for a in (x, t, ctx, y)]
    indicator = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])  # image-only frames use alpha 1
    kwargs = dict(context=ctx, y=y, num_video_frames=4, image_only_indicator=indicator)
    with torch.inference_mode():
        fast = model.unet(x, t, **kwargs)
    model.unet.requires_grad_(True)
    try:
        with torch.enable_grad():
            slow = model.unet(x, t, **kwargs)
            slow.square().mean().backward()  # the recording path must stay differentiable
    finally:
        model.unet.requires_grad_(False)
        model.unet.zero_grad(set_to_none=True)
    assert fast.abs().mean() > 0.05
    assert (fast - slow.detach()).abs().max() < 1e-5
    assert all(torch.equal(a, b) for a, b in zip((x, t, ctx, y), copies))


@pytest.mark.parametrize("channels_last", [False, True])
def test_vae_decode_slices_frames_without_changing_the_result(monkeypatch, channels_last):
    torch.manual_seed(0)
    vae = FirstStage(SMALL_VAE).eval()
    for p in vae.parameters():  # randomise every weight, mix factors included
        p.data.normal_(0, 0.2 if p.ndim > 1 else 0.5)
    set_channels_last(vae, channels_last)
    z = torch.randn(6, 4, 8, 8)
    z_copy = z.clone()
    with torch.enable_grad():
        recorded = vae.decode(z, num_frames=6)  # no autograd-free shortcuts at all
    monkeypatch.setattr(vae_mod, "SPATIAL_CHUNK_PIXELS", 10 ** 9)
    with torch.inference_mode():
        whole = vae.decode(z, num_frames=6)
    monkeypatch.setattr(vae_mod, "SPATIAL_CHUNK_PIXELS", 2 * 64 * 64)  # two frames per slice at full size
    with torch.inference_mode():
        sliced = vae.decode(z, num_frames=6)
    assert whole.abs().mean() > 0.05
    assert (sliced - whole).abs().max() < 1e-5
    assert (whole - recorded.detach()).abs().max() < 1e-5
    assert torch.equal(z, z_copy)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last_3d])
def test_temporal_conv_is_the_reference_conv3d(memory_format):
    torch.manual_seed(0)
    conv = TemporalConv3d(16, 24, (3, 1, 1), padding=(1, 0, 0))
    ref = nn.Conv3d(16, 24, (3, 1, 1), padding=(1, 0, 0))
    ref.load_state_dict(conv.state_dict())
    x = torch.randn(2, 16, 5, 6, 7).contiguous(memory_format=memory_format)
    out = conv(x)
    assert out.shape == (2, 24, 5, 6, 7)
    assert (out - ref(x)).abs().max() < 1e-5
    other = TemporalConv3d(16, 24, 3, padding=1)  # a 3x3x3 kernel takes the plain Conv3d path
    other_ref = nn.Conv3d(16, 24, 3, padding=1)
    other_ref.load_state_dict(other.state_dict())
    assert torch.equal(other(x), other_ref(x))


def test_single_frame_conv_output_keeps_channels_last_through_group_norm():
    torch.manual_seed(0)
    conv = set_channels_last(nn.Conv2d(32, 32, 3, padding=1))
    x = torch.randn(1, 32, 16, 16).contiguous(memory_format=torch.channels_last)
    h = conv(x)
    fixed = canonical_strides(h)
    assert fixed.stride() == (16 * 16 * 32, 1, 16 * 32, 32) and torch.equal(fixed, h)
    normed = F.group_norm(fixed, 8)
    assert normed.is_contiguous(memory_format=torch.channels_last) and not normed.is_contiguous()
    assert torch.allclose(normed, F.group_norm(h.contiguous(), 8), atol=1e-5)
    plain = x.contiguous()
    assert canonical_strides(plain) is plain  # NCHW tensors pass through


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(6, 64, 8, 12), (2, 128, 3, 8, 8)])
def test_group_norm_on_small_channels_last_maps_uses_channel_sums(monkeypatch, shape, dtype):
    """Below CHANNELS_LAST_NORM_PIXELS a channels-last GroupNorm32 runs on per-channel sums, not PyTorch's kernel:
    the same normalisation (as close to float64 as the kernel), the same layout, the input untouched."""
    import svd_core.layers as layers

    torch.manual_seed(0)
    fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
    x = (torch.randn(shape) * 3 + 1.5).to(dtype).contiguous(memory_format=fmt)
    before = x.clone()
    norm = layers.GroupNorm32(32, shape[1]).to(dtype)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    exact = F.group_norm(x.double(), 32, norm.weight.double(), norm.bias.double(), norm.eps)
    kernel_calls, kernel = [], F.group_norm
    monkeypatch.setattr(layers.F, "group_norm", lambda *a, **k: kernel_calls.append(1) or kernel(*a, **k))
    with torch.inference_mode():
        fast = norm(x)
        assert not kernel_calls  # the sums path ran
        monkeypatch.setattr(layers, "CHANNELS_LAST_NORM_PIXELS", 0)
        native = norm(x)
        assert kernel_calls
    assert fast.dtype == dtype and fast.is_contiguous(memory_format=fmt) and torch.equal(x, before)
    err, err_kernel = ((y.double() - exact).abs().max().item() for y in (fast, native))
    assert err <= max(1.01 * err_kernel, 1e-5), (err, err_kernel)
    with torch.enable_grad():  # a graph-recording forward takes the kernel, whatever the map's size
        monkeypatch.setattr(layers, "CHANNELS_LAST_NORM_PIXELS", 1 << 30)
        assert torch.equal(norm(x), native)


def test_geglu_and_feed_forward_slices_equal_the_plain_path():
    torch.manual_seed(0)
    geglu = GEGLU(16, 32)
    x = torch.randn(3, 10, 16)
    with torch.enable_grad():
        plain = geglu(x)
    with torch.inference_mode():
        fast = geglu(x)
        whole = _run_chunked(geglu, x, None)
        sliced = _run_chunked(geglu, x, 7)  # 30 rows in slices of 7: crosses the batch boundary
    assert torch.allclose(fast, plain, atol=1e-6) and torch.allclose(sliced, whole, atol=1e-6)
    assert sliced.shape == (3, 10, 32)
    assert fast.is_contiguous()  # the two halves as two Linears: each in its own buffer (GEGLU_SPLIT)
    # an unmerged LoRA adds its term in a forward hook on `proj`: the split path must not read around it
    geglu.proj.register_forward_hook(lambda _m, _inp, out: out + 1.0)
    with torch.inference_mode():
        hooked = geglu(x)
    with torch.enable_grad():
        expected = geglu(x)  # the plain path calls the module
    assert torch.allclose(hooked, expected, atol=1e-6) and (hooked - fast).abs().max() > 0.1


def test_res_block_residual_plus_skip_is_forward():
    torch.manual_seed(0)
    block = ResBlock(32, 16, 64)
    for p in block.parameters():
        p.data.normal_(0, 0.2)
    x, emb = torch.randn(2, 32, 8, 8), torch.randn(2, 16)
    with torch.inference_mode():
        fast = block(x, emb)
        parts = block.skip_connection(x) + block.residual(x, emb)
    with torch.enable_grad():
        slow = block(x, emb)
    assert torch.allclose(fast, parts, atol=1e-6) and torch.allclose(fast, slow, atol=1e-6)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("size", [(5, 7), (16, 16)])
def test_upsample_conv_is_conv_of_the_nearest_upsampling(channels_last, size):
    torch.manual_seed(0)
    conv = nn.Conv2d(12, 20, 3, padding=1)
    x = torch.randn(3, 12, *size)
    if channels_last:
        set_channels_last(conv)
        x = x.contiguous(memory_format=torch.channels_last)
    ref = conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    with torch.inference_mode():
        got = upsample_conv(x, conv)
    assert got.shape == (3, 20, 2 * size[0], 2 * size[1])
    assert (got - ref).abs().max() < 1e-5 * ref.abs().max()
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_upsample_conv_in_bfloat16_is_as_close_as_the_plain_path():
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 32, 3, padding=1)
    x = torch.randn(2, 32, 64, 64)  # large enough for the half-precision fast path
    truth = conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    conv_bf16, x_bf16 = conv.to(torch.bfloat16), x.to(torch.bfloat16)
    with torch.inference_mode():
        fast = upsample_conv(x_bf16, conv_bf16).float()
        plain = conv_bf16(F.interpolate(x_bf16, scale_factor=2.0, mode="nearest")).float()
    scale = truth.abs().max()
    assert (fast - truth).abs().max() < 2 * (plain - truth).abs().max() + 1e-3 * scale
    assert (fast - truth).abs().mean() < 1.5 * (plain - truth).abs().mean()


def test_frozen_model_gives_the_same_bits_with_or_without_grad_mode():
    model = tiny_model(seed=0)  # frozen: requires_grad False everywhere
    x, t, ctx, y = _unet_inputs(model, seed=3)
    kwargs = dict(context=ctx, y=y, num_video_frames=4)
    with torch.inference_mode():
        fast = model.unet(x, t, **kwargs)
    with torch.enable_grad():
        frozen = model.unet(x, t, **kwargs)
    assert torch.equal(fast, frozen)


def test_partly_trainable_unet_backpropagates_through_the_fast_paths():
    """Temporal-only training: frozen spatial layers take the in-place paths, the trainable ones must not."""
    model = tiny_model(seed=0)
    named = [(n, p) for n, p in model.unet.named_parameters() if "time_stack" in n or "time_mixer" in n]
    trainable = [p for _, p in named]
    for p in trainable:
        p.requires_grad_(True)
    x, t, ctx, y = _unet_inputs(model, seed=4)
    try:
        with torch.enable_grad():
            out = model.unet(x, t, context=ctx, y=y, num_video_frames=4)
            out.square().mean().backward()
        # with one context token the cross-attention output does not depend on its queries: norm2, to_q and
        # to_k get no gradient (the reference gives them exact zeros); every other parameter gets one
        unused = {n.split(".")[-2] for n, p in named if p.grad is None}
        assert unused == {"norm2", "to_q", "to_k"}
        assert sum(p.grad.abs().sum() for p in trainable if p.grad is not None) > 0
        with torch.inference_mode():
            assert (model.unet(x, t, context=ctx, y=y, num_video_frames=4) - out.detach()).abs().max() < 1e-5
    finally:
        for p in trainable:
            p.requires_grad_(False)
            p.grad = None
