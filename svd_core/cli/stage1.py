"""`python -m svd_core stage1 SD21.safetensors --out video_init.safetensors`: Stage I (paper Sec. 4.1, App. D.2),
the video model built from an SD 2.x image model (`svd_core.stage1`)."""
from __future__ import annotations

import sys


def add_arguments(parser) -> None:
    parser.add_argument("image_model", help="Stable Diffusion 2.x checkpoint (.safetensors: 512-base or 768-v)")
    parser.add_argument("--out", required=True, help="output .safetensors (written atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists (default: refuse)")
    parser.add_argument("--prediction", choices=("auto", "eps", "v"), default="auto",
                        help="the image model's prediction type: eps (SD 2.1 512-base), v (SD 2.1 768-v), or auto "
                             "(ComfyUI's SD 2.x heuristic); recorded in the saved spec")
    parser.add_argument("--variant", default="auto",
                        help="video spec to build (default auto: t2v_sd21, the text-to-video base model with SD 2.1's "
                             "autoencoder, svd_core.stage1.SPEC)")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                        help="dtype of the written weights (default float32, for training)")


def run(args) -> int:
    import torch

    from .. import stage1

    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[args.dtype]
    spec = None if args.variant == "auto" else args.variant
    try:
        path, report = stage1.convert_file(args.image_model, args.out, spec=spec, prediction=args.prediction,
                                           overwrite=args.overwrite, dtype=dtype)
    except FileExistsError as exc:
        raise SystemExit(f"error: {exc} (--overwrite)") from None
    except (ValueError, FileNotFoundError) as exc:  # CheckpointError is a ValueError
        raise SystemExit(f"error: {exc}") from None
    print(report.summary(), file=sys.stderr)
    print(f"wrote {path} (source {report.prediction}-prediction); train it with the time_embed_warmup preset, then "
          f"image_finetune")
    return 0
