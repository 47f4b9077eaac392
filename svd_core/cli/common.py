"""Arguments and run loop shared by the generation commands."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..attention import DEFAULT_FF_CHUNK

SAMPLER_CHOICES = ("euler", "heun", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde")


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="SVD-family .safetensors file or a diffusers folder")
    parser.add_argument("--image", required=True, help="input image (PNG, JPEG, WebP)")
    parser.add_argument("--out", required=True, help="output: .mp4 (H.264), .webm, .gif, or a folder / .png (frames)")
    parser.add_argument("--frames", type=int, default=None, help="number of frames (default: the variant's)")
    parser.add_argument("--width", type=int, default=None, help="width, a multiple of 64 (default: the variant's)")
    parser.add_argument("--height", type=int, default=None, help="height, a multiple of 64 (default: the variant's)")
    parser.add_argument("--resize", choices=("crop", "pad", "stretch"), default="crop",
                        help="fit the image to width x height by center crop, padding or stretching")
    parser.add_argument("--steps", type=int, default=None,
                        help="sampling steps (default: the loaded variant's, as the reference script: 25 svd / "
                             "svd_image_decoder, 30 svd_xt / svd_xt_1_1 / svd_xt_image_decoder, 50 sv3d_u / sv3d_p)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the noise (default: the variant's, 23 as the reference script)")
    parser.add_argument("--noise-device", choices=("cpu", "device"), default="cpu",
                        help="draw the initial noise on a CPU generator (default: the same video on every machine) "
                             "or on the compute device (as the reference does on CUDA)")
    parser.add_argument("--sampler", choices=SAMPLER_CHOICES, default="euler")
    parser.add_argument("--schedule", choices=("karras", "exponential"), default="karras")
    parser.add_argument("--cond-aug", type=float, default=None, help="conditioning-frame noise (default: variant's)")
    parser.add_argument("--min-cfg", type=float, default=None, help="guidance scale at the first frame")
    parser.add_argument("--max-cfg", type=float, default=None, help="guidance scale at the last / peak frame")
    parser.add_argument("--decode-t", type=int, default=None, help="frames decoded at a time (default 14)")
    parser.add_argument("--overlap", type=int, default=0, help="overlap between decode chunks, blended")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"), default="auto",
                        help="weights dtype (auto: float16 on GPU, float32 on CPU)")
    parser.add_argument("--offload", action="store_true", help="keep CLIP / VAE on the CPU while the UNet samples")
    parser.add_argument("--ff-chunk", type=int, default=DEFAULT_FF_CHUNK,
                        help="run transformer feed-forwards N token rows at a time (lower peak memory, same result; "
                             f"0 runs them whole; default {DEFAULT_FF_CHUNK})")
    parser.add_argument("--out-fps", type=float, default=None, help="frame rate of the written file")


def load_model(args):
    import torch

    import svd_core

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"auto": torch.float16 if device.startswith("cuda") else torch.float32, "float32": torch.float32,
             "float16": torch.float16, "bfloat16": torch.bfloat16}[args.dtype]
    path = Path(args.checkpoint)
    if not path.exists():
        raise SystemExit(f"error: checkpoint not found: {path}")
    try:
        model = svd_core.load(path, device="cpu" if args.offload else device, dtype=dtype)
    except ValueError as exc:  # CheckpointError: unsupported or broken file
        raise SystemExit(f"error: {exc}") from None
    print(model.load_report.summary(), file=sys.stderr)
    return model, device


def progress_printer():
    from tqdm import tqdm

    bars = {}

    def callback(stage, done, total):
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=stage, unit="step" if stage == "sampling" else "frame")
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return callback


def finish(frames, args, fps: float, started: float) -> int:
    from ..video_io import write_video

    out = write_video(frames[0], args.out, fps=fps)
    print(f"wrote {out} ({frames.shape[1]} frames, {frames.shape[-1]}x{frames.shape[-2]}, {fps:g} fps) "
          f"in {time.perf_counter() - started:.1f} s")
    return 0


def read_image(path, keep_alpha: bool = False):
    from ..video_io import load_image

    try:
        return load_image(path, keep_alpha=keep_alpha)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
