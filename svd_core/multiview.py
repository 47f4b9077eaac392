"""Multi-view generation (paper Sec. 4.5; SV3D): camera orbits, per-view cameras, SV3D_u / SV3D_p / SVD-MV sampling.

Orbits are per-view elevation and azimuth in degrees (plus a radius for the camera matrices):
  * `static_orbit`: constant elevation, the reference's azimuth spacing `linspace(0, 360, n+1)[1:] % 360` (the last
    view, azimuth 0, is the input image's viewpoint);
  * `dynamic_orbit`: SV3D's dynamic orbits, a sine wave on the elevation (amplitude, periods, phase) and optional
    seeded azimuth jitter around the reference spacing (last view kept at 0);
  * `spiral_orbit`: elevation moving linearly from a start to an end value over one turn;
  * `keyframe_orbit`: keyframes (frame, elevation, azimuth) linearly interpolated (unwrapped azimuths, 360 = a turn);
  * `custom_orbit`: explicit lists.
`camera_poses(orbit)` gives camera-to-world 4x4 matrices: world z up, object at the origin, camera at
r (cos e cos a, cos e sin a, sin e) looking at the origin, OpenGL / Blender camera axes (x right, y up, looking
along -z); `cameras_json` serialises views in order for downstream 3D tools.

Models: SV3D_p follows any orbit (polar = 90 - elevation, azimuth relative to the last view, reference); SV3D_u
and SVD-MV follow only the reference azimuth spacing (SVD-MV takes a per-view elevation: variant `svd_mv`, its
elevation in degrees through a 256-d sinusoidal embedding concatenated to SVD's vector, adm 1024).
For training: `SPEC` (SVD_MV) and `init_from(svd_model)`; the trainer's conditioning is
`svd_core.training.tasks.img2vid_cond` (the clip's elevation from the data).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Sequence

import numpy as np
import torch

from . import model as _model
from .conditioner import micro_values
from .guidance import Guidance
from .object_image import object_input, replace_last_view
from .attention import DEFAULT_FF_CHUNK
from .pipeline import (NOISE_DEVICES, Conditioning, _frame_conditioning, _run, check_run, orbit_angles,
                       orbit_conditioning, prepare_image)
from .progress import CancelFn, ProgressFn
from .validation import check_choice
from .variants import SVD_MV, ModelSpec, get_variant

SPEC = SVD_MV
PRESETS = ("static", "dynamic", "spiral", "custom")
DEFAULT_RADIUS = 2.0


@dataclass
class Orbit:
    """Per-view camera: elevation and azimuth in degrees, distance to the object (same for every view)."""

    elevations: list[float]
    azimuths: list[float]
    radius: float = DEFAULT_RADIUS
    preset: str = "custom"
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.elevations = [float(e) for e in self.elevations]
        self.azimuths = [float(a) % 360.0 for a in self.azimuths]
        orbit_angles(len(self.elevations), self.elevations, self.azimuths)  # lengths and elevation range
        if not self.radius > 0:
            raise ValueError(f"orbit radius={self.radius} must be > 0")

    @property
    def num_views(self) -> int:
        return len(self.elevations)

    def is_reference_spacing(self, tol: float = 1e-3) -> bool:
        """True when the azimuths are the reference's evenly spaced orbit (what SV3D_u and SVD-MV produce)."""
        ref = reference_azimuths(self.num_views)
        return all(abs(((a - r + 180) % 360) - 180) < tol for a, r in zip(self.azimuths, ref))

    def to_dict(self) -> dict:
        """The pack's SVDSUITE_ORBIT value ({"elevations", "azimuths"} + radius, preset)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Orbit":
        return cls(list(data["elevations"]), list(data["azimuths"]), float(data.get("radius", DEFAULT_RADIUS)),
                   str(data.get("preset", "custom")), dict(data.get("extra", {})))


def reference_azimuths(n: int) -> list[float]:
    """`linspace(0, 360, n+1)[1:] % 360` (reference `simple_video_sample.py`): 360/n, 2*360/n, ..., 0."""
    return [(360.0 * (i + 1) / n) % 360.0 for i in range(n)]


def static_orbit(num_views: int = 21, elevation: float = 10.0, radius: float = DEFAULT_RADIUS) -> Orbit:
    """One turn at a constant elevation, reference azimuth spacing."""
    return Orbit([elevation] * num_views, reference_azimuths(num_views), radius, "static")


def dynamic_orbit(num_views: int = 21, elevation: float = 10.0, amplitude: float = 10.0, periods: float = 1.0,
                  phase: float = 0.0, azimuth_jitter: float = 0.0, seed: int = 0,
                  radius: float = DEFAULT_RADIUS) -> Orbit:
    """SV3D dynamic orbit: elevation + amplitude * sin(2 pi (periods i / n) + phase); azimuths jittered by up to
    `azimuth_jitter` degrees (uniform, seeded; the last view stays at 0, the input view)."""
    i = np.arange(num_views, dtype=np.float64)
    elev = elevation + amplitude * np.sin(2 * math.pi * periods * (i + 1) / num_views + math.radians(phase))
    azim = np.array(reference_azimuths(num_views))
    if azimuth_jitter:
        rng = np.random.default_rng(seed)
        jitter = rng.uniform(-azimuth_jitter, azimuth_jitter, num_views)
        jitter[-1] = 0.0
        azim = (azim + jitter) % 360.0
    return Orbit(elev.tolist(), azim.tolist(), radius, "dynamic",
                 {"amplitude": amplitude, "periods": periods, "phase": phase, "azimuth_jitter": azimuth_jitter})


def spiral_orbit(num_views: int = 21, start_elevation: float = -10.0, end_elevation: float = 30.0,
                 radius: float = DEFAULT_RADIUS) -> Orbit:
    """One turn with the elevation moving linearly from start to end (reference azimuth spacing)."""
    elev = np.linspace(start_elevation, end_elevation, num_views)
    return Orbit(elev.tolist(), reference_azimuths(num_views), radius, "spiral")


def keyframe_orbit(keys: Sequence[tuple[int, float, float]], num_views: int = 21,
                   radius: float = DEFAULT_RADIUS) -> Orbit:
    """Keyframes (frame, elevation, azimuth) -> per-view angles, linear in between, held after the last key."""
    frames = [int(k[0]) for k in keys]
    if not keys or frames[0] != 0 or any(b <= a for a, b in zip(frames, frames[1:])) or frames[-1] >= num_views:
        raise ValueError(f"keyframe frames {frames} must start at 0, increase, and stay below num_views={num_views}")
    t = np.arange(num_views, dtype=np.float64)
    elev = np.interp(t, frames, [k[1] for k in keys])
    azim = np.interp(t, frames, [k[2] for k in keys])
    return Orbit(elev.tolist(), azim.tolist(), radius, "keyframes")


def custom_orbit(elevations: "float | Sequence[float]", azimuths: Sequence[float] | None = None,
                 num_views: int = 21, radius: float = DEFAULT_RADIUS) -> Orbit:
    """Explicit lists (one elevation for all views allowed; azimuths None = reference spacing)."""
    elev, azim = orbit_angles(num_views, elevations, azimuths)
    return Orbit(elev, azim, radius, "custom")


def build_orbit(preset: str, num_views: int = 21, *, elevation: float = 10.0, amplitude: float = 10.0,
                periods: float = 1.0, end_elevation: float = 30.0, azimuth_jitter: float = 0.0, seed: int = 0,
                elevations: "Sequence[float] | None" = None, azimuths: "Sequence[float] | None" = None,
                radius: float = DEFAULT_RADIUS) -> Orbit:
    """One entry point for the presets (the orbit-builder node)."""
    if preset == "static":
        return static_orbit(num_views, elevation, radius)
    if preset == "dynamic":
        return dynamic_orbit(num_views, elevation, amplitude, periods, 0.0, azimuth_jitter, seed, radius)
    if preset == "spiral":
        return spiral_orbit(num_views, elevation, end_elevation, radius)
    if preset == "custom":
        return custom_orbit(elevation if elevations is None else elevations, azimuths, num_views, radius)
    raise ValueError(f"unknown orbit preset {preset!r}; expected one of {PRESETS}")


def camera_poses(orbit: Orbit) -> torch.Tensor:
    """Camera-to-world matrices n 4 4 (world z up, OpenGL camera: x right, y up, looking along -z at the origin)."""
    e = torch.tensor(orbit.elevations, dtype=torch.float64).deg2rad()
    a = torch.tensor(orbit.azimuths, dtype=torch.float64).deg2rad()
    pos = orbit.radius * torch.stack([e.cos() * a.cos(), e.cos() * a.sin(), e.sin()], -1)  # n 3
    back = pos / pos.norm(dim=-1, keepdim=True)  # camera +z points away from the object
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand_as(back)
    # at the poles world-up is parallel to the view axis: use the azimuth direction instead
    pole = e.abs() > math.radians(89.999)
    up = torch.where(pole[:, None], -torch.sign(e)[:, None] * torch.stack([a.cos(), a.sin(), 0 * a], -1), up)
    right = torch.linalg.cross(up, back)
    right = right / right.norm(dim=-1, keepdim=True)
    cam_up = torch.linalg.cross(back, right)
    c2w = torch.eye(4, dtype=torch.float64).repeat(len(orbit.elevations), 1, 1)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, cam_up, back, pos
    return c2w.float()


def cameras_json(orbit: Orbit, model_name: str = "") -> str:
    """Views in order: index, elevation, azimuth, polar, radius, camera-to-world matrix (row-major)."""
    poses = camera_poses(orbit).tolist()
    views = [{"index": i, "elevation_deg": e, "azimuth_deg": a, "polar_deg": 90.0 - e, "radius": orbit.radius,
              "c2w": poses[i]} for i, (e, a) in enumerate(zip(orbit.elevations, orbit.azimuths))]
    return json.dumps({"model": model_name, "preset": orbit.preset, "num_views": orbit.num_views,
                       "convention": "world z-up, object at origin; camera at radius*(cos(el)cos(az), cos(el)sin(az), "
                                     "sin(el)); c2w columns = camera x (right), y (up), z (backward, OpenGL), position",
                       "views": views}, indent=1)


# --------------------------------------------------------------------------------------------- models


def _kind(spec: ModelSpec) -> str:
    values = micro_values(spec)
    if "azimuth" in values:
        return "sv3d_p"
    if "elevation" in values:
        return "svd_mv"
    if "fps" not in values and spec.cond_mode == "image":
        return "sv3d_u"
    raise ValueError(f"multi-view needs an SV3D_u, SV3D_p or SVD-MV model; {spec.name} takes {spec.vector_inputs}")


def check_orbit(spec: ModelSpec, orbit: Orbit) -> None:
    """An orbit the model can follow: SV3D_u fixed orbit (constant elevation, reference spacing); SVD-MV reference
    azimuth spacing (its elevation is conditioned per view); SV3D_p anything."""
    kind = _kind(spec)
    if kind == "sv3d_u" and (len(set(orbit.elevations)) > 1 or not orbit.is_reference_spacing()):
        raise ValueError("SV3D_u takes no camera input: it renders one static orbit with evenly spaced azimuths; "
                         "use the 'static' preset, or an SV3D_p model for dynamic and custom orbits")
    if kind == "svd_mv" and not orbit.is_reference_spacing():
        raise ValueError("SVD-MV is conditioned on the elevation only: its azimuths are the reference's even "
                         "spacing; use an SV3D_p model for custom azimuths")


def svd_mv_conditioning(model, image: torch.Tensor, *, elevations: "float | Sequence[float]" = 10.0,
                        num_frames: int | None = None, width: int | None = None, height: int | None = None,
                        fps: float | None = None, motion_bucket_id: float | None = None,
                        cond_aug: float | None = None, resize_mode: str = "crop", seed: int | None = None,
                        generator: torch.Generator | None = None) -> Conditioning:
    """SVD-MV: SVD's image conditioning plus the per-view elevation (degrees) in the vector (seed None: the
    variant's)."""
    spec = model.spec
    if _kind(spec) != "svd_mv":
        raise ValueError(f"svd_mv_conditioning needs an SVD-MV model; got {spec.name}")
    n = num_frames or spec.num_frames
    elev, _ = orbit_angles(n, elevations, None)
    cond_aug = spec.cond_aug if cond_aug is None else cond_aug
    img = prepare_image(image, width or spec.width, height or spec.height, resize_mode, (spec.height, spec.width))
    micro = dict(fps=spec.fps if fps is None else fps, cond_aug=cond_aug, elevation=elev,
                 motion_bucket_id=spec.motion_bucket_id if motion_bucket_id is None else motion_bucket_id)
    generator = generator or torch.Generator().manual_seed(spec.seed if seed is None else seed)
    return _frame_conditioning(model, img, n, cond_aug, micro, generator)


def multiview_conditioning(model, image: torch.Tensor, orbit: Orbit | None = None, *, width: int | None = None,
                           height: int | None = None, cond_aug: float | None = None, resize_mode: str = "crop",
                           seed: int | None = None, generator: torch.Generator | None = None) -> Conditioning:
    """Conditioning for `orbit` (default: static at 10 degrees, the model's view count) on any multi-view model."""
    spec = model.spec
    orbit = orbit or static_orbit(spec.num_frames)
    check_orbit(spec, orbit)
    kw = dict(num_frames=orbit.num_views, width=width, height=height, cond_aug=cond_aug, resize_mode=resize_mode,
              seed=seed, generator=generator)
    if _kind(spec) == "svd_mv":
        return svd_mv_conditioning(model, image, elevations=orbit.elevations, **kw)
    return orbit_conditioning(model, image, elevations=orbit.elevations, azimuths=orbit.azimuths, **kw)


def multiview(model, image: torch.Tensor, orbit: Orbit | None = None, *, width: int | None = None,
              height: int | None = None, cond_aug: float | None = None, resize_mode: str = "crop",
              guidance: Guidance | None = None, sampler: str = "euler", schedule: str = "karras",
              steps: int | None = None, seed: int | None = None, decode_t: int | None = None,
              callback: ProgressFn | None = None, cancel: CancelFn | None = None,
              device=None, offload: bool = False, mask: torch.Tensor | None = None, recenter: bool = True,
              image_frame_ratio: float | None = None, replace_last: bool = True,
              noise_device: str = "cpu") -> tuple[torch.Tensor, Orbit]:
    """Object image (b 3|4 h w in [0, 1], RGBA or + `mask` 1 = object) -> (views b n 3 H W in orbit order, the
    orbit); triangle CFG by default. As the reference sv3d branch: an alpha / mask is cropped, centred
    (`image_frame_ratio`) and put on white when `recenter`; on SV3D_u / SV3D_p, `replace_last` sets the last view
    (the input's camera) to that prepared input. SVD-MV's views are left as generated."""
    spec = model.spec
    orbit = orbit or static_orbit(spec.num_frames)
    check_orbit(spec, orbit)
    check_choice("noise_device", noise_device, NOISE_DEVICES)
    check_run(model, image, dict(num_frames=orbit.num_views, width=width, height=height, cond_aug=cond_aug,
                                 steps=steps, seed=seed, decode_t=decode_t, elevations=orbit.elevations,
                                 azimuths=orbit.azimuths),
              guidance=guidance, sampler=sampler, schedule=schedule, resize_mode=resize_mode, device=device,
              offload=offload, autocast_dtype=None, ff_chunk_size=DEFAULT_FF_CHUNK,
              labels={"frames": "the orbit's number of views"})
    w, h = width or spec.width, height or spec.height
    ready = object_input(image, mask, width=w, height=h, recenter=recenter, image_frame_ratio=image_frame_ratio)
    ready = (prepare_image(ready, w, h, resize_mode) + 1.0) / 2.0  # b 3 H W in [0, 1]; the size warning comes later

    def make_cond(gen):
        return multiview_conditioning(model, ready, orbit, width=w, height=h, cond_aug=cond_aug, generator=gen)
    frames = _run(model, make_cond, guidance, sampler=sampler, schedule=schedule, steps=steps, seed=seed,
                  decode_t=decode_t, overlap=0, image_decoder=False, callback=callback, cancel=cancel, device=device,
                  offload=offload, autocast_dtype=None, sampler_options=None, noise_device=noise_device)
    if replace_last and _kind(spec) != "svd_mv":
        frames = replace_last_view(frames, ready)
    return frames, orbit


# --------------------------------------------------------------------------------------------- training


def spec_for(base: ModelSpec) -> ModelSpec:
    """SVD-MV at a base SVD model's architecture (UNet widths, VAE, CLIP, latent scale): SVD_MV itself for a
    full-size base, else SVD_MV's conditioning on the base's sizes (like `interpolation.spec_for`)."""
    spec = replace(SVD_MV, unet=replace(base.unet, adm_in_channels=SVD_MV.unet.adm_in_channels), vae=base.vae,
                   clip=base.clip, scale_factor=base.scale_factor)
    if (spec.unet, spec.vae, spec.clip, spec.scale_factor) == (SVD_MV.unet, SVD_MV.vae, SVD_MV.clip,
                                                              SVD_MV.scale_factor):
        return SVD_MV
    return replace(spec, name=f"{base.name}_mv", num_frames=base.num_frames, height=base.height, width=base.width,
                   steps=base.steps, decode_t=base.decode_t)


def init_from(svd_model, spec: "str | ModelSpec | None" = None, device=None, dtype: torch.dtype | None = None):
    """SVD-MV from an SVD / SVD-XT model: everything copied, label_emb's input grown 768 -> 1024 (elevation columns
    zero, so the new model starts as SVD); see `svd_core.model.init_from`. `spec` defaults to
    `spec_for(svd_model.spec)`."""
    spec = get_variant(spec) if spec is not None else spec_for(svd_model.spec)
    if _kind(spec) != "svd_mv":
        raise ValueError(f"init_from: {spec.name} is not an SVD-MV variant")
    return _model.init_from(svd_model, spec, device=device, dtype=dtype)


__all__ = ["SPEC", "PRESETS", "Orbit", "reference_azimuths", "static_orbit", "dynamic_orbit", "spiral_orbit",
           "keyframe_orbit", "custom_orbit", "build_orbit", "camera_poses", "cameras_json", "check_orbit",
           "svd_mv_conditioning", "multiview_conditioning", "multiview", "init_from"]
