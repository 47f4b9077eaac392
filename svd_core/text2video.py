"""Text-to-video base model with temporal prompting (paper Sec. 4.2, App. E.5.4).

Variant `t2v` (`SPEC`, svd_core.variants.TEXT2VIDEO): SVD's video UNet with 4 input channels (no concat frame),
cross-attention on 1024-d text tokens from open_clip ViT-H-14's text tower (SD 2.1's, penultimate layer, see
`svd_core.text_encoder`), micro-conditioning fps (embedded as fps - 1, as SVD) and motion (adm 2 x 256 = 512),
trained at 320x576, 14 frames; vanilla CFG. No weights exist publicly: it is built, saved, loaded and trained here.

Temporal prompting: the spatial transformer blocks attend to the (spatial) prompt, the temporal blocks
(`...time_stack.0.attn2`) to a separate temporal prompt (`VideoCond.time_context`, b n d), e.g. spatial "flowers in
a pot in front of a mountainside", temporal "panning". Without a temporal prompt the temporal blocks see the
spatial prompt (the UNet's default).

Key layout (checkpoint `*.safetensors`, spec in metadata "svd_suite.spec"; also detected without metadata):
  model.diffusion_model.*          SVD's UNet keys; input_blocks.0.0.weight (320, 4, 3, 3),
                                   label_emb.0.0.weight (1280, 512); attn2 to_k/to_v take 1024-d text tokens
  first_stage_model.*              SVD's VAE (encoder + temporal decoder), unchanged
  conditioner.embedders.0.model.*  open_clip text tower: token_embedding.weight (49408, 1024),
                                   positional_embedding (77, 1024), transformer.resblocks.{0..23}.*, ln_final.*,
                                   text_projection (1024, 1024), logit_scale ()
  conditioner.embedders.{1,2}      fps_id, motion_score sinusoidal embedders (no weights)
Motion unit (training and generation alike): the `motion_score` input is a motion bucket, 0-255 like SVD's
motion_bucket_id (default 127): `svd_core.training.data.motion_bucket` maps a clip's curation motion score
(Farneback flow, App. C) to it, the one conversion, which the trainer applies before embedding.
No `conditioner.embedders.N.encoder` (no conditioning frame) and no CLIP image tower. `text_tower_from_sd21`
copies SD 2.1's text tower (`cond_stage_model.model.*`) into a model; `init_from(svd_model)` starts one from SVD.

For the training issue: `training_conditioning(model, captions, ...)`; the trainer's guidance dropout (15% by
default, paper) replaces a dropped video's tokens by the empty prompt's (`training.objective.drop_conditioning`).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Mapping, Sequence

import torch
from einops import repeat

from . import model as _model
from .denoiser import VideoCond
from .guidance import Guidance
from .attention import DEFAULT_FF_CHUNK
from .pipeline import Conditioning, _module_device, _run, check_run
from .progress import CancelFn, ProgressFn
from .validation import check_request
from .variants import TEXT2VIDEO, ModelSpec, get_variant

SPEC = TEXT2VIDEO
SD21_TEXT_PREFIXES = ("cond_stage_model.model.", "conditioner.embedders.0.model.")


def _check_model(model) -> ModelSpec:
    spec = model.spec
    if spec.cond_mode != "text":
        raise ValueError(f"text-to-video needs a text-conditioned model (cond_mode 'text', e.g. t2v); {spec.name} is "
                         f"{spec.cond_mode!r}-conditioned")
    return spec


def _prompts(prompt: "str | Sequence[str]", batch: int | None = None) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else [str(p) for p in prompt]
    if not prompts:
        raise ValueError("no prompt given")
    if batch is not None and len(prompts) == 1:
        prompts = prompts * batch
    if batch is not None and len(prompts) != batch:
        raise ValueError(f"{len(prompts)} prompts for a batch of {batch} videos; give one or {batch}")
    return prompts


def encode_prompts(model, prompts: "str | Sequence[str]") -> torch.Tensor:
    """Prompts -> b n d text tokens (n = 77, d = 1024 for the full model) from the model's text tower."""
    _check_model(model)
    text = model.conditioner.text
    return text(_prompts(prompts))


def _branch(spatial: torch.Tensor, temporal: torch.Tensor | None, vector: torch.Tensor, t: int, h: int,
            w: int) -> VideoCond:
    crossattn = repeat(spatial, "b n d -> (b t) n d", t=t)  # every frame's spatial blocks see the prompt
    concat = spatial.new_zeros(spatial.shape[0] * t, 0, h, w)  # no conditioning frame: (b t) 0 h w
    return VideoCond(crossattn, concat, vector, temporal)


@torch.inference_mode()
def text_conditioning(model, prompt: "str | Sequence[str]", *, temporal_prompt: "str | Sequence[str] | None" = None,
                      negative_prompt: "str | Sequence[str]" = "",
                      negative_temporal_prompt: "str | Sequence[str] | None" = None, batch: int | None = None,
                      num_frames: int | None = None, width: int | None = None, height: int | None = None,
                      fps: float | None = None, motion_score: float | None = None) -> Conditioning:
    """Prompt(s) -> conditioning of b videos; `temporal_prompt` drives the temporal cross-attention (temporal
    prompting). Unconditional branch: the negative prompt(s) (default empty, as SD 2.1's CFG)."""
    spec = _check_model(model)
    t = num_frames or spec.num_frames
    if t < 1:
        raise ValueError(f"num_frames={t} must be >= 1")
    width, height = width or spec.width, height or spec.height
    for name, v in (("width", width), ("height", height)):
        if v < 64 or v % 64:
            raise ValueError(f"{name}={v} is impossible: it must be a multiple of 64 and at least 64 (the VAE "
                             f"downsamples 8x and the UNet 8x more); set the {name} input accordingly")
    check_request(dict(fps=fps, motion_score=motion_score))  # the conditioning node calls this stage directly
    fps = spec.fps if fps is None else fps
    motion = spec.motion_bucket_id if motion_score is None else motion_score
    prompts = _prompts(prompt, batch)
    b = len(prompts)
    device = _module_device(model.conditioner)
    h, w = height // 8, width // 8
    vector = model.conditioner.micro_vector(b, t, fps=fps, motion_bucket_id=motion)  # (b t) adm
    spatial, neg = encode_prompts(model, prompts), encode_prompts(model, _prompts(negative_prompt, b))
    temporal = neg_temporal = None
    if isinstance(temporal_prompt, str) and not temporal_prompt.strip():
        temporal_prompt = None  # empty: the temporal layers see the spatial prompt
    if temporal_prompt is not None:
        temporal = encode_prompts(model, _prompts(temporal_prompt, b))  # b n d for the time_stack blocks
        neg_t = negative_prompt if negative_temporal_prompt is None else negative_temporal_prompt
        neg_temporal = encode_prompts(model, _prompts(neg_t, b))
    cond = _branch(spatial.to(device), temporal, vector, t, h, w)
    uncond = _branch(neg.to(device), neg_temporal, vector, t, h, w)
    return Conditioning(cond, uncond, t, b, height, width, spec.vae.z_channels)


def training_conditioning(model, captions: Sequence[str], *, num_frames: int, height: int, width: int,
                          fps: "float | torch.Tensor", motion_score: "float | torch.Tensor",
                          temporal_captions: "Sequence[str | None] | None" = None) -> VideoCond:
    """Conditioning of a training batch of b videos (t frames at height x width): captions (b), optional temporal
    captions (b; None entries fall back to the caption), fps / motion bucket (`data.motion_bucket` of the clip's
    motion score: the unit `text_conditioning` takes) per video or scalar. The text tower runs without grad
    (frozen); returns VideoCond (b t). Guidance dropout (paper: 15% text dropout) is the trainer's: a dropped video
    gets the empty prompt's tokens (`encode_prompts(model, "")`, `training.objective.drop_conditioning`)."""
    _check_model(model)
    captions = [str(c) for c in captions]
    b = len(captions)
    with torch.no_grad():
        spatial = encode_prompts(model, captions)
        temporal = None
        if temporal_captions is not None:
            if len(temporal_captions) != b:
                raise ValueError(f"{len(temporal_captions)} temporal captions for {b} captions")
            temporal = encode_prompts(model, [c if tc is None else tc for tc, c in zip(temporal_captions, captions)])
        vector = model.conditioner.micro_vector(b, num_frames, fps=fps, motion_bucket_id=motion_score)  # (b t) adm
    return _branch(spatial, temporal, vector, num_frames, height // 8, width // 8)


def text2vid(model, prompt: "str | Sequence[str]", *, temporal_prompt: "str | Sequence[str] | None" = None,
             negative_prompt: "str | Sequence[str]" = "", num_frames: int | None = None, width: int | None = None,
             height: int | None = None, fps: float | None = None, motion_score: float | None = None,
             guidance: Guidance | None = None, sampler: str = "euler", schedule: str = "karras",
             steps: int | None = None, seed: int = 0, decode_t: int | None = None,
             callback: ProgressFn | None = None, cancel: CancelFn | None = None,
             device=None, offload: bool = False) -> torch.Tensor:
    """Prompt -> video frames b t 3 H W in [0, 1] (vanilla CFG from the spec by default)."""
    _check_model(model)
    check_run(model, None, dict(num_frames=num_frames, width=width, height=height, fps=fps, motion_score=motion_score,
                                steps=steps, seed=seed, decode_t=decode_t),
              guidance=guidance, sampler=sampler, schedule=schedule, resize_mode="crop", device=device,
              offload=offload, autocast_dtype=None, ff_chunk_size=DEFAULT_FF_CHUNK, batch=len(_prompts(prompt)))

    def make_cond(_gen):
        return text_conditioning(model, prompt, temporal_prompt=temporal_prompt, negative_prompt=negative_prompt,
                                 num_frames=num_frames, width=width, height=height, fps=fps,
                                 motion_score=motion_score)
    return _run(model, make_cond, guidance, sampler=sampler, schedule=schedule, steps=steps, seed=seed,
                decode_t=decode_t, overlap=0, image_decoder=False, callback=callback, cancel=cancel, device=device,
                offload=offload, autocast_dtype=None, sampler_options=None)


@torch.no_grad()
def text_tower_from_sd21(model, tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Copy an SD 2.1 text tower (`cond_stage_model.model.*`, or our own prefix) into the model; every tower key must
    be present with its shape. Returns the keys copied."""
    _check_model(model)
    target = model.conditioner.text.model.state_dict()
    found = {}
    for key, value in tensors.items():
        for prefix in SD21_TEXT_PREFIXES:
            if key.startswith(prefix) and key[len(prefix):] in target:
                found[key[len(prefix):]] = value
    missing = sorted(set(target) - set(found))
    if missing:
        raise ValueError(f"text tower incomplete: {len(missing)} key(s) missing under {SD21_TEXT_PREFIXES}, "
                         f"e.g. {missing[:5]}")
    bad = [f"{k}: {list(v.shape)} vs {list(target[k].shape)}" for k, v in found.items() if v.shape != target[k].shape]
    if bad:
        raise ValueError(f"text tower shapes differ from this model's: {bad[:5]}")
    for k, v in found.items():
        target[k].copy_(v)
    return sorted(found)


def spec_for(base: ModelSpec) -> ModelSpec:
    """The text-to-video variant at a base SVD model's architecture: TEXT2VIDEO itself for a full-size base (SD 2.1's
    ViT-H-14 text tower); for a smaller base a text tower as wide as its cross-attention, as deep as its image tower,
    with the same head width and open_clip's vocabulary and context (`TEXT2VIDEO.clip`)."""
    text = TEXT2VIDEO.clip
    clip = replace(base.clip, text_context_length=text.text_context_length, text_vocab_size=text.text_vocab_size,
                   text_width=base.unet.context_dim, text_layers=base.clip.layers,
                   text_heads=max(1, base.unet.context_dim // base.clip.head_width))
    unet = replace(base.unet, in_channels=base.vae.z_channels, adm_in_channels=TEXT2VIDEO.unet.adm_in_channels)
    vae = replace(base.vae, decoder=TEXT2VIDEO.vae.decoder, first_stage_encoder=TEXT2VIDEO.vae.first_stage_encoder,
                  first_stage_quant=TEXT2VIDEO.vae.first_stage_quant)
    if (unet, vae, base.scale_factor) == (TEXT2VIDEO.unet, TEXT2VIDEO.vae, TEXT2VIDEO.scale_factor) and \
            replace(base.clip, **{k: getattr(text, k) for k in _TEXT_FIELDS}) == text:
        return TEXT2VIDEO
    return replace(TEXT2VIDEO, name=f"{base.name}_t2v", unet=unet, vae=vae, clip=clip, scale_factor=base.scale_factor,
                   height=base.height, width=base.width, steps=base.steps, decode_t=base.decode_t)


_TEXT_FIELDS = ("text_context_length", "text_vocab_size", "text_width", "text_layers", "text_heads")


def init_from(svd_model, spec: "str | ModelSpec | None" = None, device=None, dtype: torch.dtype | None = None):
    """A text-to-video model starting from an SVD UNet + VAE: conv_in keeps the 4 noise channels, label_emb the
    fps / motion columns, the text tower starts fresh (load SD 2.1's with `text_tower_from_sd21`); note the paper
    trains the base model before image-to-video, so this is a warm start, not the paper's order. `spec` defaults to
    `spec_for(svd_model.spec)`."""
    spec = get_variant(spec) if spec is not None else spec_for(svd_model.spec)
    if spec.cond_mode != "text":
        raise ValueError(f"init_from: {spec.name} is not a text-to-video variant")
    return _model.init_from(svd_model, spec, device=device, dtype=dtype)


__all__ = ["SPEC", "encode_prompts", "text_conditioning", "training_conditioning", "text2vid",
           "text_tower_from_sd21", "init_from"]
