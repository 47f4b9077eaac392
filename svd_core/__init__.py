"""svd_core: a standalone Stable Video Diffusion engine (Blattmann et al., 2023). Never imports ComfyUI."""
from __future__ import annotations

from .variants import RELEASED, VARIANTS, ModelSpec, get_variant

__version__ = "0.1.0"
__all__ = ["build", "load", "ModelSpec", "VARIANTS", "RELEASED", "get_variant", "SVDModel"]


def __getattr__(name):  # heavy modules load on first use, so `import svd_core` stays cheap
    if name in ("build", "SVDModel"):
        from . import model
        return getattr(model, name)
    if name in ("load", "load_diffusers", "save"):
        from . import loading
        return getattr(loading, name)
    raise AttributeError(f"module 'svd_core' has no attribute {name!r}")
