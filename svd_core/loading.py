"""Load and save checkpoints: released `.safetensors` files (memory-mapped, assigned into meta-built modules),
diffusers folders, and our own files whose spec travels in the safetensors metadata."""
from __future__ import annotations

import json
import math
import mmap
import os
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch

from .config_check import kind_of, short_repr
from .diffusers_io import PARTS, WEIGHT_NAMES, sgm_tensors, spec_from_configs
from .model import LoadReport, SVDModel
from .variants import VARIANTS, ModelSpec, get_variant, spec_from_dict

SPEC_METADATA_KEY = "svd_suite.spec"
SPEC_FROM_METADATA = "spec in the file's metadata"
MAX_PARAMETERS = 20_000_000_000  # 10x SVD-XT's ~2.3 B: a spec describing more is refused before anything is built
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's MAX_HEADER_SIZE
MAX_JSON_DEPTH = 8  # a valid header nests 3 deep ({name: {shape: [..]}}); a spec in the metadata 4
_MAX_RANK = 64
_MAX_U64 = 2 ** 64 - 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: the message names the file, the key and what was expected."""


# ---------------------------------------------------------------------------------------------- header validation

# every dtype the safetensors format defines; the ones torch cannot view here are refused by name
_ST_KNOWN = ("BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64",
             "U64")
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth(raw: bytes) -> int:
    """Deepest nesting of `[`/`{` outside JSON strings, found without recursion (chunked running sum)."""
    brackets = np.frombuffer(_JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKET), dtype=np.uint8)
    depth = peak = 0
    for i in range(0, len(brackets), 1 << 20):
        chunk = brackets[i:i + (1 << 20)]
        level = np.cumsum(np.where((chunk == ord("[")) | (chunk == ord("{")), 1, -1), dtype=np.int64) + depth
        peak, depth = max(peak, int(level.max())), int(level[-1])
    return peak


def _unique_keys(pairs: list) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice")
        out[key] = value
    return out


def _no_constant(name: str):
    raise ValueError(f"{name} is not standard JSON")


def bounded_json(raw: "bytes | str", max_depth: int = MAX_JSON_DEPTH):
    """Strict JSON of untrusted bytes: UTF-8, nesting at most `max_depth`, no duplicate keys, no NaN/Infinity.
    Raises ValueError with the problem (the caller names the file)."""
    raw = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    depth = json_depth(raw)
    if depth > max_depth:
        raise ValueError(f"JSON nested {depth} levels deep (at most {max_depth} allowed)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except RecursionError:  # unreachable after the depth check; kept so no input can surface one
        raise ValueError("JSON nested too deeply") from None
    except ValueError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None


def _is_u64(value) -> bool:
    return type(value) is int and 0 <= value <= _MAX_U64


def parse_header(raw: bytes, file_size: int, path: "str | os.PathLike") -> tuple[dict[str, str], dict[str, tuple]]:
    """Validate a safetensors header as `safetensors/src/tensor.rs` does (JSON object of objects, known dtypes,
    shape a list of non-negative ints, data_offsets [begin, end] spanning numel * itemsize bytes, tensors contiguous
    and non-overlapping and covering the byte buffer exactly, `__metadata__` a str -> str map), plus duplicate
    keys and nesting depth. Returns (metadata, {name: (dtype, shape, file offset, nbytes)})."""
    base, available = 8 + len(raw), file_size - 8 - len(raw)

    def bad(problem: str) -> CheckpointError:
        return CheckpointError(f"{path}: not a valid safetensors file: {problem}; re-download or re-save it")

    if not raw.startswith(b"{"):
        raise bad("the header does not start with '{'")
    try:
        header = bounded_json(raw)
    except ValueError as exc:
        raise bad(f"header {exc}") from None
    if not isinstance(header, dict):
        raise bad(f"the header is {kind_of(header)}, expected an object of tensors")
    metadata = header.pop("__metadata__", None)
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise bad("__metadata__ must be an object of string values")
    entries, spans = {}, []
    for key, info in header.items():
        t = f"tensor {short_repr(key)}"
        if not isinstance(info, dict):
            raise bad(f"{t} is {kind_of(info)}, expected an object with dtype, shape and data_offsets")
        missing = [f for f in ("dtype", "shape", "data_offsets") if f not in info]
        if missing:
            raise bad(f"{t} has no {', '.join(missing)}")
        name, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(name, str) or name not in _ST_KNOWN:
            raise bad(f"{t} has dtype {short_repr(name)}, expected one of {', '.join(_ST_KNOWN)}")
        if name not in _ST_DTYPES:
            raise CheckpointError(f"{path}: {t} has unsupported dtype {name!r} (supported: "
                                  f"{', '.join(_ST_DTYPES)}); convert the file")
        if not isinstance(shape, list) or len(shape) > _MAX_RANK or not all(_is_u64(d) for d in shape):
            raise bad(f"{t} has shape {short_repr(shape)}, expected a list of at most {_MAX_RANK} "
                      f"non-negative integers")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_u64(o) for o in offsets):
            raise bad(f"{t} has data_offsets {short_repr(offsets)}, expected [begin, end] (non-negative integers)")
        begin, end = offsets
        dtype = _ST_DTYPES[name]
        numel = 1
        for d in shape:
            numel *= d
            if numel > _MAX_U64:
                raise bad(f"{t} has shape {short_repr(shape)}, too many elements")
        nbytes = numel * dtype.itemsize
        if end < begin or end - begin != nbytes:
            raise bad(f"{t} ({name}, shape {list(shape)}) needs {nbytes} bytes but its data_offsets "
                      f"[{begin}, {end}] span {end - begin}")
        entries[key] = (dtype, tuple(shape), base + begin, nbytes)
        spans.append((begin, end, key))
    spans.sort()
    pos, prev = 0, None
    for begin, end, key in spans:
        t = f"tensor {short_repr(key)}"
        if begin < pos:
            raise bad(f"{t} at bytes [{begin}, {end}) overlaps tensor {short_repr(prev)} (ends at {pos}): "
                      f"two tensors would share storage")
        if begin > pos:
            raise bad(f"{t} starts at byte {begin} but the previous tensor ends at {pos} (a gap)")
        pos, prev = end, key
    if pos > available:
        raise CheckpointError(f"{path}: file is truncated: tensor {short_repr(prev)} ends at byte {base + pos} but "
                              f"the file has {file_size} bytes; re-download or re-save it")
    if pos < available:
        raise bad(f"{available - pos} bytes after the last tensor are not described by the header")
    return metadata, entries


# ---------------------------------------------------------------------------------------------- tensor sources


class SafetensorsFile:
    """Zero-copy reader: each tensor is a view of a private memory map of the file (no second copy in RAM).

    The header is validated as the `safetensors` library does (`safetensors/src/tensor.rs`, `Metadata::validate`)
    before anything is mapped: see `parse_header`."""

    def __init__(self, path: Path):
        self.path = path
        try:
            size = path.stat().st_size
            if size < 8:
                raise CheckpointError(f"{path}: {size} bytes is not a safetensors file (expected an 8-byte header "
                                      f"length)")
            with open(path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                if n < 2 or n > min(size - 8, MAX_HEADER_BYTES):
                    raise CheckpointError(f"{path}: not a safetensors file (header length {n} does not fit a file "
                                          f"of {size} bytes, or exceeds the {MAX_HEADER_BYTES} byte limit); convert "
                                          f"it or check that the download is complete")
                raw = f.read(n)
            self.metadata, self.entries = parse_header(raw, size, path)
            self._file = open(path, "rb")
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
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
            return spec_from_dict(bounded_json(metadata[SPEC_METADATA_KEY])), SPEC_FROM_METADATA
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


def min_tensors(spec: ModelSpec) -> int:
    """A lower bound, in closed form, on the tensors a spec's model must load: its repeated blocks (UNet res and
    attention blocks as in `unet.VideoUNet`, VAE res blocks, ViT layers) times the fewest tensors each kind holds.
    Compared with the file before the meta build, so a spec describing far more than the file holds is refused at
    once (a build of 10^7 CLIP layers never starts)."""
    u, v = spec.unet, spec.vae
    levels, per_level = len(u.channel_mult), u.num_res_blocks
    attn_levels = sum(1 for level in range(levels) if 2 ** level in u.attention_resolutions)
    unet_res = levels * per_level + 2 + levels * (per_level + 1)
    unet_attn = attn_levels * per_level + 1 + attn_levels * (per_level + 1)
    enc_res = len(v.ch_mult) * v.num_res_blocks + 2
    dec_res = len(v.ch_mult) * (v.num_res_blocks + 1) + 2
    vae_res = dec_res + (enc_res if v.first_stage_encoder else 0) + (enc_res if spec.cond_mode != "text" else 0)
    towers = spec.clip.text_layers if spec.cond_mode == "text" else spec.clip.layers
    # fewest tensors per block: UNet VideoResBlock 20, attention 30, VAE ResBlock 8, ViT layer 12
    return 20 * unet_res + 30 * unet_attn + 8 * vae_res + 12 * towers


def build_on_meta(spec: ModelSpec, source, filename: str, untrusted: bool = False, operations=None) -> SVDModel:
    """The model on the meta device (nothing allocated), checked against the file before any weight is read: its
    parameter count is bounded (`MAX_PARAMETERS`) and the file must hold at least the required values. With
    `untrusted` (a spec from the file's metadata), a spec that cannot be built is a CheckpointError too."""
    if untrusted and min_tensors(spec) > len(source.shapes()):
        u, v, c = spec.unet, spec.vae, spec.clip
        raise CheckpointError(
            f"{filename}: the model spec in metadata {SPEC_METADATA_KEY!r} needs at least {min_tensors(spec):,} "
            f"tensors (unet.channel_mult={list(u.channel_mult)}, unet.num_res_blocks={u.num_res_blocks}, "
            f"vae.ch_mult={list(v.ch_mult)}, vae.num_res_blocks={v.num_res_blocks}, clip.layers={c.layers}, "
            f"clip.text_layers={c.text_layers}) but the file holds {len(source.shapes()):,}: the spec does not "
            f"match the weights")
    try:
        with torch.device("meta"):
            model = SVDModel(spec, operations)
    except Exception as exc:  # noqa: BLE001 - any failure to build a file's own spec is that file's error
        if not untrusted:
            raise
        raise CheckpointError(f"{filename}: the model spec in metadata {SPEC_METADATA_KEY!r} cannot be built: "
                              f"{exc}") from None
    optional = optional_keys(spec)
    total = sum(t.numel() for t in model.state_dict().values())
    required = sum(t.numel() for k, t in model.state_dict().items() if not k.startswith(optional))
    held = sum(math.prod(s) for s in source.shapes().values())
    if total > MAX_PARAMETERS:
        raise CheckpointError(f"{filename}: the model spec {spec.name!r} describes {total / 1e9:.1f} B parameters, "
                              f"more than the {MAX_PARAMETERS / 1e9:.0f} B this loader accepts")
    if required > held:
        raise CheckpointError(f"{filename}: the model spec {spec.name!r} needs {required:,} weight values but the "
                              f"file holds {held:,}: the file does not match the spec")
    return model


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
         variant: "str | ModelSpec | None" = None, allow_pickle: bool = False, strict: bool = False,
         operations=None) -> SVDModel:
    """Load a released or self-trained checkpoint (`.safetensors`, or a diffusers folder) into an `SVDModel`.
    `operations`: the layer namespace (`SVDModel`; e.g. `svd_core.ops.cast` before `ops.store_fp8`)."""
    path = Path(path)
    if path.is_dir():
        return load_diffusers(path, device=device, dtype=dtype, operations=operations)
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
    model = build_on_meta(spec, source, path.name, untrusted=how == SPEC_FROM_METADATA, operations=operations)
    return assign_weights(model, source, report, device=device, dtype=dtype, strict=strict)


def _diffusers_part(folder: Path, part: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """One part of a diffusers folder: its config.json (strict JSON) and its safetensors weights (memory-mapped)."""
    sub = folder / part
    config_path = sub / "config.json"
    if not config_path.exists():
        raise CheckpointError(f"{folder}: not a diffusers SVD folder ({part}/config.json missing); expected "
                              f"unet/, vae/ and image_encoder/ of a StableVideoDiffusionPipeline")
    weights = next((sub / n for n in WEIGHT_NAMES if (sub / n).exists()), None)
    if weights is None:
        raise CheckpointError(f"{sub}: no .safetensors weights (looked for {', '.join(WEIGHT_NAMES)}); "
                              f"pickled .bin weights are not loaded")
    try:
        config = bounded_json(config_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{config_path}: unreadable config ({exc})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object, found {kind_of(config)}")
    reader = SafetensorsFile(weights)
    return config, {k: reader.tensor(k) for k in reader.entries}


def load_diffusers(folder: "str | os.PathLike", device="cpu", dtype: torch.dtype | None = None,
                   operations=None) -> SVDModel:
    """Map a diffusers SVD pipeline folder onto the released layout and load it (`svd_core.diffusers_io`; unused
    parts reported absent); `operations` as in `load`."""
    folder = Path(folder)
    (unet_cfg, unet_sd), (vae_cfg, vae_sd), (clip_cfg, clip_sd) = (_diffusers_part(folder, p) for p in PARTS)
    try:
        spec = spec_from_configs(unet_cfg, vae_cfg, clip_cfg)
        source = TensorDict(sgm_tensors(spec, unet_sd, vae_sd, clip_sd))
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        detail = f"config field {exc} missing" if isinstance(exc, KeyError) else str(exc)
        raise CheckpointError(f"{folder}: {detail}") from None
    report = LoadReport(source=str(folder), variant=spec.name, detected_from="diffusers folder configs",
                        file_dtypes=dict(source.dtypes()))
    with torch.device("meta"):
        model = SVDModel(spec, operations)
    return assign_weights(model, source, report, device=device, dtype=dtype)


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
