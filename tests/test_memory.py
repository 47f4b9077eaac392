"""Meta-device memory accounting (svd_core.memory) and the activation budgets it guards at full size."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from svd_core.memory import GiB, LiveBytes, activation_peak, cfg_in_turn, full_size_plan

MB = 4 * 1000 * 1000  # bytes of a 1000 x 1000 float32 tensor


def test_live_bytes_counts_outputs_frees_views_and_in_place_ops():
    def run():
        a = torch.randn(1000, 1000, device="meta")  # 1
        b = a * 2  # 2 alive
        v = b.t()  # a view: no new storage
        b.add_(1)  # in place: no new storage
        del a  # 1 alive
        c = v + 1  # 2 alive
        return c

    with torch.inference_mode(), LiveBytes() as live:
        out = run()
        assert live.peak == 2 * MB
    del out
    assert activation_peak(lambda: torch.empty(10, 10, device="meta") + 1) == 800


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_live_bytes_ignores_views_of_weights_and_inputs(device):
    """A view of a tensor that existed before the forward (a weight, the forward's input) holds no new bytes, on
    the meta device (the full-size plans) as on real tensors (the bench); a copy of it does."""
    weight = torch.nn.Parameter(torch.randn(1000, 1000, device=device), requires_grad=False)
    x = torch.randn(1000, 1000, device=device)
    assert activation_peak(lambda: (weight.t(), weight.squeeze(-1), weight.to(weight.dtype), x[:10])) == 0
    assert activation_peak(lambda: weight.t().contiguous()) == MB
    assert activation_peak(lambda: torch.nn.functional.linear(x, weight)) == MB


def test_cfg_in_turn_is_chosen_by_the_free_memory():
    """The one decision of the CFG batching (issue 16 item 3), as ComfyUI's sampler batches cond and uncond:
    "auto" keeps the branches together when the step's estimate fits the free memory (or the free memory is
    unknown), in turn when it does not; "together" / "in turn" are obeyed whatever the memory."""
    assert cfg_in_turn("auto", 100, 100) is False and cfg_in_turn("auto", 101, 100) is True
    assert cfg_in_turn("auto", 10 ** 15, None) is False  # unknown free memory: nothing to decide by
    assert cfg_in_turn("together", 10 ** 15, 1) is False and cfg_in_turn("in turn", 1, 10 ** 15) is True
    with pytest.raises(ValueError, match="cfg_batch=True is not one of 'auto', 'together', 'in turn'"):
        cfg_in_turn(True, 1, 1)


def test_full_size_svd_xt_plan_stays_within_its_budget():
    plan = full_size_plan("svd_xt", height=576, width=1024, dtype=torch.float16, decode_t=14)
    assert plan.frames == 25 and plan.decode_t == 14
    assert abs(plan.weights["unet"] / GiB - 2.84) < 0.01 and abs(plan.weights["vae"] / GiB - 0.18) < 0.01
    full_res_map = 14 * 128 * 576 * 1024 * 2  # one 128-channel full-resolution feature map of the window
    # three such maps plus one frame's slice of the 256-channel input (diffusers' decoder: 15.75 GiB, 8 maps)
    assert plan.decode_peak <= 3.3 * full_res_map
    level0 = 50 * 320 * 72 * 128 * 2  # one first-level UNet activation of the guided batch
    # skip connections plus a transformer's working set; diffusers peaks at 7.73 GiB on the same shapes
    assert 8 * level0 < plan.unet_peak < 10 * level0  # 9 measured (18 before issue 16); diffusers: 28
    assert any("activation peak" in line for line in plan.lines())


@pytest.fixture(scope="module")
def tiny_plans():
    """Meta-device models and measured stage peaks of TINY_XT, 6 frames at 128x64, fp16 (svd_core.memory
    `plan_stages`' `model` / `cache`), shared by the tests below that plan that size: each stage setting is
    measured once in the module (a meta-device forward costs seconds of Python per thousand ops)."""
    return {"models": {}, "cache": {}}


@pytest.mark.slow  # the engine's configurations, diffusers' and ComfyUI's models
def test_memory_plan_bench_at_reduced_size(tmp_path, capsys, tiny_plans):
    """bench/memory_plan.py on the tiny model (no timing): the tables print and the figures are consistent."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "memory_plan.py"
    spec = importlib.util.spec_from_file_location("memory_plan", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "plan.json"
    bench.main(["--tiny", "--height", "64", "--width", "128", "--tile", "6", "--tile-overlap", "1",
                "--short-t", "3", "--budget", "45", "--fp8-budget", "30", "--peers", "diffusers,comfyui",
                "--json", str(out)], memo=tiny_plans)
    text = capsys.readouterr().out
    assert "| configuration | CLIP image encoder | VAE encode | UNet step (CFG) | VAE decode | whole run |" in text
    assert "ComfyUI native SVD UNet" in text and "model CPU offload" in text
    rows = list(json.loads(out.read_text())["ours"].values())
    default, offload, fp8, ff_off, in_turn, short_t, tiles, fp8_turn, smallest, *auto = rows
    assert offload["total"] < default["total"]
    assert all(offload["weights"][s] < default["weights"][s] for s in default["weights"])
    assert sum(offload["weights"].values()) == default["weights"]["unet"]  # resident: every stage's weights
    # fp8 UNet weights: Linear / Conv weights one byte, biases, norms and mix factors still two
    assert 0.5 * offload["weights"]["unet"] < fp8["weights"]["unet"] < 0.55 * offload["weights"]["unet"]
    assert fp8["weights"]["vae_decode"] == offload["weights"]["vae_decode"]
    assert ff_off["activations"]["unet"] >= offload["activations"]["unet"]
    assert in_turn["activations"]["unet"] < offload["activations"]["unet"]  # half the batch alive at once
    assert short_t["activations"]["vae_decode"] < offload["activations"]["vae_decode"]
    assert tiles["activations"]["vae_decode"] < offload["activations"]["vae_decode"]
    assert smallest["total"] <= min(r["total"] for r in rows)
    assert fp8_turn["activations"]["unet"] < fp8["activations"]["unet"]
    # CFG batching "auto" (the last four rows) on a device of --budget / --fp8-budget MiB: all weights resident
    # leave less room than the guided step's estimate with both branches in one batch (in turn), per-stage offload
    # enough (together); the rows are then the measured rows of that batching
    auto_default, auto_fp8, auto_offload, auto_offload_fp8 = auto
    assert [r["cfg_in_turn"] for r in auto] == [True, True, False, False]
    assert auto_default["weights"] == default["weights"] and not default["cfg_in_turn"]
    assert auto_default["activations"]["unet"] == in_turn["activations"]["unet"] < default["activations"]["unet"]
    assert auto_fp8["activations"]["unet"] == fp8_turn["activations"]["unet"]
    assert auto_fp8["weights"]["unet"] == sum(fp8["weights"].values())  # resident: every stage's weights
    for got, row in ((auto_offload, offload), (auto_offload_fp8, fp8)):
        assert (got["weights"], got["activations"], got["total"]) == (row["weights"], row["activations"],
                                                                       row["total"])
    assert "on a 45 MiB device: CFG branches in turn" in text and "on a 30 MiB device: CFG branches in one batch" \
        in text


@pytest.mark.slow  # five meta-device plans of the tiny model, stages measured once per setting
def test_memory_required_per_stage_bounds_the_accounting(tiny_plans):
    """The closed-form per-stage request (what ComfyUI's memory manager is given) stays above the meta-device
    accounting of each stage and within a few times it, for every memory option."""
    from svd_core.memory import (STAGES, MemoryOptions, guided_step_bytes, memory_required, meta_model, plan_stages,
                                 stage_weights)
    from svd_core.testing import TINY_XT

    cache, models = tiny_plans["cache"], tiny_plans["models"]
    # the decode window and the spatial tiles one at a time: 2 + 6 decoder calls (both at once were 2 x 15 tiles)
    for options in (MemoryOptions(), MemoryOptions(offload=True, cfg_batch="in turn"),
                    MemoryOptions(offload=True, fp8=True), MemoryOptions(offload=True, decode_t=3),
                    MemoryOptions(offload=True, decode_tile=6, decode_tile_overlap=1)):
        if options.fp8 not in models:
            models[options.fp8] = meta_model(TINY_XT, torch.float16, options.fp8)
        model = models[options.fp8]
        measured = plan_stages(TINY_XT, 6, 64, 128, torch.float16, options, model, cache)
        required = memory_required(model, 6, 64, 128, torch.float16, options)
        assert set(required) == set(STAGES)
        for s in STAGES:
            assert measured.peak(s) <= required[s] <= 4 * measured.peak(s) + 2 ** 29, (options, s)
    # CFG batching "auto" against a budget: together when the guided step's estimate fits what the resident
    # weights leave, in turn when it does not (the measured in-turn peak), forced values whatever the budget
    model, off = models[False], MemoryOptions(offload=True)
    room = stage_weights(model)["unet"] + guided_step_bytes(TINY_XT, 6, 64, 128, 2, off.ff_chunk)
    plans = {(choice, budget): plan_stages(TINY_XT, 6, 64, 128, torch.float16, replace(off, cfg_batch=choice),
                                           model, cache, budget)
             for choice, budget in (("auto", room), ("auto", room - 1), ("auto", None), ("together", 1),
                                    ("in turn", 2 ** 50))}
    assert [p.cfg_in_turn for p in plans.values()] == [False, True, False, False, True]
    together, in_turn = plans["auto", room].activations["unet"], plans["auto", room - 1].activations["unet"]
    assert in_turn < together == plans["together", 1].activations["unet"]
    assert plans["in turn", 2 ** 50].activations["unet"] == in_turn
    req = {free: memory_required(model, 6, 64, 128, torch.float16, off, free=free)["unet"]
           for free in (room, room - 1, None)}
    assert req[room] == req[None] > req[room - 1] == memory_required(
        model, 6, 64, 128, torch.float16, replace(off, cfg_batch="in turn"))["unet"]
    plain = memory_required(models[False], 6, 64, 128, torch.float16)
    offload = memory_required(models[False], 6, 64, 128, torch.float16, MemoryOptions(offload=True))
    more = memory_required(models[False], 12, 64, 128, torch.float16, MemoryOptions(offload=True))
    assert all(offload[s] < plain[s] for s in STAGES)
    assert more["unet"] > offload["unet"] and more["clip"] == offload["clip"]  # frames: the UNet, not CLIP
