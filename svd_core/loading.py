"""Load and save checkpoints: released `.safetensors` files (memory-mapped, assigned into meta-built modules),
diffusers folders, and our own files whose spec travels in the safetensors metadata."""
from __future__ import annotations

import json
import mmap
import os
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping

import torch

from .model import LoadReport, SVDModel
from .variants import VARIANTS, ModelSpec, get_variant

SPEC_METADATA_KEY = "svd_suite.spec"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}
_MAX_HEADER = 200 * 1024 * 1024


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: the message names the file, the key and what was expected."""


# ---------------------------------------------------------------------------------------------- tensor sources


class SafetensorsFile:
    """Zero-copy reader: each tensor is a view of a private memory map of the file (no second copy in RAM)."""

    def __init__(self, path: Path):
        self.path = path
        size = path.stat().st_size
        if size < 8:
            raise CheckpointError(f"{path}: {size} bytes is not a safetensors file (expected an 8-byte header length)")
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 1 or n > min(size - 8, _MAX_HEADER):
                raise CheckpointError(f"{path}: not a safetensors file (header length {n} does not fit a file of "
                                      f"{size} bytes); convert it or check that the download is complete")
            try:
                header = json.loads(f.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise CheckpointError(f"{path}: not a safetensors file (header is not JSON: {exc})") from None
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self.entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        base = 8 + n
        for key, info in header.items():
            dtype = _ST_DTYPES.get(info.get("dtype"))
            if dtype is None:
                raise CheckpointError(f"{path}: tensor {key!r} has unsupported dtype {info.get('dtype')!r}")
            shape = tuple(info["shape"])
            begin, end = info["data_offsets"]
            nbytes = torch.Size(shape).numel() * dtype.itemsize
            if end - begin != nbytes:
                raise CheckpointError(f"{path}: tensor {key!r} of shape {list(shape)} needs {nbytes} bytes but its "
                                      f"offsets span {end - begin}: the file is corrupt")
            if base + end > size:
                raise CheckpointError(f"{path}: file is truncated: tensor {key!r} ends at byte {base + end} but the "
                                      f"file has {size} bytes; re-download or re-save it")
            self.entries[key] = (dtype, shape, base + begin, nbytes)
        self._file = open(path, "rb")
        self._mm = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_COPY) if size > 8 + n else None

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: e[1] for k, e in self.entries.items()}

    def dtypes(self) -> Counter:
        return Counter(_ST_NAMES[e[0]] for e in self.entries.values())

    def tensor(self, key: str) -> torch.Tensor:
        dtype, shape, offset, nbytes = self.entries[key]
        if nbytes == 0:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(self._mm, dtype=dtype, count=nbytes // dtype.itemsize, offset=offset).view(shape)

    def release(self, key: str) -> None:
        """Drop the pages of a tensor that was copied elsewhere (keeps peak RSS at ~1x the model)."""
        _, _, offset, nbytes = self.entries[key]
        page = mmap.PAGESIZE
        start = -(-offset // page) * page
        stop = (offset + nbytes) // page * page
        if self._mm is not None and stop > start and hasattr(self._mm, "madvise"):
            self._mm.madvise(mmap.MADV_DONTNEED, start, stop - start)


class TensorDict:
    """A plain mapping of tensors as a source (pickled checkpoints, converted diffusers folders)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], metadata: dict | None = None):
        self.tensors, self.metadata = dict(tensors), metadata or {}

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(t.shape) for k, t in self.tensors.items()}

    def dtypes(self) -> Counter:
        return Counter(_ST_NAMES.get(t.dtype, str(t.dtype)) for t in self.tensors.values())

    def tensor(self, key: str) -> torch.Tensor:
        return self.tensors[key]

    def release(self, key: str) -> None:
        self.tensors.pop(key, None)


# ---------------------------------------------------------------------------------------------- detection


def detect_spec(shapes: Mapping[str, tuple], metadata: Mapping[str, str], filename: str = "",
                variant: "str | ModelSpec | None" = None) -> tuple[ModelSpec, str]:
    """Variant from the metadata, an explicit choice, or tensor shapes (adm width, decoder kind, file name)."""
    if variant is not None:
        return get_variant(variant), "given by the caller"
    if SPEC_METADATA_KEY in metadata:
        try:
            return ModelSpec.from_json(metadata[SPEC_METADATA_KEY]), "spec in the file's metadata"
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{filename}: unreadable model spec in metadata {SPEC_METADATA_KEY!r}: {exc}") from None
    label = shapes.get("model.diffusion_model.label_emb.0.0.weight")
    conv_in = shapes.get("model.diffusion_model.input_blocks.0.0.weight")
    if label is None or conv_in is None:
        raise CheckpointError(f"{filename}: no SVD UNet in this file (model.diffusion_model.label_emb / input_blocks "
                              f"missing); expected a released SVD, SVD-XT or SV3D checkpoint")
    adm, width = label[1], conv_in[0]
    if width == 320:  # the paper's other generators (trained by this suite), recognised without metadata too
        if conv_in[1] == 9 and adm == 768:
            return VARIANTS["svd_interp"], "9 UNet input channels (noise, latent sequence, mask): interpolation"
        if conv_in[1] == 4 and "conditioner.embedders.0.model.token_embedding.weight" in shapes:
            return VARIANTS["t2v"], "4 UNet input channels and an open_clip text tower: text-to-video"
        if adm == 1024 and conv_in[1] == 8:
            return VARIANTS["svd_mv"], "adm width 1024 (SVD vector + elevation): SVD-MV"
    if width != 320:
        raise CheckpointError(f"{filename}: UNet width {width} is not a released size (320) and the file carries no "
                              f"{SPEC_METADATA_KEY!r} metadata; pass variant=ModelSpec(...) for a custom model")
    name = filename.lower()
    if adm == 768:
        if "first_stage_model.decoder.conv_out.time_mix_conv.weight" not in shapes:
            if "xt" in name:  # svd_xt_image_decoder.safetensors: same layout, SVD-XT's 25 frames and 30 steps
                return VARIANTS["svd_xt_image_decoder"], ("adm width 768, a per-frame image decoder, 'xt' in the file "
                                                          "name (svd_xt_image_decoder)")
            return VARIANTS["svd_image_decoder"], ("adm width 768 and a per-frame image decoder (name it *xt* for "
                                                   "svd_xt_image_decoder's 25 frames)")
        if "xt" in name:
            key = "svd_xt_1_1" if ("1_1" in name or "1.1" in name) else "svd_xt"
            return VARIANTS[key], f"adm width 768, temporal decoder, 'xt' in the file name ({key})"
        return VARIANTS["svd"], "adm width 768 and a temporal decoder (14 frames; name it *xt* for SVD-XT's 25)"
    if adm == 256:
        return VARIANTS["sv3d_u"], "adm width 256 (cond_aug only)"
    if adm == 1280:
        return VARIANTS["sv3d_p"], "adm width 1280 (cond_aug, polar, azimuth)"
    raise CheckpointError(f"{filename}: UNet adm width {adm} matches no released variant (768 SVD / SVD-XT, 256 "
                          f"SV3D_u, 1280 SV3D_p) and the file has no {SPEC_METADATA_KEY!r} metadata")


def optional_keys(spec: ModelSpec) -> tuple[str, ...]:
    """Prefixes a file may leave out: the conditioner's VAE-decoder copy and the text-tower leftovers."""
    enc = f"conditioner.embedders.{spec.cond_encoder_index}.encoder."
    text = "conditioner.embedders.0.open_clip.model."
    return (enc + "decoder.", enc + "post_quant_conv.") + tuple(
        text + k for k in ("token_embedding.", "positional_embedding", "ln_final.", "text_projection", "logit_scale"))


# ---------------------------------------------------------------------------------------------- assignment


def _set_tensor(model: torch.nn.Module, key: str, value: torch.Tensor) -> None:
    module_name, _, leaf = key.rpartition(".")
    module = model.get_submodule(module_name)
    if leaf in module._parameters:
        module._parameters[leaf] = torch.nn.Parameter(value, requires_grad=False)
    else:
        module._buffers[leaf] = value


def _drop_absent(model: SVDModel, absent: Iterable[str]) -> None:
    """Remove modules whose weights the file left out (never used at inference), so nothing stays on meta."""
    absent = set(absent)
    spec = model.spec
    enc_prefix = f"conditioner.embedders.{spec.cond_encoder_index}.encoder."
    if any(k.startswith(enc_prefix + "decoder.") or k.startswith(enc_prefix + "post_quant_conv.") for k in absent):
        model.conditioner.vae_encoder.encoder.drop_decoder()
    if spec.cond_mode == "text":  # the text tower is required; nothing optional to drop
        return
    clip_model = model.conditioner.clip.open_clip.model
    text = "conditioner.embedders.0.open_clip.model."
    for name in ("token_embedding", "positional_embedding", "ln_final", "text_projection", "logit_scale"):
        if any(k == text + name or k.startswith(text + name + ".") for k in absent):
            delattr(clip_model, name)


def assign_weights(model: SVDModel, source, report: LoadReport, device="cpu", dtype: torch.dtype | None = None,
                   strict: bool = False) -> SVDModel:
    """Check every key and shape against the model, then assign the source's tensors into the meta modules."""
    label = report.source
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    shapes = source.shapes()
    bad = [f"{k!r}: expected {list(expected[k])}, found {list(s)}" for k, s in shapes.items()
           if k in expected and tuple(expected[k]) != tuple(s)]
    if bad:
        raise CheckpointError(f"{label}: {len(bad)} tensor(s) have the wrong shape for variant "
                              f"{model.spec.name!r}: " + "; ".join(bad[:8]) + (" ..." if len(bad) > 8 else ""))
    optional = optional_keys(model.spec)
    missing = [k for k in expected if k not in shapes]
    required = [k for k in missing if not k.startswith(optional)]
    if required:
        raise CheckpointError(f"{label}: {len(required)} required tensor(s) missing for variant {model.spec.name!r}: "
                              + ", ".join(required[:10]) + (" ..." if len(required) > 10 else ""))
    report.missing_optional = missing
    report.unexpected = sorted(k for k in shapes if k not in expected)
    if strict and report.unexpected:
        raise CheckpointError(f"{label}: unexpected keys: " + ", ".join(report.unexpected[:20]))
    if dtype is None:  # keep the file's dominant float dtype: zero-copy, and the precision the file was made in
        floats = Counter({k: v for k, v in source.dtypes().items() if k in ("F32", "F16", "BF16", "F64")})
        dtype = _ST_DTYPES[floats.most_common(1)[0][0]] if floats else torch.float32
    device = torch.device(device)
    for key in expected:
        if key not in shapes:
            continue
        tensor = source.tensor(key)
        converted = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
        if converted.data_ptr() != tensor.data_ptr():  # a converted copy: the mapped pages are no longer needed
            source.release(key)
        _set_tensor(model, key, converted)
    _drop_absent(model, missing)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left and device.type != "meta":  # device="meta" validates a file's layout without reading any weights
        raise CheckpointError(f"{label}: tensors left unassigned: {left[:10]}")
    model.load_report = report
    return model.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------- public API


def load(path: "str | os.PathLike", *, device="cpu", dtype: torch.dtype | None = None,
         variant: "str | ModelSpec | None" = None, allow_pickle: bool = False, strict: bool = False) -> SVDModel:
    """Load a released or self-trained checkpoint (`.safetensors`, or a diffusers folder) into an `SVDModel`."""
    path = Path(path)
    if path.is_dir():
        from .diffusers_io import load_diffusers

        return load_diffusers(path, device=device, dtype=dtype)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path} (put SVD files in ComfyUI's models/checkpoints or "
                                f"pass the full path)")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise CheckpointError(f"{path.name}: pickled checkpoints ({path.suffix}) can run code when loaded and are "
                                  f"refused; convert it to .safetensors, or opt in with allow_pickle=True "
                                  f"(then read with torch.load(weights_only=True))")
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        source = TensorDict(data.get("state_dict", data) if isinstance(data, dict) else data)
    else:
        source = SafetensorsFile(path)
    spec, how = detect_spec(source.shapes(), source.metadata, path.name, variant)
    report = LoadReport(source=str(path), variant=spec.name, detected_from=how, file_dtypes=dict(source.dtypes()))
    with torch.device("meta"):
        model = SVDModel(spec)
    return assign_weights(model, source, report, device=device, dtype=dtype, strict=strict)


def save(model: SVDModel, path: "str | os.PathLike", metadata: Mapping[str, str] | None = None,
         dtype: torch.dtype | None = None) -> Path:
    """Write the model in the released layout (spec in metadata), atomically: temp file, then rename."""
    tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu()
               for k, v in model.state_dict().items()}
    meta = {SPEC_METADATA_KEY: model.spec.to_json(), "format": "pt"}
    meta.update(metadata or {})
    return save_tensors(tensors, path, meta)


def save_tensors(tensors: Mapping[str, torch.Tensor], path: "str | os.PathLike",
                 metadata: Mapping[str, str] | None = None) -> Path:
    """Write a safetensors file atomically (svd_core.atomic: a temp file beside `path`, then a rename)."""
    from safetensors.torch import save_file

    from .atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=dict(metadata or {}))
    return path
