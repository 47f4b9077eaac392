"""Meta-device memory accounting: the activation peak of a full-size forward without allocating it.

Modules built on the `meta` device run their real forward code on shape-only tensors. `LiveBytes` watches every
ATen op under a dispatch mode, adds the storage of each new output and subtracts it when the storage dies, so its
peak is the largest sum of simultaneously alive activations: what a device allocator must hold beyond the weights
(kernel workspaces and allocator fragmentation come on top). It is exact for the code as written: views, in-place
ops and frees count as they happen.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .attention import DEFAULT_FF_CHUNK

GiB = 2 ** 30


class LiveBytes(TorchDispatchMode):
    """Tracks the bytes of alive op outputs (by storage) and their high-water mark."""

    def __init__(self):
        super().__init__()
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def _sweep(self) -> None:
        for key in [k for k, (ref, _) in self._live.items() if ref.expired()]:
            self.current -= self._live.pop(key)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self._sweep()  # storages freed since the last op (their addresses may be reused now)
        # an output aliasing an input allocates nothing: a view of a weight or of an input made before the
        # mode began (`weight.unbind()`, a no-op `.to`) is not an activation
        inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in self._live and key not in inputs:  # a view or in-place result reuses a storage
                    self._live[key] = (StorageWeakRef(storage), storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


def activation_peak(fn: Callable[[], object]) -> int:
    """Peak bytes of activations alive at once while `fn()` runs (inference mode), its result included."""
    with torch.inference_mode(), LiveBytes() as live:
        out = fn()
        del out
    return live.peak


@dataclass(frozen=True)
class MemoryPlan:
    """Weights and activation peaks of one full-size generation, in bytes."""

    variant: str
    frames: int
    height: int
    width: int
    dtype: torch.dtype
    weights: dict[str, int]
    unet_peak: int  # one guided UNet forward: both branches in one batch of 2 x frames
    decode_peak: int  # one temporal-decoder window of `decode_t` frames
    decode_t: int

    def lines(self) -> list[str]:
        w = self.weights
        total = sum(w.values())
        out = [f"full-size plan (meta-device accounting): {self.variant}, {self.frames} frames at "
               f"{self.width}x{self.height}, {str(self.dtype).replace('torch.', '')}"]
        out += [f"  weights {name:<12} {n / GiB:6.2f} GiB" for name, n in w.items()]
        out.append(f"  UNet forward (cond + uncond batch)  activation peak {self.unet_peak / GiB:6.2f} GiB")
        out.append(f"  VAE decode, decode_t={self.decode_t:<2}          activation peak {self.decode_peak / GiB:6.2f} GiB")
        out.append(f"  sampling with offloading (UNet on the device, then the VAE): "
                   f"{(w['unet'] + self.unet_peak) / GiB:.2f} GiB, then {(w['vae'] + self.decode_peak) / GiB:.2f} GiB; "
                   f"everything resident: {(total + max(self.unet_peak, self.decode_peak)) / GiB:.2f} GiB")
        return out


def full_size_plan(variant: str = "svd_xt", frames: int | None = None, height: int = 576, width: int = 1024,
                   dtype: torch.dtype = torch.float16, decode_t: int = 14) -> MemoryPlan:
    """Build `variant` on the meta device and account one guided UNet step and one decoder window."""
    from .model import build

    model = build(variant, device="meta").to(dtype)
    model.set_channels_last(True)
    frames = frames or model.spec.num_frames
    u = model.spec.unet
    b = 2 * frames  # conditional and unconditional branches in one forward
    h, w = height // 8, width // 8
    x = torch.empty(b, u.in_channels, h, w, device="meta", dtype=dtype)
    t = torch.empty(b, device="meta")
    ctx = torch.empty(b, 1, u.context_dim, device="meta", dtype=dtype)
    y = torch.empty(b, u.adm_in_channels, device="meta", dtype=dtype)
    unet_peak = activation_peak(lambda: model.unet(x, t, context=ctx, y=y, num_video_frames=frames))
    z = torch.empty(decode_t, model.first_stage_model.spec.z_channels, h, w, device="meta", dtype=dtype)
    decode_peak = activation_peak(lambda: model.first_stage_model.decode(z, decode_t))
    size = torch.tensor([], dtype=dtype).element_size()
    weights = {name: sum(p.numel() for p in mod.parameters()) * size for name, mod in
               (("unet", model.unet), ("vae", model.first_stage_model), ("conditioner", model.conditioner))}
    return MemoryPlan(variant, frames, height, width, dtype, weights, unet_peak, decode_peak, decode_t)


# ------------------------------------------------------------------------------------ per-stage plan (issue 13, 16)
# One generation runs four stages one after the other; each needs its weights on the device and its own activation
# peak, measured on the meta device. Everything resident (the default) keeps all weights through every stage;
# per-stage offload keeps only the running stage's (ComfyUI's per-stage patchers; `pipeline` offload=True).
STAGES = ("clip", "vae_encode", "unet", "vae_decode")
STAGE_LABELS = {"clip": "CLIP image encoder", "vae_encode": "VAE encode", "unet": "UNet step (CFG)",
                "vae_decode": "VAE decode"}


@dataclass(frozen=True)
class MemoryOptions:
    """What changes a run's memory: per-stage offload, fp8 UNet weights (`ops.store_fp8`), the feed-forward chunk
    (rows; None: whole), how a guided step batches its CFG branches (`cfg_batch`, see `cfg_in_turn`: "together",
    "in turn" or "auto", by the memory free for the step), the temporal decode window `decode_t` and spatial decode
    tiles (latent pixels; None: whole frames). Only `fp8` and the decode window / tiles change the result."""

    offload: bool = False
    fp8: bool = False
    ff_chunk: int | None = DEFAULT_FF_CHUNK
    cfg_batch: str = "auto"
    decode_t: int = 14
    decode_tile: int | None = None
    decode_tile_overlap: int | None = None


# ------------------------------------------------------------------------------------ CFG batching (issue 16)
CFG_BATCH = ("auto", "together", "in turn")


def check_cfg_batch(choice, label: str = "cfg_batch") -> str:
    """`choice` if it is one of `CFG_BATCH`, else ValueError naming `label`."""
    if not isinstance(choice, str) or choice not in CFG_BATCH:
        raise ValueError(f"{label}={choice!r} is not one of {', '.join(repr(c) for c in CFG_BATCH)}")
    return choice


def cfg_in_turn(choice: str, together: int, free: int | None) -> bool:
    """Whether a guided step runs its unconditional and conditional branches one after the other (one video per
    UNet forward, `VideoUNet.set_video_chunk(1)`: the same result, about half the activation peak) instead of in
    one batch: the one place this is decided. "together" / "in turn" force it; "auto" decides as ComfyUI's own
    sampler batches cond and uncond (comfy/samplers.py `calc_cond_batch`): together when the step's estimated need
    with both branches in one batch, `together` bytes (`guided_step_bytes`), fits the `free` bytes the caller has
    for it (a memory budget less the resident weights, or the device's free memory), in turn otherwise; `free`
    None (unknown) keeps them together."""
    check_cfg_batch(choice)
    if choice != "auto":
        return choice == "in turn"
    return free is not None and together > free


@dataclass(frozen=True)
class StagePlan:
    """Resident weights and activation peak (bytes) of each stage of one run (`STAGES`)."""

    weights: dict[str, int]  # bytes on the device while the stage runs
    activations: dict[str, int]
    cfg_in_turn: bool = False  # the guided step's CFG branches one after the other (`cfg_in_turn`)

    def peak(self, stage: str) -> int:
        return self.weights[stage] + self.activations[stage]

    @property
    def total(self) -> int:
        """The whole run's peak: the largest stage."""
        return max(self.peak(s) for s in STAGES)

    def as_dict(self) -> dict[str, int]:
        return {s: self.peak(s) for s in STAGES}


def stage_weights(model) -> dict[str, int]:
    """Bytes of the weights each stage reads, as stored (fp8 weights count one byte each)."""
    from .ops import weight_bytes

    cond = model.conditioner
    enc = cond.vae_encoder.encoder
    used_enc = weight_bytes(enc.encoder) + weight_bytes(enc.quant_conv)  # its decoder copy is never run
    fs = model.first_stage_model
    used_dec = weight_bytes(fs.decoder) + (weight_bytes(fs.post_quant_conv) if fs.post_quant_conv is not None else 0)
    return {"clip": weight_bytes(cond.clip), "vae_encode": used_enc, "unet": weight_bytes(model.unet),
            "vae_decode": used_dec}


def meta_model(variant, dtype: torch.dtype, fp8: bool = False):
    """`variant` built on the meta device in `dtype` (nothing allocated), its UNet in fp8 storage with `fp8`."""
    from . import ops
    from .model import build

    model = build(variant, device="meta", operations={"unet": ops.cast} if fp8 else None).to(dtype)
    if fp8:
        ops.store_fp8(model.unet, dtype)
    return model.set_channels_last(True)


def _stage_key(stage: str, options: MemoryOptions, in_turn: bool) -> tuple:
    """The options a stage's activation peak depends on (`in_turn`: the CFG batching `cfg_in_turn` chose)."""
    if stage == "unet":
        return stage, options.fp8, options.ff_chunk, in_turn
    if stage == "vae_decode":
        return stage, options.decode_t, options.decode_tile, options.decode_tile_overlap
    return (stage,)


def stage_activations(model, frames: int, height: int, width: int, dtype: torch.dtype, options: MemoryOptions,
                      cache: dict | None = None, in_turn: bool | None = None) -> dict[str, int]:
    """Activation peak of each stage of an img2vid run on a meta-device `model` (`activation_peak`): CLIP of the
    input image, VAE encode of the conditioning frame, one guided UNet forward (2 x frames; `in_turn`: one branch
    after the other, default `options.cfg_batch == "in turn"`), and the decode of all frames in `decode_t` windows
    (the decoded video included). `cache`: a dict reused across calls on the same model and size (stages whose
    options did not change are not measured again)."""
    from .vae_decode import decode_video

    spec = model.spec
    u = spec.unet
    cond = model.conditioner
    b, h, w = 2 * frames, height // 8, width // 8  # conditional and unconditional branches in one forward
    image = torch.empty(1, 3, height, width, device="meta", dtype=dtype)

    def unet():
        x = torch.empty(b, u.in_channels, h, w, device="meta", dtype=dtype)
        t = torch.empty(b, device="meta")
        ctx = torch.empty(b, 1, u.context_dim, device="meta", dtype=dtype)
        y = torch.empty(b, u.adm_in_channels, device="meta", dtype=dtype)
        model.unet.set_ff_chunk_size(options.ff_chunk)
        model.unet.set_video_chunk(1 if in_turn else None)
        return model.unet(x, t, context=ctx, y=y, num_video_frames=frames)

    def vae_decode():
        z = torch.empty(frames, spec.vae.z_channels, h, w, device="meta", dtype=dtype)
        return decode_video(model.first_stage_model, z, frames, decode_t=options.decode_t, tile=options.decode_tile,
                            tile_overlap=options.decode_tile_overlap, clamp=False)

    runs = {"clip": lambda: cond.clip(image), "vae_encode": lambda: cond.vae_encoder(image), "unet": unet,
            "vae_decode": vae_decode}
    in_turn = options.cfg_batch == "in turn" if in_turn is None else in_turn
    cache = {} if cache is None else cache
    out = {}
    for stage in STAGES:
        key = _stage_key(stage, options, in_turn)
        if key not in cache:
            cache[key] = activation_peak(runs[stage])
        out[stage] = cache[key]
    return out


def plan_stages(variant="svd_xt", frames: int | None = None, height: int = 576, width: int = 1024,
                dtype: torch.dtype = torch.float16, options: MemoryOptions = MemoryOptions(),
                model=None, cache: dict | None = None, budget: int | None = None) -> StagePlan:
    """Weights + activation peak per stage for one img2vid run of `variant` at full size, on the meta device.
    `model`: a meta-device model to reuse (built with `meta_model(variant, dtype, options.fp8)`); `cache`: see
    `stage_activations`; `budget`: the device's bytes, against which `options.cfg_batch` "auto" chooses the CFG
    batching (`cfg_in_turn`: free = budget - the UNet stage's resident weights; None: together)."""
    model = model if model is not None else meta_model(variant, dtype, options.fp8)
    frames = frames or model.spec.num_frames
    own = stage_weights(model)
    everything = sum(own.values())
    resident = own if options.offload else {s: everything for s in STAGES}
    elem = torch.tensor([], dtype=dtype).element_size()
    in_turn = cfg_in_turn(options.cfg_batch, guided_step_bytes(model.spec, frames, height, width, elem,
                                                               options.ff_chunk),
                          None if budget is None else budget - resident["unet"])
    acts = stage_activations(model, frames, height, width, dtype, options, cache, in_turn)
    return StagePlan(dict(resident), acts, in_turn)


ENCODE_MAPS = 3.2  # VAE encode of one image: about 3 full-resolution 128-channel maps (svd_xt 1024x576: 2.9)
CLIP_ACTIVATIONS = 64 * 2 ** 20  # ViT-H/14 at 224 px, one image (svd_xt: 26 MiB)


def memory_required(model, frames: int, height: int, width: int, dtype: torch.dtype | None = None,
                    options: MemoryOptions = MemoryOptions(), free: int | None = None) -> dict[str, int]:
    """Bytes each stage of an img2vid request needs on its device, keyed by `STAGES`: the stage's weights as
    stored (all stages' without `options.offload`) plus an upper bound of its activations, in closed form (no
    forward run): what a host passes to its memory manager before running the stage (ComfyUI's
    `load_models_gpu(memory_required=)`). `model`: the loaded model or one on the meta device; `dtype`: the
    compute dtype (default the model's); `free`: the device's bytes, against which `options.cfg_batch` "auto"
    chooses the CFG batching (`cfg_in_turn`; None: together, the larger request). The bounds are the
    request-check constants above, checked against the meta-device accounting (`plan_stages`) in
    tests/test_memory.py."""
    from .ops import compute_dtype

    dtype = dtype or compute_dtype(model.unet)
    elem = torch.tensor([], dtype=dtype).element_size()
    spec = model.spec
    own = stage_weights(model)
    resident = own if options.offload else {s: sum(own.values()) for s in STAGES}
    latents = latent_bytes(frames, height, width)
    in_turn = cfg_in_turn(options.cfg_batch, guided_step_bytes(spec, frames, height, width, elem, options.ff_chunk),
                          None if free is None else free - resident["unet"])
    unet = _unet_peak(spec, frames, height, width, elem, options.ff_chunk, cfg=not in_turn)
    tile_h, tile_w = height, width
    if options.decode_tile:
        tile_h, tile_w = min(height, 8 * options.decode_tile), min(width, 8 * options.decode_tile)
    video = frames * 3 * height * width * (2 * elem + 4 * VIDEO_COPIES_F32)
    decode = _decode_peak(spec, frames, tile_h, tile_w, elem, options.decode_t) + video + latents
    encode = int(ENCODE_MAPS * spec.vae.ch * height * width * elem)
    acts = {"clip": CLIP_ACTIVATIONS, "vae_encode": encode, "unet": unet + latents, "vae_decode": decode}
    return {s: resident[s] + acts[s] + SLACK for s in STAGES}


# ------------------------------------------------------------------------------------ request bounds (issue 12)
# A closed-form upper bound of one generation's memory, calibrated against the meta-device accounting above
# (tests/test_cli_safety.py checks it stays above `activation_peak` and near it). With C the UNet's first-level
# channels, n = (H/8)(W/8) latent tokens and e the element size, one guided step peaks at 9 level-0 maps of the
# 2T-frame batch (the first level-0 decoder ResBlock: its 3C-channel input, that input normalised, two skips, the
# conv output), 15 without feed-forward / attention chunking (svd_xt 25 x 576x1024 measures 9.00 / 15.00), plus
# the chunk's GEGLU working set (8 x the widest level per row); a temporal-decoder window of w frames peaks at 3.3 w
# full-resolution 128-channel maps plus 3.5 of one frame (svd_xt: 3.23 w; 320x576, w=2: 4.9 w).
UNET_MAPS, UNET_MAPS_UNCHUNKED, FF_ROW_WIDTHS = 9.5, 15.5, 3 * 8
DECODE_MAPS_PER_FRAME, DECODE_MAPS_FIXED = 3.3, 3.5
VIDEO_COPIES_F32 = 5  # decoded video: float conversion, [0, 1] rescale, clamp, uint8 staging (pipeline.decode)
LATENT_COPIES = 16  # noise, x, denoised, sampler history, concat latent, ... (b t) 4 h w float32 each


def latent_bytes(frames: int, height: int, width: int) -> int:
    """The sampler's float32 latents (`LATENT_COPIES` of (b t) 4 h/8 w/8) for `frames` frames in all videos."""
    return LATENT_COPIES * frames * 4 * (height // 8) * (width // 8) * 4
SLACK = 256 * 2 ** 20  # embeddings, CLIP at 224 px, allocator rounding: fixed, small next to the rest


@dataclass(frozen=True)
class RequestEstimate:
    """Bytes one generation needs on its device, per phase, including weights still to be placed there."""

    device: str
    frames: int
    height: int
    width: int
    weights: dict[str, int]  # per module, bytes not yet on the device
    sampling: int  # UNet activation peak + latents
    decoding: int  # decoder window peak + the decoded video
    offload: bool

    @property
    def total(self) -> int:
        w = self.weights
        if self.offload:  # UNet on the device while sampling, then the VAE while decoding
            return max(w.get("unet", 0) + self.sampling, w.get("vae", 0) + self.decoding) + SLACK
        return sum(w.values()) + max(self.sampling, self.decoding) + SLACK


def _unet_peak(spec, frames: int, height: int, width: int, elem: int, ff_chunk: int | None, cfg: bool) -> int:
    u = spec.unet
    batch = (2 if cfg else 1) * frames
    level0 = batch * u.model_channels * (height // 8) * (width // 8) * elem
    rows = batch * (height // 8) * (width // 8)
    if ff_chunk:
        ff = FF_ROW_WIDTHS * min(ff_chunk, rows) * u.model_channels * max(u.channel_mult) * elem
        return int(UNET_MAPS * level0 + ff)
    return int(UNET_MAPS_UNCHUNKED * level0)


def guided_step_bytes(spec, frames: int, height: int, width: int, elem: int, ff_chunk: int | None,
                      in_turn: bool = False) -> int:
    """Closed-form upper bound of one guided UNet step's activations plus the sampler's latents, for `frames`
    frames (all videos) at `height` x `width`, `elem` bytes per element: both CFG branches in one batch, or with
    `in_turn` one at a time (what `cfg_in_turn` weighs against the free memory)."""
    unet = _unet_peak(spec, frames, height, width, elem, ff_chunk, cfg=not in_turn)
    return unet + latent_bytes(frames, height, width)


def _decode_peak(spec, frames: int, height: int, width: int, elem: int, decode_t: int) -> int:
    window = min(decode_t, frames)
    one_map = spec.vae.ch * height * width * elem  # one frame, one full-resolution 128-channel map
    return int((DECODE_MAPS_PER_FRAME * window + DECODE_MAPS_FIXED) * one_map)


def _weights_to_place(model, device, dtype) -> dict[str, int]:
    """Bytes of each stage's weights that are not on `device` yet (all of them for a meta-device model)."""
    import torch as _torch

    target = _torch.device(device)
    out = {}
    for name, module in (("unet", model.model), ("vae", model.first_stage_model), ("conditioner", model.conditioner)):
        n = 0
        for p in module.parameters():
            placed = p.device.type == target.type and (target.index is None or p.device.index == target.index)
            if not placed:
                n += p.numel() * (_torch.tensor([], dtype=dtype or p.dtype).element_size())
        out[name] = n
    return out


def ff_chunk_of(model) -> int | None:
    """The feed-forward chunk size the model's UNet runs with now (`unet.set_ff_chunk_size`), for runs that keep
    the model's setting (the long-video and interpolation entry points)."""
    return next((m.ff_chunk_size for m in model.unet.modules() if hasattr(m, "ff_chunk_size")), None)


def estimate_request(model, *, frames: int, height: int, width: int, decode_t: int, device="cpu",
                     dtype: torch.dtype | None = None, ff_chunk: int | None = DEFAULT_FF_CHUNK, offload: bool = False,
                     cfg: bool = True, unet_frames: int | None = None, decode: bool = True,
                     kept_bytes: int = 0) -> RequestEstimate:
    """Upper bound of the memory one img2vid / orbit run needs on `device` (closed form, no allocation).

    `model` may live on the meta device (the CLI checks before loading) or be loaded (the API checks before
    sampling; weights already on the device count 0). `dtype` is the compute dtype (default: the weights').
    Other whole runs size themselves with: `unet_frames`, the frames of one guided UNet forward when fewer than
    the `frames` whose latents are alive (a sliding window over a long video); `decode=False` for a run that ends
    with the latent (the sliding-window sampler); `kept_bytes`, results held through the whole run (a long video
    filled clip by clip, the interpolated video), counted in both phases."""
    dtype = dtype or next(model.model.parameters()).dtype
    elem = torch.tensor([], dtype=dtype).element_size()
    spec = model.spec
    unet_frames = frames if unet_frames is None else min(unet_frames, frames)
    latents = latent_bytes(frames, height, width)
    sampling = _unet_peak(spec, unet_frames, height, width, elem, ff_chunk, cfg) + latents + kept_bytes
    decoding = 0
    if decode:
        video = frames * 3 * height * width * (2 * elem + 4 * VIDEO_COPIES_F32)
        decoding = _decode_peak(spec, frames, height, width, elem, decode_t) + video + latents + kept_bytes
    return RequestEstimate(str(device), frames, height, width, _weights_to_place(model, device, dtype), sampling,
                           decoding, offload)


def available_bytes(device="cpu") -> int | None:
    """Memory a new allocation can use now: free GPU memory plus what torch's allocator caches (CUDA), or
    available RAM (CPU: psutil, else /proc/meminfo MemAvailable). None when unknown (then nothing is refused)."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return None
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type != "cpu":
        return None
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


class MemoryBudgetError(ValueError):
    """A request that cannot fit on its device; the message gives the estimate and what would fit."""


def largest_that_fits(estimate_for: Callable[[int], RequestEstimate], available: int, upper: int) -> int:
    """The largest n <= `upper` whose estimate (growing with n) fits in `available` bytes (0 if none)."""
    lo, hi = 0, upper
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimate_for(mid).total <= available:
            lo = mid
        else:
            hi = mid - 1
    return lo


def check_request_fits(model, *, frames: int, height: int, width: int, decode_t: int, device="cpu",
                       dtype: torch.dtype | None = None, ff_chunk: int | None = DEFAULT_FF_CHUNK, offload: bool = False,
                       cfg: bool = True, labels: dict[str, str] | None = None, available: int | None = None,
                       plan: Callable[[int, int], dict] | None = None,
                       unit: tuple[str, str] = ("frame", "frames")) -> RequestEstimate:
    """Refuse (MemoryBudgetError) a request whose `estimate_request` exceeds the memory available on `device`,
    naming the estimate, the free memory and the most frames that would fit at that size.

    `frames` is the request's count (`unit`: singular, plural), the knob the advice names (`labels["frames"]`);
    `plan(count, width)`, when given, turns a count and a width into `estimate_request`'s sizing (frames,
    unet_frames, decode, kept_bytes) for runs that are not one img2vid pass: a long video's total frames vs. its
    window or clip, interpolation's pairs per batch of 5-frame windows."""
    labels = {"frames": "num_frames", "width": "width", **(labels or {})}

    def sizing(count: int, w: int) -> RequestEstimate:
        kw = {"frames": count, "width": w, **(plan(count, w) if plan else {})}
        return estimate_request(model, height=height, decode_t=decode_t, device=device, dtype=dtype,
                                ff_chunk=ff_chunk, offload=offload, cfg=cfg, **kw)

    est = sizing(frames, width)
    available = available_bytes(device) if available is None else available
    if available is None or est.total <= available:
        return est
    fit = largest_that_fits(lambda n: sizing(n, width), available, frames)
    wide = 64 * largest_that_fits(lambda n: sizing(frames, 64 * n), available, width // 64)
    one, many = unit
    advice = [f"at {width}x{height} at most {fit} {one if fit == 1 else many} fit (set {labels['frames']})" if fit
              else f"not even one {one} fits at {width}x{height}"]
    if wide:
        advice.append(f"{frames} {one if frames == 1 else many} fit up to {wide}x{height} (set {labels['width']})")
    weights = sum(est.weights.values())
    raise MemoryBudgetError(
        f"{frames} {one if frames == 1 else many} at {width}x{height} need about {est.total / GiB:.1f} GiB on "
        f"{device} (weights {weights / GiB:.1f} GiB, sampling {est.sampling / GiB:.1f} GiB, decoding "
        f"{est.decoding / GiB:.1f} GiB) but only {available / GiB:.1f} GiB is available; {'; '.join(advice)}; or use "
        f"a smaller dtype / offloading")


__all__ = ["STAGES", "MemoryOptions", "CFG_BATCH", "check_cfg_batch", "cfg_in_turn", "guided_step_bytes",
           "StagePlan", "plan_stages", "memory_required", "stage_weights", "meta_model",
           "stage_activations", "LiveBytes", "activation_peak", "MemoryPlan", "full_size_plan", "RequestEstimate",
           "estimate_request", "available_bytes", "MemoryBudgetError", "check_request_fits", "largest_that_fits",
           "ff_chunk_of"]
