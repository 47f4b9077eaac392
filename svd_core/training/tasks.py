"""Per-task training conditioning, built per step from cached data in the layout the samplers use (paper App. D.2:
noised conditioning frame VAE-encoded and concatenated, CLIP token, micro-conditioning vector; App. D.3 text;
App. D.5 interpolation through `svd_core.interpolation`; App. D.6 multi-view elevation). The one training path:
the trainer builds a task's conditioning here, then applies guidance dropout with `objective.drop_conditioning`
(`null_context` gives a text model's unconditional tokens)."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from einops import repeat

from ..denoiser import VideoCond
from ..interpolation import concat_sequence, init_from, noised_end_latents
from ..text2video import encode_prompts, training_conditioning
from .data import sample_caption
from .objective import sample_cond_aug


def _cond_aug(gens: Sequence[torch.Generator], cfg) -> torch.Tensor:
    return torch.cat([sample_cond_aug(1, g, cfg.cond_aug_mean, cfg.cond_aug_std) for g in gens])  # b


def _noised_images(batch: dict, which: int, cond_aug: torch.Tensor, gens: Sequence[torch.Generator]) -> torch.Tensor:
    """Cached uint8 frame `which` (0 first, 1 last) -> [-1, 1] plus cond_aug * N(0, 1) noise per video: b 3 H W."""
    img = batch["images"][:, which].float() / 127.5 - 1.0  # b 3 H W in [-1, 1]
    noise = torch.stack([torch.randn(img.shape[1:], generator=g) for g in gens])
    return img + cond_aug.view(-1, 1, 1, 1) * noise


@torch.no_grad()
def _encode(model, images: torch.Tensor) -> torch.Tensor:
    enc = model.conditioner.vae_encoder
    p = next(enc.parameters())
    return enc(images.to(p.device, p.dtype)).float()  # b 4 h w (mode, unscaled, as the sampler's concat)


def _vector(model, batch: dict, cond_aug: torch.Tensor, num_frames: int) -> torch.Tensor:
    """The model's vector per frame from each clip's real fps / motion bucket, its cond_aug (and its camera
    elevation for SVD-MV), through the generation paths' own `Conditioner.micro_vector`: (b t) adm."""
    try:
        return model.conditioner.micro_vector(len(cond_aug), num_frames, fps=batch["fps"], cond_aug=cond_aug,
                                              motion_bucket_id=batch["motion_bucket_id"],
                                              elevation=batch.get("elevation"))
    except ValueError as exc:
        raise ValueError(f"training {model.spec.name}: {exc} (the clips' data lacks this column)") from None


def img2vid_cond(model, batch: dict, num_frames: int, gens: Sequence[torch.Generator], cfg) -> VideoCond:
    """SVD image-to-video (and SVD-MV): the first frame noised by cond_aug ~ logN(-3, 0.5^2), its VAE latent copied
    over time; the CLIP token of the clean first frame; vector (fps, motion bucket, cond_aug) per frame."""
    cond_aug = _cond_aug(gens, cfg)
    latent = _encode(model, _noised_images(batch, 0, cond_aug, gens))
    clip = batch["clip"][:, 0:1].float()  # b 1 d
    return VideoCond(repeat(clip, "b n d -> (b t) n d", t=num_frames),  # every frame attends to the image token
                     repeat(latent, "b c h w -> (b t) c h w", t=num_frames),  # the frame's latent over time
                     _vector(model, batch, cond_aug, num_frames))


def interpolation_cond(model, batch: dict, num_frames: int, gens: Sequence[torch.Generator], cfg) -> VideoCond:
    """Frame interpolation (App. D.5): first and last frames' latents noise-augmented in latent space
    (`svd_core.interpolation.noised_end_latents`, as generation) with the learned mask embedding between them
    (`concat_sequence`, gradients reach the mask), both CLIP tokens; vector from the window's real fps (the
    preset samples windows at 28 fps: the sequence's frame rate, as at generation)."""
    cond_aug = _cond_aug(gens, cfg)
    ends = batch["images"].float() / 127.5 - 1.0  # b 2 3 H W uint8 -> [-1, 1]
    first, last = noised_end_latents(model, ends[:, 0], ends[:, 1], cond_aug, gens)
    concat = concat_sequence(model, first.float(), last.float(), num_frames)  # (b t) 5 h w
    clip = batch["clip"].float()  # b 2 d: first and last frame tokens
    return VideoCond(repeat(clip, "b n d -> (b t) n d", t=num_frames), concat,
                     _vector(model, batch, cond_aug, num_frames))


def text2video_cond(model, batch: dict, num_frames: int, gens: Sequence[torch.Generator], cfg) -> VideoCond:
    """Text-to-video (App. D.3): one caption per example sampled from the clip's captions (CoCa 0.5, video
    captioner 0.25, LLM 0.25, App. C / E.2.2; `data.sample_caption` with the example's generator) through the
    model's text tower (`svd_core.text2video`); the 15% caption dropout (the "" prompt's tokens, the sampler's
    unconditional branch) is the trainer's `drop_conditioning` with `null_context`. Motion conditioning in motion-bucket units (`data.motion_bucket` of the clip's
    motion score), the unit generation takes (default 127)."""
    h, w = batch["latents"].shape[-2:]
    captions = [sample_caption(c, f, g) for c, f, g in
                zip(batch.get("captions", [{}] * len(gens)), batch["caption"], gens)]
    return training_conditioning(model, captions, num_frames=num_frames, height=h * 8, width=w * 8,
                                 fps=batch["fps"], motion_score=batch["motion_bucket_id"])


CondBuilder = Callable[..., VideoCond]
TASK_BUILDERS: dict[str, CondBuilder] = {"img2vid": img2vid_cond, "interpolation": interpolation_cond,
                                         "text2video": text2video_cond, "multiview": img2vid_cond}


@torch.no_grad()
def null_context(model) -> torch.Tensor | None:
    """What guidance dropout puts in a dropped video's cross-attention: a text model's empty-prompt tokens (1 n d,
    the sampler's default negative prompt; paper App. D.3), None for image-conditioned models (zeros)."""
    if model.spec.cond_mode != "text":
        return None
    return encode_prompts(model, "")


def extra_trainable(model, task: str) -> dict[str, torch.nn.Parameter]:
    """Conditioner parameters a task trains besides the UNet: the interpolation mask embedding (App. D.5)."""
    if task == "interpolation":
        return {"mask_embedding": model.conditioner.vae_encoder.mask_embedding}
    return {}


def model_for_task(model, task: str):
    """The model a task trains. Interpolation starts from the base video model (paper App. D.5): a base (image- or
    text-conditioned) model becomes its interpolation variant (`svd_core.interpolation.init_from`: new input
    channels zero, so it starts as the base on the base's channels); a model that already is one, and every other
    task's model, is returned unchanged."""
    if task == "interpolation" and model.spec.cond_mode != "interpolation":
        return init_from(model)
    return model
