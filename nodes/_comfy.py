"""The node kit: what every node of the pack (nodes/ and training_nodes/) shares. Node ids and categories, the
pack's ComfyUI socket types, input errors (`bad_input`, `check_inputs`, `size_error` for `validate_inputs`),
ComfyUI-managed models, progress and Cancel (`Progress`), and the confinement of every input that becomes a path
to ComfyUI's folders (`node_path`).

Devices and memory come from `comfy.model_management` (`--cpu`, low-VRAM offload, the *Free model and node cache*
button), progress from `comfy.utils.ProgressBar`, interrupts from
`comfy.model_management.throw_exception_if_processing_interrupted()`.
"""
from __future__ import annotations

import math
import os
import threading
import weakref
from contextlib import contextmanager
from pathlib import PureWindowsPath
from dataclasses import dataclass
from typing import Any, Callable

import torch
from einops import rearrange

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import folder_paths
from comfy_api.latest import io

# ComfyUI socket types of the pack (prefixed: core already has MODEL, CONDITIONING, GUIDER, ...)
SVDModel = io.Custom("SVDSUITE_MODEL")
SVDConditioning = io.Custom("SVDSUITE_CONDITIONING")
SVDGuidance = io.Custom("SVDSUITE_GUIDANCE")
SVDOrbit = io.Custom("SVDSUITE_ORBIT")
# training_nodes/: curation (videos -> cuts -> scored clips), training (dataset, model, settings, finished run)
Videos = io.Custom("SVDSUITE_VIDEOS")
Cuts = io.Custom("SVDSUITE_CUTS")
Clips = io.Custom("SVDSUITE_CLIPS")
OpenClip = io.Custom("SVDSUITE_OPEN_CLIP")
TrainDataset = io.Custom("SVDSUITE_TRAIN_DATASET")
TrainModel = io.Custom("SVDSUITE_TRAIN_MODEL")
TrainSettings = io.Custom("SVDSUITE_TRAIN_SETTINGS")
Trained = io.Custom("SVDSUITE_TRAINED")

PREFIX = "SVDSuite_"


def category(group: str) -> str:
    """The menu category of a node group ("conditioning", "training", ...): all under svd/."""
    return f"svd/{group}"


SEED_MAX = 0xFFFFFFFFFFFFFFFF
DTYPES = {"auto": None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "fp8_e4m3fn": None}
FP8_CHOICE = "fp8_e4m3fn"  # UNet weights stored in float8_e4m3fn, computed in ComfyUI's choice of float dtype
# latent dict key carrying frames per video, so decode/sampling know where one video ends ("(b t) c h w")
FRAMES_KEY = "svd_num_frames"


class NodeInputError(ValueError):
    """A bad input value, reported with the node id and input that fix it."""


def bad_input(node_id: str, input_name: str, message: str) -> NodeInputError:
    return NodeInputError(f"{node_id}: input '{input_name}': {message}")


def check_inputs(cls, **values: Any) -> bool | str:
    """ComfyUI's own checks (min, max, combo options) for inputs a node's `validate_inputs` takes over.

    ComfyUI 0.3.75 skips its range checks for every input named in `validate_inputs` and never checks V3 combo
    values, so the nodes re-apply the schema here; the message names the node, the input and the fix.
    """
    inputs = {i.id: i for i in cls.define_schema().inputs}
    for name, value in values.items():
        spec = inputs[name]
        if value is None:  # linked input: known only at run time
            continue
        options = getattr(spec, "options", None)
        if isinstance(spec, io.Combo.Input) and options is not None and value not in options:
            shown = options if len(options) <= 12 else options[:12] + ["..."]
            return f"{cls.ID}: input '{name}' = {value!r} is not one of {shown}"
        low, high = getattr(spec, "min", None), getattr(spec, "max", None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):  # NaN passes every comparison
                return f"{cls.ID}: input '{name}' = {value} is not a finite number"
            if low is not None and value < low:
                return f"{cls.ID}: input '{name}' = {value} is below the minimum {low}"
            if high is not None and value > high:
                return f"{cls.ID}: input '{name}' = {value} is above the maximum {high}"
    return True


def size_error(node_id: str, allow_zero: bool = False, **sizes: int | None) -> str | None:
    """For `validate_inputs`: the message for a width / height that is not a multiple of 64 (the UNet halves the
    8x-downsampled latent three times), or None (also for a linked input); `allow_zero` where 0 means "auto"."""
    for name, value in sizes.items():
        if value is not None and value % 64:
            auto = "0 (auto) or " if allow_zero else ""
            return (f"{node_id}: input '{name}' = {value} must be {auto}a multiple of 64 (the UNet halves the latent "
                    f"3 times)")
    return None


# ------------------------------------------------------------------------------------------------ paths
# Every node input that becomes a path is resolved inside one of ComfyUI's folders: "input", "output", "temp", or a
# models folder known to `folder_paths` ("checkpoints", "loras", "svd_eval", ...). Absolute paths, "..", NUL bytes
# and symbolic links leading out are refused; "/" and "\\" both separate folders (a workflow made on Windows).
_DATA_FOLDERS = {"input": folder_paths.get_input_directory, "output": folder_paths.get_output_directory,
                 "temp": folder_paths.get_temp_directory}


class PathRefused(ValueError):
    """A path value that would leave its folder (or names nothing usable); the message says why, never the contents."""


def folder_roots(folder: str) -> list[str]:
    """The directories of a ComfyUI folder: input/, output/, temp/, or every path of a models folder (extra paths)."""
    if folder in _DATA_FOLDERS:
        return [_DATA_FOLDERS[folder]()]
    return folder_paths.get_folder_paths(folder)


def folder_label(folder: str) -> str:
    return f"ComfyUI's {folder} folder" if folder in _DATA_FOLDERS else f"models/{folder}"


def _relative_parts(value) -> list[str]:
    """The components of a relative path value, or PathRefused (absolute, '..', NUL, empty, not text)."""
    if not isinstance(value, str):
        raise PathRefused(f"is a {type(value).__name__}, not a path")
    if "\x00" in value:
        raise PathRefused("contains a NUL byte")
    if not value.strip():
        raise PathRefused("is empty")
    win = PureWindowsPath(value)
    if value.startswith(("/", "\\")) or os.path.isabs(value) or win.drive or win.root:
        raise PathRefused("is an absolute path")
    parts = [p for p in value.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PathRefused("goes up with '..'")
    if len(value) > 1024 or any(len(p.encode()) > 255 for p in parts):
        raise PathRefused("is too long (at most 1024 characters, 255 bytes per name)")
    return parts


def _inside(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([root, path]) == root
    except ValueError:  # different drives (Windows)
        return False


def confine(value: str, roots: list[str], kind: str | None = None, allow_root: bool = False,
            links_out: bool = False) -> str:
    """`value` resolved (symbolic links followed) inside the first of `roots` where it is a `kind` ("file", "dir";
    None: anything, or nothing yet, for outputs): the real path, or PathRefused saying why.

    `links_out=True` accepts a symbolic link inside a root that points elsewhere (models folders: ComfyUI itself
    lists and loads model files linked into them); the value itself must still name something inside the root.
    """
    parts = _relative_parts(value)
    if not parts and not allow_root:
        raise PathRefused("names the folder itself, not something inside it")
    candidates = []
    for root in roots:
        base = os.path.realpath(root)
        lexical = os.path.join(base, *parts)
        path = os.path.realpath(lexical)
        if not _inside(path, base):
            if not links_out:
                raise PathRefused("leads outside the folder through a symbolic link")
            path = lexical
        exists = os.path.isfile(path) if kind == "file" else os.path.isdir(path) if kind == "dir" else \
            os.path.lexists(lexical)
        if exists:
            return path
        candidates.append(path)
    if kind is None and candidates:
        return candidates[0]  # not there yet (an output): in the first folder
    raise PathRefused(f"is not an existing {_KINDS[kind]}")


_KINDS = {"file": "file", "dir": "folder", None: "path"}


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 160 else text[:150] + "...'"


def node_path(node_id: str, input_name: str, value: str, folder: str | tuple[str, ...], kind: str | None = None,
              allow_root: bool = False, links_out: bool = False) -> str:
    """The real path a node input names inside ComfyUI's `folder` (or the first of several folders where it is a
    `kind`), or NodeInputError naming the node, the input and the folder it must stay in."""
    folders = (folder,) if isinstance(folder, str) else tuple(folder)
    roots = [r for f in folders for r in folder_roots(f)]
    where = " or ".join(folder_label(f) for f in folders)
    try:
        return confine(value, roots, kind, allow_root, links_out)
    except PathRefused as exc:
        raise bad_input(node_id, input_name, f"{_shown(value)} {exc}; give a {_KINDS[kind]} relative to {where} "
                                             f"(no absolute paths, no '..', no links leading out)") from None


def path_error(node_id: str, input_name: str, value, folder: str | tuple[str, ...], allow_root: bool = False,
               links_out: bool = False) -> str | None:
    """For `validate_inputs`: the refusal message of a path input, or None (also for a linked input, known at run
    time). Existence is checked at execution: an earlier node of the same prompt may write the file."""
    if value is None:
        return None
    try:
        node_path(node_id, input_name, value, folder, None, allow_root, links_out)
    except NodeInputError as exc:
        return str(exc)
    return None


def check_inside(node_id: str, input_name: str, path: str, folder: str | tuple[str, ...],
                 what: str = "the folder it carries") -> str:
    """A path that travelled between nodes (a dataset folder, ...) or was found in a folder or manifest, still
    inside ComfyUI's `folder` (or one of several; links followed): its real path."""
    folders = (folder,) if isinstance(folder, str) else tuple(folder)
    real = os.path.realpath(path)
    if not any(_inside(real, os.path.realpath(r)) for f in folders for r in folder_roots(f)):
        raise bad_input(node_id, input_name, f"{what} is outside {' and '.join(folder_label(f) for f in folders)}")
    return real



def plain_name(node_id: str, input_name: str, value, suffix: str = "") -> str:
    """A single file or folder name (no folders, no leading '.', no NUL), ending in `suffix` when given."""
    ok = isinstance(value, str) and value.strip() and "\x00" not in value and not value.startswith(".") \
        and not any(c in value for c in "/\\:") and value.endswith(suffix) and value != suffix \
        and len(value.encode()) <= 255
    if not ok:
        what = f"a plain name ending in {suffix}" if suffix else "a plain name"
        raise bad_input(node_id, input_name, f"{_shown(value)} must be {what} (no folders, no leading '.', at "
                                             f"most 255 bytes)")
    return value


def name_error(node_id: str, input_name: str, value, suffix: str = "") -> str | None:
    """`plain_name` for `validate_inputs`: the refusal message, or None (also for a linked input)."""
    if value is None:
        return None
    try:
        plain_name(node_id, input_name, value, suffix)
    except NodeInputError as exc:
        return str(exc)
    return None


IF_EXISTS = ("new name", "error", "overwrite")


def new_file(node_id: str, input_name: str, folder: str, name: str, if_exists: str = "new name") -> str:
    """Where a node writes the file `name` in ComfyUI's `folder` (its first path): an existing file is kept and the
    name numbered (name_00001.ext) unless the user chose "overwrite"; "error" refuses."""
    plain_name(node_id, input_name, name)
    root = os.path.realpath(folder_roots(folder)[0])
    path = os.path.join(root, name)
    if not os.path.lexists(path) or if_exists == "overwrite" and os.path.isfile(path) and not os.path.islink(path):
        return path
    if if_exists != "new name":
        raise bad_input(node_id, input_name, f"{name!r} already exists in {folder_label(folder)}; choose another "
                                             f"name or set if_exists to 'new name' (or 'overwrite' for a file)")
    stem, ext = os.path.splitext(name)
    for i in range(1, 100000):
        path = os.path.join(root, f"{stem}_{i:05d}{ext}")
        if not os.path.lexists(path):
            return path
    raise bad_input(node_id, input_name, f"no free numbered name for {name!r} in {folder_label(folder)}")


@dataclass
class LoadedSVD:
    """A checkpoint as it travels between nodes: one svd_core model, three ComfyUI ModelPatchers over its stages.

    `stages` (built once per model, `native.stage_patchers`): "unet" (the native MODEL), "vae", "conditioner"
    (CLIP image tower and conditioning encoder), each over the model's own modules, so ComfyUI places, offloads
    and frees each stage on its own. `patcher` wraps the whole model for code that hands it around whole; nodes
    load stages with `acquire`."""

    patcher: comfy.model_patcher.ModelPatcher
    name: str

    @property
    def spec(self):
        return self.patcher.model.spec

    @property
    def model(self) -> torch.nn.Module:
        """The svd_core model (whatever is on the device now)."""
        return self.patcher.model

    @property
    def stages(self) -> dict:
        model = self.patcher.model
        found = model.__dict__.get("_svdsuite_stages")
        if found is None:
            from .native import stage_patchers

            found = stage_patchers(model, self.patcher.load_device, self.patcher.offload_device)
            model.__dict__["_svdsuite_stages"] = found
        return found

    def acquire(self, *stages: str, memory_required: int = 0,
                minimum_memory_required: int | None = None) -> torch.nn.Module:
        """Load `stages` ("unet", "vae", "conditioner"; none: all three) onto ComfyUI's compute device with
        `memory_required` bytes free for the work besides the weights (freeing other models if needed; at least
        `minimum_memory_required`, as ComfyUI's own sampler asks), and return the svd_core model."""
        patchers = [self.stages[s] for s in (stages or ("unet", "vae", "conditioner"))]
        least = None if minimum_memory_required is None else int(minimum_memory_required)
        mm.load_models_gpu(patchers, memory_required=int(memory_required), minimum_memory_required=least)
        return self.patcher.model


def stage_memory(model, stage: str, frames: int, height: int, width: int, decode_t: int | None = None,
                 cfg: bool = True) -> int:
    """Bytes a stage needs besides its weights for one request (`svd_core.memory.estimate_request`): sampling
    (UNet activations and latents; `cfg` False: the CFG branches in turn) or decoding (decoder window and the
    video); 0 for the conditioner."""
    from svd_core.memory import estimate_request

    if stage == "conditioner":
        return 0
    est = estimate_request(model, frames=frames, height=height, width=width, device="meta",
                           decode_t=decode_t or model.spec.decode_t, cfg=cfg)
    return est.sampling if stage == "unet" else est.decoding


# Reuse across prompts: the same file (path, mtime) and dtype give the same LoadedSVD while anything (ComfyUI's
# node cache, a running prompt) still holds it; once ComfyUI frees its caches the model is released.
_LOADED: "weakref.WeakValueDictionary[tuple, LoadedSVD]" = weakref.WeakValueDictionary()
_LOAD_LOCK = threading.Lock()


def host_operations(dtype_choice: str):
    """The layer operations svd_core builds the UNet from (`svd_core.ops`): ComfyUI's own casting layers when they
    are needed, i.e. fp8 weights (`comfy.ops.manual_cast`: stored float8_e4m3fn, upcast per layer at compute, as
    `--fp8_e4m3fn-unet` does for native models) or ComfyUI's low-VRAM modes (`--lowvram` / `--novram`: the
    `comfy.ops` layers are what ModelPatcher streams weight by weight); None otherwise (the engine's own layers
    and fast paths)."""
    import comfy.ops

    if dtype_choice == FP8_CHOICE:
        return {"unet": comfy.ops.manual_cast}
    if mm.vram_state in (mm.VRAMState.LOW_VRAM, mm.VRAMState.NO_VRAM):
        return {"unet": comfy.ops.disable_weight_init}
    return None


def load_cached(key: tuple, name: str,
                loader: Callable[[torch.device, "torch.dtype | None", Any], torch.nn.Module],
                dtype_choice: str) -> LoadedSVD:
    """Load once per (file, dtype choice, device): `loader(device, dtype, operations)` builds the model with
    `host_operations`; with the fp8 choice the UNet's Linear / Conv weights are then stored in float8_e4m3fn."""
    load_device = mm.get_torch_device()
    offload_device = mm.unet_offload_device()
    dtype = DTYPES[dtype_choice]
    if dtype is None:  # ComfyUI's choice for this device (fp32 on CPU); fp8 weights compute in it
        dtype = torch.float16 if mm.should_use_fp16(load_device) else torch.float32
    operations = host_operations(dtype_choice)
    full_key = key + (str(dtype), str(load_device), dtype_choice, str(operations))
    with _LOAD_LOCK:
        hit = _LOADED.get(full_key)
        if hit is not None:
            return hit
        module = loader(offload_device, dtype, operations)
        if dtype_choice == FP8_CHOICE:
            from svd_core.ops import store_fp8

            store_fp8(module.unet, dtype)
        module.eval().requires_grad_(False)
        loaded = LoadedSVD(comfy.model_patcher.ModelPatcher(module, load_device=load_device,
                                                            offload_device=offload_device), name)
        _LOADED[full_key] = loaded
        return loaded


def as_loaded(module: torch.nn.Module, name: str) -> LoadedSVD:
    """A model made by a node (the Train node's trained model) as it travels between nodes, like a loaded one."""
    module.eval().requires_grad_(False)
    patcher = comfy.model_patcher.ModelPatcher(module.to(mm.unet_offload_device()), load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    return LoadedSVD(patcher, name)


class Progress:
    """ComfyUI's progress bar and Cancel button for one node run: the engine's `progress(done, total)` callback and
    its `cancel()` hook. Raises ComfyUI's interrupt at once when Cancel was pressed before the run. With `preview`,
    also live previews of each step's x0 prediction, as native samplers send them (`latent_preview.prepare_callback`).

    One cancel rule for the pack, ComfyUI's interrupt flag. An engine that stops cleanly (saving a resumable state,
    keeping finished files) polls `cancel()`; one with nothing to save is aborted at once: by the progress callback
    (sampling, decoding, metrics) or by `interrupt()` as its cancel hook. Wrap a `cancel()` engine's call in
    `with progress.stopping():` so whatever it raises after a Cancel reaches ComfyUI as its interrupt.
    """

    def __init__(self, total: int = 1, preview: bool = False):
        self.total = max(int(total), 1)
        self.bar = comfy.utils.ProgressBar(self.total)
        self.done = 0
        self.polled = False
        self.previewer = _previewer() if preview else None
        self._preview = None
        mm.throw_exception_if_processing_interrupted()

    def denoised(self, x0: torch.Tensor) -> None:
        """The engine's `on_denoised`: the step's x0 prediction "(b t) 4 h w" (scaled latent, as native samplers'
        x0) becomes a preview image of the first frame, sent with the next progress update."""
        if self.previewer is not None:
            self._preview = self.previewer.decode_latent_to_preview_image("JPEG", x0[:1].float())

    def absolute(self, done: int, total: int | None = None, stage: str | None = None) -> None:
        """`done` of `total` units finished (the engine's `svd_core.progress` callback, any stage); raises
        ComfyUI's interrupt on Cancel unless the engine polls `cancel()`."""
        self.done = int(done)
        if total is not None:
            self.total = max(int(total), 1)
        try:
            preview, self._preview = self._preview, None
            # ComfyUI's progress hook sends the preview and raises its interrupt on Cancel
            self.bar.update_absolute(self.done, self.total, preview)
            if not self.polled:
                mm.throw_exception_if_processing_interrupted()
        except mm.InterruptProcessingException:
            if not self.polled:
                raise
            mm.interrupt_current_processing(True)  # keep the flag up: the engine stops at its next cancel() poll

    __call__ = absolute

    def cancel(self) -> bool:
        """The engine's cancel hook: True once the user pressed Cancel (the engine then stops cleanly)."""
        self.polled = True
        return bool(mm.processing_interrupted())

    @staticmethod
    def interrupt() -> bool:
        """The cancel hook of an engine with nothing to save (long-video windows): raises ComfyUI's interrupt at once
        on Cancel, else False."""
        mm.throw_exception_if_processing_interrupted()
        return False

    @contextmanager
    def stopping(self):
        """Around an engine call: an exception raised after Cancel (the engine's own Cancelled / Interrupted, ...)
        becomes ComfyUI's interrupt, so the run ends as cancelled, not as failed."""
        try:
            yield self
        except Exception:
            mm.throw_exception_if_processing_interrupted()
            raise


def _previewer():
    """ComfyUI's previewer for the user's --preview-method (None: no previews) on SVD's latent format: SD15's (the
    VAE of SD 1.x, scale 0.18215, its latent2rgb factors; TAESD from models/vae_approx/taesd_decoder.* if chosen)."""
    import comfy.latent_formats
    import latent_preview

    return latent_preview.get_previewer(mm.get_torch_device(), comfy.latent_formats.SD15())


def image_to_bchw(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE (B, H, W, 3) in 0..1 -> (B, 3, H, W) float32."""
    return rearrange(image[..., :3].float(), "b h w c -> b c h w")  # b h w c -> b c h w


def frames_to_image(frames: torch.Tensor) -> torch.Tensor:
    """Engine frames (B, T, 3, H, W) in 0..1 -> ComfyUI IMAGE (B*T, H, W, 3) float32 on the intermediate device."""
    out = rearrange(frames, "b t c h w -> (b t) h w c")  # videos stacked frame after frame
    return out.to(device=mm.intermediate_device(), dtype=torch.float32).clamp(0, 1).contiguous()


def latent_out(samples: torch.Tensor, num_frames: int, spec) -> dict:
    """Engine latent "(b t) 4 h w" -> ComfyUI LATENT dict (frames of one video contiguous).

    ComfyUI's convention: a LATENT holds the VAE's raw latent (native VAEEncode / VAEDecode); the model samples it
    multiplied by the VAE scale factor (`latent_format` SD15 process_in / process_out, 0.18215). The engine works in
    the model's scaled space (reference `DiffusionEngine.encode_first_stage`), so the scale comes off here."""
    raw = samples / spec.scale_factor  # latent_format.process_out
    return {"samples": raw.to(mm.intermediate_device()), FRAMES_KEY: int(num_frames)}


def latent_in(node_id: str, input_name: str, latent: dict, spec) -> torch.Tensor:
    """ComfyUI LATENT (the VAE's raw latent, ours or native VAEEncode's) -> engine latent "(b t) 4 h w" multiplied
    by the VAE scale factor (`latent_format` SD15 process_in), or NodeInputError for a latent of another model."""
    samples = latent["samples"]
    if samples.ndim != 4 or samples.shape[1] != spec.vae.z_channels:
        raise bad_input(node_id, input_name, f"has shape {tuple(samples.shape)}; expected (frames, "
                                             f"{spec.vae.z_channels}, height/8, width/8): an SVD / SD VAE latent "
                                             f"(SVD Encode, SVD Sampler or native VAE Encode)")
    return samples * spec.scale_factor  # latent_format.process_in


def latent_frames(latent: dict) -> int:
    """Frames per video of a LATENT (ours carry it; a foreign latent counts as one video)."""
    samples = latent["samples"]
    t = int(latent.get(FRAMES_KEY, samples.shape[0]))
    if t < 1 or samples.shape[0] % t:
        raise ValueError(f"latent has {samples.shape[0]} frames, not a whole number of {t}-frame videos")
    return t
