"""Loaders: an SVD-family checkpoint from ComfyUI's `checkpoints` folder, or a diffusers folder from `diffusers`."""
from __future__ import annotations

import os

import folder_paths
from comfy_api.latest import io

import svd_core

from ._comfy import DTYPES, PREFIX, SVDModel, bad_input, check_inputs, load_cached, node_path

DTYPE_TOOLTIP = ("Weights dtype. auto: ComfyUI's choice for the device (float16 on most GPUs, float32 on CPU); "
                 "float32 is the reference precision; fp8_e4m3fn stores the UNet's weights in 8 bits (half of "
                 "float16's memory) and computes in ComfyUI's choice, like --fp8_e4m3fn-unet.")
MODEL_TOOLTIP = ("The loaded SVD-family model (UNet, VAE, CLIP image encoder, variant defaults). ComfyUI moves it "
                 "to the GPU when a node needs it and frees it under memory pressure.")


def _native_outputs() -> list:
    return [
        io.Model.Output(display_name="model", tooltip=(
            "The same UNet as a native ComfyUI MODEL (no second copy of the weights): for KSampler, "
            "SamplerCustomAdvanced, VideoLinearCFGGuidance, model patches and LoRAs; condition it with SVD Image "
            "Conditioning's positive / negative outputs (or native SVD_img2vid_Conditioning).")),
        io.ClipVision.Output(display_name="clip_vision", tooltip=(
            "The same CLIP image encoder as a native CLIP_VISION (CLIPVisionEncode, SVD_img2vid_Conditioning).")),
        io.Vae.Output(display_name="vae", tooltip=(
            "The same VAE as a native VAE (VAEDecode, VAEEncode): raw latents; VAEDecode decodes a LATENT batch as "
            "one video with the temporal decoder.")),
    ]


def _outputs(loaded) -> io.NodeOutput:
    """The pack's bundle plus the native MODEL / CLIP_VISION / VAE over the same modules (`native.py`)."""
    from .native import NativeCLIPVision, NativeVAE

    stages, model = loaded.stages, loaded.model
    return io.NodeOutput(loaded, stages["unet"], NativeCLIPVision(model, stages["conditioner"]),
                         NativeVAE(model, stages["vae"]))


def _diffusers_folders() -> list[str]:
    """Sub-folders of ComfyUI's `models/diffusers` that hold a diffusers pipeline (a model_index.json)."""
    found = []
    for root in folder_paths.get_folder_paths("diffusers"):
        if not os.path.isdir(root):
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            if "model_index.json" in filenames:
                found.append(os.path.relpath(dirpath, root).replace(os.sep, "/"))
                dirnames[:] = []
    return sorted(found)


class CheckpointLoader(io.ComfyNode):
    ID = PREFIX + "CheckpointLoader"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=cls.ID,
            display_name="SVD Checkpoint Loader",
            category="svd/loaders",
            description=("Loads a Stable Video Diffusion checkpoint (SVD, SVD-XT, SV3D, image-decoder variant) from "
                         "ComfyUI's models/checkpoints folder; the variant is detected from the file."),
            inputs=[
                io.Combo.Input("ckpt_name", options=folder_paths.get_filename_list("checkpoints"),
                               tooltip="A .safetensors file in models/checkpoints (e.g. svd_xt.safetensors)."),
                io.Combo.Input("dtype", options=list(DTYPES), default="auto", tooltip=DTYPE_TOOLTIP),
            ],
            outputs=[SVDModel.Output(display_name="svd_model", tooltip=MODEL_TOOLTIP), *_native_outputs()],
        )

    @classmethod
    def validate_inputs(cls, ckpt_name: str, dtype: str) -> bool | str:
        return check_inputs(cls, ckpt_name=ckpt_name, dtype=dtype)

    @classmethod
    def execute(cls, ckpt_name: str, dtype: str = "auto") -> io.NodeOutput:
        path = node_path(cls.ID, "ckpt_name", ckpt_name, "checkpoints", kind="file", links_out=True)
        key = ("file", os.path.realpath(path), os.path.getmtime(path))
        loaded = load_cached(key, ckpt_name, lambda device, dt, ops: svd_core.load(
            path, device=device, dtype=dt, operations=ops), dtype)
        return _outputs(loaded)


class DiffusersLoader(io.ComfyNode):
    ID = PREFIX + "DiffusersLoader"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=cls.ID,
            display_name="SVD Diffusers Loader",
            category="svd/loaders",
            description=("Loads an SVD pipeline saved in the diffusers layout (a folder with model_index.json, "
                         "unet/, vae/, image_encoder/) from ComfyUI's models/diffusers folder."),
            inputs=[
                io.Combo.Input("folder", options=_diffusers_folders(),
                               tooltip="A diffusers folder in models/diffusers (e.g. stable-video-diffusion-img2vid-xt)."),
                io.Combo.Input("dtype", options=list(DTYPES), default="auto", tooltip=DTYPE_TOOLTIP),
            ],
            outputs=[SVDModel.Output(display_name="svd_model", tooltip=MODEL_TOOLTIP), *_native_outputs()],
        )

    @classmethod
    def validate_inputs(cls, folder: str, dtype: str) -> bool | str:
        return check_inputs(cls, folder=folder, dtype=dtype)

    @classmethod
    def execute(cls, folder: str, dtype: str = "auto") -> io.NodeOutput:
        path = node_path(cls.ID, "folder", folder, "diffusers", kind="dir", links_out=True)
        if not os.path.isfile(os.path.join(path, "model_index.json")):
            raise bad_input(cls.ID, "folder", f"{folder!r} is not a diffusers folder in models/diffusers")
        stamp = os.path.getmtime(os.path.join(path, "model_index.json"))
        key = ("diffusers", os.path.realpath(path), stamp)
        loaded = load_cached(key, folder, lambda device, dt, ops: svd_core.load(
            path, device=device, dtype=dt, operations=ops), dtype)
        return _outputs(loaded)


NODES = [CheckpointLoader, DiffusersLoader]
