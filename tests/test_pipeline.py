"""Image-to-video pipeline: conditioning as the reference, guided sampling, decoding, parity with diffusers."""
from __future__ import annotations

import math
import warnings
from dataclasses import replace

import pytest
import torch

from svd_core import pipeline as P
from svd_core.guidance import Guidance
from svd_core.testing import TINY_SV3D_P, TINY_SV3D_U, diffusers_pipeline, tiny_model
from svd_core.variants import TINY


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_models("tiny", seed=0)


def test_prepare_image_crop_pad_and_errors():
    img = torch.rand(1, 3, 100, 300)
    crop = P.prepare_image(img, 128, 64, "crop")
    pad = P.prepare_image(img, 128, 64, "pad")
    assert crop.shape == pad.shape == (1, 3, 64, 128)
    assert crop.min() >= -1 and crop.max() <= 1
    # pad keeps the whole (wide) image: the top and bottom rows are the grey padding (0 in [-1, 1])
    assert torch.all(pad[..., 0, :] == 0) and not torch.all(crop[..., 0, :] == 0)
    with pytest.raises(ValueError, match="width=100 is impossible: it must be a multiple of 64"):
        P.prepare_image(img, 100, 64)
    with pytest.raises(ValueError, match=r"image must be \(batch, 3, H, W\)"):
        P.prepare_image(torch.rand(1, 4, 8, 8), 64, 64)
    with pytest.warns(UserWarning, match="trained at 1024x576"):
        P.prepare_image(img, 128, 64, trained=(576, 1024))


def test_image_conditioning_matches_the_reference_recipe(model):
    img = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    cond = P.image_conditioning(model, img, num_frames=4, fps=7, motion_bucket_id=127, cond_aug=0.02, seed=3)
    assert cond.cond.crossattn.shape == (8, 1, TINY.clip.embed_dim)
    assert cond.cond.concat.shape == (8, 4, 16, 16) and cond.latent_shape == (8, 4, 16, 16)
    # unconditional branch: zero CLIP token and zero concat latent, same micro-conditioning vector
    assert torch.all(cond.uncond.crossattn == 0) and torch.all(cond.uncond.concat == 0)
    assert torch.equal(cond.uncond.vector, cond.cond.vector)
    # fps 7 is embedded as fps_id 6 (the reference default), motion bucket 127, cond_aug 0.02
    expected = model.conditioner.vector({"fps_id": torch.full((8,), 6.0), "motion_bucket_id": torch.full((8,), 127.0),
                                         "cond_aug": torch.full((8,), 0.02)})
    assert torch.allclose(cond.cond.vector, expected)
    # concat latent = VAE mode of (image + cond_aug * noise), noise drawn first from the seeded generator
    x = img * 2 - 1
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    latent = model.conditioner.vae_encoder(x + 0.02 * noise)
    assert torch.allclose(cond.cond.concat[:4], latent[0:1].expand(4, -1, -1, -1), atol=1e-5)
    assert torch.allclose(cond.cond.concat[4:], latent[1:2].expand(4, -1, -1, -1), atol=1e-5)
    # CLIP branch sees the clean image
    clip = model.conditioner.clip(x)
    assert torch.allclose(cond.cond.crossattn[:4], clip[0:1].expand(4, -1, -1), atol=1e-5)


def test_orbit_conditioning_reference_angles():
    m = tiny_model(TINY_SV3D_P)
    elev, azim = P.orbit_angles(5, 10.0)
    assert azim == pytest.approx([72, 144, 216, 288, 0])  # linspace(0, 360, n+1)[1:] % 360
    cond = P.orbit_conditioning(m, torch.rand(1, 3, 128, 128), elevations=[0, 10, 20, 30, 40])
    polars = [math.radians(90 - e) for e in (0, 10, 20, 30, 40)]
    azimuths = [math.radians((a - 0) % 360) for a in azim]  # relative to the last view (azimuth 0)
    expected = m.conditioner.vector({"cond_aug": torch.full((5,), 1e-5), "polars_rad": torch.tensor(polars),
                                     "azimuths_rad": torch.tensor(azimuths)})
    assert torch.allclose(cond.cond.vector, expected, atol=1e-6)
    with pytest.raises(ValueError, match="one elevation and one azimuth per frame: 5 frames, got 2 elevations"):
        P.orbit_conditioning(m, torch.rand(1, 3, 128, 128), elevations=[0, 1])
    u = tiny_model(TINY_SV3D_U)
    assert P.orbit_conditioning(u, torch.rand(1, 3, 128, 128)).cond.vector.shape == (5, 256)
    with pytest.raises(ValueError, match="needs an SV3D model"):
        P.orbit_conditioning(tiny_model(), torch.rand(1, 3, 128, 128))


def test_same_seed_same_video_and_different_seed_differs(model):
    img = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    a = P.img2vid(model, img, steps=3, seed=7)
    b = P.img2vid(model, img, steps=3, seed=7)
    c = P.img2vid(model, img, steps=3, seed=8)
    assert a.shape == (1, 4, 3, 128, 128) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3


def test_ff_chunking_changes_memory_not_results(model):
    img = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(4))
    plain = P.img2vid(model, img, steps=2, seed=1, ff_chunk_size=None)
    chunked = P.img2vid(model, img, steps=2, seed=1, ff_chunk_size=7)
    model.unet.set_ff_chunk_size(None)
    assert (plain - chunked).abs().max() < 1e-4  # matmul row-blocking changes fp32 rounding only


def test_batch_of_two_equals_two_single_runs(model):
    """Frames are never inferred from the batch: video i of a batch equals its own run with the same noise."""
    imgs = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    cond = P.image_conditioning(model, imgs, cond_aug=0.0, seed=0)
    noise = torch.randn(cond.latent_shape, generator=torch.Generator().manual_seed(5))
    g = Guidance("linear", 1.0, 3.0)
    both = P.sample(model, cond, g, steps=2, noise=noise)
    for i in range(2):
        single = P.image_conditioning(model, imgs[i:i + 1], cond_aug=0.0, seed=0)
        one = P.sample(model, single, g, steps=2, noise=noise[4 * i:4 * i + 4])
        assert (both[4 * i:4 * i + 4] - one).abs().max() <= 1e-4 * both.abs().max()  # fp32 rounding only


def test_cancel_stops_sampling_within_one_step(model):
    calls = []

    def cancel():
        return len(calls) >= 1

    with pytest.raises(P.Cancelled, match="cancelled at step 2/4"):
        P.img2vid(model, torch.rand(1, 3, 128, 128), steps=4, callback=lambda *a: calls.append(a), cancel=cancel)
    assert calls == [(1, 4, "sampling")]


def test_on_denoised_gets_each_step_x0_before_progress(model):
    """Live previews: `on_denoised` sees every step's x0 prediction, before that step's progress callback; with euler
    the last step lands on its x0, so the last prediction is the sampled latent."""
    cond = P.image_conditioning(model, torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(3)), seed=0)
    events = []
    out = P.sample(model, cond, steps=3, seed=2, on_denoised=lambda x0: events.append(("x0", x0.clone())),
                   callback=lambda done, total, stage=None: events.append(("step", done)))
    assert [e[0] for e in events] == ["x0", "step"] * 3 and [e[1] for e in events[1::2]] == [1, 2, 3]
    x0s = [e[1] for e in events[::2]]
    assert all(x.shape == out.shape for x in x0s)
    assert torch.allclose(x0s[-1], out, atol=1e-5) and (x0s[0] - out).abs().max() > 1e-3
    assert torch.equal(P.sample(model, cond, steps=3, seed=2), out)  # watching changes nothing


def test_video_to_video_from_an_encoded_video(model):
    video = P.img2vid(model, torch.rand(1, 3, 128, 128), steps=2, seed=0)
    latent = P.encode(model, video)
    assert latent.shape == (4, 4, 16, 16)
    cond = P.image_conditioning(model, video[:, 0], seed=0)
    out = P.sample(model, cond, steps=4, init_latent=latent, denoise=0.3, seed=0)
    assert out.shape == latent.shape
    with pytest.raises(ValueError, match="denoise=0.5 < 1 needs an init_latent"):
        P.sample(model, cond, steps=4, denoise=0.5)
    with pytest.raises(ValueError, match="init_latent has shape"):
        P.sample(model, cond, steps=4, init_latent=latent[:2], denoise=0.5)


def test_decode_chunking_and_image_decoder_option(model):
    cond = P.image_conditioning(model, torch.rand(1, 3, 128, 128), seed=0)
    latent = P.sample(model, cond, steps=2)
    full = P.decode(model, latent, 4, decode_t=4)
    assert torch.equal(full, P.decode(model, latent, 4, decode_t=14))  # decode_t >= frames: one chunk
    assert not torch.allclose(full, P.decode(model, latent, 4, decode_t=2))  # the temporal decoder sees chunks
    per_frame = P.decode(model, latent, 4, image_decoder=True)
    assert per_frame.shape == full.shape and not torch.allclose(per_frame, full)


def test_scale_one_skips_the_unconditional_branch(model):
    cond = P.image_conditioning(model, torch.rand(1, 3, 128, 128), seed=0)
    d = P.GuidedDenoiser(model, cond, Guidance("vanilla", 1.0, 1.0))
    assert not d.cfg
    assert P.GuidedDenoiser(model, cond, Guidance("linear", 1.0, 2.5)).cfg


# --------------------------------------------------------------------------------------------- diffusers parity


def test_whole_sampling_loop_matches_diffusers_pipeline():
    """Same tiny weights, same initial noise, Euler + Karras sigmas, linear CFG 1.0 -> 3.0, cond_aug 0.02.

    diffusers' CLIP input path is fixed at 224 px, so the tiny CLIP uses 224 px with 32-px patches. Our concat
    latent comes from the conditioner's encoder copy: set equal to the first stage's (identity quant_conv), as in
    released files. Measured: 7.8e-5. Tolerance 5e-4 on frames in [0, 1]: fp32 rounding of two different kernel
    orders, amplified over the steps by guidance up to 3x, plus diffusers' own port of kornia's antialiasing
    resize feeding CLIP; a real bug (a swapped branch, a wrong scale) moves frames by > 1e-2.
    """
    spec = replace(TINY, clip=replace(TINY.clip, image_size=224, patch_size=32))
    model = tiny_model(spec, seed=11)
    enc = model.conditioner.vae_encoder.encoder
    enc.encoder.load_state_dict(model.first_stage_model.encoder.state_dict())
    with torch.no_grad():
        q = enc.quant_conv.weight
        enc.quant_conv.weight.copy_(torch.eye(q.shape[0])[:, :, None, None])
        enc.quant_conv.bias.zero_()
    frames, steps, seed = 4, 4, 123
    pipe = diffusers_pipeline(model, frames)
    from PIL import Image

    pixels = torch.randint(0, 256, (128, 128, 3), generator=torch.Generator().manual_seed(9), dtype=torch.uint8)
    pil = Image.fromarray(pixels.numpy())  # diffusers resizes for CLIP only when given a PIL image
    image = pixels.permute(2, 0, 1)[None].float() / 255.0  # h w c -> 1 c h w, the same pixels in [0, 1]
    noise = torch.randn(1, frames, 4, 16, 16, generator=torch.Generator().manual_seed(77))
    with torch.no_grad():
        ref = pipe(pil, height=128, width=128, num_frames=frames, num_inference_steps=steps, min_guidance_scale=1.0,
                   max_guidance_scale=3.0, fps=7, motion_bucket_id=127, noise_aug_strength=0.02, decode_chunk_size=4,
                   generator=torch.Generator().manual_seed(seed), latents=noise.clone(), output_type="pt").frames
    ref = ref.permute(0, 1, 2, 3, 4)  # b t c h w
    ours = P.img2vid(model, image, num_frames=frames, steps=steps, fps=7, motion_bucket_id=127, cond_aug=0.02,
                     guidance=Guidance("linear", 1.0, 3.0), seed=seed, decode_t=4, noise=noise.flatten(0, 1))
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    err = (ours - ref).abs().max().item()
    print(f"whole img2vid loop vs diffusers pipeline: max abs {err:.2e} on frames in [0, 1]")
    assert ref.std() > 0.05  # real content, not a flat image
    assert err < 5e-4


def test_channels_last_is_the_same_video(model):
    img = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(6))
    nhwc = P.img2vid(model, img, steps=2, seed=2, channels_last=True)
    assert model.unet.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    nchw = P.img2vid(model, img, steps=2, seed=2, channels_last=False)
    assert model.unet.input_blocks[0][0].weight.is_contiguous()
    assert (nhwc - nchw).abs().max() < 1e-4  # kernel choice changes fp32 rounding only


@pytest.mark.parametrize("variant, steps", [("svd", 25), ("svd_image_decoder", 25), ("svd_xt", 30),
                                            ("svd_xt_1_1", 30), ("svd_xt_image_decoder", 30), ("sv3d_u", 50),
                                            ("sv3d_p", 50)])
def test_variant_sampling_defaults_are_the_reference_scripts(variant, steps):
    """Reference scripts/sampling/simple_video_sample.py: num_steps default(num_steps, 25 | 30 | 50) per version,
    seed 23; frames 14 / 25 / 21; guider from scripts/sampling/configs/<version>.yaml."""
    from svd_core.variants import get_variant

    spec = get_variant(variant)
    assert (spec.steps, spec.seed) == (steps, 23)
    assert spec.num_frames == {25: 14, 30: 25, 50: 21}[steps]
    assert (spec.min_cfg, spec.max_cfg) == ((1.5, 3.0) if steps == 30 else (1.0, 2.5))


def test_default_seed_and_steps_come_from_the_variant(model):
    """Reference simple_video_sample.py: seed 23 and the version's num_steps when none is given (here the tiny
    variant's 4 steps stand for 25 / 30 / 50)."""
    img = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    seen = []
    default = P.img2vid(model, img, callback=lambda i, n, stage: seen.append((stage, n)))
    assert ("sampling", model.spec.steps) in seen and model.spec.seed == 23
    assert torch.equal(default, P.img2vid(model, img, steps=model.spec.steps, seed=23))
    cond = P.image_conditioning(model, img)  # conditioning noise from seed 23 too
    assert torch.equal(cond.cond.concat, P.image_conditioning(model, img, seed=23).cond.concat)
    assert not torch.equal(cond.cond.concat, P.image_conditioning(model, img, seed=0).cond.concat)


def test_noise_device_draws_the_initial_noise_on_the_unet_device(model):
    """Reference simple_video_sample.py: torch.manual_seed(seed); randn = torch.randn(shape, device=device).
    "device" = a generator on the UNet's device seeded with `seed` (here CPU: the same numbers as
    torch.Generator(device).manual_seed(seed)); "cpu" (default) = the shared, reproducible CPU generator."""
    img = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    cond = P.image_conditioning(model, img, seed=5)
    g = Guidance("linear", 1.0, 2.0)
    dev = P.sample(model, cond, g, steps=2, seed=5, noise_device="device")
    unet_device = next(model.unet.parameters()).device
    noise = torch.randn(cond.latent_shape, generator=torch.Generator(unet_device).manual_seed(5), device=unet_device)
    assert torch.equal(dev, P.sample(model, cond, g, steps=2, noise=noise))
    shared = torch.Generator().manual_seed(5)
    torch.randn(3, generator=shared)  # a generator that already drew (as in img2vid, after the conditioning)
    cpu = P.sample(model, cond, g, steps=2, seed=5, generator=shared)
    assert (cpu - dev).abs().max() > 1e-3  # "cpu" draws from the shared generator, "device" from a fresh one
    with pytest.raises(ValueError, match=r"noise_device='gpu'; expected one of \('cpu', 'device'\)"):
        P.sample(model, cond, g, steps=2, noise_device="gpu")


def test_encode_samples_the_posterior_when_asked(model):
    """Reference first stage: DiagonalGaussianRegularizer(sample=True) -> DiagonalGaussianDistribution.sample()
    = mean + exp(logvar / 2) * eps (sgm/modules/distributions/distributions.py); default here stays the mean."""
    video = torch.rand(1, 4, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    fs = model.first_stage_model
    x = video.flatten(0, 1) * 2 - 1
    mean, logvar = fs.encode_dist(x)
    scale = model.spec.scale_factor
    torch.testing.assert_close(P.encode(model, video), mean * scale)  # mean path unchanged
    a = P.encode(model, video, sample_posterior=True, seed=4)
    assert torch.equal(a, P.encode(model, video, sample_posterior=True, seed=4))  # seeded
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, (mean + torch.exp(0.5 * logvar) * eps) * scale)
    # the draws scatter around the mean with the posterior's std: standardised residuals ~ N(0, 1)
    draws = torch.stack([P.encode(model, video, sample_posterior=True, seed=s) for s in range(6)])
    z = (draws / scale - mean) / torch.exp(0.5 * logvar)
    assert abs(z.mean().item()) < 0.02 and abs(z.std().item() - 1.0) < 0.02
    assert (a - mean * scale).abs().max() > 1e-4
