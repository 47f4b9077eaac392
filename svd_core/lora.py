"""Camera-motion LoRAs (paper Sec. 4.3.1, App. D.4.2): low-rank adapters on the temporal attention projections.

A LoRA adds ``s * (alpha / r) * up @ down`` to the weight ``W`` (out x in) of selected `nn.Linear` layers
(Hu et al. 2021): ``y = x W^T + b + s (alpha/r) (x down^T) up^T``, ``down`` (r x in), ``up`` (out x r), strength ``s``.
Default targets: q, k, v and out of both attentions of every temporal block (`...time_stack.0.attn{1,2}.to_{q,k,v}`,
`...to_out.0`), rank 16 (paper); ``include_ff=True`` adds the temporal feed-forward (`ff_in`, `ff`).

Two ways to apply (both stack several LoRAs additively, each with its own strength):

* **unmerged** (`attach`): a forward hook on each target `nn.Linear` adds the low-rank term to the layer's output.
  Hooks are module-level, so every code path that calls the layer is covered (including the one-token
  cross-attention fast path ``to_out(to_v(context))`` of `attention.py`, where `to_q`/`to_k` are never called).
  The model's weights and state-dict keys are untouched; `handle.enabled` switches the adapters at run time and
  `handle.remove()` takes them off. The LoRA's own parameters (`LoRA.parameters()`) are what a trainer optimises.
* **merged** (`merge`): the low-rank products are added into the weights (faster sampling); `unmerge` copies the
  saved original tensors back, so the weights are restored bit for bit (`torch.equal`).
  `patched_copy` makes a model that shares every tensor with the original except the merged weights (which are new
  tensors), so a shared model is never changed.

`LoRAView(model, stack, merged)` is what the ComfyUI nodes hand to the engine: it behaves as the model
(`.spec`, `.unet`, `.conditioner`, ...) and its `denoise` runs with the adapters (hooks attached for the call and
removed after it, or a merged patched copy), so the shared checkpoint stays clean between runs.

File format (safetensors; see `svd_core/LORA_FORMAT.md`), native naming, one entry per adapted layer, where
``<module>`` is the full sgm module path, e.g. ``model.diffusion_model.input_blocks.1.1.time_stack.0.attn1.to_q``:

* ``<module>.lora_down.weight``  float (r, in_features)
* ``<module>.lora_up.weight``    float (out_features, r)
* ``<module>.alpha``             float32 scalar (shape ``()``): the layer's alpha; scale = alpha / r (absent: alpha = r)
* metadata ``"svd_suite.lora"``: JSON ``{"format": 1, "rank": int, "alpha": float, "target_modules": [suffixes],
  "include_ff": bool, "base_variant": str, "motion_label": str}`` (``"format": "pt"`` is set too).

Import (`load_lora`) also reads diffusers/PEFT files (``unet.`` or ``base_model.model.`` + diffusers module path +
``.lora_A.weight`` / ``.lora_B.weight``, or ``.lora.down/.lora.up``, or attention-processor ``to_q_lora.down``)
and kohya files (``lora_unet_`` + module path with ``_`` for ``.``, sgm or diffusers names, ``.lora_down.weight`` /
``.lora_up.weight`` / ``.alpha``). Alpha comes from the ``.alpha`` tensors, else from diffusers' PEFT config in the
metadata ``"lora_adapter_metadata"`` (``lora_alpha``, ``alpha_pattern``, ``use_rslora``), else alpha = rank (scale 1).
A key naming a layer the model lacks raises `LoRAError` listing those names.
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LoRAError", "LoRA", "LoRALayer", "TEMPORAL_ATTN", "TEMPORAL_FF", "METADATA_KEY", "target_modules",
           "create_lora", "save_lora", "load_lora", "lora_state_dict", "attach", "AdapterHandle", "merge", "unmerge",
           "MergeRecord", "patched_copy", "LoRAView", "Stack"]

METADATA_KEY = "svd_suite.lora"
FORMAT_VERSION = 1
UNET_PREFIX = "model.diffusion_model."
# module suffixes inside a temporal block (`VideoTransformerBlock`, keys `...time_stack.0.*`)
TEMPORAL_ATTN = tuple(f"{a}.{p}" for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v", "to_out.0"))
TEMPORAL_FF = ("ff_in.net.0.proj", "ff_in.net.2", "ff.net.0.proj", "ff.net.2")
_TEMPORAL = re.compile(r"^model\.diffusion_model\..+\.time_stack\.0\.(.+)$")


class LoRAError(ValueError):
    """A LoRA file or stack that does not fit the model: the message names the keys and what was expected."""


# ---------------------------------------------------------------------------------------------- the adapter


class LoRALayer(nn.Module):
    """One adapted `nn.Linear`: down (r, in), up (out, r), alpha; delta W = (alpha / r) up @ down."""

    def __init__(self, down: torch.Tensor, up: torch.Tensor, alpha: float):
        super().__init__()
        if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
            raise LoRAError(f"LoRA layer needs down (r, in) and up (out, r) with the same r; got down "
                            f"{tuple(down.shape)} and up {tuple(up.shape)}")
        self.down = nn.Parameter(down)
        self.up = nn.Parameter(up)
        self.alpha = float(alpha)

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def delta_weight(self, strength: float = 1.0, dtype: torch.dtype | None = None,
                     device: torch.device | None = None) -> torch.Tensor:
        """s (alpha/r) up @ down, (out, in), computed in float32."""
        w = (self.up.float() @ self.down.float()) * (strength * self.scale)
        return w.to(device=device or self.up.device, dtype=dtype or self.up.dtype)

    def delta(self, x: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        """s (alpha/r) (x down^T) up^T: the low-rank term of the layer's output, x (..., in) -> (..., out)."""
        down = self.down.to(device=x.device, dtype=x.dtype)
        up = self.up.to(device=x.device, dtype=x.dtype)
        return F.linear(F.linear(x, down), up) * (strength * self.scale)


def _mkey(path: str) -> str:
    return path.replace(".", "/")  # nn.ModuleDict keys cannot hold dots


class LoRA(nn.Module):
    """A set of `LoRALayer`s keyed by full sgm module path, plus the file metadata."""

    def __init__(self, layers: dict[str, LoRALayer], *, rank: int | None = None, alpha: float | None = None,
                 target_modules: Sequence[str] = TEMPORAL_ATTN, include_ff: bool = False, base_variant: str = "",
                 motion_label: str = "", name: str = "", extra: dict | None = None):
        super().__init__()
        if not layers:
            raise LoRAError("a LoRA needs at least one layer")
        self.layers = nn.ModuleDict({_mkey(p): layer for p, layer in layers.items()})
        ranks = sorted({layer.rank for layer in layers.values()})
        self.rank = int(rank if rank is not None else ranks[-1])
        self.alpha = float(alpha if alpha is not None else self.rank)
        self.target_modules = tuple(target_modules)
        self.include_ff = bool(include_ff)
        self.base_variant = base_variant
        self.motion_label = motion_label
        self.name = name
        self.extra = dict(extra or {})

    @property
    def paths(self) -> list[str]:
        return [k.replace("/", ".") for k in self.layers.keys()]

    def items(self) -> Iterable[tuple[str, LoRALayer]]:
        for k, layer in self.layers.items():
            yield k.replace("/", "."), layer

    def metadata(self) -> dict:
        return {"format": FORMAT_VERSION, "rank": self.rank, "alpha": self.alpha,
                "target_modules": list(self.target_modules), "include_ff": self.include_ff,
                "base_variant": self.base_variant, "motion_label": self.motion_label, **self.extra}

    def __repr__(self) -> str:
        return (f"LoRA({self.name or self.motion_label or 'unnamed'}: {len(self.layers)} layers, rank {self.rank}, "
                f"alpha {self.alpha}, base {self.base_variant or '?'})")


# (LoRA, strength) pairs; several stack additively
Stack = Sequence[tuple[LoRA, float]]


def _unet_root(model: nn.Module) -> nn.Module:
    """The module whose named_modules carry the `model.diffusion_model.` paths (an SVDModel or a view of one)."""
    return model.base if isinstance(model, LoRAView) else model


def target_modules(model: nn.Module, targets: Sequence[str] = TEMPORAL_ATTN) -> dict[str, nn.Linear]:
    """Full path -> `nn.Linear` of every temporal block's layer whose suffix is in `targets`."""
    found = {}
    for path, module in _unet_root(model).named_modules():
        m = _TEMPORAL.match(path)
        if m and m[1] in targets and isinstance(module, nn.Linear):
            found[path] = module
    if not found:
        raise LoRAError(f"the model has no temporal layers matching {list(targets)} (expected "
                        f"'{UNET_PREFIX}...time_stack.0.<suffix>' nn.Linear modules)")
    return found


def create_lora(model: nn.Module, rank: int = 16, alpha: float | None = None, *, include_ff: bool = False,
                targets: Sequence[str] | None = None, motion_label: str = "", seed: int = 0,
                dtype: torch.dtype = torch.float32, device=None) -> LoRA:
    """A fresh trainable LoRA for `model`: down ~ N(0, 1/in) (seeded), up = 0, so it starts as the identity."""
    if not isinstance(rank, int) or rank < 1:
        raise LoRAError(f"rank={rank!r} must be an integer >= 1 (paper: 16)")
    targets = tuple(targets) if targets is not None else TEMPORAL_ATTN + (TEMPORAL_FF if include_ff else ())
    gen = torch.Generator().manual_seed(seed)
    layers = {}
    for path, lin in target_modules(model, targets).items():
        down = torch.randn(rank, lin.in_features, generator=gen) / math.sqrt(lin.in_features)
        up = torch.zeros(lin.out_features, rank)
        dev = device if device is not None else lin.weight.device
        layers[path] = LoRALayer(down.to(dev, dtype), up.to(dev, dtype), alpha if alpha is not None else rank)
    spec = getattr(_unet_root(model), "spec", None)
    return LoRA(layers, rank=rank, alpha=alpha if alpha is not None else rank, target_modules=targets,
                include_ff=include_ff, base_variant=getattr(spec, "name", ""), motion_label=motion_label)


# ---------------------------------------------------------------------------------------------- files


def lora_state_dict(lora: LoRA, naming: str = "native", model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Tensors of `lora` in a naming: "native" (ours), "peft" (diffusers `unet.<path>.lora_A/B.weight`, alpha folded
    into up so scale is 1) or "kohya" (`lora_unet_<diffusers path with _>.lora_down/up.weight` + `.alpha`)."""
    from .convert import unet_layout, unet_sgm_to_diffusers

    if naming not in ("native", "peft", "kohya"):
        raise LoRAError(f"naming={naming!r}; expected 'native', 'peft' or 'kohya'")
    layout = {}
    if naming != "native":
        spec = getattr(_unet_root(model), "spec", None) if model is not None else None
        if spec is None:
            raise LoRAError(f"naming={naming!r} needs the model (its UNet layout maps sgm to diffusers names)")
        layout = unet_layout(spec.unet)
    out = {}
    for path, layer in lora.items():
        down, up = layer.down.detach().float().cpu().contiguous(), layer.up.detach().float().cpu().contiguous()
        if naming == "native":
            out[f"{path}.lora_down.weight"] = down
            out[f"{path}.lora_up.weight"] = up
            out[f"{path}.alpha"] = torch.tensor(layer.alpha, dtype=torch.float32)
            continue
        diff = unet_sgm_to_diffusers(path[len(UNET_PREFIX):] + ".weight", **layout)[:-len(".weight")]
        if naming == "peft":
            out[f"unet.{diff}.lora_A.weight"] = down
            out[f"unet.{diff}.lora_B.weight"] = (up * layer.scale).contiguous()
        else:
            name = "lora_unet_" + diff.replace(".", "_")
            out[f"{name}.lora_down.weight"] = down
            out[f"{name}.lora_up.weight"] = up
            out[f"{name}.alpha"] = torch.tensor(layer.alpha, dtype=torch.float32)
    return out


def save_lora(lora: LoRA, path: "str | os.PathLike", *, naming: str = "native", model: nn.Module | None = None,
              metadata: dict | None = None) -> Path:
    """Write `lora` as safetensors atomically (temp file, then rename), metadata under "svd_suite.lora"."""
    from .loading import save_tensors

    tensors = lora_state_dict(lora, naming, model)
    info = {**lora.metadata(), **(metadata or {})}
    if naming == "peft":  # alpha / r folded into lora_B: the file's layers have scale 1
        info.update(alpha=float(lora.rank), alpha_folded=lora.alpha)
    meta = {"format": "pt", METADATA_KEY: json.dumps(info, sort_keys=True)}
    return save_tensors(tensors, path, meta)


# key suffix -> role; checked in order (longest first)
_ROLE_SUFFIXES = (
    (".lora_down.weight", "down"), (".lora_up.weight", "up"),
    (".lora_A.default.weight", "down"), (".lora_B.default.weight", "up"),
    (".lora_A.weight", "down"), (".lora_B.weight", "up"),
    (".lora.down.weight", "down"), (".lora.up.weight", "up"),
    (".down.weight", "down"), (".up.weight", "up"),  # attention processors: `...processor.to_q_lora.down.weight`
    (".alpha", "alpha"),
)
_PREFIXES = ("base_model.model.", "unet.", UNET_PREFIX, "diffusion_model.", "lora_unet_")
_PROCESSOR = re.compile(r"(^|[._])processor[._]to_(q|k|v|out)_lora$")


def _split_key(key: str) -> tuple[str, str] | None:
    for suffix, role in _ROLE_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], role
    return None


def _name_table(model: nn.Module) -> dict[str, str]:
    """Every name a file may use for a UNet `nn.Linear` (sgm/diffusers, dotted/underscored) -> full sgm path."""
    from .convert import unet_layout, unet_sgm_to_diffusers

    root = _unet_root(model)
    layout = unet_layout(root.spec.unet)
    table: dict[str, str] = {}
    ambiguous: set[str] = set()
    for path, module in root.named_modules():
        if not (path.startswith(UNET_PREFIX) and isinstance(module, nn.Linear)):
            continue
        short = path[len(UNET_PREFIX):]
        names = {short, short.replace(".", "_")}
        try:
            diff = unet_sgm_to_diffusers(short + ".weight", **layout)[:-len(".weight")]
            names |= {diff, diff.replace(".", "_")}
        except KeyError:
            pass
        for n in names:
            if n in table and table[n] != path:
                ambiguous.add(n)
            table[n] = path
    for n in ambiguous:
        del table[n]
    return table


def _module_name(raw: str) -> str:
    """Strip the prefixes files put before the module path; attention-processor names -> the projection's name."""
    name = raw
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if name.startswith(p):
                name, changed = name[len(p):], True
    m = _PROCESSOR.search(name)
    if m:
        proj = "to_out.0" if m[2] == "out" else f"to_{m[2]}"
        sep = "." if "." in name else "_"
        name = name[: m.start()] + (sep if m[1] else "") + (proj if sep == "." else proj.replace(".", "_"))
    return name


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    if not path.is_file():
        raise LoRAError(f"LoRA file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - header errors of any kind
        raise LoRAError(f"{path}: not a readable safetensors LoRA file ({e})") from None
    return tensors, meta


def load_lora(source: "str | os.PathLike | dict", model: nn.Module, *, name: str = "",
              dtype: torch.dtype = torch.float32) -> LoRA:
    """Read a LoRA (native, diffusers/PEFT or kohya naming) for `model`; keys the model lacks raise `LoRAError`."""
    if isinstance(source, dict):
        tensors, meta, where = dict(source), {}, name or "<state dict>"
    else:
        path = Path(source)
        tensors, meta = _read_safetensors(path)
        where, name = str(path), name or path.stem
    info = {}
    if METADATA_KEY in meta:
        try:
            info = json.loads(meta[METADATA_KEY])
        except json.JSONDecodeError as e:
            raise LoRAError(f"{where}: metadata {METADATA_KEY!r} is not JSON ({e})") from None
    peft_cfg = _peft_config(meta, where)
    table = _name_table(model)
    root = _unet_root(model)
    modules = dict(root.named_modules())
    parts: dict[str, dict[str, torch.Tensor]] = {}
    unparsed, unknown = [], []
    for key, t in tensors.items():
        split = _split_key(key)
        if split is None:
            unparsed.append(key)
            continue
        raw, role = split
        target = table.get(_module_name(raw))
        if target is None:
            unknown.append(key)
            continue
        parts.setdefault(target, {})[role] = t
        parts[target]["_name"] = _module_name(raw)
    if unparsed:
        raise LoRAError(f"{where}: {len(unparsed)} key(s) are not LoRA weights (expected '<module>.lora_down.weight', "
                        f"'.lora_up.weight', '.alpha', '.lora_A.weight', '.lora_B.weight'): {unparsed[:10]}")
    if unknown:
        raise LoRAError(f"{where}: {len(unknown)} key(s) target layers this model ({getattr(root.spec, 'name', '?')}) "
                        f"does not have: {unknown[:20]}" + (" ..." if len(unknown) > 20 else ""))
    if not parts:
        raise LoRAError(f"{where}: no LoRA layers in the file")
    default_alpha = info.get("alpha")
    layers = {}
    for path, p in parts.items():
        if "down" not in p or "up" not in p:
            raise LoRAError(f"{where}: layer {path} has {sorted(k for k in p if k != '_name')} but needs both down and "
                            f"up weights")
        down, up = p["down"], p["up"]
        lin = modules[path]
        if down.ndim != 2 or up.ndim != 2:
            raise LoRAError(f"{where}: layer {path} has down {tuple(down.shape)} / up {tuple(up.shape)}; only "
                            f"linear (2-D) LoRA weights are supported")
        if down.shape[1] != lin.in_features or up.shape[0] != lin.out_features or up.shape[1] != down.shape[0]:
            raise LoRAError(f"{where}: layer {path} has down {tuple(down.shape)} and up {tuple(up.shape)}; the model's "
                            f"layer needs down (r, {lin.in_features}) and up ({lin.out_features}, r)")
        rank = down.shape[0]
        if "alpha" in p:
            alpha = float(p["alpha"].float().item())
        elif peft_cfg is not None:
            alpha = _peft_alpha(peft_cfg, p["_name"], rank)
        else:
            alpha = float(rank)  # no alpha anywhere: scale 1 (the diffusers/PEFT default when alpha = r)
        layers[path] = LoRALayer(down.to(dtype).clone(), up.to(dtype).clone(), alpha)
    variant = getattr(root.spec, "name", "")
    base = info.get("base_variant", "")
    if base and variant and base != variant:
        warnings.warn(f"LoRA {where} was trained on {base!r}; applying it to {variant!r}", stacklevel=2)
    suffixes = sorted({_TEMPORAL.match(p)[1] if _TEMPORAL.match(p) else p for p in layers})
    known = {k: info[k] for k in info if k not in ("format", "rank", "alpha", "target_modules", "include_ff",
                                                    "base_variant", "motion_label")}
    return LoRA(layers, rank=info.get("rank"), alpha=default_alpha, target_modules=info.get("target_modules", suffixes),
                include_ff=info.get("include_ff", any(s in TEMPORAL_FF for s in suffixes)), base_variant=base,
                motion_label=info.get("motion_label", ""), name=name, extra=known)


def _peft_config(meta: dict, where: str) -> dict | None:
    """The PEFT `LoraConfig` diffusers writes under "lora_adapter_metadata" (keys maybe prefixed `unet.`)."""
    raw = meta.get("lora_adapter_metadata")
    if not raw:
        return None
    try:
        cfg = json.loads(raw)
    except json.JSONDecodeError as e:
        raise LoRAError(f"{where}: metadata 'lora_adapter_metadata' is not JSON ({e})") from None
    return {k.split(".", 1)[1] if k.startswith("unet.") else k: v for k, v in cfg.items()}


def _peft_alpha(cfg: dict, name: str, rank: int) -> float:
    """PEFT's alpha for module `name` (alpha_pattern, else lora_alpha), as our alpha: scale = alpha / r."""
    alpha = cfg.get("lora_alpha", rank)
    for pattern, value in (cfg.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", name):  # PEFT's own rule for pattern keys
            alpha = value
            break
    alpha = float(alpha)
    if cfg.get("use_rslora"):
        alpha *= math.sqrt(rank)  # rsLoRA scales by alpha / sqrt(r)
    return alpha


# ---------------------------------------------------------------------------------------------- unmerged: hooks


def _check_stack(model: nn.Module, stack: Stack) -> dict[str, nn.Linear]:
    modules = dict(_unet_root(model).named_modules())
    found = {}
    for lora, strength in stack:
        if not isinstance(lora, LoRA):
            raise LoRAError(f"expected (LoRA, strength) pairs, got {type(lora).__name__}")
        if not math.isfinite(float(strength)):
            raise LoRAError(f"strength={strength!r} must be a finite number")
        missing = [p for p in lora.paths if not isinstance(modules.get(p), nn.Linear)]
        if missing:
            raise LoRAError(f"LoRA {lora!r} targets layers this model does not have: {missing[:20]}")
        for p in lora.paths:
            found[p] = modules[p]
    return found


class AdapterHandle:
    """Unmerged adapters attached as forward hooks; `enabled` switches them, `strengths` scales each LoRA."""

    def __init__(self, model: nn.Module, stack: Stack, enabled: bool = True):
        modules = _check_stack(model, stack)
        self.stack = [lora for lora, _ in stack]
        self.strengths = [float(s) for _, s in stack]
        self.enabled = enabled
        self._hooks = []
        per_module: dict[str, list[tuple[int, LoRALayer]]] = {}
        for i, lora in enumerate(self.stack):
            for path, layer in lora.items():
                per_module.setdefault(path, []).append((i, layer))
        for path, entries in per_module.items():
            self._hooks.append(modules[path].register_forward_hook(self._make_hook(entries)))

    def _make_hook(self, entries):
        def hook(_module, inputs, output):
            if not self.enabled:
                return output
            x = inputs[0]
            for i, layer in entries:
                if self.strengths[i] != 0.0:
                    output = output + layer.delta(x, self.strengths[i])
            return output
        return hook

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def __enter__(self) -> "AdapterHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def attach(model: nn.Module, stack: Stack, enabled: bool = True) -> AdapterHandle:
    """Attach a stack of LoRAs unmerged (forward hooks); use as a context manager or call `.remove()`."""
    return AdapterHandle(model, stack, enabled)


# ---------------------------------------------------------------------------------------------- merged


@dataclass
class MergeRecord:
    """The original weight tensors of the merged layers (clones), for a bit-exact `unmerge`."""

    originals: dict[str, torch.Tensor] = field(default_factory=dict)


@torch.no_grad()
def merge(model: nn.Module, stack: Stack) -> MergeRecord:
    """Add s (alpha/r) up @ down of every LoRA into the weights, in place; returns what `unmerge` needs."""
    modules = _check_stack(model, stack)
    record = MergeRecord({p: lin.weight.detach().clone() for p, lin in modules.items()})
    deltas: dict[str, torch.Tensor] = {}
    for lora, strength in stack:
        for path, layer in lora.items():
            w = layer.delta_weight(float(strength), torch.float32, modules[path].weight.device)
            deltas[path] = deltas[path] + w if path in deltas else w
    for path, d in deltas.items():
        weight = modules[path].weight
        weight.copy_((weight.float() + d).to(weight.dtype))
    return record


@torch.no_grad()
def unmerge(model: nn.Module, record: MergeRecord) -> None:
    """Restore the weights saved by `merge`, bit for bit."""
    modules = dict(_unet_root(model).named_modules())
    for path, original in record.originals.items():
        modules[path].weight.copy_(original)
    record.originals.clear()


@torch.no_grad()
def patched_copy(model: nn.Module, stack: Stack) -> nn.Module:
    """A copy of `model` sharing every tensor except the merged weights (new tensors); the original is unchanged."""
    root = _unet_root(model)
    modules = _check_stack(root, stack)
    memo = {}
    for t in list(root.parameters()) + list(root.buffers()):
        memo[id(t)] = t  # shared, not copied
    clone = copy.deepcopy(root, memo)
    clone_modules = dict(clone.named_modules())
    deltas: dict[str, torch.Tensor] = {}
    for lora, strength in stack:
        for path, layer in lora.items():
            w = layer.delta_weight(float(strength), torch.float32, modules[path].weight.device)
            deltas[path] = deltas[path] + w if path in deltas else w
    for path, d in deltas.items():
        lin = clone_modules[path]
        base = modules[path].weight
        lin.weight = nn.Parameter((base.float() + d).to(base.dtype), requires_grad=False)
    return clone


# ---------------------------------------------------------------------------------------------- the view


class LoRAView:
    """The model as the engine sees it, with a LoRA stack applied in `denoise` only (the shared model stays clean).

    merged=False: hooks are attached for each `denoise` call and removed after it (`enabled` switches them).
    merged=True: a `patched_copy` (shares all but the merged weights) built once and used for `denoise`.
    """

    def __init__(self, model: nn.Module, stack: Stack, merged: bool = False, enabled: bool = True):
        self.base = _unet_root(model)
        prior = list(model.stack) if isinstance(model, LoRAView) else []
        self.stack = prior + [(lora, float(s)) for lora, s in stack]
        _check_stack(self.base, self.stack)
        self.merged, self.enabled = bool(merged), bool(enabled)
        device = next(self.base.unet.parameters()).device
        for lora, _ in self.stack:
            lora.to(device)  # adapters live where the UNet runs (no host-device copy per call)
        self._copy = patched_copy(self.base, self.stack) if (self.merged and self.enabled and self.stack) else None

    @property
    def active_model(self) -> nn.Module:
        return self._copy if self._copy is not None else self.base

    @property
    def unet(self) -> nn.Module:
        return self.active_model.unet

    @property
    def model(self) -> nn.Module:
        return self.active_model.model

    def __getattr__(self, name):  # spec, conditioner, first_stage_model, ...: the base model's
        if name in ("base", "stack", "merged", "enabled", "_copy"):
            raise AttributeError(name)
        return getattr(self.base, name)

    @contextmanager
    def applied(self):
        """The module to run with the stack in effect, for code that calls the UNet directly."""
        if self._copy is not None or not self.enabled or not self.stack:
            yield self.active_model
            return
        with attach(self.base, self.stack):
            yield self.base

    def denoise(self, x, sigma, cond, num_frames):
        with self.applied() as m:
            return m.denoise(x, sigma, cond, num_frames)
