"""Meta-device memory accounting (svd_core.memory) and the activation budgets it guards at full size."""
from __future__ import annotations

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
