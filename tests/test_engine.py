"""Engine: exact released layouts (meta device), variant detection, loading, parity with diffusers / open_clip."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import svd_core
from svd_core.loading import CheckpointError, TensorDict, assign_weights, detect_spec, optional_keys
from svd_core.model import LoadReport, SVDModel
from svd_core.testing import TINY_SV3D_P, TINY_XT, make_tiny_checkpoint, randomize_, tiny_model
from svd_core.variants import TINY

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
LAYOUT_FILE = {"svd": "svd_xt", "svd_xt": "svd_xt", "svd_xt_1_1": "svd_xt", "svd_image_decoder": "svd_image_decoder",
               "svd_xt_image_decoder": "svd_image_decoder", "sv3d_u": "sv3d_u", "sv3d_p": "sv3d_p"}


def reference_keys(variant: str) -> dict[str, list[int]]:
    return json.loads((REFERENCE / f"{LAYOUT_FILE[variant]}.keys.json").read_text())["keys"]


@pytest.mark.parametrize("variant", list(LAYOUT_FILE))
def test_full_size_layout_matches_reference_key_by_key(variant):
    model = svd_core.build(variant, device="meta")
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    ref = reference_keys(variant)
    assert sorted(set(ref) - set(ours)) == []
    assert sorted(set(ours) - set(ref)) == []
    assert [k for k in ref if ours[k] != ref[k]] == []
    assert all(p.is_meta for p in model.parameters())
    if variant.startswith("svd"):
        n = sum(p.numel() for p in model.unet.parameters())
        assert 1.5e9 < n < 1.55e9  # ~1.52 B UNet parameters (reference README)


@pytest.mark.parametrize("variant,filename,expected", [
    ("svd", "svd.safetensors", "svd"), ("svd_xt", "svd_xt.safetensors", "svd_xt"),
    ("svd_xt", "svd_xt_1_1.safetensors", "svd_xt_1_1"), ("svd_image_decoder", "svd_image_decoder.safetensors",
                                                         "svd_image_decoder"),
    ("svd_image_decoder", "svd_xt_image_decoder.safetensors", "svd_xt_image_decoder"),
    ("sv3d_u", "sv3d_u.safetensors", "sv3d_u"), ("sv3d_p", "sv3d_p.safetensors", "sv3d_p")])
def test_variant_detected_from_shapes_and_full_layout_assigns_on_meta(variant, filename, expected):
    shapes = {k: tuple(v) for k, v in reference_keys(variant).items()}
    spec, how = detect_spec(shapes, {}, filename)
    assert spec.name == expected, how
    # the whole released layout is consumed key by key (shapes only: meta tensors, no memory)
    source = TensorDict({k: torch.empty(s, device="meta") for k, s in shapes.items()})
    with torch.device("meta"):
        model = SVDModel(spec)
    assign_weights(model, source, LoadReport(source=filename), device="meta")
    assert model.load_report.unexpected == [] and model.load_report.missing_optional == []


def test_released_file_may_omit_unused_parts_and_reports_them():
    shapes = {k: tuple(v) for k, v in reference_keys("svd_xt").items()}
    spec, _ = detect_spec(shapes, {}, "svd_xt.safetensors")
    kept = {k: s for k, s in shapes.items() if not k.startswith(optional_keys(spec))}
    assert len(kept) < len(shapes)
    with torch.device("meta"):
        model = SVDModel(spec)
    kept["model.diffusion_model.some_new_thing.weight"] = (3,)
    assign_weights(model, TensorDict({k: torch.empty(s, device="meta") for k, s in kept.items()}),
                   LoadReport(source="x"), device="meta")
    report = model.load_report
    assert report.unexpected == ["model.diffusion_model.some_new_thing.weight"]
    assert "conditioner.embedders.3.encoder.decoder.conv_in.weight" in report.missing_optional
    assert "conditioner.embedders.0.open_clip.model.token_embedding.weight" in report.missing_optional
    assert not hasattr(model.conditioner.vae_encoder.encoder, "decoder") or model.conditioner.vae_encoder.encoder.decoder is None
    assert "unexpected keys (1)" in report.summary()


def test_unknown_adm_width_without_metadata_is_a_clear_error():
    shapes = {k: tuple(v) for k, v in reference_keys("svd_xt").items()}
    shapes["model.diffusion_model.label_emb.0.0.weight"] = (1280, 512)
    with pytest.raises(CheckpointError, match="adm width 512 matches no released variant"):
        detect_spec(shapes, {}, "odd.safetensors")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_tiny_checkpoint_round_trip_in_every_dtype(tmp_path, dtype):
    path = make_tiny_checkpoint(tmp_path / "t.safetensors", dtype=dtype, seed=3)
    model = svd_core.load(path)
    ref = tiny_model(seed=3, dtype=dtype)
    assert model.spec == ref.spec and model.load_report.detected_from == "spec in the file's metadata"
    got_sd = model.state_dict()
    for k, v in ref.state_dict().items():
        got = got_sd[k]
        assert got.dtype == dtype and torch.equal(got, v), k
    as32 = svd_core.load(path, dtype=torch.float32)
    assert all(p.dtype == torch.float32 for p in as32.parameters())


def test_other_tiny_variants_round_trip(tmp_path):
    for spec in (TINY_XT, TINY_SV3D_P):
        model = svd_core.load(make_tiny_checkpoint(tmp_path / f"{spec.name}.safetensors", spec=spec))
        assert model.spec == spec and model.load_report.unexpected == []


def test_not_a_safetensors_file(tmp_path):
    bad = tmp_path / "notes.safetensors"
    bad.write_text("this is not a checkpoint at all, just text")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        svd_core.load(bad)


def test_truncated_file_names_the_key(tmp_path, tiny_ckpt):
    data = tiny_ckpt.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match=r"truncated: tensor '.+' ends at byte \d+ but the file has \d+ bytes"):
        svd_core.load(cut)


def test_wrong_shape_names_key_expected_and_found(tmp_path, tiny_ckpt):
    from safetensors.torch import load_file, save_file

    sd = load_file(str(tiny_ckpt))
    key = "model.diffusion_model.input_blocks.0.0.weight"
    expected = list(sd[key].shape)
    sd[key] = torch.zeros(expected[0], expected[1] + 1, 3, 3)
    bad = tmp_path / "bad.safetensors"
    from safetensors import safe_open

    with safe_open(str(tiny_ckpt), "pt") as f:
        meta = f.metadata()
    save_file(sd, str(bad), metadata=meta)
    found = [expected[0], expected[1] + 1, 3, 3]
    with pytest.raises(CheckpointError, match=rf"'{key}': expected \[{', '.join(map(str, expected))}\], "
                                              rf"found \[{', '.join(map(str, found))}\]"):
        svd_core.load(bad)


def test_pickled_checkpoints_refused_unless_opted_in(tmp_path):
    model = tiny_model(seed=1)
    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    with pytest.raises(CheckpointError, match="pickled checkpoints .* refused.*allow_pickle=True"):
        svd_core.load(ckpt, variant=TINY)
    loaded = svd_core.load(ckpt, variant=TINY, allow_pickle=True)
    assert torch.equal(loaded.unet.out[2].weight, model.unet.out[2].weight)


def test_missing_file_and_non_svd_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        svd_core.load(tmp_path / "nope.safetensors")
    from safetensors.torch import save_file

    other = tmp_path / "sd15.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 2)}, str(other))
    with pytest.raises(CheckpointError, match="no SVD UNet in this file"):
        svd_core.load(other)


def test_load_is_memory_mapped_when_dtype_matches(tiny_ckpt):
    model = svd_core.load(tiny_ckpt)
    # zero-copy: parameters are views of the file mapping, not fresh allocations of their own
    w = model.unet.input_blocks[0][0].weight
    assert not w.untyped_storage().resizable()


def test_save_is_atomic_and_keeps_spec(tmp_path):
    from svd_core.loading import save

    model = tiny_model(seed=2)
    out = save(model, tmp_path / "sub" / "m.safetensors")
    assert out.exists() and not list(out.parent.glob("*.tmp"))
    assert svd_core.load(out).spec == model.spec


# ----------------------------------------------------------------------------------------------- parity


def _diffusers_unet(spec, num_frames):
    from diffusers import UNetSpatioTemporalConditionModel

    mc = spec.model_channels
    return UNetSpatioTemporalConditionModel(
        sample_size=16, in_channels=spec.in_channels, out_channels=spec.out_channels,
        block_out_channels=tuple(mc * c for c in spec.channel_mult), addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=spec.adm_in_channels, layers_per_block=spec.num_res_blocks,
        cross_attention_dim=spec.context_dim,
        num_attention_heads=tuple(mc * c // spec.num_head_channels for c in spec.channel_mult), num_frames=num_frames)


@pytest.mark.parametrize("frames", [4, 8])
def test_unet_matches_diffusers(frames):
    from svd_core.convert import state_dict_sgm_to_diffusers, unet_layout

    model = tiny_model(seed=0)
    spec = model.spec.unet
    ref = _diffusers_unet(spec, frames).eval()
    ref.load_state_dict(state_dict_sgm_to_diffusers(model.unet.state_dict(), "unet", **unet_layout(spec)), strict=True)
    g = torch.Generator().manual_seed(1)
    b = 2
    x = torch.randn(b, frames, 8, 16, 16, generator=g)
    c_noise = 0.25 * torch.tensor([3.0, 0.05]).log()
    ctx = torch.randn(b, 1, spec.context_dim, generator=g)
    ids = torch.tensor([[6.0, 127.0, 0.02], [10.0, 30.0, 0.5]])
    with torch.no_grad():
        expected = ref(x, c_noise, encoder_hidden_states=ctx, added_time_ids=ids).sample.flatten(0, 1)
        y = model.conditioner.vector({"fps_id": ids[:, 0], "motion_bucket_id": ids[:, 1], "cond_aug": ids[:, 2]})
        got = model.unet(x.flatten(0, 1), c_noise.repeat_interleave(frames), context=ctx.repeat_interleave(frames, 0),
                         y=y.repeat_interleave(frames, 0), num_video_frames=frames)
    err = (got - expected).abs().max().item()
    print(f"UNet vs diffusers, {frames} frames: max abs {err:.2e}")
    assert expected.abs().mean() > 0.1  # a meaningful signal, not zeros
    assert err < 1e-4


def _tiny_open_clip():
    import open_clip

    cfg = TINY.clip
    vision = dict(image_size=cfg.image_size, layers=cfg.layers, width=cfg.width, head_width=cfg.head_width,
                  patch_size=cfg.patch_size)
    text = dict(context_length=cfg.text_context_length, vocab_size=cfg.text_vocab_size, width=cfg.text_width,
                heads=2, layers=1)
    return open_clip.CLIP(cfg.embed_dim, vision, text)


def test_clip_image_embedding_matches_open_clip():
    from svd_core.conditioner import clip_preprocess

    oc = randomize_(_tiny_open_clip().eval(), seed=5)
    model = tiny_model(seed=0)
    embedder = model.conditioner.clip
    missing, unexpected = embedder.open_clip.model.load_state_dict(
        {k: v for k, v in oc.state_dict().items() if k.startswith("visual.") or k in (
            "token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias", "text_projection",
            "logit_scale")}, strict=True)
    image = torch.rand(2, 3, 96, 160, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        ours = embedder(image)
        theirs = oc.encode_image(clip_preprocess(image, TINY.clip.image_size))
    assert ours.shape == (2, 1, TINY.clip.embed_dim)
    err = (ours[:, 0] - theirs).abs().max().item()
    print(f"CLIP vs open_clip: max abs {err:.2e}")
    assert err < 1e-5


def test_clip_preprocess_matches_reference_recipe():
    """kornia antialiased bicubic resize to 224 (align_corners=True), [-1,1] -> [0,1], CLIP mean/std."""
    import kornia

    from svd_core.conditioner import CLIP_MEAN, CLIP_STD, clip_preprocess

    x = torch.rand(1, 3, 64, 96) * 2 - 1
    resized = kornia.geometry.resize(x, (224, 224), interpolation="bicubic", align_corners=True, antialias=True)
    manual = ((resized + 1) / 2 - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    assert torch.allclose(clip_preprocess(x, 224), manual, atol=1e-6)


def test_vector_conditioning_is_the_sinusoidal_concat():
    model = tiny_model()
    vec = model.conditioner.vector({"fps_id": torch.tensor([6.0]), "motion_bucket_id": torch.tensor([127.0]),
                                    "cond_aug": torch.tensor([0.02])})
    assert vec.shape == (1, 768)
    half = torch.arange(128) / 128
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * half)
    expected_fps = torch.cat([torch.cos(6 * freqs), torch.sin(6 * freqs)])
    assert torch.allclose(vec[0, :256], expected_fps, atol=1e-6)
    with pytest.raises(ValueError, match=r"missing vector conditioning \['cond_aug'\]"):
        model.conditioner.vector({"fps_id": torch.tensor([6.0]), "motion_bucket_id": torch.tensor([127.0])})


def test_diffusers_folder_loads_and_matches(tmp_path):
    """A StableVideoDiffusionPipeline folder (unet/, vae/, image_encoder/) saved by diffusers / transformers."""
    from diffusers import AutoencoderKLTemporalDecoder
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from svd_core.conditioner import clip_preprocess
    from svd_core.convert import state_dict_sgm_to_diffusers, unet_layout, vae_layout

    src = tiny_model(seed=4)
    spec = src.spec
    unet = _diffusers_unet(spec.unet, 4)
    unet.load_state_dict(state_dict_sgm_to_diffusers(src.unet.state_dict(), "unet", **unet_layout(spec.unet)))
    ch = spec.vae.ch
    vae = AutoencoderKLTemporalDecoder(down_block_types=("DownEncoderBlock2D",) * 4, latent_channels=4,
                                       block_out_channels=tuple(ch * c for c in spec.vae.ch_mult), layers_per_block=2)
    randomize_(vae, seed=6)  # includes a non-identity quant_conv
    c = spec.clip
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=c.width, intermediate_size=int(c.width * c.mlp_ratio), projection_dim=c.embed_dim,
        num_hidden_layers=c.layers, num_attention_heads=c.width // c.head_width, image_size=c.image_size,
        patch_size=c.patch_size, hidden_act="gelu"))
    randomize_(clip, seed=7)
    for name, part in (("unet", unet), ("vae", vae), ("image_encoder", clip)):
        part.save_pretrained(tmp_path / name)
    model = svd_core.load(tmp_path)
    assert model.spec.unet == spec.unet and model.spec.custom
    assert "diffusers" in model.load_report.detected_from
    # UNet weights arrive unchanged
    loaded = model.unet.state_dict()
    for k, v in src.unet.state_dict().items():
        assert torch.equal(loaded[k], v), k
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        # conditioning encoder == diffusers' vae.encode (mode), first stage encoder too (quant_conv folded in)
        ref_latent = vae.encode(x).latent_dist.mode()
        assert (model.conditioner.vae_encoder(x) - ref_latent).abs().max() < 1e-5
        assert (model.first_stage_model.encode(x) - ref_latent).abs().max() < 1e-4
        z = torch.randn(4, 4, 8, 8)
        ref_frames = vae.decode(z, num_frames=4).sample
        assert (model.first_stage_model.decode(z, 4) - ref_frames).abs().max() < 1e-4
        ref_emb = clip(clip_preprocess(x, c.image_size)).image_embeds
        assert (model.conditioner.clip(x)[:, 0] - ref_emb).abs().max() < 1e-4
    # the parts diffusers does not ship are reported absent, not silently ignored
    assert any(k.startswith("conditioner.embedders.3.encoder.decoder.") for k in model.load_report.missing_optional)


def test_diffusers_folder_errors(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(CheckpointError, match=r"not a diffusers SVD folder \(unet/config.json missing\)"):
        svd_core.load(tmp_path)


# ------------------------------------------------------------------------------------------------ micro-conditioning


def test_micro_vector_holds_the_reference_values():
    """One owner of micro-conditioning (`Conditioner.micro_vector`). Reference
    `scripts/sampling/simple_video_sample.py`: SVD embeds fps_id (default 6) for a video written at fps_id + 1 = 7 fps,
    i.e. fps_id = fps - 1; SV3D_p embeds polar = 90 - elevation and the azimuth relative to the last view, radians."""
    import math

    from svd_core.conditioner import micro_inputs, micro_values

    svd = tiny_model()
    vec = svd.conditioner.micro_vector(1, 2, fps=7, motion_bucket_id=127, cond_aug=0.02)
    literal = svd.conditioner.vector({"fps_id": torch.full((2,), 6.0), "motion_bucket_id": torch.full((2,), 127.0),
                                      "cond_aug": torch.full((2,), 0.02)})
    assert torch.equal(vec, literal)
    assert not torch.equal(svd.conditioner.micro_vector(1, 2, fps=6, motion_bucket_id=127, cond_aug=0.02), literal)
    keys = tuple(k for k, _ in TINY_SV3D_P.vector_inputs)
    got = micro_inputs(keys, 1, 3, dict(cond_aug=1e-5, elevation=[10.0, 20.0, -5.0], azimuth=[90.0, 300.0, 120.0]))
    torch.testing.assert_close(got["polars_rad"], torch.tensor([math.radians(80), math.radians(70),
                                                                math.radians(95)]))
    torch.testing.assert_close(got["azimuths_rad"], torch.tensor([math.radians(330), math.radians(180), 0.0]))
    assert micro_values(svd.spec) == ("fps", "motion_bucket_id", "cond_aug")
    assert micro_values(TINY_SV3D_P) == ("cond_aug", "elevation", "azimuth")
    with pytest.raises(ValueError, match=r"no motion_bucket_id given.*'motion_bucket_id'"):
        svd.conditioner.micro_vector(1, 2, fps=7, cond_aug=0.02)
    with pytest.raises(ValueError, match=r"unknown micro-conditioning value\(s\) \['motion'\]"):
        svd.conditioner.micro_vector(1, 2, fps=7, motion=127, cond_aug=0.02)


@pytest.mark.filterwarnings("ignore:generating at")
def test_every_path_embeds_the_same_micro_vector():
    """img2vid, SV3D_p orbits, SVD-MV, interpolation, text-to-video and the trainer's batches build their vector
    with `Conditioner.micro_vector` from the same user-facing values (non-default ones, so a path that falls back
    to a default or converts fps again fails); training batches carry fps, never fps_id."""
    from svd_core import interpolation, multiview, pipeline, text2video
    from svd_core.testing import TINY_SVD_MV
    from svd_core.training import tasks
    from svd_core.training.config import TrainConfig
    from svd_core.training.objective import sample_cond_aug

    fps, motion, aug, n = 9.5, 90.0, 0.04, 5
    elev, azim = [0.0, 10.0, 20.0, 30.0, -10.0], [72.0, 144.0, 216.0, 288.0, 0.0]
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    size = dict(width=64, height=64)

    def same(model, got, **values):
        assert torch.equal(got, model.conditioner.micro_vector(got.shape[0] // n, n, **values))

    svd = tiny_model()
    same(svd, pipeline.image_conditioning(svd, image, num_frames=n, fps=fps, motion_bucket_id=motion, cond_aug=aug,
                                          **size).cond.vector, fps=fps, motion_bucket_id=motion, cond_aug=aug)
    sv3d = tiny_model(TINY_SV3D_P)
    same(sv3d, pipeline.orbit_conditioning(sv3d, image, elevations=elev, azimuths=azim, cond_aug=aug,
                                           **size).cond.vector, cond_aug=aug, elevation=elev, azimuth=azim)
    mv = tiny_model(TINY_SVD_MV)
    same(mv, multiview.svd_mv_conditioning(mv, image, elevations=elev, fps=fps, motion_bucket_id=motion, cond_aug=aug,
                                           **size).cond.vector, fps=fps, motion_bucket_id=motion, cond_aug=aug,
         elevation=elev)
    interp = tiny_model("tiny_interp")
    same(interp, interpolation.interpolation_conditioning(interp, image, image, fps=fps, motion_bucket_id=motion,
                                                          cond_aug=aug, **size).cond.vector,
         fps=fps, motion_bucket_id=motion, cond_aug=aug)
    t2v = tiny_model("tiny_t2v")
    same(t2v, text2video.text_conditioning(t2v, "x", num_frames=n, fps=fps, motion_score=motion, **size).cond.vector,
         fps=fps, motion_bucket_id=motion)
    # the trainer's batches (fps per clip, its motion bucket, a drawn cond_aug): the same function, the same values
    cfg = TrainConfig()
    for model, build, extra in ((svd, tasks.img2vid_cond, {}), (mv, tasks.img2vid_cond, {"elevation": 20.0}),
                                (interp, tasks.interpolation_cond, {}), (t2v, tasks.text2video_cond, {})):
        batch = {"fps": torch.tensor([fps]), "motion_bucket_id": torch.tensor([motion]),
                 "clip": torch.zeros(1, 2, model.spec.clip.embed_dim),
                 "images": torch.zeros(1, 2, 3, 64, 64, dtype=torch.uint8), "latents": torch.zeros(1, n, 4, 8, 8),
                 "caption": ["x"], **{k: torch.tensor([v]) for k, v in extra.items()}}
        drawn = sample_cond_aug(1, torch.Generator().manual_seed(3), cfg.cond_aug_mean, cfg.cond_aug_std)
        got = build(model, batch, n, [torch.Generator().manual_seed(3)], cfg).vector
        values = dict(fps=fps, motion_bucket_id=motion, cond_aug=drawn, elevation=extra.get("elevation"))
        assert torch.equal(got, model.conditioner.micro_vector(1, n, **values)), model.spec.name
        assert not torch.equal(got, model.conditioner.micro_vector(1, n, **{**values, "fps": fps - 1}))


def test_unet_video_chunk_gives_the_same_output():
    """`set_video_chunk(1)`: the guided batch's videos one after the other (control residuals sliced with them)
    give the whole batch's output; in grad mode (training) the batch runs whole."""
    model = tiny_model(TINY, seed=0)
    u, frames = TINY.unet, TINY.num_frames
    g = torch.Generator().manual_seed(5)
    b = 3 * frames
    x = torch.randn(b, u.in_channels, 8, 8, generator=g)
    args = dict(timesteps=torch.rand(b, generator=g), context=torch.randn(b, 1, u.context_dim, generator=g),
                y=torch.randn(b, u.adm_in_channels, generator=g), num_video_frames=frames,
                image_only_indicator=(torch.rand(3, frames, generator=g) > 0.7).float())
    shapes = []
    hook = model.unet.middle_block.register_forward_hook(lambda m, i, o: shapes.append(o.shape))
    with torch.inference_mode():
        whole = model.unet(x, **args)
    hook.remove()
    control = {"middle": [torch.randn(shapes[0], generator=g)], "output": [None, torch.randn(shapes[0], generator=g)]}
    with torch.inference_mode():
        whole_ctrl = model.unet(x, **args, control=control)
        for videos in (1, 2):
            model.unet.set_video_chunk(videos)
            torch.testing.assert_close(model.unet(x, **args), whole, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(model.unet(x, **args, control=control), whole_ctrl, rtol=1e-5, atol=1e-5)
    assert (whole_ctrl - whole).abs().max() > 1e-2
    calls = []
    model.unet._forward_by_videos = lambda *a: calls.append(1)
    model.unet(x[:frames * 2], **{k: v[:frames * 2] if k in ("timesteps", "context", "y") else v
                                  for k, v in args.items() if k != "image_only_indicator"})
    assert not calls  # grad mode: whole batch
    with pytest.raises(ValueError, match="video chunk must be None or an int >= 0"):
        model.unet.set_video_chunk(-1)
