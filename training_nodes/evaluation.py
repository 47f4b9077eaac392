"""Evaluation nodes: FVD (folders / IMAGE batches), per-video metrics, Elo from votes, comparison grid, and the
voting page served by ComfyUI's own server (`/svd/vote/<study>/`). Each node converts types and makes one
`svd_core.eval` call."""
from __future__ import annotations

import logging
import os

import torch

import comfy.model_management as mm
import folder_paths
from comfy_api.latest import io, ui

from ..nodes._comfy import (PREFIX, NodeInputError, Progress, SVDModel, bad_input, category, check_inputs, check_inside,
                            name_error, node_path, path_error, plain_name, size_error)

CATEGORY = category("evaluation")
# models/svd_eval/: i3d_torchscript.pt, LPIPS weights, open_clip checkpoints for CLIP-S (all user-supplied)
EVAL_FOLDER = "svd_eval"
EVAL_EXTS = {".pt", ".pth", ".safetensors", ".bin", ".jit"}
if EVAL_FOLDER not in folder_paths.folder_names_and_paths:
    folder_paths.folder_names_and_paths[EVAL_FOLDER] = ([os.path.join(folder_paths.models_dir, EVAL_FOLDER)],
                                                       EVAL_EXTS)
NONE = "none"


def _eval_files() -> list[str]:
    return folder_paths.get_filename_list(EVAL_FOLDER)


def _eval_path(node: str, name: str, what: str) -> str:
    try:
        return node_path(node, what, name, EVAL_FOLDER, kind="file", links_out=True)
    except ValueError as exc:
        raise NodeInputError(f"{exc} (found: {', '.join(_eval_files()) or 'nothing'}); put the file there and "
                             f"refresh") from None


def _eval_error(node: str, what: str, value) -> str | None:
    """`validate_inputs` check of a models/svd_eval file input ('none' where it is optional)."""
    return None if value == NONE else path_error(node, what, value, EVAL_FOLDER, links_out=True)


def _folder(node: str, what: str, value: str) -> str:
    """A folder inside ComfyUI's input directory ('.' for input/ itself)."""
    return node_path(node, what, value.strip(), "input", kind="dir", allow_root=True)


def _file(node: str, what: str, value: str) -> str:
    """A file inside ComfyUI's input directory."""
    return node_path(node, what, value.strip(), "input", kind="file")


def _input_error(node: str, what: str, value) -> str | None:
    """`validate_inputs` check of a `_folder` / `_file` input."""
    return path_error(node, what, value.strip() if isinstance(value, str) else value, "input", allow_root=True)


def _model_lines(node: str, models: str) -> dict[str, str]:
    """VotingStudy's 'model=folder' lines as {model: folder value}."""
    dirs = {}
    for line in models.splitlines():
        if line.strip():
            m, sep, d = line.partition("=")
            if not sep:
                raise bad_input(node, "models", f"line {line[:80]!r} is not 'model=folder'")
            dirs[m.strip()] = d.strip()
    return dirs


def _preprocess(protocol: str, num_frames: int):
    from dataclasses import replace

    from svd_core.eval.protocols import get_protocol

    pre = get_protocol(protocol).preprocess
    return replace(pre, num_frames=num_frames) if num_frames > 0 else pre


def _i3d(node: str, name: str):
    from svd_core.eval.features import I3DTorchScript

    return I3DTorchScript(_eval_path(node, name, "i3d_name"), device=mm.get_torch_device())


def _common_fvd_inputs() -> list:
    return [
        io.Combo.Input("i3d_name", options=_eval_files(),
                       tooltip="I3D TorchScript (StyleGAN-V's i3d_torchscript.pt) in models/svd_eval/"),
        io.Combo.Input("protocol", options=["none", "ucf101"], default="none",
                       tooltip="ucf101: the paper's preset (16 frames @ 25 fps, antialiased resize to 240 short side, "
                               "center crop 240x320); none: clips as they are"),
        io.Int.Input("num_frames", default=0, min=0, max=1024,
                     tooltip="frames per clip fed to I3D; 0 keeps the protocol's (ucf101: 16; none: all)"),
    ]


class FVDFolders(io.ComfyNode):
    """FVD between two folders of videos (I3D features; statistics cached under output/svd_eval/fvd_stats)."""

    ID = PREFIX + "FVDFolders"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=cls.ID, display_name="FVD (two folders)", category=CATEGORY,
            description="Frechet video distance between two folders of videos or frame folders.",
            inputs=[
                io.String.Input("folder_a", default="", tooltip="videos of set A: a folder in ComfyUI's input folder"),
                io.String.Input("folder_b", default="", tooltip="videos of set B: a folder in ComfyUI's input folder"),
                *_common_fvd_inputs(),
                io.Int.Input("batch_size", default=8, min=1, max=256, tooltip="clips per I3D forward pass"),
                io.Boolean.Input("cache_stats", default=True,
                                 tooltip="reuse feature statistics of unchanged folders (output/svd_eval/fvd_stats)"),
            ],
            outputs=[io.Float.Output(display_name="fvd", tooltip="FVD (lower: closer sets)"),
                     io.String.Output(display_name="report", tooltip="FVD with its settings, as text")],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, folder_a, folder_b, i3d_name=None, protocol=None, num_frames=None,
                        batch_size=None) -> bool | str:
        return _input_error(cls.ID, "folder_a", folder_a) or _input_error(cls.ID, "folder_b", folder_b) or \
            _eval_error(cls.ID, "i3d_name", i3d_name) or \
            check_inputs(cls, protocol=protocol, num_frames=num_frames, batch_size=batch_size)

    @classmethod
    def execute(cls, folder_a, folder_b, i3d_name, protocol, num_frames, batch_size, cache_stats) -> io.NodeOutput:
        from svd_core.eval.fvd import fvd_folders

        node = cls.ID
        a, b = _folder(node, "folder_a", folder_a), _folder(node, "folder_b", folder_b)
        cache = os.path.join(folder_paths.get_output_directory(), "svd_eval", "fvd_stats") if cache_stats else None
        value = fvd_folders(a, b, _i3d(node, i3d_name), _preprocess(protocol, num_frames), batch_size=batch_size,
                            cache_dir=cache, progress=Progress(1))
        report = f"FVD = {value:.4f}  ({protocol}; {folder_a} vs {folder_b}; {i3d_name})"
        return io.NodeOutput(value, report, ui=ui.PreviewText(report))


class FVDImages(io.ComfyNode):
    """FVD between two IMAGE batches, each holding several videos of `frames_per_video` frames back to back."""

    ID = PREFIX + "FVDImages"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=cls.ID, display_name="FVD (two IMAGE batches)", category=CATEGORY,
            description="Frechet video distance between two sets of clips given as IMAGE batches.",
            inputs=[
                io.Image.Input("images_a", tooltip="set A: videos concatenated along the batch (frames) axis"),
                io.Image.Input("images_b", tooltip="set B: videos concatenated along the batch (frames) axis"),
                io.Int.Input("frames_per_video", default=14, min=1, max=1024,
                             tooltip="length of every clip in both batches (the batch must divide into clips)"),
                *_common_fvd_inputs(),
            ],
            outputs=[io.Float.Output(display_name="fvd", tooltip="FVD (lower: closer sets)"),
                     io.String.Output(display_name="report", tooltip="FVD with its settings, as text")],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, frames_per_video, i3d_name, protocol, num_frames) -> bool | str:
        return _eval_error(cls.ID, "i3d_name", i3d_name) or \
            check_inputs(cls, frames_per_video=frames_per_video, protocol=protocol, num_frames=num_frames)

    @classmethod
    def execute(cls, images_a, images_b, frames_per_video, i3d_name, protocol, num_frames) -> io.NodeOutput:
        from dataclasses import replace

        from svd_core.eval.fvd import fvd_tensors, split_batch

        node = cls.ID
        clips_a, clips_b = split_batch(images_a, frames_per_video), split_batch(images_b, frames_per_video)
        pre = replace(_preprocess(protocol, num_frames), fps=None)  # tensors carry no timestamps
        value = fvd_tensors(clips_a, clips_b, _i3d(node, i3d_name), pre, progress=Progress(1))
        report = f"FVD = {value:.4f}  ({len(clips_a)} vs {len(clips_b)} clips of {frames_per_video} frames; {protocol})"
        return io.NodeOutput(value, report, ui=ui.PreviewText(report))


class UCF101FVD(io.ComfyNode):
    """Zero-shot UCF-101 FVD of a text-to-video model (paper Sec. 4.3 / App. E): generates the class-name-prompted
    samples into output/svd_eval/ucf101/<run_name>/ (resumable: Cancel, then queue again to continue) and scores them
    against the real videos."""

    ID = PREFIX + "UCF101FVD"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=cls.ID, display_name="UCF-101 zero-shot FVD (text-to-video)", category=CATEGORY,
            description="Generates UCF-101 class-name-prompted videos (CFG 7, 16 frames @ 25 fps, 320x576 by "
                        "default, the paper's values) and reports their FVD against the real set; resumable.",
            inputs=[
                SVDModel.Input("svd_model", tooltip="a text-to-video model (variant t2v) from the SVD loader"),
                io.String.Input("real_folder", default="UCF-101",
                                tooltip="real UCF-101 videos (Class/v_Class_gNN_cNN.avi or flat): a folder in "
                                        "ComfyUI's input folder"),
                io.Combo.Input("i3d_name", options=_eval_files(),
                               tooltip="I3D TorchScript (StyleGAN-V's i3d_torchscript.pt) in models/svd_eval/"),
                io.String.Input("run_name", default="ucf101",
                                tooltip="run folder output/svd_eval/ucf101/<run_name>/ (same name and settings: "
                                        "resume; other settings: use another name)"),
                io.Int.Input("num_samples", default=10000, min=0, max=1000000,
                             tooltip="videos in total, in the real set's class proportions (10k, the zero-shot "
                                     "protocol); 0: as many as the real set holds"),
                io.Int.Input("samples_per_class", default=0, min=0, max=10000,
                             tooltip="videos per class instead of num_samples; 0 uses num_samples"),
                io.Float.Input("cfg", default=7.0, min=0.1, max=30.0, step=0.1,
                               tooltip="classifier-free guidance scale on every frame (paper: 7)"),
                io.Int.Input("num_frames", default=16, min=16, max=256, tooltip="frames per video (paper: 16)"),
                io.Int.Input("fps", default=25, min=1, max=60, tooltip="fps conditioning and file rate (paper: 25)"),
                io.Int.Input("width", default=576, min=64, max=4096, step=64, tooltip="sample width (protocol: 576)"),
                io.Int.Input("height", default=320, min=64, max=4096, step=64,
                             tooltip="sample height (protocol: 320)"),
                io.Int.Input("steps", default=0, min=0, max=1000, tooltip="sampling steps; 0: the variant's"),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="video i uses seed + i"),
            ],
            outputs=[io.Float.Output(display_name="fvd", tooltip="FVD of the samples against the real set (lower: "
                                                                 "closer)"),
                     io.String.Output(display_name="report", tooltip="FVD with the protocol and counts, as text")],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, real_folder, run_name, i3d_name=None, num_samples=None, samples_per_class=None, cfg=None,
                        num_frames=None, fps=None, width=None, height=None, steps=None, seed=None) -> bool | str:
        node = cls.ID
        return _input_error(node, "real_folder", real_folder) or name_error(node, "run_name", run_name) or \
            _eval_error(node, "i3d_name", i3d_name) or size_error(node, width=width, height=height) or check_inputs(
                cls, num_samples=num_samples, samples_per_class=samples_per_class, cfg=cfg, num_frames=num_frames,
                fps=fps, width=width, height=height, steps=steps, seed=seed)

    @classmethod
    def execute(cls, svd_model, real_folder, i3d_name, run_name, num_samples, samples_per_class, cfg, num_frames,
                fps, width, height, steps, seed) -> io.NodeOutput:
        from svd_core.eval.ucf101 import UCF101Settings, evaluate_ucf101

        node = cls.ID
        plain_name(node, "run_name", run_name)
        if svd_model.spec.cond_mode != "text":
            raise bad_input(node, "svd_model", f"{svd_model.name} is a {svd_model.spec.name} model; load a "
                                               "text-to-video checkpoint (variant t2v)")
        real = _folder(node, "real_folder", real_folder)
        try:
            settings = UCF101Settings(cfg_scale=cfg, num_frames=num_frames, fps=float(fps), height=height,
                                      width=width, steps=steps or None, seed=seed, model=svd_model.name)
        except ValueError as exc:
            raise NodeInputError(f"{node}: {exc}") from exc
        out = os.path.join(folder_paths.get_output_directory(), "svd_eval", "ucf101", run_name)
        extractor = _i3d(node, i3d_name)
        res = evaluate_ucf101(svd_model.acquire(), real, out, extractor, settings=settings,
                              num_samples=num_samples or None, samples_per_class=samples_per_class or None,
                              device=mm.get_torch_device(), progress=Progress(1))
        report = (f"FVD ({res.protocol}) = {res.fvd:.4f}  ({res.num_generated} generated, {res.generated_now} new; "
                  f"{res.num_real} real; {len(res.classes)} classes; output/svd_eval/ucf101/{run_name})")
        return io.NodeOutput(res.fvd, report, ui=ui.PreviewText(report))


class VideoMetrics(io.ComfyNode):
    """PSNR / SSIM / LPIPS / CLIP-S per frame (or view) between a generated and a reference IMAGE batch."""

    ID = PREFIX + "VideoMetrics"

    @classmethod
    def define_schema(cls):
        files = [NONE] + _eval_files()
        return io.Schema(
            node_id=cls.ID, display_name="Video / multi-view metrics", category=CATEGORY,
            description="Per-frame PSNR, SSIM, LPIPS and CLIP-S against a reference, and their means (paper Fig. 9).",
            inputs=[
                io.Image.Input("images", tooltip="generated frames / views"),
                io.Image.Input("reference", tooltip="ground-truth frames / views, same count and size"),
                io.Combo.Input("lpips_weights", options=files, default=NONE,
                               tooltip="LPIPS weights in models/svd_eval/ (LPIPS state dict or torchvision "
                                       "backbone); none skips LPIPS"),
                io.Combo.Input("lpips_net", options=["alex", "vgg", "squeeze"], default="alex",
                               tooltip="LPIPS backbone the weights belong to"),
                io.Combo.Input("clip_weights", options=files, default=NONE,
                               tooltip="open_clip checkpoint in models/svd_eval/ for CLIP-S; none skips CLIP-S"),
                io.String.Input("clip_model", default="ViT-H-14",
                                tooltip="open_clip model name of clip_weights (e.g. ViT-H-14, ViT-B-32)"),
            ],
            outputs=[io.Float.Output(display_name="psnr", tooltip="mean PSNR in dB (higher is better)"),
                     io.Float.Output(display_name="ssim", tooltip="mean SSIM (higher is better)"),
                     io.Float.Output(display_name="lpips", tooltip="mean LPIPS (lower is better; -1 when skipped)"),
                     io.Float.Output(display_name="clip_s", tooltip="mean CLIP-S (higher is better; -1 when skipped)"),
                     io.String.Output(display_name="table", tooltip="per-frame values and means, as text")],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, lpips_weights, lpips_net, clip_weights, clip_model) -> bool | str:
        if clip_weights not in (None, NONE) and isinstance(clip_model, str) and not clip_model.strip():
            return f"{cls.ID}: input 'clip_model' is empty; name the open_clip model of clip_weights (e.g. ViT-H-14)"
        return _eval_error(cls.ID, "lpips_weights", lpips_weights) or \
            _eval_error(cls.ID, "clip_weights", clip_weights) or check_inputs(cls, lpips_net=lpips_net)

    @classmethod
    def execute(cls, images, reference, lpips_weights, lpips_net, clip_weights, clip_model) -> io.NodeOutput:
        from svd_core.eval.multiview import load_clip, load_lpips, view_metrics

        node = cls.ID
        dev = mm.get_torch_device()
        lp = None if lpips_weights == NONE else load_lpips(_eval_path(node, lpips_weights, "lpips_weights"),
                                                          lpips_net, dev)
        clip = None if clip_weights == NONE else load_clip(clip_model, _eval_path(node, clip_weights,
                                                                                   "clip_weights"), dev)
        mm.throw_exception_if_processing_interrupted()
        try:
            m = view_metrics(images, reference, lp, clip)
        except ValueError as exc:
            raise NodeInputError(f"{node}: inputs 'images' / 'reference': {exc}") from exc
        mean = m.mean
        text = m.format()
        return io.NodeOutput(mean["psnr"], mean["ssim"], mean.get("lpips", -1.0), mean.get("clip_s", -1.0), text,
                             ui=ui.PreviewText(text))


class EloFromVotes(io.ComfyNode):
    """Elo table (App. E.1.2: K = 1, start 1000, bootstrapped over random orderings) from a votes CSV, per axis and
    optionally aggregated over the axes."""

    ID = PREFIX + "EloFromVotes"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=cls.ID, display_name="Elo from votes", category=CATEGORY,
            description="Ratings with intervals per axis from a CSV of pairwise votes (model_a, model_b, winner, axis).",
            inputs=[
                io.String.Input("votes_file", default="votes.csv",
                                tooltip="CSV with columns model_a, model_b, winner (a / b / tie / model name), axis; "
                                        "a file in ComfyUI's input folder"),
                io.Int.Input("orderings", default=1000, min=1, max=100000,
                             tooltip="random vote orderings the final rating is bootstrapped over (paper: 1000)"),
                io.Float.Input("ci", default=0.95, min=0.5, max=0.999, step=0.005,
                               tooltip="width of the percentile interval over orderings"),
                io.Int.Input("ordering_seed", default=0, min=0, max=2**31 - 1,
                             tooltip="seed of the random vote orderings (same seed, same table)"),
                io.Boolean.Input("aggregate", default=False, optional=True,
                                 tooltip="also rate all axes' votes pooled into one 'aggregated' table "
                                         "(paper App. E.1.2)"),
            ],
            outputs=[io.String.Output(display_name="table", tooltip="ranked models, Elo and interval per axis"),
                     io.String.Output(display_name="json", tooltip="the same as JSON")],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, votes_file, orderings=None, ci=None, ordering_seed=None) -> bool | str:
        return _input_error(cls.ID, "votes_file", votes_file) or \
            check_inputs(cls, orderings=orderings, ci=ci, ordering_seed=ordering_seed)

    @classmethod
    def execute(cls, votes_file, orderings, ci, ordering_seed, aggregate=False) -> io.NodeOutput:
        import json

        from svd_core.eval.elo import elo_by_axis, elo_by_axis_and_aggregate, format_tables, read_votes_csv

        path = _file(cls.ID, "votes_file", votes_file)
        rate = elo_by_axis_and_aggregate if aggregate else elo_by_axis
        tables = rate(read_votes_csv(path), num_orderings=orderings, ci=ci, seed=ordering_seed)
        text = format_tables(tables)
        return io.NodeOutput(text, json.dumps({a: t.as_dict() for a, t in tables.items()}), ui=ui.PreviewText(text))


class ComparisonGrid(io.ComfyNode):
    """One image with up to four videos side by side and frames over time, labelled, for a quick visual check."""

    ID = PREFIX + "ComparisonGrid"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=cls.ID, display_name="Comparison grid", category=CATEGORY,
            description="Models side by side (columns), sampled frames over time (rows).",
            inputs=[
                io.Image.Input("images_1", tooltip="frames of model 1"),
                io.Image.Input("images_2", optional=True, tooltip="frames of model 2"),
                io.Image.Input("images_3", optional=True, tooltip="frames of model 3"),
                io.Image.Input("images_4", optional=True, tooltip="frames of model 4"),
                io.String.Input("labels", default="", tooltip="comma-separated column labels (default: model N)"),
                io.Int.Input("num_frames", default=4, min=1, max=64, tooltip="time steps shown, evenly spaced"),
                io.Int.Input("cell_height", default=0, min=0, max=2048,
                             tooltip="height of every cell in pixels; 0 keeps the tallest input"),
                io.Combo.Input("layout", options=["models_as_columns", "models_as_rows"], default="models_as_columns",
                               tooltip="columns: models side by side, time downwards; rows: one film strip per model"),
            ],
            outputs=[io.Image.Output(display_name="grid", tooltip="the grid as a single IMAGE")],
        )

    @classmethod
    def validate_inputs(cls, labels, num_frames, cell_height, layout) -> bool | str:
        if isinstance(labels, str) and len(labels.split(",")) > 4:
            return f"{cls.ID}: input 'labels' has {len(labels.split(','))} comma-separated labels; give at most 4"
        return check_inputs(cls, num_frames=num_frames, cell_height=cell_height, layout=layout)

    @classmethod
    def execute(cls, images_1, labels, num_frames, cell_height, layout, images_2=None, images_3=None,
                images_4=None) -> io.NodeOutput:
        from svd_core.eval.grid import comparison_grid

        videos = [v for v in (images_1, images_2, images_3, images_4) if v is not None]
        names = [s.strip() for s in labels.split(",")] if labels.strip() else []
        grid = comparison_grid([v.cpu() for v in videos], names, num_frames, cell_height or None,
                               models_as_columns=layout == "models_as_columns")
        return io.NodeOutput(grid)


def _study_name(name) -> bool:
    import re

    return isinstance(name, str) and bool(re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*", name))


def _manifest_study(node: str, load_study, path: str):
    """A study from a manifest in input/ whose videos and images lie in input/ too (links followed). The node's
    check: the voting server serves only the study's own files."""
    # one message for a missing file and a file outside input/: the node says nothing about files outside
    outside = bad_input(node, "manifest", "lists a video or image that is missing or outside ComfyUI's input "
                                          "folder; put the study's files in input/, paths relative to the manifest")
    from svd_core.eval.study import MediaOutsideError

    try:
        study = load_study(path)
    except (FileNotFoundError, MediaOutsideError):
        raise outside from None
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
        raise bad_input(node, "manifest", f"not a usable study manifest ({type(exc).__name__}: "
                                          f"{str(exc)[:200]})") from None
    media = [p for it in study.items for p in (it.image, *it.videos.values())]
    media += [p for c in study.checks for p in (c.good, c.bad, c.image)]
    try:
        for p in media:
            if p:
                check_inside(node, "manifest", p, "input")
    except ValueError:
        raise outside from None
    return study


class VotingStudy(io.ComfyNode):
    """Starts (or reopens) a voting study served by this ComfyUI server at /svd/vote/<name>/."""

    ID = PREFIX + "VotingStudy"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=cls.ID, display_name="Voting study (human preference)", category=CATEGORY,
            description="Pairwise blind voting page with attention checks; votes in SQLite; leaderboard with Elo.",
            inputs=[
                io.String.Input("name", default="study", tooltip="study name: the page is /svd/vote/<name>/"),
                io.String.Input("models", multiline=True, default="",
                                tooltip="one 'model=folder' per line (folders of videos matched by file name, "
                                        "in ComfyUI's input folder); or leave empty and give a manifest"),
                io.String.Input("manifest", default="",
                                tooltip="study manifest .json in ComfyUI's input folder (instead of models); its "
                                        "videos and images must be in the input folder too"),
                io.Int.Input("attention_checks", default=4, min=0, max=100,
                             tooltip="degraded-copy attention-check pairs generated (with models)"),
                io.Int.Input("participants", default=10, min=1, max=1000, optional=True,
                             tooltip="participant codes the study holds (a reopened study keeps its codes); "
                                     "each participant opens the page with ?code=THEIR_CODE"),
            ],
            outputs=[io.String.Output(display_name="url", tooltip="path of the voting page on this server"),
                     io.String.Output(display_name="organiser_token",
                                      tooltip="token for the leaderboard and the CSV export (?token=...)"),
                     io.String.Output(display_name="codes", tooltip="participant codes, one per line")],
            is_output_node=True, not_idempotent=True,
        )

    @classmethod
    def validate_inputs(cls, name, models, manifest) -> bool | str:
        node = cls.ID
        if name is not None and not _study_name(name):
            return f"{node}: input 'name': {name!r} must be letters, digits, '_', '-', '.' (not starting with '.')"
        if isinstance(manifest, str) and manifest.strip():
            return _input_error(node, "manifest", manifest) or True
        if isinstance(models, str):
            try:
                lines = _model_lines(node, models)
            except ValueError as exc:
                return str(exc)
            for folder in lines.values():
                error = _input_error(node, "models", folder)
                if error:
                    return error
            if len(lines) < 2:
                return f"{node}: input 'models': give two or more 'model=folder' lines (or a manifest)"
        return True

    @classmethod
    def execute(cls, name, models, manifest, attention_checks, participants=10) -> io.NodeOutput:
        from svd_core.eval.study import load_study, study_from_folders
        from svd_core.eval.voting_server import VotingApp, register_study

        node = cls.ID
        if not _study_name(name):
            raise bad_input(node, "name", f"{name!r} must be letters, digits, '_', '-', '.'")
        out_dir = os.path.join(folder_paths.get_output_directory(), "svd_eval", "votes")
        os.makedirs(out_dir, exist_ok=True)
        if manifest.strip():
            study = _manifest_study(node, load_study, _file(node, "manifest", manifest))
        else:
            dirs = {m: _folder(node, "models", d) for m, d in _model_lines(node, models).items()}
            if len(dirs) < 2:
                raise bad_input(node, "models", "give two or more 'model=folder' lines (or a manifest)")
            for d in dirs.values():  # videos and STEM.txt prompts are read (and served): no links leading out
                for f in os.listdir(d):
                    check_inside(node, "models", os.path.join(d, f), "input",
                                 what=f"{f[:80]!r} in a model folder links to a file that")
            study = study_from_folders(name, dirs, num_checks=attention_checks,
                                       check_dir=os.path.join(out_dir, f"{name}_checks"))
        study.name = name
        app = VotingApp(study, os.path.join(out_dir, f"{name}.sqlite"))
        codes = app.store.ensure_codes(participants)
        url = register_study(name, app)
        text = (f"voting page: {url}?code=PARTICIPANT_CODE  leaderboard: {url}leaderboard?token={app.token}  "
                f"(votes: output/svd_eval/votes/{name}.sqlite)\nparticipant codes: {' '.join(codes)}")
        return io.NodeOutput(url, app.token, "\n".join(codes), ui=ui.PreviewText(text))


class LoadVideoFrames(io.ComfyNode):
    """A video file from the input folder as an IMAGE batch (PyAV), to compare models' clips."""

    ID = PREFIX + "LoadVideoFrames"

    @classmethod
    def define_schema(cls):
        from svd_core.video_io import VIDEO_EXTENSIONS

        root = folder_paths.get_input_directory()
        files = sorted(f for f in os.listdir(root)
                       if f.lower().endswith(VIDEO_EXTENSIONS)) if os.path.isdir(root) else []
        return io.Schema(
            node_id=cls.ID, display_name="Load video frames (evaluation)", category=CATEGORY,
            description="Decode a video of ComfyUI's input folder into IMAGE frames, optionally resampled to an fps.",
            inputs=[
                io.Combo.Input("file", options=files, tooltip="video file in ComfyUI's input folder"),
                io.Int.Input("max_frames", default=0, min=0, max=4096, tooltip="keep the first N frames; 0 keeps all"),
                io.Float.Input("fps", default=0.0, min=0.0, max=240.0, step=0.5,
                               tooltip="resample to this frame rate by timestamps; 0 keeps every decoded frame"),
            ],
            outputs=[io.Image.Output(display_name="images", tooltip="frames (t, h, w, 3) in [0, 1]"),
                     io.Int.Output(display_name="frame_count", tooltip="number of frames returned")],
        )

    @classmethod
    def validate_inputs(cls, file) -> bool | str:
        return path_error(cls.ID, "file", file, "input") or check_inputs(cls, file=file)

    @classmethod
    def execute(cls, file, max_frames, fps) -> io.NodeOutput:
        from svd_core.video_io import read_frames

        path = _file(cls.ID, "file", file)
        frames = read_frames(path, num_frames=max_frames or None, fps=fps or None)  # t h w c uint8
        images = torch.from_numpy(frames).float() / 255.0
        return io.NodeOutput(images, int(images.shape[0]))

    @classmethod
    def fingerprint_inputs(cls, file, max_frames, fps):
        try:
            path = node_path(cls.ID, "file", file, "input", kind="file")
        except ValueError:
            return file
        return os.path.getmtime(path)


def _register_routes() -> None:
    """The voting page's routes on ComfyUI's own server (same handlers as the standalone server)."""
    try:
        from server import PromptServer

        routes = PromptServer.instance.routes
    except (ImportError, AttributeError) as exc:  # not inside a running ComfyUI
        logging.info("[svd] voting routes not registered: %s", exc)
        return
    from svd_core.eval.voting_server import aiohttp_routes

    aiohttp_routes(routes)


_register_routes()

NODES = [LoadVideoFrames, FVDFolders, FVDImages, UCF101FVD, VideoMetrics, EloFromVotes, ComparisonGrid, VotingStudy]
