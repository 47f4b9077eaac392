"""Frame interpolation node (paper App. D.5): a video's frames -> 4x frame rate, original frames passed through."""
from __future__ import annotations

from comfy_api.latest import io

from svd_core import interpolation
from svd_core.samplers import SAMPLERS
from svd_core.schedules import SCHEDULES

from ._comfy import (PREFIX, SEED_MAX, Progress, SVDGuidance, SVDModel, bad_input, check_inputs, frames_to_image,
                     image_to_bchw, size_error)
from .conditioning import fps_output

FRAMES_OUT_TOOLTIP = ("Interpolated video: every original frame followed by the 3 generated in-between frames "
                      "(the last original frame closes it); (n-1)*4+1 frames at the input size.")


class FrameInterpolation(io.ComfyNode):
    ID = PREFIX + "FrameInterpolation"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=cls.ID,
            display_name="SVD Frame Interpolation (4x)",
            category="svd/video",
            description=("Inserts 3 generated frames between every pair of consecutive frames with an SVD "
                         "interpolation model (5 frames, first and last given: 4x the frame rate). Pairs are "
                         "processed batch_size at a time; the original frames pass through unchanged. Shows "
                         "progress per step; Cancel stops after the current step."),
            inputs=[
                SVDModel.Input("svd_model", tooltip="An SVD interpolation model (svd_interp) from an SVD loader."),
                io.Image.Input("frames", tooltip="The video to interpolate: an IMAGE batch of at least 2 frames, in order."),
                io.Int.Input("width", default=0, min=0, max=4096, step=64,
                             tooltip="Width the model works at (multiple of 64); 0 = the frames' width rounded to 64. "
                                     "Generated frames are resized back to the input size."),
                io.Int.Input("height", default=0, min=0, max=4096, step=64,
                             tooltip="Height the model works at (multiple of 64); 0 = the frames' height rounded to 64."),
                io.Int.Input("batch_size", default=4, min=1, max=256,
                             tooltip="Frame pairs sampled together (more = faster, more memory)."),
                io.Int.Input("fps", default=28, min=1, max=240,
                             tooltip="Frame rate the model is conditioned on: the interpolated video's, 4x the "
                                     "input's (28 for a 7 fps video; the training preset samples 28 fps windows)."),
                io.Int.Input("motion_bucket_id", default=127, min=0, max=255,
                             tooltip="Motion micro-conditioning, 0-255 as SVD (127 = reference)."),
                io.Float.Input("cond_aug", default=0.02, min=0.0, max=10.0, step=0.001,
                               tooltip="Noise added to the two given frames before encoding (reference 0.02)."),
                io.Combo.Input("sampler", options=list(SAMPLERS), default="euler", tooltip="Sampling method."),
                io.Combo.Input("schedule", options=list(SCHEDULES), default="karras", tooltip="Noise schedule."),
                io.Int.Input("steps", default=25, min=1, max=1000, tooltip="Sampling steps per batch of pairs."),
                io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=True,
                             tooltip="Seed; pair j uses seed + j, so results do not depend on batch_size."),
                SVDGuidance.Input("guidance", optional=True,
                                  tooltip="Optional guidance; default: the model's (vanilla 1.5 for svd_interp)."),
            ],
            outputs=[io.Image.Output(display_name="frames", tooltip=FRAMES_OUT_TOOLTIP), fps_output()],
        )

    @classmethod
    def validate_inputs(cls, width: int, height: int, sampler: str, schedule: str) -> bool | str:
        ok = check_inputs(cls, width=width, height=height, sampler=sampler, schedule=schedule)
        if ok is not True:
            return ok
        return size_error(cls.ID, allow_zero=True, width=width, height=height) or True

    @classmethod
    def execute(cls, svd_model, frames, width, height, batch_size, fps, motion_bucket_id, cond_aug, sampler,
                schedule, steps, seed, guidance=None) -> io.NodeOutput:
        if frames.shape[0] < 2:
            raise bad_input(cls.ID, "frames", f"got {frames.shape[0]} frame; interpolation needs a video of at least "
                                              f"2 frames (connect SVD Decode, Get Video Components, ...)")
        if svd_model.spec.cond_mode != "interpolation":
            raise bad_input(cls.ID, "svd_model", f"{svd_model.name} is a {svd_model.spec.name} model; load an "
                                                 f"interpolation checkpoint (variant svd_interp)")
        model = svd_model.acquire()
        pairs = frames.shape[0] - 1
        progress = Progress(-(-pairs // batch_size) * (steps + 1))
        out = interpolation.interpolate_video(
            model, image_to_bchw(frames), batch_size=batch_size, width=width or None, height=height or None,
            fps=fps, motion_bucket_id=motion_bucket_id, cond_aug=cond_aug, guidance=guidance, sampler=sampler,
            schedule=schedule, steps=steps, seed=seed, callback=progress.absolute)
        return io.NodeOutput(frames_to_image(out[None]), float(fps))


NODES = [FrameInterpolation]
