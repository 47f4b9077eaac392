"""bench/gpu.py runs end to end at a reduced size on the CPU (CI has no GPU): both engines on the same weights and
noise give the same video, and the FLOP accounting adds up. No timing is asserted. Its `main` runs in this process
at the smallest size that still guides and decodes (2 frames, 1 step): a subprocess would only add a torch +
diffusers import."""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_bench_small_on_cpu(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    gpu = importlib.import_module("gpu")
    out = tmp_path / "gpu.json"
    gpu.main(["--small", "--device", "cpu", "--frames", "2", "--steps", "1", "--repeats", "1", "--json", str(out)])
    stdout = capsys.readouterr().out
    report = json.loads(out.read_text())
    fl, cfg = report["flops"], report["config"]
    assert (cfg["frames"], cfg["steps"]) == (2, 1)
    assert fl["video"] == fl["conditioning"] + cfg["steps"] * fl["unet_step"] + fl["decode"]
    assert fl["unet_step"] > 0 and fl["decode"] > 0 and fl["conditioning"] > 0
    (entry,) = report["results"]
    assert entry["frames_shape"] == [1, cfg["frames"], 3, cfg["height"], cfg["width"]]
    # the same maths in both engines: fp32 frames in [0, 1] agree as in tests/test_pipeline.py's parity test
    assert entry["max_abs_diff"] < 5e-4
    assert entry["ours"]["runs"] == entry["diffusers"]["runs"] == 1
    assert entry["matmul_tflops"] > 0 and entry["limit_seconds"] > 0
    assert entry["time_ratio"] == pytest.approx(entry["ours"]["seconds_per_video"]
                                                / entry["diffusers"]["seconds_per_video"])
    assert "physical limit" in stdout and "ours / diffusers" in stdout
    assert not list(tmp_path.glob(".*partial"))  # the JSON was written atomically
