"""GPU benchmark: SVD-XT image-to-video end to end, ours vs diffusers' StableVideoDiffusionPipeline, same process.

    python bench/gpu.py                              # CUDA: full size (25 frames 1024x576, 25 steps, CFG), fp16 + bf16
    python bench/gpu.py --sdpa flash --compile       # one SDPA backend; torch.compile on both engines' UNet and VAE
    python bench/gpu.py --cuda-graphs                # torch.compile(mode="reduce-overhead"): CUDA graphs
    python bench/gpu.py --small --device cpu         # a tiny model at 128x128, any device (CI runs this: no timings
                                                     # are asserted, it proves the script works end to end)

Both engines get the same random weights in the real layout (svd_core.testing.diffusers_pipeline maps them), the
same image, initial noise and settings (Euler, Karras sigmas 700 -> 0.002, linear CFG 1.5 -> 3.0 over the frames,
fps 7, motion bucket 127, cond_aug 0.02, decode chunk 14) and run alternately, `--repeats` times each. Reported per
engine and dtype: seconds per video (median), per-step time (median over the sampling steps), peak memory (CUDA:
`max_memory_allocated`; CPU: the resident high-water mark above the start), and the ratio ours / diffusers.

The physical limit: FLOPs per video counted by `torch.utils.flop_counter` on the meta device (conditioning + steps
x one guided UNet forward + the temporal decode), divided by the device's dense matmul throughput measured in the
same run (a large square matmul in that dtype): `physical limit` is that quotient, `% of limit` the share of it a
run reaches. At full size ours counts 3,903 TFLOP per video (UNet step 149.9, decode 152.0, conditioning 2.9);
diffusers' UNet step counts 159.9 TFLOP on the same shapes (~4,150 per video): it computes the cross-attention
over SVD's single CLIP token in full, where ours uses that softmax over one key is 1.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from svd_core import pipeline as P  # noqa: E402
from svd_core.guidance import Guidance  # noqa: E402
from svd_core.testing import diffusers_pipeline, randomize_  # noqa: E402
from svd_core.variants import SVD_XT, TINY  # noqa: E402

FULL = dict(frames=25, height=576, width=1024, steps=25, decode_t=14)
SMALL = dict(frames=4, height=128, width=128, steps=2, decode_t=4)
# diffusers' CLIP input is fixed at 224 px: the tiny CLIP uses 224 px with 32-px patches (as the parity test does)
TINY_224 = replace(TINY, name="bench_tiny", clip=replace(TINY.clip, image_size=224, patch_size=32), num_frames=4)
SDPA = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "math": "MATH", "cudnn": "CUDNN_ATTENTION"}


@dataclass
class Run:
    engine: str
    dtype: str
    seconds: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    peak_bytes: int = 0

    def summary(self) -> dict:
        return {"engine": self.engine, "dtype": self.dtype, "seconds_per_video": statistics.median(self.seconds),
                "step_seconds": statistics.median(self.step_seconds) if self.step_seconds else None,
                "peak_gib": self.peak_bytes / 2 ** 30, "runs": len(self.seconds)}


# ------------------------------------------------------------------------------------------------ measurement


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_kib(name: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(name))


@contextlib.contextmanager
def peak_memory(device: torch.device, run: Run):
    """Peak bytes above the start of the block: the allocator's on CUDA, the resident high-water mark on CPU."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield
        run.peak_bytes = max(run.peak_bytes, torch.cuda.max_memory_allocated(device) - base)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS (Linux)
        base = _rss_kib("VmRSS")
    except OSError:
        base = None
    yield
    if base is not None:
        run.peak_bytes = max(run.peak_bytes, (_rss_kib("VmHWM") - base) * 1024)


def matmul_tflops(device: torch.device, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """Dense matmul throughput of this device in `dtype` (TFLOP/s): the physical-limit line."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    for _ in range(3):
        a @ b
    sync(device)
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        count += 1
        if device.type == "cuda" and count % 10:
            continue
        sync(device)
    sync(device)
    return 2 * n ** 3 * count / (time.perf_counter() - t0) / 1e12


def count_flops(fn) -> int:
    """FLOPs of `fn()` as `torch.utils.flop_counter` counts them (matmuls, convs, attention), under inference mode:
    the one FLOP count of the benchmarks (bench_vs_diffusers.py uses it for both engines' forwards)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def video_flops(spec, frames: int, height: int, width: int, steps: int, decode_t: int, cfg: bool = True) -> dict:
    """FLOPs of one video counted on the meta device (nothing allocated): conditioning, UNet steps, decode."""
    from svd_core.model import build

    model = build(spec, device="meta")
    h, w = height // 8, width // 8
    batch = 2 if cfg else 1
    meta = dict(device="meta")
    count = count_flops

    y = torch.empty(batch * frames, spec.unet.adm_in_channels, **meta)
    unet = count(lambda: model.unet(torch.empty(batch * frames, spec.unet.in_channels, h, w, **meta),
                                    torch.empty(batch * frames, **meta),
                                    context=torch.empty(batch * frames, 1, spec.unet.context_dim, **meta), y=y,
                                    num_video_frames=frames))
    fs = model.first_stage_model
    decode = sum(count(lambda n=n: fs.decode(torch.empty(n, spec.vae.z_channels, h, w, **meta), n))
                 for n in [decode_t] * (frames // decode_t) + ([frames % decode_t] if frames % decode_t else []))
    image = torch.empty(1, 3, height, width, **meta)
    cond = count(lambda: model.conditioner.clip(image)) + count(lambda: model.conditioner.vae_encoder(image))
    return {"unet_step": unet, "decode": decode, "conditioning": cond, "video": cond + steps * unet + decode}


# ------------------------------------------------------------------------------------------------ engines


def make_models(small: bool, seed: int = 0):
    from svd_core.model import build

    if small:
        model = build(TINY_224, device="cpu")
        randomize_(model, seed)
    else:
        model = build(SVD_XT, device="cpu")  # default init: values do not change the speed of dense kernels
    # the conditioner's encoder copy equals the first stage (as in released files), identity quant conv
    enc = model.conditioner.vae_encoder.encoder
    with torch.no_grad():
        enc.encoder.load_state_dict(model.first_stage_model.encoder.state_dict())
        enc.quant_conv.weight.copy_(torch.eye(enc.quant_conv.weight.shape[0])[:, :, None, None])
        enc.quant_conv.bias.zero_()
    return model


def compile_engines(model, pipe, mode: str | None) -> None:
    """torch.compile both engines' UNet and VAE decoder in place (nn.Module.compile keeps every attribute)."""
    for module in (model.unet, model.first_stage_model.decoder, pipe.unet, pipe.vae.decoder):
        module.compile(mode=mode, dynamic=False)


def sdpa_context(name: str):
    if name == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, SDPA[b]) for b in name.split(",")])


def run_ours(model, image, noise, cfg: dict, device, seed: int, run: Run) -> torch.Tensor:
    stamps = []

    def progress(i, n, stage=None):
        if stage == "sampling":
            sync(device)
            stamps.append(time.perf_counter())

    with peak_memory(device, run):
        sync(device)
        t0 = time.perf_counter()
        video = P.img2vid(model, image, num_frames=cfg["frames"], width=cfg["width"], height=cfg["height"], fps=7,
                          motion_bucket_id=127, cond_aug=0.02, guidance=Guidance("linear", 1.5, 3.0),
                          steps=cfg["steps"], seed=seed, decode_t=cfg["decode_t"], noise=noise, device=device,
                          callback=progress)
        sync(device)
    run.seconds.append(time.perf_counter() - t0)
    run.step_seconds += [b - a for a, b in zip(stamps, stamps[1:])]
    return video


def run_theirs(pipe, pil, noise, cfg: dict, device, seed: int, run: Run) -> torch.Tensor:
    stamps = []

    def on_step(_pipe, i, t, kwargs):
        sync(device)
        stamps.append(time.perf_counter())
        return kwargs

    with peak_memory(device, run), torch.no_grad():
        sync(device)
        t0 = time.perf_counter()
        video = pipe(pil, height=cfg["height"], width=cfg["width"], num_frames=cfg["frames"],
                     num_inference_steps=cfg["steps"], min_guidance_scale=1.5, max_guidance_scale=3.0, fps=7,
                     motion_bucket_id=127, noise_aug_strength=0.02, decode_chunk_size=cfg["decode_t"],
                     generator=torch.Generator().manual_seed(seed), latents=noise[None].to(device, pipe.unet.dtype),
                     output_type="pt", callback_on_step_end=on_step).frames
        sync(device)
    run.seconds.append(time.perf_counter() - t0)
    run.step_seconds += [b - a for a, b in zip(stamps, stamps[1:])]
    return video.float().cpu()


# ------------------------------------------------------------------------------------------------ main


def bench(args) -> dict:
    from PIL import Image

    device = torch.device(args.device)
    cfg = dict(SMALL if args.small else FULL)
    cfg.update({k: v for k, v in (("frames", args.frames), ("steps", args.steps)) if v})
    base = make_models(args.small)
    spec = base.spec
    flops = video_flops(spec, cfg["frames"], cfg["height"], cfg["width"], cfg["steps"], cfg["decode_t"])
    pipe = diffusers_pipeline(base, cfg["frames"]) if not args.no_diffusers else None
    if pipe is not None:
        pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(args.seed)
    pixels = torch.randint(0, 256, (cfg["height"], cfg["width"], 3), generator=gen, dtype=torch.uint8)
    pil = Image.fromarray(pixels.numpy())  # diffusers resizes for CLIP only when given a PIL image
    image = pixels.permute(2, 0, 1)[None].float() / 255.0  # h w c -> 1 c h w, the same pixels
    noise = torch.randn(cfg["frames"], 4, cfg["height"] // 8, cfg["width"] // 8, generator=gen)
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "config": cfg, "sdpa": args.sdpa, "compile": args.compile,
              "cuda_graphs": args.cuda_graphs, "flops": flops, "results": []}
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        model = base.to(device, dtype)
        if pipe is not None:
            pipe = pipe.to(device, dtype)
        if args.compile or args.cuda_graphs:
            compile_engines(model, pipe, "reduce-overhead" if args.cuda_graphs else None)
        peak = matmul_tflops(device, dtype)
        ours, theirs = Run("svd_core", dtype_name), Run("diffusers", dtype_name)
        with sdpa_context(args.sdpa):
            for i in range(args.repeats + 1):  # the first round warms up (kernels, allocator, compile)
                o, t = Run("warm-up", dtype_name), Run("warm-up", dtype_name)
                video = run_ours(model, image, noise, cfg, device, args.seed, ours if i else o)
                ref = run_theirs(pipe, pil, noise, cfg, device, args.seed, theirs if i else t) if pipe else None
        entry = {"dtype": dtype_name, "matmul_tflops": peak, "limit_seconds": flops["video"] / (peak * 1e12),
                 "ours": ours.summary(), "frames_shape": list(video.shape)}
        if ref is not None:
            entry["diffusers"] = theirs.summary()
            entry["max_abs_diff"] = (video - ref).abs().max().item()
            entry["time_ratio"] = entry["ours"]["seconds_per_video"] / entry["diffusers"]["seconds_per_video"]
            entry["memory_ratio"] = ours.peak_bytes / max(theirs.peak_bytes, 1)
        report["results"].append(entry)
    return report


def lines(report: dict) -> list[str]:
    cfg, fl = report["config"], report["flops"]
    out = [f"device {report['device']}, torch {report['torch']}; {cfg['frames']} frames at {cfg['width']}x"
           f"{cfg['height']}, {cfg['steps']} steps with CFG, decode chunk {cfg['decode_t']}; sdpa {report['sdpa']}, "
           f"compile {report['compile']}, cuda graphs {report['cuda_graphs']}",
           f"FLOPs per video {fl['video'] / 1e12:,.4g} TFLOP (UNet step {fl['unet_step'] / 1e12:,.4g}, decode "
           f"{fl['decode'] / 1e12:,.4g}, conditioning {fl['conditioning'] / 1e12:,.4g})"]
    for e in report["results"]:
        out.append(f"{e['dtype']}: matmul peak {e['matmul_tflops']:.4g} TFLOP/s -> physical limit "
                   f"{e['limit_seconds']:.2f} s per video")
        for name in ("ours", "diffusers"):
            if name in e:
                r = e[name]
                out.append(f"  {r['engine']:<9} {r['seconds_per_video']:8.2f} s/video  step "
                           f"{(r['step_seconds'] or 0) * 1e3:8.1f} ms  peak {r['peak_gib']:6.2f} GiB  "
                           f"{100 * e['limit_seconds'] / r['seconds_per_video']:5.1f} % of limit")
        if "time_ratio" in e:
            out.append(f"  ours / diffusers: time {e['time_ratio']:.2f}, memory {e['memory_ratio']:.2f}; "
                       f"max |frames difference| {e['max_abs_diff']:.1e}")
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--small", action="store_true", help="tiny model at 128x128, 4 frames, 2 steps (any device)")
    ap.add_argument("--dtypes", default=None, help="comma list; default float16,bfloat16 (CUDA), float32 (CPU)")
    ap.add_argument("--frames", type=int, default=0, help="override the frame count")
    ap.add_argument("--steps", type=int, default=0, help="override the sampling steps")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per engine after one warm-up round")
    ap.add_argument("--seed", type=int, default=23)
    ap.add_argument("--sdpa", default="auto", help=f"auto or a comma list of {sorted(SDPA)}")
    ap.add_argument("--compile", action="store_true", help="torch.compile the UNet and VAE decoder of both engines")
    ap.add_argument("--cuda-graphs", action="store_true", help="torch.compile(mode='reduce-overhead')")
    ap.add_argument("--no-diffusers", action="store_true", help="ours only")
    ap.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    args = ap.parse_args(argv)
    if args.sdpa != "auto" and not set(args.sdpa.split(",")) <= set(SDPA):
        ap.error(f"--sdpa {args.sdpa!r}: expected auto or a comma list of {sorted(SDPA)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here; use --device cpu --small")
    if not args.small and not args.device.startswith("cuda"):
        ap.error("full size needs a GPU (about 10 GiB in fp16); use --small on the CPU")
    args.dtypes = args.dtypes or ("float16,bfloat16" if args.device.startswith("cuda") else "float32")
    report = bench(args)
    print("\n".join(lines(report)))
    if args.json:
        tmp = args.json.with_name(f".{args.json.name}.partial")
        tmp.write_text(json.dumps(report, indent=2))
        tmp.replace(args.json)
    return report


if __name__ == "__main__":
    main()
