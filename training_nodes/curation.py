"""Curation nodes (paper Sec. 3, App. C): load videos, detect cuts, clip, score, filter, write dataset, stats.

Thin wrappers: each converts ComfyUI inputs, makes one `svd_core.curation` call with a progress callback and a
cancel hook (ComfyUI's interrupt), and wraps the result. Clips travel between nodes as SVDSUITE_CLIPS:
{"out_dir": dataset folder, "rows": [one dict per clip]}; per-clip results are cached in out_dir/work, so a
re-run after a crash or a cancel redoes nothing already written."""
from __future__ import annotations

import json
import os

import comfy.model_management as mm
import folder_paths
from comfy_api.latest import io

from ..nodes._comfy import (PREFIX, Clips, Cuts, OpenClip, Progress, Videos, bad_input, category, check_inputs,
                            check_inside, name_error, node_path, path_error, plain_name)

CATEGORY = category("curation")
MODEL_FOLDER = "svd_curation"  # models/svd_curation: open_clip / CoCa / aesthetics weights, model-config JSONs

if MODEL_FOLDER not in folder_paths.folder_names_and_paths:
    folder_paths.add_model_folder_path(MODEL_FOLDER, os.path.join(folder_paths.models_dir, MODEL_FOLDER))

CLIPS_TOOLTIP = "Clips of the dataset: their files, the folder they live in and every score computed so far."


def _cfg(clips: dict, **kw):
    from svd_core.curation.config import CurationConfig

    return CurationConfig(out_dir=clips["out_dir"], **kw)


def _model_file(node: str, name: str, value: str) -> str | None:
    if value in ("", "none"):
        return None
    return node_path(node, name, value, MODEL_FOLDER, kind="file", links_out=True)


def _model_files(with_none: bool = True) -> list[str]:
    files = folder_paths.get_filename_list(MODEL_FOLDER)
    return (["none"] if with_none else []) + [f for f in files if not f.endswith(".json")]


class LoadVideos(io.ComfyNode):
    ID = PREFIX + "CurationLoadVideos"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=cls.ID, display_name="Curation: Load Video Folder", category=CATEGORY,
            description="Lists the videos of a folder inside ComfyUI's input folder.",
            inputs=[
                io.String.Input("folder", default="videos",
                                tooltip="Folder of source videos, relative to ComfyUI's input folder ('.' for input/ "
                                        "itself)."),
                io.Boolean.Input("recursive", default=True, tooltip="Also list videos in sub-folders."),
            ],
            outputs=[Videos.Output(display_name="videos", tooltip="The source video paths."),
                     io.Int.Output(display_name="count", tooltip="How many videos were found.")],
        )

    @classmethod
    def validate_inputs(cls, folder):
        return path_error(cls.ID, "folder", folder, "input", allow_root=True) or True

    @classmethod
    def execute(cls, folder, recursive=True):
        from svd_core.video_io import VIDEO_EXTENSIONS, list_videos

        path = node_path(cls.ID, "folder", folder, "input", kind="dir", allow_root=True)
        try:
            videos = list_videos(path, recursive=recursive)
        except FileNotFoundError as exc:
            raise bad_input(cls.ID, "folder", str(exc)) from exc
        if not videos:
            raise bad_input(cls.ID, "folder", f"no videos ({' '.join(VIDEO_EXTENSIONS)}) in {folder!r}")
        for v in videos:  # a link inside the folder must not lead out of input/ either
            check_inside(cls.ID, "folder", v, "input", what="a video in it links to a file that")
        return io.NodeOutput(videos, len(videos))


class DetectCuts(io.ComfyNode):
    ID = PREFIX + "CurationDetectCuts"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=cls.ID, display_name="Curation: Detect Cuts (cascade)", category=CATEGORY,
            description=("Cascaded cut detection (paper App. C): PySceneDetect content detector at the native rate "
                         "for hard cuts, adaptive detectors at a medium and a low rate for dissolves, and a "
                         "brightness threshold for fades to black; cuts are merged."),
            inputs=[
                Videos.Input("videos", tooltip="Source videos from Load Video Folder."),
                io.Float.Input("hard_threshold", default=27.0, min=1.0, max=255.0,
                               tooltip="Content threshold at the native frame rate (hard cuts)."),
                io.Float.Input("mid_fps", default=8.0, min=0.0, max=60.0,
                               tooltip="Frame rate of the second level (0 disables it)."),
                io.Float.Input("mid_threshold", default=2.5, min=1.0, max=50.0,
                               tooltip="Adaptive ratio threshold of the second level."),
                io.Float.Input("slow_fps", default=2.0, min=0.0, max=30.0,
                               tooltip="Frame rate of the third level, for slow dissolves (0 disables it)."),
                io.Float.Input("slow_threshold", default=1.5, min=1.0, max=50.0,
                               tooltip="Adaptive ratio threshold of the third level."),
                io.Float.Input("fade_threshold", default=12.0, min=0.0, max=255.0,
                               tooltip="Mean brightness below which a frame counts as faded out (0 disables)."),
            ],
            outputs=[Cuts.Output(display_name="cuts", tooltip="Merged cuts of every video."),
                     io.String.Output(display_name="cuts_json", tooltip="The cut times (s) per video as JSON.")],
        )

    @classmethod
    def validate_inputs(cls, hard_threshold, mid_fps, mid_threshold, slow_fps, slow_threshold, fade_threshold):
        return check_inputs(cls, hard_threshold=hard_threshold, mid_fps=mid_fps, mid_threshold=mid_threshold,
                            slow_fps=slow_fps, slow_threshold=slow_threshold, fade_threshold=fade_threshold)

    @classmethod
    def execute(cls, videos, hard_threshold=27.0, mid_fps=8.0, mid_threshold=2.5, slow_fps=2.0,
                slow_threshold=1.5, fade_threshold=12.0):
        from svd_core.curation.cuts import cascade_from_thresholds
        from svd_core.curation.stages import detect_many

        cascade = cascade_from_thresholds(hard_threshold, mid_fps, mid_threshold, slow_fps, slow_threshold,
                                          fade_threshold)
        bar = Progress(len(videos))
        with bar.stopping():
            results = detect_many(videos, cascade, bar, bar.cancel)
        text = json.dumps([{"video": r["path"], "fps": r["fps"], "cuts": r["cuts"]} for r in results])
        return io.NodeOutput(results, text)


class ClipVideos(io.ComfyNode):
    ID = PREFIX + "CurationClip"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=cls.ID, display_name="Curation: Clip at Cuts", category=CATEGORY,
            description=("Cuts each video at its cuts, snapped to keyframes, by packet copy (no re-encode) into "
                         "new files; sources are never modified. Too-short clips are dropped."),
            inputs=[
                Cuts.Input("cuts", tooltip="Cuts from Detect Cuts."),
                io.String.Input("dataset_dir", default="svd_curation/dataset",
                                tooltip="Dataset folder (clips, cache, manifest), relative to ComfyUI's output "
                                        "folder."),
                io.Float.Input("min_duration", default=1.0, min=0.0, max=600.0,
                               tooltip="Clips shorter than this many seconds are dropped."),
            ],
            outputs=[Clips.Output(display_name="clips", tooltip=CLIPS_TOOLTIP)],
        )

    @classmethod
    def validate_inputs(cls, dataset_dir, min_duration):
        return path_error(cls.ID, "dataset_dir", dataset_dir, "output") or \
            check_inputs(cls, min_duration=min_duration)

    @classmethod
    def execute(cls, cuts, dataset_dir, min_duration=1.0):
        from svd_core.curation.config import CurationConfig
        from svd_core.curation.stages import clip_many

        out_dir = node_path(cls.ID, "dataset_dir", dataset_dir, "output")
        if os.path.exists(out_dir) and not os.path.isdir(out_dir):
            raise bad_input(cls.ID, "dataset_dir", f"{dataset_dir!r} is a file in the output folder, not a folder")
        cfg = CurationConfig(out_dir=out_dir, min_duration=min_duration)
        bar = Progress(len(cuts))
        with bar.stopping():
            rows = clip_many(cuts, cfg, bar, bar.cancel)
        return io.NodeOutput({"out_dir": out_dir, "rows": rows})


def _annotate(clips: dict, stage) -> dict:
    from svd_core.curation.pipeline import annotate

    bar = Progress(len(clips["rows"]))
    with bar.stopping():
        return {"out_dir": clips["out_dir"], "rows": annotate(clips["rows"], stage, bar, bar.cancel)}


class MotionScore(io.ComfyNode):
    ID = PREFIX + "CurationMotionScore"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=cls.ID, display_name="Curation: Motion Score", category=CATEGORY,
            description="Farneback optical flow at 2 fps on 16 px flow maps, averaged over time and space (App. C).",
            inputs=[Clips.Input("clips", tooltip=CLIPS_TOOLTIP),
                    io.Boolean.Input("fine_pass", default=False,
                                     tooltip="Also compute flow at 128 px (column motion_fine, same units).")],
            outputs=[Clips.Output(display_name="clips", tooltip="The clips with a 'motion' score.")],
        )

    @classmethod
    def execute(cls, clips, fine_pass=False):
        from svd_core.curation.stages import MotionStage

        return io.NodeOutput(_annotate(clips, MotionStage(_cfg(clips, motion_fine=fine_pass))))


class TextScore(io.ComfyNode):
    ID = PREFIX + "CurationTextScore"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=cls.ID, display_name="Curation: Text Area (CRAFT)", category=CATEGORY,
            description=("CRAFT text boxes on the first, middle and last frames; score = box area / frame area "
                         "(max over the three). Uses the packaged craft_mlt_25k weights."),
            inputs=[Clips.Input("clips", tooltip=CLIPS_TOOLTIP),
                    io.Int.Input("canvas_size", default=1280, min=64, max=4096,
                                 tooltip="Longest side CRAFT sees (smaller is faster, misses small text).")],
            outputs=[Clips.Output(display_name="clips", tooltip="The clips with a 'text_area' score.")],
        )

    @classmethod
    def validate_inputs(cls, canvas_size):
        return check_inputs(cls, canvas_size=canvas_size)

    @classmethod
    def execute(cls, clips, canvas_size=1280):
        from svd_core.curation.stages import TextStage

        cfg = _cfg(clips, text=True, craft_canvas=canvas_size, device=str(mm.get_torch_device()))
        return io.NodeOutput(_annotate(clips, TextStage(cfg)))


class LoadOpenClip(io.ComfyNode):
    ID = PREFIX + "CurationLoadOpenCLIP"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=cls.ID, display_name="Curation: open_clip Weights", category=CATEGORY,
            description=("Names an open_clip architecture and its weights file in models/svd_curation (never "
                         "downloaded), for the CLIP Score and Caption nodes."),
            inputs=[io.String.Input("model", default="ViT-L-14",
                                    tooltip="open_clip name (ViT-L-14, coca_ViT-L-14) or a .json config in "
                                            "models/svd_curation."),
                    io.Combo.Input("weights", options=_model_files(False),
                                   tooltip="Weights file in models/svd_curation.")],
            outputs=[OpenClip.Output(display_name="open_clip", tooltip="Model name and weights path.")],
        )

    @classmethod
    def validate_inputs(cls, model, weights):
        json_error = path_error(cls.ID, "model", model, MODEL_FOLDER, links_out=True) \
            if isinstance(model, str) and model.endswith(".json") else None
        return path_error(cls.ID, "weights", weights, MODEL_FOLDER, links_out=True) or json_error or \
            check_inputs(cls, weights=weights)

    @classmethod
    def execute(cls, model, weights):
        path = _model_file(cls.ID, "weights", weights)
        if model.endswith(".json"):
            model = _model_file(cls.ID, "model", model)
        return io.NodeOutput({"model": model, "weights": path})


class ClipScore(io.ComfyNode):
    ID = PREFIX + "CurationCLIPScore"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=cls.ID, display_name="Curation: CLIP Embeddings / Aesthetics / CLIP Score", category=CATEGORY,
            description=("CLIP image embeddings of first/middle/last frames, the LAION aesthetics MLP on them, and "
                         "CLIP text-image similarity to each caption already on the clips."),
            inputs=[Clips.Input("clips", tooltip=CLIPS_TOOLTIP),
                    OpenClip.Input("open_clip", tooltip="CLIP model from open_clip Weights."),
                    io.Combo.Input("aesthetic_weights", options=_model_files(True), default="none",
                                   tooltip="LAION improved-aesthetic-predictor MLP in models/svd_curation.")],
            outputs=[Clips.Output(display_name="clips", tooltip="Clips with clip_embedding, aesthetic, clip_score.")],
        )

    @classmethod
    def validate_inputs(cls, aesthetic_weights):
        if aesthetic_weights in ("", "none"):
            return True
        return path_error(cls.ID, "aesthetic_weights", aesthetic_weights, MODEL_FOLDER, links_out=True) or \
            check_inputs(cls, aesthetic_weights=aesthetic_weights)

    @classmethod
    def execute(cls, clips, open_clip, aesthetic_weights="none"):
        from svd_core.curation.stages import ClipStage

        cfg = _cfg(clips, clip_model=open_clip["model"], clip_weights=open_clip["weights"],
                   aesthetic_weights=_model_file(cls.ID, "aesthetic_weights", aesthetic_weights),
                   device=str(mm.get_torch_device()))
        return io.NodeOutput(_annotate(clips, ClipStage(cfg)))


class Caption(io.ComfyNode):
    ID = PREFIX + "CurationCaption"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=cls.ID, display_name="Curation: CoCa Caption", category=CATEGORY,
            description="Synthetic caption of each clip's middle frame with open_clip CoCa (column caption_coca).",
            inputs=[Clips.Input("clips", tooltip=CLIPS_TOOLTIP),
                    OpenClip.Input("coca", tooltip="A CoCa model from open_clip Weights."),
                    io.Int.Input("max_tokens", default=30, min=4, max=76, tooltip="Longest caption in tokens.")],
            outputs=[Clips.Output(display_name="clips", tooltip="Clips with caption_coca.")],
        )

    @classmethod
    def validate_inputs(cls, max_tokens):
        return check_inputs(cls, max_tokens=max_tokens)

    @classmethod
    def execute(cls, clips, coca, max_tokens=30):
        from svd_core.curation.stages import CaptionStage

        cfg = _cfg(clips, coca_model=coca["model"], coca_weights=coca["weights"], caption_max_len=max_tokens,
                   device=str(mm.get_torch_device()))
        return io.NodeOutput(_annotate(clips, CaptionStage(cfg)))


class Filter(io.ComfyNode):
    ID = PREFIX + "CurationFilter"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=cls.ID, display_name="Curation: Filter", category=CATEGORY,
            description=("Drops clips by a score: the bottom percent (12.5/25/50 in the paper) or absolute bounds; "
                         "preset lvd-f is the paper's LVD-F recipe. Chain several Filter nodes to compose."),
            inputs=[Clips.Input("clips", tooltip=CLIPS_TOOLTIP),
                    io.Combo.Input("preset", options=["custom", "lvd-f"], default="custom",
                                   tooltip="lvd-f: bottom 25% motion, 25% aesthetics, 50% CLIP score, text > 7% "
                                           "or top 25% (ignores the inputs below)."),
                    io.String.Input("column", default="motion", tooltip="Score column (motion, text_area, ...)."),
                    io.Float.Input("percent", default=25.0, min=0.0, max=100.0,
                                   tooltip="Percent dropped (0 = no percentile rule)."),
                    io.Combo.Input("drop", options=["bottom", "top"], default="bottom",
                                   tooltip="Drop the lowest scores (motion, aesthetics) or the highest (text)."),
                    io.Float.Input("min_value", default=-1e9, min=-1e9, max=1e9, step=0.001, round=0.0001,
                                   tooltip="Also drop scores below this."),
                    io.Float.Input("max_value", default=1e9, min=-1e9, max=1e9, step=0.001, round=0.0001,
                                   tooltip="Also drop scores above this.")],
            outputs=[Clips.Output(display_name="clips", tooltip="The clips that passed."),
                     io.String.Output(display_name="report", tooltip="How many clips each filter removed.")],
        )

    @classmethod
    def validate_inputs(cls, preset, column, percent, drop, min_value, max_value):
        if preset == "custom" and isinstance(column, str) and not column.strip():
            return f"{cls.ID}: input 'column' is empty; name a score column (motion, text_area, aesthetic, ...)"
        if isinstance(min_value, (int, float)) and isinstance(max_value, (int, float)) and min_value > max_value:
            return f"{cls.ID}: input 'min_value' = {min_value} is above 'max_value' = {max_value}; no clip would pass"
        return check_inputs(cls, preset=preset, percent=percent, drop=drop, min_value=min_value, max_value=max_value)

    @classmethod
    def execute(cls, clips, preset="custom", column="motion", percent=25.0, drop="bottom", min_value=-1e9,
                max_value=1e9):
        from svd_core.curation.filtering import Filter as F, apply_filters, lvd_f_preset
        from svd_core.curation import CurationError

        Progress(1)
        try:
            filters = lvd_f_preset() if preset == "lvd-f" else [F(
                column, percent=percent or None, keep="high" if drop == "bottom" else "low",
                min_value=None if min_value <= -1e9 else min_value, max_value=None if max_value >= 1e9 else max_value,
                combine="or")]
            kept, report = apply_filters(clips["rows"], filters)
        except CurationError as exc:
            raise bad_input(cls.ID, "column" if preset == "custom" else "preset", str(exc)) from exc
        return io.NodeOutput({"out_dir": clips["out_dir"], "rows": kept}, report.to_text())


class WriteDataset(io.ComfyNode):
    ID = PREFIX + "CurationWriteDataset"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=cls.ID, display_name="Curation: Write Dataset", category=CATEGORY,
            description="Writes the manifest (Parquet, one row per clip with every score and caption) atomically.",
            inputs=[Clips.Input("clips", tooltip=CLIPS_TOOLTIP),
                    io.String.Input("filename", default="manifest.parquet",
                                    tooltip="Manifest file name inside the dataset folder.")],
            outputs=[io.String.Output(display_name="manifest", tooltip="Path of the written manifest.")],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, filename):
        return name_error(cls.ID, "filename", filename, ".parquet") or True

    @classmethod
    def execute(cls, clips, filename="manifest.parquet"):
        from svd_core.curation.manifest import write_manifest

        plain_name(cls.ID, "filename", filename, ".parquet")
        out_dir = check_inside(cls.ID, "clips", clips["out_dir"], "output")
        Progress(1)
        path = write_manifest(clips["rows"], os.path.join(out_dir, filename))
        return io.NodeOutput(path, ui={"text": [path]})


class DatasetStats(io.ComfyNode):
    ID = PREFIX + "CurationDatasetStats"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=cls.ID, display_name="Curation: Dataset Stats", category=CATEGORY,
            description="The paper's Table 1 statistics and a Fig. 2-style histogram of the motion scores.",
            inputs=[Clips.Input("clips", tooltip=CLIPS_TOOLTIP)],
            outputs=[io.String.Output(display_name="stats", tooltip="Clips, mean/total duration, mean frames, "
                                                                    "clips per video."),
                     io.Image.Output(display_name="motion_histogram", tooltip="Histogram of the motion scores.")],
        )

    @classmethod
    def execute(cls, clips):
        import torch

        from svd_core.curation.manifest import format_stats, motion_histogram, table1_stats

        Progress(1)
        rows = clips["rows"]
        png = os.path.join(check_inside(cls.ID, "clips", clips["out_dir"], "output"), "motion_hist.png")
        rgb = motion_histogram(rows, png)  # h w 3 uint8
        image = torch.from_numpy(rgb).float().div(255.0)[None]  # 1 h w 3
        return io.NodeOutput(format_stats(table1_stats(rows)), image)


NODES = [LoadVideos, DetectCuts, ClipVideos, MotionScore, TextScore, LoadOpenClip, ClipScore, Caption, Filter,
         WriteDataset, DatasetStats]
