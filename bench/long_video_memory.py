"""Long videos: peak memory of sliding-window sampling and of chaining at 25, 50 and 100 frames (tiny random model),
against sampling all frames in one UNet call. Reported as MiB and as ratios to the 25-frame run: flat = ~1.0.

    python bench/long_video_memory.py [--frames 25,50,100] [--window 8] [--overlap 2] [--latent 16] [--steps 1]
                                      [--runs windows,all_frames_at_once,chain]

Peak memory on CPU is the process's resident high-water mark (VmHWM), reset before every run through
/proc/self/clear_refs, minus the resident size when the run started (same method as bench_vs_diffusers.py); with
MALLOC_MMAP_THRESHOLD_=65536 large buffers are returned to the OS when freed, so each run's own peak is measured.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from _memory import ensure_mmap_threshold, measure  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", default="25,50,100")
    ap.add_argument("--window", type=int, default=8, help="trained frame count of the tiny model = window size")
    ap.add_argument("--overlap", type=int, default=2)
    ap.add_argument("--latent", type=int, default=16, help="latent side (pixels = 8x)")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--runs", default="windows,all_frames_at_once,chain",
                    help="which to measure: windows (sliding windows), all_frames_at_once (one UNet call), chain")
    ap.add_argument("--json", default="", help="also write the results here")
    args = ap.parse_args()
    ensure_mmap_threshold()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

    from svd_core import long_video as LV
    from svd_core.guidance import Guidance
    from svd_core.pipeline import image_conditioning, sample
    from svd_core.testing import tiny_model
    from svd_core.variants import TINY

    px = args.latent * 8
    spec = replace(TINY, name="tiny_bench", num_frames=args.window, height=px, width=px, decode_t=args.window)
    model = tiny_model(spec, seed=0)
    image = torch.rand(1, 3, px, px, generator=torch.Generator().manual_seed(0))
    guidance = Guidance("linear", 1.0, 2.5)
    frames = [int(f) for f in args.frames.split(",")]
    available = {
        "windows": lambda n: LV.sample_windows(model, image_conditioning(model, image, num_frames=n), guidance,
                                               window=args.window, overlap=args.overlap, steps=args.steps, seed=0),
        "all_frames_at_once": lambda n: sample(model, image_conditioning(model, image, num_frames=n), guidance,
                                               steps=args.steps, seed=0),
        "chain": lambda n: LV.chain(model, image, num_frames=n, clip_frames=args.window, guidance=guidance,
                                    steps=args.steps, seed=0, color_match="latent"),
    }
    runs = {name: available[name] for name in args.runs.split(",")}
    results: dict = {"setup": {"window": args.window, "overlap": args.overlap, "size": f"{px}x{px}",
                               "steps": args.steps, "unet_params": sum(p.numel() for p in model.unet.parameters()),
                               "torch_threads": torch.get_num_threads()}}
    for name, fn in runs.items():
        fn(min(frames))  # warm-up
        rows = {}
        for n in frames:
            dt, peak = measure(lambda fn=fn, n=n: fn(n))
            rows[n] = {"peak_mib": round(peak, 1), "cpu_s": round(dt, 2)}
            print(f"{name:20s} {n:4d} frames: peak +{peak:8.1f} MiB  cpu {dt:7.2f} s", flush=True)
        base = rows[min(frames)]["peak_mib"]
        for n in frames:
            rows[n]["ratio_to_first"] = round(rows[n]["peak_mib"] / max(base, 1e-9), 2)
        results[name] = rows
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
