"""Synthetic captions (paper Sec. 3.1, App. C): open_clip CoCa on the middle frame, hooks for a video captioner and an LLM merge."""
from __future__ import annotations

import importlib
import os
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from ..video_io import first_middle_last, probe, read_frames_at
from . import CurationError
from .clip_models import load_open_clip

SOT, EOT = 49406, 49407  # open_clip SimpleTokenizer start / end of text
# The manifest's caption columns and how often training samples each (paper App. C / E.2.2: CoCa 0.5, the video
# captioner (V-BLIP) 0.25, the LLM summary 0.25); training reads these names (`svd_core.training.data`).
CAPTION_WEIGHTS = {"caption_coca": 0.5, "caption_video": 0.25, "caption_llm": 0.25}


class CocaCaptioner:
    """CoCa captions decoded token by token from the model's own forward (no transformers needed).

    `method="greedy"` (default) or `"top_k"` sampling; `"open_clip"` calls `CoCa.generate` (beam search),
    which needs transformers < 4.56."""

    def __init__(self, model: str, weights: str | os.PathLike, device: str = "cpu", method: str = "greedy",
                 max_len: int = 30, min_len: int = 3, top_k: int = 8, temperature: float = 1.0, seed: int = 0):
        if method not in ("greedy", "top_k", "open_clip"):
            raise CurationError(f"caption method {method!r} is unknown; expected 'greedy', 'top_k' or 'open_clip'")
        self.model, self.preprocess, self.tokenizer = load_open_clip(model, weights, device)
        if not hasattr(self.model, "text_decoder"):
            raise CurationError(f"open_clip model {model!r} is not a CoCa model; captions need e.g. 'coca_ViT-L-14'")
        ctx = int(getattr(self.model.text, "context_length", 76))
        if not 1 < max_len <= ctx:
            raise CurationError(f"max_len {max_len} must be in 2..{ctx} (the CoCa text context length)")
        self.device, self.method = device, method
        self.max_len, self.min_len, self.top_k, self.temperature, self.seed = max_len, min_len, top_k, temperature, seed

    def _images(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        from PIL import Image

        return torch.stack([self.preprocess(Image.fromarray(f)) for f in frames]).to(self.device)  # b c h w

    @torch.no_grad()
    def tokens(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        """(b, <= max_len) token ids starting with SOT; rows end with EOT or are cut at max_len."""
        image = self._images(frames)
        if self.method == "open_clip":
            return self.model.generate(image, seq_len=self.max_len, generation_type="beam_search")
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        enc = self.model(image)  # image_features (b d), image_embs (b n d)
        out = torch.full((image.shape[0], 1), SOT, dtype=torch.long, device=self.device)  # b 1
        done = torch.zeros(image.shape[0], dtype=torch.bool, device=self.device)
        for step in range(self.max_len - 1):
            logits = self.model(image, out, image_latent=enc["image_features"], image_embs=enc["image_embs"],
                                output_labels=False)["logits"][:, -1].float()  # b vocab
            if out.shape[1] < self.min_len:  # as transformers MinLengthLogitsProcessor
                logits[:, EOT] = -float("inf")
            if self.method == "greedy":
                nxt = logits.argmax(dim=-1)
            else:
                vals, idx = logits.topk(self.top_k, dim=-1)  # b k
                probs = torch.softmax(vals / self.temperature, dim=-1).cpu()
                nxt = idx.gather(1, torch.multinomial(probs, 1, generator=gen).to(self.device))[:, 0]
            if step == self.max_len - 2:  # the last position is always end-of-text, as CoCa.generate does
                nxt = torch.full_like(nxt, EOT)
            nxt = torch.where(done, torch.full_like(nxt, EOT), nxt)
            out = torch.cat([out, nxt[:, None]], dim=1)  # b (t+1)
            done |= nxt == EOT
            if bool(done.all()):
                break
        return out

    def caption_frames(self, frames: Sequence[np.ndarray]) -> list[str]:
        """One caption per RGB frame."""
        import open_clip

        return [open_clip.decode(row).replace("<start_of_text>", "").split("<end_of_text>")[0].strip()
                for row in self.tokens(frames).cpu()]

    def caption_clip(self, path: str | os.PathLike) -> str:
        """Caption of the middle frame of a clip (App. C)."""
        middle = first_middle_last(probe(path).frame_count)[1]
        return self.caption_frames(read_frames_at(path, [middle]))[0]


def load_hook(spec: str | Callable | None) -> Callable | None:
    """A caption hook from 'package.module:function' (or a callable): video captioner `f(path) -> str`,
    LLM merge `f(captions: dict) -> str`."""
    if spec is None or callable(spec):
        return spec
    module, _, attr = str(spec).partition(":")
    if not module or not attr:
        raise CurationError(f"caption hook {spec!r} must look like 'package.module:function'")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise CurationError(f"caption hook {spec!r} cannot be imported: {exc}") from exc
    if not callable(fn):
        raise CurationError(f"caption hook {spec!r} is not callable")
    return fn


def caption_clip(path: str, coca: CocaCaptioner | None = None, video_captioner: Callable | None = None,
                 merger: Callable[[Mapping[str, str]], str] | None = None) -> dict[str, str]:
    """All captions of one clip: {'caption_coca', 'caption_video', 'caption_llm'} for the stages that are set."""
    coca_col, video_col, llm_col = CAPTION_WEIGHTS
    out: dict[str, str] = {}
    if coca is not None:
        out[coca_col] = coca.caption_clip(path)
    if video_captioner is not None:
        out[video_col] = str(video_captioner(path))
    if merger is not None:
        if not out:
            raise CurationError("an LLM caption merge needs at least one caption (CoCa or video captioner)")
        out[llm_col] = str(merger(dict(out)))
    return out
