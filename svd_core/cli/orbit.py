"""`python -m svd_core orbit`: one object image to an orbit of views with SV3D_u / SV3D_p."""
from __future__ import annotations

import time

import argparse

from ..validation import RULES, arg_type
from . import CLIError
from .common import add_common, cfg_batch, check_options, finish, load_model, plan_model, progress_printer, read_image


def _floats(name: str, option: str):
    """An argparse type: comma / space separated numbers, each obeying `RULES[name]`."""
    def convert(text: str) -> list[float]:
        try:
            values = [float(v) for v in text.replace(",", " ").split()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
        if not values:
            raise argparse.ArgumentTypeError("expected at least one number")
        try:
            return [RULES[name].check(f"value {i + 1}", v) for i, v in enumerate(values)]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = name
    return convert


def _frame_ratio(text: str) -> float:
    """--image-frame-ratio: a share of the frame side, in (0, 1] (object_image.check_frame_ratio)."""
    from ..object_image import check_frame_ratio

    try:
        return check_frame_ratio(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is impossible: expected a share of the frame in (0, 1]") from None


def add_arguments(parser) -> None:
    add_common(parser)
    parser.add_argument("--elevation", type=arg_type("elevations", "--elevation"), default=10.0,
                        help="constant elevation in degrees, -90 to 90 (SV3D_p)")
    parser.add_argument("--elevations", type=_floats("elevations", "--elevations"), default=None,
                        help="per-view elevations, comma separated")
    parser.add_argument("--azimuths", type=_floats("azimuths", "--azimuths"), default=None,
                        help="per-view azimuths in degrees (default: evenly spaced, as the reference)")
    parser.add_argument("--no-recenter", dest="recenter", action="store_false",
                        help="use an RGBA image as it is framed (composited on white) instead of cropping it to the "
                             "object and centring it on a white square as the reference script does")
    parser.add_argument("--image-frame-ratio", type=_frame_ratio, default=None,
                        help="share of the frame side the object's longer side takes after recentring, in (0, 1] "
                             "(default: keep the input's framing, the reference script's None)")
    parser.add_argument("--no-replace-last-view", dest="replace_last", action="store_false",
                        help="keep the generated last view instead of replacing it by the input view (the reference "
                             "replaces it)")


def run(args) -> int:
    from ..conditioner import micro_values
    from ..guidance import Guidance, defaults_for
    from ..pipeline import orbit

    started = time.perf_counter()
    check_options(args)  # everything that needs no model: nothing is loaded or written on a bad option
    image = read_image(args.image, keep_alpha=True)  # RGBA objects are cropped and centred (reference sv3d branch)
    def orbit_model(spec) -> None:
        if "fps" in micro_values(spec):
            raise CLIError(f"--checkpoint {args.checkpoint} is an {spec.name} model; use `python -m svd_core img2vid`")
        frames = args.frames or spec.num_frames
        for option, values in (("--elevations", args.elevations), ("--azimuths", args.azimuths)):
            if values is not None and len(values) != frames:
                raise CLIError(f"{option} has {len(values)} values but the orbit has {frames} views (--frames); "
                               f"give one per view")

    plan_model(args, orbit_model)  # the checkpoint on the meta device: variant and views, then memory
    model, device = load_model(args)
    base = defaults_for(model.spec)
    guidance = Guidance(base.kind, base.min_scale if args.min_cfg is None else args.min_cfg,
                        base.max_scale if args.max_cfg is None else args.max_cfg)
    try:
        frames = orbit(model, image, elevations=args.elevations or args.elevation, azimuths=args.azimuths,
                       num_frames=args.frames, width=args.width, height=args.height, cond_aug=args.cond_aug,
                       resize_mode=args.resize, guidance=guidance, sampler=args.sampler, schedule=args.schedule,
                       steps=args.steps, seed=args.seed, decode_t=args.decode_t, overlap=args.overlap,
                       callback=progress_printer(), device=device, offload=args.offload,
                       ff_chunk_size=args.ff_chunk, recenter=args.recenter, image_frame_ratio=args.image_frame_ratio,
                       replace_last=args.replace_last, noise_device=args.noise_device, cfg_batch=cfg_batch(args))
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    return finish(frames, args, args.out_fps or 7.0, started)
