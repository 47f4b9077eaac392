"""Key maps sgm <-> diffusers: every row of the reference truth tables, both directions, plus small structures."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from svd_core.convert import (
    state_dict_diffusers_to_sgm,
    state_dict_sgm_to_diffusers,
    unet_diffusers_to_sgm,
    unet_layout,
    unet_sgm_to_diffusers,
    vae_diffusers_to_sgm,
    vae_layout,
    vae_sgm_to_diffusers,
)
from svd_core.variants import SVD, SVD_IMAGE_DECODER, TINY

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"


def _rows(name: str) -> list[list[str]]:
    lines = (REFERENCE / name).read_text().splitlines()
    assert lines[0].startswith("sgm_key"), lines[0]
    return [line.split("\t") for line in lines[1:] if line.strip()]


def test_unet_rules_reproduce_every_row_both_ways():
    rows = _rows("svd_unet_key_map.tsv")
    assert len(rows) == 1428
    layout = unet_layout(SVD.unet)
    assert layout == {"num_levels": 4, "num_res_blocks": 2, "attention_levels": (0, 1, 2)}
    forward = [(s, unet_sgm_to_diffusers(s, **layout)) for s, _, _ in rows]
    backward = [(d, unet_diffusers_to_sgm(d, **layout)) for _, d, _ in rows]
    assert [d for _, d in forward] == [d for _, d, _ in rows]
    assert [s for _, s in backward] == [s for s, _, _ in rows]


def test_vae_rules_reproduce_every_row_both_ways():
    rows = _rows("svd_vae_key_map.tsv")
    assert len(rows) == 372
    layout = vae_layout(SVD.vae)
    for sgm_key, diffusers_key, _shape, squeeze in rows:
        assert squeeze in ("True", "False")
        assert vae_sgm_to_diffusers(sgm_key, **layout) == (diffusers_key, squeeze == "True"), sgm_key
        assert vae_diffusers_to_sgm(diffusers_key, **layout) == (sgm_key, squeeze == "True"), diffusers_key


def test_vae_state_dict_reshapes_attention_and_adds_identity_quant_conv():
    rows = _rows("svd_vae_key_map.tsv")
    sd = {}
    for sgm_key, _, shape, _ in rows:
        dims = [int(v) for v in shape.strip("[]").split(",")]
        sd[sgm_key] = torch.randn(*[min(d, 8) if i > 1 else d for i, d in enumerate(dims)])
    out = state_dict_sgm_to_diffusers(sd, "vae", **vae_layout(SVD.vae))
    assert len(out) == len(sd) + 2
    assert out["encoder.mid_block.attentions.0.to_q.weight"].shape == (512, 512)
    assert out["decoder.mid_block.attentions.0.to_out.0.weight"].shape == (512, 512)
    assert torch.equal(out["quant_conv.weight"][:, :, 0, 0], torch.eye(8))
    assert torch.equal(out["quant_conv.bias"], torch.zeros(8))
    back = state_dict_diffusers_to_sgm(out, "vae", **vae_layout(SVD.vae))
    assert back.keys() == sd.keys()
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_quant_conv_is_folded_into_encoder_conv_out():
    torch.manual_seed(0)
    w, b = torch.randn(8, 16, 3, 3), torch.randn(8)
    q, qb = torch.randn(8, 8, 1, 1), torch.randn(8)
    diff = {"encoder.conv_out.weight": w, "encoder.conv_out.bias": b, "quant_conv.weight": q, "quant_conv.bias": qb}
    sgm = state_dict_diffusers_to_sgm(diff, "vae")
    assert set(sgm) == {"encoder.conv_out.weight", "encoder.conv_out.bias"}
    x = torch.randn(2, 16, 5, 5)
    want = torch.nn.functional.conv2d(torch.nn.functional.conv2d(x, w, b, padding=1), q, qb)
    got = torch.nn.functional.conv2d(x, sgm["encoder.conv_out.weight"], sgm["encoder.conv_out.bias"], padding=1)
    assert (got - want).abs().max() < 1e-4


def test_unknown_keys_raise_clear_errors():
    with pytest.raises(KeyError, match="no rule for key 'input_blocks.99.0.in_layers.0.weight'"):
        unet_sgm_to_diffusers("input_blocks.99.0.in_layers.0.weight")
    with pytest.raises(KeyError, match="no rule"):
        unet_diffusers_to_sgm("down_blocks.3.attentions.0.norm.weight")  # coarsest level has no attention
    with pytest.raises(KeyError, match="no rule"):
        vae_sgm_to_diffusers("decoder.up.4.block.0.norm1.weight")
    with pytest.raises(KeyError, match="folds it into encoder.conv_out"):
        vae_diffusers_to_sgm("quant_conv.weight")
    with pytest.raises(ValueError, match="kind must be 'unet' or 'vae'"):
        state_dict_sgm_to_diffusers({}, "clip")


@pytest.mark.parametrize("levels,res_blocks", [(3, 1), (4, 2), (2, 3)])
def test_unet_rules_cover_a_small_diffusers_unet(levels, res_blocks):
    """Every key of a small UNetSpatioTemporalConditionModel maps to sgm and back (other block structures)."""
    from diffusers import UNetSpatioTemporalConditionModel

    down = ("CrossAttnDownBlockSpatioTemporal",) * (levels - 1) + ("DownBlockSpatioTemporal",)
    up = ("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * (levels - 1)
    with torch.device("meta"):
        model = UNetSpatioTemporalConditionModel(
            sample_size=8,
            down_block_types=down,
            up_block_types=up,
            block_out_channels=tuple(32 * (i + 1) for i in range(levels)),
            layers_per_block=res_blocks,
            cross_attention_dim=32,
            num_attention_heads=tuple(2 for _ in range(levels)),
            projection_class_embeddings_input_dim=3 * 256,
            addition_time_embed_dim=256,
        )
    layout = {"num_levels": levels, "num_res_blocks": res_blocks, "attention_levels": tuple(range(levels - 1))}
    keys = list(model.state_dict())
    sgm_keys = [unet_diffusers_to_sgm(k, **layout) for k in keys]
    assert len(set(sgm_keys)) == len(keys)
    assert [unet_sgm_to_diffusers(k, **layout) for k in sgm_keys] == keys
    # sgm numbering: input_blocks 1 + levels*res + (levels-1) downsamplers, output_blocks levels*(res+1)
    n_in = max(int(k.split(".")[1]) for k in sgm_keys if k.startswith("input_blocks."))
    n_out = max(int(k.split(".")[1]) for k in sgm_keys if k.startswith("output_blocks."))
    assert n_in == levels * res_blocks + levels - 1
    assert n_out == levels * (res_blocks + 1) - 1


def test_layout_helpers_follow_specs():
    assert vae_layout(SVD.vae) == {"num_levels": 4, "num_res_blocks": 2, "temporal": True}
    assert vae_layout(SVD_IMAGE_DECODER.vae)["temporal"] is False
    assert unet_layout(TINY.unet)["attention_levels"] == (0, 1, 2)
