"""LoRA loader: a camera-motion LoRA (paper Sec. 4.3.1) on an SVD model, with strength; chain the node to stack.

The checkpoint loader's model is shared and reused across runs, so it is never changed: this node outputs a new
model handle carrying the LoRA stack, and every engine call through it (`acquire()`) gets a
`svd_core.lora.LoRAView`. Unmerged (default): forward hooks on the temporal projections are attached for each
denoiser call and removed after it; merged: a copy of the UNet that shares every tensor except the merged weights
(faster steps, costs the memory of the adapted layers only). The last LoRA node's mode applies to the whole stack.

A native MODEL (the loaders' `model` output, or another SVD MODEL with the reference key names) is patched through
ComfyUI's own weight patches (`native.lora_patched`: `ModelPatcher.clone().add_patches`, keys
`diffusion_model.*`), so the LoRA stacks with other packs' LoRAs and ComfyUI unpatches it; `mode` does not apply
there (ComfyUI merges patches into the weights while the model is loaded and restores them after).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import folder_paths
from comfy_api.latest import io

from ._comfy import PREFIX, LoadedSVD, SVDModel, bad_input, check_inputs, node_path

MODES = ("unmerged", "merged")


@dataclass
class LoRAModel(LoadedSVD):
    """A loaded checkpoint plus a LoRA stack; the shared checkpoint underneath is never modified."""

    base: LoadedSVD | None = None
    stack: list = field(default_factory=list)  # [(svd_core.lora.LoRA, strength)]
    merged: bool = False

    def acquire(self, *stages: str, memory_required: int = 0, minimum_memory_required: int | None = None):
        from svd_core.lora import LoRAView

        model = self.base.acquire(*stages, memory_required=memory_required,
                                  minimum_memory_required=minimum_memory_required)
        return LoRAView(model, self.stack, merged=self.merged)


def _lora_files() -> list[str]:
    return [f for f in folder_paths.get_filename_list("loras") if f.lower().endswith(".safetensors")]


class LoRALoader(io.ComfyNode):
    ID = PREFIX + "LoRALoader"

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=cls.ID,
            display_name="SVD LoRA Loader",
            category="svd/loaders",
            description=("Applies a camera-motion LoRA (low-rank adapters on the temporal attention layers) to an SVD "
                         "model. Chain several to combine motions (e.g. pan + zoom); each has its own strength. Reads "
                         "the suite's files and diffusers/PEFT or kohya LoRAs that target the temporal layers. The "
                         "loaded checkpoint itself is never changed."),
            inputs=[
                SVDModel.Input("svd_model", optional=True,
                               tooltip="The model from an SVD loader (or another SVD LoRA Loader, to stack)."),
                io.Combo.Input("lora_name", options=_lora_files(),
                               tooltip="A .safetensors LoRA in models/loras (trained for this model's variant)."),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.05,
                               tooltip="Multiplier of the LoRA's update (1 = as trained, 0 = off, negative = reversed motion)."),
                io.Combo.Input("mode", options=list(MODES), default="unmerged",
                               tooltip=("unmerged: adapters added on the fly (no extra memory). merged: adapted layers "
                                        "pre-computed into a copy of those weights (faster steps). The last LoRA "
                                        "node's mode applies to the whole stack.")),
                io.Boolean.Input("enabled", default=True,
                                 tooltip="Switch this LoRA off without unwiring it (the model passes through)."),
                io.Model.Input("model", optional=True,
                               tooltip="A native MODEL (an SVD loader's model output, or a LoRA'd one) to patch "
                                       "through ComfyUI's weight patches; connect svd_model, model or both."),
            ],
            outputs=[SVDModel.Output(display_name="svd_model",
                                     tooltip="The model with this LoRA (and any earlier ones) applied in sampling."),
                     io.Model.Output(display_name="model",
                                     tooltip="The native MODEL with this LoRA as ComfyUI weight patches (stacks with "
                                             "other LoRA loaders; empty when no model is connected).")],
        )

    @classmethod
    def validate_inputs(cls, lora_name: str, strength: float, mode: str) -> bool | str:
        return check_inputs(cls, lora_name=lora_name, strength=strength, mode=mode)

    @classmethod
    def execute(cls, lora_name: str, strength: float, mode: str = "unmerged", enabled: bool = True,
                svd_model=None, model=None) -> io.NodeOutput:
        if svd_model is None and model is None:
            raise bad_input(cls.ID, "svd_model", "nothing to patch: connect svd_model (an SVD loader's svd_model) "
                                                 "or model (a native MODEL)")
        if not enabled or strength == 0.0:
            return io.NodeOutput(svd_model, model)
        path = node_path(cls.ID, "lora_name", lora_name, "loras", kind="file", links_out=True)
        return io.NodeOutput(None if svd_model is None else cls._pack(svd_model, path, lora_name, strength, mode),
                             None if model is None else cls._native(model, svd_model, path, lora_name, strength))

    @classmethod
    def _native(cls, model, svd_model, path: str, lora_name: str, strength: float):
        """The native MODEL cloned with the LoRA as ComfyUI patches (`native.lora_patched`)."""
        from svd_core.lora import LoRAError, load_lora

        from .native import lora_patched, lora_reference

        reference = lora_reference(model)
        if reference is None and svd_model is not None:
            reference = (svd_model.base if isinstance(svd_model, LoRAModel) else svd_model).patcher.model
        if reference is None:
            raise bad_input(cls.ID, "model", "is not an SVD suite model: connect the loader's svd_model too, so the "
                                             "LoRA's layer names can be read")
        try:
            adapter = load_lora(path, reference, name=lora_name)
        except LoRAError as exc:
            raise bad_input(cls.ID, "lora_name", f"{exc} (pick a LoRA made for this model)") from None
        patched, missing = lora_patched(model, adapter, strength)
        if missing:
            raise bad_input(cls.ID, "model", f"has no layers {missing[:4]}{' ...' if len(missing) > 4 else ''} "
                                             f"that {lora_name!r} patches (pick a LoRA made for this model)")
        return patched

    @classmethod
    def _pack(cls, svd_model, path: str, lora_name: str, strength: float, mode: str):
        """The pack's path: a new model handle carrying the LoRA stack (`svd_core.lora.LoRAView`)."""
        from svd_core.lora import LoRAError, load_lora

        base = svd_model.base if isinstance(svd_model, LoRAModel) else svd_model
        prior = list(svd_model.stack) if isinstance(svd_model, LoRAModel) else []
        module = base.patcher.model  # layer names and shapes only: nothing is moved or changed
        try:
            adapter = load_lora(path, module, name=lora_name)
        except LoRAError as exc:
            raise bad_input(cls.ID, "lora_name", f"{exc} (pick a LoRA made for {base.name})") from None
        return LoRAModel(patcher=base.patcher, name=f"{svd_model.name} + {lora_name}", base=base,
                         stack=prior + [(adapter, float(strength))], merged=mode == "merged")


NODES = [LoRALoader]
