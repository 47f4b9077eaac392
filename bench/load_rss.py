"""Peak RSS of loading a full-size fp16 checkpoint, relative to its file size (issue: ~1.0x, not 2x).

    python bench/load_rss.py make /tmp/svd_xt_fp16.safetensors     # writes a random full-size file (~4.6 GB)
    /usr/bin/time -v python bench/load_rss.py load /tmp/svd_xt_fp16.safetensors
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


if __name__ == "__main__":
    cmd, target = sys.argv[1], Path(sys.argv[2])
    make(target) if cmd == "make" else load(target, *sys.argv[3:])
