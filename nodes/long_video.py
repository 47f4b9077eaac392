"""Long videos beyond the trained frame count: a sliding-window sampler and a chained image-to-video node."""
from __future__ import annotations

from comfy_api.latest import io

from svd_core import long_video
from svd_core.conditioner import micro_values
from svd_core.long_video import BLENDS, COLOR_MATCH, WINDOW_SCHEDULES
from svd_core.pipeline import RESIZE_MODES
from svd_core.samplers import SAMPLERS
from svd_core.schedules import SCHEDULES

from ._comfy import (PREFIX, SEED_MAX, Progress, SVDConditioning, SVDGuidance, SVDModel, bad_input, check_inputs,
                     frames_to_image, image_to_bchw, latent_out, size_error)
from .conditioning import fps_output
from .sampling import STEPS_TOOLTIP


def _sampling_inputs() -> list:
    return [
        io.Combo.Input("sampler", options=list(SAMPLERS), default="euler", tooltip="Sampling method (reference: euler)."),
        io.Combo.Input("schedule", options=list(SCHEDULES), default="karras",
                       tooltip="Noise schedule (reference: karras, sigma 700 -> 0.002)."),
        io.Int.Input("steps", default=0, min=0, max=1000, tooltip=STEPS_TOOLTIP),
        io.Int.Input("seed", default=23, min=0, max=SEED_MAX, control_after_generate=True,
                     tooltip="Seed of the initial noise (reference script 23)."),
    ]


class SlidingWindowSampler(io.ComfyNode):
    ID = PREFIX + "SlidingWindowSampler"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=cls.ID,
            display_name="SVD Sliding Window Sampler",
            category="svd/sampling",
            description=("Samples a video longer than the model was trained on: at every step the model denoises "
                         "overlapping windows of `window` frames and the results are blended frame by frame. Memory "
                         "stays that of one window. Make the conditioning with the long frame count (e.g. 50)."),
            inputs=[
                SVDModel.Input("svd_model", tooltip="The model the conditioning was made with."),
                SVDConditioning.Input("conditioning",
                                      tooltip="From SVD Image Conditioning with num_frames = the whole video's length."),
                SVDGuidance.Input("guidance", tooltip="Per-frame guidance, applied within each window."),
                *_sampling_inputs(),
                io.Int.Input("window", default=0, min=0, max=256,
                             tooltip="Frames per window; 0 = the model's trained count (SVD 14, SVD-XT 25)."),
                io.Int.Input("overlap", default=6, min=0, max=255,
                             tooltip="Frames shared by neighbouring windows (more = smoother, slower)."),
                io.Combo.Input("window_schedule", options=list(WINDOW_SCHEDULES), default="uniform",
                               tooltip="uniform: windows tile the video; looped: they wrap around so the end blends "
                                       "into the start (a seamless loop)."),
                io.Combo.Input("blend", options=list(BLENDS), default="pyramid",
                               tooltip="Per-frame weights within a window: pyramid favours window centres, flat averages."),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="The long video latent; decode it with SVD Decode.")],
        )

    @classmethod
    def validate_inputs(cls, sampler: str, schedule: str, window: int, overlap: int, window_schedule: str,
                        blend: str) -> bool | str:
        ok = check_inputs(cls, sampler=sampler, schedule=schedule, window=window, overlap=overlap,
                          window_schedule=window_schedule, blend=blend)
        if ok is True and window and overlap is not None and overlap >= window:
            return f"{cls.ID}: input 'overlap' = {overlap} must be smaller than window = {window}"
        return ok

    @classmethod
    def execute(cls, svd_model, conditioning, guidance, sampler, schedule, steps, seed, window, overlap,
                window_schedule, blend) -> io.NodeOutput:
        win = window or svd_model.spec.num_frames
        if overlap >= win:
            raise bad_input(cls.ID, "overlap", f"{overlap} must be smaller than the window ({win} frames)")
        steps = steps or svd_model.spec.steps  # 0: the loaded variant's reference steps
        model = svd_model.acquire()
        progress = Progress(steps, preview=True)
        samples = long_video.sample_windows(
            model, conditioning, guidance, window=win, overlap=overlap, schedule=window_schedule, blend=blend,
            sampler=sampler, sigma_schedule=schedule, steps=steps, seed=seed, callback=progress.absolute,
            cancel=progress.interrupt, on_denoised=progress.denoised)
        return io.NodeOutput(latent_out(samples, conditioning.num_frames, svd_model.spec))


class ChainedVideo(io.ComfyNode):
    ID = PREFIX + "ChainedVideo"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=cls.ID,
            display_name="SVD Chained Long Video",
            category="svd/long_video",
            description=("Makes a long video from clips: each clip is an image-to-video clip started from the last "
                         "frame of the previous one; colour drift is corrected by matching every clip's colour "
                         "statistics to the first clip's. One clip in memory at a time."),
            inputs=[
                SVDModel.Input("svd_model", tooltip="An SVD or SVD-XT model (optionally with LoRAs)."),
                io.Image.Input("image", tooltip="Start image(s); each image of a batch becomes its own video."),
                SVDGuidance.Input("guidance", tooltip="Per-frame guidance of every clip."),
                io.Int.Input("width", default=1024, min=64, max=4096, step=64,
                             tooltip="Video width in pixels (multiple of 64; reference 1024)."),
                io.Int.Input("height", default=576, min=64, max=4096, step=64,
                             tooltip="Video height in pixels (multiple of 64; reference 576)."),
                io.Int.Input("num_frames", default=53, min=1, max=10000,
                             tooltip="Frames of the whole video (clip 1 gives clip_frames, each next clip clip_frames - 1)."),
                io.Int.Input("clip_frames", default=0, min=0, max=256,
                             tooltip="Frames per clip; 0 = the model's trained count (SVD 14, SVD-XT 25)."),
                io.Int.Input("fps", default=7, min=1, max=60, tooltip="Frame rate the motion is conditioned on (reference 7)."),
                io.Int.Input("motion_bucket_id", default=127, min=0, max=255,
                             tooltip="Amount of motion, 0-255 as the released models were trained (reference 127; "
                                     "higher = more motion)."),
                io.Float.Input("cond_aug", default=0.02, min=0.0, max=10.0, step=0.001,
                               tooltip="Noise added to each clip's conditioning frame (reference 0.02)."),
                io.Combo.Input("resize_mode", options=list(RESIZE_MODES), default="crop",
                               tooltip="How the start image is fitted to width x height."),
                io.Combo.Input("color_match", options=list(COLOR_MATCH), default="latent",
                               tooltip="Colour-drift correction: match each clip's channel mean/std to the first "
                                       "clip's in latent space (before decoding), pixel space (after), or none."),
                *_sampling_inputs(),
                io.Int.Input("decode_t", default=14, min=1, max=256,
                             tooltip="Frames decoded at once (reference 14); lower it if you run out of memory."),
            ],
            outputs=[io.Image.Output(display_name="frames",
                                     tooltip="The whole video as an IMAGE batch [frames, H, W, 3] in 0..1."),
                     fps_output()],
        )

    @classmethod
    def validate_inputs(cls, width: int, height: int, clip_frames: int, resize_mode: str, color_match: str,
                        sampler: str, schedule: str) -> bool | str:
        ok = check_inputs(cls, width=width, height=height, clip_frames=clip_frames, resize_mode=resize_mode,
                          color_match=color_match, sampler=sampler, schedule=schedule)
        if ok is not True:
            return ok
        error = size_error(cls.ID, width=width, height=height)
        if error:
            return error
        if clip_frames == 1:
            return f"{cls.ID}: input 'clip_frames' = 1 adds no frames per clip; use 0 (the model's count) or >= 2"
        return True

    @classmethod
    def execute(cls, svd_model, image, guidance, width, height, num_frames, clip_frames, fps, motion_bucket_id,
                cond_aug, resize_mode, color_match, sampler, schedule, steps, seed, decode_t) -> io.NodeOutput:
        if "fps" not in micro_values(svd_model.spec):
            raise bad_input(cls.ID, "svd_model", f"{svd_model.name} is a {svd_model.spec.name} model; chaining needs "
                                                 f"an image-to-video model (SVD / SVD-XT)")
        clip = clip_frames or svd_model.spec.num_frames
        clips = 1 + max(0, -(-(num_frames - clip) // (clip - 1)))
        steps = steps or svd_model.spec.steps  # 0: the loaded variant's reference steps
        model = svd_model.acquire()
        progress = Progress(clips * steps)

        def callback(done, total, stage=None):
            if stage == "sampling":
                progress.absolute(done, total)

        frames = long_video.chain(
            model, image_to_bchw(image), num_frames=num_frames, clip_frames=clip, guidance=guidance,
            color_match=color_match, width=width, height=height, fps=fps, motion_bucket_id=motion_bucket_id,
            cond_aug=cond_aug, resize_mode=resize_mode, sampler=sampler, sigma_schedule=schedule, steps=steps,
            seed=seed, decode_t=decode_t, callback=callback)
        return io.NodeOutput(frames_to_image(frames), float(fps))


NODES = [SlidingWindowSampler, ChainedVideo]
