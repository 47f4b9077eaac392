"""LATENT means what ComfyUI means (issue 13 item 1): the pack's LATENT holds the VAE's raw latent, as native
`VAEEncode` / `VAEDecode` do; the 0.18215 scale is applied inside the model path (ComfyUI's `latent_format` SD15).

Both directions run in the real ComfyUI against its own VAE built from the same weights: a checkpoint whose VAE
has the released SVD widths (ComfyUI's VAE loader infers nothing else) and the same VAE as a file in models/vae."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

IMAGE = "svd_suite_test.png"  # conftest.BASE_INPUTS
CKPT = "svd_suite_tiny_sdvae.safetensors"
VAE = "svd_suite_tiny_sdvae_vae.safetensors"
TOLERANCE = 1.0  # mean |pixel| difference in 0..255 units (fp32 both sides; PNG rounding alone is <= 0.5)


@pytest.fixture(scope="module")
def same_vae(comfy):
    """(checkpoint, vae file) with one VAE: the pack's checkpoint and ComfyUI's VAELoader read the same weights."""
    from safetensors.torch import save_file

    from svd_core.loading import save
    from svd_core.testing import tiny_model
    from svd_core.variants import TINY

    ckpt = comfy.base / "models" / "checkpoints" / CKPT
    vae = comfy.base / "models" / "vae" / VAE
    if not (ckpt.exists() and vae.exists()):
        spec = replace(TINY, name="tiny_sdvae", vae=replace(TINY.vae, ch=128), custom=True)  # SVD's VAE widths
        model = tiny_model(spec, seed=5)
        save(model, ckpt)
        vae.parent.mkdir(parents=True, exist_ok=True)
        prefix = "first_stage_model."
        save_file({k[len(prefix):]: v.contiguous() for k, v in model.state_dict().items() if k.startswith(prefix)},
                  str(vae))
    return CKPT, VAE


def _run(comfy, prompt, timeout=300):
    entry, _ = comfy.run(prompt, timeout)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[:4000]
    return entry


def _frames(comfy, entry, node) -> np.ndarray:
    """The frames a SaveImage node wrote, (frames, H, W, 3) in 0..255 float."""
    from PIL import Image

    items = entry["outputs"][node]["images"]
    return np.stack([np.asarray(Image.open(comfy.output_file(i)).convert("RGB"), np.float64) for i in items])


def _diff(comfy, entry, a, b) -> float:
    x, y = _frames(comfy, entry, a), _frames(comfy, entry, b)
    assert x.shape == y.shape == (4, 64, 64, 3)
    return float(np.abs(x - y).mean())


def _base(ckpt, vae) -> dict:
    return {
        "1": {"class_type": "SVDSuite_CheckpointLoader", "inputs": {"ckpt_name": ckpt, "dtype": "float32"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": IMAGE}},
        "3": {"class_type": "SVDSuite_ImageConditioning", "inputs": {
            "svd_model": ["1", 0], "image": ["2", 0], "width": 64, "height": 64, "num_frames": 4, "fps": 7,
            "motion_bucket_id": 127, "cond_aug": 0.02, "resize_mode": "crop", "seed": 0}},
        "4": {"class_type": "SVDSuite_LinearGuidance", "inputs": {"min_scale": 1.0, "max_scale": 2.5}},
        "7": {"class_type": "VAELoader", "inputs": {"vae_name": vae}},
    }


def _sample(latent=None, denoise=1.0) -> dict:
    inputs = {"svd_model": ["1", 0], "conditioning": ["3", 0], "guidance": ["4", 0], "sampler": "euler",
              "schedule": "karras", "steps": 2, "seed": 7, "denoise": denoise}
    if latent:
        inputs["latent"] = latent
    return {"class_type": "SVDSuite_Sampler", "inputs": inputs}


def _decode(latent) -> dict:
    return {"class_type": "SVDSuite_Decode", "inputs": {"svd_model": ["1", 0], "latent": latent, "decode_t": 4,
                                                        "overlap": 0, "image_decoder": False}}


def _save(images, name) -> dict:
    return {"class_type": "SaveImage", "inputs": {"images": images, "filename_prefix": f"svd_suite/latent_{name}"}}


def test_pack_latent_decodes_the_same_with_native_vae_decode(comfy, same_vae):
    """Pack sampler -> LATENT -> native VAEDecode gives the pixels of pack sampler -> SVD Decode."""
    prompt = _base(*same_vae)
    prompt.update({
        "5": _sample(),
        "6": _decode(["5", 0]),
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["7", 0]}},
        "9": _save(["6", 0], "pack_decode"),
        "10": _save(["8", 0], "native_decode"),
    })
    entry = _run(comfy, prompt)
    diff = _diff(comfy, entry, "9", "10")
    print(f"\npack LATENT -> native VAEDecode vs SVD Decode: mean |pixel| difference {diff:.4f} / 255")
    assert diff < TOLERANCE, diff
    assert _frames(comfy, entry, "9").std() > 5  # a real picture, not a flat clamp both sides agree on


def test_native_vae_encode_latent_feeds_the_pack_like_its_own_encode(comfy, same_vae):
    """Native VAEEncode -> SVD Decode / SVD Sampler (video-to-video) gives the pixels of SVD Encode -> the same."""
    prompt = _base(*same_vae)
    prompt.update({
        "11": {"class_type": "ImageScale", "inputs": {"image": ["2", 0], "upscale_method": "bilinear", "width": 64,
                                                      "height": 64, "crop": "center"}},
        "12": {"class_type": "RepeatImageBatch", "inputs": {"image": ["11", 0], "amount": 4}},
        "13": {"class_type": "VAEEncode", "inputs": {"pixels": ["12", 0], "vae": ["7", 0]}},
        "14": {"class_type": "SVDSuite_Encode", "inputs": {"svd_model": ["1", 0], "frames": ["12", 0],
                                                           "num_frames": 0}},
        "15": _decode(["13", 0]), "16": _decode(["14", 0]),
        "17": _save(["15", 0], "native_encode"), "18": _save(["16", 0], "pack_encode"),
        "19": _sample(["13", 0], denoise=0.6), "20": _sample(["14", 0], denoise=0.6),
        "21": _decode(["19", 0]), "22": _decode(["20", 0]),
        "23": _save(["21", 0], "native_encode_v2v"), "24": _save(["22", 0], "pack_encode_v2v"),
    })
    entry = _run(comfy, prompt)
    decoded, v2v = _diff(comfy, entry, "17", "18"), _diff(comfy, entry, "23", "24")
    print(f"\nnative VAEEncode LATENT vs SVD Encode: SVD Decode mean |pixel| difference {decoded:.4f} / 255, "
          f"after SVD Sampler (denoise 0.6) {v2v:.4f} / 255")
    assert decoded < TOLERANCE and v2v < TOLERANCE, (decoded, v2v)


def test_a_latent_of_another_model_is_refused_by_name(comfy):
    """A 16-channel LATENT (SD3's empty latent) is no SVD latent: SVD Decode says so, naming its input, before it
    loads anything."""
    prompt = {
        "1": {"class_type": "SVDSuite_CheckpointLoader", "inputs": {"ckpt_name": "svd_suite_tiny.safetensors",
                                                                    "dtype": "float32"}},
        "2": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 4}},
        "3": _decode(["2", 0]),
        "4": _save(["3", 0], "refused"),
    }
    errors = comfy.run_failing(prompt, 120)
    assert errors and errors[0]["node_type"] == "SVDSuite_Decode", errors
    message = errors[0]["exception_message"]
    assert "SVDSuite_Decode: input 'latent'" in message and "(4, 16, 8, 8)" in message, message
