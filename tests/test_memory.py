"""Meta-device memory accounting (svd_core.memory) and the activation budgets it guards at full size."""
from __future__ import annotations

import pytest
import torch

from svd_core.memory import GiB, LiveBytes, activation_peak, full_size_plan

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


def test_full_size_svd_xt_plan_stays_within_its_budget():
    plan = full_size_plan("svd_xt", height=576, width=1024, dtype=torch.float16, decode_t=14)
    assert plan.frames == 25 and plan.decode_t == 14
    assert abs(plan.weights["unet"] / GiB - 2.84) < 0.01 and abs(plan.weights["vae"] / GiB - 0.18) < 0.01
    full_res_map = 14 * 128 * 576 * 1024 * 2  # one 128-channel full-resolution feature map of the window
    # three such maps plus one frame's slice of the 256-channel input (diffusers' decoder: 15.75 GiB, 8 maps)
    assert plan.decode_peak <= 3.3 * full_res_map
    level0 = 50 * 320 * 72 * 128 * 2  # one first-level UNet activation of the guided batch
    # skip connections plus a transformer's working set; diffusers peaks at 7.73 GiB on the same shapes
    assert 8 * level0 < plan.unet_peak < 19 * level0  # 18 measured; diffusers: 28
    assert any("activation peak" in line for line in plan.lines())


@pytest.mark.slow  # the engine's nine configurations, diffusers' and ComfyUI's models: ~60 s of CPU
def test_memory_plan_bench_at_reduced_size(tmp_path, capsys):
    """bench/memory_plan.py on the tiny model (no timing): the tables print and the figures are consistent."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "memory_plan.py"
    spec = importlib.util.spec_from_file_location("memory_plan", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "plan.json"
    bench.main(["--tiny", "--height", "64", "--width", "128", "--tile", "4", "--tile-overlap", "1",
                "--short-t", "3", "--peers", "diffusers,comfyui", "--json", str(out)])
    text = capsys.readouterr().out
    assert "| configuration | CLIP image encoder | VAE encode | UNet step (CFG) | VAE decode | whole run |" in text
    assert "ComfyUI native SVD UNet" in text and "model CPU offload" in text
    rows = list(json.loads(out.read_text())["ours"].values())
    default, offload, fp8, ff_off, in_turn, short_t, tiles, fp8_turn, smallest = rows
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


@pytest.mark.slow  # four meta-device plans of the tiny model (~25 s of CPU)
def test_memory_required_per_stage_bounds_the_accounting():
    """The closed-form per-stage request (what ComfyUI's memory manager is given) stays above the meta-device
    accounting of each stage and within a few times it, for every memory option."""
    from svd_core.memory import STAGES, MemoryOptions, memory_required, meta_model, plan_stages
    from svd_core.testing import TINY_XT

    cache, models = {}, {}
    for options in (MemoryOptions(), MemoryOptions(offload=True, unet_videos=1), MemoryOptions(offload=True, fp8=True),
                    MemoryOptions(offload=True, decode_tile=4, decode_t=3)):
        model = models.setdefault(options.fp8, meta_model(TINY_XT, torch.float16, options.fp8))
        measured = plan_stages(TINY_XT, 6, 64, 128, torch.float16, options, model, cache)
        required = memory_required(model, 6, 64, 128, torch.float16, options)
        assert set(required) == set(STAGES)
        for s in STAGES:
            assert measured.peak(s) <= required[s] <= 4 * measured.peak(s) + 2 ** 29, (options, s)
    plain = memory_required(models[False], 6, 64, 128, torch.float16)
    offload = memory_required(models[False], 6, 64, 128, torch.float16, MemoryOptions(offload=True))
    more = memory_required(models[False], 12, 64, 128, torch.float16, MemoryOptions(offload=True))
    assert all(offload[s] < plain[s] for s in STAGES)
    assert more["unet"] > offload["unet"] and more["clip"] == offload["clip"]  # frames: the UNet, not CLIP
