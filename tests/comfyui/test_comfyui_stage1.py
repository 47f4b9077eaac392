"""Stage I node (paper Sec. 4.1, App. D.2) in a real ComfyUI: SD 2.x checkpoint in models/checkpoints -> video model
file next to it, values checked; an existing file is refused (node and input named) and left as it was."""
from __future__ import annotations

import json

import torch

NODE = "SVDSuite_Stage1FromSD2"


def _prompt(ckpt, filename, prediction="v", overwrite=False):
    return {"1": {"class_type": NODE, "inputs": {"ckpt_name": ckpt, "prediction": prediction, "filename": filename,
                                                 "overwrite": overwrite}}}


def test_stage1_node_writes_the_video_model_and_refuses_to_overwrite(comfy, object_info):
    from safetensors.torch import load_file

    from svd_core import testing
    from svd_core.loading import load

    info = object_info[NODE]
    assert info["category"] == "svd/training" and all(info["output_tooltips"])
    ckpts = comfy.base / "models" / "checkpoints"
    src = ckpts / "svd_suite_tiny_sd2.safetensors"
    if not src.exists():
        testing.make_tiny_sd2_checkpoint(src, seed=2)
    out = ckpts / "svd_suite_stage1_node.safetensors"
    entry, _ = comfy.run(_prompt(src.name, out.name), 180)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    model = load(out)
    assert model.spec.source_prediction == "v" and model.spec.cond_mode == "text"
    sd2, sd = load_file(src), model.state_dict()
    unet_key = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.attn2.to_v.weight"
    assert torch.equal(sd[unet_key], sd2[unet_key])
    vae_key = "first_stage_model.decoder.conv_out.weight"
    assert torch.equal(sd[vae_key], sd2[vae_key])
    zero = "model.diffusion_model.input_blocks.1.0.time_stack.out_layers.3.weight"
    assert not sd[zero].any() and sd["model.diffusion_model.input_blocks.1.0.time_stack.in_layers.2.weight"].any()

    before = out.read_bytes()
    errors = comfy.run_failing(_prompt(src.name, out.name, prediction="eps"), 180)
    assert errors and errors[0]["node_type"] == NODE
    assert f"{NODE}: input 'filename'" in errors[0]["exception_message"]
    assert "overwrite" in errors[0]["exception_message"]
    assert out.read_bytes() == before

    refused = comfy.post_prompt(_prompt(src.name, "../escape.safetensors", prediction="eps"))
    assert refused.status_code == 400  # refused by validate_inputs, before anything runs
    assert f"{NODE}: input 'filename': '../escape.safetensors' must be a plain name" in refused.text
    assert not (ckpts.parent / "escape.safetensors").exists()

    entry, _ = comfy.run(_prompt(src.name, out.name, prediction="eps", overwrite=True), 180)
    assert entry["status"]["status_str"] == "success"
    assert load(out).spec.source_prediction == "eps"
