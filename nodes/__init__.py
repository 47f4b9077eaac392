"""Generation nodes of the SVD suite (ComfyUI V3 schema): loaders, conditioning, guidance, sampling, latent."""
from __future__ import annotations

from . import conditioning, guidance, latent, loaders, sampling
from . import long_video, lora
from . import interpolation, multiview, text2video

GENERATION_NODES = [*loaders.NODES, *conditioning.NODES, *guidance.NODES, *sampling.NODES, *latent.NODES,
                    *lora.NODES, *long_video.NODES,
                    *interpolation.NODES, *multiview.NODES, *text2video.NODES]

__all__ = ["GENERATION_NODES"]
