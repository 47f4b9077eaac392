"""Stage I (paper Sec. 4.1, App. D.2): the video model built from an image model, Stable Diffusion 2.1.

`from_image_model(path_or_state_dict)` (files: `convert_file`, CLI `python -m svd_core stage1`, node
SVDSuite_Stage1FromSD2) loads an SD 2.x UNet (512-base, eps-prediction, reference
`configs/stable-diffusion/v2-inference.yaml`; 768-v, v-prediction, `v2-inference-v.yaml`; both: model_channels 320,
channel_mult 1,2,4,4, num_res_blocks 2, attention_resolutions 4,2,1, num_head_channels 64, transformer depth 1,
context_dim 1024, use_linear_in_transformer, in_channels 4) into our video UNet and returns a normal video model of
this project (default spec `SPEC`, "t2v_sd21": the text-to-video base model `t2v` with SD 2.1's image autoencoder).

Key manifest: `image_unet_manifest(spec)` is our own UNet builder's layout without the parts the video model adds
(`convert.VIDEO_ONLY_PARTS`: time_stack, time_mixer, time_pos_embed, label_emb); tests check it key for key against
diffusers' `UNet2DConditionModel` with the SD 2.1 config (an independent source) through `convert`'s key rules.

The inserted layers start as the identity, exactly, so the video model reproduces the image model frame by frame:
  - every temporal residual branch ends in a zero layer: `time_stack.out_layers.3` of each VideoResBlock; `ff_in`,
    `attn1.to_out`, `attn2.to_out` and `ff` outputs of each temporal transformer block (all residual, the block's
    input width equals its inner width), and `time_pos_embed.2`: the temporal path returns its input bit for bit;
  - the `time_mixer` blends `a x_spatial + (1 - a) x_temporal` (layers.AlphaBlender, torch.lerp): with
    x_temporal == x_spatial it returns x_spatial exactly for any learned a, so mix_factor keeps the reference's
    init and trains from there;
  - `label_emb.0.2` (the micro-conditioning embedding, absent from SD 2.1) is zero: the time embedding is SD's;
  - extra UNet input channels (a concat frame) get zero columns in `input_blocks.0.0.weight`.
Everything else new keeps PyTorch's default init, so gradients reach the zero layers from the first step.

EDM switch (App. D.2): the video model always uses `denoiser.edm_v_scalings` (reference `VScalingWithEDMcNoise`,
c_in = 1/sqrt(s^2+1), c_out = -s/sqrt(s^2+1), c_skip = 1/(s^2+1), c_noise = ln(s)/4), trained with log s ~
N(-1.2, 1) in the image stage. SD 2.x's DDPM step t has the EDM noise level s_t = sqrt((1 - abar_t) / abar_t)
(`sd_ddpm_sigmas`: 0.029 at t = 0 to 14.6 at t = 999), and x = x_t / sqrt(abar_t):
  - a v source (768-v): c_in x = x_t and D = sqrt(abar) x_t - sqrt(1 - abar) F, which is SD 2.1's own
    v-parameterisation; only the noise input changes (the step index t in 0..999 becomes c_noise = ln(s)/4, -0.88
    to 0.67 over SD's steps), hence the time-embedding-only warm-up (preset `time_embed_warmup`) before image
    finetuning;
  - an eps source (512-base): the output is read as v = sqrt(abar) eps - sqrt(1 - abar) x0 instead of eps, close to
    eps at low noise and to -x0 at high noise: the parameterisation changes too, which the time embedding alone
    cannot absorb; the full image finetune (preset `image_finetune`) has to relearn the output.
`ModelSpec.source_prediction` records which it was, in the saved file's spec.
"""
from __future__ import annotations

import functools
import json
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

import torch

from .attention import SpatialVideoTransformer
from .convert import VIDEO_ONLY_PARTS, is_video_only
from .layers import VideoResBlock
from .loading import CheckpointError, SafetensorsFile, TensorDict, save
from .model import SVDModel
from .text2video import SD21_TEXT_PREFIXES, text_tower_from_sd21
from .unet import VideoUNet
from .variants import TEXT2VIDEO, ModelSpec, UNetSpec, get_variant

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
PREDICTIONS = ("eps", "v")
# the text-to-video base model (variant t2v) with SD 2.1's image autoencoder (quant_conv / post_quant_conv,
# per-frame decoder); its spec travels in the file's metadata like every custom model's
SPEC = replace(TEXT2VIDEO, name="t2v_sd21", vae=replace(TEXT2VIDEO.vae, decoder="image", first_stage_quant=True),
               custom=True)
# ComfyUI's SD 2.x test (comfy/supported_models.py, SD20.model_type): this LayerNorm bias is spread wider in v models
V_PROBE_KEY = "output_blocks.11.1.transformer_blocks.0.norm1.bias"
V_PROBE_STD = 0.09


def sd_ddpm_sigmas(steps: int = 1000, linear_start: float = 0.00085, linear_end: float = 0.012) -> torch.Tensor:
    """EDM noise level of each DDPM step SD 2.x was trained with (v2-inference(-v).yaml: `scaled_linear` betas,
    linear_start 0.00085, linear_end 0.012, 1000 steps): s_t = sqrt((1 - abar_t) / abar_t), float64."""
    betas = torch.linspace(linear_start**0.5, linear_end**0.5, steps, dtype=torch.float64) ** 2
    abar = torch.cumprod(1.0 - betas, 0)
    return ((1.0 - abar) / abar).sqrt()


@dataclass
class Stage1Report:
    """What `from_image_model` did: sources, the prediction type, and the keys by how they were initialised."""

    source: str = ""
    spec: str = ""
    prediction: str = ""
    prediction_from: str = ""
    copied: list[str] = field(default_factory=list)  # UNet keys taken from the image model
    widened: list[str] = field(default_factory=list)  # copied into a wider tensor, new columns zero
    zeroed: list[str] = field(default_factory=list)  # new layers set to zero (identity at init)
    fresh: list[str] = field(default_factory=list)  # new UNet tensors with PyTorch's default init
    vae: str = ""
    text: str = ""
    ignored: dict[str, int] = field(default_factory=dict)  # key group -> count, read but not used

    def summary(self) -> str:
        lines = [f"{self.source}: SD 2.x UNet ({self.prediction}-prediction, {self.prediction_from}) -> {self.spec}",
                 f"  UNet: {len(self.copied)} tensors copied, {len(self.widened)} widened, {len(self.zeroed)} new "
                 f"zero (identity), {len(self.fresh)} new default-init",
                 f"  VAE: {self.vae}", f"  text encoder: {self.text}"]
        if self.ignored:
            lines.append("  ignored: " + ", ".join(f"{k}* ({n})" for k, n in self.ignored.items()))
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({"source": self.source, "spec": self.spec, "prediction": self.prediction,
                           "prediction_from": self.prediction_from, "copied": len(self.copied),
                           "widened": self.widened, "zeroed": len(self.zeroed), "fresh": len(self.fresh),
                           "vae": self.vae, "text": self.text, "ignored": self.ignored}, sort_keys=True)


def image_unet_spec(spec: "str | ModelSpec" = SPEC) -> UNetSpec:
    """The image UNet a video spec is built from: the same spatial layers, 4 input channels (SD 2.x)."""
    return replace(get_variant(spec).unet, in_channels=4)


def image_unet_manifest(spec: "str | ModelSpec" = SPEC) -> dict[str, tuple[int, ...]]:
    """SD 2.x UNet keys (no prefix) -> shapes: our VideoUNet's layout (meta device) minus its video-only parts."""
    return dict(_manifest(image_unet_spec(spec)))


@functools.lru_cache(maxsize=8)
def _manifest(unet_spec: UNetSpec) -> tuple[tuple[str, tuple[int, ...]], ...]:
    with torch.device("meta"):
        unet = VideoUNet(unet_spec)
    return tuple((k, tuple(v.shape)) for k, v in unet.state_dict().items() if not is_video_only(k))


def _shape_hint(key: str, expected: tuple, found: tuple) -> str:
    if key.endswith("attn2.to_k.weight") and found[-1] == 768:
        return " (768-d text context: a Stable Diffusion 1.x UNet; Stage I needs SD 2.x with 1024-d OpenCLIP tokens)"
    if ".proj_in." in key and len(found) == 4:
        return " (1x1-conv proj_in: SD 1.x layout; SD 2.x uses linear projections, use_linear_in_transformer)"
    if key == "input_blocks.0.0.weight" and len(found) == 4 and found[1] != expected[1]:
        return (f" ({found[1]} input channels: an inpainting / depth model; Stage I takes the 4-channel "
                f"text-to-image UNet)")
    return ""


def _unet_shapes(shapes: Mapping[str, tuple], label: str) -> dict[str, tuple]:
    """The file's UNet keys (prefix removed) -> shapes; a file without any is refused."""
    unet = {k[len(UNET_PREFIX):]: tuple(s) for k, s in shapes.items() if k.startswith(UNET_PREFIX)}
    if not unet:
        some = ", ".join(sorted(shapes)[:3]) or "none"
        raise CheckpointError(f"{label}: no image UNet in this file (no key starts with {UNET_PREFIX!r}; keys e.g. "
                              f"{some}); expected a Stable Diffusion 2.x checkpoint (.safetensors)")
    return unet


def check_image_unet(shapes: Mapping[str, tuple], spec: "str | ModelSpec" = SPEC, label: str = "") -> None:
    """Refuse anything that is not an SD 2.x UNet of `spec`'s size: the message names the first bad key."""
    manifest = image_unet_manifest(spec)
    unet = _unet_shapes(shapes, label)
    video = sorted(k for k in unet if is_video_only(k))
    if video:
        raise CheckpointError(f"{label}: {UNET_PREFIX}{video[0]} is not an SD 2.x text-to-image UNet key ({len(video)} "
                              f"such keys: {VIDEO_ONLY_PARTS} belong to video / class-conditioned UNets, e.g. SVD, "
                              f"SD 2.1 unCLIP or SDXL); Stage I starts from an image model")
    for key, expected in manifest.items():
        if key not in unet:
            raise CheckpointError(f"{label}: {UNET_PREFIX}{key} is missing ({sum(k not in unet for k in manifest)} of "
                                  f"{len(manifest)} SD 2.x UNet tensors absent); expected an SD 2.x UNet "
                                  f"(v2-inference.yaml / v2-inference-v.yaml layout)")
        if unet[key] != expected:
            raise CheckpointError(f"{label}: {UNET_PREFIX}{key} has shape {list(unet[key])}, expected "
                                  f"{list(expected)} for an SD 2.x UNet" + _shape_hint(key, expected, unet[key]))
    extra = sorted(set(unet) - set(manifest))
    if extra:
        raise CheckpointError(f"{label}: {UNET_PREFIX}{extra[0]} is not an SD 2.x UNet key ({len(extra)} unknown UNet "
                              f"keys); expected exactly the v2-inference.yaml layout")


def spec_for(shapes: Mapping[str, tuple], label: str = "") -> ModelSpec:
    """The video spec for an image model's UNet width: SD 2.x (320) -> `SPEC`; TINY_STAGE1's width -> that test
    spec (tests and demos); anything else is refused naming the width."""
    from .testing import TINY_STAGE1

    conv_in = _unet_shapes(shapes, label).get("input_blocks.0.0.weight")
    for spec in (SPEC, TINY_STAGE1):
        if conv_in is not None and conv_in[0] == spec.unet.model_channels:
            return spec
    found = f"width {conv_in[0]}" if conv_in is not None else f"no {UNET_PREFIX}input_blocks.0.0.weight"
    raise CheckpointError(f"{label}: {found}; an SD 2.x UNet has model_channels {SPEC.unet.model_channels} "
                          f"(expected a Stable Diffusion 2.x checkpoint)")


def detect_prediction(source, prediction: str = "auto") -> tuple[str, str]:
    """("eps" | "v", how): given by the caller, or ComfyUI's SD 2.x heuristic (a LayerNorm bias spread > 0.09)."""
    if prediction in PREDICTIONS:
        return prediction, "given"
    if prediction != "auto":
        raise ValueError(f"prediction={prediction!r}; expected 'auto', 'eps' (SD 2.1 512-base) or 'v' (SD 2.1 768-v)")
    if UNET_PREFIX + V_PROBE_KEY not in source.shapes():
        raise ValueError(f"prediction='auto' needs {V_PROBE_KEY} (an SD 2.x UNet has it); pass prediction='eps' "
                         f"(SD 2.1 512-base) or 'v' (SD 2.1 768-v)")
    probe = source.tensor(UNET_PREFIX + V_PROBE_KEY).float()
    std = probe.std(unbiased=False).item()
    kind = "v" if std > V_PROBE_STD else "eps"
    return kind, (f"detected: std of {V_PROBE_KEY} = {std:.3f} {'>' if kind == 'v' else '<='} {V_PROBE_STD} "
                  f"(ComfyUI's SD 2.x test); pass prediction='eps' or 'v' if the file is known")


@torch.no_grad()
def init_identity_(unet: VideoUNet) -> list[str]:
    """Zero the last layer of every branch the video UNet adds to an image UNet, so it computes the image UNet on
    every frame exactly (module docstring). Returns the zeroed parameter names."""
    zero = []
    for name, module in unet.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, VideoResBlock):
            zero.append((f"{prefix}time_stack.out_layers.3", module.time_stack.out_layers[-1]))
        elif isinstance(module, SpatialVideoTransformer):
            zero.append((f"{prefix}time_pos_embed.2", module.time_pos_embed[-1]))
            for i, block in enumerate(module.time_stack):
                if not block.is_res:
                    raise ValueError(f"{prefix}time_stack.{i}: inner width differs from the input width, the "
                                     f"temporal block is not residual and cannot start as the identity")
                stem = f"{prefix}time_stack.{i}."
                zero += [(stem + "ff_in.net.2", block.ff_in.net[-1]), (stem + "attn1.to_out.0", block.attn1.to_out[0]),
                         (stem + "attn2.to_out.0", block.attn2.to_out[0]), (stem + "ff.net.2", block.ff.net[-1])]
    zero.append(("label_emb.0.2", unet.label_emb[0][-1]))
    names = []
    for stem, layer in zero:
        for pname, p in layer.named_parameters():
            p.zero_()
            names.append(f"{stem}.{pname}")
    return names


def _source(path_or_state_dict) -> tuple[object, str]:
    if isinstance(path_or_state_dict, Mapping):
        tensors = dict(path_or_state_dict)
        if not any(k.startswith(UNET_PREFIX) for k in tensors):  # a bare UNet state dict
            tensors = {UNET_PREFIX + k: v for k, v in tensors.items()}
        return TensorDict(tensors), "state dict"
    path = Path(path_or_state_dict)
    if not path.is_file():
        raise FileNotFoundError(f"image model not found: {path} (an SD 2.x .safetensors file)")
    if path.suffix.lower() != ".safetensors":
        raise CheckpointError(f"{path.name}: Stage I reads .safetensors files only (pickled {path.suffix} files can "
                              f"run code when loaded); convert the SD 2.x checkpoint to .safetensors")
    return SafetensorsFile(path), str(path)


def _group(key: str) -> str:
    parts = key.split(".")
    return ".".join(parts[:2]) + "." if len(parts) > 2 else key


def _load_part(model: SVDModel, source, shapes, prefix_src: str, prefix_dst: str, what: str) -> tuple[str, set]:
    """Copy a whole sub-model (every key, right shapes) or nothing; returns (what happened, source keys used)."""
    target = {k: v for k, v in model.state_dict().items() if k.startswith(prefix_dst)}
    present = {k: prefix_src + k[len(prefix_dst):] for k in target}
    have = [k for k, s in present.items() if s in shapes]
    if not have:
        return f"not in the file: fresh init (load the image model's {what} before training)", set()
    bad = [k for k in target if present[k] not in shapes or tuple(shapes[present[k]]) != tuple(target[k].shape)]
    if bad:
        k = bad[0]
        found = list(shapes[present[k]]) if present[k] in shapes else "absent"
        return (f"not loaded: {present[k]} is {found}, expected {list(target[k].shape)} ({len(bad)} mismatches): "
                f"fresh init", set())
    for k, t in target.items():
        t.copy_(source.tensor(present[k]))
    return f"loaded from {prefix_src}* ({len(target)} tensors)", set(present.values())


@torch.no_grad()
def from_image_model(path_or_state_dict, spec: "str | ModelSpec | None" = None, *, prediction: str = "auto",
                     dtype: torch.dtype = torch.float32, device="cpu") -> tuple[SVDModel, Stage1Report]:
    """An SD 2.x checkpoint (path or state dict, keys under `model.diffusion_model.` or bare UNet keys) -> (video
    model of `spec`, report). The video model computes the image UNet on every frame at init (module docstring);
    its spec records `source_prediction`. `spec` None: `spec_for` the file. The file's VAE (`first_stage_model.`)
    and OpenCLIP text tower (`cond_stage_model.model.`) are loaded when `spec` has matching parts; other keys are
    reported as ignored."""
    source, label = _source(path_or_state_dict)
    shapes = source.shapes()
    spec = spec_for(shapes, label) if spec is None else get_variant(spec)
    if spec.unet.in_channels < 4 or spec.unet.out_channels != 4:
        raise ValueError(f"spec {spec.name!r}: unet in_channels={spec.unet.in_channels}, out_channels="
                         f"{spec.unet.out_channels}; Stage I needs >= 4 inputs and 4 outputs (SD's latent channels)")
    check_image_unet(shapes, spec, label)
    kind, how = detect_prediction(source, prediction)
    spec = replace(spec, source_prediction=kind, custom=True)
    report = Stage1Report(source=label, spec=spec.name, prediction=kind, prediction_from=how)
    with torch.device(device):
        model = SVDModel(spec)
    model = model.to(dtype)
    unet_sd = model.unet.state_dict()
    used = set()
    for key in image_unet_manifest(spec):  # the keys check_image_unet verified
        value, target = source.tensor(UNET_PREFIX + key), unet_sd[key]
        used.add(UNET_PREFIX + key)
        if target.shape == value.shape:
            target.copy_(value)
            report.copied.append(key)
        else:  # conv_in of a spec with a concat input: (o, 4, 3, 3) into (o, in, 3, 3), the new columns zero
            target.zero_()
            target[:, :value.shape[1]].copy_(value)
            report.widened.append(key)
    report.zeroed = init_identity_(model.unet)
    zeroed = set(report.zeroed)
    report.fresh = sorted(k for k in unet_sd if is_video_only(k) and k not in zeroed)
    report.vae, vae_keys = _load_part(model, source, shapes, VAE_PREFIX, VAE_PREFIX, "autoencoder")
    used |= vae_keys
    report.text = f"not used: {spec.name} is {spec.cond_mode}-conditioned (its image encoders keep a fresh init)"
    if spec.cond_mode == "text":
        text = {k: source.tensor(k) for k in shapes if k.startswith(SD21_TEXT_PREFIXES)}
        report.text = "not in the file: fresh init (load SD 2.1's text tower before training)"
        try:
            copied = set(text_tower_from_sd21(model, text))  # tower keys without the prefix
            used |= {k for k in text if k.split(".model.", 1)[-1] in copied}
            report.text = f"OpenCLIP text tower loaded ({len(copied)} tensors)"
        except ValueError as exc:
            if text:
                report.text = f"not loaded ({exc}): fresh init (load SD 2.1's text tower before training)"
    report.ignored = dict(Counter(_group(k) for k in shapes if k not in used))
    model.stage1_report = report
    return model.eval().requires_grad_(False), report


def save_stage1(model: SVDModel, report: Stage1Report, out: "str | os.PathLike", *, overwrite: bool = False,
                dtype: torch.dtype | None = None) -> Path:
    """Write the Stage I model (spec and report in the metadata) atomically; an existing file is kept unless
    `overwrite`."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose another --out or pass --overwrite to replace it")
    return save(model, out, {"svd_suite.stage1": report.to_json()}, dtype=dtype)


def convert_file(image_model: "str | os.PathLike", out: "str | os.PathLike", *, spec: "str | ModelSpec | None" = None,
                 prediction: str = "auto", overwrite: bool = False,
                 dtype: torch.dtype = torch.float32) -> tuple[Path, Stage1Report]:
    """SD 2.x .safetensors -> Stage I video model file (what the CLI and the node run). `out` must end in
    .safetensors; an existing `out` is refused before any work unless `overwrite`."""
    out = Path(out)
    if out.suffix.lower() != ".safetensors":
        raise ValueError(f"output {out.name!r} must end in .safetensors")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose another output name or allow overwriting it")
    model, report = from_image_model(image_model, spec, prediction=prediction)
    return save_stage1(model, report, out, overwrite=overwrite, dtype=dtype), report


__all__ = ["SPEC", "PREDICTIONS", "sd_ddpm_sigmas", "Stage1Report", "image_unet_spec", "image_unet_manifest",
           "check_image_unet", "spec_for", "detect_prediction", "init_identity_", "from_image_model", "save_stage1",
           "convert_file"]
