"""svd_core vs diffusers on the same weights, in one process, alternating runs: UNet forward and temporal-VAE
decode time and peak memory, reported as ratios (ours / diffusers). Plus a full-size plan (SVD-XT, 25 frames at
576x1024, fp16) from meta-device accounting of both engines' real forward code (svd_core.memory).

    python bench/bench_vs_diffusers.py [--channels 64] [--frames 8] [--latent 32] [--repeats 3] [--dtypes float32,bfloat16]

Peak memory on CPU is the process's resident high-water mark (VmHWM), reset before every run through
/proc/self/clear_refs, minus the resident size when the run started: the extra memory the forward needed.
"""
from __future__ import annotations

import argparse
import statistics
from dataclasses import replace

import torch

from _memory import ensure_mmap_threshold, measure


def alternate(ours, theirs, repeats: int) -> dict:
    ours(), theirs()  # warm-up (allocator, kernels)
    res = {"ours": [], "theirs": []}
    for _ in range(repeats):
        res["ours"].append(measure(ours))
        res["theirs"].append(measure(theirs))
    t_o, t_t = (statistics.median(r[0] for r in res[k]) for k in ("ours", "theirs"))
    m_o, m_t = (max(r[1] for r in res[k]) for k in ("ours", "theirs"))
    return {"time_ours": t_o, "time_theirs": t_t, "time_ratio": t_o / t_t,
            "mem_ours": m_o, "mem_theirs": m_t, "mem_ratio": m_o / max(m_t, 1e-9)}


def build_pair(channels: int, frames: int):
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel

    from svd_core.convert import state_dict_sgm_to_diffusers, unet_layout, vae_layout
    from svd_core.testing import tiny_model
    from svd_core.variants import TINY

    spec = replace(TINY, unet=replace(TINY.unet, model_channels=channels, num_head_channels=64 if channels >= 64 else 32,
                                      context_dim=1024), clip=replace(TINY.clip, embed_dim=1024),
                   vae=replace(TINY.vae, ch=64), name="bench")
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


def bench_dtype(model, ref_unet, ref_vae, dtype, frames, latent, repeats, batch=2, parts=("unet", "vae_decode")) -> dict:
    model, ref_unet, ref_vae = model.to(dtype), ref_unet.to(dtype), ref_vae.to(dtype)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, frames, 8, latent, latent, generator=g).to(dtype)
    ctx = torch.randn(batch, 1, 1024, generator=g).to(dtype)
    ids = torch.tensor([[6.0, 127.0, 0.02]] * batch)
    t = torch.full((batch,), 0.5)
    y = model.conditioner.vector({"fps_id": ids[:, 0], "motion_bucket_id": ids[:, 1], "cond_aug": ids[:, 2]}).to(dtype)

    def ours_unet():
        model.unet(x.flatten(0, 1), t.repeat_interleave(frames), context=ctx.repeat_interleave(frames, 0),
                   y=y.repeat_interleave(frames, 0), num_video_frames=frames)

    def theirs_unet():
        ref_unet(x, t, encoder_hidden_states=ctx, added_time_ids=ids.to(dtype))

    z = torch.randn(frames, 4, latent, latent, generator=g).to(dtype)

    def ours_vae():
        model.first_stage_model.decode(z, frames)

    def theirs_vae():
        ref_vae.decode(z, num_frames=frames)

    runs = {"unet": (ours_unet, theirs_unet), "vae_decode": (ours_vae, theirs_vae)}
    return {part: alternate(*runs[part], repeats) for part in parts}


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


def main() -> None:
    ensure_mmap_threshold()
    ap = argparse.ArgumentParser()
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--latent", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both engines (1: least noise)")
    ap.add_argument("--ff-chunk", type=int, default=0,
                    help="also measure ours with set_ff_chunk_size(N) (the default is attention.DEFAULT_FF_CHUNK)")
    ap.add_argument("--nchw", action="store_true", help="ours without channels-last convs (the pipeline default is on)")
    ap.add_argument("--plan-only", action="store_true", help="only the full-size meta-device plan (seconds)")
    args = ap.parse_args()
    from svd_core.attention import DEFAULT_FF_CHUNK
    torch.set_num_threads(args.threads)
    if args.plan_only:
        print(full_size_plan())
        return
    torch.manual_seed(0)
    model, ref_unet, ref_vae = build_pair(args.channels, args.frames)
    model.set_channels_last(not args.nchw)  # as svd_core.pipeline runs it
    print(f"config: model_channels {args.channels}, {args.frames} frames, {args.latent}x{args.latent} latents, "
          f"batch 2 (cfg), torch {torch.__version__}, {torch.get_num_threads()} threads, ours "
          f"{'NCHW' if args.nchw else 'channels-last'}")
    for name in args.dtypes.split(","):
        model.unet.set_ff_chunk_size(DEFAULT_FF_CHUNK)  # the engine's default (no slicing at rows <= the chunk)
        res = bench_dtype(model, ref_unet, ref_vae, getattr(torch, name), args.frames, args.latent, args.repeats)
        if args.ff_chunk:
            model.unet.set_ff_chunk_size(args.ff_chunk)
            res[f"unet+ff{args.ff_chunk}"] = bench_dtype(model, ref_unet, ref_vae, getattr(torch, name), args.frames,
                                                          args.latent, args.repeats, parts=("unet",))["unet"]
        for part, r in res.items():
            print(f"{name:>9} {part:<10} time {r['time_ours']:.3f}s vs {r['time_theirs']:.3f}s -> ratio "
                  f"{r['time_ratio']:.2f};  peak extra memory {r['mem_ours']:.0f} MiB vs {r['mem_theirs']:.0f} MiB "
                  f"-> ratio {r['mem_ratio']:.2f}")
    print(full_size_plan())


if __name__ == "__main__":
    main()
