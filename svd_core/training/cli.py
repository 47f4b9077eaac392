"""`python -m svd_core train CONFIG`: the training the nodes run, headless, single process or under `torchrun`
(`torchrun --nproc_per_node N -m svd_core train CONFIG`: DDP, or FSDP with strategy fsdp; data sharded by rank).

CONFIG (JSON or TOML): {"model": checkpoint path or "tiny[:seed]", "data": manifest .parquet or clip folder,
"out_dir": run folder, "resume": true, "train": {"preset": "img2vid", ...any TrainConfig setting}}. Writes
out_dir/state/last.safetensors (resumable), out_dir/<name>_step<N>[_ema].safetensors (checkpoint or LoRA),
out_dir/loss_curve.png, out_dir/samples/; the latent cache goes to out_dir/../cache unless --cache-dir."""
from __future__ import annotations

import json
import os
import sys


def add_arguments(parser) -> None:
    parser.add_argument("config", nargs="?", help="run config (.json or .toml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting (JSON value), e.g. --set steps=100 --set lr=1e-4")
    parser.add_argument("--no-resume", action="store_true", help="start over even if out_dir has a saved state")
    parser.add_argument("--cache-dir", default=None, help="latent / CLIP cache folder (default out_dir/../cache)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--max-windows-per-clip", type=int, default=0, help="windows taken per clip (0 = all)")
    parser.add_argument("--presets", action="store_true", help="list the presets (paper App. D) and exit")


def _parse_sets(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v  # a bare string
    return out


def _load_model(spec: str, device):
    import torch

    from .. import loading, testing

    if spec.startswith("tiny"):
        name, _, seed = spec.partition(":")
        return testing.tiny_model(name, seed=int(seed or 0)).to(device)
    return loading.load(spec, device=device, dtype=torch.float32)


def run(args) -> int:
    from ..loading import CheckpointError
    from . import api
    from .config import PRESETS, ConfigError, RunConfig
    from .data import DataError
    from .distributed import device_for, init_from_env, DistInfo

    if args.presets:
        for p in PRESETS.values():
            print(f"{p.name:22s} P_mean {p.p_mean:5.2f} P_std {p.p_std:4.2f} lr {p.lr:.0e} {p.num_frames:2d} frames "
                  f"{p.width}x{p.height} {p.mode:10s} {p.description}"
                  + f" [{p.steps} steps" + (f", paper batch {p.paper_batch_size}]" if p.paper_batch_size else "]"))
        return 0
    if not args.config:
        print("error: a CONFIG file is needed (or --presets)", file=sys.stderr)
        return 2
    try:
        run_cfg = RunConfig.load(args.config, _parse_sets(args.set))
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    device = device_for(DistInfo(local_rank=int(os.environ.get("LOCAL_RANK", "0"))), args.device)
    info = init_from_env(device)
    log = (lambda msg: print(msg, flush=True)) if info.is_main else None
    cfg = run_cfg.train
    try:
        model = _load_model(run_cfg.model, device)
        if cfg.task == "interpolation" and model.spec.cond_mode != "interpolation":
            from .tasks import model_for_task

            base = model.spec.name
            model = model_for_task(model, cfg.task).to(device)
            if log:
                log(f"interpolation model {model.spec.name} initialised from the base model {base} (App. D.5)")
        cache = args.cache_dir or os.path.join(os.path.dirname(os.path.abspath(run_cfg.out_dir)), "cache")
        if log:
            log(f"model {model.spec.name}; preset {cfg.preset} ({cfg.mode}, task {cfg.task}); {info.world} "
                f"process(es) on {device}; caching {run_cfg.data}")
        data = api.prepare_data(model, cfg, run_cfg.data, cache, info=info,
                                max_per_clip=args.max_windows_per_clip)
        if log:
            log(f"{len(data.train_idx)} training / {len(data.val_idx)} validation windows")
        trainer, out = api.train(model, cfg, data, run_cfg.out_dir, resume=run_cfg.resume and not args.no_resume,
                                 device=device, info=info, lora_init=run_cfg.lora_init, log=log)
    except (ConfigError, DataError, CheckpointError, FileNotFoundError) as exc:  # ResumeError is a ConfigError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if info.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    if log:
        result = out["result"]
        val = f"{result.val[0][1]:.4f} -> {result.val[-1][1]:.4f}" if result.val else "n/a"
        log(f"done: {result.step} steps in {result.seconds:.1f} s, validation loss {val}")
        for key in ("weights", "ema"):
            log(f"{key}: {out[key]}")
        log(f"loss curve: {trainer.outputs.get('loss_curve')}")
    return 0
