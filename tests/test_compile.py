"""torch.compile takes the UNet and the temporal VAE decoder whole (fullgraph: no graph break) and gives the eager
outputs, fast paths included (in-place sums, folded upsample convs, channels-last layouts). The `aot_eager` backend
traces exactly what inductor would be given, without spending minutes generating kernels on a CPU runner. The model is
the micro one of the training tests (TINY's widths, 2 UNet levels of 1 res block each, attention on both) at 8x8
latents: the tracing time grows with the number of blocks, and the micro UNet still has every layer kind of the full
one (video res blocks, spatio-temporal transformers, down- and upsampling, skip concatenations)."""
from __future__ import annotations

import pytest
import torch

from svd_core.testing import tiny_model
from tests.test_training_support import micro_spec


@pytest.fixture(scope="module")
def model():
    m = tiny_model(micro_spec(), seed=3)
    m.set_channels_last(True)  # as the pipeline runs it
    return m


def _compiled(fn):
    torch._dynamo.reset()
    return torch.compile(fn, backend="aot_eager", fullgraph=True, dynamic=False)


@pytest.mark.slow
def test_unet_compiles_whole_and_matches_eager(model):
    frames, g = 4, torch.Generator().manual_seed(0)
    unet = model.unet
    x = torch.randn(2 * frames, model.spec.unet.in_channels, 8, 8, generator=g)
    t = torch.rand(2 * frames, generator=g)
    ctx = torch.randn(2 * frames, 1, model.spec.unet.context_dim, generator=g)
    y = torch.randn(2 * frames, model.spec.unet.adm_in_channels, generator=g)
    with torch.inference_mode():
        eager = unet(x, t, context=ctx, y=y, num_video_frames=frames)
        compiled = _compiled(unet)(x, t, context=ctx, y=y, num_video_frames=frames)
    assert compiled.shape == eager.shape and eager.abs().mean() > 0.01
    assert (compiled - eager).abs().max() < 1e-4


@pytest.mark.slow
def test_temporal_decoder_compiles_whole_and_matches_eager(model):
    frames = 4
    z = torch.randn(frames, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    decode = model.first_stage_model.decode
    with torch.inference_mode():
        eager = decode(z, frames)
        compiled = _compiled(decode)(z, frames)
    assert compiled.shape == eager.shape == (frames, 3, 64, 64) and eager.std() > 0.01
    assert (compiled - eager).abs().max() < 1e-4
