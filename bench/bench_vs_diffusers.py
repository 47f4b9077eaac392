"""svd_core vs diffusers on the same weights (issue 16 items 1-2).

Forwards (one process, alternating runs, median): UNet forward with CFG (batch 2) and temporal-VAE decode, for
every dtype x thread count x size, as ratios ours / diffusers of time and peak extra memory, with the FLOPs both
engines execute (torch.utils.flop_counter, counted as bench/gpu.py counts them) as achieved GFLOP/s next to the
machine's own dense matmul throughput measured in the same run (the "physical limit" line). `--profile` adds the
top ops of each engine (torch.profiler), `--ablate` an on/off table of our fast paths. `--pipeline` times img2vid
end to end against diffusers' StableVideoDiffusionPipeline, each engine in its own child process (spawn), after
checking both give the same video. `--plan`: the full-size plan (svd_core.memory meta-device accounting).

FLOPs differ by our two FLOP-saving fast paths: the cross-attention to SVD's single CLIP token (softmax over one
key is 1: no q/k projections, no attention) and the folded upsample conv (16 of 36 taps per source pixel); with
those two off (`flops_ours_plain`) the counts agree within 0.1% (ours embeds the timestep per frame, diffusers
per video). GFLOP/s divide each engine's own count by
its wall time.

    python bench/bench_vs_diffusers.py --sizes 64x8,128x14 --threads 1,2 --dtypes float32,bfloat16 --repeats 5
    python bench/bench_vs_diffusers.py --sizes 64x8 --threads 2 --profile --ablate
    python bench/bench_vs_diffusers.py --pipeline --threads 1,2 --repeats 5

Time: with 1 thread the process's CPU time (robust to other load on a shared machine); with more, wall time
(CPU time then also counts the worker threads spinning at barriers); both are in the JSON. The forwards run under
the default allocator, as users run them (with glibc's mmap threshold pinned low every large buffer is a fresh
mapping and page faults, up to half of a feed-forward's time here, would dominate both engines' timings).
Peak memory of a forward: the largest sum of tensor storages alive at once during one call
(`svd_core.memory.activation_peak`, the CPU counterpart of CUDA's max_memory_allocated: exact, deterministic,
independent of the allocator and of other load), the output included; kernel workspaces come on top for both.
The whole-pipeline mode measures peak RSS instead, each engine in its own child process.
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import math
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from _memory import measure_wall
from gpu import count_flops, matmul_tflops


def alternate(ours, theirs, repeats: int) -> dict:
    """Median time of `ours` and `theirs`, run alternately after one warm-up each, and each one's peak tensor
    memory (MiB, `activation_peak`, measured in one more call)."""
    from svd_core.memory import activation_peak

    with torch.inference_mode():  # as the timed calls run (measure_wall); a grad-mode warm-up took our
        ours(), theirs()  # graph-safe paths and built diffusers' whole autograd graph (GiB of RSS)
    res = {"ours": [], "theirs": []}
    for _ in range(repeats):
        res["ours"].append(measure_wall(ours))
        res["theirs"].append(measure_wall(theirs))
    threads = torch.get_num_threads()
    out = {}
    for k, fn in (("ours", ours), ("theirs", theirs)):
        wall, cpu = (statistics.median(r[i] for r in res[k]) for i in (0, 1))
        out[f"wall_{k}"], out[f"cpu_{k}"] = wall, cpu
        out[f"time_{k}"] = cpu if threads == 1 else wall
        out[f"mem_{k}"] = activation_peak(fn) / 2 ** 20
    out["time_ratio"] = out["time_ours"] / out["time_theirs"]
    out["cpu_ratio"] = out["cpu_ours"] / out["cpu_theirs"]
    out["mem_ratio"] = out["mem_ours"] / out["mem_theirs"]
    return out


def build_pair(channels: int, frames: int, vae_ch: int = 64):
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel

    from svd_core.convert import state_dict_sgm_to_diffusers, unet_layout, vae_layout
    from svd_core.testing import tiny_model
    from svd_core.variants import TINY

    spec = replace(TINY, unet=replace(TINY.unet, model_channels=channels, num_head_channels=64 if channels >= 64 else 32,
                                      context_dim=1024), clip=replace(TINY.clip, embed_dim=1024),
                   vae=replace(TINY.vae, ch=vae_ch), name="bench")
    model = tiny_model(spec, seed=0)
    u = spec.unet
    ref_unet = UNetSpatioTemporalConditionModel(
        in_channels=8, out_channels=4, block_out_channels=tuple(u.model_channels * c for c in u.channel_mult),
        addition_time_embed_dim=256, projection_class_embeddings_input_dim=768, layers_per_block=2,
        cross_attention_dim=1024, num_attention_heads=tuple(u.model_channels * c // u.num_head_channels
                                                            for c in u.channel_mult), num_frames=frames)
    ref_unet.load_state_dict(state_dict_sgm_to_diffusers(model.unet.state_dict(), "unet", **unet_layout(u)))
    ref_vae = AutoencoderKLTemporalDecoder(down_block_types=("DownEncoderBlock2D",) * 4,
                                           block_out_channels=tuple(spec.vae.ch * c for c in spec.vae.ch_mult),
                                           latent_channels=4, layers_per_block=2)
    ref_vae.load_state_dict(state_dict_sgm_to_diffusers(model.first_stage_model.state_dict(), "vae",
                                                        **vae_layout(spec.vae)))
    return model, ref_unet.eval(), ref_vae.eval()


def make_runs(model, ref_unet, ref_vae, dtype, frames, latent, batch=2) -> dict:
    """{part: (ours, theirs)}: the UNet forward with CFG (batch 2) and the temporal decode of `frames` latents,
    both engines on the same inputs in `dtype`."""
    model, ref_unet, ref_vae = model.to(dtype), ref_unet.to(dtype), ref_vae.to(dtype)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, frames, 8, latent, latent, generator=g).to(dtype)
    ctx = torch.randn(batch, 1, 1024, generator=g).to(dtype)
    ids = torch.tensor([[6.0, 127.0, 0.02]] * batch)
    t = torch.full((batch,), 0.5)
    y = model.conditioner.vector({"fps_id": ids[:, 0], "motion_bucket_id": ids[:, 1], "cond_aug": ids[:, 2]}).to(dtype)

    def ours_unet():
        return model.unet(x.flatten(0, 1), t.repeat_interleave(frames), context=ctx.repeat_interleave(frames, 0),
                          y=y.repeat_interleave(frames, 0), num_video_frames=frames)  # b t ... -> (b t) ...

    def theirs_unet():
        return ref_unet(x, t, encoder_hidden_states=ctx, added_time_ids=ids.to(dtype)).sample

    z = torch.randn(frames, 4, latent, latent, generator=g).to(dtype)

    def ours_vae():
        return model.first_stage_model.decode(z, frames)

    def theirs_vae():
        return ref_vae.decode(z, num_frames=frames).sample

    return {"unet": (ours_unet, theirs_unet), "vae_decode": (ours_vae, theirs_vae)}


def bench_dtype(model, ref_unet, ref_vae, dtype, frames, latent, repeats, batch=2, parts=("unet", "vae_decode")) -> dict:
    runs = make_runs(model, ref_unet, ref_vae, dtype, frames, latent, batch)
    return {part: alternate(*runs[part], repeats) for part in parts}


# ------------------------------------------------------------------------------------------------ where time goes


def top_ops(fn, n: int = 8) -> list[tuple[str, float, float]]:
    """(op, self CPU ms, share of the total) of the `n` costliest ops of one `fn()` call (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: -e.self_cpu_time_total)
    return [(e.key, e.self_cpu_time_total / 1e3, e.self_cpu_time_total / total) for e in events[:n]]


@contextlib.contextmanager
def _patched(*patches):
    """Temporarily set (object, attribute, value) triples."""
    saved = [(obj, name, inspect.getattr_static(obj, name)) for obj, name, _ in patches]  # (staticmethods stay)
    try:
        for obj, name, value in patches:
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)


def ablations(model) -> dict:
    """{fast path: context manager that turns it off}: each swaps in the plain op the fast path replaces (same
    maths), so `--ablate` shows what the fast path buys."""
    import torch.nn.functional as F
    from torch import nn
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from svd_core import attention, layers, vae

    def plain_upsample(x, conv, out=None):
        y = conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return y if out is None else out.copy_(y)

    def plain_add(h, other):
        return h + other

    def plain_add_to(x, other, weight=None):
        return x + other if weight is None else torch.addcmul(x, weight, other)

    def plain_cross(self, x, context, s):  # VideoTransformerBlock._cross without its single-key branch
        if context.shape[0] * s == x.shape[0]:
            context = context.repeat_interleave(s, 0)  # b n c -> (b s) n c
        return self.attn2(self.norm2(x), context=context) + x

    @contextlib.contextmanager
    def nchw():
        model.set_channels_last(False)
        try:
            yield
        finally:
            model.set_channels_last(True)

    @contextlib.contextmanager
    def ff_chunk(n):
        model.unet.set_ff_chunk_size(n)
        try:
            yield
        finally:
            model.unet.set_ff_chunk_size(attention.DEFAULT_FF_CHUNK)

    return {
        "channels-last convs": nchw,
        "fused upsample conv": lambda: _patched((vae, "upsample_conv", plain_upsample),
                                                (layers, "upsample_conv", plain_upsample)),
        "in-place residuals": lambda: _patched(*[(m, "add_into", plain_add) for m in (layers, attention, vae)],
                                               *[(m, "add_to", plain_add_to) for m in (layers, attention, vae)]),
        "in-place SiLU": lambda: _patched((layers.NormSiLU, "forward", nn.SiLU.forward),
                                          (vae, "silu_after_norm", F.silu)),
        "temporal conv as Conv2d": lambda: _patched((layers.TemporalConv3d, "forward", nn.Conv3d.forward)),
        "single-key cross-attention": lambda: _patched(
            (attention.CrossAttention, "one_key_each", staticmethod(lambda x, context: False)),
            (attention.VideoTransformerBlock, "_cross", plain_cross)),
        "VAE per-frame slicing": lambda: _patched((vae, "SPATIAL_CHUNK_PIXELS", 1 << 40)),
        "VAE temporal half by rows": lambda: _patched((vae, "TEMPORAL_ROWS_PIXELS", 1 << 40)),
        "GEGLU as two Linears": lambda: _patched((attention, "GEGLU_SPLIT", False)),
        "group norm by channel sums (small channels-last maps)": lambda: _patched(
            (layers, "CHANNELS_LAST_NORM_PIXELS", 0)),
        "SDPA flash (vs math)": lambda: sdpa_kernel([SDPBackend.MATH]),
        "ff chunk 1024 (vs default)": lambda: ff_chunk(1024),
    }


UNET_ONLY = ("single-key cross-attention", "ff chunk 1024 (vs default)", "GEGLU as two Linears")
VAE_ONLY = ("VAE per-frame slicing", "VAE temporal half by rows")


def ablate(model, runs: dict, repeats: int) -> list[dict]:
    """Ours with each fast path on (default) and off, alternately: time and memory ratios off / on."""
    rows = []
    for name, off in ablations(model).items():
        for part, (ours, _) in runs.items():
            if name in (UNET_ONLY if part != "unet" else VAE_ONLY):
                continue
            def without(ours=ours, off=off):
                with off():
                    return ours()
            r = alternate(without, ours, repeats)
            rows.append({"switch": name, "part": part, "time_off_over_on": r["time_ratio"],
                         "mem_off_over_on": r["mem_ratio"]})
    return rows


# ------------------------------------------------------------------------------------------------ whole pipeline


def _pipeline_child(engine: str, threads: int, cfg: dict, repeats: int, seed: int) -> dict:
    """One engine's img2vid in this (spawned) process: the video, median seconds, peak RSS during the runs."""
    import gc

    from PIL import Image

    import gpu

    torch.set_num_threads(threads)
    base = gpu.make_models(small=True)
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (cfg["height"], cfg["width"], 3), generator=gen, dtype=torch.uint8)
    pil = Image.fromarray(pixels.numpy())
    image = pixels.permute(2, 0, 1)[None].float() / 255.0  # h w c -> 1 c h w, the same pixels
    noise = torch.randn(cfg["frames"], 4, cfg["height"] // 8, cfg["width"] // 8, generator=gen)
    device = torch.device("cpu")
    if engine == "diffusers":
        pipe = gpu.diffusers_pipeline(base, cfg["frames"])
        pipe.set_progress_bar_config(disable=True)
        del base
        run = lambda r: gpu.run_theirs(pipe, pil, noise, cfg, device, seed, r)  # noqa: E731
    else:
        base.set_channels_last(True)  # as svd_core.pipeline / the nodes run it
        run = lambda r: gpu.run_ours(base, image, noise, cfg, device, seed, r)  # noqa: E731
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the high-water mark from here on: weights + what the runs add
    timed, cpu = gpu.Run(engine, "float32"), []
    video = run(gpu.Run("warm-up", "float32"))
    for _ in range(repeats):
        t0 = time.process_time()  # CPU time too: robust to other load on a shared machine
        video = run(timed)
        cpu.append(time.process_time() - t0)
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    return {"video": video.float().numpy(), "seconds": statistics.median(timed.seconds),
            "cpu_seconds": statistics.median(cpu), "peak_rss_mib": hwm,
            "peak_extra_mib": timed.peak_bytes / 2 ** 20}


def pipeline(threads: int, repeats: int, frames: int, steps: int, size: int, decode_t: int, seed: int = 23) -> dict:
    """img2vid end to end, ours and diffusers each in its own spawned child process (same weights, image, noise,
    steps, frames, size and decode chunk); the two videos must agree before the timings count."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    import os

    cfg = dict(frames=frames, height=size, width=size, steps=steps, decode_t=decode_t)
    # glibc reads this at start-up: the spawned children return large freed buffers to the OS at once, so their
    # peak RSS is what the run held, not what the allocator kept
    saved = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    res = {}
    try:
        for engine in ("svd_core", "diffusers"):
            with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as ex:
                res[engine] = ex.submit(_pipeline_child, engine, threads, cfg, repeats, seed).result()
    finally:
        if saved is None:
            del os.environ["MALLOC_MMAP_THRESHOLD_"]
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = saved
    diff = float(abs(res["svd_core"].pop("video") - res["diffusers"].pop("video")).max())
    return {"threads": threads, "config": cfg, "max_abs_diff": diff, "ours": res["svd_core"],
            "diffusers": res["diffusers"],
            "time_ratio": res["svd_core"]["seconds"] / res["diffusers"]["seconds"],
            "cpu_ratio": res["svd_core"]["cpu_seconds"] / res["diffusers"]["cpu_seconds"],
            "rss_ratio": res["svd_core"]["peak_rss_mib"] / res["diffusers"]["peak_rss_mib"],
            "extra_ratio": res["svd_core"]["peak_extra_mib"] / max(res["diffusers"]["peak_extra_mib"], 1e-9)}


def full_size_plan(frames: int = 25, height: int = 576, width: int = 1024, dtype=torch.float16,
                   decode_t: int = 14) -> str:
    """Meta-device accounting at full size (svd_core.memory.LiveBytes): ours, and diffusers on the same shapes."""
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel

    from svd_core.memory import GiB, activation_peak
    from svd_core.memory import full_size_plan as plan

    ours = plan("svd_xt", frames, height, width, dtype, decode_t)
    with torch.device("meta"):  # diffusers' SVD-XT UNet and temporal VAE (their default / released configs)
        unet = UNetSpatioTemporalConditionModel(num_frames=frames)
        vae = AutoencoderKLTemporalDecoder(down_block_types=("DownEncoderBlock2D",) * 4,
                                           block_out_channels=(128, 256, 512, 512), layers_per_block=2)
    unet, vae = unet.to("meta", dtype).eval(), vae.to("meta", dtype).eval()  # a few buffers ignore the context
    h, w = height // 8, width // 8
    x = torch.empty(2, frames, 8, h, w, device="meta", dtype=dtype)
    ctx = torch.empty(2, 1, 1024, device="meta", dtype=dtype)
    ids = torch.empty(2, 3, device="meta", dtype=dtype)
    theirs_unet = activation_peak(lambda: unet(x, torch.empty(2, device="meta"), encoder_hidden_states=ctx,
                                               added_time_ids=ids))
    z = torch.empty(decode_t, 4, h, w, device="meta", dtype=dtype)
    theirs_vae = activation_peak(lambda: vae.decode(z, num_frames=decode_t))
    lines = ours.lines()
    lines.append(f"  diffusers on the same shapes: UNet forward {theirs_unet / GiB:.2f} GiB -> ratio "
                 f"{ours.unet_peak / theirs_unet:.2f}; decode {theirs_vae / GiB:.2f} GiB -> ratio "
                 f"{ours.decode_peak / theirs_vae:.2f}")
    return "\n".join(lines)


def bench_size(args, channels: int, frames: int) -> list[dict]:
    """Every dtype x thread count at one size: ratios, FLOPs, GFLOP/s and the matmul peak (+ profile, ablation)."""
    from svd_core.attention import DEFAULT_FF_CHUNK

    torch.manual_seed(0)
    model, ref_unet, ref_vae = build_pair(channels, frames, args.vae_ch)
    model.set_channels_last(True)  # as svd_core.pipeline runs it
    model.unet.set_ff_chunk_size(DEFAULT_FF_CHUNK)
    out = []
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        runs = make_runs(model, ref_unet, ref_vae, dtype, frames, args.latent)
        runs = {part: runs[part] for part in args.parts}
        flops = {part: {"ours": count_flops(o), "theirs": count_flops(t)} for part, (o, t) in runs.items()}
        off = ablations(model)
        with off["single-key cross-attention"](), off["fused upsample conv"]():  # the known difference
            for part, (o, _) in runs.items():
                flops[part]["ours_plain"] = count_flops(o)
        for threads in args.threads:
            torch.set_num_threads(threads)
            in_dtype = matmul_tflops(torch.device("cpu"), dtype, seconds=args.peak_seconds) * 1e3  # GFLOP/s
            # a CPU without bf16 / fp16 units computes them through float32: its float32 peak is the limit then
            peak = in_dtype if dtype == torch.float32 else max(
                in_dtype, matmul_tflops(torch.device("cpu"), torch.float32, seconds=args.peak_seconds) * 1e3)
            entry = {"channels": channels, "vae_ch": args.vae_ch, "frames": frames, "latent": args.latent,
                     "dtype": dtype_name, "threads": threads, "matmul_gflops": peak,
                     "matmul_gflops_in_dtype": in_dtype, "parts": {}}
            for part, (ours, theirs) in runs.items():
                r = alternate(ours, theirs, args.repeats)
                f = flops[part]
                r.update(flops_ours=f["ours"], flops_theirs=f["theirs"], flops_ours_plain=f["ours_plain"],
                         gflops_ours=f["ours"] / r["wall_ours"] / 1e9,
                         gflops_theirs=f["theirs"] / r["wall_theirs"] / 1e9,
                         limit_seconds=f["ours"] / (peak * 1e9))
                entry["parts"][part] = r
            if args.profile:
                entry["profile"] = {part: {"ours": top_ops(o), "theirs": top_ops(t)}
                                    for part, (o, t) in runs.items()}
            if args.ablate:
                entry["ablation"] = ablate(model, runs, args.repeats)
            out.append(entry)
            print("\n".join(entry_lines(entry)), flush=True)
    return out


def entry_lines(e: dict) -> list[str]:
    in_dtype = e.get("matmul_gflops_in_dtype", e["matmul_gflops"])
    note = "" if in_dtype == e["matmul_gflops"] else f" (float32's; {e['dtype']} matmul {in_dtype:.1f})"
    out = [f"-- model_channels {e['channels']} (VAE ch {e['vae_ch']}), {e['frames']} frames, {e['latent']}x"
           f"{e['latent']} latents, {e['dtype']}, {e['threads']} thread(s): physical limit = matmul peak "
           f"{e['matmul_gflops']:.1f} GFLOP/s{note}"]
    for part, r in e["parts"].items():
        out.append(f"  {part:<10} time {r['time_ours']:.3f}s vs {r['time_theirs']:.3f}s -> ratio {r['time_ratio']:.2f}"
                   f" (cpu {r['cpu_ratio']:.2f});  peak tensor memory {r['mem_ours']:.1f} vs {r['mem_theirs']:.1f} MiB"
                   f" -> ratio {r['mem_ratio']:.2f};  {r['flops_ours'] / 1e9:.2f} vs {r['flops_theirs'] / 1e9:.2f} "
                   f"GFLOP at {r['gflops_ours']:.1f} vs {r['gflops_theirs']:.1f} GFLOP/s "
                   f"({100 * r['gflops_ours'] / e['matmul_gflops']:.0f}% vs "
                   f"{100 * r['gflops_theirs'] / e['matmul_gflops']:.0f}% of the limit)")
    for part, engines in e.get("profile", {}).items():
        for engine, ops in engines.items():
            out.append(f"  top ops {part} {engine}: "
                       + ", ".join(f"{k} {ms:.0f}ms {100 * sh:.0f}%" for k, ms, sh in ops))
    if e.get("ablation"):
        out.append("  fast path off / on (ours):  " + "; ".join(
            f"{a['switch']} [{a['part']}] time {a['time_off_over_on']:.2f} mem {a['mem_off_over_on']:.2f}"
            for a in e["ablation"]))
    return out


def pipeline_lines(p: dict) -> list[str]:
    c, o, t = p["config"], p["ours"], p["diffusers"]
    return [f"-- img2vid end to end, {c['frames']} frames {c['width']}x{c['height']}, {c['steps']} steps CFG, decode "
            f"chunk {c['decode_t']}, {p['threads']} thread(s), each engine in its own process; max |video "
            f"difference| {p['max_abs_diff']:.1e}",
            f"  time {o['seconds']:.3f}s vs {t['seconds']:.3f}s -> ratio {p['time_ratio']:.2f} (cpu "
            f"{o['cpu_seconds']:.3f}s vs {t['cpu_seconds']:.3f}s -> {p['cpu_ratio']:.2f});  peak RSS "
            f"{o['peak_rss_mib']:.0f} vs {t['peak_rss_mib']:.0f} MiB -> ratio {p['rss_ratio']:.2f};  peak extra "
            f"{o['peak_extra_mib']:.0f} vs {t['peak_extra_mib']:.0f} MiB -> ratio {p['extra_ratio']:.2f}"]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="64x8,128x14", help="comma list of MODEL_CHANNELSxFRAMES")
    ap.add_argument("--latent", type=int, default=32)
    ap.add_argument("--vae-ch", type=int, default=64, help="the temporal VAE's base width (released: 128)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--threads", default="1,2", help="comma list of torch thread counts (both engines)")
    ap.add_argument("--parts", default="unet,vae_decode", help="comma list of forwards to time: unet, vae_decode")
    ap.add_argument("--peak-seconds", type=float, default=1.0, help="how long the matmul peak is measured")
    ap.add_argument("--profile", action="store_true", help="torch.profiler top ops of both engines")
    ap.add_argument("--ablate", action="store_true", help="ours with each fast path off vs on")
    ap.add_argument("--pipeline", action="store_true", help="img2vid end to end (child processes) instead")
    ap.add_argument("--pipeline-frames", type=int, default=8)
    ap.add_argument("--pipeline-steps", type=int, default=4)
    ap.add_argument("--pipeline-size", type=int, default=128)
    ap.add_argument("--pipeline-decode-t", type=int, default=4)
    ap.add_argument("--plan", action="store_true", help="also the full-size meta-device plan")
    ap.add_argument("--plan-only", action="store_true", help="only the full-size meta-device plan (seconds)")
    ap.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    args = ap.parse_args(argv)
    try:
        args.threads = [int(n) for n in args.threads.split(",")]
        args.parts = args.parts.split(",")
        if not args.parts or not set(args.parts) <= {"unet", "vae_decode"}:
            raise ValueError
        sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    except ValueError:
        ap.error(f"--threads {args.threads!r} / --sizes {args.sizes!r} / --parts {args.parts!r}: expected e.g. 1,2 "
                 "and 64x8,128x14 and unet,vae_decode")
    if args.plan_only:
        print(full_size_plan())
        return {}
    print(f"torch {torch.__version__}, {args.repeats} repeats, ours channels-last (as the pipeline runs it); "
          f"ratios are ours / diffusers", flush=True)
    report = {"torch": torch.__version__, "repeats": args.repeats, "forwards": [], "pipeline": []}
    if args.pipeline:
        for threads in args.threads:
            p = pipeline(threads, args.repeats, args.pipeline_frames, args.pipeline_steps, args.pipeline_size,
                         args.pipeline_decode_t)
            report["pipeline"].append(p)
            print("\n".join(pipeline_lines(p)), flush=True)
    else:
        for channels, frames in sizes:
            report["forwards"] += bench_size(args, channels, frames)
    if args.plan:
        print(full_size_plan())
    for e in report["forwards"]:
        for r in e["parts"].values():
            assert all(math.isfinite(v) for v in r.values()), r
    if args.json:
        tmp = args.json.with_name(f".{args.json.name}.partial")
        tmp.write_text(json.dumps(report, indent=1))
        tmp.replace(args.json)
    return report


if __name__ == "__main__":
    main()
