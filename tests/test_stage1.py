"""Stage I (paper Sec. 4.1, App. D.2): the video model built from SD 2.x, checked against diffusers'
UNet2DConditionModel (an independent implementation of the SD 2.1 UNet, reference configs v2-inference(-v).yaml)."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file as load_tensors

from svd_core import stage1, testing
from svd_core.convert import unet_image_diffusers_to_sgm, unet_image_sgm_to_diffusers, unet_layout
from svd_core.loading import CheckpointError, load, save_tensors
from svd_core.training.config import TrainConfig
from svd_core.variants import SVD_IMAGE_DECODER

diffusers = pytest.importorskip("diffusers")

# diffusers' SD 2.1 UNet config (stabilityai/stable-diffusion-2-1 unet/config.json; its `attention_head_dim` holds
# the head counts 320/64 ... 1280/64, as in v2-inference-v.yaml's num_head_channels 64)
SD21_CONFIG = dict(sample_size=96, in_channels=4, out_channels=4, layers_per_block=2,
                   down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                   up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                   block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20),
                   cross_attention_dim=1024, use_linear_projection=True, norm_num_groups=32)
# the same structure at the tiny test widths (model_channels 32, num_head_channels 32, context 64)
TINY_SPEC = testing.TINY_STAGE1
TINY_CONFIG = dict(SD21_CONFIG, sample_size=16, block_out_channels=(32, 64, 128, 128), attention_head_dim=(1, 2, 4, 4),
                   cross_attention_dim=64)
LAYOUT = unet_layout(TINY_SPEC.unet)


def _peer(config: dict, seed: int = 0):
    unet = diffusers.UNet2DConditionModel(**config)
    return testing.randomize_(unet, seed).eval()


def _sd_file(tmp_path, peer, name="sd21.safetensors", extra=None, drop=(), change=None):
    """An SD 2.x checkpoint in the original layout (`model.diffusion_model.` keys) from the diffusers peer."""
    tensors = {"model.diffusion_model." + unet_image_diffusers_to_sgm(k, **LAYOUT): v.contiguous()
               for k, v in peer.state_dict().items()}
    for k in drop:
        tensors.pop("model.diffusion_model." + k)
    for k, v in (change or {}).items():
        tensors["model.diffusion_model." + k] = v
    tensors.update(extra or {})
    return save_tensors(tensors, tmp_path / name)


@pytest.fixture(scope="module")
def peer():
    return _peer(TINY_CONFIG)


def test_manifest_matches_diffusers_sd21_unet_key_for_key():
    """Our SD 2.x manifest (VideoUNet minus video parts) = diffusers' SD 2.1 UNet at full size, keys and shapes."""
    with torch.device("meta"):
        sd21 = diffusers.UNet2DConditionModel(**SD21_CONFIG)
    peer = {k: tuple(v.shape) for k, v in sd21.state_dict().items()}
    manifest = stage1.image_unet_manifest()
    layout = unet_layout(stage1.SPEC.unet)
    mapped = {unet_image_sgm_to_diffusers(k, **layout): s for k, s in manifest.items()}
    assert len(mapped) == len(manifest) == 686
    assert mapped == peer
    assert {unet_image_diffusers_to_sgm(k, **layout) for k in peer} == set(manifest)
    assert sum(math.prod(s) for s in manifest.values()) == 865_910_724  # SD 2.x UNet parameter count
    # the manifest is what the video UNet adds its layers to: no temporal / label_emb keys
    assert not [k for k in manifest if "time_stack" in k or "time_mixer" in k or k.startswith("label_emb")]
    # SD 2.x's first stage (v2-inference.yaml: ch 128, ch_mult 1,2,4,4, no attention levels) is the reference's
    # AutoencoderKL, the layout of the released svd_image_decoder (checked key by key in the variants tests)
    assert stage1.SPEC.vae == SVD_IMAGE_DECODER.vae
    with pytest.raises(KeyError, match="video-UNet key"):
        unet_image_sgm_to_diffusers("input_blocks.1.0.time_stack.in_layers.0.weight")


def test_inserted_temporal_layers_have_the_papers_656m_parameters():
    """App. D.2: "inserting a total of 656M new parameters into the UNet" (SD 2.1's 866M spatial ones kept)."""
    from svd_core.convert import is_video_only
    from svd_core.unet import VideoUNet

    with torch.device("meta"):
        unet = VideoUNet(stage1.SPEC.unet)
    temporal = sum(p.numel() for n, p in unet.named_parameters() if is_video_only(n) and not n.startswith("label_emb"))
    spatial = sum(p.numel() for n, p in unet.named_parameters() if not is_video_only(n))
    assert round(temporal / 1e6) == 656 and spatial == 865_910_724


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_video_unet_reproduces_sd21_unet_per_frame(tmp_path, peer, prediction):
    """Per-frame output of the Stage I video UNet = diffusers' UNet2DConditionModel on the same weights (fp32)."""
    model, report = stage1.from_image_model(_sd_file(tmp_path, peer), TINY_SPEC, prediction=prediction)
    assert model.spec.source_prediction == prediction and report.prediction == prediction
    assert len(report.copied) == len(stage1.image_unet_manifest(TINY_SPEC)) and report.fresh and report.zeroed
    b, t = 2, 3
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(b * t, 4, 16, 16, generator=gen)  # (b t) c h w: a different latent per frame
    steps = torch.rand(b * t, generator=gen) * 999  # SD's discrete-time input, one per frame
    context = torch.randn(b * t, 5, 64, generator=gen)  # (b t) n d text tokens
    y = torch.randn(b * t, 512, generator=gen)  # micro-conditioning: contributes nothing at init
    with torch.no_grad():
        ref = peer(x, steps, encoder_hidden_states=context).sample
        out = model.unet(x, steps, context=context, y=y, num_video_frames=t)
        images_only = model.unet(x, steps, context=context, y=y, num_video_frames=t,
                                 image_only_indicator=torch.ones(b, t))
    assert ref.abs().mean() > 0.1
    assert (out - ref).abs().max() < 1e-4
    assert torch.equal(out, images_only)  # the temporal path is the identity exactly, not approximately
    # the check can fail: a non-zero temporal output layer changes the video
    with torch.no_grad():
        model.unet.input_blocks[1][0].time_stack.out_layers[3].bias.fill_(0.5)
        moved = model.unet(x, steps, context=context, y=y, num_video_frames=t)
    assert (moved - ref).abs().max() > 1e-2


def test_saved_stage1_model_reloads_with_its_prediction_and_loads_sd_vae_and_text(tmp_path, peer):
    other = testing.tiny_model(TINY_SPEC, seed=3)  # a VAE and text tower in SD's layout (TINY widths)
    extra = {k: v for k, v in other.state_dict().items() if k.startswith("first_stage_model.")}
    extra.update({k.replace("conditioner.embedders.0.model.", "cond_stage_model.model."): v
                  for k, v in other.state_dict().items() if k.startswith("conditioner.embedders.0.model.")})
    extra["alphas_cumprod"] = torch.linspace(1, 0, 1000)  # a DDPM buffer: ignored and reported
    model, report = stage1.from_image_model(_sd_file(tmp_path, peer, extra=extra), TINY_SPEC, prediction="v")
    assert report.vae.startswith("loaded") and report.text.startswith("OpenCLIP text tower loaded")
    assert report.ignored == {"alphas_cumprod": 1}
    loaded = model.state_dict()
    for k, v in other.state_dict().items():
        if k.startswith(("first_stage_model.", "conditioner.embedders.0.model.")):
            assert torch.equal(loaded[k], v), k
    out = tmp_path / "init.safetensors"
    stage1.save_stage1(model, report, out)
    with pytest.raises(FileExistsError, match="--overwrite"):
        stage1.save_stage1(model, report, out)
    back = load(out)
    assert back.spec.source_prediction == "v" and back.spec.cond_mode == "text"
    reloaded = back.state_dict()
    assert reloaded.keys() == loaded.keys() and all(torch.equal(reloaded[k], v) for k, v in loaded.items())


def test_prediction_auto_uses_comfyui_heuristic(tmp_path, peer):
    key = stage1.V_PROBE_KEY
    wide = torch.linspace(-1, 1, 32)
    narrow = torch.full((32,), 0.01)
    m_v, r_v = stage1.from_image_model(_sd_file(tmp_path, peer, "v.safetensors", change={key: wide}), TINY_SPEC)
    m_e, r_e = stage1.from_image_model(_sd_file(tmp_path, peer, "e.safetensors", change={key: narrow}), TINY_SPEC)
    assert (r_v.prediction, r_e.prediction) == ("v", "eps") and "detected" in r_v.prediction_from
    with pytest.raises(ValueError, match="prediction='x'"):
        stage1.from_image_model(_sd_file(tmp_path, peer), TINY_SPEC, prediction="x")


def test_loader_refuses_non_sd2_files_naming_the_key(tmp_path, peer):
    to_k = "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    cases = [
        (dict(drop=["out.2.weight"]), "model.diffusion_model.out.2.weight is missing"),
        (dict(change={to_k: torch.zeros(32, 768)}), "Stable Diffusion 1.x"),
        (dict(change={"input_blocks.0.0.weight": torch.zeros(32, 9, 3, 3)}), "inpainting"),
        (dict(change={"label_emb.0.0.weight": torch.zeros(128, 8)}), "label_emb.0.0.weight is not an SD 2.x"),
    ]
    for i, (kwargs, message) in enumerate(cases):
        with pytest.raises(CheckpointError, match=message):
            stage1.from_image_model(_sd_file(tmp_path, peer, f"bad{i}.safetensors", **kwargs), TINY_SPEC,
                                    prediction="eps")
    vae_only = save_tensors({"first_stage_model.x": torch.zeros(1)}, tmp_path / "vae.safetensors")
    with pytest.raises(CheckpointError, match="no image UNet"):
        stage1.from_image_model(vae_only, TINY_SPEC)
    svd = testing.make_tiny_checkpoint(tmp_path / "svd.safetensors")
    with pytest.raises(CheckpointError, match="time_stack|time_mixer|label_emb"):
        stage1.from_image_model(svd, TINY_SPEC)
    (tmp_path / "sd.ckpt").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match=r"\.safetensors files only"):
        stage1.from_image_model(tmp_path / "sd.ckpt", TINY_SPEC)


def test_cli_writes_once_and_refuses_to_overwrite(tmp_path):
    from svd_core.__main__ import main

    src, out = testing.make_tiny_sd2_checkpoint(tmp_path / "sd2.safetensors"), tmp_path / "video_init.safetensors"
    assert main(["stage1", str(src), "--out", str(out), "--prediction", "eps"]) == 0
    first = load(out)  # spec_for picked the tiny Stage I spec from the UNet width
    assert first.spec.source_prediction == "eps" and first.spec.name == "tiny_stage1"
    sd2 = load_tensors(src)
    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    assert torch.equal(first.state_dict()[key], sd2[key])
    text = "conditioner.embedders.0.model.token_embedding.weight"
    assert torch.equal(first.state_dict()[text], sd2["cond_stage_model.model.token_embedding.weight"])
    before = out.read_bytes()
    with pytest.raises(SystemExit, match="exists.*--overwrite"):
        main(["stage1", str(src), "--out", str(out)])
    assert out.read_bytes() == before  # untouched
    assert main(["stage1", str(src), "--out", str(out), "--prediction", "v", "--overwrite"]) == 0
    assert load(out).spec.source_prediction == "v"
    with pytest.raises(SystemExit, match="no image UNet"):
        main(["stage1", str(save_tensors({"a": torch.zeros(1)}, tmp_path / "x.safetensors")), "--out",
              str(tmp_path / "y.safetensors")])
    with pytest.raises(SystemExit, match="width 48"):
        main(["stage1", str(save_tensors({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(48, 4, 3, 3)},
                                         tmp_path / "w.safetensors")), "--out", str(tmp_path / "y.safetensors")])
    assert not (tmp_path / "y.safetensors").exists()


def test_concat_channels_of_a_wider_spec_start_at_zero(tmp_path, peer):
    spec = replace(TINY_SPEC, unet=replace(TINY_SPEC.unet, in_channels=8))
    model, report = stage1.from_image_model(_sd_file(tmp_path, peer), spec, prediction="eps")
    assert report.widened == ["input_blocks.0.0.weight"]
    x, steps, ctx = torch.randn(2, 4, 16, 16), torch.tensor([10.0, 500.0]), torch.randn(2, 5, 64)
    with torch.no_grad():
        ref = peer(x, steps, encoder_hidden_states=ctx).sample
        out = model.unet(torch.cat([x, torch.randn(2, 4, 16, 16)], 1), steps, context=ctx, y=torch.zeros(2, 512),
                         num_video_frames=2)
    assert (out - ref).abs().max() < 1e-4


def test_stage_presets_carry_the_papers_values():
    """Paper App. D.2-D.6: iteration counts, batch sizes, resolutions and noise per stage, in the paper's order."""
    from svd_core.training.config import PRESETS, TrainConfig

    def row(name):
        p = PRESETS[name]
        return p.mode, p.steps, p.paper_batch_size, p.num_frames, p.height, p.width, p.p_mean, p.p_std, p.lr

    # D.2: 31k image iterations = 1k time-embedding-only at 512^2 + 30k all layers at 256x384 (batch not stated)
    assert row("time_embed_warmup") == ("time_embed", 1000, 0, 1, 512, 512, -1.2, 1.0, 1e-4)
    assert row("image_finetune") == ("spatial", 30000, 0, 1, 256, 384, -1.2, 1.0, 1e-4)
    # D.2: 150k iterations at batch 1536, then 100k at batch 768 and P_mean 0
    assert row("video_pretrain") == ("full", 150000, 1536, 14, 256, 384, -1.2, 1.0, 1e-4)
    assert row("video_pretrain_hires") == ("full", 100000, 768, 14, 320, 576, 0.0, 1.0, 1e-4)
    # D.3, D.4 (50k at batch 768, lr 3e-5), D.4.2 (rank 16, 5k), D.6 (12k at batch 16, lr 1e-5)
    assert row("text2video_finetune") == ("full", 50000, 768, 14, 576, 1024, 0.5, 1.4, 3e-5)
    assert row("img2vid") == ("full", 50000, 768, 14, 320, 576, 0.7, 1.6, 3e-5)
    assert row("img2vid_hires") == ("full", 50000, 768, 14, 576, 1024, 1.0, 1.6, 3e-5)
    assert row("camera_lora")[:2] == ("lora", 5000) and PRESETS["camera_lora"].lora_rank == 16
    assert row("multiview") == ("full", 12000, 16, 21, 576, 576, 0.7, 1.6, 1e-5)
    assert list(PRESETS)[:4] == ["time_embed_warmup", "image_finetune", "video_pretrain", "video_pretrain_hires"]
    assert all(p.task == "text2video" for p in list(PRESETS.values())[:5])  # the base model is text-to-video
    assert all("App. D" in p.description for p in PRESETS.values())
    cfg = TrainConfig.from_preset("time_embed_warmup")
    assert (cfg.mode, cfg.steps, cfg.num_frames, cfg.task) == ("time_embed", 1000, 1, "text2video")


def test_time_embed_and_spatial_modes_select_the_stage_parameters():
    from svd_core.convert import is_video_only
    from svd_core.training import modes

    model = testing.tiny_model(TINY_SPEC)
    module, _, _ = modes.prepare(model, "time_embed")
    names = list(modes.trainable(module))
    assert names and all(n.startswith("unet.time_embed.") for n in names) and len(names) == 4
    module, _, _ = modes.prepare(model, "spatial")
    names = list(modes.trainable(module))
    assert "unet.input_blocks.1.0.in_layers.2.weight" in names
    assert not [n for n in names if is_video_only(n[len("unet."):])]
    assert len(names) == len(stage1.image_unet_manifest(TINY_SPEC))


def test_edm_v_scaling_is_sd21_v_parameterisation_on_sd_noise_levels():
    """Module docstring's EDM switch: on SD's own DDPM steps, VScalingWithEDMcNoise with the true v reproduces x0
    (and c_in x = x_t), so a 768-v model keeps its output meaning; an eps model's output read as v does not."""
    from svd_core.denoiser import edm_v_scalings

    sched = diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    abar = sched.alphas_cumprod.double()
    sigmas = stage1.sd_ddpm_sigmas()
    assert torch.allclose(sigmas, ((1 - abar) / abar).sqrt(), rtol=1e-3)  # diffusers keeps abar in float32
    assert (round(sigmas[0].item(), 4), round(sigmas[-1].item(), 2)) == (0.0292, 14.61)
    gen = torch.Generator().manual_seed(0)
    t = torch.tensor([0, 250, 500, 999])
    x0, eps = (torch.randn(4, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    a = abar[t, None]
    s = ((1 - a) / a).sqrt()
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps  # DDPM forward process
    v = sched.get_velocity(x0, eps, t).double()  # diffusers' v target: sqrt(abar) eps - sqrt(1 - abar) x0
    c_skip, c_out, c_in, _ = edm_v_scalings(s)
    x = x0 + s * eps  # EDM's x = x_t / sqrt(abar)
    assert torch.allclose(c_in * x, x_t) and torch.allclose(c_skip * x + c_out * v, x0)
    assert not torch.allclose(c_skip * x + c_out * eps, x0, atol=1e-2)


def test_stage1_model_trains_with_the_warmup_preset(tmp_path):
    """The Stage I model is a normal video model: the trainer runs the time_embed_warmup preset on it (EDM objective,
    text2video task); only the time embedding moves and the temporal layers keep their identity init."""
    from svd_core.training import api
    from svd_core.training.data import ClipRecord
    from svd_core.training.trainer import Trainer

    # a micro SD 2.x: 2 levels with attention, 1 res block (the micro training spec of tests/test_training_support)
    spec = replace(TINY_SPEC, unet=replace(TINY_SPEC.unet, channel_mult=(1, 2), num_res_blocks=1,
                                           attention_resolutions=(1, 2)), height=64, width=64)
    config = dict(TINY_CONFIG, layers_per_block=1, block_out_channels=(32, 64), attention_head_dim=(1, 2),
                  down_block_types=("CrossAttnDownBlock2D",) * 2, up_block_types=("CrossAttnUpBlock2D",) * 2)
    layout = unet_layout(spec.unet)
    peer = _peer(config, seed=5)
    sd = {"model.diffusion_model." + unet_image_diffusers_to_sgm(k, **layout): v for k, v in peer.state_dict().items()}
    model, _ = stage1.from_image_model(sd, spec, prediction="v")
    records = [ClipRecord(str(testing.make_test_video(tmp_path / f"c{i}.mp4", frames=4, seed=i)), 8.0, 2.0,
                          f"a disc moving {i}") for i in range(3)]
    cfg = TrainConfig.from_preset("time_embed_warmup", height=64, width=64, steps=2, batch_size=2, lr=1e-2,
                                  warmup_steps=0, validate_every=0, val_items=1, val_fraction=0.3)
    data = api.prepare_data(model, cfg, "", tmp_path / "cache", records=records)
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    trainer = Trainer(model, cfg, data.dataset, data.train_idx, data.val_idx, tmp_path / "run")
    trainer.run()
    after = model.unet.state_dict()
    moved = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert moved == ["time_embed.0.bias", "time_embed.0.weight", "time_embed.2.bias", "time_embed.2.weight"]
    x, ctx = torch.randn(2, 4, 8, 8), torch.randn(2, 3, 64)
    with torch.no_grad():
        args = (x, torch.tensor([0.1, -0.5]), ctx, torch.randn(2, 512), 2)
        assert torch.equal(model.unet(*args), model.unet(*args, torch.ones(1, 2)))
