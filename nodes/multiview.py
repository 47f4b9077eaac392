"""Multi-view nodes: an orbit builder (presets, custom lists) and a multi-view sampler (SV3D_u, SV3D_p, SVD-MV) that
returns the views in orbit order with their cameras for downstream 3D nodes."""
from __future__ import annotations

from comfy_api.latest import io

from svd_core import multiview
from svd_core.pipeline import NOISE_DEVICES, RESIZE_MODES
from svd_core.samplers import SAMPLERS
from svd_core.schedules import SCHEDULES

from ._comfy import (PREFIX, SEED_MAX, Progress, SVDGuidance, SVDModel, SVDOrbit, bad_input, check_inputs,
                     frames_to_image, image_to_bchw, size_error)
from .conditioning import parse_angles
from .sampling import NOISE_DEVICE_TOOLTIP, STEPS_TOOLTIP

PRESETS = ("static", "dynamic", "spiral", "custom")
CAMERAS_TOOLTIP = ("Cameras of the views, in order, as JSON: elevation, azimuth, polar (degrees), radius and a 4x4 "
                   "camera-to-world matrix per view (world z-up, OpenGL camera axes).")
ORBIT_TOOLTIP = "Per-view elevations and azimuths (degrees) for the Multi-View Sampler or SV3D Orbit Conditioning."
MASK_MEANINGS = ("background", "object")


def object_alpha(node_id: str, image, mask, mask_is: str):
    """ComfyUI MASK -> object alpha b h w (1 = object) or None. Load Image's mask is 1 - alpha ('background'); its
    64x64 all-zero placeholder (an image without alpha) means no mask."""
    if mask is None:
        return None
    m = mask if mask.ndim == 3 else mask[None]  # h w -> 1 h w
    if tuple(m.shape[-2:]) != tuple(image.shape[1:3]):
        if not bool(m.any()):
            return None
        raise bad_input(node_id, "mask", f"size {m.shape[-1]}x{m.shape[-2]} differs from the image's "
                                         f"{image.shape[2]}x{image.shape[1]}; give the mask of this image")
    if m.shape[0] not in (1, image.shape[0]):
        raise bad_input(node_id, "mask", f"has {m.shape[0]} masks for {image.shape[0]} images (give 1 or one each)")
    return (1.0 - m.float()) if mask_is == "background" else m.float()


class OrbitBuilder(io.ComfyNode):
    ID = PREFIX + "OrbitBuilder"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=cls.ID,
            display_name="SV3D Orbit Builder",
            category="svd/multiview",
            description=("Builds a camera orbit: static (constant elevation, the reference's even azimuth spacing, "
                         "last view = input view), dynamic (sine-wave elevation, optional azimuth jitter), spiral "
                         "(elevation from 'elevation' to 'end_elevation'), or custom comma lists. For keyframed "
                         "orbits use SV3D Orbit Keyframes."),
            inputs=[
                io.Combo.Input("preset", options=list(PRESETS), default="static", tooltip="Orbit shape."),
                io.Int.Input("num_views", default=21, min=2, max=256,
                             tooltip="Views on the orbit (SV3D / SVD-MV: 21)."),
                io.Float.Input("elevation", default=10.0, min=-90.0, max=90.0, step=0.5,
                               tooltip="Elevation in degrees (static, custom default); centre of the dynamic wave; "
                                       "start of the spiral."),
                io.Float.Input("amplitude", default=10.0, min=0.0, max=90.0, step=0.5,
                               tooltip="Dynamic: amplitude of the elevation sine wave in degrees."),
                io.Float.Input("periods", default=1.0, min=0.0, max=20.0, step=0.25,
                               tooltip="Dynamic: sine periods over the orbit."),
                io.Float.Input("end_elevation", default=30.0, min=-90.0, max=90.0, step=0.5,
                               tooltip="Spiral: elevation of the last view in degrees."),
                io.Float.Input("azimuth_jitter", default=0.0, min=0.0, max=45.0, step=0.5,
                               tooltip="Dynamic: random azimuth offset up to this many degrees (SV3D_p only)."),
                io.Int.Input("jitter_seed", default=0, min=0, max=SEED_MAX,
                             tooltip="Seed of the dynamic preset's azimuth jitter."),
                io.String.Input("elevations", default="",
                                tooltip="Custom: comma list of num_views elevations (or one value); empty = 'elevation'."),
                io.String.Input("azimuths", default="",
                                tooltip="Custom: comma list of num_views azimuths in degrees; empty = even spacing."),
                io.Float.Input("radius", default=2.0, min=0.01, max=100.0, step=0.1,
                               tooltip="Camera distance to the object, for the camera matrices."),
            ],
            outputs=[SVDOrbit.Output(display_name="orbit", tooltip=ORBIT_TOOLTIP),
                     io.String.Output(display_name="cameras", tooltip=CAMERAS_TOOLTIP)],
        )

    @classmethod
    def _build(cls, preset, num_views, elevation, amplitude, periods, end_elevation, azimuth_jitter, jitter_seed,
               elevations, azimuths, radius):
        try:
            elev = parse_angles(cls.ID, "elevations", elevations, num_views) if preset == "custom" else None
            azim = parse_angles(cls.ID, "azimuths", azimuths, num_views) if preset == "custom" else None
        except ValueError as exc:  # the shared parser speaks of num_frames; this node's input is num_views
            raise type(exc)(str(exc).replace("num_frames", "num_views")) from None
        try:
            return multiview.build_orbit(preset, num_views, elevation=elevation, amplitude=amplitude, periods=periods,
                                     end_elevation=end_elevation, azimuth_jitter=azimuth_jitter, seed=jitter_seed,
                                     elevations=elev, azimuths=azim, radius=radius)
        except ValueError as exc:
            raise bad_input(cls.ID, "elevations" if "elevation" in str(exc) else "preset", str(exc)) from None

    @classmethod
    def validate_inputs(cls, preset, num_views, elevation, amplitude, periods, end_elevation, azimuth_jitter,
                        jitter_seed, elevations, azimuths, radius) -> bool | str:
        ok = check_inputs(cls, preset=preset, num_views=num_views, elevation=elevation, amplitude=amplitude,
                          periods=periods, end_elevation=end_elevation, azimuth_jitter=azimuth_jitter,
                          jitter_seed=jitter_seed, radius=radius)
        if ok is not True:
            return ok
        if None in (preset, num_views, elevation, amplitude, periods, end_elevation, elevations, azimuths, radius):
            return True  # a linked input: checked at run time
        try:
            cls._build(preset, num_views, elevation, amplitude, periods, end_elevation, azimuth_jitter,
                       jitter_seed or 0, elevations, azimuths, radius)
        except ValueError as exc:
            return str(exc)
        return True

    @classmethod
    def execute(cls, preset, num_views, elevation, amplitude, periods, end_elevation, azimuth_jitter, jitter_seed,
                elevations, azimuths, radius) -> io.NodeOutput:
        orbit = cls._build(preset, num_views, elevation, amplitude, periods, end_elevation, azimuth_jitter,
                           jitter_seed, elevations, azimuths, radius)
        return io.NodeOutput(orbit.to_dict(), multiview.cameras_json(orbit))


class MultiViewSampler(io.ComfyNode):
    ID = PREFIX + "MultiViewSampler"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=cls.ID,
            display_name="SV3D Multi-View Sampler",
            category="svd/multiview",
            description=("Generates the views of an object around an orbit with SV3D_p (any orbit), SV3D_u (static "
                         "orbit) or SVD-MV (per-view elevation, even azimuths): conditioning, sampling and decoding "
                         "in one node, triangle guidance by default. With a mask the object is cropped, centred and "
                         "put on white, and on SV3D the last view is the input view, as the reference script does. "
                         "Outputs the views in orbit order (the last view faces the input image) and their cameras."),
            inputs=[
                SVDModel.Input("svd_model", tooltip="An SV3D_p, SV3D_u or SVD-MV model from an SVD loader."),
                io.Image.Input("image", tooltip="Object image, ideally centred on a plain background (first of a batch is used per video)."),
                io.Int.Input("width", default=576, min=64, max=4096, step=64, tooltip="View width (reference 576)."),
                io.Int.Input("height", default=576, min=64, max=4096, step=64, tooltip="View height (reference 576)."),
                io.Float.Input("cond_aug", default=1e-5, min=0.0, max=10.0, step=0.00001,
                               tooltip="Noise added to the conditioning image (SV3D reference 1e-5; SVD-MV 0.02)."),
                io.Combo.Input("resize_mode", options=list(RESIZE_MODES), default="crop",
                               tooltip="How the image is fitted to width x height."),
                io.Combo.Input("sampler", options=list(SAMPLERS), default="euler", tooltip="Sampling method."),
                io.Combo.Input("schedule", options=list(SCHEDULES), default="karras", tooltip="Noise schedule."),
                io.Int.Input("steps", default=0, min=0, max=1000, tooltip=STEPS_TOOLTIP),
                io.Int.Input("seed", default=23, min=0, max=SEED_MAX, control_after_generate=True,
                             tooltip="Seed of the noise (SV3D reference 23)."),
                io.Int.Input("decode_t", default=14, min=1, max=256, tooltip="Views decoded at once."),
                SVDOrbit.Input("orbit", optional=True,
                               tooltip="Orbit from SV3D Orbit Builder or Orbit Keyframes; default: static, 10 degrees, "
                                       "the model's view count."),
                SVDGuidance.Input("guidance", optional=True,
                                  tooltip="Optional guidance; default: the model's (triangle 1.0 -> 2.5)."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional object mask of the image (e.g. Load Image's MASK output): the object "
                                      "is cropped, centred and put on white as the SV3D reference script does."),
                io.Combo.Input("mask_is", options=list(MASK_MEANINGS), default="background", optional=True,
                               tooltip="What the mask's 1s mark: background (Load Image's mask = 1 - alpha) or "
                                       "object (segmentation nodes)."),
                io.Boolean.Input("recenter", default=True, optional=True,
                                 tooltip="With a mask: crop to the object and centre it on a white square (reference); "
                                         "off: only put the transparent parts on white."),
                io.Float.Input("image_frame_ratio", default=0.0, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="Share of the frame side the object's longer side takes after recentring; "
                                       "0 = keep the input's framing (the reference script's default None)."),
                io.Boolean.Input("replace_last_view", default=True, optional=True,
                                 tooltip="SV3D: replace the last view (the input's camera) by the prepared input image, "
                                         "as the reference script does."),
                io.Combo.Input("noise_device", options=list(NOISE_DEVICES), default="cpu", optional=True,
                               tooltip=NOISE_DEVICE_TOOLTIP),
            ],
            outputs=[io.Image.Output(display_name="views", tooltip="The views in orbit order, as an IMAGE batch."),
                     io.String.Output(display_name="cameras", tooltip=CAMERAS_TOOLTIP),
                     SVDOrbit.Output(display_name="orbit", tooltip="The orbit the views follow.")],
        )

    @classmethod
    def validate_inputs(cls, width, height, resize_mode, sampler, schedule, mask_is=None,
                        noise_device=None) -> bool | str:
        ok = check_inputs(cls, width=width, height=height, resize_mode=resize_mode, sampler=sampler,
                          schedule=schedule, mask_is=mask_is, noise_device=noise_device)
        if ok is not True:
            return ok
        error = size_error(cls.ID, width=width, height=height)
        if error:
            return error
        return True

    @classmethod
    def execute(cls, svd_model, image, width, height, cond_aug, resize_mode, sampler, schedule, steps, seed,
                decode_t, orbit=None, guidance=None, mask=None, mask_is="background", recenter=True,
                image_frame_ratio=0.0, replace_last_view=True, noise_device="cpu") -> io.NodeOutput:
        mv = multiview
        spec = svd_model.spec
        try:
            mv._kind(spec)
            orb = mv.Orbit.from_dict(orbit) if orbit is not None else mv.static_orbit(spec.num_frames)
            mv.check_orbit(spec, orb)
        except ValueError as exc:
            raise bad_input(cls.ID, "orbit" if orbit is not None else "svd_model", str(exc)) from None
        alpha = object_alpha(cls.ID, image, mask, mask_is)
        steps = steps or spec.steps  # 0: the loaded variant's reference steps
        model = svd_model.acquire()
        progress = Progress(steps + 1)

        def callback(i, n, stage=None):
            progress.absolute(i if stage == "sampling" else steps + (i >= n), steps + 1)

        views, orb = mv.multiview(model, image_to_bchw(image), orb, width=width, height=height, cond_aug=cond_aug,
                                  resize_mode=resize_mode, guidance=guidance, sampler=sampler, schedule=schedule,
                                  steps=steps, seed=seed, decode_t=decode_t, callback=callback, mask=alpha,
                                  recenter=recenter, image_frame_ratio=image_frame_ratio or None,
                                  replace_last=replace_last_view, noise_device=noise_device)
        return io.NodeOutput(frames_to_image(views), mv.cameras_json(orb, spec.name), orb.to_dict())


NODES = [OrbitBuilder, MultiViewSampler]
