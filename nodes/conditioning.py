"""Conditioning nodes: an input image (SVD / SVD-XT) or an image plus a camera orbit (SV3D) -> sampler conditioning."""
from __future__ import annotations

import numpy as np
from comfy_api.latest import io

from svd_core import pipeline
from svd_core.pipeline import RESIZE_MODES
from svd_core.validation import check

from ._comfy import (PREFIX, SEED_MAX, SVDConditioning, SVDModel, SVDOrbit, bad_input, check_inputs, image_to_bchw,
                     size_error)

COND_TOOLTIP = "Conditioning for the SVD Sampler (image embedding, first-frame latent, per-frame vectors)."


def fps_output() -> io.Float.Output:
    """The conditioned frame rate as an output, so the video is written at the fps the motion was conditioned on
    (Create Video's fps, VideoHelperSuite's frame_rate) without typing it twice."""
    return io.Float.Output(display_name="fps", tooltip="The frame rate the motion is conditioned on: connect it to "
                                                       "Create Video's fps (or Video Combine's frame_rate).")


def _size_inputs(width: int, height: int, frames: int) -> list:
    return [
        io.Int.Input("width", default=width, min=64, max=4096, step=64,
                     tooltip="Video width in pixels (multiple of 64); the reference size is 1024x576 (SV3D 576x576)."),
        io.Int.Input("height", default=height, min=64, max=4096, step=64,
                     tooltip="Video height in pixels (multiple of 64)."),
        io.Int.Input("num_frames", default=frames, min=1, max=256,
                     tooltip="Frames to generate (SVD 14, SVD-XT 25, SV3D 21: what each model was trained on)."),
    ]


def _common_inputs(cond_aug: float) -> list:
    return [
        io.Float.Input("cond_aug", default=cond_aug, min=0.0, max=10.0, step=0.00001,
                       tooltip="Noise added to the conditioning image (reference 0.02; SV3D 1e-5). More noise = more motion, less fidelity."),
        io.Combo.Input("resize_mode", options=list(RESIZE_MODES), default="crop",
                       tooltip="How the image is fitted to width x height: crop (fill, cut the overflow), pad (fit, grey borders) or stretch."),
        io.Int.Input("seed", default=23, min=0, max=SEED_MAX, control_after_generate=True,
                     tooltip="Seed of the conditioning-augmentation noise (reference script 23)."),
    ]


def _native_outputs() -> list:
    return [
        io.Conditioning.Output(display_name="positive", tooltip=(
            "The same conditioning as native CONDITIONING for the loader's native MODEL (KSampler, "
            "SamplerCustomAdvanced, guiders): CLIP token, noised first-frame latent, micro-conditioning (fps / "
            "motion bucket / cond_aug, or the camera orbit). First image of a batch only (native sampling treats a "
            "batch as one video).")),
        io.Conditioning.Output(display_name="negative", tooltip=(
            "The reference's unconditional branch as native CONDITIONING: zero CLIP token and zero first-frame "
            "latent, the same micro-conditioning.")),
        io.Latent.Output(display_name="latent", tooltip=(
            "An empty latent of num_frames frames at width x height, the start of native KSampler.")),
    ]


class ImageConditioning(io.ComfyNode):
    ID = PREFIX + "ImageConditioning"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=cls.ID,
            display_name="SVD Image Conditioning",
            category="svd/conditioning",
            description=("Turns a still image into SVD / SVD-XT conditioning: CLIP image embedding, the noised "
                         "first-frame latent, and the fps / motion-bucket / cond_aug micro-conditioning. Each image of "
                         "a batch becomes its own video."),
            inputs=[
                SVDModel.Input("svd_model", tooltip="The SVD or SVD-XT model from an SVD loader."),
                io.Image.Input("image", tooltip="Start image(s) (ComfyUI IMAGE, e.g. from Load Image)."),
                *_size_inputs(1024, 576, 14),
                io.Int.Input("fps", default=7, min=1, max=60,
                             tooltip="Frame rate the motion is conditioned on (reference 7; embedded as fps_id = fps - 1)."),
                io.Int.Input("motion_bucket_id", default=127, min=0, max=255,
                             tooltip="Amount of motion, 0-255 as the released models were trained (reference 127; "
                                     "higher = more motion)."),
                *_common_inputs(0.02),
            ],
            outputs=[SVDConditioning.Output(display_name="conditioning", tooltip=COND_TOOLTIP), fps_output(),
                     *_native_outputs()],
        )

    @classmethod
    def validate_inputs(cls, width: int, height: int, resize_mode: str) -> bool | str:
        ok = check_inputs(cls, width=width, height=height, resize_mode=resize_mode)
        return (size_error(cls.ID, width=width, height=height) or True) if ok is True else ok

    @classmethod
    def execute(cls, svd_model, image, width, height, num_frames, fps, motion_bucket_id, cond_aug, resize_mode,
                seed) -> io.NodeOutput:
        from .native import native_conditioning

        model = svd_model.acquire("conditioner")
        cond = pipeline.image_conditioning(
            model, image_to_bchw(image), num_frames=num_frames, width=width, height=height, fps=fps,
            motion_bucket_id=motion_bucket_id, cond_aug=cond_aug, resize_mode=resize_mode, seed=seed)
        return io.NodeOutput(cond, float(fps), *native_conditioning(cond, fps, motion_bucket_id, cond_aug))


def parse_angles(node_id: str, name: str, text: str, num_frames: int | None, default=None) -> list[float] | None:
    """'10' (every frame), '0, 30, 60' (one per frame) or '' (the default) -> degrees per frame; `name` is the
    validation rule too ("elevations", "azimuths")."""
    parts = [p.strip() for p in str(text).replace(";", ",").replace("\n", ",").split(",") if p.strip()]
    if not parts:
        return default
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise bad_input(node_id, name, f"expected numbers in degrees separated by commas, got {text!r}") from None
    for i, value in enumerate(values):  # the engine's ranges (validation.RULES): finite, elevations in [-90, 90]
        try:
            check(name, value, f"{name}[{i}]")
        except ValueError as exc:
            raise bad_input(node_id, name, str(exc)) from None
    if len(values) == 1 and num_frames is not None:
        return values * num_frames
    if num_frames is not None and len(values) != num_frames:
        raise bad_input(node_id, name, f"has {len(values)} values but num_frames is {num_frames} "
                                       f"(give one value, or exactly num_frames)")
    return values


class OrbitConditioning(io.ComfyNode):
    ID = PREFIX + "OrbitConditioning"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=cls.ID,
            display_name="SV3D Orbit Conditioning",
            category="svd/conditioning",
            description=("SV3D conditioning: an object image plus the camera orbit (elevation and azimuth per "
                         "frame, in degrees). SV3D_u ignores the orbit (fixed circular orbit). With a mask the object "
                         "is cropped, centred and put on white (reference); the SV3D Multi-View Sampler also puts "
                         "the input view in place of the last view."),
            inputs=[
                SVDModel.Input("svd_model", tooltip="An SV3D model (sv3d_p or sv3d_u) from an SVD loader."),
                io.Image.Input("image", tooltip="Object image, ideally centred on a plain background."),
                *_size_inputs(576, 576, 21),
                io.String.Input("elevations", default="10",
                                tooltip="Camera elevation in degrees: one value for every frame, or a comma list of num_frames values."),
                io.String.Input("azimuths", default="",
                                tooltip="Camera azimuth in degrees, a comma list of num_frames values; empty = one even 360 degree orbit."),
                *_common_inputs(1e-5),
                SVDOrbit.Input("orbit", optional=True,
                               tooltip="A keyframed orbit from SV3D Orbit Keyframes; overrides elevations and azimuths."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional object mask of the image (e.g. Load Image's MASK output): the object "
                                      "is cropped, centred and put on white as the SV3D reference script does."),
                io.Combo.Input("mask_is", options=["background", "object"], default="background", optional=True,
                               tooltip="What the mask's 1s mark: background (Load Image's mask = 1 - alpha) or "
                                       "object (segmentation nodes)."),
                io.Float.Input("image_frame_ratio", default=0.0, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="Share of the frame side the object's longer side takes after recentring; "
                                       "0 = keep the input's framing (the reference script's default None)."),
            ],
            outputs=[SVDConditioning.Output(display_name="conditioning", tooltip=COND_TOOLTIP), *_native_outputs()],
        )

    @classmethod
    def validate_inputs(cls, width: int, height: int, num_frames: int, elevations: str, azimuths: str,
                        resize_mode: str, mask_is: str | None = None) -> bool | str:
        ok = check_inputs(cls, width=width, height=height, num_frames=num_frames, resize_mode=resize_mode,
                          mask_is=mask_is)
        if ok is not True:
            return ok
        try:
            elev = parse_angles(cls.ID, "elevations", elevations, num_frames)
            parse_angles(cls.ID, "azimuths", azimuths, num_frames)
        except ValueError as exc:
            return str(exc)
        if elev is not None and any(not -90 <= e <= 90 for e in elev):
            return f"{cls.ID}: input 'elevations' = {elevations!r}: every elevation must lie in [-90, 90] degrees"
        return size_error(cls.ID, width=width, height=height) or True

    @classmethod
    def execute(cls, svd_model, image, width, height, num_frames, elevations, azimuths, cond_aug, resize_mode,
                seed, orbit=None, mask=None, mask_is="background", image_frame_ratio=0.0) -> io.NodeOutput:
        if orbit is not None:
            elev, azim = list(orbit["elevations"]), list(orbit["azimuths"])
            if len(elev) != num_frames:
                raise bad_input(cls.ID, "orbit", f"has {len(elev)} frames but num_frames is {num_frames}")
        else:
            elev = parse_angles(cls.ID, "elevations", elevations, num_frames)
            azim = parse_angles(cls.ID, "azimuths", azimuths, num_frames)  # None: the reference's even orbit
        from .multiview import object_alpha

        alpha = object_alpha(cls.ID, image, mask, mask_is)
        model = svd_model.acquire("conditioner")
        cond = pipeline.orbit_conditioning(
            model, image_to_bchw(image), elevations=elev, azimuths=azim, num_frames=num_frames, width=width,
            height=height, cond_aug=cond_aug, resize_mode=resize_mode, seed=seed, mask=alpha,
            image_frame_ratio=image_frame_ratio or None)
        from .native import native_conditioning

        return io.NodeOutput(cond, *native_conditioning(cond, None, None, cond_aug))


class OrbitKeyframes(io.ComfyNode):
    ID = PREFIX + "OrbitKeyframes"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=cls.ID,
            display_name="SV3D Orbit Keyframes",
            category="svd/conditioning",
            description=("A camera orbit from keyframes, one per line as 'frame: elevation, azimuth' (degrees); "
                         "frames between keyframes are interpolated linearly (write 360 for a full turn), the last "
                         "keyframe is held to the end."),
            inputs=[
                io.String.Input("keyframes", multiline=True, default="0: 10, 0\n20: 10, 360",
                                tooltip="Lines 'frame: elevation, azimuth' in degrees; frame 0 first, frames increasing."),
                io.Int.Input("num_frames", default=21, min=1, max=256,
                             tooltip="Frames of the orbit; must match the conditioning's num_frames."),
            ],
            outputs=[SVDOrbit.Output(display_name="orbit", tooltip="Per-frame elevations and azimuths for SV3D Orbit Conditioning.")],
        )

    @classmethod
    def validate_inputs(cls, keyframes: str, num_frames: int) -> bool | str:
        ok = check_inputs(cls, num_frames=num_frames)
        if ok is not True:
            return ok
        try:
            keyframed_orbit(parse_keyframes(cls.ID, keyframes), num_frames)
        except ValueError as exc:
            return str(exc)
        return True

    @classmethod
    def execute(cls, keyframes: str, num_frames: int) -> io.NodeOutput:
        elev, azim = keyframed_orbit(parse_keyframes(cls.ID, keyframes), num_frames)
        pipeline.orbit_angles(num_frames, elev, azim)  # the engine's own checks (elevation range, lengths)
        return io.NodeOutput({"elevations": elev, "azimuths": azim})


def parse_keyframes(node_id: str, text: str) -> list[tuple[int, float, float]]:
    """'frame: elevation, azimuth' lines -> [(frame, elevation, azimuth)]."""
    keys = []
    for line_no, line in enumerate(str(text).splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            frame, rest = line.split(":", 1)
            elev, azim = (float(v) for v in rest.split(","))
            keys.append((int(frame), elev, azim))
        except ValueError:
            raise bad_input(node_id, "keyframes",
                            f"line {line_no} {line!r} is not 'frame: elevation, azimuth' (e.g. '10: 20, 180')") from None
        try:  # the engine's ranges (validation.RULES): finite degrees, elevations in [-90, 90]
            check("elevations", elev, "elevation")
            check("azimuths", azim, "azimuth")
        except ValueError as exc:
            raise bad_input(node_id, "keyframes", f"line {line_no}: {exc}") from None
    if not keys:
        raise bad_input(node_id, "keyframes", "no keyframes given")
    return keys


def keyframed_orbit(keys: list[tuple[int, float, float]], num_frames: int) -> tuple[list[float], list[float]]:
    """Keyframes (frame, elevation, azimuth) -> per-frame degrees, linear in between, held before/after the ends."""
    frames = [k[0] for k in keys]
    if frames[0] != 0 or any(b <= a for a, b in zip(frames, frames[1:])) or frames[-1] >= num_frames:
        raise bad_input(OrbitKeyframes.ID, "keyframes", f"keyframe frames {frames} must start at 0, increase, and "
                                                        f"stay below num_frames={num_frames}")
    t = np.arange(num_frames, dtype=np.float64)
    elev = np.interp(t, frames, [k[1] for k in keys])
    azim = np.interp(t, frames, [k[2] for k in keys])
    if any(not -90 <= e <= 90 for e in elev):
        raise bad_input(OrbitKeyframes.ID, "keyframes", "every elevation must lie in [-90, 90] degrees")
    return [float(e) for e in elev], [float(a % 360.0) for a in azim]


NODES = [ImageConditioning, OrbitConditioning, OrbitKeyframes]
