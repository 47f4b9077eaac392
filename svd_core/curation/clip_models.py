"""open_clip models for curation (paper App. C): CLIP image/text embeddings, the LAION aesthetics MLP, CLIP score."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from . import CurationError


def resolve_model_name(model: str) -> str:
    """A built-in open_clip name, or a path to a model-config JSON (registered under its file stem)."""
    import open_clip

    if model.endswith(".json"):
        p = Path(model)
        if not p.is_file():
            raise CurationError(f"open_clip model config {model!r} does not exist; pass a JSON config or a "
                                f"built-in name such as 'ViT-L-14'")
        open_clip.add_model_config(p)
        return p.stem
    if model not in open_clip.list_models():
        raise CurationError(f"open_clip model {model!r} is unknown; expected one of open_clip.list_models() "
                            f"(e.g. 'ViT-L-14', 'coca_ViT-L-14') or a model-config .json path")
    return model


def load_open_clip(model: str, weights: str | os.PathLike, device: str = "cpu"):
    """Build an open_clip model without pretrained download and load user-supplied weights; (model, preprocess, tokenizer)."""
    import open_clip

    if not weights or not Path(weights).is_file():
        raise CurationError(f"open_clip weights {str(weights)!r} not found; supply the checkpoint file for "
                            f"{model!r} (weights are never downloaded)")
    name = resolve_model_name(model)
    net, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None, device=device)
    try:
        open_clip.load_checkpoint(net, str(weights), device=device)
    except RuntimeError as exc:  # key or shape mismatch
        raise CurationError(f"weights {str(weights)!r} do not fit open_clip model {model!r}: {exc}") from exc
    net.eval()
    return net, preprocess, open_clip.get_tokenizer(name)


class ClipEmbedder:
    """CLIP image and text embeddings (L2-normalised) from an open_clip model."""

    def __init__(self, model: str, weights: str | os.PathLike, device: str = "cpu"):
        self.model_name = model
        self.device = device
        self.model, self.preprocess, self.tokenizer = load_open_clip(model, weights, device)

    @torch.no_grad()
    def embed_images(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """(n, d) unit-norm embeddings of h w 3 uint8 RGB frames."""
        from PIL import Image

        if len(frames) == 0:
            raise CurationError("embed_images got no frames; expected at least one RGB frame")
        x = torch.stack([self.preprocess(Image.fromarray(f)) for f in frames]).to(self.device)  # n c h w
        emb = self.model.encode_image(x)
        return torch.nn.functional.normalize(emb.float(), dim=-1).cpu().numpy()

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(n, d) unit-norm embeddings of captions."""
        if len(texts) == 0:
            raise CurationError("embed_texts got no texts; expected at least one caption")
        emb = self.model.encode_text(self.tokenizer(list(texts)).to(self.device))
        return torch.nn.functional.normalize(emb.float(), dim=-1).cpu().numpy()


def clip_similarity(image_embs: np.ndarray, text_embs: np.ndarray) -> np.ndarray:
    """Cosine similarity of each text to the frames, averaged over frames: (n_texts,) (App. C, CLIP score)."""
    sims = np.asarray(text_embs) @ np.asarray(image_embs).T  # texts frames
    return sims.mean(axis=1)


class AestheticMLP(nn.Module):
    """LAION improved-aesthetic-predictor head: MLP on unit-norm CLIP image embeddings -> one score."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.input_size = input_size
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024), nn.Dropout(0.2),
            nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.layers(emb)  # n 1


def load_aesthetic_mlp(weights: str | os.PathLike, device: str = "cpu") -> AestheticMLP:
    """Load the aesthetics MLP (state-dict keys `layers.{0,2,4,6,7}.*`, .pth or .safetensors); input size from the file."""
    p = Path(weights) if weights else None
    if p is None or not p.is_file():
        raise CurationError(f"aesthetics weights {str(weights)!r} not found; supply the LAION "
                            f"improved-aesthetic-predictor MLP state dict (e.g. sac+logos+ava1-l14-linearMSE.pth)")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(p), device=device)
    else:
        state = torch.load(str(p), map_location=device, weights_only=True)
    state = state.get("state_dict", state)
    if "layers.0.weight" not in state:
        raise CurationError(f"aesthetics weights {str(p)!r} lack 'layers.0.weight'; expected the LAION MLP layout "
                            f"(layers.0/2/4/6/7)")
    mlp = AestheticMLP(int(state["layers.0.weight"].shape[1]))
    try:
        mlp.load_state_dict(state)
    except RuntimeError as exc:
        raise CurationError(f"aesthetics weights {str(p)!r} do not fit the LAION MLP: {exc}") from exc
    return mlp.to(device).eval()


@torch.no_grad()
def aesthetic_scores(mlp: AestheticMLP, image_embs: np.ndarray) -> np.ndarray:
    """(n,) aesthetics scores of unit-norm CLIP image embeddings."""
    emb = torch.as_tensor(np.asarray(image_embs), dtype=torch.float32)
    if emb.shape[-1] != mlp.input_size:
        raise CurationError(f"aesthetics MLP expects {mlp.input_size}-d CLIP embeddings but got {emb.shape[-1]}-d; "
                            f"use the CLIP model the MLP was trained on (ViT-L-14 for the LAION predictor)")
    return mlp(emb.to(next(mlp.parameters()).device))[:, 0].cpu().numpy()
