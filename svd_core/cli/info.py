"""`python -m svd_core info CKPT`: which variant a file is, what it holds, without loading weights (meta device)."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", help=".safetensors file or diffusers folder")


def run(args) -> int:
    import svd_core

    try:
        model = svd_core.load(args.checkpoint, device="meta")
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from None
    spec = model.spec
    print(model.load_report.summary())
    print(f"frames {spec.num_frames}, {spec.width}x{spec.height}, guider {spec.guider} "
          f"{spec.min_cfg}-{spec.max_cfg}, vector inputs {[k for k, _ in spec.vector_inputs]}")
    print(f"defaults: {spec.steps} steps, seed {spec.seed} (reference sampling script)")
    return 0
