"""Full-size memory plan without a GPU (issue 13 item 4, issue 16 item 3): per stage of one img2vid run (CLIP image
encoder, VAE encode, one guided UNet step, VAE decode of every frame), the resident weights plus the activation peak,
from meta-device accounting of the real forward code (`svd_core.memory.LiveBytes`: nothing is allocated), for the
engine's memory settings; then the same stages for diffusers' best memory settings and ComfyUI's native SVD UNet,
as ratios. Prints markdown tables. The last rows are the default settings as a run chooses its CFG batching by
memory ("auto", `svd_core.memory.cfg_in_turn`) on a device of `--budget` GiB (`--fp8-budget` with fp8 UNet
weights): which batching it picked and whether the whole run fits.

    python bench/memory_plan.py                      # SVD-XT, 25 frames, 1024x576, fp16 (a few minutes of CPU)
    python bench/memory_plan.py --tiny               # the tiny test model at a small size (seconds; CI)
    python bench/memory_plan.py --peers none         # only the engine's table

Weights count as stored (fp8 weights one byte each). Kernel workspaces and allocator slack come on top of the
activation peaks (as for every engine in the tables).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from svd_core.memory import (GiB, STAGE_LABELS, STAGES, MemoryOptions, StagePlan, activation_peak,  # noqa: E402
                             meta_model, plan_stages)

UNIT = {"GiB": GiB, "MiB": 2 ** 20}


def configurations(tile: int, tile_overlap: int, short_t: int, budget: float = 8, fp8_budget: float = 6,
                   unit: str = "GiB") -> list[tuple[str, MemoryOptions, int | None]]:
    """The engine's rows (label, options, device budget in bytes or None): the default with both CFG branches in
    one batch, then one change at a time from per-stage offload, the smallest, and last the default settings as a
    run picks its CFG batching by memory ("auto", `svd_core.memory.cfg_in_turn`) on a device of `budget` (bf16 /
    fp16 weights) or `fp8_budget` (fp8 UNet weights) `unit`s."""
    off, together = MemoryOptions(offload=True), MemoryOptions(cfg_batch="together")
    return [
        (f"default: all weights resident (ff chunk {together.ff_chunk}, decode_t {together.decode_t}, CFG branches "
         "in one batch)", together, None),
        ("per-stage offload (only the running stage resident)", replace(off, cfg_batch="together"), None),
        ("offload + fp8 UNet weights", replace(off, fp8=True, cfg_batch="together"), None),
        ("offload, feed-forward chunking off", replace(off, ff_chunk=None, cfg_batch="together"), None),
        ("offload + UNet one video at a time (CFG branches in turn)", replace(off, cfg_batch="in turn"), None),
        (f"offload + temporal decode window decode_t {short_t}", replace(off, decode_t=short_t, cfg_batch="together"),
         None),
        (f"offload + spatial decode tiles {tile} (overlap {tile_overlap})",
         replace(off, decode_tile=tile, decode_tile_overlap=tile_overlap, cfg_batch="together"), None),
        ("offload + fp8 + CFG branches in turn", replace(off, fp8=True, cfg_batch="in turn"), None),
        ("offload + fp8 + CFG branches in turn + spatial decode tiles",
         replace(off, fp8=True, cfg_batch="in turn", decode_tile=tile, decode_tile_overlap=tile_overlap), None),
        (f"default (CFG batching auto) on a {budget:g} {unit} device", MemoryOptions(), int(budget * UNIT[unit])),
        (f"default (CFG batching auto) + fp8 UNet weights on a {fp8_budget:g} {unit} device",
         MemoryOptions(fp8=True), int(fp8_budget * UNIT[unit])),
        (f"per-stage offload (CFG batching auto) on a {budget:g} {unit} device", off, int(budget * UNIT[unit])),
        (f"per-stage offload (CFG batching auto) + fp8 UNet weights on a {fp8_budget:g} {unit} device",
         replace(off, fp8=True), int(fp8_budget * UNIT[unit])),
    ]


def our_plans(spec, frames, height, width, dtype, rows, memo: dict | None = None
              ) -> list[tuple[str, MemoryOptions, StagePlan]]:
    """Each row's plan; a stage is measured once per distinct setting (fp8 changes the UNet stage only). `memo`:
    {"models": {fp8: meta model}, "cache": stage peaks} of earlier plans of the same spec, size and dtype."""
    memo = {} if memo is None else memo
    models, cache = memo.setdefault("models", {}), memo.setdefault("cache", {})
    out = []
    for label, options, budget in rows:
        if options.fp8 not in models:
            models[options.fp8] = meta_model(spec, dtype, options.fp8)
        plan = plan_stages(spec, frames, height, width, dtype, options, models[options.fp8], cache, budget)
        if budget is not None:
            label += f": CFG branches {'in turn' if plan.cfg_in_turn else 'in one batch'}, " + \
                     ("fits" if plan.total <= budget else "does NOT fit")
        out.append((label, options, plan))
    return out


def _bytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


def diffusers_plan(spec, frames, height, width, dtype, decode_chunk: int) -> tuple[StagePlan, StagePlan]:
    """diffusers' StableVideoDiffusionPipeline modules on the meta device, with `enable_forward_chunking()` and
    `decode_chunk_size`: (everything resident, model CPU offload)."""
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    mc, c = spec.unet.model_channels, spec.clip
    with torch.device("meta"):
        unet = UNetSpatioTemporalConditionModel(
            sample_size=height // 8, in_channels=8, out_channels=4,
            block_out_channels=tuple(mc * m for m in spec.unet.channel_mult), addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=spec.unet.adm_in_channels, layers_per_block=2,
            cross_attention_dim=spec.unet.context_dim,
            num_attention_heads=tuple(mc * m // spec.unet.num_head_channels for m in spec.unet.channel_mult),
            num_frames=frames)
        vae = AutoencoderKLTemporalDecoder(down_block_types=("DownEncoderBlock2D",) * len(spec.vae.ch_mult),
                                           block_out_channels=tuple(spec.vae.ch * m for m in spec.vae.ch_mult),
                                           latent_channels=4, layers_per_block=2)
        clip = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=c.width, intermediate_size=int(c.width * c.mlp_ratio), projection_dim=c.embed_dim,
            num_hidden_layers=c.layers, num_attention_heads=c.width // c.head_width, image_size=c.image_size,
            patch_size=c.patch_size, hidden_act="gelu"))
    unet, vae, clip = (m.to("meta", dtype).eval() for m in (unet, vae, clip))
    unet.enable_forward_chunking()  # their feed-forward chunking (chunk 1 along the token axis)
    h, w = height // 8, width // 8
    pixels = torch.empty(1, 3, c.image_size, c.image_size, device="meta", dtype=dtype)
    image = torch.empty(1, 3, height, width, device="meta", dtype=dtype)
    x = torch.empty(2, frames, 8, h, w, device="meta", dtype=dtype)
    ctx = torch.empty(2, 1, spec.unet.context_dim, device="meta", dtype=dtype)
    ids = torch.empty(2, 3, device="meta", dtype=dtype)
    z = torch.empty(frames, 4, h, w, device="meta", dtype=dtype)

    def decode_latents():  # StableVideoDiffusionPipeline.decode_latents: chunks decoded, then concatenated
        pieces = [vae.decode(z[i:i + decode_chunk], num_frames=len(z[i:i + decode_chunk])).sample
                  for i in range(0, frames, decode_chunk)]
        return torch.cat(pieces)

    acts = {"clip": activation_peak(lambda: clip(pixels).image_embeds),
            "vae_encode": activation_peak(lambda: vae.encode(image).latent_dist.mode()),
            "unet": activation_peak(lambda: unet(x, torch.empty(2, device="meta"), encoder_hidden_states=ctx,
                                                 added_time_ids=ids).sample),
            "vae_decode": activation_peak(decode_latents)}
    own = {"clip": _bytes(clip), "vae_encode": _bytes(vae.encoder) + _bytes(vae.quant_conv), "unet": _bytes(unet),
           "vae_decode": _bytes(vae.decoder)}
    total = _bytes(clip) + _bytes(vae) + _bytes(unet)
    return StagePlan({s: total for s in STAGES}, acts), StagePlan(own, acts)


def comfy_unet_peak(spec, frames, height, width, dtype) -> tuple[int, int]:
    """ComfyUI's native SVD UNet (openaimodel.UNetModel with the svd config found from our key layout) on the meta
    device, with SDPA attention: (weight bytes, activation peak of one guided step)."""
    comfy_dir = Path(__import__("os").environ.get("SVD_COMFYUI_DIR", REPO / ".cache" / "comfyui"))
    sys.path.insert(0, str(comfy_dir))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.ldm.modules.attention as comfy_attention
    import comfy.model_detection
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    # the attention ComfyUI picks on an NVIDIA GPU with a current torch (SDPA); its CPU choice (sub-quadratic)
    # sizes itself from the device's free memory, which a meta tensor does not have
    comfy_attention.optimized_attention = comfy_attention.attention_pytorch

    ours = meta_model(spec, dtype)
    config = comfy.model_detection.detect_unet_config(ours.state_dict(), "model.diffusion_model.")
    config.update(num_heads=-1, num_head_channels=spec.unet.num_head_channels, attn_precision=torch.float32)
    unet = UNetModel(**config, operations=comfy.ops.disable_weight_init, device="meta", dtype=dtype).eval()
    b, h, w = 2 * frames, height // 8, width // 8
    x = torch.empty(b, spec.unet.in_channels, h, w, device="meta", dtype=dtype)
    ctx = torch.empty(b, 1, spec.unet.context_dim, device="meta", dtype=dtype)
    y = torch.empty(b, spec.unet.adm_in_channels, device="meta", dtype=dtype)
    peak = activation_peak(lambda: unet(x, torch.empty(b, device="meta"), context=ctx, y=y, transformer_options={},
                                        num_video_frames=frames,
                                        image_only_indicator=torch.zeros(2, frames, device="meta")))
    return _bytes(unet), peak


def _cell(plan: StagePlan, stage: str, unit: int) -> str:
    return f"{plan.weights[stage] / unit:.2f} + {plan.activations[stage] / unit:.2f} = {plan.peak(stage) / unit:.2f}"


def table(rows, unit_name: str) -> list[str]:
    unit = UNIT[unit_name]
    head = ["configuration"] + [STAGE_LABELS[s] for s in STAGES] + ["whole run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, plan in rows:
        lines.append("| " + " | ".join([label] + [_cell(plan, s, unit) for s in STAGES]
                                       + [f"**{plan.total / unit:.2f}**"]) + " |")
    return lines


def ratio_table(pairs) -> list[str]:
    head = ["ours / peer"] + [STAGE_LABELS[s] for s in STAGES] + ["whole run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, ours, theirs in pairs:
        cells = [f"{ours.peak(s) / theirs.peak(s):.2f}" for s in STAGES] + [f"{ours.total / theirs.total:.2f}"]
        lines.append("| " + " | ".join([label] + cells) + " |")
    return lines


def main(argv=None, memo: dict | None = None) -> dict:
    """The tables (printed) and their figures; `memo`: see `our_plans` (tests share measurements)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="svd_xt")
    ap.add_argument("--frames", type=int, default=None, help="default: the variant's (25 for svd_xt)")
    ap.add_argument("--height", type=int, default=576)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16")
    ap.add_argument("--tile", type=int, default=32, help="spatial decode tile, latent pixels")
    ap.add_argument("--tile-overlap", type=int, default=8)
    ap.add_argument("--short-t", type=int, default=7, help="the shorter temporal decode window row")
    ap.add_argument("--budget", type=float, default=8, help="device memory of the CFG-auto rows (GiB; --tiny: MiB)")
    ap.add_argument("--fp8-budget", type=float, default=6, help="the same for the fp8-weight rows")
    ap.add_argument("--peers", default="diffusers,comfyui", help="comma list of diffusers, comfyui, or none")
    ap.add_argument("--tiny", action="store_true", help="the tiny test model (reduced size, for CI)")
    ap.add_argument("--json", default="", help="also write the figures (bytes) here")
    args = ap.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    if args.tiny:
        from svd_core.testing import TINY_XT

        spec, unit = TINY_XT, "MiB"
    else:
        from svd_core.variants import get_variant

        spec, unit = get_variant(args.variant), "GiB"
    frames = args.frames or spec.num_frames
    size = f"{spec.name}, {frames} frames at {args.width}x{args.height}, {args.dtype}"
    ours = our_plans(spec, frames, args.height, args.width, dtype,
                     configurations(args.tile, args.tile_overlap, args.short_t, args.budget, args.fp8_budget, unit),
                     memo)
    print(f"### Engine: weights + activation peak = {unit} per stage ({size})\n")
    print("\n".join(table([(label, plan) for label, _, plan in ours], unit)))
    result = {"size": size, "ours": {label: {"options": vars(o) if hasattr(o, "__dict__") else str(o),
                                             "weights": p.weights, "activations": p.activations, "total": p.total,
                                             "cfg_in_turn": p.cfg_in_turn}
                                     for label, o, p in ours}}
    peers = [] if args.peers == "none" else args.peers.split(",")
    plan_of = {label: plan for label, _, plan in ours}
    default, offload = plan_of[ours[0][0]], plan_of[ours[1][0]]
    if "diffusers" in peers:
        decode_chunk = min(14, frames)
        resident, cpu_offload = diffusers_plan(spec, frames, args.height, args.width, dtype, decode_chunk)
        print(f"\n### diffusers, best memory settings (enable_forward_chunking, decode_chunk_size {decode_chunk}): "
              f"{unit}\n")
        print("\n".join(table([("all resident", resident), ("model CPU offload", cpu_offload)], unit)))
        print("\n" + "\n".join(ratio_table([("default vs all resident", default, resident),
                                             ("offload vs model CPU offload", offload, cpu_offload)])))
        result["diffusers"] = {"resident": resident.as_dict(), "offload": cpu_offload.as_dict(),
                               "activations": resident.activations}
    if "comfyui" in peers:
        weights, peak = comfy_unet_peak(spec, frames, args.height, args.width, dtype)
        ours_unet = offload.activations["unet"]
        print(f"\n### ComfyUI native SVD UNet (openaimodel.UNetModel, svd config), one guided step: weights "
              f"{weights / UNIT[unit]:.2f} {unit}, activation peak {peak / UNIT[unit]:.2f} {unit}; ours "
              f"{ours_unet / UNIT[unit]:.2f} {unit} -> ratio {ours_unet / peak:.2f} (weights ratio "
              f"{offload.weights['unet'] / weights:.2f})")
        result["comfyui"] = {"unet_weights": weights, "unet_activations": peak}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    return result


if __name__ == "__main__":
    main()
