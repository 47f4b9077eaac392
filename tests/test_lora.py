"""Camera-motion LoRAs (svd_core.lora): identity at zero up-weights, merged == unmerged, stacking is additive,
bit-exact unmerge, file round trips in native / PEFT / kohya naming, errors naming missing layers."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from svd_core import lora as L
from svd_core.denoiser import VideoCond
from svd_core.testing import tiny_model
from svd_core.variants import TINY

# TINY's widths with two UNet levels: the real key layout (temporal blocks at every attention level), fast on CPU
MICRO = replace(TINY, name="micro", unet=replace(TINY.unet, channel_mult=(1, 2), num_res_blocks=1,
                                                 attention_resolutions=(1, 2)),
                vae=replace(TINY.vae, num_res_blocks=1), height=64, width=64)
T = 4


def tiny_lora_file(path: Path, variant: str = "tiny", seed: int = 0, rank: int = 4, motion_label: str = "pan_left",
                   naming: str = "native") -> None:
    """Factory for workflow tests: a random LoRA (non-zero up weights) for a tiny checkpoint of `variant`."""
    from svd_core.model import build
    from svd_core.testing import TINY_VARIANTS

    model = build(TINY_VARIANTS[variant], device="meta")  # layer names and shapes only
    adapter = L.create_lora(model, rank=rank, seed=seed, motion_label=motion_label, device="cpu")
    _randomize_up(adapter, seed)
    L.save_lora(adapter, path, naming=naming, model=model)


def _randomize_up(adapter: L.LoRA, seed: int, scale: float = 0.2) -> None:
    gen = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for _, layer in adapter.items():
            layer.up.copy_(torch.randn(layer.up.shape, generator=gen) * scale)


@pytest.fixture(scope="module")
def model():
    return tiny_model(MICRO, seed=0)


@pytest.fixture(scope="module")
def inputs(model):
    gen = torch.Generator().manual_seed(3)
    spec = model.spec
    x = torch.randn(T, 4, 8, 8, generator=gen)
    sigma = torch.full((T,), 1.5)
    # two context tokens, so attn2.to_q / to_k matter too (the one-token fast path skips them)
    cond = VideoCond(torch.randn(T, 2, spec.clip.embed_dim, generator=gen), torch.randn(T, 4, 8, 8, generator=gen),
                     torch.randn(T, spec.adm_in_channels, generator=gen))
    return x, sigma, cond


def _run(model, inputs):
    x, sigma, cond = inputs
    with torch.no_grad():
        return model.denoise(x, sigma, cond, T)


def _lora(model, seed, rank=4, include_ff=False, up=True):
    adapter = L.create_lora(model, rank=rank, seed=seed, include_ff=include_ff, motion_label=f"m{seed}")
    if up:
        _randomize_up(adapter, seed)
    return adapter


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_targets_default_and_ff(model):
    attn = L.create_lora(model, seed=0)
    n_blocks = len({p.rsplit(".time_stack", 1)[0] for p in attn.paths})
    assert n_blocks >= 3 and len(attn.layers) == 8 * n_blocks
    assert attn.rank == 16 and attn.alpha == 16.0  # paper default rank 16
    assert all(p.split(".time_stack.0.")[1] in L.TEMPORAL_ATTN for p in attn.paths)
    ff = L.create_lora(model, seed=0, include_ff=True)
    assert len(ff.layers) == 12 * n_blocks and ff.include_ff
    # shapes: down (r, in), up (out, r)
    mods = dict(model.named_modules())
    for p, layer in ff.items():
        assert layer.down.shape == (16, mods[p].in_features) and layer.up.shape == (mods[p].out_features, 16)


def test_zero_up_is_identity(model, inputs):
    ref = _run(model, inputs)
    adapter = _lora(model, 1, up=False)  # fresh LoRA: up = 0
    with L.attach(model, [(adapter, 1.0)]):
        out = _run(model, inputs)
    assert torch.equal(out, ref)
    # also merged: W + 0 == W exactly
    record = L.merge(model, [(adapter, 3.0)])
    assert torch.equal(_run(model, inputs), ref)
    L.unmerge(model, record)


def test_adapter_changes_output_and_switches_at_run_time(model, inputs):
    ref = _run(model, inputs)
    adapter = _lora(model, 2)
    with L.attach(model, [(adapter, 1.0)]) as handle:
        on = _run(model, inputs)
        handle.enabled = False
        off = _run(model, inputs)
        handle.enabled = True
        handle.strengths[0] = 0.0
        zero = _run(model, inputs)
    assert (on - ref).abs().max() > 1e-2
    assert torch.equal(off, ref) and torch.equal(zero, ref)
    assert torch.equal(_run(model, inputs), ref)  # removed: no hooks left


def test_merged_equals_unmerged_and_unmerge_is_exact(model, inputs):
    a, b = _lora(model, 3), _lora(model, 4, rank=8, include_ff=True)
    stack = [(a, 0.8), (b, -0.6)]
    before = _weights(model)
    with L.attach(model, stack):
        unmerged = _run(model, inputs)
    record = L.merge(model, stack)
    merged = _run(model, inputs)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all(".time_stack.0." in k for k in changed)
    L.unmerge(model, record)
    err = (merged - unmerged).abs().max().item()
    print(f"merged vs unmerged max abs error {err:.3g} (output scale {unmerged.abs().max().item():.3g})")
    assert err < 1e-4
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # bit for bit


def test_stacking_is_additive(model, inputs):
    a, b = _lora(model, 5), _lora(model, 6, include_ff=True)
    # additive in the weights: merged delta of the stack = sum of the single deltas
    before = _weights(model)
    deltas = []
    for stack in ([(a, 0.7)], [(b, 1.3)], [(a, 0.7), (b, 1.3)]):
        record = L.merge(model, stack)
        deltas.append({k: v - before[k] for k, v in model.state_dict().items()})
        L.unmerge(model, record)
    err = max((deltas[2][k] - deltas[0][k] - deltas[1][k]).abs().max().item() for k in before)
    print(f"stacking: weight delta error {err:.3g}")
    assert err < 1e-6
    # and in the layer outputs (unmerged): one adapted layer's output is base + delta_a + delta_b
    path = next(p for p in a.paths if p.endswith("attn1.to_q"))
    lin = dict(model.named_modules())[path]
    x = torch.randn(5, lin.in_features)
    with torch.no_grad():
        base = lin(x)
        with L.attach(model, [(a, 0.7)]):
            ya = lin(x)
        with L.attach(model, [(b, 1.3)]):
            yb = lin(x)
        with L.attach(model, [(a, 0.7), (b, 1.3)]):
            yab = lin(x)
    assert torch.allclose(yab - base, (ya - base) + (yb - base), atol=1e-6)
    assert (ya - base).abs().max() > 1e-3
    # strength scales linearly: s = 2 doubles the delta
    with torch.no_grad(), L.attach(model, [(a, 1.4)]):
        y2 = lin(x)
    assert torch.allclose(y2 - base, 2 * (ya - base), atol=1e-6)


def test_patched_copy_and_view_leave_the_shared_model_unchanged(model, inputs):
    a = _lora(model, 7)
    before = _weights(model)
    ref = _run(model, inputs)
    with L.attach(model, [(a, 0.9)]):
        expected = _run(model, inputs)
    for merged in (False, True):
        view = L.LoRAView(model, [(a, 0.9)], merged=merged)
        out = view.denoise(*inputs, T)
        assert torch.allclose(out, expected, atol=1e-4), merged
        assert view.spec is model.spec and view.conditioner is model.conditioner
    assert torch.equal(_run(model, inputs), ref)  # the base model itself is untouched
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # the patched copy shares every tensor it did not merge
    copy_model = L.patched_copy(model, [(a, 0.9)])
    shared = {id(p) for p in model.parameters()}
    own = [n for n, p in copy_model.named_parameters() if id(p) not in shared]
    assert sorted(own) == sorted(f"{p}.weight" for p in a.paths)
    # a view of a view stacks; disabled view is the base model
    v2 = L.LoRAView(L.LoRAView(model, [(a, 0.5)]), [(a, 0.4)])
    assert len(v2.stack) == 2 and torch.allclose(v2.denoise(*inputs, T), expected, atol=1e-4)
    assert torch.equal(L.LoRAView(model, [(a, 0.9)], enabled=False).denoise(*inputs, T), ref)


@pytest.mark.parametrize("naming", ["native", "peft", "kohya"])
def test_file_round_trip(model, inputs, tmp_path, naming):
    a = _lora(model, 8, rank=4, include_ff=True)
    a.alpha = 2.0
    for _, layer in a.items():
        layer.alpha = 2.0  # scale 0.5: alpha must survive (PEFT folds it into lora_B)
    path = L.save_lora(a, tmp_path / f"{naming}.safetensors", naming=naming, model=model)
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        meta = json.loads(f.metadata()[L.METADATA_KEY])
    if naming == "native":
        assert all(k.startswith("model.diffusion_model.") for k in keys)
        assert meta["rank"] == 4 and meta["alpha"] == 2.0 and meta["include_ff"] is True
        assert meta["motion_label"] == "m8" and meta["base_variant"] == "micro"
        assert set(meta["target_modules"]) == set(L.TEMPORAL_ATTN + L.TEMPORAL_FF)
    elif naming == "peft":
        assert all(k.startswith("unet.") and ".temporal_transformer_blocks.0." in k for k in keys)
        assert any(k.endswith(".lora_A.weight") for k in keys)
    else:
        assert all(k.startswith("lora_unet_") and "temporal_transformer_blocks_0" in k for k in keys)
    b = L.load_lora(path, model)
    assert sorted(b.paths) == sorted(a.paths)
    with L.attach(model, [(a, 1.0)]):
        ya = _run(model, inputs)
    with L.attach(model, [(b, 1.0)]):
        yb = _run(model, inputs)
    assert torch.allclose(ya, yb, atol=1e-5)
    # written atomically: no temp file left behind
    assert [p.name for p in tmp_path.iterdir()] == [f"{naming}.safetensors"]


def test_community_namings(model, inputs, tmp_path):
    """kohya with sgm names and diffusers attention-processor names resolve to the same layers."""
    a = _lora(model, 9, rank=2)
    sd_kohya_sgm, sd_proc = {}, {}
    for path, layer in a.items():
        short = path[len("model.diffusion_model."):]
        name = "lora_unet_" + short.replace(".", "_")
        sd_kohya_sgm[f"{name}.lora_down.weight"] = layer.down.detach().clone()
        sd_kohya_sgm[f"{name}.lora_up.weight"] = layer.up.detach().clone()
        sd_kohya_sgm[f"{name}.alpha"] = torch.tensor(2.0)
    peft = L.lora_state_dict(a, "peft", model)
    for k, v in peft.items():  # unet.<diff>.attn1.to_q.lora_A.weight -> <diff>.attn1.processor.to_q_lora.down.weight
        mod, role = k[len("unet."):].rsplit(".lora_", 1)
        head, proj = mod.rsplit(".", 1) if not mod.endswith("to_out.0") else (mod[:-len(".to_out.0")], "to_out")
        sd_proc[f"{head}.processor.{proj}_lora.{'down' if role.startswith('A') else 'up'}.weight"] = v
    save_file(sd_kohya_sgm, str(tmp_path / "k.safetensors"))
    save_file(sd_proc, str(tmp_path / "p.safetensors"))
    with L.attach(model, [(a, 1.0)]):
        ref = _run(model, inputs)
    for f in ("k", "p"):
        b = L.load_lora(tmp_path / f"{f}.safetensors", model)
        assert sorted(b.paths) == sorted(a.paths), f
        with L.attach(model, [(b, 1.0)]):
            assert torch.allclose(_run(model, inputs), ref, atol=1e-5), f


def test_errors_name_missing_layers_and_bad_shapes(model, tmp_path):
    a = _lora(model, 10, rank=2)
    sd = L.lora_state_dict(a)
    bad = dict(sd)
    bad["model.diffusion_model.input_blocks.9.1.time_stack.0.attn1.to_q.lora_down.weight"] = torch.zeros(2, 32)
    bad["model.diffusion_model.input_blocks.9.1.time_stack.0.attn1.to_q.lora_up.weight"] = torch.zeros(32, 2)
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(L.LoRAError, match=r"does not have: .*input_blocks\.9\.1\.time_stack\.0\.attn1\.to_q"):
        L.load_lora(tmp_path / "bad.safetensors", model)
    # a file for the full-size model: shapes name the layer and the expected shapes
    path = next(iter(sd)).rsplit(".lora_", 1)[0]
    wrong = {k: (torch.zeros(2, 999) if k == f"{path}.lora_down.weight" else v) for k, v in sd.items()}
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(L.LoRAError, match=rf"{path.replace('.', '[.]')} has down \(2, 999\)"):
        L.load_lora(tmp_path / "wrong.safetensors", model)
    save_file({"something.else": torch.zeros(1)}, str(tmp_path / "junk.safetensors"))
    with pytest.raises(L.LoRAError, match="not LoRA weights"):
        L.load_lora(tmp_path / "junk.safetensors", model)
    with pytest.raises(L.LoRAError, match="does not exist"):
        L.load_lora(tmp_path / "absent.safetensors", model)
    # a LoRA built for another model cannot be attached: names the layers
    other = tiny_model(replace(MICRO, unet=replace(MICRO.unet, channel_mult=(1,), attention_resolutions=(1,))), 0)
    with pytest.raises(L.LoRAError, match="does not have"):
        L.attach(other, [(a, 1.0)])


def test_training_gradients_reach_only_the_adapter(model, inputs):
    adapter = L.create_lora(model, rank=2, seed=11)
    x, sigma, cond = inputs
    with L.attach(model, [(adapter, 1.0)]):
        loss = model.denoise(x, sigma, cond, T).square().mean()
        loss.backward()
    ups = [layer.up.grad for _, layer in adapter.items()]
    assert all(g is not None for g in ups) and any(g.abs().max() > 0 for g in ups)
    assert all(p.grad is None for p in model.parameters())  # the base stays frozen


def test_parity_with_peft_on_the_diffusers_unet(tmp_path):
    """A LoRA made by PEFT on diffusers' SVD UNet (same random weights), saved as diffusers does (`unet.` keys,
    the LoraConfig in "lora_adapter_metadata", alpha_pattern), gives our UNet the same output as PEFT gives diffusers."""
    import sys

    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    from svd_core.convert import state_dict_sgm_to_diffusers, unet_layout

    sys.path.insert(0, str(Path(__file__).parent))
    from test_engine import _diffusers_unet

    frames = 3
    model = tiny_model(seed=0)
    spec = model.spec.unet
    ref = _diffusers_unet(spec, frames).eval()
    ref.load_state_dict(state_dict_sgm_to_diffusers(model.unet.state_dict(), "unet", **unet_layout(spec)), strict=True)
    cfg = LoraConfig(r=4, lora_alpha=8, alpha_pattern={"attn2.to_v": 2}, init_lora_weights=False,
                     target_modules=r".*temporal_transformer_blocks\.0\.(attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)")
    torch.manual_seed(0)
    inject_adapter_in_model(cfg, ref)
    sd = {f"unet.{k}": v.contiguous() for k, v in get_peft_model_state_dict(ref).items()}
    meta = {"format": "pt", "lora_adapter_metadata": json.dumps(cfg.to_dict(), default=list)}
    save_file(sd, str(tmp_path / "peft.safetensors"), metadata=meta)
    adapter = L.load_lora(tmp_path / "peft.safetensors", model)
    assert len(adapter.layers) == len(L.target_modules(model))
    assert {layer.alpha for _, layer in adapter.items()} == {8.0, 2.0}

    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, frames, 8, 8, 8, generator=g)
    c_noise = 0.25 * torch.tensor([2.0]).log()
    ctx = torch.randn(1, 2, spec.context_dim, generator=g)  # two tokens: attn2.to_q/to_k adapters count too
    ids = torch.tensor([[6.0, 127.0, 0.02]])
    with torch.no_grad():
        expected = ref(x, c_noise, encoder_hidden_states=ctx, added_time_ids=ids).sample.flatten(0, 1)
        y = model.conditioner.vector({"fps_id": ids[:, 0], "motion_bucket_id": ids[:, 1], "cond_aug": ids[:, 2]})

        def ours():
            return model.unet(x.flatten(0, 1), c_noise.repeat_interleave(frames),
                              context=ctx.repeat_interleave(frames, 0), y=y.repeat_interleave(frames, 0),
                              num_video_frames=frames)

        base = ours()
        with L.attach(model, [(adapter, 1.0)]):
            got = ours()
    err = (got - expected).abs().max().item()
    print(f"LoRA vs PEFT on diffusers: max abs {err:.2e}; LoRA effect {(expected - base).abs().max().item():.2e}")
    assert (expected - base).abs().max() > 1e-2  # the adapter matters
    assert err < 1e-4
