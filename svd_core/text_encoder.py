"""Text tower of the text-to-video model (paper Sec. 4.2): open_clip ViT-H-14's text transformer, as SD 2.1 uses it
(`FrozenOpenCLIPEmbedder`, layer "penultimate": the tokens after the second-to-last block, then `ln_final`).

Key layout under the conditioner (`conditioner.embedders.0.`), the open_clip CLIP model with the visual tower
deleted, exactly as SD 2.1 / sgm keep it:

    model.token_embedding.weight                      (vocab 49408, width 1024)
    model.positional_embedding                        (context 77, width 1024)
    model.transformer.resblocks.{0..23}.{ln_1,attn.in_proj_*,attn.out_proj,ln_2,mlp.c_fc,mlp.c_proj}.*
    model.ln_final.{weight,bias}                      (1024)
    model.text_projection                             (1024, 1024)  unused by the penultimate tokens, kept
    model.logit_scale                                 ()            unused, kept

Weights come from the checkpoint (the tower is built with pretrained=None); the tokenizer is open_clip's BPE
tokenizer, whose vocabulary ships inside the open_clip package (works offline).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from open_clip.model import CLIPTextCfg, _build_text_tower
from torch import nn

from .variants import CLIPSpec

LAYERS = ("last", "penultimate")


class OpenCLIPTextModel(nn.Module):
    """open_clip `CLIP` minus `visual`: the attributes (and so the keys) `CLIP.__init__` gives the text side."""

    def __init__(self, spec: CLIPSpec):
        super().__init__()
        text = _build_text_tower(spec.embed_dim, CLIPTextCfg(
            context_length=spec.text_context_length, vocab_size=spec.text_vocab_size, width=spec.text_width,
            heads=spec.text_heads, layers=spec.text_layers))
        self.transformer = text.transformer
        self.context_length = text.context_length
        self.vocab_size = text.vocab_size
        self.token_embedding = text.token_embedding
        self.positional_embedding = text.positional_embedding
        self.ln_final = text.ln_final
        self.text_projection = text.text_projection
        # open_clip's causal mask is a non-persistent buffer; it is rebuilt per call instead (nothing left on "meta")
        self.logit_scale = nn.Parameter(torch.ones([]) * np.log(1 / 0.07))


class OpenCLIPTextEmbedder(nn.Module):
    """`FrozenOpenCLIPEmbedder` (SD 2.1): tokens -> b n d context tokens from the `layer` ("penultimate" default)."""

    def __init__(self, spec: CLIPSpec, layer: str = "penultimate"):
        super().__init__()
        if layer not in LAYERS:
            raise ValueError(f"layer={layer!r}; expected one of {LAYERS}")
        self.model = OpenCLIPTextModel(spec)
        self.layer = layer
        self.context_length = spec.text_context_length
        self._tokenizer = None

    @property
    def tokenizer(self):
        """open_clip's BPE tokenizer (vocabulary bundled with the package), padded/truncated to the context."""
        if self._tokenizer is None:
            from open_clip.tokenizer import SimpleTokenizer

            self._tokenizer = SimpleTokenizer(context_length=self.context_length)
        return self._tokenizer

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """list of b strings -> b n int64 token ids (start, BPE tokens, end, zero padding)."""
        if isinstance(texts, str):
            texts = [texts]
        tokens = self.tokenizer(list(texts))
        if int(tokens.max()) >= self.model.vocab_size:
            raise ValueError(f"token id {int(tokens.max())} is outside this text tower's vocabulary of "
                             f"{self.model.vocab_size}; a text model needs open_clip's 49408-token vocabulary")
        return tokens

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """b n token ids -> b n d: token + position embedding, the blocks up to `layer`, then `ln_final`."""
        m = self.model
        dtype = m.token_embedding.weight.dtype
        x = m.token_embedding(tokens.to(m.token_embedding.weight.device)) + m.positional_embedding.to(dtype)  # b n d
        blocks = m.transformer.resblocks
        stop = len(blocks) - (1 if self.layer == "penultimate" else 0)
        n = x.shape[1]
        mask = torch.full((n, n), float("-inf"), device=x.device, dtype=x.dtype).triu_(1)  # causal, as open_clip
        if not m.transformer.batch_first:
            x = x.transpose(0, 1)  # b n d -> n b d
        for block in blocks[:stop]:
            x = block(x, attn_mask=mask)
        if not m.transformer.batch_first:
            x = x.transpose(0, 1)  # n b d -> b n d
        return m.ln_final(x)

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """list of b prompts -> b n d cross-attention tokens (n = context length 77, d = 1024 for ViT-H-14)."""
        return self.encode_tokens(self.tokenize(texts))


__all__ = ["OpenCLIPTextModel", "OpenCLIPTextEmbedder", "LAYERS"]
