"""Injectable layer operations (issue 13 item 4): the model built from ComfyUI's own ops gives torch.nn's outputs,
fp8 weight storage (ComfyUI's and the engine's `svd_core.ops.cast` + `store_fp8`) stays near bf16 weights, and the
UNet takes ComfyUI's ControlNet `control` residuals exactly as ComfyUI's own video UNet does.

ComfyUI (the copy the real-ComfyUI tests use, `tests/comfyui/comfy_harness.comfyui_dir`) is imported in-process
with `--cpu` for its `comfy.ops` classes and its `UNetModel`; nothing of the pack is imported through it."""
import sys
from pathlib import Path

import pytest
import torch

from svd_core import ops
from svd_core.model import build
from svd_core.testing import TINY, tiny_model

sys.path.insert(0, str(Path(__file__).parent / "comfyui"))

FP8_REL_TOL = 0.2  # relative L2 error of a UNet output with fp8_e4m3fn weights vs bf16 weights (measured 0.13)


@pytest.fixture(scope="module")
def comfy():
    from comfy_harness import comfyui_dir

    path = str(comfyui_dir())
    if path not in sys.path:
        sys.path.insert(0, path)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # no accelerator: ComfyUI's device probing must not look for CUDA
    import comfy.model_detection
    import comfy.ops

    return comfy


@pytest.fixture(scope="module")
def reference():
    return tiny_model(TINY, seed=0)


def _built(reference, operations, dtype=torch.float32):
    model = build(TINY, device="meta", operations=operations)
    model.load_state_dict(reference.state_dict(), assign=True)
    return model.to(dtype).eval()


def _unet_inputs(seed=1):
    u, frames = TINY.unet, TINY.num_frames
    g = torch.Generator().manual_seed(seed)
    b = 2 * frames  # the guided batch: uncond + cond
    return dict(x=torch.randn(b, u.in_channels, 8, 8, generator=g), timesteps=torch.rand(b, generator=g) * 10,
                context=torch.randn(b, 1, u.context_dim, generator=g), y=torch.randn(b, u.adm_in_channels, generator=g),
                num_video_frames=frames, image_only_indicator=torch.zeros(2, frames))


def _run(unet, inputs, dtype=None, **kw):
    args = {k: (v.to(dtype) if dtype and k in ("x", "context", "y") else v) for k, v in inputs.items()}
    with torch.inference_mode():
        return unet(**args, **kw).float()


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_same_keys_whatever_the_operations(reference, comfy):
    for operations in (comfy.ops.manual_cast, comfy.ops.disable_weight_init, ops.cast):
        model = build(TINY, device="meta", operations=operations)
        assert list(model.state_dict()) == list(reference.state_dict())
        linear = model.unet.input_blocks[1][1].transformer_blocks[0].attn1.to_q
        assert isinstance(linear, operations.Linear)
        norm = model.unet.out[0]  # GroupNorm32 rebuilt on the namespace's GroupNorm
        assert isinstance(norm, operations.GroupNorm) and ops.casts_weights(norm)
    assert not ops.casts_weights(reference.unet.out[0])


def test_comfy_manual_cast_matches_torch_nn(reference, comfy):
    cast = _built(reference, comfy.ops.manual_cast)
    inputs = _unet_inputs()
    expected = _run(reference.unet, inputs)
    torch.testing.assert_close(_run(cast.unet, inputs), expected, rtol=1e-4, atol=1e-4)
    z = torch.randn(TINY.num_frames, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        torch.testing.assert_close(cast.first_stage_model.decode(z, TINY.num_frames),
                                   reference.first_stage_model.decode(z, TINY.num_frames), rtol=1e-4, atol=1e-4)
        image = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3)) * 2 - 1
        torch.testing.assert_close(cast.conditioner.vae_encoder(image),
                                   reference.conditioner.vae_encoder(image), rtol=1e-4, atol=1e-4)


def test_fp8_weights_near_bf16_weights(reference, comfy):
    inputs = _unet_inputs()
    bf16 = _run(_built(reference, None, torch.bfloat16).unet, inputs, torch.bfloat16)
    # ComfyUI's way: manual_cast layers, weights stored fp8_e4m3fn, bf16 activations
    comfy_fp8 = _built(reference, comfy.ops.manual_cast, torch.bfloat16)
    for m in comfy_fp8.unet.modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d)):
            m.weight.data = m.weight.data.to(torch.float8_e4m3fn)
    out_comfy = _run(comfy_fp8.unet, inputs, torch.bfloat16)
    # the engine's own path (the CLI's --fp8-weights)
    engine = _built(reference, ops.cast)
    ops.store_fp8(engine.unet, torch.bfloat16)
    assert ops.compute_dtype(engine.unet) == torch.bfloat16
    fp8_bytes = sum(m.weight.numel() for m in engine.unet.modules() if isinstance(m, torch.nn.Linear))
    assert sum(m.weight.nbytes for m in engine.unet.modules() if isinstance(m, torch.nn.Linear)) == fp8_bytes
    out_engine = _run(engine.unet, inputs, torch.bfloat16)
    assert torch.isfinite(out_engine).all()
    assert 0 < _rel(out_engine, bf16) < FP8_REL_TOL
    torch.testing.assert_close(out_engine, out_comfy, rtol=0, atol=0)  # same casts, same maths


def test_store_fp8_needs_casting_layers(reference):
    with pytest.raises(ValueError, match="operations=svd_core.ops.cast"):
        ops.store_fp8(_built(reference, None).unet)


def _control(reference, inputs, seed=4):
    shapes = []
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append(o.shape)) for m in reference.unet.input_blocks]
    _run(reference.unet, inputs)
    for hook in hooks:
        hook.remove()
    g = torch.Generator().manual_seed(seed)
    # each list is consumed from its end: "input" block 0 takes the last entry, "output" block 0 the last skip
    return {"input": [torch.randn(s, generator=g) for s in reversed(shapes)],
            "middle": [torch.randn(shapes[-1], generator=g)],
            "output": [torch.randn(s, generator=g) for s in shapes]}


def test_control_residuals_match_comfy_video_unet(reference, comfy):
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    sd = reference.state_dict()
    config = comfy.model_detection.detect_unet_config(sd, "model.diffusion_model.")
    config.update(num_heads=-1, num_head_channels=TINY.unet.num_head_channels, attn_precision=torch.float32)
    theirs = UNetModel(**config, operations=comfy.ops.disable_weight_init, device="cpu").eval()
    prefix = "model.diffusion_model."
    theirs.load_state_dict({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)})
    inputs = _unet_inputs()
    control = _control(reference, inputs)
    copy = lambda: {k: list(v) for k, v in control.items()}  # noqa: E731 - ComfyUI pops the lists it gets
    lengths = {k: len(v) for k, v in control.items()}
    ours = _run(reference.unet, inputs, control=control)
    assert {k: len(v) for k, v in control.items()} == lengths  # our UNet leaves the caller's lists alone
    args = dict(inputs, transformer_options={})
    with torch.inference_mode():
        expected = theirs(**args, control=copy()).float()
        plain = theirs(**args).float()
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    assert (ours - plain).abs().max() > 0.1  # the residuals changed the output
    torch.testing.assert_close(_run(reference.unet, inputs, control={"input": [], "middle": [None]}),
                               _run(reference.unet, inputs), rtol=0, atol=0)


def test_control_residual_of_wrong_shape_is_named(reference):
    inputs = _unet_inputs()
    with pytest.raises(ValueError, match="control residual for middle block 0 has shape"):
        _run(reference.unet, inputs, control={"middle": [torch.zeros(1, 3, 2, 2)]})
