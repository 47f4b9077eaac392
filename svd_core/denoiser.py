"""EDM preconditioning of the video UNet (paper App. D.2, eq. 10-13; reference `VScalingWithEDMcNoise`)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

# The video models' EDM sigma_data (paper App. D.2; reference `VScalingWithEDMcNoise` and `EDMWeighting` both
# assume 1): the one value the preconditioning here and the training loss weighting
# (`training.objective.edm_loss`) share.
SIGMA_DATA = 1.0


def edm_v_scalings(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """EDM v-preconditioning: c_skip = sd^2/(s^2+sd^2), c_out = -s sd/sqrt(s^2+sd^2), c_in = 1/sqrt(s^2+sd^2),
    c_noise = ln(s)/4; for sigma_data sd = 1 the reference's 1/(s^2+1), -s/sqrt(s^2+1), 1/sqrt(s^2+1)."""
    var = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / var
    c_out = -sigma * sigma_data / var**0.5
    c_in = 1.0 / var**0.5
    c_noise = 0.25 * sigma.log()
    return c_skip, c_out, c_in, c_noise


@dataclass
class VideoCond:
    """One branch of conditioning, per frame: crossattn (b t) n d, concat (b t) c h w, vector (b t) adm."""

    crossattn: torch.Tensor
    concat: torch.Tensor
    vector: torch.Tensor
    time_context: torch.Tensor | None = None  # b n d: temporal cross-attention context (default: crossattn's)

    def cat(self, other: "VideoCond") -> "VideoCond":
        """Stack two branches along the batch: [self; other] (uncond first, then cond, as the reference)."""
        tc = None
        if self.time_context is not None or other.time_context is not None:
            tc = torch.cat([self.time_context, other.time_context])
        return VideoCond(torch.cat([self.crossattn, other.crossattn]), torch.cat([self.concat, other.concat]),
                         torch.cat([self.vector, other.vector]), tc)

    def to(self, device=None, dtype=None) -> "VideoCond":
        def mv(t):
            return None if t is None else t.to(device=device, dtype=dtype if t.is_floating_point() else None)
        return VideoCond(mv(self.crossattn), mv(self.concat), mv(self.vector), mv(self.time_context))


def denoise(unet, x: torch.Tensor, sigma: torch.Tensor, cond: VideoCond, num_frames: int,
            image_only_indicator: torch.Tensor | None = None, sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """D(x; s) = c_skip x + c_out F([c_in x, concat]; c_noise): x (b t) c h w, sigma per (b t)."""
    c_skip, c_out, c_in, c_noise = edm_v_scalings(sigma.float(), sigma_data)
    shape = (-1,) + (1,) * (x.ndim - 1)
    x_in = torch.cat([x * c_in.view(shape).to(x.dtype), cond.concat.to(x.dtype)], dim=1)  # noisy latent + frame
    out = unet(x_in, c_noise.to(x.dtype), context=cond.crossattn, y=cond.vector, num_video_frames=num_frames,
               image_only_indicator=image_only_indicator, time_context=cond.time_context)
    return out * c_out.view(shape).to(out.dtype) + x * c_skip.view(shape).to(x.dtype)
