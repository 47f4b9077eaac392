"""`python -m svd_core img2vid`: one image to a video with SVD / SVD-XT (reference defaults per variant)."""
from __future__ import annotations

import time

from ..guidance import KINDS
from ..validation import arg_type
from . import CLIError
from .common import add_common, cfg_batch, check_options, finish, load_model, plan_model, progress_printer, read_image


def add_arguments(parser) -> None:
    add_common(parser)
    parser.add_argument("--fps", type=arg_type("fps", "--fps"), default=None,
                        help="fps conditioning in frames per second, 1-1000 (default 7)")
    parser.add_argument("--motion-bucket", type=arg_type("motion_bucket_id", "--motion-bucket"), default=None,
                        help="motion bucket id 0-255, the range the released models were trained on (default 127)")
    parser.add_argument("--guidance", choices=KINDS, default=None,
                        help="per-frame guidance shape (default: the variant's); trapezoid is the reference's "
                             "TrapezoidPredictionGuider (edge_perc 0.1, 1.0 in the middle), ramp_hold ramps and holds "
                             "max-cfg")
    parser.add_argument("--image-decoder", action="store_true", help="decode frames one by one (no temporal layers)")


def run(args) -> int:
    from ..conditioner import micro_values
    from ..guidance import Guidance, defaults_for
    from ..pipeline import img2vid

    started = time.perf_counter()
    check_options(args)  # everything that needs no model: nothing is loaded or written on a bad option
    image = read_image(args.image)
    def image_to_video(spec) -> None:
        if "fps" not in micro_values(spec):
            raise CLIError(f"--checkpoint {args.checkpoint} is an {spec.name} model; use `python -m svd_core orbit`")

    plan_model(args, image_to_video)  # the checkpoint on the meta device: variant, then memory of the request
    model, device = load_model(args)
    base = defaults_for(model.spec)
    guidance = Guidance(args.guidance or base.kind, base.min_scale if args.min_cfg is None else args.min_cfg,
                        base.max_scale if args.max_cfg is None else args.max_cfg)
    try:
        frames = img2vid(model, image, num_frames=args.frames, width=args.width, height=args.height, fps=args.fps,
                         motion_bucket_id=args.motion_bucket, cond_aug=args.cond_aug, resize_mode=args.resize,
                         guidance=guidance, sampler=args.sampler, schedule=args.schedule, steps=args.steps,
                         seed=args.seed, decode_t=args.decode_t, overlap=args.overlap,
                         image_decoder=args.image_decoder, callback=progress_printer(), device=device,
                         offload=args.offload, ff_chunk_size=args.ff_chunk, noise_device=args.noise_device,
                         decode_tile=args.decode_tile, decode_tile_overlap=args.decode_tile_overlap,
                         cfg_batch=cfg_batch(args))
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    fps = args.out_fps or args.fps or model.spec.fps
    return finish(frames, args, fps, started)
