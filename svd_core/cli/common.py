"""Arguments and run loop shared by the generation commands."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..attention import DEFAULT_FF_CHUNK
from ..validation import MAX_STEPS, arg_type
from ..vae_decode import check_tiling
from ..video_io import MAX_FPS, MIN_FPS
from . import CLIError

SAMPLER_CHOICES = ("euler", "heun", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde")
CFG_IN_TURN = {"auto": "auto", "on": "in turn", "off": "together"}  # --cfg-in-turn -> pipeline's cfg_batch


def cfg_batch(args) -> str:
    """--cfg-in-turn as the pipeline's `cfg_batch` (svd_core.memory.cfg_in_turn decides "auto")."""
    return CFG_IN_TURN[getattr(args, "cfg_in_turn", "auto")]


def _device(text: str) -> str:
    """--device: a torch device this machine has (cpu, cuda, cuda:N, mps)."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; expected cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available on this machine; use --device cpu")
    elif device.type != "cpu":
        raise argparse.ArgumentTypeError(f"{text!r}: expected cpu, cuda, cuda:N or mps")
    return str(device)


def _out_fps(text: str) -> float:
    from ..video_io import check_fps

    try:
        return check_fps(float(text), "")
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is impossible: expected frames per second in "
                                         f"[{MIN_FPS:g}, {MAX_FPS:g}]") from None


def add_common(parser: argparse.ArgumentParser) -> None:
    """Options of img2vid and orbit; every number is range-checked while parsing (svd_core.validation.RULES)."""
    parser.add_argument("--checkpoint", required=True, help="SVD-family .safetensors file or a diffusers folder")
    parser.add_argument("--image", required=True, help="input image (PNG, JPEG, WebP; at most 50 megapixels)")
    parser.add_argument("--out", required=True,
                        help="output: .mp4 / .m4v / .mov / .mkv / .avi (H.264), .webm (VP9), .gif, or a new folder / "
                             "NAME.png (PNG frames); an existing "
                             "file is replaced only if it is such a video, a folder only if it holds only our frames")
    parser.add_argument("--frames", type=arg_type("num_frames", "--frames"), default=None,
                        help="number of frames (default: the variant's)")
    parser.add_argument("--width", type=arg_type("width", "--width"), default=None,
                        help="width, a multiple of 64 (default: the variant's)")
    parser.add_argument("--height", type=arg_type("height", "--height"), default=None,
                        help="height, a multiple of 64 (default: the variant's)")
    parser.add_argument("--resize", choices=("crop", "pad", "stretch"), default="crop",
                        help="fit the image to width x height by center crop, padding or stretching")
    parser.add_argument("--steps", type=arg_type("steps", "--steps"), default=None,
                        help=f"sampling steps, 1-{MAX_STEPS} (default: the loaded variant's, as the reference script: "
                             "25 svd / svd_image_decoder, 30 svd_xt / svd_xt_1_1 / svd_xt_image_decoder, 50 sv3d_u / "
                             "sv3d_p)")
    parser.add_argument("--seed", type=arg_type("seed", "--seed"), default=None,
                        help="seed of the noise, 0 to 2^64-1 (default: the variant's, 23 as the reference script)")
    parser.add_argument("--noise-device", choices=("cpu", "device"), default="cpu",
                        help="draw the initial noise on a CPU generator (default: the same video on every machine) "
                             "or on the compute device (as the reference does on CUDA)")
    parser.add_argument("--sampler", choices=SAMPLER_CHOICES, default="euler")
    parser.add_argument("--schedule", choices=("karras", "exponential"), default="karras")
    parser.add_argument("--cond-aug", type=arg_type("cond_aug", "--cond-aug"), default=None,
                        help="conditioning-frame noise (default: variant's)")
    parser.add_argument("--min-cfg", type=arg_type("min_scale", "--min-cfg"), default=None,
                        help="guidance scale at the first frame")
    parser.add_argument("--max-cfg", type=arg_type("max_scale", "--max-cfg"), default=None,
                        help="guidance scale at the last / peak frame")
    parser.add_argument("--decode-t", type=arg_type("decode_t", "--decode-t"), default=None,
                        help="frames decoded at a time (default 14)")
    parser.add_argument("--overlap", type=arg_type("overlap", "--overlap"), default=0,
                        help="overlap between decode chunks, blended (below --decode-t)")
    parser.add_argument("--device", type=_device, default=None,
                        help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"), default="auto",
                        help="weights dtype (auto: float16 on GPU, float32 on CPU)")
    parser.add_argument("--offload", action="store_true", help="keep CLIP / VAE on the CPU while the UNet samples")
    parser.add_argument("--fp8-weights", action="store_true",
                        help="store the UNet's Linear/Conv weights in float8_e4m3fn (half of fp16), upcast per layer "
                             "to --dtype at compute")
    parser.add_argument("--cfg-in-turn", nargs="?", const="on", default="auto", choices=CFG_IN_TURN,
                        help="run the guided UNet step's unconditional and conditional branches one after the other "
                             "(same result, about half the UNet's activation memory): on (the bare flag), off (one "
                             "batch), or auto (default: in turn only when one batch would not fit the device's free "
                             "memory)")
    parser.add_argument("--decode-tile", type=arg_type("decode_tile", "--decode-tile"), default=0,
                        help="decode in spatial tiles of N latent pixels (8N pixels; >= 4), blended where they "
                             "overlap; 0 decodes whole frames")
    parser.add_argument("--decode-tile-overlap", type=arg_type("decode_tile_overlap", "--decode-tile-overlap"),
                        default=None, help="latent pixels shared by neighbouring decode tiles (default a quarter "
                                           "tile; below half the tile)")
    parser.add_argument("--ff-chunk", type=arg_type("ff_chunk_size", "--ff-chunk"), default=DEFAULT_FF_CHUNK,
                        help="run transformer feed-forwards N token rows at a time (lower peak memory, same result; "
                             f"0 runs them whole; default {DEFAULT_FF_CHUNK})")
    parser.add_argument("--out-fps", type=_out_fps, default=None,
                        help=f"frame rate of the written file ({MIN_FPS:g}-{MAX_FPS:g})")


def check_options(args) -> None:
    """Everything that needs no model, before it is loaded: the output path, option combinations, the checkpoint
    path. Raises CLIError naming the option."""
    from ..video_io import check_fps, check_output

    if args.decode_t is not None and args.overlap >= args.decode_t:
        raise CLIError(f"--overlap {args.overlap} must be smaller than --decode-t {args.decode_t}")
    try:
        check_tiling(getattr(args, "decode_tile", 0), getattr(args, "decode_tile_overlap", None),
                     labels={"tile": "--decode-tile", "tile_overlap": "--decode-tile-overlap"})
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    try:
        check_output(args.out, "--out")
        fps_option = "--out-fps" if args.out_fps else "--fps" if getattr(args, "fps", None) else None
        if fps_option:  # the written rate: --out-fps, else the conditioning --fps (else the variant's, 7)
            check_fps(args.out_fps or args.fps, fps_option, args.out)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if not Path(args.checkpoint).exists():
        raise CLIError(f"--checkpoint: checkpoint not found: {args.checkpoint}")


def _device_and_dtype(args):
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"auto": torch.float16 if device.startswith("cuda") else torch.float32, "float32": torch.float32,
             "float16": torch.float16, "bfloat16": torch.bfloat16}[args.dtype]
    return device, dtype


def plan_model(args, require=None):
    """The checkpoint's model on the meta device (no weights read), `require(spec)` (the command's check that the
    variant fits it: a CLIError naming the right command), then a memory check of the request on the target device,
    before loading: CLIError with the estimate and the most frames that fit."""
    import svd_core

    from ..memory import MemoryBudgetError, check_request_fits

    device, dtype = _device_and_dtype(args)
    try:
        model = svd_core.load(Path(args.checkpoint), device="meta", dtype=dtype)
    except (ValueError, OSError) as exc:  # CheckpointError: unsupported or broken file
        raise CLIError(f"--checkpoint: {exc}") from None
    spec = model.spec
    if require is not None:
        require(spec)
    frames = args.frames or spec.num_frames
    try:
        check_request_fits(model, frames=frames, height=args.height or spec.height, width=args.width or spec.width,
                           decode_t=args.decode_t or spec.decode_t, device=device, dtype=dtype,
                           ff_chunk=args.ff_chunk, offload=args.offload, cfg=cfg_batch(args) == "together",
                           labels={"frames": "--frames", "width": "--width"})
    except MemoryBudgetError as exc:
        raise CLIError(str(exc)) from None
    return model


def load_model(args):
    import svd_core

    from .. import ops

    device, dtype = _device_and_dtype(args)
    try:
        model = svd_core.load(Path(args.checkpoint), device="cpu" if args.offload else device, dtype=dtype,
                              operations={"unet": ops.cast} if getattr(args, "fp8_weights", False) else None)
    except (ValueError, OSError) as exc:  # CheckpointError: unsupported or broken file
        raise CLIError(f"--checkpoint: {exc}") from None
    if getattr(args, "fp8_weights", False):
        ops.store_fp8(model.unet, compute_dtype=dtype)
    print(model.load_report.summary(), file=sys.stderr)
    return model, device


def progress_printer():
    from tqdm import tqdm

    bars = {}

    def callback(done, total, stage=None):
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

    try:
        out = write_video(frames[0], args.out, fps=fps, option="--out")
    except ValueError as exc:  # the output changed under us since check_options (it is left alone)
        raise CLIError(str(exc)) from None
    print(f"wrote {out} ({frames.shape[1]} frames, {frames.shape[-1]}x{frames.shape[-2]}, {fps:g} fps) "
          f"in {time.perf_counter() - started:.1f} s")
    return 0


def read_image(path, keep_alpha: bool = False):
    from ..video_io import load_image

    try:
        return load_image(path, keep_alpha=keep_alpha)
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(f"--image: {exc}") from None
