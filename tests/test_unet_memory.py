"""The UNet forward's activation peak against diffusers' on the same weights and inputs (issue 16): real CPU
tensors under `svd_core.memory.activation_peak` (deterministic: the bytes of live tensors, like CUDA's
max_memory_allocated), with the outputs compared so the saving cannot come from skipped work."""
from __future__ import annotations

import pytest
import torch

from svd_core.convert import state_dict_sgm_to_diffusers, unet_layout
from svd_core.memory import activation_peak
from svd_core.testing import tiny_model

FRAMES = 8


def _pair(dtype, latent):
    from diffusers import UNetSpatioTemporalConditionModel

    model = tiny_model(seed=0)
    model.set_channels_last(True)  # as svd_core.pipeline and the nodes run it
    u = model.spec.unet
    ref = UNetSpatioTemporalConditionModel(
        sample_size=latent, in_channels=u.in_channels, out_channels=u.out_channels,
        block_out_channels=tuple(u.model_channels * c for c in u.channel_mult), addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=u.adm_in_channels, layers_per_block=u.num_res_blocks,
        cross_attention_dim=u.context_dim, num_frames=FRAMES,
        num_attention_heads=tuple(u.model_channels * c // u.num_head_channels for c in u.channel_mult)).eval()
    ref.load_state_dict(state_dict_sgm_to_diffusers(model.unet.state_dict(), "unet", **unet_layout(u)))
    return model.to(dtype), ref.to(dtype)


# bfloat16 at 16x16 latents: diffusers' bf16 temporal convs take the slow im2col path on CPU
@pytest.mark.parametrize("dtype, latent, tol", [(torch.float32, 32, 1e-4), (torch.bfloat16, 16, 0.1)])
def test_unet_peak_is_at_most_half_of_diffusers_with_the_same_output(dtype, latent, tol):
    model, ref = _pair(dtype, latent)
    g = torch.Generator().manual_seed(0)
    b = 2  # the guided batch: unconditional and conditional branches together
    x = torch.randn(b, FRAMES, 8, latent, latent, generator=g).to(dtype)
    ctx = torch.randn(b, 1, model.spec.unet.context_dim, generator=g).to(dtype)
    ids = torch.tensor([[6.0, 127.0, 0.02], [10.0, 30.0, 0.5]])
    t = torch.tensor([0.5, -0.3])
    y = model.conditioner.vector({"fps_id": ids[:, 0], "motion_bucket_id": ids[:, 1], "cond_aug": ids[:, 2]}).to(dtype)
    results = {}

    def ours():
        results["ours"] = model.unet(x.flatten(0, 1), t.repeat_interleave(FRAMES),
                                     context=ctx.repeat_interleave(FRAMES, 0), y=y.repeat_interleave(FRAMES, 0),
                                     num_video_frames=FRAMES)  # b t ... -> (b t) ...

    def theirs():
        results["theirs"] = ref(x, t, encoder_hidden_states=ctx, added_time_ids=ids.to(dtype)).sample.flatten(0, 1)

    peaks = {name: activation_peak(fn) for name, fn in (("ours", ours), ("theirs", theirs))}
    got, expected = results["ours"].float(), results["theirs"].float()
    err = (got - expected).abs().max().item()
    print(f"{dtype}: peak ours {peaks['ours'] / 2**20:.1f} MiB, diffusers {peaks['theirs'] / 2**20:.1f} MiB "
          f"({peaks['ours'] / peaks['theirs']:.2f}x), max abs diff {err:.2e}")
    assert expected.abs().mean() > 0.1  # a meaningful output, not zeros
    assert err < tol * max(1.0, expected.abs().max().item())
    assert peaks["ours"] <= 0.5 * peaks["theirs"]


@pytest.mark.parametrize("frames, tokens", [(1, 5), (3, 1), (3, 5)])
@torch.no_grad()
def test_temporal_block_never_writes_into_its_input(frames, tokens):
    """The in-place residual paths add into the block's own time-major copy: with one frame or one location the
    rearrange is a view of the caller's tensor, which must stay untouched."""
    from svd_core.attention import VideoTransformerBlock

    torch.manual_seed(0)
    block = VideoTransformerBlock(64, 2, 32, 64).eval()
    x = torch.randn(2 * frames, tokens, 64)
    before = x.clone()
    out = block(x, torch.randn(2, 1, 64), frames)
    assert torch.equal(x, before) and not torch.equal(out, before)
