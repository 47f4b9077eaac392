"""Training and generation build the same conditioning (issue 14 items 4-6): the interpolation model as the paper's
App. D.5 writes it (latent-space noise augmentation, lr 1e-4, initialised from the base video model, one frame-rate
convention), text-to-video motion in motion-bucket units, and the curation's captions sampled per example
(App. C / E.2.2)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from svd_core import interpolation as interp
from svd_core import testing
from svd_core.denoiser import VideoCond
from svd_core.training import tasks
from svd_core.training.config import TrainConfig
from svd_core.training.data import (CachedDataset, build_cache, collate, load_records, make_windows, motion_bucket,
                                    sample_caption)
from svd_core.training.objective import sample_cond_aug
from svd_core.training.trainer import item_generator
from svd_core.variants import SVD_INTERP
from tests.test_training_support import bikes_manifest

MASK = "conditioner.embedders.3.mask_embedding"
CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return bikes_manifest(tmp_path_factory.mktemp("bikes") / "manifest.parquet")


@pytest.fixture(scope="module")
def interp_model():
    return testing.tiny_model("tiny_interp", seed=3)


@pytest.fixture(scope="module")
def t2v():
    return testing.tiny_model("tiny_t2v", seed=6)


def _dataset(model, manifest, cfg, folder, max_windows: int = 2):
    windows = make_windows(load_records(manifest), cfg.num_frames, cfg.frame_stride, cfg.target_fps)[:max_windows]
    return windows, CachedDataset(build_cache(model, windows, folder, cfg.height, cfg.width), cfg.motion_scale)


# ------------------------------------------------------------------------------------------------ item 4


def test_interpolation_preset_has_the_papers_lr_and_the_generation_frame_rate():
    """Paper App. D.5: AdamW, learning rate 1e-4, P_mean 1, P_std 1.2, 5 frames (three new between two given). The
    frame-rate convention: windows are sampled at the rate generation embeds by default, 4x a 7 fps video."""
    cfg = TrainConfig.from_preset("interpolation")
    assert (cfg.lr, cfg.p_mean, cfg.p_std, cfg.num_frames) == (1e-4, 1.0, 1.2, 5)
    assert cfg.target_fps == SVD_INTERP.fps == interp.sequence_fps(7) == 28.0
    # a 56 fps clip is sampled every 2nd frame: the given frames are 4/28 s = 1/7 s apart, as two consecutive
    # frames of a 7 fps input at generation time
    assert round(56 / cfg.target_fps) == 2 and (SVD_INTERP.num_frames - 1) * 2 / 56 == pytest.approx(1 / 7)


def test_training_and_generation_embed_the_same_interpolation_vector(manifest, tmp_path, interp_model):
    """Paper App. D.5 (5-frame windows, fps micro-conditioning as SVD): the vector the trainer builds for a window
    equals the one `interpolation_conditioning` builds for the matching input (the window's end frames as a video
    at 1/4 of the window's frame rate, the clip's motion bucket, the same cond_aug)."""
    model = interp_model
    cfg = TrainConfig.from_preset("interpolation", height=64, width=64, cond_dropout=0.0)
    windows, data = _dataset(model, manifest, cfg, tmp_path)
    for i, w in enumerate(windows):
        assert w.stride == 1 and w.fps == 25.0  # 25 fps clips: consecutive frames, nearest to 28 fps
        gens = [item_generator(0, 7, 0, i)]
        train = tasks.interpolation_cond(model, collate([data[i]]), 5, gens, cfg)
        cond_aug = float(sample_cond_aug(1, item_generator(0, 7, 0, i), cfg.cond_aug_mean, cfg.cond_aug_std))
        ends = data[i]["images"].float() / 255.0  # the two given frames, 2 3 H W in [0, 1]
        gen = interp.interpolation_conditioning(
            model, ends[:1], ends[1:], width=64, height=64, fps=interp.sequence_fps(w.fps / 4),
            motion_bucket_id=motion_bucket(w.record.motion), cond_aug=cond_aug)
        assert torch.equal(train.vector, gen.cond.vector)
        assert train.concat.shape == gen.cond.concat.shape == (5, 5, 8, 8)
    with pytest.raises(AssertionError):  # the check can fail: another fps gives another vector
        torch.testing.assert_close(model.conditioner.micro_vector(1, 5, fps=25.0, motion_bucket_id=100, cond_aug=0.05),
                                   model.conditioner.micro_vector(1, 5, fps=7.0, motion_bucket_id=100, cond_aug=0.05))


def test_conditioning_frames_are_noise_augmented_in_latent_space(interp_model):
    """Paper App. D.5: "noise augmentation for the two conditioning frames, which we apply in the latent space":
    concat end latents = VAE mode of the clean frame + (cond_aug / scale_factor) * eps, eps drawn per pair."""
    model = interp_model
    frames = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    cond = interp.interpolation_conditioning(model, frames[:1], frames[1:], width=64, height=64, cond_aug=0.3,
                                             seeds=[11]).cond
    g = torch.Generator().manual_seed(11)
    eps_first, eps_last = torch.randn(4, 8, 8, generator=g), torch.randn(4, 8, 8, generator=g)
    with torch.no_grad():
        clean = model.conditioner.vae_encoder(frames * 2 - 1)  # 2 4 8 8 unscaled mode
    s = model.spec.scale_factor
    torch.testing.assert_close(cond.concat[0, :4], clean[0] + 0.3 / s * eps_first, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cond.concat[4, :4], clean[1] + 0.3 / s * eps_last, rtol=1e-5, atol=1e-5)
    # training does the same in latent space, with the example's generator: cond_aug first, then the noise
    item = {"images": (frames * 255).round().to(torch.uint8)[None], "clip": torch.zeros(1, 2, 64),
            "fps": torch.tensor([28.0]), "motion_bucket_id": torch.tensor([127.0])}
    cfg = TrainConfig.from_preset("interpolation", height=64, width=64)
    train = tasks.interpolation_cond(model, item, 5, [torch.Generator().manual_seed(12)], cfg)
    g = torch.Generator().manual_seed(12)
    aug = float(sample_cond_aug(1, g, cfg.cond_aug_mean, cfg.cond_aug_std))
    eps_first, eps_last = torch.randn(4, 8, 8, generator=g), torch.randn(4, 8, 8, generator=g)
    with torch.no_grad():
        clean = model.conditioner.vae_encoder(item["images"][0].float() / 127.5 - 1)
    torch.testing.assert_close(train.concat[0, :4], clean[0] + aug / s * eps_first, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(train.concat[4, :4], clean[1] + aug / s * eps_last, rtol=1e-5, atol=1e-5)


def test_interpolation_model_starts_as_the_base_text_to_video_model(t2v):
    """Paper App. D.5: the interpolation model is finetuned from the base text-to-video model. New conv_in input
    channels (latent sequence 4 + mask 1) start at zero, so on the base's channels the new model computes exactly the
    base's D(x; s); the conditioning VAE encoder comes from the base's first stage, the CLIP image tower from an
    image model when given."""
    svd = testing.tiny_model("tiny", seed=7)
    m = interp.init_from(t2v, image_tower=svd)
    assert m.spec.cond_mode == "interpolation" and m.spec.unet.in_channels == 9
    sd, src = m.state_dict(), t2v.state_dict()
    assert torch.equal(sd[CONV_IN][:, :4], src[CONV_IN]) and not sd[CONV_IN][:, 4:].any()
    assert not sd[MASK].any() and MASK in m.transfer_report["new"]
    used = (".visual.", ".encoder.encoder.", ".encoder.quant_conv.")  # image tower, conditioning encoder
    assert not [k for k in m.transfer_report["new"] if any(u in k for u in used)]
    gen = torch.Generator().manual_seed(8)
    x, seq = torch.randn(5, 4, 8, 16, generator=gen), torch.randn(5, 5, 8, 16, generator=gen)
    ctx, vec = torch.randn(5, 3, 64, generator=gen), torch.randn(5, 768, generator=gen)
    sigma = torch.full((5,), 2.0)
    with torch.no_grad():
        a = m.denoise(x, sigma, VideoCond(ctx, seq, vec), 5)
        b = t2v.denoise(x, sigma, VideoCond(ctx, seq[:, :0], vec[:, :512]), 5)  # fps, motion columns are the base's
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        img = torch.rand(2, 3, 64, 128, generator=gen) * 2 - 1
        torch.testing.assert_close(m.conditioner.vae_encoder(img), t2v.first_stage_model.encode_dist(img)[0])
        torch.testing.assert_close(m.conditioner.clip(img), svd.conditioner.clip(img))
    # the trainer's entry: a base model becomes the interpolation model, an interpolation model stays itself
    with pytest.raises(ValueError, match="no CLIP image tower.*image_tower="):  # never a random image tower
        tasks.model_for_task(t2v, "interpolation")
    assert tasks.model_for_task(m, "interpolation") is m and tasks.model_for_task(svd, "img2vid") is svd


def test_cli_interpolation_preset_starts_from_a_base_checkpoint(manifest, tmp_path, capsys):
    """Paper App. D.5: the interpolation model is initialised from the base video model; `python -m svd_core train`
    with the interpolation preset converts a loaded base checkpoint into its 9-channel interpolation variant."""
    import json

    import svd_core
    from svd_core.__main__ import main
    from tests.test_training_support import micro_spec

    testing.make_tiny_checkpoint(tmp_path / "micro.safetensors", micro_spec())
    cfg = {"model": "micro.safetensors", "data": str(manifest), "out_dir": "run",
           "train": {"preset": "interpolation", "height": 64, "width": 64, "steps": 1, "batch_size": 1,
                     "validate_every": 0, "val_fraction": 0.0, "name": "interp"}}
    (tmp_path / "run.json").write_text(json.dumps(cfg))
    assert main(["train", str(tmp_path / "run.json"), "--max-windows-per-clip", "1"]) == 0
    assert "interpolation model micro_interp initialised from the base model micro" in capsys.readouterr().out
    out = svd_core.load(tmp_path / "run" / "interp_step1.safetensors")
    assert out.spec.cond_mode == "interpolation" and out.spec.unet.in_channels == 9 and out.spec.num_frames == 5
    assert out.conditioner.vae_encoder.mask_embedding.shape == (4, 8, 8)  # c x h x w at the base's 64 x 64


# ------------------------------------------------------------------------------------------------ item 5


def test_text2video_training_and_generation_embed_the_same_motion_bucket(manifest, tmp_path, t2v):
    """Paper App. C (motion score) / SVD's motion_bucket_id (reference default 127): text-to-video training embeds
    the clip's motion bucket (`data.motion_bucket` of its Farneback score), the unit `text_conditioning` takes."""
    from svd_core import text2video

    model = t2v
    cfg = TrainConfig.from_preset("text2video_finetune", num_frames=4, height=64, width=128, cond_dropout=0.0)
    windows, data = _dataset(model, manifest, cfg, tmp_path)
    for i, w in enumerate(windows):
        bucket = motion_bucket(w.record.motion, cfg.motion_scale)
        assert bucket != pytest.approx(w.record.motion)  # the raw score would embed another value
        train = tasks.text2video_cond(model, collate([data[i]]), 4, [item_generator(0, 1, 0, i)], cfg)
        gen = text2video.text_conditioning(model, "", num_frames=4, width=128, height=64, fps=w.fps,
                                           motion_score=bucket)
        torch.testing.assert_close(train.vector, gen.cond.vector, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ item 6


def test_captions_are_sampled_with_the_papers_frequencies_and_fall_back():
    """Paper App. C / E.2.2: per example a caption is drawn CoCa 0.5, V-BLIP (video captioner) 0.25, LLM 0.25;
    missing captions drop out and the rest are renormalised; seeded per example, so reproducible."""
    full = {"caption_coca": "coca", "caption_video": "video", "caption_llm": "llm"}
    n = 6000
    draws = Counter(sample_caption(full, "", item_generator(0, step, 0, 0)) for step in range(n))
    for name, p in (("coca", 0.5), ("video", 0.25), ("llm", 0.25)):
        assert abs(draws[name] / n - p) < 0.02, draws  # 3.5 standard errors at n = 6000
    no_video = Counter(sample_caption({"caption_coca": "coca", "caption_llm": "llm", "caption_video": ""}, "",
                                      item_generator(1, step, 0, 0)) for step in range(n))
    assert abs(no_video["coca"] / n - 2 / 3) < 0.02 and abs(no_video["llm"] / n - 1 / 3) < 0.02
    assert sample_caption({"caption_video": "video"}, "plain", torch.Generator()) == "video"
    assert sample_caption({}, "plain", torch.Generator()) == "plain"
    assert sample_caption({"caption_coca": ""}, "", torch.Generator()) == ""
    picks = [sample_caption(full, "", item_generator(5, s, 0, 0)) for s in range(20)]
    assert picks == [sample_caption(full, "", item_generator(5, s, 0, 0)) for s in range(20)]


def video_caption(path) -> str:  # the curation's video-captioner hook (V-BLIP in the paper)
    return f"video of {Path(path).stem}"


def llm_merge(captions) -> str:  # the curation's LLM-summary hook
    return " / ".join(sorted(captions.values()))


def test_curation_captions_reach_training_under_their_column_names(manifest, tmp_path, t2v):
    """Paper App. C: CoCa, video-captioner and LLM captions; the caption stage writes caption_coca, caption_video,
    caption_llm, and training reads every one of them from the manifest (none silently dropped)."""
    from svd_core.curation.config import CurationConfig
    from svd_core.curation.manifest import read_manifest, write_manifest
    from svd_core.curation.stages import CaptionStage
    from tests.test_curation_support import TINY_COCA, save_open_clip

    coca_cfg, coca_w = save_open_clip(TINY_COCA, "svd-tiny-coca", tmp_path / "models")
    cfg = CurationConfig(out_dir=str(tmp_path / "curate"), coca_model=coca_cfg, coca_weights=coca_w,
                         caption_max_len=6, video_caption_hook=f"{__name__}:video_caption",
                         llm_merge_hook=f"{__name__}:llm_merge")
    stage = CaptionStage(cfg)
    rows = [stage(r) for r in read_manifest(manifest)[:2]]
    path = write_manifest(rows, tmp_path / "captioned.parquet")
    records = load_records(path)
    for row, rec in zip(rows, records):
        caps = dict(rec.captions)
        assert set(caps) == {"caption_coca", "caption_video", "caption_llm"}
        assert caps["caption_video"] == video_caption(row["path"]) and caps["caption_coca"] == row["caption_coca"]
        assert caps["caption_llm"] == llm_merge({"caption_coca": caps["caption_coca"],
                                                 "caption_video": caps["caption_video"]})
    # through the latent cache into a training batch: each example draws one of its own captions; a cache built
    # before the captions existed is reused and still gives them (captions come from the manifest, not the cache)
    from svd_core.training import api

    model = t2v
    tcfg = TrainConfig.from_preset("text2video_finetune", num_frames=4, height=64, width=128, val_fraction=0.0)
    before = api.prepare_data(model, tcfg, manifest, tmp_path / "cache", max_per_clip=1).dataset
    assert before[0]["captions"] == {}
    files = {p: p.stat().st_mtime_ns for p in before.paths}
    data = api.prepare_data(model, tcfg, path, tmp_path / "cache", max_per_clip=1)
    assert data.dataset.paths and all(files.get(p) == p.stat().st_mtime_ns for p in data.dataset.paths)  # reused
    item = data.dataset[0]
    assert item["captions"] == dict(records[0].captions) and len(item["captions"]) == 3
    seen = {sample_caption(item["captions"], item["caption"], item_generator(0, s, 0, 0)) for s in range(40)}
    assert seen == set(item["captions"].values())
