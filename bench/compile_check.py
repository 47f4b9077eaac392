"""torch.compile check of the UNet and the temporal VAE decoder (issue 16 item 5): graph and graph-break counts
(torch._dynamo.explain) and the largest difference between the compiled and the eager outputs.

The model is the micro one of tests/test_compile.py by default (every layer kind of the full UNet, traced in
seconds); `--channels 64 --frames 8 --latent 32` gives the size of bench_vs_diffusers.py's first row. The
`aot_eager` backend traces what inductor would be given without generating kernels; `--backend inductor` compiles
for real (minutes on a CPU). tests/test_compile.py asserts the same (fullgraph=True, eager outputs).

    python bench/compile_check.py
    python bench/compile_check.py --channels 64 --frames 8 --latent 32 --backend inductor
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # svd_core of this checkout

from svd_core.testing import tiny_model  # noqa: E402
from svd_core.variants import TINY  # noqa: E402


def spec(channels: int | None):
    """The micro spec of tests/test_training_support.py (2 levels), or TINY's 4 levels at `channels` wide."""
    if channels is None:
        return replace(TINY, name="micro", unet=replace(TINY.unet, model_channels=32, channel_mult=(1, 2),
                                                        num_res_blocks=1, attention_resolutions=(1, 2)))
    return replace(TINY, name="bench", unet=replace(TINY.unet, model_channels=channels,
                                                    num_head_channels=64 if channels >= 64 else 32))


def check(name: str, fn, args: tuple, kwargs: dict, backend: str) -> str:
    """One line: graphs, graph breaks (with reasons), traced ops, max |compiled - eager|."""
    torch._dynamo.reset()
    with torch.inference_mode():
        explained = torch._dynamo.explain(fn)(*args, **kwargs)
        torch._dynamo.reset()
        eager = fn(*args, **kwargs)
        compiled = torch.compile(fn, backend=backend, fullgraph=True, dynamic=False)(*args, **kwargs)
    reasons = "; ".join(str(b.reason) for b in explained.break_reasons) or "none"
    return (f"{name}: {explained.graph_count} graph(s), {explained.graph_break_count} graph break(s) "
            f"(reasons: {reasons}), {explained.op_count} ops; {backend} vs eager max |diff| "
            f"{(compiled.float() - eager.float()).abs().max().item():.1e} (output scale "
            f"{eager.float().abs().max().item():.1e})")


def main(argv: list[str] | None = None) -> list[str]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--channels", type=int, default=None, help="UNet model_channels (default: the micro UNet)")
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--latent", type=int, default=8)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--backend", default="aot_eager")
    args = ap.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    model = tiny_model(spec(args.channels), seed=3).to(dtype)
    model.set_channels_last(True)  # as the pipeline runs it
    s, f, g = model.spec.unet, args.frames, torch.Generator().manual_seed(0)
    x = torch.randn(2 * f, s.in_channels, args.latent, args.latent, generator=g).to(dtype)  # CFG batch: (2 t)
    kwargs = dict(context=torch.randn(2 * f, 1, s.context_dim, generator=g).to(dtype),
                  y=torch.randn(2 * f, s.adm_in_channels, generator=g).to(dtype), num_video_frames=f)
    z = torch.randn(f, 4, args.latent, args.latent, generator=g).to(dtype)
    lines = [check("UNet forward (CFG batch 2)", model.unet, (x, torch.rand(2 * f, generator=g)), kwargs,
                   args.backend),
             check("temporal VAE decode", model.first_stage_model.decode, (z, f), {}, args.backend)]
    print(f"torch {torch.__version__}, {args.dtype}, {f} frames, {args.latent}x{args.latent} latents")
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
