"""Training nodes (paper App. D): dataset, model to train, settings, train (progress, Cancel saves a resumable
state, loss curve), save checkpoint / LoRA, validation sampler.

Thin wrappers over `svd_core.training.api`: the same code `python -m svd_core train CONFIG` runs. The model to train
is always a private copy of the loader's model (the shared, cached checkpoint is never changed). Runs live in
output/svd_training/<run_name>/ (resumable state, loss curve, samples); the latent / CLIP cache of each dataset in
output/svd_training/cache/, shared by every run on the same data and encoders."""
from __future__ import annotations

import dataclasses
import json
import os

import comfy.model_management as mm
import folder_paths
from comfy_api.latest import io

from ..nodes._comfy import (IF_EXISTS, PREFIX, Progress, SVDModel, TrainDataset, Trained, TrainModel, TrainSettings,
                            as_loaded, bad_input, category, check_inputs, check_inside, frames_to_image, name_error,
                            new_file, node_path, path_error, plain_name)

CATEGORY = category("training")
TARGETS = {"as loaded": None, "interpolation (from SVD)": "interpolation", "multi-view (from SVD)": "multiview",
           "text-to-video (from SVD)": "text2video"}
MODE_CHOICES = ("preset", "lora", "temporal", "full", "time_embed", "spatial")
TRAINED_TOOLTIP = "The finished (or resumed) training run: its trained weights, EMA, LoRA and data."


def _run_root() -> str:
    return os.path.join(folder_paths.get_output_directory(), "svd_training")


# ------------------------------------------------------------------------------------------------------ dataset


class Dataset(io.ComfyNode):
    ID = PREFIX + "TrainDataset"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=cls.ID, display_name="Training Dataset", category=CATEGORY,
            description=("Training clips from a curation manifest (.parquet, e.g. the path Curation: Write Dataset "
                         "outputs) or a folder of video clips. Each clip keeps its real fps and motion score; they "
                         "become the fps and motion-bucket micro-conditioning (App. D)."),
            inputs=[
                io.String.Input("source", default="svd_train_clips",
                                tooltip="Manifest (.parquet) or clip folder, relative to ComfyUI's input folder "
                                        "(looked up there first) or its output folder."),
                io.Int.Input("max_windows_per_clip", default=0, min=0, max=100000,
                             tooltip="Training windows taken from each clip (0 = every non-overlapping window)."),
            ],
            outputs=[TrainDataset.Output(display_name="dataset", tooltip="The clips with fps and motion scores.")],
        )

    @classmethod
    def validate_inputs(cls, source, max_windows_per_clip):
        return path_error(cls.ID, "source", source, ("input", "output")) or \
            check_inputs(cls, max_windows_per_clip=max_windows_per_clip)

    @classmethod
    def execute(cls, source, max_windows_per_clip=0):
        from svd_core.training.data import DataError, load_records

        path = node_path(cls.ID, "source", source, ("input", "output"))
        if not os.path.exists(path):
            raise bad_input(cls.ID, "source", f"{source!r} is neither a manifest nor a folder in input/ or output/")
        bar = Progress(1)
        try:
            with bar.stopping():
                records = load_records(path, bar.cancel)
        except (DataError, ValueError) as exc:
            raise bad_input(cls.ID, "source", str(exc)) from exc
        for r in records:  # a manifest's clips (or links in a clip folder) stay in input/ or output/ too
            check_inside(cls.ID, "source", r.path, ("input", "output"), what="a clip it lists")
        return io.NodeOutput({"source": path, "records": records, "max_per_clip": int(max_windows_per_clip)})


# ------------------------------------------------------------------------------------------------------ model


class ModelToTrain(io.ComfyNode):
    ID = PREFIX + "TrainModel"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=cls.ID, display_name="Model to Train", category=CATEGORY,
            description=("Picks the model a training run starts from: the loader's model as it is, or a new "
                         "generator initialised from it (interpolation, multi-view, text-to-video: shared weights "
                         "copied, new inputs zero). The Train node trains a private copy; the loaded checkpoint is "
                         "never changed. A model with LoRAs from SVD LoRA Loader trains with them merged."),
            inputs=[
                SVDModel.Input("svd_model", tooltip="The model from SVD Checkpoint Loader (or a LoRA Loader)."),
                io.Combo.Input("target", options=list(TARGETS), default="as loaded",
                               tooltip="Train the model as loaded, or a new variant initialised from it (the "
                                       "interpolation preset also converts a loaded SVD model by itself, App. D.5)."),
            ],
            outputs=[TrainModel.Output(display_name="train_model", tooltip="What the Train node copies and trains.")],
        )

    @classmethod
    def validate_inputs(cls, target):
        return check_inputs(cls, target=target)

    @classmethod
    def execute(cls, svd_model, target="as loaded"):
        return io.NodeOutput({"source": svd_model, "target": TARGETS[target], "name": svd_model.name})


# ------------------------------------------------------------------------------------------------------ settings


class Settings(io.ComfyNode):
    ID = PREFIX + "TrainSettings"

    @classmethod
    def define_schema(cls):
        from svd_core.training.config import PRESETS

        return io.Schema(
            node_id=cls.ID, display_name="Training Settings", category=CATEGORY,
            description=("A training stage of the paper (App. D) and its values - noise P_mean / P_std, learning "
                         "rate, frames, size, mode - with overrides. 0 keeps the preset's value."),
            inputs=[
                io.Combo.Input("preset", options=list(PRESETS), default="img2vid",
                               tooltip="; ".join(f"{p.name}: {p.description}" for p in PRESETS.values())),
                io.Combo.Input("mode", options=list(MODE_CHOICES), default="preset",
                               tooltip="What trains: LoRA in the temporal attention, temporal layers only, the "
                                       "whole UNet, the time embedding only (Stage I warm-up) or the image "
                                       "model's layers only (Stage I image finetune) (preset: the preset's mode)."),
                io.Int.Input("steps", default=1000, min=1, max=10_000_000, tooltip="Optimiser steps."),
                io.Float.Input("learning_rate", default=0.0, min=0.0, max=1.0, step=1e-6, round=1e-7,
                               tooltip="AdamW learning rate (0 = the preset's: 1e-4 pretraining / LoRA / "
                                       "interpolation, 3e-5 finetunes, 1e-5 multi-view)."),
                io.Int.Input("batch_size", default=1, min=1, max=4096,
                             tooltip="Videos per micro-batch (global, split over processes)."),
                io.Int.Input("grad_accum", default=1, min=1, max=4096,
                             tooltip="Micro-batches accumulated per optimiser step."),
                io.Int.Input("num_frames", default=0, min=0, max=128, tooltip="Frames per video (0 = preset)."),
                io.Int.Input("width", default=0, min=0, max=4096, step=64, tooltip="Training width (0 = preset)."),
                io.Int.Input("height", default=0, min=0, max=4096, step=64, tooltip="Training height (0 = preset)."),
                io.Int.Input("lora_rank", default=16, min=1, max=1024, tooltip="LoRA rank (paper: 16)."),
                io.Float.Input("ema_decay", default=0.9999, min=0.0, max=0.999999, step=0.0001, round=0.000001,
                               tooltip="EMA decay of the trained weights (paper 0.9999); the EMA is saved too."),
                io.Combo.Input("precision", options=["fp32", "bf16"], default="fp32",
                               tooltip="bf16 autocast (faster on recent GPUs) or full fp32."),
                io.Boolean.Input("gradient_checkpointing", default=False,
                                 tooltip="Recompute activations in backward: much less memory, ~30% slower."),
                io.Int.Input("training_seed", default=0, min=0, max=2**31 - 1,
                             tooltip="Seed of the data order, noise levels, noise, dropout and the LoRA's init."),
                io.String.Input("overrides", default="{}", multiline=True,
                                tooltip='Any other setting as JSON, e.g. {"p_mean": 1.0, "cond_dropout": 0.1, '
                                        '"warmup_steps": 50, "target_fps": 7, "motion_scale": 32}.'),
            ],
            outputs=[TrainSettings.Output(display_name="settings", tooltip="The resolved training settings.")],
        )

    @classmethod
    def validate_inputs(cls, preset, mode, steps, learning_rate, batch_size, grad_accum, num_frames, width, height,
                        lora_rank, ema_decay, precision, overrides):
        try:
            _overrides(cls.ID, overrides)
        except ValueError as exc:
            return str(exc)
        return check_inputs(cls, preset=preset, mode=mode, steps=steps, learning_rate=learning_rate,
                            batch_size=batch_size, grad_accum=grad_accum, num_frames=num_frames, width=width,
                            height=height, lora_rank=lora_rank, ema_decay=ema_decay, precision=precision)

    @classmethod
    def execute(cls, preset, mode, steps, learning_rate, batch_size, grad_accum, num_frames, width, height,
                lora_rank, ema_decay, precision, gradient_checkpointing, training_seed, overrides="{}"):
        from svd_core.training.config import ConfigError, TrainConfig

        extra = _overrides(cls.ID, overrides)
        values = dict(steps=steps, batch_size=batch_size, grad_accum=grad_accum, lora_rank=lora_rank,
                      ema_decay=ema_decay, precision=precision, gradient_checkpointing=gradient_checkpointing,
                      seed=training_seed)
        if mode != "preset":
            values["mode"] = mode
        for key, v in (("lr", learning_rate), ("num_frames", num_frames), ("width", width), ("height", height)):
            if v:
                values[key] = v
        values.update(extra)
        try:
            cfg = TrainConfig.from_preset(preset, **values)
        except ConfigError as exc:
            raise bad_input(cls.ID, "overrides" if any(k in str(exc) for k in extra) else "preset", str(exc)) from None
        return io.NodeOutput(cfg)


def _overrides(node_id: str, text) -> dict:
    """The Settings node's JSON overrides as a dict (None: a linked input, known at run time: {})."""
    try:
        extra = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        raise bad_input(node_id, "overrides", f"not valid JSON ({exc})") from None
    if not isinstance(extra, dict):
        raise bad_input(node_id, "overrides", "must be a JSON object like {\"p_mean\": 1.0}")
    return extra


# ------------------------------------------------------------------------------------------------------ train


class Train(io.ComfyNode):
    ID = PREFIX + "Train"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=cls.ID, display_name="Train", category=CATEGORY,
            description=("Trains a private copy of the model with the EDM objective (App. D): caches latents and "
                         "CLIP embeddings once, AdamW + warm-up, EMA, validation loss, checkpoints. Progress per "
                         "step; Cancel saves a resumable state, and running the same run_name again resumes."),
            inputs=[
                TrainModel.Input("train_model", tooltip="From Model to Train."),
                TrainDataset.Input("dataset", tooltip="From Training Dataset."),
                TrainSettings.Input("settings", tooltip="From Training Settings."),
                io.String.Input("run_name", default="svd_run",
                                tooltip="Folder in output/svd_training/ for state, loss curve and samples (a plain "
                                        "name)."),
                io.Boolean.Input("resume", default=True,
                                 tooltip="Continue from the run's last saved state (after a crash or Cancel)."),
                io.Int.Input("checkpoint_every", default=500, min=1, max=1_000_000,
                             tooltip="Save the resumable state every N steps (and at the end)."),
                io.Int.Input("validate_every", default=250, min=0, max=1_000_000,
                             tooltip="Validation loss every N steps (0 = never)."),
                io.Int.Input("sample_steps", default=0, min=0, max=200,
                             tooltip="Sampling steps of the validation samples saved at each validation "
                                     "(0 = no samples)."),
            ],
            outputs=[
                Trained.Output(display_name="trained", tooltip=TRAINED_TOOLTIP),
                SVDModel.Output(display_name="svd_model",
                                tooltip="The trained model (LoRA merged), for the generation nodes."),
                io.Image.Output(display_name="loss_curve", tooltip="Training and validation loss per step."),
                io.String.Output(display_name="report", tooltip="Steps, losses, timings and written files."),
            ],
        )

    @classmethod
    def validate_inputs(cls, run_name, checkpoint_every, validate_every, sample_steps):
        return name_error(cls.ID, "run_name", run_name) or check_inputs(
            cls, checkpoint_every=checkpoint_every, validate_every=validate_every, sample_steps=sample_steps)

    @classmethod
    def execute(cls, train_model, dataset, settings, run_name, resume=True, checkpoint_every=500,
                validate_every=250, sample_steps=0):
        import torch

        from svd_core.training import api

        plain_name(cls.ID, "run_name", run_name)
        run_dir = os.path.join(_run_root(), run_name)
        check_inside(cls.ID, "run_name", run_dir, "output")  # svd_training/ or the run may be a link
        cfg = dataclasses.replace(settings, checkpoint_every=checkpoint_every, validate_every=validate_every,
                                  sample_steps=sample_steps, name=run_name)
        source = train_model["source"]
        bar = Progress(cfg.steps)
        # ComfyUI runs nodes under inference mode: training needs autograd and tensors made outside it
        with torch.inference_mode(False), torch.enable_grad(), bar.stopping():
            try:
                run = api.run(source.patcher.model, cfg, dataset["source"], run_dir, os.path.join(_run_root(), "cache"),
                              target=train_model["target"], loras=getattr(source, "stack", None) or (),
                              records=dataset["records"], max_per_clip=dataset["max_per_clip"], resume=resume,
                              device=mm.get_torch_device(), progress=bar, cancel=bar.cancel)
            except api.RunInputError as exc:
                raise bad_input(cls.ID, exc.what, str(exc)) from None
        image = torch.from_numpy(run.loss_curve).float().div(255.0)[None]  # 1 h w 3
        return io.NodeOutput(run, as_loaded(run.model, f"{train_model['name']} ({run_name})"), image, run.report)


# ------------------------------------------------------------------------------------------------------ outputs


IF_EXISTS_TOOLTIP = ("When the file already exists: 'new name' keeps it and writes name_00001.safetensors, 'error' "
                     "stops, 'overwrite' replaces it.")


def _validate_save(cls, filename, if_exists):
    return name_error(cls.ID, "filename", filename, ".safetensors") or check_inputs(cls, if_exists=if_exists)


class SaveCheckpoint(io.ComfyNode):
    ID = PREFIX + "SaveTrainedCheckpoint"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=cls.ID, display_name="Save Trained Checkpoint", category=CATEGORY,
            description=("Writes the trained model to models/checkpoints (atomically, spec in the metadata), where "
                         "SVD Checkpoint Loader finds it."),
            inputs=[
                Trained.Input("trained", tooltip=TRAINED_TOOLTIP),
                io.String.Input("filename", default="svd_finetune.safetensors",
                                tooltip="File name in models/checkpoints."),
                io.Combo.Input("if_exists", options=list(IF_EXISTS), default="new name",
                               tooltip=IF_EXISTS_TOOLTIP),
                io.Boolean.Input("use_ema", default=True, tooltip="Save the EMA weights (paper) or the last ones."),
                io.Combo.Input("dtype", options=["float32", "float16", "bfloat16"], default="float16",
                               tooltip="Stored precision (float16 halves the file)."),
            ],
            outputs=[io.String.Output(display_name="path", tooltip="The written checkpoint.")],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, filename, if_exists):
        return _validate_save(cls, filename, if_exists)

    @classmethod
    def execute(cls, trained, filename, if_exists="new name", use_ema=True, dtype="float16"):
        import torch

        plain_name(cls.ID, "filename", filename, ".safetensors")
        if trained.trainer.cfg.mode == "lora":
            raise bad_input(cls.ID, "trained", "this run trained a LoRA; save it with Save Trained LoRA")
        Progress(1)
        path = new_file(cls.ID, "filename", "checkpoints", filename, if_exists)
        trained.trainer.save_checkpoint(path, use_ema=use_ema, dtype=getattr(torch, dtype))
        return io.NodeOutput(path, ui={"text": [path]})


class SaveLoRA(io.ComfyNode):
    ID = PREFIX + "SaveTrainedLoRA"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=cls.ID, display_name="Save Trained LoRA", category=CATEGORY,
            description=("Writes the trained camera-motion LoRA to models/loras in the pack's LoRA format "
                         "(svd_core/LORA_FORMAT.md), where SVD LoRA Loader finds it."),
            inputs=[
                Trained.Input("trained", tooltip=TRAINED_TOOLTIP),
                io.String.Input("filename", default="camera_motion.safetensors", tooltip="File name in models/loras."),
                io.Combo.Input("if_exists", options=list(IF_EXISTS), default="new name",
                               tooltip=IF_EXISTS_TOOLTIP),
                io.Boolean.Input("use_ema", default=False, tooltip="Save the EMA of the LoRA or its last weights."),
                io.String.Input("motion_label", default="", tooltip="What motion it adds (e.g. 'pan right')."),
            ],
            outputs=[io.String.Output(display_name="path", tooltip="The written LoRA.")],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, filename, if_exists):
        return _validate_save(cls, filename, if_exists)

    @classmethod
    def execute(cls, trained, filename, if_exists="new name", use_ema=False, motion_label=""):
        plain_name(cls.ID, "filename", filename, ".safetensors")
        if trained.trainer.lora is None:
            raise bad_input(cls.ID, "trained", f"this run trained mode {trained.trainer.cfg.mode!r}, not a LoRA; "
                                               f"save it with Save Trained Checkpoint")
        Progress(1)
        path = new_file(cls.ID, "filename", "loras", filename, if_exists)
        trained.trainer.save_lora(path, use_ema=use_ema, motion_label=motion_label)
        return io.NodeOutput(path, ui={"text": [path]})


class ValidationSampler(io.ComfyNode):
    ID = PREFIX + "TrainValidationSampler"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=cls.ID, display_name="Training Validation Samples", category=CATEGORY,
            description=("Samples videos from the run's validation clips' first frames with their fps and motion "
                         "(with or without the trained LoRA), to see what the training changed."),
            inputs=[
                Trained.Input("trained", tooltip=TRAINED_TOOLTIP),
                io.Int.Input("steps", default=25, min=1, max=200, tooltip="Sampling steps."),
                io.Int.Input("videos", default=2, min=1, max=64, tooltip="How many validation clips to sample."),
                io.Float.Input("cfg", default=1.0, min=1.0, max=20.0, step=0.1, tooltip="Guidance scale (1 = none)."),
                io.Boolean.Input("use_lora", default=True, tooltip="LoRA runs: sample with the trained LoRA."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=True,
                             tooltip="Sampling seed."),
            ],
            outputs=[io.Image.Output(display_name="frames", tooltip="The sampled frames, video after video.")],
        )

    @classmethod
    def validate_inputs(cls, steps, videos, cfg, seed):
        return check_inputs(cls, steps=steps, videos=videos, cfg=cfg, seed=seed)

    @classmethod
    def execute(cls, trained, steps=25, videos=2, cfg=1.0, use_lora=True, seed=0):
        from svd_core.training.api import validation_samples

        if trained.trainer.cfg.task != "img2vid":
            raise bad_input(cls.ID, "trained", f"validation samples need an image-to-video run; this one is "
                                               f"{trained.trainer.cfg.task}")
        Progress(1)
        frames = validation_samples(trained.trainer, steps=steps, videos=videos, cfg_scale=cfg, use_lora=use_lora,
                                    seed=seed)
        return io.NodeOutput(frames_to_image(frames))


# ------------------------------------------------------------------------------------------------------ Stage I


class Stage1FromSD2(io.ComfyNode):
    ID = PREFIX + "Stage1FromSD2"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=cls.ID, display_name="Stage I: Video Model from SD 2.x", category=CATEGORY,
            description=("Paper Sec. 4.1 / App. D.2: builds the text-to-video base model from a Stable Diffusion "
                         "2.x checkpoint (512-base or 768-v): SD's UNet, autoencoder and OpenCLIP text encoder, "
                         "temporal layers inserted at identity (the video model equals SD frame by frame), EDM "
                         "preconditioning. Writes it to models/checkpoints; train it with the time_embed_warmup "
                         "preset, then image_finetune and the video presets."),
            inputs=[
                io.Combo.Input("ckpt_name", options=folder_paths.get_filename_list("checkpoints"),
                               tooltip="The SD 2.x .safetensors file in models/checkpoints."),
                io.Combo.Input("prediction", options=["auto", "eps", "v"], default="auto",
                               tooltip="What the SD model predicts: eps (SD 2.1 512-base), v (SD 2.1 768-v), or auto "
                                       "(ComfyUI's SD 2.x test); recorded in the written model's spec."),
                io.String.Input("filename", default="svd_stage1_t2v.safetensors",
                                tooltip="File name of the video model in models/checkpoints."),
                io.Boolean.Input("overwrite", default=False,
                                 tooltip="Replace an existing file of that name (off: refuse)."),
            ],
            outputs=[io.String.Output(display_name="path", tooltip="The written video model."),
                     io.String.Output(display_name="report", tooltip="What was loaded, initialised and ignored.")],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, ckpt_name, filename, prediction=None):
        return name_error(cls.ID, "filename", filename, ".safetensors") or path_error(
            cls.ID, "ckpt_name", ckpt_name, "checkpoints", links_out=True) or check_inputs(cls, prediction=prediction)

    @classmethod
    def execute(cls, ckpt_name, prediction="auto", filename="svd_stage1_t2v.safetensors", overwrite=False):
        from svd_core import stage1

        name = plain_name(cls.ID, "filename", filename, ".safetensors")
        src = node_path(cls.ID, "ckpt_name", ckpt_name, "checkpoints", kind="file", links_out=True)
        out = os.path.join(folder_paths.get_folder_paths("checkpoints")[0], name)
        if os.path.realpath(out) == os.path.realpath(src):
            raise bad_input(cls.ID, "filename", f"{name!r} is the SD checkpoint itself; choose another name")
        Progress(1)
        try:
            path, report = stage1.convert_file(src, out, prediction=prediction, overwrite=bool(overwrite))
        except FileExistsError as exc:
            raise bad_input(cls.ID, "filename", f"{exc} (turn on 'overwrite')") from None
        except ValueError as exc:  # not an SD 2.x checkpoint: the message names the key
            raise bad_input(cls.ID, "ckpt_name", str(exc)) from None
        return io.NodeOutput(str(path), report.summary(), ui={"text": [str(path), report.summary()]})


NODES = [Dataset, ModelToTrain, Settings, Train, SaveCheckpoint, SaveLoRA, ValidationSampler, Stage1FromSD2]
