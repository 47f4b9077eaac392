"""Training (issue 7): objective, presets, micro-conditioning from real clips, cache, modes, EMA, exact resume,
interrupt, outputs the loaders load, CLI, interpolation task. Fast: a micro model in the real architecture."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from svd_core.denoiser import VideoCond
from svd_core.training import api
from svd_core.training.config import PRESETS, ConfigError, TrainConfig
from svd_core.training.data import ClipRecord, DataError, motion_bucket, window_fps
from svd_core.training.objective import NoiseDistribution, drop_conditioning, edm_loss, edm_weight, sample_cond_aug
from svd_core.training.trainer import Interrupted, Trainer
from tests.test_training_support import bikes_clips, bikes_manifest, micro_spec


def small_cfg(**kw) -> TrainConfig:
    preset = kw.pop("preset", "img2vid")
    base = dict(num_frames=4, height=64, width=64, steps=4, batch_size=2, lr=1e-3, warmup_steps=2, validate_every=0,
                checkpoint_every=100, val_items=2, val_fraction=0.2)
    base.update(kw)
    return TrainConfig.from_preset(preset, **base)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return bikes_manifest(tmp_path_factory.mktemp("bikes") / "manifest.parquet")


@pytest.fixture(scope="module")
def micro_data(manifest, tmp_path_factory):
    from svd_core.testing import tiny_model

    model = tiny_model(micro_spec(), seed=0)
    cfg = small_cfg()
    data = api.prepare_data(model, cfg, manifest, tmp_path_factory.mktemp("cache"), max_per_clip=2)
    return model, data


def fresh(model):
    import copy

    return copy.deepcopy(model)


# ------------------------------------------------------------------------------------------------ objective


def test_presets_carry_the_papers_values():
    p = PRESETS
    assert (p["image_finetune"].p_mean, p["image_finetune"].p_std) == (-1.2, 1.0)
    assert p["video_pretrain"].num_frames == 14 and p["video_pretrain_hires"].p_mean == 0.0
    assert (p["text2video_finetune"].p_mean, p["text2video_finetune"].p_std) == (0.5, 1.4)
    assert (p["img2vid"].p_mean, p["img2vid"].p_std) == (0.7, 1.6)
    assert (p["img2vid_hires"].p_mean, p["img2vid_hires"].p_std, p["img2vid_hires"].height) == (1.0, 1.6, 576)
    assert (p["interpolation"].p_mean, p["interpolation"].p_std, p["interpolation"].num_frames) == (1.0, 1.2, 5)
    assert p["multiview"].lr == 1e-5
    assert (p["camera_lora"].mode, p["camera_lora"].lora_rank, p["camera_lora"].steps) == ("lora", 16, 5000)
    cfg = TrainConfig.from_preset("interpolation", steps=3)
    assert (cfg.p_mean, cfg.p_std, cfg.task, cfg.cond_dropout, cfg.ema_decay) == (1.0, 1.2, "interpolation", 0.15,
                                                                                  0.9999)
    assert (cfg.cond_aug_mean, cfg.cond_aug_std) == (-3.0, 0.5)


def test_config_errors_name_the_setting():
    with pytest.raises(ConfigError, match="unknown training setting 'p_meen'"):
        TrainConfig.from_preset("img2vid", p_meen=1.0)
    with pytest.raises(ConfigError, match="mode='partial'.*one of"):
        TrainConfig.from_preset("img2vid", mode="partial")
    with pytest.raises(ConfigError, match="width=100.*multiple of 64"):
        TrainConfig.from_preset("img2vid", width=100)
    with pytest.raises(ConfigError, match="fsdp only with mode=full"):
        TrainConfig.from_preset("camera_lora", strategy="fsdp")


def test_noise_levels_are_log_normal():
    g = torch.Generator().manual_seed(0)
    s = NoiseDistribution(0.7, 1.6).sample(40000, g)
    assert abs(s.log().mean().item() - 0.7) < 0.03 and abs(s.log().std().item() - 1.6) < 0.03
    q = NoiseDistribution(1.0, 1.2).quantiles(4).log()
    assert torch.allclose(q, 1.0 + 1.2 * torch.tensor([-1.1503, -0.3186, 0.3186, 1.1503]), atol=1e-3)
    aug = sample_cond_aug(40000, g).log()
    assert abs(aug.mean().item() + 3.0) < 0.02 and abs(aug.std().item() - 0.5) < 0.02


def test_edm_loss_is_the_weighted_denoising_error():
    """With a UNet that outputs F = 0, D(x + s n; s) = c_skip (x + s n): the loss is known in closed form."""
    class Zero(torch.nn.Module):
        def forward(self, x, t, context=None, y=None, **_):
            return torch.zeros(x.shape[0], 4, *x.shape[2:])

    g = torch.Generator().manual_seed(1)
    b, t = 2, 3
    x, n = torch.randn(b * t, 4, 2, 2, generator=g), torch.randn(b * t, 4, 2, 2, generator=g)
    sigma = torch.tensor([0.5, 3.0])
    cond = VideoCond(torch.zeros(b * t, 1, 8), torch.zeros(b * t, 4, 2, 2), torch.zeros(b * t, 8))
    per = edm_loss(Zero(), x, sigma, n, cond, t, reduce=False)
    s = sigma.repeat_interleave(t).view(-1, 1, 1, 1)
    d = (x + s * n) / (s**2 + 1)
    manual = ((d - x) ** 2).reshape(b, -1).mean(1) * (1 + sigma**2) / sigma**2
    assert torch.allclose(per, manual, rtol=1e-5)
    assert torch.allclose(edm_weight(torch.tensor([1.0, 2.0])), torch.tensor([2.0, 1.25]))


def test_one_sigma_data_reaches_the_preconditioning_and_the_weighting():
    """EDM (paper App. D.2, eq. 8-13): the loss passes its sigma_data sd to both D and lambda. With a UNet that
    echoes its (scaled) input, F = c_in x~: D = (c_skip + c_out c_in) x~ = (sd^2 - s sd) / (s^2 + sd^2) x~ and
    lambda = (s^2 + sd^2) / (s sd)^2; the default is the video models' sd = 1 (`denoiser.SIGMA_DATA`)."""
    from svd_core.denoiser import SIGMA_DATA

    class Echo(torch.nn.Module):
        def forward(self, x, t, context=None, y=None, **_):
            return x[:, :4]

    g = torch.Generator().manual_seed(2)
    b, t = 2, 2
    x, n = torch.randn(b * t, 4, 2, 2, generator=g), torch.randn(b * t, 4, 2, 2, generator=g)
    sigma = torch.tensor([0.3, 2.0])
    cond = VideoCond(torch.zeros(b * t, 1, 8), torch.zeros(b * t, 0, 2, 2), torch.zeros(b * t, 8))
    s = sigma.repeat_interleave(t).view(-1, 1, 1, 1)
    for sd in (0.5, SIGMA_DATA):
        d = (sd**2 - s * sd) / (s**2 + sd**2) * (x + s * n)
        manual = ((d - x) ** 2).reshape(b, -1).mean(1) * (sigma**2 + sd**2) / (sigma * sd) ** 2
        torch.testing.assert_close(edm_loss(Echo(), x, sigma, n, cond, t, reduce=False, sigma_data=sd), manual)
    assert SIGMA_DATA == 1.0 and torch.equal(edm_loss(Echo(), x, sigma, n, cond, t, reduce=False),
                                             edm_loss(Echo(), x, sigma, n, cond, t, reduce=False, sigma_data=1.0))


def test_dropout_gives_the_samplers_unconditional_branch():
    cond = VideoCond(torch.ones(6, 1, 4), torch.ones(6, 4, 2, 2), torch.ones(6, 8))
    out = drop_conditioning(cond, torch.tensor([1.0, 0.0]), 3)
    assert out.crossattn[:3].eq(1).all() and out.crossattn[3:].eq(0).all()
    assert out.concat[:3].eq(1).all() and out.concat[3:].eq(0).all()
    assert out.vector.eq(1).all()  # micro-conditioning is kept, as in the sampler's uncond branch


# ------------------------------------------------------------------------------------------------ data


def test_micro_conditioning_comes_from_each_clips_fps_and_motion(manifest, micro_data):
    from svd_core.curation.manifest import read_manifest

    rows = {r["path"]: r for r in read_manifest(manifest)}
    model, data = micro_data
    assert window_fps(25 / 4) == 6.25 and motion_bucket(2.0) == 64 and motion_bucket(100) == 255
    with pytest.raises(DataError, match="at least 1 fps"):
        window_fps(25 / 32)
    buckets = set()
    for i, w in enumerate(data.windows):
        item = data.dataset[i]
        row = rows[w.record.path]
        assert w.stride == round(row["fps"] / 7.0) == 4  # 25 fps clips sampled near 7 fps
        assert item["fps"].item() == row["fps"] / w.stride and "fps_id" not in item  # fps, never fps_id
        assert item["motion_bucket_id"].item() == motion_bucket(row["motion"])
        buckets.add(item["motion_bucket_id"].item())
    assert len(buckets) >= 3  # real motion scores differ from shot to shot: never a constant


def test_latents_are_cached_once(manifest, micro_data, tmp_path, monkeypatch):
    from svd_core.training import data as data_mod

    model, prepared = micro_data
    calls = []
    real = data_mod.encode_window
    monkeypatch.setattr(data_mod, "encode_window", lambda *a: calls.append(1) or real(*a))
    cfg = small_cfg()
    recs = data_mod.load_records(manifest)[:1]
    api.prepare_data(model, cfg, manifest, tmp_path, records=recs)
    n = len(calls)
    assert n >= 1
    again = api.prepare_data(model, cfg, manifest, tmp_path, records=recs)
    assert len(calls) == n  # the second pass reads the cache
    item = again.dataset[0]
    assert item["latents"].shape == (4, 4, 8, 8) and item["clip"].shape == (2, 64)
    assert item["images"].dtype == torch.uint8 and item["images"].shape == (2, 3, 64, 64)


# ------------------------------------------------------------------------------------------------ modes / state


def test_modes_choose_what_trains(micro_data, tmp_path):
    from svd_core.training.modes import prepare, trainable

    model, _ = micro_data
    for mode in ("lora", "temporal", "full"):
        m = fresh(model)
        module, lora, handle = prepare(m, mode, lora_rank=4)
        names = list(trainable(module))
        assert not any(p.requires_grad for p in m.first_stage_model.parameters())
        assert not any(p.requires_grad for p in m.conditioner.parameters())
        if mode == "lora":
            assert names and all(n.startswith("lora.") for n in names)
            assert all("time_stack/0/attn" in n for n in names)  # LoRA layers keyed by module path
            handle.remove()
        elif mode == "temporal":
            assert names and all(any(k in n for k in ("time_stack", "time_mixer", "time_pos_embed")) for n in names)
            assert len(names) < sum(1 for _ in m.unet.parameters())
        else:
            assert len(names) == sum(1 for _ in m.unet.parameters())


def _params(tr):
    return {k: v.detach().clone() for k, v in tr.params.items()}


def test_resume_is_exact_after_a_crash_and_cancel_saves_state(micro_data, tmp_path):
    model, data = micro_data
    cfg = small_cfg(steps=4, checkpoint_every=2, mode="temporal", grad_accum=2)
    straight = Trainer(fresh(model), cfg, data.dataset, data.train_idx, data.val_idx, tmp_path / "a")
    seen = []
    straight.run(progress=lambda *a: seen.append(a))
    assert seen == [(step, 4, "training") for step in (1, 2, 3, 4)]  # svd_core.progress: (done, total, stage)
    # a run cancelled after 2 steps saves its state and raises; a new process resumes from it
    first = Trainer(fresh(model), cfg, data.dataset, data.train_idx, data.val_idx, tmp_path / "b")
    with pytest.raises(Interrupted, match="step 2/4") as info:
        first.run(cancel=lambda: first.step >= 2)
    assert Path(info.value.state_path).is_file()
    torch.manual_seed(1234)  # the crash left the global RNG anywhere
    second = Trainer(fresh(model), cfg, data.dataset, data.train_idx, data.val_idx, tmp_path / "b")
    assert second.resume() and second.step == 2
    seen.clear()
    second.run(progress=lambda *a: seen.append(a))
    assert seen == [(3, 4, "training"), (4, 4, "training")]
    a, b = _params(straight), _params(second)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ea, eb = straight.ema.full_state(), second.ema.full_state()
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    assert [x[1] for x in straight.losses] == [x[1] for x in second.losses]
    assert not all(torch.equal(a[k], dict(fresh(model).unet.named_parameters())[k[5:]]) for k in a)
    with pytest.raises(ValueError, match="trained with mode='temporal'"):
        Trainer(fresh(model), replace(cfg, mode="full"), data.dataset, data.train_idx, data.val_idx,
                tmp_path / "b").resume()


def test_outputs_load_with_the_loaders(micro_data, tmp_path):
    import svd_core
    from svd_core.lora import load_lora

    model, data = micro_data
    tr = Trainer(fresh(model), small_cfg(steps=2, mode="full", ema_decay=0.5), data.dataset, data.train_idx,
                 data.val_idx, tmp_path)
    tr.run()
    out = tr.export("full")
    loaded = svd_core.load(out["weights"])
    assert loaded.spec == model.spec  # custom size: the spec travels in the metadata
    for n, p in tr.module.unet.named_parameters():
        assert torch.equal(dict(loaded.unet.named_parameters())[n], p.detach())
    ema = svd_core.load(out["ema"])
    n0 = "input_blocks.0.0.weight"
    assert not torch.equal(dict(ema.unet.named_parameters())[n0], dict(loaded.unet.named_parameters())[n0])
    assert torch.allclose(dict(ema.unet.named_parameters())[n0], tr.ema.shadow["unet." + n0])

    lt = Trainer(fresh(model), small_cfg(steps=2, mode="lora", lora_rank=4), data.dataset, data.train_idx,
                 data.val_idx, tmp_path / "lora")
    lt.run()
    lout = lt.export("cam")
    lora = load_lora(lout["weights"], model)
    assert lora.rank == 4 and len(list(lora.items())) == len(list(lt.lora.items()))
    for path, layer in lora.items():
        trained = dict(lt.lora.items())[path]
        assert torch.equal(layer.up, trained.up.detach()) and torch.equal(layer.down, trained.down.detach())
    assert any(layer.up.abs().sum() > 0 for _, layer in lora.items())  # it trained (up starts at zero)
    assert Path(lt.write_loss_curve is not None and lt.out_dir / "state" / "last.safetensors").is_file()


def test_interpolation_trains_from_an_svd_checkpoint(micro_data, tmp_path):
    from svd_core import interpolation

    model, data = micro_data
    spec = replace(micro_spec(), name="micro_interp", unet=replace(micro_spec().unet, in_channels=9),
                   cond_mode="interpolation", num_frames=4)
    interp = interpolation.init_from(fresh(model), spec)
    cfg = small_cfg(preset="interpolation", steps=2, mode="full", num_frames=4, height=64, width=64)
    tr = Trainer(interp, cfg, data.dataset, data.train_idx, data.val_idx, tmp_path)
    before = interp.conditioner.vae_encoder.mask_embedding.detach().clone()
    tr.run()
    assert "extra.mask_embedding" in tr.params
    assert not torch.equal(before, interp.conditioner.vae_encoder.mask_embedding.detach())  # the mask trains
    path = tr.save_checkpoint(tmp_path / "interp.safetensors")
    import svd_core

    back = svd_core.load(path)
    assert back.spec.cond_mode == "interpolation"
    assert torch.equal(back.conditioner.vae_encoder.mask_embedding, interp.conditioner.vae_encoder.mask_embedding)


def test_cli_trains_from_a_config(manifest, tmp_path, capsys):
    from svd_core.__main__ import main
    from svd_core.testing import make_tiny_checkpoint

    make_tiny_checkpoint(tmp_path / "micro.safetensors", micro_spec())
    cfg = {"model": "micro.safetensors", "data": str(manifest), "out_dir": "run",
           "train": {"preset": "camera_lora", "num_frames": 4, "height": 64, "width": 64, "steps": 2,
                     "batch_size": 1, "lora_rank": 4, "validate_every": 2, "val_items": 1, "name": "cam",
                     "sample_steps": 2}}
    (tmp_path / "run.json").write_text(json.dumps(cfg))
    assert main(["train", str(tmp_path / "run.json"), "--max-windows-per-clip", "1", "--set", "lr=1e-3"]) == 0
    out = capsys.readouterr().out
    assert "step 2/2" in out and "validation loss" in out
    assert (tmp_path / "run" / "cam_step2.safetensors").is_file()
    assert (tmp_path / "run" / "cam_step2_ema.safetensors").is_file()
    assert (tmp_path / "run" / "loss_curve.png").is_file()
    from PIL import Image

    grid = Image.open(tmp_path / "run" / "samples" / "step_000002.png")  # validation samples: 1 video x 4 frames
    assert grid.size == (4 * 64, 64)
    # a second call resumes: nothing left to do, same outputs
    assert main(["train", str(tmp_path / "run.json"), "--max-windows-per-clip", "1"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert main(["train", str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_gradient_checkpointing_is_exact_and_bf16_autocast_trains(micro_data, tmp_path):
    model, data = micro_data
    runs = {}
    for name, kw in (("plain", {}), ("ckpt", {"gradient_checkpointing": True}), ("bf16", {"precision": "bf16"})):
        tr = Trainer(fresh(model), small_cfg(steps=1, mode="temporal", **kw), data.dataset, data.train_idx,
                     data.val_idx, tmp_path / name)
        assert tr.module.unet.gradient_checkpointing == (name == "ckpt")
        loss = tr.train_step()
        runs[name] = (loss, _params(tr))
    plain, ckpt, bf16 = runs["plain"], runs["ckpt"], runs["bf16"]
    assert ckpt[0] == pytest.approx(plain[0], rel=1e-6)
    assert all(torch.allclose(ckpt[1][k], plain[1][k], atol=1e-6) for k in plain[1])
    assert math.isfinite(bf16[0]) and bf16[0] == pytest.approx(plain[0], rel=0.1)


# ------------------------------------------------------------------------------------------------ api (nodes' calls)


def test_model_to_train_is_a_private_copy_with_loras_merged_and_targets_at_the_base_size(micro_data):
    from svd_core import multiview, text2video
    from svd_core.lora import create_lora, merge
    from svd_core.variants import SVD, SVD_MV, SVD_XT, TEXT2VIDEO

    model, _ = micro_data
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lora = create_lora(model, rank=2, seed=3)
    for layer in lora.layers.values():
        layer.up.data.normal_()  # a LoRA that changes the weights (a fresh one starts at zero)
    copy_ = api.model_to_train(model, loras=[(lora, 0.5)])
    expected = fresh(model)
    merge(expected, [(lora, 0.5)])
    got, want = copy_.state_dict(), expected.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert any(not torch.equal(got[k], before[k]) for k in before)  # the LoRA is in the copy ...
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # ... not in the loaded model
    # generators grow at the base's own size (no tiny test variant named anywhere); released sizes stay released
    mv = api.model_to_train(model, "multiview")
    assert mv.spec == multiview.spec_for(model.spec) and mv.spec.unet.model_channels == 32
    assert mv.spec.unet.adm_in_channels == SVD_MV.unet.adm_in_channels
    t2v = api.model_to_train(model, "text2video")
    assert t2v.spec.cond_mode == "text" and t2v.spec.clip.text_width == model.spec.unet.context_dim
    assert multiview.spec_for(SVD) is SVD_MV and text2video.spec_for(SVD_XT) is TEXT2VIDEO
    with pytest.raises(ValueError, match="target 'sideways' is not one of"):
        api.model_to_train(model, "sideways")


def test_run_returns_the_training_run_and_names_what_to_fix(manifest, micro_data, tmp_path):
    import copy

    import numpy as np

    from svd_core.lora import merge

    model, data = micro_data
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = replace(small_cfg(steps=2, mode="lora", lora_rank=4), name="r1")
    seen = []
    records = [w.record for w in data.windows]
    run = api.run(model, cfg, manifest, tmp_path / "r1", tmp_path / "cache", records=records, max_per_clip=2,
                  progress=lambda done, total, *_: seen.append((done, total)))
    assert isinstance(run, api.TrainingRun) and run.name == "r1" and run.run_dir == str(tmp_path / "r1")
    assert run.result.step == 2 and seen[-1] == (2, 2) and run.trainer.handle is None  # hooks off after the run
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # trained a private copy
    want = copy.deepcopy(run.trainer.model)
    merge(want, [(run.trainer.lora_copy(), 1.0)])  # the trained model = the trainer's model + its LoRA, merged
    got = run.model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in want.state_dict().items())
    assert any(not torch.equal(got[k], before[k]) for k in before)
    assert run.loss_curve.dtype == np.uint8 and run.loss_curve.ndim == 3 and run.loss_curve.shape[2] == 3
    assert run.report.startswith("r1: img2vid (lora, task img2vid) 2/2 steps")
    frames = api.validation_samples(run.trainer, steps=1, videos=1, seed=0)
    assert frames.shape == (1, 4, 3, 64, 64) and 0 <= frames.min() and frames.max() <= 1
    assert run.trainer.handle is None  # sampling attached the LoRA and took it off again
    # what the node maps to its inputs: settings, dataset, saved state
    with pytest.raises(api.RunInputError, match="steps") as bad:
        api.run(model, replace(cfg, steps=0), manifest, tmp_path / "r2", tmp_path / "cache", records=records)
    assert bad.value.what == "settings"
    with pytest.raises(api.RunInputError) as bad:
        api.run(model, cfg, manifest, tmp_path / "r3", tmp_path / "cache", records=[])
    assert bad.value.what == "dataset"
    state = tmp_path / "r4" / "state" / Path(run.result.state_path).name
    state.parent.mkdir(parents=True)
    state.write_bytes(b"not a state file")
    with pytest.raises(api.RunInputError, match=state.name) as bad:
        api.run(model, cfg, manifest, tmp_path / "r4", tmp_path / "cache", records=records, max_per_clip=2)
    assert bad.value.what == "resume"
