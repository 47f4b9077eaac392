"""`python -m svd_core orbit`: one object image to an orbit of views with SV3D_u / SV3D_p."""
from __future__ import annotations

import time

from .common import add_common, finish, load_model, progress_printer, read_image


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.replace(",", " ").split()]


def add_arguments(parser) -> None:
    add_common(parser)
    parser.add_argument("--elevation", type=float, default=10.0, help="constant elevation in degrees (SV3D_p)")
    parser.add_argument("--elevations", type=_floats, default=None, help="per-view elevations, comma separated")
    parser.add_argument("--azimuths", type=_floats, default=None,
                        help="per-view azimuths in degrees (default: evenly spaced, as the reference)")
    parser.add_argument("--no-recenter", dest="recenter", action="store_false",
                        help="use an RGBA image as it is framed (composited on white) instead of cropping it to the "
                             "object and centring it on a white square as the reference script does")
    parser.add_argument("--image-frame-ratio", type=float, default=None,
                        help="share of the frame side the object's longer side takes after recentring, in (0, 1] "
                             "(default: keep the input's framing, the reference script's None)")
    parser.add_argument("--no-replace-last-view", dest="replace_last", action="store_false",
                        help="keep the generated last view instead of replacing it by the input view (the reference "
                             "replaces it)")


def run(args) -> int:
    from ..guidance import Guidance, defaults_for
    from ..pipeline import orbit

    started = time.perf_counter()
    image = read_image(args.image, keep_alpha=True)  # RGBA objects are cropped and centred (reference sv3d branch)
    model, device = load_model(args)
    if "fps_id" in dict(model.spec.vector_inputs):
        raise SystemExit(f"error: {args.checkpoint} is an {model.spec.name} model; use `python -m svd_core img2vid`")
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
                       replace_last=args.replace_last, noise_device=args.noise_device)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    return finish(frames, args, args.out_fps or 7.0, started)
