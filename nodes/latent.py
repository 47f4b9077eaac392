"""Latent <-> frames: decode a video latent to ComfyUI IMAGE frames, encode frames for video-to-video."""
from __future__ import annotations

from comfy_api.latest import io
from einops import rearrange

from svd_core import pipeline

from ._comfy import (PREFIX, SEED_MAX, Progress, SVDModel, bad_input, check_inputs, frames_to_image, latent_frames,
                     latent_in, latent_out, stage_memory)


class Decode(io.ComfyNode):
    ID = PREFIX + "Decode"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=cls.ID,
            display_name="SVD Decode",
            category="svd/latent",
            description=("Decodes a video latent to frames with the model's temporal VAE decoder, decode_t frames at "
                         "a time (fewer = less memory). Output is a standard IMAGE batch, frame after frame, for "
                         "Save Animated WEBP, Create Video, Video Combine..."),
            inputs=[
                SVDModel.Input("svd_model", tooltip="The model whose VAE decodes the latent."),
                io.Latent.Input("latent", tooltip="A video latent (the VAE's raw latent, as ComfyUI's): from the SVD "
                                                   "Sampler, SVD Encode or native VAE Encode."),
                io.Int.Input("decode_t", default=14, min=1, max=256,
                             tooltip="Frames decoded at once (reference 14); lower it if you run out of memory."),
                io.Int.Input("overlap", default=0, min=0, max=255,
                             tooltip="Frames shared by neighbouring decode chunks, blended to hide seams (0 = reference)."),
                io.Boolean.Input("image_decoder", default=False,
                                 tooltip="Decode every frame on its own (per-frame decoder), ignoring the temporal layers."),
                io.Int.Input("tile", default=0, min=0, max=512, optional=True,
                             tooltip="Decode in spatial tiles of this many latent pixels (8x in pixels, at least 4), "
                                     "blended where they overlap: less memory, small changes near the seams. "
                                     "0 decodes whole frames (reference)."),
                io.Int.Input("tile_overlap", default=8, min=0, max=255, optional=True,
                             tooltip="Latent pixels shared by neighbouring tiles (below half the tile)."),
            ],
            outputs=[io.Image.Output(display_name="frames", tooltip="Video frames as an IMAGE batch [frames, H, W, 3] in 0..1.")],
        )

    @classmethod
    def validate_inputs(cls, decode_t: int, overlap: int, tile: int = 0, tile_overlap: int = 8) -> bool | str:
        ok = check_inputs(cls, decode_t=decode_t, overlap=overlap, tile=tile, tile_overlap=tile_overlap)
        if ok is not True:
            return ok
        if decode_t is not None and overlap is not None and overlap >= decode_t:
            return f"{cls.ID}: input 'overlap' = {overlap} must be smaller than decode_t = {decode_t}"
        if tile and tile < 4:
            return f"{cls.ID}: input 'tile' = {tile} is too small: 0 (whole frames) or at least 4 latent pixels"
        if tile and tile_overlap is not None and 2 * tile_overlap >= tile:
            return (f"{cls.ID}: input 'tile_overlap' = {tile_overlap} must be below half the tile ({tile}): lower "
                    f"tile_overlap or raise tile")
        return True

    @classmethod
    def execute(cls, svd_model, latent, decode_t, overlap, image_decoder, tile=0, tile_overlap=8) -> io.NodeOutput:
        num_frames = latent_frames(latent)
        samples = latent_in(cls.ID, "latent", latent, svd_model.spec)
        need = stage_memory(svd_model.model, "vae", samples.shape[0], samples.shape[-2] * 8, samples.shape[-1] * 8,
                            decode_t)
        model = svd_model.acquire("vae", memory_required=need)
        progress = Progress(samples.shape[0])
        frames = pipeline.decode(model, samples, num_frames, decode_t=decode_t, overlap=overlap,
                                 image_decoder=image_decoder, callback=progress.absolute,
                                 tile=tile or None, tile_overlap=tile_overlap if tile else None)
        return io.NodeOutput(frames_to_image(frames))


class Encode(io.ComfyNode):
    ID = PREFIX + "Encode"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=cls.ID,
            display_name="SVD Encode",
            category="svd/latent",
            description=("Encodes video frames (an IMAGE batch, e.g. from Load Video) to a video latent for "
                         "video-to-video: feed it to the SVD Sampler's latent input with denoise < 1."),
            inputs=[
                SVDModel.Input("svd_model", tooltip="An SVD model with a VAE encoder (SV3D checkpoints have none)."),
                io.Image.Input("frames", tooltip="Video frames [frames, H, W, 3] in 0..1; H and W multiples of 64."),
                io.Int.Input("num_frames", default=0, min=0, max=4096,
                             tooltip="Frames per video when the batch holds several videos back to back; 0 = one video."),
                io.Boolean.Input("sample_posterior", default=False, optional=True,
                                 tooltip="Off: the VAE posterior's mean. On: a seeded draw from the posterior, as the "
                                         "reference's first stage encodes."),
                io.Int.Input("seed", default=23, min=0, max=SEED_MAX, optional=True,
                             tooltip="Seed of the posterior draw (used only with sample_posterior)."),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="The video latent (frames of a video contiguous).")],
        )

    @classmethod
    def execute(cls, svd_model, frames, num_frames, sample_posterior=False, seed=23) -> io.NodeOutput:
        total = frames.shape[0]
        t = num_frames or total
        if total % t:
            raise bad_input(cls.ID, "num_frames", f"{num_frames} does not divide the {total} frames of the batch")
        if frames.shape[1] % 64 or frames.shape[2] % 64:
            raise bad_input(cls.ID, "frames", f"size {frames.shape[2]}x{frames.shape[1]} must be a multiple of 64 "
                                              f"(resize the frames first)")
        model = svd_model.acquire("vae")
        Progress(1)
        video = rearrange(frames[..., :3].float(), "(b t) h w c -> b t c h w", t=t)  # IMAGE batch -> videos
        samples = pipeline.encode(model, video, sample_posterior=sample_posterior, seed=seed)
        return io.NodeOutput(latent_out(samples, t, svd_model.spec))


NODES = [Decode, Encode]
