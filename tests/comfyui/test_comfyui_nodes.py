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
    entry, messages = comfy.run(prompt, timeout)
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


def test_conditioning_nodes_output_their_fps_for_video_nodes(object_info):
    """The conditioned fps leaves the conditioning node as a FLOAT, the type of Create Video's fps (and
    VideoHelperSuite's frame_rate), so the video is written at the rate the motion was conditioned on; frames leave
    SVD Decode as a plain IMAGE batch."""
    for node in ("SVDSuite_ImageConditioning", "SVDSuite_TextConditioning"):
        info = object_info[node]
        assert info["output"][:2] == ["SVDSUITE_CONDITIONING", "FLOAT"] and info["output_name"][1] == "fps", info
    # the image conditioning also gives native positive / negative / empty latent, after fps (workflows link fps at 1)
    assert object_info["SVDSuite_ImageConditioning"]["output"][2:] == ["CONDITIONING", "CONDITIONING", "LATENT"]
    for node in ("SVDSuite_ChainedVideo", "SVDSuite_FrameInterpolation"):  # frames out, at their conditioned fps
        info = object_info[node]
        assert info["output"] == ["IMAGE", "FLOAT"] and info["output_name"][1] == "fps", info["output"]
    assert object_info["CreateVideo"]["input"]["required"]["fps"][0] == "FLOAT"
    assert object_info["SVDSuite_Decode"]["output"] == ["IMAGE"]


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
    errors = comfy.run_failing(prompt, 120)
    assert errors and errors[0]["node_type"] == "SVDSuite_Sampler"
    assert "SVDSuite_Sampler: input 'denoise'" in errors[0]["exception_message"]


# ----------------------------------------------------------------------------------------------- execution
def test_img2vid_frames_plug_into_native_video_nodes_and_model_is_reused(comfy):
    prompt = img2vid(frames=5, decode_t=2, overlap=1, prefix="svd_suite/native")
    prompt["7"]["inputs"]["lossless"] = True  # the frames' values are compared with the engine's
    prompt["8"] = {"class_type": "CreateVideo", "inputs": {"images": ["6", 0], "fps": 7.0}}
    prompt["9"] = {"class_type": "SaveVideo", "inputs": {"video": ["8", 0], "filename_prefix": "svd_suite/native_vid",
                                                         "format": "mp4", "codec": "h264"}}
    entry, _ = run_ok(comfy, prompt)
    assert media_info(saved(comfy, entry)) == (5, 64, 64)
    assert_frames_match_engine(comfy, saved(comfy, entry), frames=5, decode_t=2, overlap=1)
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


def engine_img2vid(model_path: Path, image_path: Path, frames: int = 4, decode_t: int = 4, overlap: int = 0,
                   steps: int = 2, seed: int = 1):
    """img2vid()'s graph run by svd_core directly (the same calls as the nodes) on the server's model and input
    image: (model, conditioning, guidance, frames 1 t 3 h w in [0, 1])."""
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
        latent = P.sample(model, cond, guidance, sampler="euler", schedule="karras", steps=steps, seed=seed)
        return model, cond, guidance, P.decode(model, latent, frames, decode_t=decode_t, overlap=overlap).clamp(0, 1)


def assert_frames_match_engine(comfy, path: Path, **engine_kwargs) -> None:
    """The lossless WEBP `path` of an img2vid() graph holds the frames svd_core makes from the same checkpoint,
    image and seeds in the test process (8-bit frames, 255 * x truncated: float noise may move a value by one)."""
    *_, frames = engine_img2vid(comfy.base / "models" / "checkpoints" / CKPT, comfy.input_dir / IMAGE, **engine_kwargs)
    diff = np.abs(webp_frames(path).astype(int) - to_uint8(frames[0]).astype(int))
    print(f"{path.name}: max |graph - engine| {diff.max()} / 255, mean {diff.mean():.4f}")
    assert diff.max() <= 2 and diff.mean() < 0.05, (diff.max(), diff.mean())


def engine_v2v(base: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """test_video_to_video's graph run by svd_core directly: (start video, video-to-video result), t 3 h w each."""
    from svd_core import pipeline as P

    model, cond, guidance, start = engine_img2vid(base / "models" / "checkpoints" / CKPT, base / "input" / IMAGE)
    with torch.inference_mode():
        latent = P.encode(model, start)  # the Encode node's input: the decoded frames
        out = P.sample(model, cond, guidance, sampler="dpmpp_2m", schedule="exponential", steps=2, seed=5,
                       init_latent=latent, denoise=0.5)
        return start[0], P.decode(model, out, 4, decode_t=4).clamp(0, 1)[0]



def test_sampler_sends_live_previews_of_each_step_x0(comfy):
    """With the user's --preview-method (the session server runs latent2rgb), the SVD Sampler sends a preview image
    per step over the websocket like native samplers (latent_preview, SD15's latent2rgb factors on the scaled x0 of
    the first frame); the last step's x0 is the sampled latent, so the last preview is that latent's latent2rgb."""
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import load_file

    from comfy_harness import PREVIEW_IMAGE, preview_image

    steps = 3
    prompt = img2vid(width=128, height=64, steps=steps, prefix="svd_suite/preview")
    prompt["5"]["inputs"]["seed"] = 11
    prompt["8"] = {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": "svd_suite/preview"}}
    previews, node_of_preview = [], []
    current = {}

    def on_message(msg):
        if msg["type"] == "executing":
            current["node"] = msg["data"].get("node")

    def on_binary(event, payload):
        if event == PREVIEW_IMAGE:
            previews.append(preview_image(payload).convert("RGB"))
            node_of_preview.append(current.get("node"))

    ws = comfy.websocket()
    try:
        entry, _ = comfy.wait(comfy.queue(prompt), 180, ws=ws, on_message=on_message, on_binary=on_binary)
    finally:
        ws.close()
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    assert len(previews) == steps and set(node_of_preview) == {"5"}, (len(previews), node_of_preview)
    # latent2rgb gives one pixel per latent pixel (16x8); the server enlarges it to --preview-size (512) wide
    assert all(p.width == 2 * p.height and p.width >= 128 // 8 for p in previews), [p.size for p in previews]
    item = entry["outputs"]["8"]["latents"][0]
    raw = load_file(str(comfy.output_file(item)))["latent_tensor"]  # the LATENT: the VAE's raw latent
    factors = torch.tensor([[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721],
                            [-0.2120, -0.2616, -0.7177]])  # comfy.latent_formats.SD15.latent_rgb_factors
    rgb = torch.einsum("chw,cr->hwr", raw[0] * 0.18215, factors)  # scaled x0 of frame 0 -> RGB in [-1, 1]
    small = Image.fromarray(((rgb + 1) / 2).clamp(0, 1).mul(255).to(torch.uint8).numpy())
    expected = np.asarray(small.resize(previews[-1].size, Image.BILINEAR), np.float64)  # as the server enlarges it
    error = np.abs(np.asarray(previews[-1], np.float64) - expected).mean()
    assert error < 4.0, error  # JPEG (quality 95) and uint8 rounding only
    assert np.abs(np.asarray(previews[0], np.float64) - expected).mean() > 4 * error + 1  # early x0 is not the result


def test_sampler_steps_zero_follow_the_loaded_variant_and_encode_samples_the_posterior(comfy):
    """Reference simple_video_sample.py: num_steps per version when none is given (steps 0 = the loaded model's;
    the tiny model's 4); the reference first stage encodes by sampling the posterior (Encode sample_posterior)."""
    prompt = img2vid(steps=0, prefix="svd_suite/steps0")
    prompt["5"]["inputs"]["noise_device"] = "device"
    prompt["7"]["inputs"]["lossless"] = True
    prompt["10"] = {"class_type": "SVDSuite_Encode", "inputs": {"svd_model": ["1", 0], "frames": ["6", 0],
                                                                 "num_frames": 0, "sample_posterior": True, "seed": 3}}
    prompt["11"] = {"class_type": "PreviewAny", "inputs": {"source": ["10", 0]}}
    entry, messages = run_ok(comfy, prompt)
    maxima = {m["data"]["max"] for m in messages if m["type"] == "progress" and m["data"].get("node") == "5"}
    assert maxima == {4}, maxima
    assert media_info(saved(comfy, entry)) == (4, 64, 64)
    assert_frames_match_engine(comfy, saved(comfy, entry), steps=4)  # noise "device" is the CPU here


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
            "images": ["7", 0], "filename_prefix": "svd_suite/orbit_kf", "fps": 10.0, "lossless": True,
            "quality": 80, "method": "default"}},
        "9": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}},
    }
    entry, _ = run_ok(comfy, prompt)
    out = saved(comfy, entry, node="8")
    assert media_info(out) == (5, 64, 64)
    # values: the keyframes linear in between (frame 4: 30 degrees up, 270 around), the same svd_core calls
    import svd_core
    from PIL import Image
    from svd_core import pipeline as P
    from svd_core.guidance import Guidance

    model = svd_core.load(comfy.base / "models" / "checkpoints" / sv3d_ckpt, dtype=torch.float32)
    rgb = np.asarray(Image.open(comfy.input_dir / IMAGE).convert("RGB"), dtype=np.float32) / 255.0  # as LoadImage
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "generating at")  # 64x64 on a 128x128 model, as the graph does
        cond = P.orbit_conditioning(model, torch.from_numpy(rgb).permute(2, 0, 1)[None], num_frames=5, width=64,
                                    height=64, elevations=[0.0, 7.5, 15.0, 22.5, 30.0],
                                    azimuths=[0.0, 67.5, 135.0, 202.5, 270.0], cond_aug=1e-5, resize_mode="pad",
                                    seed=0)
        latent = P.sample(model, cond, Guidance(kind="ramp_hold", min_scale=1.0, max_scale=2.0, ramp=0.25),
                          sampler="heun", schedule="karras", steps=2, seed=3)
        frames = P.decode(model, latent, 5, decode_t=5).clamp(0, 1)[0]  # t 3 h w
    diff = np.abs(webp_frames(out).astype(int) - to_uint8(frames).astype(int))
    print(f"{out.name}: max |graph - engine| {diff.max()} / 255, mean {diff.mean():.4f}")
    assert diff.max() <= 2 and diff.mean() < 0.05, (diff.max(), diff.mean())


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
    after = img2vid(steps=2, seed=12, prefix="svd_suite/after_interrupt")
    after["7"]["inputs"]["lossless"] = True
    entry, _ = run_ok(comfy, after)
    assert media_info(saved(comfy, entry)) == (4, 64, 64)
    assert_frames_match_engine(comfy, saved(comfy, entry), seed=12)  # the interrupted run left nothing behind
    assert time.monotonic() - t0 < 240


def _train_prompt(steps: int, run_name: str) -> dict:
    """Train a tiny model's temporal layers on the session's bikes clips (the training workflows' input)."""
    return {
        "1": {"class_type": "SVDSuite_CheckpointLoader", "inputs": {"ckpt_name": CKPT, "dtype": "float32"}},
        "2": {"class_type": "SVDSuite_TrainModel", "inputs": {"svd_model": ["1", 0], "target": "as loaded"}},
        "3": {"class_type": "SVDSuite_TrainDataset", "inputs": {"source": "svd_train_clips",
                                                                "max_windows_per_clip": 1}},
        "4": {"class_type": "SVDSuite_TrainSettings", "inputs": {
            "preset": "img2vid", "mode": "temporal", "steps": steps, "learning_rate": 0.0, "batch_size": 1,
            "grad_accum": 1, "num_frames": 4, "width": 64, "height": 64, "lora_rank": 16, "ema_decay": 0.9999,
            "precision": "fp32", "gradient_checkpointing": False, "training_seed": 0, "overrides": "{}"}},
        "5": {"class_type": "SVDSuite_Train", "inputs": {
            "train_model": ["2", 0], "dataset": ["3", 0], "settings": ["4", 0], "run_name": run_name,
            "resume": True, "checkpoint_every": 1000, "validate_every": 0, "sample_steps": 0}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 2], "filename_prefix": "svd_suite/" + run_name}},
    }


@pytest.mark.slow
def test_cancel_during_training_saves_a_state_the_next_run_resumes(comfy):
    """The node kit's one cancel rule on the Train node: Cancel ends the prompt as interrupted (not failed) after the
    trainer saved its state, and queueing the same run again continues from that step."""
    steps, run_name = 12, "svd_suite_cancelled"
    prompt = _train_prompt(steps, run_name)
    state = comfy.output_dir / "svd_training" / run_name / "state" / "last.safetensors"
    seen = {"at_interrupt": None}

    def train_steps(messages):  # the Train node's progress over its steps (its caching progress counts windows)
        return [m["data"]["value"] for m in messages if m["type"] == "progress" and m["data"].get("node") == "5"
                and m["data"]["max"] == steps]

    def on_message(msg):
        data = msg.get("data", {})
        if msg["type"] == "progress" and data.get("node") == "5" and data["max"] == steps and data["value"] >= 2 \
                and seen["at_interrupt"] is None:
            seen["at_interrupt"] = data["value"]
            threading.Thread(target=comfy.interrupt, daemon=True).start()

    ws = comfy.websocket()
    try:
        entry, messages = comfy.wait(comfy.queue(prompt), 400, ws=ws, on_message=on_message)
    finally:
        ws.close()
    assert seen["at_interrupt"] is not None, "the Train node never reported a step"
    assert any(m["type"] == "execution_interrupted" for m in messages), [m["type"] for m in messages][-10:]
    assert entry["status"]["status_str"] == "error" and "6" not in entry.get("outputs", {})
    stopped = max(train_steps(messages))
    assert stopped <= seen["at_interrupt"] + 2 < steps and state.is_file(), (seen, stopped)
    entry, messages = run_ok(comfy, prompt, timeout=400)  # the same run again: resumes, does not start over
    values = [v for v in train_steps(messages) if v > 0]
    # the step that ran while Cancel came in is saved but not shown (ComfyUI's hook raises before it reports)
    assert stopped < values[0] <= stopped + 2 and values == list(range(values[0], steps + 1)), (stopped, values)
    assert len(entry["outputs"]["6"]["images"]) == 1  # the loss curve


# ----------------------------------------------------------------------------------------------- memory
def test_free_memory_request_releases_the_cached_model(comfy):
    prompt = img2vid(steps=1, seed=21, prefix="svd_suite/free")
    prompt["7"]["inputs"]["lossless"] = True
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
    assert_frames_match_engine(comfy, saved(comfy, entry), steps=1, seed=21)  # the reloaded model is the file's


# ----------------------------------------------------------------------------------------------- install
NO_EXTRAS_SCRIPT = r"""
import asyncio, importlib.abc, json, os, sys
# the pack's optional extras (pyproject: curation, eval) that a plain ComfyUI does not bring
BLOCKED = {"scenedetect", "cv2", "easyocr", "ray", "pyarrow", "pandas", "matplotlib", "skvideo", "lpips", "diffusers"}
BROKEN = ""

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
PACK_MODULE = PACK.replace(".", "_x_")  # the name ComfyUI's loader gives the pack's package
results = {}
for BROKEN in CASES:  # each case imports the pack and its engine afresh, as a fresh ComfyUI would
    for name in list(sys.modules):
        if name.split(".")[0] in (PACK_MODULE, "svd_core"):
            del sys.modules[name]
    for key in [k for k in nodes.NODE_CLASS_MAPPINGS if k.startswith("SVDSuite_")]:
        del nodes.NODE_CLASS_MAPPINGS[key]
    ok = asyncio.run(nodes.load_custom_node(PACK))
    results[BROKEN] = {"ok": ok, "nodes": sorted(k for k in nodes.NODE_CLASS_MAPPINGS if k.startswith("SVDSuite_"))}
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def without_extras(comfy):
    """ComfyUI's own custom-node loader on the pack in one Python where the optional extras cannot be imported, once
    as is and once with a training-side module failing with an ImportError (the pack and svd_core imported afresh
    for each case)."""
    import subprocess
    import sys

    pack = comfy.base / "custom_nodes" / "svd_suite"
    script = f"PACK = {str(pack)!r}\nCASES = {['', 'curation']!r}\n" + NO_EXTRAS_SCRIPT
    out = subprocess.run([sys.executable, "-c", script], cwd=comfy.comfy, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr[-3000:]


@pytest.mark.parametrize("broken", ["", "curation"])
def test_pack_registers_generation_nodes_without_optional_extras(without_extras, broken):
    """Loaded by ComfyUI's own custom-node loader in a Python where the optional extras cannot be imported
    (and, second case, where a training-side module fails with an ImportError): generation nodes still register."""
    results, log = without_extras
    assert results[broken]["ok"] is True
    assert set(NODE_IDS) <= set(results[broken]["nodes"]), log
    if broken:  # the broken module really was imported afresh: the training-side nodes stayed out
        assert set(results[broken]["nodes"]) < set(results[""]["nodes"]), log


# ----------------------------------------------------------------------------------------------- native types
def _latent(comfy, entry, node: str):
    from safetensors.torch import load_file

    items = entry["outputs"][node]["latents"]
    return load_file(str(comfy.output_file(items[0])))["latent_tensor"]


def test_native_ksampler_on_our_model_and_conditioning_matches_the_pack_sampler(comfy):
    """Native KSampler (euler, karras, cfg 2.5, denoise 1) on the loader's MODEL and SVD Image Conditioning's
    positive / negative gives the SVD Sampler's latent for the same seed (constant guidance 2.5): the same noise
    (ComfyUI's `prepare_noise` and the pack both draw `torch.randn` from a CPU generator seeded with `seed`, scaled
    by sqrt(1 + sigma_max^2)), the same EDM v-prediction denoiser and Karras sigmas. Native SamplerCustomAdvanced with
    VideoLinearCFGGuidance (min_cfg 1 -> cfg 2.5 over the frames) and ModelSamplingContinuousEDM (ComfyUI's SVD
    settings re-applied) equals the pack's Linear Guidance 1 -> 2.5; the same patch with sigma_max 350 changes
    KSampler's result; the native VAE decodes the native latent as one video.

    Why the pack's own conditioning, not the native `SVD_img2vid_Conditioning` (ComfyUI 0.3.75
    comfy_extras/nodes_video_model.py): that node adds `torch.randn_like(pixels) * augmentation_level` to the image
    in [0, 1] space (the reference adds cond_aug * noise in [-1, 1] space: twice the relative noise there), from the
    global RNG (no seed), in place on the resized image; and its fps default 6 gives fps_id 5 (model_base
    `SVD_img2vid.encode_adm` embeds fps - 1) where the reference's default is fps_id 6 (7 fps)."""
    prompt = img2vid(frames=4, steps=3, seed=5, guidance=("SVDSuite_LinearGuidance", {"min_scale": 2.5,
                                                                                        "max_scale": 2.5}))
    del prompt["6"], prompt["7"]
    prompt["10"] = {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": "svd_suite/pk"}}
    prompt["11"] = {"class_type": "KSampler", "inputs": {
        "model": ["1", 1], "positive": ["3", 2], "negative": ["3", 3], "latent_image": ["3", 4], "seed": 5,
        "steps": 3, "cfg": 2.5, "sampler_name": "euler", "scheduler": "karras", "denoise": 1.0}}
    prompt["12"] = {"class_type": "SaveLatent", "inputs": {"samples": ["11", 0], "filename_prefix": "svd_suite/nk"}}
    prompt["13"] = {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0], "vae": ["1", 3]}}
    prompt["14"] = {"class_type": "SaveAnimatedWEBP", "inputs": {
        "images": ["13", 0], "filename_prefix": "svd_suite/nk", "fps": 7.0, "lossless": True, "quality": 100,
        "method": "default"}}
    # linear CFG: pack guidance 1 -> 2.5 and native VideoLinearCFGGuidance through SamplerCustomAdvanced
    prompt["20"] = {"class_type": "SVDSuite_LinearGuidance", "inputs": {"min_scale": 1.0, "max_scale": 2.5}}
    prompt["21"] = {"class_type": "SVDSuite_Sampler", "inputs": {**prompt["5"]["inputs"], "guidance": ["20", 0]}}
    prompt["22"] = {"class_type": "SaveLatent", "inputs": {"samples": ["21", 0], "filename_prefix": "svd_suite/pl"}}
    prompt["23"] = {"class_type": "VideoLinearCFGGuidance", "inputs": {"model": ["1", 1], "min_cfg": 1.0}}
    prompt["30"] = {"class_type": "ModelSamplingContinuousEDM", "inputs": {  # ComfyUI's SVD settings, re-applied
        "model": ["23", 0], "sampling": "v_prediction", "sigma_max": 700.0, "sigma_min": 0.002}}
    prompt["24"] = {"class_type": "CFGGuider", "inputs": {"model": ["30", 0], "positive": ["3", 2],
                                                          "negative": ["3", 3], "cfg": 2.5}}
    prompt["25"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": 5}}
    prompt["26"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
    prompt["27"] = {"class_type": "KarrasScheduler", "inputs": {"steps": 3, "sigma_max": 700.0, "sigma_min": 0.002,
                                                                "rho": 7.0}}
    prompt["28"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["25", 0], "guider": ["24", 0], "sampler": ["26", 0], "sigmas": ["27", 0],
        "latent_image": ["3", 4]}}
    prompt["29"] = {"class_type": "SaveLatent", "inputs": {"samples": ["28", 0], "filename_prefix": "svd_suite/nl"}}
    # a model-sampling patch that changes the schedule (KSampler's karras sigmas now end at 350, not 700)
    prompt["31"] = {"class_type": "ModelSamplingContinuousEDM", "inputs": {
        "model": ["1", 1], "sampling": "v_prediction", "sigma_max": 350.0, "sigma_min": 0.002}}
    prompt["32"] = {**prompt["11"], "inputs": {**prompt["11"]["inputs"], "model": ["31", 0]}}
    prompt["33"] = {"class_type": "SaveLatent", "inputs": {"samples": ["32", 0], "filename_prefix": "svd_suite/ns"}}
    entry, _ = run_ok(comfy, prompt, timeout=300)
    pack, native = _latent(comfy, entry, "10"), _latent(comfy, entry, "12")
    assert pack.shape == native.shape == (4, 4, 8, 8)
    diff = (pack - native).abs().max().item()
    print(f"KSampler parity: max abs difference {diff:.3g} (latent max {pack.abs().max().item():.3g})")
    assert diff < 1e-3 * max(1.0, pack.abs().max().item()), diff
    pack_lin, native_lin = _latent(comfy, entry, "22"), _latent(comfy, entry, "29")
    assert (pack_lin - native_lin).abs().max().item() < 1e-3 * max(1.0, pack_lin.abs().max().item())
    assert (pack_lin - pack).abs().max().item() > 1e-2  # the linear guidance did change the video
    assert (_latent(comfy, entry, "33") - pack).abs().max().item() > 1e-2  # the patch applies
    assert media_info(saved(comfy, entry, node="14")) == (4, 64, 64)


def test_native_model_takes_the_camera_lora_as_comfyui_patches(comfy):
    """SVD LoRA Loader on the native MODEL: KSampler on the patched model equals the pack's sampler with the same
    LoRA (unmerged hooks) and differs from the base model; the pack's sampler on native inputs (the patched MODEL,
    positive, negative, latent) gives the same; the unpatched MODEL in a later prompt is back to the base result."""
    from comfy_harness import make_files

    make_files([{"folder": "loras", "name": "svd_suite_native_test.safetensors",
                 "factory": "tests.test_lora:tiny_lora_file", "kwargs": {"seed": 7}}], comfy.base / "models")
    prompt = img2vid(frames=4, steps=2, seed=3, guidance=("SVDSuite_LinearGuidance", {"min_scale": 2.0,
                                                                                        "max_scale": 2.0}))
    del prompt["6"], prompt["7"]

    def ksampler(model, after=None):
        inputs = {"model": model, "positive": ["3", 2], "negative": ["3", 3], "latent_image": after or ["3", 4],
                  "seed": 3, "steps": 2, "cfg": 2.0, "sampler_name": "euler", "scheduler": "karras", "denoise": 1.0}
        return {"class_type": "KSampler", "inputs": inputs}

    prompt["30"] = {"class_type": "SVDSuite_LoRALoader", "inputs": {
        "svd_model": ["1", 0], "model": ["1", 1], "lora_name": "svd_suite_native_test.safetensors",
        "strength": 0.8, "mode": "unmerged", "enabled": True}}
    prompt["31"] = {"class_type": "SVDSuite_Sampler", "inputs": {**prompt["5"]["inputs"], "svd_model": ["30", 0]}}
    prompt["32"] = ksampler(["30", 1])
    prompt["34"] = {"class_type": "SaveLatent", "inputs": {"samples": ["31", 0], "filename_prefix": "svd_suite/lp"}}
    prompt["35"] = {"class_type": "SaveLatent", "inputs": {"samples": ["32", 0], "filename_prefix": "svd_suite/ln"}}
    prompt["36"] = {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": "svd_suite/lb"}}
    native_in = {k: v for k, v in prompt["5"]["inputs"].items() if k != "conditioning"}
    prompt["37"] = {"class_type": "SVDSuite_Sampler", "inputs": {
        **native_in, "model": ["30", 1], "positive": ["3", 2], "negative": ["3", 3], "latent": ["3", 4]}}
    prompt["38"] = {"class_type": "SaveLatent", "inputs": {"samples": ["37", 0], "filename_prefix": "svd_suite/lm"}}
    entry, _ = run_ok(comfy, prompt, timeout=300)
    lora_pack, lora_native = _latent(comfy, entry, "34"), _latent(comfy, entry, "35")
    base = _latent(comfy, entry, "36")
    scale = max(1.0, lora_pack.abs().max().item())
    assert (lora_pack - lora_native).abs().max().item() < 1e-3 * scale
    assert (lora_native - base).abs().max().item() > 1e-2  # the LoRA changes the video
    assert (_latent(comfy, entry, "38") - lora_pack).abs().max().item() < 1e-3 * scale
    # then the unpatched native MODEL alone (a new prompt: ComfyUI unpatches the LoRA'd clone's weights)
    plain = {k: prompt[k] for k in ("1", "2", "3")}
    plain["40"] = ksampler(["1", 1])
    plain["41"] = {"class_type": "SaveLatent", "inputs": {"samples": ["40", 0], "filename_prefix": "svd_suite/lu"}}
    entry, _ = run_ok(comfy, plain, timeout=300)
    unpatched = _latent(comfy, entry, "41")
    assert (unpatched - base).abs().max().item() < 1e-3 * max(1.0, base.abs().max().item())


def _comfy_in_process():
    """ComfyUI's package imported in the test process (`--cpu`), as tests/test_ops.py does."""
    import sys

    from comfy_harness import comfyui_dir

    if str(comfyui_dir()) not in sys.path:
        sys.path.insert(0, str(comfyui_dir()))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.controlnet

    return comfy


def test_native_controlnet_residuals_drive_our_unet(comfy):
    """ComfyUI's ControlNetLoader + ControlNetApplyAdvanced on SVD Image Conditioning's positive / negative, native
    KSampler on the loader's MODEL: ComfyUI hands the ControlNet's residuals to our UNet as `control` (issue 13
    item 2). Strength 0 gives the run without ControlNet; strengths 0.5 and 1 change the video and equal the
    expected latent computed here in-process: the pack's conditioning and sampler on the same tiny weights, the
    UNet called with the residuals of the same ControlNet module (ComfyUI's `load_controlnet` on the same file)
    run by hand on ComfyUI's ControlNet inputs (the c_in-scaled noisy latent without the concat frame, c_noise,
    context, y, the hint image) times the strength.

    Why not ComfyUI's own SVD model on the same checkpoint: ComfyUI 0.3.75's model detection matches no supported
    model for the tiny widths (`model_config_from_unet` logs "no match"), so ImageOnlyCheckpointLoader refuses
    the tiny file; the UNet's residual parity with ComfyUI's own video UNet is tests/test_ops.py's
    test_control_residuals_match_comfy_video_unet."""
    import numpy as np
    import torch
    from PIL import Image

    from comfy_harness import make_files
    from svd_core import pipeline, testing
    from svd_core.guidance import Guidance

    cnet_name, hint_name = "svd_suite_tiny_controlnet.safetensors", "svd_suite_hint64.png"
    cnet_path, = make_files([{"folder": "controlnet", "name": cnet_name,
                              "factory": "tests.comfyui.factories:tiny_controlnet", "kwargs": {"seed": 0}}],
                            comfy.base / "models")
    hint_path, = make_files([{"name": hint_name, "factory": "tests.comfyui.factories:test_image",
                              "kwargs": {"width": 64, "height": 64, "seed": 3}}], comfy.base / "input")
    steps, seed, cfg, strengths = 2, 5, 2.5, (0.0, 0.5, 1.0)
    prompt = img2vid(frames=4, steps=steps, seed=seed)
    del prompt["4"], prompt["5"], prompt["6"], prompt["7"]
    prompt["40"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": cnet_name}}
    prompt["41"] = {"class_type": "LoadImage", "inputs": {"image": hint_name}}

    def ksampler(node, positive, negative):
        prompt[node] = {"class_type": "KSampler", "inputs": {
            "model": ["1", 1], "positive": positive, "negative": negative, "latent_image": ["3", 4], "seed": seed,
            "steps": steps, "cfg": cfg, "sampler_name": "euler", "scheduler": "karras", "denoise": 1.0}}
        prompt[f"{node}s"] = {"class_type": "SaveLatent", "inputs": {"samples": [node, 0],
                                                                     "filename_prefix": f"svd_suite/cn{node}"}}

    ksampler("50", ["3", 2], ["3", 3])  # no ControlNet
    for i, strength in enumerate(strengths):
        prompt[f"6{i}"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["3", 2], "negative": ["3", 3], "control_net": ["40", 0], "image": ["41", 0],
            "strength": strength, "start_percent": 0.0, "end_percent": 1.0}}
        ksampler(f"7{i}", [f"6{i}", 0], [f"6{i}", 1])
    entry, _ = run_ok(comfy, prompt, timeout=300)
    base = _latent(comfy, entry, "50s")
    graph = {s: _latent(comfy, entry, f"7{i}s") for i, s in enumerate(strengths)}

    # the expected latents, in-process
    control_model = _comfy_in_process().controlnet.load_controlnet(str(cnet_path)).control_model.eval()
    model = testing.tiny_model("tiny", seed=0)  # the weights of conftest's svd_suite_tiny.safetensors
    image = torch.from_numpy(np.array(Image.open(comfy.input_dir / IMAGE).convert("RGB")))
    hint = torch.from_numpy(np.array(Image.open(hint_path).convert("RGB")))
    image, hint = (t.permute(2, 0, 1)[None].float() / 255.0 for t in (image, hint))  # b h w c -> b c h w
    cond = pipeline.image_conditioning(model, image, num_frames=4, width=64, height=64, fps=7, motion_bucket_id=127,
                                       cond_aug=0.02, resize_mode="crop", seed=0)
    unet_forward = model.unet.forward
    expected = {}
    for strength in strengths[1:]:
        def forward(x, timesteps, context=None, y=None, **kw):
            # ComfyUI's ControlNet.get_control: x = calculate_input(sigma, x) (the first 4 channels here),
            # timesteps = c_noise, c_crossattn, y; control_merge multiplies every residual by the strength
            out = control_model(x=x[:, :4], hint=hint.expand(x.shape[0], -1, -1, -1), timesteps=timesteps,
                                context=context, y=y)
            control = {k: [r * strength for r in v] for k, v in out.items()}
            return unet_forward(x, timesteps, context=context, y=y, control=control, **kw)

        model.unet.forward = forward
        with torch.inference_mode():
            scaled = pipeline.sample(model, cond, Guidance(min_scale=cfg, max_scale=cfg), sampler="euler",
                                     schedule="karras", steps=steps, seed=seed)
        expected[strength] = scaled / model.spec.scale_factor  # a LATENT holds the VAE's raw latent
    model.unet.forward = unet_forward

    scale = max(1.0, base.abs().max().item())
    assert (graph[0.0] - base).abs().max().item() < 1e-5 * scale  # strength 0: ComfyUI skips the ControlNet
    for strength in strengths[1:]:
        change = (graph[strength] - base).abs().max().item()
        diff = (graph[strength] - expected[strength].reshape(graph[strength].shape)).abs().max().item()
        print(f"ControlNet strength {strength}: change vs no ControlNet {change:.3g}, max abs difference vs the "
              f"in-process expectation {diff:.3g} (latent max {scale:.3g})")
        assert change > 0.05 * scale, change
        assert diff < 1e-3 * scale, diff
    assert (graph[1.0] - graph[0.5]).abs().max().item() > 0.02 * scale  # the strength is applied
