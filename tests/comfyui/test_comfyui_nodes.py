"""The generation nodes inside a real ComfyUI 0.3.75 over HTTP: registration, validation, interrupt, caching, plugging
into native nodes (LoadImage, SaveAnimatedWEBP, CreateVideo/SaveVideo), video-to-video and SV3D keyframes."""
from __future__ import annotations

import difflib
import json
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

from comfy_harness import media_info

NODE_IDS = {
    "SVDSuite_CheckpointLoader": "svd/loaders",
    "SVDSuite_DiffusersLoader": "svd/loaders",
    "SVDSuite_ImageConditioning": "svd/conditioning",
    "SVDSuite_OrbitConditioning": "svd/conditioning",
    "SVDSuite_OrbitKeyframes": "svd/conditioning",
    "SVDSuite_LinearGuidance": "svd/guidance",
    "SVDSuite_TriangleGuidance": "svd/guidance",
    "SVDSuite_TrapezoidGuidance": "svd/guidance",
    "SVDSuite_RampHoldGuidance": "svd/guidance",
    "SVDSuite_VanillaGuidance": "svd/guidance",
    "SVDSuite_Sampler": "svd/sampling",
    "SVDSuite_Decode": "svd/latent",
    "SVDSuite_Encode": "svd/latent",
}
CKPT = "svd_suite_tiny.safetensors"  # conftest.BASE_MODELS
IMAGE = "svd_suite_test.png"  # conftest.BASE_INPUTS (160x96)


def img2vid(width=64, height=64, frames=4, steps=2, seed=1, decode_t=4, overlap=0, prefix="svd_suite/node_test",
            guidance=("SVDSuite_LinearGuidance", {"min_scale": 1.0, "max_scale": 2.5})) -> dict:
    return {
        "1": {"class_type": "SVDSuite_CheckpointLoader", "inputs": {"ckpt_name": CKPT, "dtype": "auto"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": IMAGE}},
        "3": {"class_type": "SVDSuite_ImageConditioning", "inputs": {
            "svd_model": ["1", 0], "image": ["2", 0], "width": width, "height": height, "num_frames": frames,
            "fps": 7, "motion_bucket_id": 127, "cond_aug": 0.02, "resize_mode": "crop", "seed": 0}},
        "4": {"class_type": guidance[0], "inputs": dict(guidance[1])},
        "5": {"class_type": "SVDSuite_Sampler", "inputs": {
            "svd_model": ["1", 0], "conditioning": ["3", 0], "guidance": ["4", 0], "sampler": "euler",
            "schedule": "karras", "steps": steps, "seed": seed, "denoise": 1.0}},
        "6": {"class_type": "SVDSuite_Decode", "inputs": {
            "svd_model": ["1", 0], "latent": ["5", 0], "decode_t": decode_t, "overlap": overlap,
            "image_decoder": False}},
        "7": {"class_type": "SaveAnimatedWEBP", "inputs": {
            "images": ["6", 0], "filename_prefix": prefix, "fps": 7.0, "lossless": False, "quality": 80,
            "method": "default"}},
    }


def run_ok(comfy, prompt, timeout=180):
    ws = comfy.websocket()
    try:
        prompt_id = comfy.queue(prompt)
        entry, messages = comfy.wait(prompt_id, timeout, ws=ws)
    finally:
        ws.close()
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[:4000]
    return entry, messages


def saved(comfy, entry, node="7", key="images"):
    items = entry["outputs"][node][key]
    assert len(items) == 1
    path = comfy.output_file(items[0])
    assert path.is_file()
    return path


# ----------------------------------------------------------------------------------------------- registration
def test_object_info_lists_every_node_with_tooltips(object_info):
    ours = {k: v for k, v in object_info.items() if k.startswith("SVDSuite_")}
    assert set(NODE_IDS) <= set(ours), sorted(set(NODE_IDS) - set(ours))
    for node_id, category in NODE_IDS.items():
        info = ours[node_id]
        assert info["category"] == category
        assert len(info["description"]) > 20, node_id
        assert info["display_name"] and info["python_module"].startswith("custom_nodes.")
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
        assert info["output"] and all(info["output_tooltips"]), f"{node_id} output without tooltip"
    for info in ours.values():  # the training/curation/eval nodes of the pack follow the same rules
        assert info["category"].startswith("svd/")
    # seeds get ComfyUI's control_after_generate widget
    assert object_info["SVDSuite_Sampler"]["input"]["required"]["seed"][1]["control_after_generate"] is True
    # the loader lists ComfyUI's checkpoints folder
    assert CKPT in object_info["SVDSuite_CheckpointLoader"]["input"]["required"]["ckpt_name"][1]["options"]


def test_node_docs_are_current(comfy):
    """docs/nodes/ is the schemas rendered (tests/comfyui/node_docs.py): a changed node needs its page regenerated.
    The node info is fetched now, with the names of the files other tests left in the server's folders, so file
    lists in combos are recognised as the user's files whatever ran before."""
    from node_docs import DOCS, local_names, render

    pages = render(comfy.get("/object_info", timeout=60), local_names(comfy.base))
    assert sorted(p.name for p in DOCS.glob("*.md")) == sorted(pages)
    stale = [name for name, text in pages.items() if (DOCS / name).read_text() != text]
    diff = "".join(line for name in stale for line in difflib.unified_diff(
        (DOCS / name).read_text().splitlines(True), pages[name].splitlines(True), f"docs/nodes/{name}", "schemas"))
    assert not stale, f"docs/nodes/{stale} out of date: run .venv/bin/python tests/comfyui/node_docs.py\n{diff}"


def test_core_svd_nodes_untouched(object_info):
    """Our ids never collide with core's SVD nodes; core's stay registered next to ours."""
    for core in ("SVD_img2vid_Conditioning", "ImageOnlyCheckpointLoader", "VideoLinearCFGGuidance"):
        assert core in object_info and not object_info[core]["python_module"].startswith("custom_nodes")
    ours = [k for k, v in object_info.items() if v["python_module"] == "custom_nodes.svd_suite"]
    assert ours and all(k.startswith("SVDSuite_") for k in ours), ours


# ----------------------------------------------------------------------------------------------- validation
def _errors(response):
    assert response.status_code == 400, response.text
    return response.json()


def test_invalid_width_fails_validation_naming_node_and_input(comfy):
    body = _errors(comfy.post_prompt(img2vid(width=100)))
    err = body["node_errors"]["3"]
    assert err["class_type"] == "SVDSuite_ImageConditioning"
    text = json.dumps(err["errors"])
    assert "SVDSuite_ImageConditioning" in text and "'width' = 100" in text and "multiple of 64" in text


def test_out_of_range_and_unknown_values_fail_validation(comfy):
    body = _errors(comfy.post_prompt(img2vid(steps=-1)))  # 0 is valid: the loaded variant's steps
    assert body["node_errors"]["5"]["class_type"] == "SVDSuite_Sampler"
    assert "steps" in json.dumps(body["node_errors"]["5"]["errors"])
    prompt = img2vid()
    prompt["1"]["inputs"]["ckpt_name"] = "nope.safetensors"
    body = _errors(comfy.post_prompt(prompt))
    assert body["node_errors"]["1"]["class_type"] == "SVDSuite_CheckpointLoader"
    assert "SVDSuite_CheckpointLoader: input 'ckpt_name' = 'nope.safetensors' is not one of" in \
        json.dumps(body["node_errors"]["1"]["errors"])
    prompt = img2vid(width=0)
    prompt["5"]["inputs"]["sampler"] = "ddim_magic"
    body = _errors(comfy.post_prompt(prompt))
    assert "input 'width' = 0 is below the minimum 64" in json.dumps(body["node_errors"]["3"]["errors"])
    assert "input 'sampler' = 'ddim_magic' is not one of" in json.dumps(body["node_errors"]["5"]["errors"])


def test_bad_guidance_and_keyframe_text_fail_validation(comfy):
    prompt = img2vid(guidance=("SVDSuite_TriangleGuidance", {"min_scale": 1.0, "max_scale": 2.5, "period": "0, x",
                                                              "period_fusing": "max"}))
    body = _errors(comfy.post_prompt(prompt))
    assert body["node_errors"]["4"]["class_type"] == "SVDSuite_TriangleGuidance"
    assert "'period'" in json.dumps(body["node_errors"]["4"]["errors"])
    orbit = {
        "1": {"class_type": "SVDSuite_OrbitKeyframes", "inputs": {"keyframes": "0: 10, 0\nten: 5", "num_frames": 5}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }
    body = _errors(comfy.post_prompt(orbit))
    assert body["node_errors"]["1"]["class_type"] == "SVDSuite_OrbitKeyframes"
    assert "line 2" in json.dumps(body["node_errors"]["1"]["errors"])


# generation inputs whose range svd_core.validation.RULES owns (the CLI's and the Python API's), by input name
RULED_INPUTS = {"motion_bucket_id": "motion_bucket_id", "motion_score": "motion_score", "fps": "fps",
                "cond_aug": "cond_aug", "width": "width", "height": "height", "num_frames": "num_frames",
                "num_views": "num_frames", "decode_t": "decode_t", "overlap": "overlap", "steps": "steps",
                "seed": "seed", "jitter_seed": "seed", "min_scale": "min_scale", "max_scale": "max_scale",
                "elevation": "elevations", "end_elevation": "elevations", "window": "window",
                "clip_frames": "clip_frames"}
GENERATION = ("svd/conditioning", "svd/guidance", "svd/sampling", "svd/latent", "svd/long_video", "svd/video",
              "svd/multiview")


def test_generation_node_ranges_stay_within_the_engine_rules(object_info):
    """A value the CLI / API refuses is refused by the node's schema too (issue 12): every ruled INT / FLOAT input
    of a generation node has its min / max inside the rule's range; 0 below the rule only as a documented
    'use the default' (steps, window, clip_frames, interpolation's auto size, Encode's one video)."""
    from svd_core.validation import RULES

    checked = []
    for node_id, info in object_info.items():
        if not node_id.startswith("SVDSuite_") or info["category"] not in GENERATION:
            continue
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                if name not in RULED_INPUTS or spec[0] not in ("INT", "FLOAT"):
                    continue
                rule, opts, where = RULES[RULED_INPUTS[name]], spec[1], f"{node_id}.{name}"
                if opts["min"] == 0 and rule.minimum and "0 =" in opts["tooltip"]:
                    pass  # 0 is the node's "default" switch, never passed on to the engine
                else:
                    assert opts["min"] >= rule.minimum, f"{where}: min {opts['min']} < {rule.expected()}"
                if rule.maximum is not None:
                    assert opts["max"] <= rule.maximum, f"{where}: max {opts['max']} > {rule.expected()}"
                checked.append(where)
    assert len(checked) >= 40 and "SVDSuite_ImageConditioning.motion_bucket_id" in checked, checked


def test_values_the_cli_refuses_fail_validation(comfy):
    """--motion-bucket 300 and a NaN / infinite angle are refused by the CLI: the nodes refuse them at /prompt."""
    prompt = img2vid()
    prompt["3"]["inputs"]["motion_bucket_id"] = 300
    body = _errors(comfy.post_prompt(prompt))
    text = json.dumps(body["node_errors"]["3"]["errors"])
    assert body["node_errors"]["3"]["class_type"] == "SVDSuite_ImageConditioning"
    assert "motion_bucket_id" in text and "255" in text and "300" in text
    orbit = {
        "1": {"class_type": "SVDSuite_OrbitKeyframes", "inputs": {"keyframes": "0: 10, 0\n4: 10, inf",
                                                                   "num_frames": 5}},
        "2": {"class_type": "SVDSuite_OrbitBuilder", "inputs": {
            "preset": "custom", "num_views": 3, "elevation": 10.0, "amplitude": 10.0, "periods": 1.0,
            "end_elevation": 30.0, "azimuth_jitter": 0.0, "jitter_seed": 0, "elevations": "0, nan, 5",
            "azimuths": "", "radius": 2.0}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
    }
    body = _errors(comfy.post_prompt(orbit))
    assert "line 2: azimuth=inf is impossible" in json.dumps(body["node_errors"]["1"]["errors"])
    assert "elevations[1]=nan is impossible" in json.dumps(body["node_errors"]["2"]["errors"])


def test_runtime_input_error_names_node(comfy):
    """denoise < 1 without a start latent passes schema validation but the node refuses it by name."""
    prompt = img2vid()
    prompt["5"]["inputs"]["denoise"] = 0.5
    ws = comfy.websocket()
    try:
        entry, messages = comfy.wait(comfy.queue(prompt), 120, ws=ws)
    finally:
        ws.close()
    assert entry["status"]["status_str"] == "error"
    errors = [m["data"] for m in messages if m["type"] == "execution_error"]
    assert errors and errors[0]["node_type"] == "SVDSuite_Sampler"
    assert "SVDSuite_Sampler: input 'denoise'" in errors[0]["exception_message"]


# ----------------------------------------------------------------------------------------------- execution
def test_img2vid_frames_plug_into_native_video_nodes_and_model_is_reused(comfy):
    prompt = img2vid(frames=5, decode_t=2, overlap=1, prefix="svd_suite/native")
    prompt["8"] = {"class_type": "CreateVideo", "inputs": {"images": ["6", 0], "fps": 7.0}}
    prompt["9"] = {"class_type": "SaveVideo", "inputs": {"video": ["8", 0], "filename_prefix": "svd_suite/native_vid",
                                                         "format": "mp4", "codec": "h264"}}
    entry, _ = run_ok(comfy, prompt)
    assert media_info(saved(comfy, entry)) == (5, 64, 64)
    video = comfy.output_file(entry["outputs"]["9"]["images"][0])
    assert video.suffix == ".mp4" and media_info(video) == (5, 64, 64)
    # a second run with another seed re-uses the loaded model: ComfyUI reports the loader as cached
    prompt["5"]["inputs"]["seed"] = 2
    entry, messages = run_ok(comfy, prompt)
    cached = [m["data"]["nodes"] for m in messages if m["type"] == "execution_cached"]
    assert cached and "1" in cached[0], messages[:5]
    executed = {m["data"]["node"] for m in messages if m["type"] == "executing" and m["data"]["node"]}
    assert "1" not in executed and "5" in executed


def test_video_to_video_encode_then_partial_denoise(comfy):
    prompt = img2vid(frames=4, prefix="svd_suite/v2v")
    prompt["10"] = {"class_type": "SVDSuite_Encode", "inputs": {"svd_model": ["1", 0], "frames": ["6", 0],
                                                                 "num_frames": 0}}
    prompt["11"] = {"class_type": "SVDSuite_Sampler", "inputs": {
        "svd_model": ["1", 0], "conditioning": ["3", 0], "guidance": ["4", 0], "sampler": "dpmpp_2m",
        "schedule": "exponential", "steps": 2, "seed": 5, "denoise": 0.5, "latent": ["10", 0]}}
    prompt["12"] = {"class_type": "SVDSuite_Decode", "inputs": {"svd_model": ["1", 0], "latent": ["11", 0],
                                                                 "decode_t": 4, "overlap": 0, "image_decoder": False}}
    prompt["13"] = {"class_type": "SaveAnimatedWEBP", "inputs": {
        "images": ["12", 0], "filename_prefix": "svd_suite/v2v_out", "fps": 7.0, "lossless": True, "quality": 80,
        "method": "default"}}
    entry, _ = run_ok(comfy, prompt)
    out = saved(comfy, entry, node="13")
    assert media_info(out) == (4, 64, 64)
    # values: the same svd_core calls on the same checkpoint file, image and seeds in the test process; the lossless
    # WEBP holds ComfyUI's 8-bit frames (255 * x truncated), so float noise may move a value by one step
    start, result = engine_v2v(comfy.base)
    got, expected, start = webp_frames(out), to_uint8(result), to_uint8(start)
    diff = np.abs(got.astype(int) - expected.astype(int))
    assert diff.max() <= 2 and diff.mean() < 0.05, (diff.max(), diff.mean())
    assert np.abs(got.astype(int) - start.astype(int)).mean() > 1.0  # denoise 0.5 changed the start video


def webp_frames(path) -> np.ndarray:
    """The RGB frames of an animated WEBP, t h w 3 uint8."""
    from PIL import Image, ImageSequence

    with Image.open(path) as im:
        return np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)])


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """Engine frames t 3 h w in [0, 1] -> t h w 3 uint8 as ComfyUI's image savers write them (truncated)."""
    return np.clip(255.0 * frames.permute(0, 2, 3, 1).numpy(), 0, 255).astype(np.uint8)  # t h w c


def engine_img2vid(model_path: Path, image_path: Path, frames: int = 4, decode_t: int = 4):
    """img2vid()'s graph at its defaults run by svd_core directly (the same calls as the nodes) on the server's model
    and input image: (model, conditioning, guidance, frames 1 t 3 h w in [0, 1])."""
    import svd_core
    from PIL import Image
    from svd_core import pipeline as P
    from svd_core.guidance import Guidance

    model = svd_core.load(model_path, dtype=torch.float32)
    rgb = np.asarray(Image.open(image_path).convert("RGB"), dtype=np.float32) / 255.0  # as LoadImage
    image = torch.from_numpy(rgb).permute(2, 0, 1)[None]  # 1 3 h w
    guidance = Guidance(kind="linear", min_scale=1.0, max_scale=2.5)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "generating at")  # 64x64 on a 128x128 model, as the graph does
        cond = P.image_conditioning(model, image, num_frames=frames, width=64, height=64, fps=7,
                                    motion_bucket_id=127, cond_aug=0.02, resize_mode="crop", seed=0)
        latent = P.sample(model, cond, guidance, sampler="euler", schedule="karras", steps=2, seed=1)
        return model, cond, guidance, P.decode(model, latent, frames, decode_t=decode_t).clamp(0, 1)


def engine_v2v(base: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """test_video_to_video's graph run by svd_core directly: (start video, video-to-video result), t 3 h w each."""
    from svd_core import pipeline as P

    model, cond, guidance, start = engine_img2vid(base / "models" / "checkpoints" / CKPT, base / "input" / IMAGE)
    with torch.inference_mode():
        latent = P.encode(model, start)  # the Encode node's input: the decoded frames
        out = P.sample(model, cond, guidance, sampler="dpmpp_2m", schedule="exponential", steps=2, seed=5,
                       init_latent=latent, denoise=0.5)
        return start[0], P.decode(model, out, 4, decode_t=4).clamp(0, 1)[0]



def test_sampler_steps_zero_follow_the_loaded_variant_and_encode_samples_the_posterior(comfy):
    """Reference simple_video_sample.py: num_steps per version when none is given (steps 0 = the loaded model's;
    the tiny model's 4); the reference first stage encodes by sampling the posterior (Encode sample_posterior)."""
    prompt = img2vid(steps=0, prefix="svd_suite/steps0")
    prompt["5"]["inputs"]["noise_device"] = "device"
    prompt["10"] = {"class_type": "SVDSuite_Encode", "inputs": {"svd_model": ["1", 0], "frames": ["6", 0],
                                                                 "num_frames": 0, "sample_posterior": True, "seed": 3}}
    prompt["11"] = {"class_type": "PreviewAny", "inputs": {"source": ["10", 0]}}
    entry, messages = run_ok(comfy, prompt)
    maxima = {m["data"]["max"] for m in messages if m["type"] == "progress" and m["data"].get("node") == "5"}
    assert maxima == {4}, maxima
    assert media_info(saved(comfy, entry)) == (4, 64, 64)


def test_diffusers_folder_loader(comfy, object_info):
    folders = object_info["SVDSuite_DiffusersLoader"]["input"]["required"]["folder"][1]["options"]
    assert folders == ["tiny_svd_diffusers"]  # conftest.BASE_MODELS: models/diffusers/tiny_svd_diffusers
    prompt = img2vid(frames=3, decode_t=3, prefix="svd_suite/diffusers")
    prompt["1"] = {"class_type": "SVDSuite_DiffusersLoader", "inputs": {"folder": "tiny_svd_diffusers",
                                                                         "dtype": "float32"}}
    prompt["7"]["inputs"]["lossless"] = True
    entry, _ = run_ok(comfy, prompt)
    out = saved(comfy, entry)
    assert media_info(out) == (3, 64, 64)
    # values: svd_core loading the same folder and running the same calls in the test process
    *_, frames = engine_img2vid(comfy.base / "models" / "diffusers" / "tiny_svd_diffusers", comfy.input_dir / IMAGE,
                                frames=3, decode_t=3)
    diff = np.abs(webp_frames(out).astype(int) - to_uint8(frames[0]).astype(int))
    assert diff.max() <= 2 and diff.mean() < 0.05, (diff.max(), diff.mean())


@pytest.fixture(scope="module")
def sv3d_ckpt(comfy):
    from factories import tiny_checkpoint

    path = comfy.base / "models" / "checkpoints" / "svd_suite_tiny_sv3d_p.safetensors"
    if not path.exists():
        tiny_checkpoint(path, variant="tiny_sv3d_p")
    return path.name


def test_sv3d_keyframed_orbit(comfy, sv3d_ckpt):
    prompt = {
        "1": {"class_type": "SVDSuite_CheckpointLoader", "inputs": {"ckpt_name": sv3d_ckpt, "dtype": "float32"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": IMAGE}},
        "3": {"class_type": "SVDSuite_OrbitKeyframes", "inputs": {"keyframes": "0: 0, 0\n4: 30, 270", "num_frames": 5}},
        "4": {"class_type": "SVDSuite_OrbitConditioning", "inputs": {
            "svd_model": ["1", 0], "image": ["2", 0], "width": 64, "height": 64, "num_frames": 5, "elevations": "10",
            "azimuths": "", "cond_aug": 1e-5, "resize_mode": "pad", "seed": 0, "orbit": ["3", 0]}},
        "5": {"class_type": "SVDSuite_RampHoldGuidance", "inputs": {"min_scale": 1.0, "max_scale": 2.0, "ramp": 0.25}},
        "6": {"class_type": "SVDSuite_Sampler", "inputs": {
            "svd_model": ["1", 0], "conditioning": ["4", 0], "guidance": ["5", 0], "sampler": "heun",
            "schedule": "karras", "steps": 2, "seed": 3, "denoise": 1.0}},
        "7": {"class_type": "SVDSuite_Decode", "inputs": {"svd_model": ["1", 0], "latent": ["6", 0], "decode_t": 5,
                                                           "overlap": 0, "image_decoder": False}},
        "8": {"class_type": "SaveAnimatedWEBP", "inputs": {
            "images": ["7", 0], "filename_prefix": "svd_suite/orbit_kf", "fps": 10.0, "lossless": False,
            "quality": 80, "method": "default"}},
        "9": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}},
    }
    entry, _ = run_ok(comfy, prompt)
    assert media_info(saved(comfy, entry, node="8")) == (5, 64, 64)


def test_sv3d_multiview_prepares_an_rgba_object_and_replaces_the_last_view(comfy, sv3d_ckpt):
    """Reference scripts/sampling/simple_video_sample.py (sv3d): the RGBA object is cut to its bounding box, centred on
    a square canvas of the input's height (image_frame_ratio None), resized to the output and put on white; the last
    view is replaced by that input (samples_x[-1:] = cond_frames_without_noise). Load Image's MASK is 1 - alpha."""
    from factories import test_image
    from PIL import Image

    from svd_core.object_image import object_input

    name = "svd_suite_rgba_object.png"
    test_image(comfy.input_dir / name, width=160, height=96, alpha=True)
    prompt = {
        "1": {"class_type": "SVDSuite_CheckpointLoader", "inputs": {"ckpt_name": sv3d_ckpt, "dtype": "float32"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": name}},
        "3": {"class_type": "SVDSuite_MultiViewSampler", "inputs": {
            "svd_model": ["1", 0], "image": ["2", 0], "mask": ["2", 1], "width": 64, "height": 64, "cond_aug": 1e-5,
            "resize_mode": "crop", "sampler": "euler", "schedule": "karras", "steps": 1, "seed": 23, "decode_t": 5}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "svd_suite/sv3d_rgba"}},
    }
    entry, _ = run_ok(comfy, prompt)
    items = entry["outputs"]["4"]["images"]
    assert len(items) == 5
    last = np.asarray(Image.open(comfy.output_file(items[-1])).convert("RGB"), dtype=np.float32) / 255.0
    with Image.open(comfy.input_dir / name) as im:
        rgba = torch.from_numpy(np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    expected = object_input(rgba, width=64, height=64)[0].permute(1, 2, 0).numpy()  # h w 3 in [0, 1]
    assert np.abs(last - expected).max() <= 1.5 / 255  # the input view itself, 8-bit rounding only
    assert np.all(last[:4, :4] == 1.0) and np.all(last[-4:, -4:] == 1.0)  # white background at the corners
    assert last[32, 32, 2] > 0.8 and last[32, 32, 1] < 0.75  # the bright-blue disc, centred
    first = np.asarray(Image.open(comfy.output_file(items[0])).convert("RGB"), dtype=np.float32) / 255.0
    assert np.abs(first - expected).max() > 0.05  # the other views are generated


# ----------------------------------------------------------------------------------------------- interrupt
def test_interrupt_during_sampling_stops_within_a_step_and_server_keeps_working(comfy):
    steps = 400
    prompt = img2vid(steps=steps, seed=11, prefix="svd_suite/interrupted",
                     guidance=("SVDSuite_VanillaGuidance", {"scale": 2.0}))
    ws = comfy.websocket()
    seen = {"at_interrupt": None}

    def on_message(msg):
        data = msg.get("data", {})
        if msg["type"] == "progress" and data.get("node") == "5" and data["value"] >= 2 and seen["at_interrupt"] is None:
            seen["at_interrupt"] = data["value"]
            threading.Thread(target=comfy.interrupt, daemon=True).start()

    try:
        prompt_id = comfy.queue(prompt)
        t0 = time.monotonic()
        entry, messages = comfy.wait(prompt_id, 240, ws=ws, on_message=on_message)
    finally:
        ws.close()
    assert seen["at_interrupt"] is not None, "the sampler never reported progress"
    assert any(m["type"] == "execution_interrupted" for m in messages), [m["type"] for m in messages][-10:]
    assert entry["status"]["status_str"] == "error" and "7" not in entry.get("outputs", {})
    last = max(m["data"]["value"] for m in messages if m["type"] == "progress" and m["data"].get("node") == "5")
    print(f"interrupt requested at step {seen['at_interrupt']}, last step reported {last} of {steps}")
    assert last <= seen["at_interrupt"] + 2 < steps, (seen, last)  # stopped within a step of the request
    # nothing broken: the next prompt runs normally with the same (cached) model
    entry, _ = run_ok(comfy, img2vid(steps=2, seed=12, prefix="svd_suite/after_interrupt"))
    assert media_info(saved(comfy, entry)) == (4, 64, 64)
    assert time.monotonic() - t0 < 240


# ----------------------------------------------------------------------------------------------- memory
def test_free_memory_request_releases_the_cached_model(comfy):
    prompt = img2vid(steps=1, seed=21, prefix="svd_suite/free")
    run_ok(comfy, prompt)
    entry, messages = run_ok(comfy, prompt | {"5": {**prompt["5"], "inputs": {**prompt["5"]["inputs"], "seed": 22}}})
    assert "1" in next(m["data"]["nodes"] for m in messages if m["type"] == "execution_cached")
    # the GUI's "Unload models / Free model and node cache" buttons: ComfyUI unloads models and drops its caches
    r = requests.post(comfy.url + "/free", json={"unload_models": True, "free_memory": True}, timeout=10)
    assert r.ok
    # the worker applies the flags after its next queue item: a trivial prompt
    run_ok(comfy, {"1": {"class_type": "SVDSuite_VanillaGuidance", "inputs": {"scale": 1.5}},
                   "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}})
    entry, messages = run_ok(comfy, prompt)
    executed = {m["data"]["node"] for m in messages if m["type"] == "executing" and m["data"]["node"]}
    assert "1" in executed, "the checkpoint loader should have run again after /free"
    assert media_info(saved(comfy, entry)) == (4, 64, 64)


# ----------------------------------------------------------------------------------------------- install
NO_EXTRAS_SCRIPT = r"""
import asyncio, importlib.abc, json, sys
# the pack's optional extras (pyproject: curation, eval) that a plain ComfyUI does not bring
BLOCKED = {"scenedetect", "cv2", "easyocr", "ray", "pyarrow", "pandas", "matplotlib", "skvideo", "lpips", "diffusers"}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (optional extra not installed)", name=name)
        if BROKEN and name.endswith(".training_nodes." + BROKEN):  # an extra present but broken
            raise ImportError(f"cannot import name 'x' from a broken optional extra (while importing {name})")
        return None

sys.argv = [sys.argv[0], "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
import nodes  # ComfyUI's own module and custom-node loader (imports torch, torchvision, ...)
for name in list(sys.modules):
    if name.split(".")[0] in BLOCKED:
        del sys.modules[name]
sys.meta_path.insert(0, Block())
ok = asyncio.run(nodes.load_custom_node(PACK))
print(json.dumps({"ok": ok, "nodes": sorted(k for k in nodes.NODE_CLASS_MAPPINGS if k.startswith("SVDSuite_"))}))
"""


@pytest.mark.parametrize("broken", ["", "curation"])
def test_pack_registers_generation_nodes_without_optional_extras(comfy, broken):
    """Loaded by ComfyUI's own custom-node loader in a Python where the optional extras cannot be imported
    (and, second case, where a training-side module fails with an ImportError): generation nodes still register."""
    import subprocess
    import sys

    pack = comfy.base / "custom_nodes" / "svd_suite"
    script = f"PACK = {str(pack)!r}\nBROKEN = {broken!r}\n" + NO_EXTRAS_SCRIPT
    out = subprocess.run([sys.executable, "-c", script], cwd=comfy.comfy, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["ok"] is True
    assert set(NODE_IDS) <= set(result["nodes"]), out.stderr[-3000:]
