"""Native ComfyUI types over the svd_core model (nodes/native.py, issue 13 items 2-4), inside a real ComfyUI import
(`--cpu`, in a subprocess so ComfyUI's globals stay out of the test process): the loader's MODEL / VAE / CLIP_VISION
share the bundle's tensors, one ModelPatcher per stage, the native VAE and CLIP_VISION give the engine's values.
Graph-level parity (native KSampler, SamplerCustomAdvanced, LoRA patches): tests/comfyui/test_comfyui_nodes.py."""
import textwrap

import pytest
from comfy_harness import run_in_comfyui

pytestmark = pytest.mark.slow  # one ComfyUI import in a subprocess (~20-60 s on 2 busy cores) for all the checks

SCRIPT = textwrap.dedent(r'''
    import os
    import torch
    import comfy.model_management as mm
    from svd_core.testing import make_tiny_checkpoint
    from svd_core import pipeline
    from svd_suite.nodes import conditioning, loaders

    ckpts = folder_paths.get_folder_paths("checkpoints")[0]
    os.makedirs(ckpts, exist_ok=True)
    make_tiny_checkpoint(os.path.join(ckpts, "tiny.safetensors"))
    bundle, model, clip_vision, vae = loaders.CheckpointLoader.execute("tiny.safetensors", "float32").args
    svd = bundle.model
    out = {}
    unet = {k: v.data_ptr() for k, v in svd.unet.state_dict().items()}
    native = {k: v for k, v in model.model.state_dict().items()}
    out["unet_keys"] = len(unet)
    out["native_unet_keys"] = sorted(k for k in native if k.startswith("diffusion_model."))[:3]
    out["same_tensors"] = unet == {k[len("diffusion_model."):]: v.data_ptr() for k, v in native.items()
                                   if k.startswith("diffusion_model.")}
    out["other_keys"] = sorted(k for k in native if not k.startswith("diffusion_model."))
    out["vae_same"] = all(a.data_ptr() == b.data_ptr() for a, b in zip(vae.first_stage.parameters(),
                                                                        svd.first_stage_model.parameters()))
    out["clip_same"] = clip_vision.conditioner is svd.conditioner
    stages = bundle.stages
    out["stage_sizes"] = {k: p.model_size() for k, p in stages.items()}
    out["whole_size"] = bundle.patcher.model_size()
    out["stages_cached"] = bundle.stages is stages and loaders.CheckpointLoader.execute(
        "tiny.safetensors", "float32").args[1] is stages["unet"]
    ms = model.model.model_sampling
    out["sampling"] = [float(ms.sigma_min), float(ms.sigma_max), float(ms.sigma_data),
                       type(model.model.latent_format).__name__, model.model.model_type.name]
    # native VAE: raw latents, the engine's decode / encode of the same video
    gen = torch.Generator().manual_seed(0)
    raw = torch.randn(4, 4, 8, 8, generator=gen)
    frames = pipeline.decode(svd, raw * svd.spec.scale_factor, 4)  # 1 t c h w in [0, 1]
    image = vae.decode(raw)  # t h w c
    out["vae_decode"] = [list(image.shape), float((image - frames[0].movedim(1, -1)).abs().max())]
    enc = vae.encode(image)
    ref = pipeline.encode(svd, image.movedim(-1, 1)[None]) / svd.spec.scale_factor
    out["vae_encode"] = [list(enc.shape), float((enc - ref).abs().max())]
    # native CLIP_VISION: the conditioning's image token for the same prepared image
    img = torch.rand(1, 64, 64, 3, generator=gen)
    cond, _, pos, neg, latent = conditioning.ImageConditioning.execute(bundle, img, 64, 64, 4, 7, 127, 0.02, "crop",
                                                                       0).args  # _ = fps
    emb = clip_vision.encode_image(img).image_embeds
    out["clip"] = [list(emb.shape), float((emb - cond.cond.crossattn[0, 0]).abs().max())]
    out["positive"] = [list(pos[0][0].shape), {k: (list(v.shape) if hasattr(v, "shape") else v)
                                                for k, v in pos[0][1].items()}]
    out["pos_latent"] = float((pos[0][1]["concat_latent_image"][0] - cond.cond.concat[0]).abs().max())
    out["negative_zero"] = float(neg[0][0].abs().max() + neg[0][1]["concat_latent_image"].abs().max())
    out["latent"] = list(latent["samples"].shape)
    # micro-conditioning vector from the native keys = the engine's
    y = model.model.encode_adm(**pos[0][1])
    out["adm"] = [list(y.shape), float((y[0] - cond.cond.vector[0]).abs().max())]
    # native SVD_img2vid_Conditioning on our CLIP_VISION and VAE (no augmentation: its noise differs from the
    # reference's) gives our node's conditioning at cond_aug 0 for an image already at the size
    from comfy_extras.nodes_video_model import SVD_img2vid_Conditioning

    ours0 = conditioning.ImageConditioning.execute(bundle, img, 64, 64, 4, 7, 127, 0.0, "crop", 0).args
    theirs = SVD_img2vid_Conditioning().encode(clip_vision, img, vae, 64, 64, 4, 127, 7, 0.0)
    out["native_node"] = [float((theirs[0][0][0] - ours0[2][0][0]).abs().max()),
                          float((theirs[0][0][1]["concat_latent_image"] - vae.encode(img)).abs().max()),
                          float((model.model.encode_adm(**theirs[0][0][1]) - model.model.encode_adm(**ours0[2][0][1]))
                                .abs().max()), list(theirs[2]["samples"].shape)]
    # SV3D: per-frame camera vectors travel whole; native KSampler = the pack's sampler (constant guidance 2.5)
    import nodes as comfy_nodes
    from svd_suite.nodes import guidance, sampling

    make_tiny_checkpoint(os.path.join(ckpts, "sv3d.safetensors"), "tiny_sv3d_p")
    sv3d, sv3d_model = loaders.CheckpointLoader.execute("sv3d.safetensors", "float32").args[:2]
    cond, pos, neg, latent = conditioning.OrbitConditioning.execute(sv3d, img, 64, 64, 5, "10", "", 1e-5, "crop",
                                                                    0).args
    scale = guidance.LinearGuidance.execute(2.5, 2.5).args[0]
    ours = sampling.Sampler.execute(sv3d, scale, "euler", "karras", 2, 5, 1.0, conditioning=cond).args[0]["samples"]
    native = comfy_nodes.common_ksampler(sv3d_model, 5, 2, 2.5, "euler", "karras", pos, neg, latent)[0]["samples"]
    from_native = sampling.Sampler.execute(sv3d, scale, "euler", "karras", 2, 5, 1.0, positive=pos, negative=neg,
                                           latent=latent).args[0]["samples"]
    out["sv3d"] = [list(pos[0][1]["svd_vector"].shape), float((pos[0][1]["svd_vector"] - cond.cond.vector).abs().max()),
                   float((ours - native).abs().max()), float((from_native - ours).abs().max()),
                   float(ours.abs().max())]
    # the vector from native keys = ComfyUI's own SVD_img2vid / SV3D_p encode_adm formulas (model_base.py)
    from comfy.ldm.modules.diffusionmodules.openaimodel import Timestep

    t256, t512 = Timestep(256), Timestep(512)
    expected = torch.cat([t256(torch.Tensor([6.0])), t256(torch.Tensor([127.0])), t256(torch.Tensor([0.02]))], 1)
    got = model.model.encode_adm(fps=7, motion_bucket_id=127, augmentation_level=0.02)
    elev, azim = [10.0, 20.0, -5.0, 0.0, 30.0], [0.0, 72.0, 144.0, 216.0, 288.0]
    exp3 = torch.cat([t256(torch.Tensor([1e-5])).expand(5, -1),
                      t512(torch.deg2rad(torch.fmod(90 - torch.Tensor(elev), 360.0))),
                      t512(torch.deg2rad(torch.fmod(torch.Tensor(azim), 360.0)))], 1)
    got3 = sv3d_model.model.encode_adm(augmentation_level=1e-5, elevation=elev, azimuth=azim)
    out["comfy_adm"] = [float((got - expected).abs().max()), list(got3.shape), float((got3 - exp3).abs().max())]
    # TorchCompileModel's mechanism (comfy_extras/nodes_torch_compile.py: clone + set_torch_compile_wrapper, an
    # APPLY_MODEL wrapper swapping in the compiled diffusion_model) on our native MODEL, with the aot_eager backend
    # (inductor takes minutes on a CPU); native KSampler with and without it. On a thin checkpoint of the tiny
    # model's structure (one res block, two levels): dynamo's and AOTAutograd's time grows with the traced graph,
    # ~2 min on 2 busy cores for the tiny UNet, 40% of its modules here
    from dataclasses import replace
    from comfy_api.torch_helpers import set_torch_compile_wrapper
    from svd_core.variants import TINY
    from torch._dynamo.utils import counters

    pos, neg, latent = ours0[2:]  # SVD Image Conditioning's native outputs for the tiny svd model
    eager = comfy_nodes.common_ksampler(model, 3, 2, 2.5, "euler", "karras", pos, neg, latent)[0]["samples"]
    out["eager_size"] = float(eager.abs().max())
    make_tiny_checkpoint(os.path.join(ckpts, "thin.safetensors"), replace(TINY, name="tiny_thin", unet=replace(
        TINY.unet, num_res_blocks=1, channel_mult=(1, 2), attention_resolutions=(2, 1))))
    thin, thin_model = loaders.CheckpointLoader.execute("thin.safetensors", "float32").args[:2]
    tpos, tneg, tlatent = conditioning.ImageConditioning.execute(thin, img, 64, 64, 4, 7, 127, 0.0, "crop",
                                                                 0).args[2:]
    thin_eager = comfy_nodes.common_ksampler(thin_model, 3, 2, 2.5, "euler", "karras", tpos, tneg,
                                             tlatent)[0]["samples"]
    compiled_model = thin_model.clone()
    set_torch_compile_wrapper(model=compiled_model, backend="aot_eager")
    torch._dynamo.reset()
    counters.clear()
    compiled = comfy_nodes.common_ksampler(compiled_model, 3, 2, 2.5, "euler", "karras", tpos, tneg, tlatent)[0]
    again = comfy_nodes.common_ksampler(thin_model, 3, 2, 2.5, "euler", "karras", tpos, tneg, tlatent)[0]["samples"]
    out["compile"] = [float((compiled["samples"] - thin_eager).abs().max()), float(thin_eager.abs().max()),
                      int(counters["frames"]["ok"]), int(counters["stats"]["unique_graphs"]),
                      float((again - thin_eager).abs().max()), "torch.compile" in str(thin_model.wrappers),
                      sum(1 for _ in thin.model.unet.modules()), sum(1 for _ in bundle.model.unet.modules())]
    # the loader's fp8_e4m3fn choice: the UNet is built on ComfyUI's manual_cast layers and its Linear / Conv
    # weights are stored in float8_e4m3fn; native KSampler stays near the float32 model's result
    import comfy.ops
    from svd_suite.nodes import _comfy

    def weight_kinds(unet):
        return sorted({str(m.weight.dtype) for m in unet.modules()
                       if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d))})

    fp8_bundle, fp8_model = loaders.CheckpointLoader.execute("tiny.safetensors", "fp8_e4m3fn").args[:2]
    fp8_out = comfy_nodes.common_ksampler(fp8_model, 3, 2, 2.5, "euler", "karras", pos, neg, latent)[0]["samples"]
    linear = next(m for m in fp8_bundle.model.unet.modules() if isinstance(m, torch.nn.Linear))
    out["fp8"] = [weight_kinds(fp8_bundle.model.unet), isinstance(linear, comfy.ops.manual_cast.Linear),
                  float((fp8_out - eager).norm() / eager.norm()), weight_kinds(bundle.model.unet)]
    # --lowvram: the UNet is built on comfy.ops layers (what ModelPatcher streams weight by weight), same results
    before, mm.vram_state = mm.vram_state, mm.VRAMState.LOW_VRAM
    try:
        low_bundle, low_model = loaders.CheckpointLoader.execute("tiny.safetensors", "float32").args[:2]
        low_out = comfy_nodes.common_ksampler(low_model, 3, 2, 2.5, "euler", "karras", pos, neg, latent)[0]
    finally:
        mm.vram_state = before
    linear = next(m for m in low_bundle.model.unet.modules() if isinstance(m, torch.nn.Linear))
    out["lowvram"] = [low_bundle is not bundle, isinstance(linear, comfy.ops.disable_weight_init.Linear),
                      hasattr(linear, "comfy_cast_weights"), float((low_out["samples"] - eager).abs().max()),
                      _comfy.host_operations("auto") is None]
    print("RESULT " + json.dumps(out))
''')


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return run_in_comfyui(SCRIPT, tmp_path_factory.mktemp("native"))


def test_native_model_is_the_bundle_unet_no_second_copy(run):
    """Every UNet tensor of the native MODEL is the bundle's own (same data_ptr), under `diffusion_model.` +
    the reference key, as ComfyUI's own SVD model names them; the VAE and CLIP_VISION wrap the same modules."""
    assert run["same_tensors"] and run["unet_keys"] > 100
    assert all(k.startswith("diffusion_model.") for k in run["native_unet_keys"])
    assert run["other_keys"] == ["model_sampling.log_sigmas", "model_sampling.sigmas"]
    assert run["vae_same"] and run["clip_same"]


def test_one_patcher_per_stage_adding_up_to_the_whole_model(run):
    sizes = run["stage_sizes"]
    assert set(sizes) == {"unet", "vae", "conditioner"} and all(v > 0 for v in sizes.values())
    # the native model's size adds only the sigma tables (2 x 1000 float32) to the UNet's
    assert abs(sum(sizes.values()) - run["whole_size"]) <= 2 * 1000 * 4
    assert run["stages_cached"]  # a second load of the same file gives the same stage patchers


def test_native_model_samples_like_comfyuis_svd(run):
    """EDM v-prediction, sigma_data 1, sigmas 0.002..700, SD15 latent format (comfy/supported_models.py
    SVD_img2vid)."""
    lo, hi, sd, fmt, kind = run["sampling"]
    assert abs(lo - 0.002) < 1e-6 and abs(hi - 700.0) < 1e-2 and sd == 1.0
    assert (fmt, kind) == ("SD15", "V_PREDICTION_EDM")


def test_native_vae_and_clip_vision_give_the_engine_values(run):
    shape, diff = run["vae_decode"]
    assert shape == [4, 64, 64, 3] and diff < 1e-5
    shape, diff = run["vae_encode"]
    assert shape == [4, 4, 8, 8] and diff < 1e-4
    shape, diff = run["clip"]
    assert shape[0] == 1 and diff < 1e-5


def test_native_conditioning_carries_the_reference_values(run):
    """positive: the clean image's token (1 1 d), the frame latent noised once in [-1, 1] (the engine's concat),
    fps 7 (embedded as fps_id 6), motion bucket 127, cond_aug 0.02; negative: zeros; the vector the native model
    builds from those keys equals the engine's per-frame vector."""
    shape, keys = run["positive"]
    assert shape[:2] == [1, 1]
    assert keys["fps"] == 7 and keys["motion_bucket_id"] == 127 and keys["augmentation_level"] == 0.02
    assert keys["concat_latent_image"] == [1, 4, 8, 8] and run["pos_latent"] == 0.0
    assert run["negative_zero"] == 0.0 and run["latent"] == [4, 4, 8, 8]
    shape, diff = run["adm"]
    assert shape[0] == 1 and diff < 1e-6


def test_sv3d_orbit_conditioning_drives_native_sampling(run):
    """SV3D Orbit Conditioning's native outputs carry the per-frame camera vector (`svd_vector`, t x adm); native
    KSampler on them equals the pack's sampler (both LATENTs hold the raw VAE latent, issue 13 item 1), and the pack's
    sampler fed the native positive / negative / latent equals it too."""
    shape, vec_diff, parity, from_native, size = run["sv3d"]
    assert shape[0] == 5 and vec_diff == 0.0
    assert parity < 1e-3 * max(1.0, size) and from_native < 1e-5


def test_native_svd_conditioning_node_runs_on_our_clip_vision_and_vae(run):
    """ComfyUI's own SVD_img2vid_Conditioning takes the loader's CLIP_VISION and VAE; without augmentation (its noise
    is not the reference's, see the parity test's docstring) its positive has SVD Image Conditioning's CLIP token
    and micro-conditioning vector at cond_aug 0. Its frame latent is the first stage's encoding (the native VAE),
    where the reference (and the pack) use the conditioner's own encoder copy (`conditioner.embedders.3.encoder`,
    random and different in the tiny test model)."""
    token, latent, vector, shape = run["native_node"]
    assert token < 1e-5 and latent < 1e-4 and vector < 1e-6 and shape == [4, 4, 8, 8]


def test_native_keys_embed_as_comfyuis_own_svd_and_sv3d_models(run):
    """The native model's micro-conditioning from CONDITIONING keys equals ComfyUI's own `SVD_img2vid.encode_adm`
    (fps - 1, motion bucket, augmentation, 256-wide sinusoids) and `SV3D_p.encode_adm` (per-frame 90 - elevation and
    azimuth in radians, 512 wide), so conditioning made for ComfyUI's SVD / SV3D models drives ours the same."""
    svd_diff, shape, sv3d_diff = run["comfy_adm"]
    assert svd_diff < 1e-6 and shape == [5, 1280] and sv3d_diff < 1e-6


def test_torch_compile_model_wrapper_on_our_native_model(run):
    """ComfyUI's TorchCompileModel (clone + `set_torch_compile_wrapper`, here with backend aot_eager: the graph
    inductor would get) on the loader's MODEL: native KSampler runs through the compiled diffusion model (dynamo
    captured frames and graphs) and gives the uncompiled samples; the original MODEL stays uncompiled. The MODEL is
    the loader's of a thin checkpoint (the tiny model's blocks, one res block and two levels: the same code paths,
    fewer repeats for dynamo and AOTAutograd to trace)."""
    diff, size, frames, graphs, again, leaked, thin_modules, tiny_modules = run["compile"]
    assert 0 < thin_modules < tiny_modules
    assert frames > 0 and graphs > 0
    assert size > 0 and diff < 1e-4 * max(1.0, size)
    assert again == 0.0 and not leaked


def test_fp8_weights_and_lowvram_streaming_layers_on_the_native_model(run):
    """The loaders' dtype fp8_e4m3fn stores the UNet's Linear / Conv weights in float8_e4m3fn on ComfyUI's
    manual_cast layers (as --fp8_e4m3fn-unet does for native models; float32 compute on this CPU) and samples near
    the float32 model (8-bit weights: a few per cent); under --lowvram the UNet is built on comfy.ops layers, which
    ModelPatcher streams, with the same result up to summation order (the engine's fused fast paths step aside);
    otherwise the engine's own layers (None)."""
    kinds, manual_cast, rel, plain_kinds = run["fp8"]
    assert kinds == ["torch.float8_e4m3fn"] and manual_cast and plain_kinds == ["torch.float32"]
    assert 1e-4 < rel < 0.3, rel
    separate, comfy_layer, streams, diff, default_none = run["lowvram"]
    assert separate and comfy_layer and streams and default_none
    size = run["eager_size"]  # the float32 latent's largest magnitude
    assert diff < 1e-4 * max(1.0, size), (diff, size)  # ComfyUI's layers: the same maths, another summation order
