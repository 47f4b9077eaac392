"""Text-to-video conditioning node with temporal prompting (paper Sec. 4.2): a spatial prompt for the spatial
cross-attention, an optional separate temporal prompt for the temporal layers (e.g. 'panning')."""
from __future__ import annotations

from comfy_api.latest import io

from svd_core import text2video

from ._comfy import PREFIX, SVDConditioning, SVDModel, bad_input, check_inputs, size_error
from .conditioning import fps_output


class TextConditioning(io.ComfyNode):
    ID = PREFIX + "TextConditioning"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=cls.ID,
            display_name="SVD Text-to-Video Conditioning",
            category="svd/conditioning",
            description=("Conditioning for the SVD text-to-video model: the prompt drives the spatial "
                         "cross-attention, the temporal prompt (temporal prompting) the temporal layers; empty "
                         "temporal prompt = the prompt everywhere. Plus fps and motion-score micro-conditioning. "
                         "Connect to the SVD Sampler with Vanilla guidance."),
            inputs=[
                SVDModel.Input("svd_model", tooltip="A text-to-video model (variant t2v) from an SVD loader."),
                io.String.Input("prompt", multiline=True, default="flowers in a pot in front of a mountainside",
                                tooltip="Spatial prompt: what the frames show (spatial cross-attention)."),
                io.String.Input("temporal_prompt", multiline=True, default="panning",
                                tooltip="Temporal prompt: how the video moves (temporal cross-attention only); "
                                        "empty = use the prompt."),
                io.String.Input("negative_prompt", multiline=True, default="",
                                tooltip="Unconditional branch of classifier-free guidance (empty = the reference)."),
                io.Int.Input("width", default=576, min=64, max=4096, step=64,
                             tooltip="Video width in pixels (multiple of 64; trained at 576x320)."),
                io.Int.Input("height", default=320, min=64, max=4096, step=64,
                             tooltip="Video height in pixels (multiple of 64)."),
                io.Int.Input("num_frames", default=14, min=1, max=256, tooltip="Frames to generate (trained: 14)."),
                io.Int.Input("fps", default=7, min=1, max=60,
                             tooltip="Frame rate the motion is conditioned on (embedded as fps - 1)."),
                io.Float.Input("motion_score", default=127.0, min=0.0, max=255.0, step=1.0,
                               tooltip="Motion micro-conditioning as a motion bucket, 0-255 like SVD's "
                                       "motion_bucket_id (127 = middle; more = more motion); training maps each "
                                       "clip's motion score to the same buckets."),
                io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="Videos generated for the prompt."),
            ],
            outputs=[SVDConditioning.Output(display_name="conditioning",
                                            tooltip="Text conditioning (spatial and temporal) for the SVD Sampler."),
                     fps_output()],
        )

    @classmethod
    def validate_inputs(cls, width: int, height: int, num_frames: int, prompt: str) -> bool | str:
        ok = check_inputs(cls, width=width, height=height, num_frames=num_frames)
        if ok is not True:
            return ok
        error = size_error(cls.ID, width=width, height=height)
        if error:
            return error
        if prompt is not None and not str(prompt).strip():
            return f"{cls.ID}: input 'prompt' is empty; describe the video"
        return True

    @classmethod
    def execute(cls, svd_model, prompt, temporal_prompt, negative_prompt, width, height, num_frames, fps,
                motion_score, batch_size) -> io.NodeOutput:
        if svd_model.spec.cond_mode != "text":
            raise bad_input(cls.ID, "svd_model", f"{svd_model.name} is a {svd_model.spec.name} model; load a "
                                                 f"text-to-video checkpoint (variant t2v)")
        model = svd_model.acquire()
        cond = text2video.text_conditioning(model, prompt, temporal_prompt=temporal_prompt or None,
                                        negative_prompt=negative_prompt, batch=batch_size, num_frames=num_frames,
                                        width=width, height=height, fps=fps, motion_score=motion_score)
        return io.NodeOutput(cond, float(fps))


NODES = [TextConditioning]
