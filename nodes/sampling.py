"""The sampler node: conditioning + guidance -> video latent, with ComfyUI progress and Cancel after every step."""
from __future__ import annotations

import comfy.model_management as mm
from comfy_api.latest import io

from svd_core import pipeline
from svd_core.pipeline import NOISE_DEVICES
from svd_core.samplers import SAMPLERS
from svd_core.schedules import SCHEDULES

from ._comfy import (PREFIX, SEED_MAX, Progress, SVDConditioning, SVDGuidance, SVDModel, bad_input, check_inputs,
                     latent_frames, latent_in, latent_out, stage_memory)

STEPS_TOOLTIP = ("Sampling steps; 0 = the loaded model's reference value (svd / svd_image_decoder 25, svd_xt / "
                 "svd_xt_1_1 / svd_xt_image_decoder 30, sv3d_u / sv3d_p 50).")
NOISE_DEVICE_TOOLTIP = ("Where the initial noise is drawn: cpu (same video on every machine for a seed) or device "
                        "(the compute device, as the reference script on CUDA; differs between GPUs and CPUs).")


class Sampler(io.ComfyNode):
    ID = PREFIX + "Sampler"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=cls.ID,
            display_name="SVD Sampler",
            category="svd/sampling",
            description=("Samples a video latent with the EDM sampler of your choice and per-frame guidance. Shows "
                         "progress per step; Cancel stops after the current step. With a latent input and denoise < 1 "
                         "it re-noises that video part-way (video-to-video)."),
            inputs=[
                SVDModel.Input("svd_model", tooltip="The model the conditioning was made with."),
                SVDConditioning.Input("conditioning", optional=True,
                                      tooltip="From SVD Image Conditioning or SV3D Orbit Conditioning (or connect "
                                              "native positive, negative and latent instead)."),
                SVDGuidance.Input("guidance", tooltip="Per-frame guidance from an SVD guidance node."),
                io.Combo.Input("sampler", options=list(SAMPLERS), default="euler",
                               tooltip="Sampling method (reference: euler)."),
                io.Combo.Input("schedule", options=list(SCHEDULES), default="karras",
                               tooltip="Noise schedule (reference: karras, sigma 700 -> 0.002)."),
                io.Int.Input("steps", default=0, min=0, max=1000,
                             tooltip=STEPS_TOOLTIP),
                io.Int.Input("seed", default=23, min=0, max=SEED_MAX, control_after_generate=True,
                             tooltip="Seed of the initial noise (reference script 23)."),
                io.Float.Input("denoise", default=1.0, min=0.01, max=1.0, step=0.01,
                               tooltip="1.0 samples from pure noise; lower keeps more of the input latent (needs `latent`)."),
                io.Combo.Input("noise_device", options=list(NOISE_DEVICES), default="cpu", optional=True,
                               tooltip=NOISE_DEVICE_TOOLTIP),
                io.Latent.Input("latent", optional=True,
                                tooltip="Optional start video latent (from SVD Encode or native VAE Encode) for "
                                        "video-to-video with denoise < 1; with native positive / negative its frame "
                                        "count is the video's."),
                io.Model.Input("model", optional=True,
                               tooltip="Optional native SVD MODEL (an SVD loader's model output, maybe LoRA'd or "
                                       "patched by other nodes): the UNet runs through it, with its patches "
                                       "(svd_model's own LoRA stack is not used then)."),
                io.Conditioning.Input("positive", optional=True,
                                      tooltip="Native CONDITIONING (SVD Image Conditioning's positive or "
                                              "SVD_img2vid_Conditioning's), used when 'conditioning' is not connected."),
                io.Conditioning.Input("negative", optional=True,
                                      tooltip="Native negative CONDITIONING, with positive."),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="The sampled video latent; decode it with SVD Decode.")],
        )

    @classmethod
    def validate_inputs(cls, sampler: str, schedule: str, noise_device: str | None = None) -> bool | str:
        return check_inputs(cls, sampler=sampler, schedule=schedule, noise_device=noise_device)

    @classmethod
    def execute(cls, svd_model, guidance, sampler, schedule, steps, seed, denoise, noise_device="cpu",
                latent=None, conditioning=None, model=None, positive=None, negative=None) -> io.NodeOutput:
        from . import native

        if model is not None and not native.is_svd_model(model):
            raise bad_input(cls.ID, "model", f"is a {type(getattr(model, 'model', model)).__name__}, not an SVD "
                                             f"model: connect an SVD loader's model output (or disconnect it)")
        if conditioning is None:
            if positive is None or negative is None or latent is None:
                raise bad_input(cls.ID, "conditioning", "not connected: connect SVD Image Conditioning's "
                                                        "conditioning, or native positive, negative and latent")
            unet_model = (model if model is not None else svd_model.stages["unet"]).model
            try:
                conditioning = native.pack_conditioning(positive, negative, latent_frames(latent), unet_model)
            except (ValueError, RuntimeError) as exc:
                raise bad_input(cls.ID, "positive", str(exc)) from None
            if denoise >= 1.0:
                latent = None  # the frame count only: sampling starts from noise as native KSampler does
        if latent is None and denoise < 1.0:
            raise bad_input(cls.ID, "denoise", f"{denoise} < 1 needs a start video on the 'latent' input "
                                               f"(connect SVD Encode), or set denoise to 1.0")
        init = None
        if latent is not None:
            init = latent_in(cls.ID, "latent", latent, svd_model.spec)
            frames = latent_frames(latent)
            if frames != conditioning.num_frames:
                raise bad_input(cls.ID, "latent", f"has {frames} frames per video but the conditioning has "
                                                  f"{conditioning.num_frames} (match num_frames)")
        steps = steps or svd_model.spec.steps  # 0: the loaded variant's reference steps
        # as ComfyUI's sampler: room for the CFG branches in one batch, at least for one after the other; which of
        # the two runs is chosen by the memory free once the UNet is loaded (pipeline.sample's cfg_batch "auto")
        size = (svd_model.model, "unet", conditioning.batch * conditioning.num_frames, conditioning.height,
                conditioning.width)
        need, least = stage_memory(*size), stage_memory(*size, cfg=False)
        if model is None:
            run = svd_model.acquire("unet", memory_required=need, minimum_memory_required=least)
        else:  # the UNet through the connected native MODEL (its patches), the rest from svd_model
            mm.load_models_gpu([model], memory_required=need, minimum_memory_required=least)
            run = native.NativeUNetView(svd_model.model, model)
        progress = Progress(steps, preview=True)
        samples = pipeline.sample(run, conditioning, guidance, sampler=sampler, schedule=schedule, steps=steps,
                                  seed=seed, init_latent=init, denoise=denoise, callback=progress.absolute,
                                  noise_device=noise_device, on_denoised=progress.denoised,
                                  free_memory=mm.get_free_memory(mm.get_torch_device()))
        return io.NodeOutput(latent_out(samples, conditioning.num_frames, svd_model.spec))


NODES = [Sampler]
