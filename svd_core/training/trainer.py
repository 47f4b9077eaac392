"""The training loop (paper App. D): EDM loss on cached latents, AdamW with linear warm-up, gradient
accumulation, bf16 autocast, EMA, atomic resumable state, validation loss and samples, DDP / FSDP."""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
import types
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..loading import CheckpointError, SafetensorsFile, save_tensors
from ..progress import ProgressFn
from . import modes
from .config import ConfigError, TrainConfig
from .data import CachedDataset, collate, global_batches
from .distributed import DistInfo, all_mean, barrier, wrap
from .ema import EMA, _full
from .objective import NoiseDistribution, drop_conditioning, edm_loss
from .tasks import TASK_BUILDERS, extra_trainable, null_context

STATE_FILE = "last.safetensors"
STATE_VERSION = 1


class Interrupted(RuntimeError):
    """Training stopped by the cancel hook; the resumable state was saved first (`.state_path`)."""

    def __init__(self, message: str, state_path: str):
        super().__init__(message)
        self.state_path = state_path


class ResumeError(ConfigError):
    """A saved training state that cannot be resumed (corrupt, truncated, foreign or from another setup): the message
    names the file, the problem and how to start fresh."""


START_FRESH = ("start fresh with --no-resume (CLI), resume = false (run config) or the Train node's resume input "
               "off, or move the file away")


def read_state(path: Path, params: dict[str, tuple[int, ...]],
               cfg: TrainConfig) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read and check a saved state (`Trainer.save_state`) before anything is restored: a valid safetensors file
    (`loading.SafetensorsFile`), our metadata (version, step, config, loss history), the same mode / task / size as
    `cfg`, a tensor of the right shape for every trained parameter and its EMA, optimizer slots of known parameters,
    and a CPU RNG state. Anything else is one `ResumeError` naming the file and how to start fresh."""
    def bad(problem: str) -> ResumeError:
        return ResumeError(f"cannot resume from {path}: {problem}; {START_FRESH}")

    try:
        source = SafetensorsFile(path)
    except CheckpointError as exc:
        raise bad(f"the state file is damaged ({str(exc).removeprefix(f'{path}: ')})") from None
    except OSError as exc:
        raise bad(f"the state file cannot be read ({exc.strerror or exc})") from None
    raw = source.metadata
    if raw.get("state_version") != str(STATE_VERSION):
        raise bad(f"not a training state of this suite (state_version {raw.get('state_version')!r}, expected "
                  f"{STATE_VERSION!r})")
    meta = {}
    try:
        meta["step"], meta["ema_updates"] = int(raw["step"]), int(raw["ema_updates"])
        meta["config"] = json.loads(raw["config"])
        meta["losses"] = [tuple(float(v) for v in x) for x in json.loads(raw["losses"])]
        meta["val"] = [tuple(float(v) for v in x) for x in json.loads(raw["val"])]
    except (KeyError, ValueError, TypeError, RecursionError) as exc:
        raise bad(f"its metadata is incomplete or malformed ({type(exc).__name__}: {exc})") from None
    if meta["step"] < 0 or meta["ema_updates"] < 0 or not isinstance(meta["config"], dict):
        raise bad("its metadata is malformed (negative step or a config that is not an object)")
    saved = {**TrainConfig().to_dict(), **meta["config"]}
    for key in ("mode", "task", "lora_rank", "lora_ff", "num_frames", "height", "width"):
        if saved[key] != getattr(cfg, key):
            raise ResumeError(f"cannot resume from {path}: it was trained with {key}={saved[key]!r}, this run has "
                              f"{key}={getattr(cfg, key)!r}; use another output folder, match the setting, or "
                              f"{START_FRESH}")
    shapes = source.shapes()
    for prefix in ("param.", "ema."):
        missing = [n for n in params if prefix + n not in shapes]
        if missing:
            raise bad(f"it lacks {prefix}{missing[0]} (and {len(missing) - 1} more): saved for another model or mode")
        wrong = [n for n in params if shapes[prefix + n] != params[n]]
        if wrong:
            raise bad(f"{prefix}{wrong[0]} has shape {list(shapes[prefix + wrong[0]])}, this run's parameter "
                      f"{list(params[wrong[0]])}: saved for another model")
    for key, shape in shapes.items():
        name, _, slot = key[4:].rpartition(".")
        if key.startswith("opt.") and (name not in params or shape != (params[name] if slot != "step" else shape)):
            raise bad(f"optimizer slot {key!r} does not belong to this run's parameters")
    rng = torch.get_rng_state()
    if shapes.get("rng.torch") != tuple(rng.shape) or source.entries["rng.torch"][0] != rng.dtype:
        raise bad("it has no valid CPU random-number state (rng.torch)")
    return meta, {k: source.tensor(k) for k in shapes}


@dataclass
class TrainResult:
    step: int
    losses: list = field(default_factory=list)  # (step, loss)
    val: list = field(default_factory=list)  # (step, validation loss)
    outputs: dict = field(default_factory=dict)  # name -> path
    state_path: str = ""
    seconds: float = 0.0


def item_generator(seed: int, *key) -> torch.Generator:
    """A generator for one training item, from (seed, step, micro-step, position in the global batch): the same
    draws on any number of processes and after a resume."""
    digest = hashlib.sha256("/".join(str(k) for k in (seed,) + key).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up over `warmup_steps`, then constant (reference configs: LambdaLinearScheduler warm-up)."""
    if cfg.warmup_steps <= 0:
        return cfg.lr
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)


class Trainer:
    """Trains a private copy of a model (the caller's model is changed only through `model`: pass a copy)."""

    def __init__(self, model, cfg: TrainConfig, dataset: CachedDataset, train_idx: Sequence[int],
                 val_idx: Sequence[int], out_dir: str | os.PathLike, *, device: torch.device | None = None,
                 dist_info: DistInfo | None = None, lora_init: str = ""):
        cfg.validate()
        self.cfg, self.dataset = cfg, dataset
        self.train_idx, self.val_idx = list(train_idx), list(val_idx)
        if not self.train_idx:
            raise ValueError("no training windows: the dataset is empty after the validation split")
        self.out_dir = Path(out_dir)
        self.info = dist_info or DistInfo()
        if cfg.batch_size % self.info.world:
            raise ValueError(f"batch_size={cfg.batch_size} must be a multiple of the {self.info.world} processes "
                             f"(each process takes batch_size / processes items of the global batch)")
        self.device = device or next(model.parameters()).device
        self.model = model
        model.unet.to(self.device)
        model.conditioner.to(self.device)
        self.module, self.lora, self.handle = modes.prepare(
            model, cfg.mode, lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha, seed=cfg.seed, lora_init=lora_init,
            gradient_checkpointing=cfg.gradient_checkpointing, extra=extra_trainable(model, cfg.task),
            lora_ff=cfg.lora_ff)
        self.forward, self.strategy = wrap(self.module, cfg.strategy, cfg.mode, self.info, self.device)
        self.params = modes.trainable(self.module)
        self.optimizer = torch.optim.AdamW(list(self.params.values()), lr=cfg.lr, betas=tuple(cfg.betas),
                                           weight_decay=cfg.weight_decay)
        self.ema = EMA(self.params, cfg.ema_decay)
        self.noise = NoiseDistribution(cfg.p_mean, cfg.p_std)
        self.build_cond = TASK_BUILDERS[cfg.task]
        self.step = 0
        self.losses: list[tuple[int, float]] = []
        self.val: list[tuple[int, float]] = []
        self.outputs: dict[str, str] = {}
        self.local = cfg.batch_size // self.info.world

    # ------------------------------------------------------------------------------------------------ one step

    @property
    def state_path(self) -> Path:
        return self.out_dir / "state" / STATE_FILE

    def _autocast(self):
        if self.cfg.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def _micro_loss(self, indices: Sequence[int], gens: Sequence[torch.Generator], train: bool = True,
                    sigma: torch.Tensor | None = None, forward=None) -> torch.Tensor:
        """Loss of one micro-batch; each item draws sigma, dropout, cond_aug and noise from its own generator."""
        cfg = self.cfg
        batch = collate([self.dataset[i] for i in indices])
        t = cfg.num_frames
        if sigma is None:
            sigma = torch.cat([self.noise.sample(1, g) for g in gens])  # b
        keep = torch.tensor([float(torch.rand(1, generator=g).item() >= cfg.cond_dropout) if train else 1.0
                             for g in gens])  # b
        cond = self.build_cond(self.model, batch, t, gens, cfg).to(self.device)
        if not bool(keep.all()):  # guidance dropout, every task alike (a text model's null is the "" prompt)
            cond = drop_conditioning(cond, keep, t, null_context(self.model))
        latents = batch["latents"].flatten(0, 1).to(self.device)  # b t c h w -> (b t) c h w
        noise = torch.cat([torch.randn(batch["latents"].shape[1:], generator=g) for g in gens]).to(self.device)
        with self._autocast():
            return edm_loss(forward or self.forward, latents, sigma, noise, cond, t)

    def train_step(self) -> float:
        """One optimiser step over `grad_accum` global micro-batches; returns the mean loss over all processes."""
        cfg, info = self.cfg, self.info
        lr = lr_at(cfg, self.step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        total = 0.0
        for micro in range(cfg.grad_accum):
            batch = global_batches(self.train_idx, cfg.batch_size, self.step * cfg.grad_accum + micro, cfg.seed)
            lo = info.rank * self.local  # this process's shard of the global batch
            mine = batch[lo:lo + self.local]
            gens = [item_generator(cfg.seed, self.step, micro, lo + j) for j in range(len(mine))]
            last = micro == cfg.grad_accum - 1
            sync = self.forward.no_sync() if (self.strategy == "ddp" and not last) else nullcontext()
            with sync:
                loss = self._micro_loss(mine, gens)
                (loss / cfg.grad_accum).backward()
            total += float(loss.detach()) / cfg.grad_accum
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(list(self.params.values()), cfg.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.params)
        self.step += 1
        value = all_mean(total, info, self.device)
        self.losses.append((self.step, value))
        return value

    # ------------------------------------------------------------------------------------------------ validation

    @torch.no_grad()
    def validation_loss(self, n_sigmas: int = 4) -> float:
        """Weighted EDM loss on the validation windows at fixed noise levels (quantiles of the training
        distribution) with fixed noise: the same number for the same weights, comparable across steps."""
        idx = self.val_idx or self.train_idx[: max(1, self.cfg.val_items)]
        sigmas = self.noise.quantiles(n_sigmas)
        was = self.module.unet.training
        self.module.unet.eval()
        total, count = 0.0, 0
        try:
            for i in idx:
                for k, s in enumerate(sigmas):
                    g = item_generator(self.cfg.seed, "val", i, k)
                    total += float(self._micro_loss([i], [g], train=False, sigma=s.view(1),
                                                    forward=self.module.unet))
                    count += 1
        finally:
            self.module.unet.train(was)
        value = total / count
        self.val.append((self.step, value))
        return value

    @torch.no_grad()
    def sample(self, steps: int | None = None, indices: Sequence[int] | None = None, use_lora: bool = True,
               seed: int = 0, cfg_scale: float = 1.0, decode_frames: bool = True) -> torch.Tensor:
        """Videos sampled from validation windows' first frames with their fps / motion: b t 3 H W in [0, 1]
        (or the sampled latents b t c h w with `decode_frames=False`)."""
        from ..guidance import Guidance
        from ..pipeline import decode, image_conditioning, sample

        cfg = self.cfg
        idx = list(indices) if indices is not None else (self.val_idx or self.train_idx)[: max(1, cfg.val_items)]
        batch = collate([self.dataset[i] for i in idx])
        image = batch["images"][:, 0].float() / 255.0  # b 3 H W in [0, 1]
        if cfg.task != "img2vid":
            raise ValueError(f"validation sampling is implemented for img2vid; task {cfg.task!r} trains without it")
        was = self.module.unet.training
        self.module.unet.eval()
        if self.handle is not None:
            self.handle.enabled = use_lora
        try:
            guidance = Guidance("vanilla", cfg_scale, cfg_scale)
            videos = []
            for j in range(len(idx)):  # one video at a time: each has its own fps and motion bucket
                cond = image_conditioning(self.model, image[j:j + 1], num_frames=cfg.num_frames, width=cfg.width,
                                          height=cfg.height, fps=float(batch["fps"][j]),
                                          motion_bucket_id=float(batch["motion_bucket_id"][j]), seed=seed)
                latent = sample(self.model, cond, guidance, steps=steps or cfg.sample_steps or 8, seed=seed + j)
                videos.append(decode(self.model, latent, cfg.num_frames) if decode_frames else
                              latent.reshape(1, cfg.num_frames, *latent.shape[1:]))  # (b t) c h w -> b t c h w
            return torch.cat(videos)
        finally:
            if self.handle is not None:
                self.handle.enabled = True
            self.module.unet.train(was)

    # ------------------------------------------------------------------------------------------------ state

    def _opt_state(self) -> dict[str, torch.Tensor]:
        names = {id(p): n for n, p in self.params.items()}
        out = {}
        for p, st in self.optimizer.state.items():
            for k, v in st.items():
                out[f"opt.{names[id(p)]}.{k}"] = _full(v).detach().cpu() if torch.is_tensor(v) else torch.tensor(v)
        return out

    def save_state(self) -> Path:
        """Atomically write everything a resume needs: weights, optimizer, EMA, RNG, step, loss history."""
        tensors = {f"param.{n}": _full(p).detach().cpu() for n, p in self.params.items()}
        tensors.update({f"ema.{n}": t for n, t in self.ema.full_state().items()})
        tensors.update(self._opt_state())
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available() and self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        meta = {"state_version": str(STATE_VERSION), "step": str(self.step), "ema_updates": str(self.ema.updates),
                "config": self.cfg.to_json(), "losses": json.dumps(self.losses), "val": json.dumps(self.val),
                "world": str(self.info.world)}
        if self.info.is_main:
            save_tensors(tensors, self.state_path, meta)
        barrier(self.info)
        return self.state_path

    @torch.no_grad()
    def resume(self, path: str | os.PathLike | None = None) -> bool:
        """Continue from the saved state (same mode, task and LoRA rank); False when there is none."""
        path = Path(path or self.state_path)
        if not path.is_file():
            return False
        meta, tensors = read_state(path, {n: tuple(p.shape) for n, p in self.params.items()}, self.cfg)
        for n, p in self.params.items():
            _copy_into(p, tensors[f"param.{n}"])
        self.ema.load({n: tensors[f"ema.{n}"] for n in self.params}, meta["ema_updates"])
        names = {n: p for n, p in self.params.items()}
        self.optimizer.state.clear()
        for key, v in tensors.items():
            if not key.startswith("opt."):
                continue
            name, _, slot = key[4:].rpartition(".")
            p = names[name]
            if slot == "step":
                value = v.clone()
            else:
                value = torch.empty_like(p)
                _copy_into(value, v)
            self.optimizer.state[p][slot] = value
        torch.set_rng_state(tensors["rng.torch"])
        if "rng.cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        self.step = meta["step"]
        self.losses, self.val = meta["losses"], meta["val"]
        return True

    # ------------------------------------------------------------------------------------------------ outputs

    def trained_state(self, use_ema: bool = False) -> dict[str, torch.Tensor]:
        """The trained tensors (current or EMA) as whole CPU tensors, names as in the TrainModule."""
        if use_ema:
            return self.ema.full_state()
        return {n: _full(p).detach().cpu() for n, p in self.params.items()}

    def lora_copy(self, use_ema: bool = False):
        """A standalone copy of the trained LoRA (current or EMA weights)."""
        if self.lora is None:
            raise ValueError(f"mode={self.cfg.mode!r} trains no LoRA; save a checkpoint instead")
        state = self.trained_state(use_ema)
        lora = copy.deepcopy(self.lora).cpu()
        lora.load_state_dict({k[len("lora."):]: v for k, v in state.items() if k.startswith("lora.")})
        return lora.requires_grad_(False)

    def model_state(self, use_ema: bool = False) -> dict[str, torch.Tensor]:
        """The whole model's state dict in the released layout with the trained weights (current or EMA)."""
        trained = self.trained_state(use_ema)
        full_names = {id(p): n for n, p in self.model.named_parameters()}
        names = {full_names[id(self.params[n])]: t for n, t in trained.items() if not n.startswith("lora.")}
        out = {}
        for k, v in self.model.state_dict().items():
            out[k] = names[k] if k in names else _full(v).detach().cpu()
        return out

    def save_checkpoint(self, path: str | os.PathLike, use_ema: bool = False, dtype: torch.dtype | None = None) -> Path:
        """The trained model as a safetensors checkpoint the loader nodes load (spec in metadata), atomically."""
        from ..loading import save

        state = self.model_state(use_ema)
        view = types.SimpleNamespace(spec=self.model.spec, state_dict=lambda: state)
        meta = {"svd_suite.training": json.dumps({"step": self.step, "ema": use_ema, "preset": self.cfg.preset,
                                                  "mode": self.cfg.mode, "task": self.cfg.task})}
        if self.info.is_main:
            save(view, path, meta, dtype=dtype)
        barrier(self.info)
        return Path(path)

    def save_lora(self, path: str | os.PathLike, use_ema: bool = False, motion_label: str = "") -> Path:
        """The trained LoRA in the pack's LoRA format (`svd_core/LORA_FORMAT.md`), atomically."""
        from ..lora import save_lora

        lora = self.lora_copy(use_ema)
        if motion_label:
            lora.motion_label = motion_label
        meta = {"training_step": self.step, "ema": use_ema, "preset": self.cfg.preset}
        if self.info.is_main:
            save_lora(lora, path, metadata=meta)
        barrier(self.info)
        return Path(path)

    def export(self, name: str | None = None) -> dict[str, str]:
        """Write the run's outputs into out_dir: the LoRA (mode lora) or checkpoint, and its EMA twin."""
        name = name or self.cfg.name
        out = {}
        for ema in (False, True):
            suffix = "_ema" if ema else ""
            path = self.out_dir / f"{name}_step{self.step}{suffix}.safetensors"
            if self.cfg.mode == "lora":
                self.save_lora(path, ema)
            else:
                self.save_checkpoint(path, ema)
            out["ema" if ema else "weights"] = str(path)
        self.outputs.update(out)
        return out

    def write_loss_curve(self):
        from .plots import loss_curve

        path = self.out_dir / "loss_curve.png"
        rgb = loss_curve(self.losses, self.val, path if self.info.is_main else None,
                         title=f"{self.cfg.name}: {self.cfg.preset} ({self.cfg.mode})")
        self.outputs["loss_curve"] = str(path)
        return rgb

    def write_samples(self, frames: torch.Tensor) -> Path:
        """b t 3 H W -> one PNG grid (a row per video) in out_dir/samples/step_N.png."""
        from PIL import Image

        from ..curation.manifest import atomic_write_bytes
        import io

        grid = frames.permute(0, 3, 1, 4, 2).flatten(2, 3).flatten(0, 1)  # b t c h w -> (b h) (t w) c
        buf = io.BytesIO()
        Image.fromarray((grid.clamp(0, 1) * 255).round().byte().numpy()).save(buf, format="PNG")
        path = self.out_dir / "samples" / f"step_{self.step:06d}.png"
        if self.info.is_main:
            atomic_write_bytes(path, buf.getvalue())
        return path

    # ------------------------------------------------------------------------------------------------ the loop

    def run(self, progress: ProgressFn | None = None,
            cancel: Callable[[], bool] | None = None, log: Callable[[str], None] | None = None) -> TrainResult:
        """Train until `cfg.steps`; validate, checkpoint and sample on schedule; on cancel save the state and raise
        `Interrupted`. Call `resume()` first to continue a crashed or interrupted run."""
        cfg = self.cfg
        t0 = time.time()
        if self.step == 0 and cfg.validate_every:
            v = self.validation_loss()
            if log:
                log(f"step 0: validation loss {v:.4f}")
        while self.step < cfg.steps:
            if cancel is not None and cancel():
                path = self.save_state()
                raise Interrupted(f"training interrupted at step {self.step}/{cfg.steps}; resumable state saved to "
                                  f"{path}", str(path))
            loss = self.train_step()
            if not math.isfinite(loss):
                self.save_state()
                raise FloatingPointError(f"loss became {loss} at step {self.step}; lower lr (now {cfg.lr}) or use fp32")
            if cfg.validate_every and self.step % cfg.validate_every == 0:
                v = self.validation_loss()
                if log:
                    log(f"step {self.step}: validation loss {v:.4f}")
                if cfg.sample_steps and (not cfg.sample_every or self.step % cfg.sample_every == 0):
                    self.write_samples(self.sample())
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.save_state()
            if log and (self.step % 10 == 0 or self.step == cfg.steps):
                log(f"step {self.step}/{cfg.steps} loss {loss:.4f} lr {lr_at(cfg, self.step - 1):.2e} "
                    f"({time.time() - t0:.1f} s)")
            if progress is not None:
                progress(self.step, cfg.steps, "training")  # the loss goes to `log` and `self.losses`
        return TrainResult(self.step, list(self.losses), list(self.val), dict(self.outputs), str(self.state_path),
                           time.time() - t0)

    @torch.no_grad()
    def sync_error(self) -> float:
        """Largest difference between any process's trained weights and rank 0's (0.0: the ranks are in sync)."""
        if not self.info.enabled:
            return 0.0
        import torch.distributed as dist

        worst = 0.0
        for p in self.params.values():
            mine = _full(p).detach().float().clone()
            ref = mine.clone()
            dist.broadcast(ref, 0)
            worst = max(worst, float((mine - ref).abs().max()))
        t = torch.tensor([worst], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def close(self) -> None:
        """Take the LoRA hooks off the model (the trained LoRA stays available through `lora_copy`)."""
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


@torch.no_grad()
def _copy_into(dst: torch.Tensor, src: torch.Tensor) -> None:
    if hasattr(dst, "full_tensor"):  # FSDP shard: re-distribute the whole tensor like the parameter
        from torch.distributed.tensor import distribute_tensor

        dst.copy_(distribute_tensor(src.to(dst.device, dst.dtype), dst.device_mesh, dst.placements))
    else:
        dst.copy_(src.to(dst.device, dst.dtype))
