"""Peak RSS of loading a full-size fp16 checkpoint, relative to its file size (issue: ~1.0x, not 2x).

    python bench/load_rss.py make /tmp/svd_xt_fp16.safetensors     # writes a random full-size file (~4.6 GB)
    /usr/bin/time -v python bench/load_rss.py load /tmp/svd_xt_fp16.safetensors
    SVD_COMFYUI_DIR=... python bench/load_rss.py comfy /tmp/svd_xt_fp16.safetensors [native|bundle]
        # through the pack's checkpoint loader inside ComfyUI (--cpu): with the native MODEL / CLIP_VISION / VAE
        # outputs (native) or the SVDSUITE_MODEL bundle alone (bundle); every weight touched through what it gives
"""
from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import torch


def make(path: Path, variant: str = "svd_xt") -> None:
    """Random fp16 tensors in the released layout (written tensor by tensor through safetensors)."""
    from safetensors.torch import save_file

    import svd_core

    meta = svd_core.build(variant, device="meta").state_dict()
    gen = torch.Generator().manual_seed(0)
    tensors = {k: (torch.randn(v.shape, generator=gen, dtype=torch.float32) * 0.02).to(torch.float16)
               for k, v in meta.items()}
    save_file(tensors, str(path), metadata={"format": "pt"})


def load(path: Path, dtype: str | None = None) -> None:
    import svd_core

    t0 = time.perf_counter()
    model = svd_core.load(path, dtype=getattr(torch, dtype) if dtype else None)
    dt = time.perf_counter() - t0
    n = sum(p.numel() for p in model.parameters())
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    size = path.stat().st_size
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"loaded {model.spec.name}: {n / 1e9:.3f} B params ({model_bytes / 2**30:.2f} GiB in memory) in {dt:.1f} s; "
          f"file {size / 2**30:.2f} GiB; peak RSS after load {peak / 2**30:.2f} GiB = {peak / size:.2f}x the file")
    # every weight read once (as a forward pass would): the mapped pages become resident
    checksum = sum(float(p.float().sum()) for p in model.parameters())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"after touching every weight (checksum {checksum:.3e}): peak RSS {peak / 2**30:.2f} GiB = "
          f"{peak / size:.2f}x the file, {peak / model_bytes:.2f}x the loaded model")


def load_comfy(path: Path, what: str = "native") -> None:
    """Peak RSS of the pack's CheckpointLoader in a ComfyUI process (`--cpu`, fp16 weights kept): `native` runs
    the node (bundle plus native outputs over the same modules), `bundle` the cached load alone."""
    import importlib.util
    import os
    import tempfile

    repo = Path(__file__).resolve().parents[1]
    base = Path(tempfile.mkdtemp(prefix="load_rss_"))
    (base / "models" / "checkpoints").mkdir(parents=True)
    (base / "models" / "checkpoints" / path.name).symlink_to(path.resolve())
    sys.path.insert(0, os.environ["SVD_COMFYUI_DIR"])
    sys.argv = ["main.py", "--cpu", "--base-directory", str(base)]
    import comfy.options

    comfy.options.enable_args_parsing()
    spec = importlib.util.spec_from_file_location("svd_suite", repo / "__init__.py",
                                                  submodule_search_locations=[str(repo)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["svd_suite"] = pack
    spec.loader.exec_module(pack)
    from svd_suite.nodes import _comfy, loaders

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    if what == "native":
        bundle, model, clip_vision, vae = loaders.CheckpointLoader.execute(path.name, "float16").args
        modules = [model.model, clip_vision.conditioner, vae.first_stage]
    else:
        real = str(path.resolve())
        bundle = _comfy.load_cached(("file", real), path.name, lambda d, dt: __import__("svd_core").load(
            real, device=d, dtype=dt), "float16")
        modules = [bundle.model]
    dt = time.perf_counter() - t0
    checksum = sum(float(t.float().sum()) for m in modules for t in m.state_dict().values())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    size = path.stat().st_size
    print(f"{what}: loaded in {dt:.1f} s; peak RSS {peak / 2**30:.2f} GiB after touching every weight through it "
          f"(checksum {checksum:.3e}); {before / 2**30:.2f} GiB before the load (ComfyUI + pack imported); "
          f"file {size / 2**30:.2f} GiB")


if __name__ == "__main__":
    cmd, target = sys.argv[1], Path(sys.argv[2])
    {"make": make, "load": load, "comfy": load_comfy}[cmd](target, *sys.argv[3:])
