"""Long videos beyond the trained frame count (paper Sec. 4 "generators"): sliding temporal windows and chaining.

(a) Sliding windows: at every sampler step the guided denoiser runs on overlapping windows of the model's trained
    frame count; the per-window denoised estimates D_w(x; sigma) are blended per frame with window weights,
    ``D(x)_t = sum_w a_{w,t} D_w(x)_t / sum_w a_{w,t}``. Per-frame conditioning (CLIP token, concat latent, fps /
    motion / cond_aug vector) is sliced with the same frame indices, and the per-frame guidance scales are the
    guider's for one window (each window is guided as the model was trained). "uniform" windows tile [0, N) with the
    last one aligned to the end; "looped" windows wrap around, so the last frames also blend with the first (a
    seamless loop). Only one window's activations exist at a time: memory stays flat in N.
(b) Chaining: clip k+1 is an image-to-video clip conditioned on the last frame of clip k; colour drift is corrected
    by matching every clip's per-channel mean and std (over time and space) to the first clip's, in latent space
    (before decoding) or in pixel space (after decoding).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from einops import rearrange

from .denoiser import VideoCond
from .guidance import Guidance, defaults_for
from .memory import ff_chunk_of
from .pipeline import Conditioning, GuidedDenoiser, check_run, decode, image_conditioning
from .progress import CancelFn, Cancelled, ProgressFn, shifted
from .sampling import drive
from .validation import MAX_SEED, check, check_choice

__all__ = ["WINDOW_SCHEDULES", "BLENDS", "COLOR_MATCH", "window_schedule", "window_weights", "slice_conditioning",
           "WindowedDenoiser", "sample_windows", "match_color", "chain"]

WINDOW_SCHEDULES = ("uniform", "looped")
BLENDS = ("pyramid", "flat")
COLOR_MATCH = ("latent", "pixel", "none")


# --------------------------------------------------------------------------------------------- windows


def window_schedule(num_frames: int, window: int, overlap: int, schedule: str = "uniform") -> list[list[int]]:
    """Frame indices of every window: stride = window - overlap; uniform ends flush with the video, looped wraps."""
    if schedule not in WINDOW_SCHEDULES:
        raise ValueError(f"window schedule {schedule!r}; expected one of {list(WINDOW_SCHEDULES)}")
    for name, v, lo in (("num_frames", num_frames, 1), ("window", window, 1), ("overlap", overlap, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name}={v!r} must be an integer >= {lo}")
    if overlap >= window:
        raise ValueError(f"overlap={overlap} must be smaller than window={window} (windows must advance)")
    if num_frames <= window:
        return [list(range(num_frames))]
    stride = window - overlap
    if schedule == "uniform":
        starts = list(range(0, num_frames - window + 1, stride))
        if starts[-1] != num_frames - window:
            starts.append(num_frames - window)  # last window flush with the end
        return [list(range(s, s + window)) for s in starts]
    # looped: windows start every `stride` frames and wrap past the end back to frame 0
    return [[(s + j) % num_frames for j in range(window)] for s in range(0, num_frames, stride)]


def window_count(num_frames: int, window: int, overlap: int, schedule: str = "uniform") -> int:
    """len(window_schedule(...)) in closed form (the memory check sizes requests of up to a million frames)."""
    if num_frames <= window:
        return 1
    stride = window - overlap
    return math.ceil((num_frames - window) / stride) + 1 if schedule == "uniform" else math.ceil(num_frames / stride)


def window_weights(window: int, blend: str = "pyramid") -> torch.Tensor:
    """Per-frame blend weight inside a window (float32, (window,)): pyramid min(j+1, window-j), or flat 1."""
    if blend not in BLENDS:
        raise ValueError(f"blend {blend!r}; expected one of {list(BLENDS)}")
    j = torch.arange(window, dtype=torch.float32)
    return torch.minimum(j + 1, window - j) if blend == "pyramid" else torch.ones(window)


def _take(t: torch.Tensor | None, idx: torch.Tensor, num_frames: int) -> torch.Tensor | None:
    """Frames `idx` of every video of a per-frame "(b t) ..." tensor -> "(b w) ..."."""
    if t is None:
        return None
    v = rearrange(t, "(b t) ... -> b t ...", t=num_frames)  # (b t) ... -> b t ...
    return rearrange(v[:, idx.to(v.device)], "b w ... -> (b w) ...")  # b w ... -> (b w) ...


def _slice_branch(c: VideoCond, idx: torch.Tensor, num_frames: int) -> VideoCond:
    # time_context is per video (b n d): shared by all windows unchanged
    return VideoCond(_take(c.crossattn, idx, num_frames), _take(c.concat, idx, num_frames),
                     _take(c.vector, idx, num_frames), c.time_context)


def slice_conditioning(cond: Conditioning, frames: Sequence[int]) -> Conditioning:
    """The conditioning of frames `frames` of every video (both branches sliced alike)."""
    idx = torch.as_tensor(list(frames), dtype=torch.long)
    n = cond.num_frames
    return Conditioning(_slice_branch(cond.cond, idx, n), _slice_branch(cond.uncond, idx, n), len(idx), cond.batch,
                        cond.height, cond.width, cond.latent_channels)


class WindowedDenoiser:
    """`model(x, sigma)` on N frames = blend of the guided denoiser on each window (one window in memory at a time)."""

    def __init__(self, model, cond: Conditioning, guidance: Guidance, *, window: int, overlap: int,
                 schedule: str = "uniform", blend: str = "pyramid", autocast_dtype: torch.dtype | None = None,
                 cancel: CancelFn | None = None):
        self.num_frames, self.batch = cond.num_frames, cond.batch
        self.windows = window_schedule(cond.num_frames, window, overlap, schedule)
        w = len(self.windows[0])
        self.weights = window_weights(w, blend)
        self.denoisers = [GuidedDenoiser(model, slice_conditioning(cond, idx), guidance, autocast_dtype)
                          for idx in self.windows]
        self.unet_device = self.denoisers[0].unet_device
        self.index = [torch.as_tensor(idx, dtype=torch.long) for idx in self.windows]
        self.cancel = cancel
        self.calls = 0  # model evaluations of whole windows (for tests and progress)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_) -> torch.Tensor:
        n = self.num_frames
        if len(self.windows) == 1 and self.windows[0] == list(range(n)):
            self.calls += 1
            return self.denoisers[0](x, sigma)  # one window covering the video: plain guided denoising, exact
        xv = rearrange(x, "(b t) ... -> b t ...", t=n)  # (b t) c h w -> b t c h w
        sv = rearrange(sigma, "(b t) -> b t", t=n)
        acc = torch.zeros_like(xv, dtype=torch.float32)
        norm = torch.zeros(n, dtype=torch.float32, device=x.device)
        for idx, denoiser in zip(self.index, self.denoisers):
            if self.cancel is not None and self.cancel():
                raise Cancelled("sampling cancelled between windows")
            i = idx.to(x.device)
            x_w = rearrange(xv[:, i], "b w ... -> (b w) ...")  # the window's frames as a short video
            s_w = rearrange(sv[:, i], "b w -> (b w)")
            d_w = rearrange(denoiser(x_w, s_w), "(b w) ... -> b w ...", w=len(idx))
            wt = self.weights.to(x.device)
            acc.index_add_(1, i, d_w.float() * wt.view(1, -1, *([1] * (d_w.ndim - 2))))
            norm.index_add_(0, i, wt)
            self.calls += 1
            del d_w, x_w
        out = acc / norm.view(1, -1, *([1] * (acc.ndim - 2)))
        return rearrange(out, "b t ... -> (b t) ...").to(x.dtype)  # b t c h w -> (b t) c h w


def _check_windows(model, cond: Conditioning, guidance: Guidance | None, *, window, overlap, schedule, blend,
                   sampler, sigma_schedule, steps, seed, autocast_dtype) -> tuple[int, int]:
    """`sample_windows`' arguments in range and its memory within the device's, before any model work (issue 12):
    the latents of all N frames stay alive, the UNet sees one window at a time, every window keeps its slice of
    the conditioning, nothing is decoded. Returns (window, overlap) with their defaults filled in."""
    check_choice("schedule", schedule, WINDOW_SCHEDULES)
    check_choice("blend", blend, BLENDS)
    window = model.spec.num_frames if window is None else window
    checked = check_run(model, None, dict(window=window, overlap=overlap, steps=steps, seed=seed,
                                          width=cond.width, height=cond.height),
                        guidance=guidance, sampler=sampler, schedule=sigma_schedule, resize_mode="crop", device=None,
                        offload=False, autocast_dtype=autocast_dtype, ff_chunk_size=ff_chunk_of(model),
                        batch=cond.batch, count=cond.num_frames, plan=_windows_plan(cond, window, overlap, schedule),
                        labels={"schedule": "sigma_schedule", "frames": "the conditioning's num_frames",
                                "width": "the conditioning's width"})
    window = checked["window"]
    return window, window // 2 if overlap is None else checked["overlap"]


def _windows_plan(cond: Conditioning, window: int, overlap: int | None, schedule: str):
    """Memory sizing of a sliding-window run of n frames at width w (memory.check_request_fits' `plan`)."""
    b, c, lh = cond.batch, cond.latent_channels, cond.height // 8

    def plan(n: int, w: int) -> dict:  # called once window and overlap passed their checks
        per_window = 2 * b * min(window, n) * (c * lh * (w // 8) + cond.cond.crossattn[0].numel()) * 4  # both branches
        windows = window_count(n, window, window // 2 if overlap is None else overlap, schedule)
        blend = b * n * 4 * lh * (w // 8) * 4  # the float32 accumulator of the blended estimate
        return dict(frames=b * n, unet_frames=b * min(window, n), decode=False, kept_bytes=windows * per_window + blend)
    return plan


@torch.inference_mode()
def sample_windows(model, cond: Conditioning, guidance: Guidance | None = None, *, window: int | None = None,
                   overlap: int | None = None, schedule: str = "uniform", blend: str = "pyramid",
                   sampler: str = "euler", sigma_schedule: str = "karras", steps: int | None = None,
                   seed: int | None = None, generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
                   callback: ProgressFn | None = None, cancel: CancelFn | None = None,
                   autocast_dtype: torch.dtype | None = None,
                   on_denoised: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
    """Guided EDM sampling of an N-frame conditioning with sliding windows -> latent (b N) 4 h w; `on_denoised` gets
    each step's blended x0 prediction (live previews).

    window defaults to the model's trained frame count, overlap to half of it; with N <= window this is exactly
    `pipeline.sample` (one window covering the video). steps / seed None: the variant's (reference script)."""
    spec = model.spec
    window, overlap = _check_windows(model, cond, guidance, window=window, overlap=overlap, schedule=schedule,
                                     blend=blend, sampler=sampler, sigma_schedule=sigma_schedule, steps=steps,
                                     seed=seed, autocast_dtype=autocast_dtype)
    denoiser = WindowedDenoiser(model, cond, guidance or defaults_for(spec), window=window, overlap=overlap,
                                schedule=schedule, blend=blend, autocast_dtype=autocast_dtype, cancel=cancel)
    return drive(denoiser, spec, cond.latent_shape, device=denoiser.unet_device, sampler=sampler,
                 schedule=sigma_schedule, steps=steps, seed=seed, generator=generator, noise=noise, callback=callback,
                 cancel=cancel, on_denoised=on_denoised)


# --------------------------------------------------------------------------------------------- chaining


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-video, per-channel mean and std over time and space of b t c h w -> (b 1 c 1 1) each."""
    return x.mean(dim=(1, 3, 4), keepdim=True), x.std(dim=(1, 3, 4), keepdim=True)


def match_color(x: torch.Tensor, ref_mean: torch.Tensor, ref_std: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Map b t c h w so each video's channel statistics equal the reference's: (x - mu) / sd * ref_sd + ref_mu."""
    mean, std = _stats(x.float())
    return ((x.float() - mean) / (std + eps) * ref_std + ref_mean).to(x.dtype)


def _chain_plan(model, image: torch.Tensor, clip_frames: int, height: int | None):
    """Memory sizing of a chained video of n frames at width w: one clip of `clip_frames` sampled and decoded at a
    time, the whole n-frame video (float32, b n 3 H W) filled through the run (memory.check_request_fits' `plan`)."""
    b = image.shape[0] if image.ndim == 4 else 1
    h = model.spec.height if height is None else height

    def plan(n: int, w: int) -> dict:
        return dict(frames=b * clip_frames, kept_bytes=b * n * 3 * h * w * 4)
    return plan


@torch.inference_mode()
def chain(model, image: torch.Tensor, *, num_frames: int, clip_frames: int | None = None,
          guidance: Guidance | None = None, color_match: str = "latent", width: int | None = None,
          height: int | None = None, fps: float | None = None, motion_bucket_id: float | None = None,
          cond_aug: float | None = None, resize_mode: str = "crop", sampler: str = "euler",
          sigma_schedule: str = "karras", steps: int | None = None, seed: int | None = None,
          decode_t: int | None = None,
          callback: ProgressFn | None = None, cancel: CancelFn | None = None,
          autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Chained image-to-video: each clip starts from the previous clip's last frame -> frames b N 3 H W in [0, 1].

    Clip k > 0 repeats its conditioning frame as its first frame, so that frame is dropped: N = T + k (T - 1).
    Clip k uses seed + k. Colour drift: "latent" matches each clip's latent statistics to clip 0's before decoding,
    "pixel" matches the decoded RGB statistics, "none" leaves them."""
    from .pipeline import sample

    spec = model.spec
    check_choice("color_match", color_match, COLOR_MATCH)
    num_frames = check("num_frames", num_frames)
    clip_frames = spec.num_frames if clip_frames is None else clip_frames
    checked = check_run(model, image, dict(num_frames=num_frames, clip_frames=clip_frames, width=width, height=height,
                                           fps=fps, motion_bucket_id=motion_bucket_id, cond_aug=cond_aug, steps=steps,
                                           seed=seed, decode_t=decode_t),
                        guidance=guidance, sampler=sampler, schedule=sigma_schedule, resize_mode=resize_mode,
                        device=None, offload=False, autocast_dtype=autocast_dtype, ff_chunk_size=ff_chunk_of(model),
                        count=num_frames, plan=_chain_plan(model, image, clip_frames, height),
                        labels={"schedule": "sigma_schedule"})
    clip_frames = checked["clip_frames"]
    seed = spec.seed if seed is None else checked["seed"]  # the variant's (reference script: 23)
    clips = 1 + max(0, math.ceil((num_frames - clip_frames) / (clip_frames - 1)))
    if seed + clips - 1 > MAX_SEED:
        raise ValueError(f"seed={seed} is impossible: clip k is sampled with seed + k, so for {clips} clips the seed "
                         f"must be at most {MAX_SEED - clips + 1}")
    n_steps = spec.steps if steps is None else steps  # sampler steps per clip
    out: torch.Tensor | None = None  # b N 3 H W, filled clip by clip (no list + concatenation copy)
    filled = 0
    ref_latent = ref_pixel = None
    current = image
    for k in range(clips):
        if cancel is not None and cancel():
            raise Cancelled(f"chaining cancelled before clip {k + 1}/{clips}")
        gen = torch.Generator().manual_seed(seed + k)
        cond = image_conditioning(model, current, num_frames=clip_frames, width=width, height=height, fps=fps,
                                  motion_bucket_id=motion_bucket_id, cond_aug=cond_aug,
                                  resize_mode=resize_mode if k == 0 else "crop", generator=gen)  # k > 0: already at size
        latent = sample(model, cond, guidance, sampler=sampler, schedule=sigma_schedule, steps=steps, generator=gen,
                        callback=shifted(callback, k * n_steps, clips * n_steps, "sampling"),
                        cancel=cancel, autocast_dtype=autocast_dtype)
        lv = rearrange(latent.float(), "(b t) c h w -> b t c h w", t=clip_frames)
        if color_match == "latent":
            if ref_latent is None:
                ref_latent = _stats(lv)
            else:
                lv = match_color(lv, *ref_latent)
        frames = decode(model, rearrange(lv, "b t c h w -> (b t) c h w"), clip_frames, decode_t=decode_t,
                        cancel=cancel)  # b t 3 H W in [0, 1], on the CPU
        if color_match == "pixel":
            if ref_pixel is None:
                ref_pixel = _stats(frames)
            else:
                frames = match_color(frames, *ref_pixel).clamp(0, 1)
        new = frames if k == 0 else frames[:, 1:]
        if out is None:
            out = torch.empty((frames.shape[0], num_frames, *frames.shape[2:]), dtype=frames.dtype)
        take = min(new.shape[1], num_frames - filled)
        out[:, filled:filled + take] = new[:, :take]
        filled += take
        current = frames[:, -1].clone()  # b 3 H W: conditions the next clip
        if callback:
            callback(k + 1, clips, "clips")
        del latent, lv, frames, new
    return out
