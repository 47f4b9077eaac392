"""Text-to-video (paper Sec. 4.2): documented key layout, open_clip text tower parity, temporal prompting reaching
only the temporal cross-attention, training conditioning, checkpoints."""
from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

from svd_core import loading, testing
from svd_core import text2video as t2v
from svd_core.model import build
from svd_core.variants import TEXT2VIDEO

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"
LABEL = "model.diffusion_model.label_emb.0.0.weight"
TEXT = "conditioner.embedders.0.model."


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_models("tiny_t2v", seed=4)


def test_full_size_layout_documented_and_checked_key_by_key():
    ref = json.loads((REFERENCE / "svd_xt.keys.json").read_text())["keys"]
    shapes = {k: list(v.shape) for k, v in build(TEXT2VIDEO, device="meta").state_dict().items()}
    # UNet and VAE: SVD's keys; 4 input channels (no concat frame), adm 512 (fps, motion score)
    for prefix in ("model.diffusion_model.", "first_stage_model."):
        ours = {k: v for k, v in shapes.items() if k.startswith(prefix)}
        theirs = {k: v for k, v in ref.items() if k.startswith(prefix)}
        assert set(ours) == set(theirs)
        assert {k: v for k, v in ours.items() if k not in (CONV_IN, LABEL)} == \
            {k: v for k, v in theirs.items() if k not in (CONV_IN, LABEL)}
    assert shapes[CONV_IN] == [320, 4, 3, 3] and shapes[LABEL] == [1280, 512]
    assert shapes["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] == [320, 1024]
    # conditioner: exactly open_clip ViT-H-14's text side (SD 2.1's tower), as open_clip builds it
    cfg = open_clip.get_model_config("ViT-H-14")
    with torch.device("meta"):
        oc = CLIP(cfg["embed_dim"], CLIPVisionCfg(**cfg["vision_cfg"]), CLIPTextCfg(**cfg["text_cfg"]))
    oc_text = {TEXT + k: list(v.shape) for k, v in oc.state_dict().items() if not k.startswith("visual.")}
    cond = {k: v for k, v in shapes.items() if k.startswith("conditioner.")}
    assert cond == oc_text
    assert cond[TEXT + "token_embedding.weight"] == [49408, 1024]
    assert cond[TEXT + "positional_embedding"] == [77, 1024]
    assert sum(k.endswith("attn.in_proj_weight") for k in cond) == 24
    # every documented key pattern is real
    doc = t2v.__doc__
    for name in ("token_embedding.weight (49408, 1024)", "positional_embedding (77, 1024)", "(320, 4, 3, 3)",
                 "(1280, 512)", "text_projection (1024, 1024)"):
        assert name in doc
    spec, how = loading.detect_spec({k: tuple(v) for k, v in shapes.items()}, {}, "t2v.safetensors")
    assert spec.name == "t2v" and "text" in how


def test_text_tower_matches_open_clip(model):
    spec = model.spec.clip
    oc = CLIP(spec.embed_dim, CLIPVisionCfg(image_size=56, layers=1, width=64, patch_size=14, head_width=32),
              CLIPTextCfg(context_length=spec.text_context_length, vocab_size=spec.text_vocab_size,
                          width=spec.text_width, heads=spec.text_heads, layers=spec.text_layers)).eval()
    text_sd = model.conditioner.text.model.state_dict()
    missing, _ = oc.load_state_dict(text_sd, strict=False)
    assert all(k.startswith("visual.") for k in missing)
    tokens = model.conditioner.text.tokenize(["a photo of a cat", "panning"])
    assert tokens.shape == (2, 16) and tokens[0, 0] == 49406  # open_clip's start token, real vocabulary
    with torch.no_grad():
        ours = model.conditioner.text.encode_tokens(tokens)
        inter = oc.forward_intermediates(text=tokens, text_indices=[spec.text_layers - 2], intermediates_only=True)
        penultimate = oc.ln_final(inter["text_intermediates"][0])
        torch.testing.assert_close(ours, penultimate, rtol=1e-5, atol=1e-5)
        assert ours.shape == (2, 16, 64)
        # the last layer, pooled and projected, is open_clip's encode_text
        from svd_core.text_encoder import OpenCLIPTextEmbedder
        last = OpenCLIPTextEmbedder(spec, layer="last")
        last.model.load_state_dict(text_sd)
        x = last.encode_tokens(tokens)
        pooled = x[torch.arange(2), tokens.argmax(dim=-1)] @ last.model.text_projection
        torch.testing.assert_close(pooled, oc.encode_text(tokens), rtol=1e-5, atol=1e-5)


def test_temporal_prompt_reaches_only_the_temporal_cross_attention(model):
    seen = {"spatial": [], "temporal": []}
    hooks = []
    for name, mod in model.unet.named_modules():
        if name.endswith("attn2"):
            kind = "temporal" if ".time_stack." in name else "spatial"
            hooks.append(mod.to_k.register_forward_hook(lambda m, inp, out, kind=kind: seen[kind].append(inp[0])))
    try:
        cond = t2v.text_conditioning(model, "flowers in a pot in front of a mountainside", temporal_prompt="panning",
                                     num_frames=3, width=64, height=64)
        spatial = t2v.encode_prompts(model, "flowers in a pot in front of a mountainside")
        temporal = t2v.encode_prompts(model, "panning")
        assert torch.equal(cond.cond.time_context, temporal) and torch.equal(cond.cond.crossattn[1], spatial[0])
        assert torch.equal(cond.uncond.crossattn[0], t2v.encode_prompts(model, "")[0])
        assert cond.cond.concat.shape == (3, 0, 8, 8)
        x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            out = model.denoise(x, torch.full((3,), 2.0), cond.cond, 3)
        assert seen["spatial"] and seen["temporal"]
        for ctx in seen["spatial"]:
            assert torch.equal(ctx[0], spatial[0])  # spatial blocks: the spatial prompt
        for ctx in seen["temporal"]:
            assert torch.equal(ctx[0], temporal[0])  # temporal blocks: the temporal prompt
        # without a temporal prompt the temporal blocks see the spatial prompt and the result changes
        plain = t2v.text_conditioning(model, "flowers in a pot in front of a mountainside", num_frames=3,
                                      width=64, height=64)
        assert plain.cond.time_context is None
        with torch.no_grad():
            out_plain = model.denoise(x, torch.full((3,), 2.0), plain.cond, 3)
        assert (out - out_plain).abs().max() > 1e-4
    finally:
        for h in hooks:
            h.remove()


def test_text2vid_end_to_end_and_training_conditioning(model):
    video = t2v.text2vid(model, "a red ball", temporal_prompt="zooming in", num_frames=3, width=64, height=64,
                         steps=2, seed=1)
    assert video.shape == (1, 3, 3, 64, 64) and 0 <= video.min() and video.max() <= 1
    vc = t2v.training_conditioning(model, ["a cat", "a dog"], num_frames=3, height=64, width=64, fps=[7, 12],
                                   motion_score=[10.0, 200.0], temporal_captions=["panning", None])
    assert vc.crossattn.shape == (6, 16, 64) and vc.time_context.shape == (2, 16, 64)
    torch.testing.assert_close(vc.time_context[1], t2v.encode_prompts(model, "a dog")[0])
    torch.testing.assert_close(vc.time_context[0], t2v.encode_prompts(model, "panning")[0])
    torch.testing.assert_close(vc.vector[3:, :256], model.conditioner.vector(
        {"fps_id": torch.full((3,), 11.0), "motion_score": torch.full((3,), 200.0)})[:, :256])
    # guidance dropout (paper: 15% text dropout) is the trainer's one `drop_conditioning`: a dropped video gets the
    # sampler's unconditional branch, the empty prompt's tokens, in its spatial and temporal cross-attention
    from svd_core.training.objective import drop_conditioning
    from svd_core.training.tasks import null_context

    empty = t2v.encode_prompts(model, "")
    torch.testing.assert_close(null_context(model), empty)
    dropped = drop_conditioning(vc, torch.tensor([1.0, 0.0]), 3, null_context(model))
    torch.testing.assert_close(dropped.crossattn[3:], empty.expand(3, -1, -1))
    torch.testing.assert_close(dropped.time_context[1], empty[0])
    assert torch.equal(dropped.crossattn[:3], vc.crossattn[:3]) and torch.equal(dropped.time_context[0],
                                                                                  vc.time_context[0])
    assert torch.equal(dropped.vector, vc.vector) and not torch.equal(empty[0], vc.crossattn[3])
    with pytest.raises(ValueError, match="text-conditioned model"):
        t2v.text_conditioning(testing.tiny_model("tiny", seed=0), "x")


def test_checkpoint_round_trip_and_sd21_text_tower(tmp_path, model):
    path = loading.save(model, tmp_path / "t2v.safetensors")
    loaded = loading.load(path)
    assert loaded.spec == model.spec
    got = loaded.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(got[k], v), k
    other = testing.tiny_model("tiny_t2v", seed=9)
    sd21 = {"cond_stage_model.model." + k: v for k, v in model.conditioner.text.model.state_dict().items()}
    copied = t2v.text_tower_from_sd21(other, sd21)
    assert "token_embedding.weight" in copied
    assert torch.equal(other.conditioner.text.model.ln_final.weight, model.conditioner.text.model.ln_final.weight)
    with pytest.raises(ValueError, match="missing"):
        t2v.text_tower_from_sd21(other, {k: v for k, v in sd21.items() if "ln_final" not in k})


def test_init_from_svd_keeps_noise_channels_and_fps_motion_columns():
    svd = testing.tiny_model("tiny", seed=1)
    m = t2v.init_from(svd, testing.TINY_T2V)
    src, dst = svd.state_dict(), m.state_dict()
    assert torch.equal(dst[CONV_IN], src[CONV_IN][:, :4]) and torch.equal(dst[LABEL], src[LABEL][:, :512])
    assert sorted(m.transfer_report["sliced"]) == sorted([CONV_IN, LABEL])
    assert all(k.startswith(TEXT) for k in m.transfer_report["new"])
    assert all(k.startswith("conditioner.") for k in m.transfer_report["dropped"])
