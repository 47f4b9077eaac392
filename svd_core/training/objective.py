"""The training objective (paper App. D): EDM denoising score matching with log-normal noise levels, the
(1 + s^2) / s^2 weighting, conditioning-frame noise augmentation and conditioning dropout for guidance."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..denoiser import SIGMA_DATA, VideoCond, denoise


@dataclass(frozen=True)
class NoiseDistribution:
    """log sigma ~ N(p_mean, p_std^2) (EDM, paper App. D.2; reference `EDMSampling`)."""

    p_mean: float
    p_std: float

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n noise levels sigma = exp(p_mean + p_std * z), z ~ N(0, 1)."""
        z = torch.randn(n, generator=generator)
        return (self.p_mean + self.p_std * z).exp()

    def quantiles(self, n: int) -> torch.Tensor:
        """n deterministic sigmas at the mid-quantiles (validation uses these: the same levels every time)."""
        q = (torch.arange(n, dtype=torch.float64) + 0.5) / n
        z = math.sqrt(2.0) * torch.erfinv(2.0 * q - 1.0)
        return (self.p_mean + self.p_std * z).exp().float()


def edm_weight(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """lambda(s) = (s^2 + sigma_data^2) / (s sigma_data)^2 = (1 + s^2) / s^2 for sigma_data 1 (paper eq. 8)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def sample_cond_aug(n: int, generator: torch.Generator | None = None, mean: float = -3.0,
                    std: float = 0.5) -> torch.Tensor:
    """Conditioning-frame noise level, log sigma ~ N(-3.0, 0.5^2) (paper App. D.2); it is also embedded as cond_aug."""
    return (mean + std * torch.randn(n, generator=generator)).exp()


def per_video_cond_aug(cond_aug, b: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """cond_aug per video (b,): `sample_cond_aug` draws when None; a scalar is shared; else b values."""
    if cond_aug is None:
        return sample_cond_aug(b, generator)
    aug = torch.as_tensor(cond_aug, dtype=torch.float32).flatten()
    return aug.repeat(b) if aug.numel() == 1 else aug


def edm_loss(unet, latents: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor, cond: VideoCond,
             num_frames: int, reduce: bool = True, sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """E[lambda(s) ||D(x + s n; s) - x||^2] (paper eq. 7-8) with the variant's preconditioning (App. D.2).

    latents, noise: (b t) c h w; sigma: one per video (b), shared by its frames as at sampling time. `sigma_data`
    goes to both the preconditioning D and the weighting lambda (EDM). Returns the mean over videos, or the
    per-video losses (b) with `reduce=False`.
    """
    b = sigma.shape[0]
    if latents.shape[0] != b * num_frames:
        raise ValueError(f"latents hold {latents.shape[0]} frames but sigma has {b} videos of {num_frames} frames")
    sigma_f = sigma.repeat_interleave(num_frames).to(latents.device)  # b -> (b t)
    shape = (-1,) + (1,) * (latents.ndim - 1)
    noised = latents + noise * sigma_f.view(shape).to(latents.dtype)
    denoised = denoise(unet, noised, sigma_f, cond, num_frames, sigma_data=sigma_data)
    err = (denoised.float() - latents.float()) ** 2  # (b t) c h w
    per_video = err.reshape(b, -1).mean(dim=1)  # (b t) c h w -> b (t c h w), mean
    losses = edm_weight(sigma.to(per_video.device).float(), sigma_data) * per_video
    return losses.mean() if reduce else losses


def _keep_or(x: torch.Tensor, keep: torch.Tensor, fill: torch.Tensor | None) -> torch.Tensor:
    """Rows of x (one per keep value) where keep > 0, else `fill` (broadcast; None: zeros)."""
    keep = keep.to(x.device).view((-1,) + (1,) * (x.ndim - 1)) > 0
    fill = x.new_zeros(()) if fill is None else fill.to(x.device, x.dtype)
    return torch.where(keep, x, fill)


def drop_conditioning(cond: VideoCond, keep: torch.Tensor, num_frames: int,
                      null_context: torch.Tensor | None = None) -> VideoCond:
    """Classifier-free guidance dropout, the one for every task: videos with keep == 0 (keep: b) get the
    unconditional branch the sampler uses. Image-conditioned models: zero CLIP token and zero concat latent (paper
    App. D.2; reference `force_uc_zero_embeddings`). Text models: `null_context` (1 n d, the empty prompt's tokens,
    App. D.3's text dropout) for the spatial and the temporal cross-attention. The vector is kept."""
    k = keep.repeat_interleave(num_frames)  # b -> (b t)
    tc = cond.time_context
    if tc is not None:
        tc = _keep_or(tc, keep, null_context)  # b n d
    return VideoCond(_keep_or(cond.crossattn, k, null_context), _keep_or(cond.concat, k, None), cond.vector, tc)
