"""Multi-view: orbits (static, dynamic, spiral, keyframes, custom), cameras, SV3D_u/SV3D_p/SVD-MV sampling, the
SVD-MV variant (layout, transfer from SVD, training conditioning)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from svd_core import loading, testing
from svd_core import multiview as mv
from svd_core.layers import timestep_embedding
from svd_core.model import build
from svd_core.variants import SVD_MV

pytestmark = pytest.mark.filterwarnings("ignore:generating at")
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
LABEL = "model.diffusion_model.label_emb.0.0.weight"


def test_static_orbit_uses_the_reference_spacing():
    o = mv.static_orbit(21, 10.0)
    assert o.elevations == [10.0] * 21
    assert o.azimuths == pytest.approx([(360 / 21 * (i + 1)) % 360 for i in range(21)])
    assert o.azimuths[-1] == 0.0 and o.is_reference_spacing()  # the last view is the input view


def test_dynamic_spiral_keyframe_and_custom_orbits():
    d = mv.dynamic_orbit(21, elevation=10, amplitude=20, periods=2)
    assert d.elevations == pytest.approx([10 + 20 * math.sin(2 * math.pi * 2 * (i + 1) / 21) for i in range(21)])
    assert d.is_reference_spacing()
    j = mv.dynamic_orbit(21, azimuth_jitter=5.0, seed=1)
    off = [((a - r + 180) % 360) - 180 for a, r in zip(j.azimuths, mv.reference_azimuths(21))]
    assert max(abs(x) for x in off) <= 5.0 and any(abs(x) > 0.1 for x in off) and off[-1] == 0
    s = mv.spiral_orbit(5, -10, 30)
    assert s.elevations == pytest.approx([-10, 0, 10, 20, 30])
    k = mv.keyframe_orbit([(0, 0, 0), (4, 40, 360)], 5)
    assert k.elevations == pytest.approx([0, 10, 20, 30, 40]) and k.azimuths == pytest.approx([0, 90, 180, 270, 0])
    c = mv.build_orbit("custom", 3, elevations=[1, 2, 3], azimuths=[10, 20, 370])
    assert c.azimuths == [10, 20, 10] and not c.is_reference_spacing()
    with pytest.raises(ValueError, match=r"\[-90, 90\]"):
        mv.custom_orbit([100.0] * 3, None, 3)
    with pytest.raises(ValueError, match="unknown orbit preset"):
        mv.build_orbit("zigzag", 3)
    assert mv.Orbit.from_dict(d.to_dict()) == d


def test_camera_matrices_look_at_the_object():
    o = mv.dynamic_orbit(21, elevation=20, amplitude=60, radius=1.5)
    c2w = camera = mv.camera_poses(o).double()
    rot, pos = c2w[:, :3, :3], c2w[:, :3, 3]
    torch.testing.assert_close(rot.transpose(1, 2) @ rot, torch.eye(3, dtype=torch.float64).expand(21, 3, 3),
                               atol=1e-5, rtol=0)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(21, dtype=torch.float64), atol=1e-5)
    torch.testing.assert_close(pos.norm(dim=-1), torch.full((21,), 1.5, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(-camera[:, :3, 2], -pos / 1.5, atol=1e-5, rtol=0)  # -z looks at the origin
    assert (camera[:, 2, 1] > 0).all()  # camera up has a world-up component
    e, a = math.radians(o.elevations[3]), math.radians(o.azimuths[3])
    torch.testing.assert_close(pos[3], 1.5 * torch.tensor([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a),
                                                           math.sin(e)], dtype=torch.float64), atol=1e-5, rtol=0)
    top = mv.camera_poses(mv.custom_orbit([90.0, -90.0], [0.0, 90.0], 2))
    assert torch.isfinite(top).all()
    views = json.loads(mv.cameras_json(o, "sv3d_p"))["views"]
    assert [v["index"] for v in views] == list(range(21))
    assert views[5]["azimuth_deg"] == pytest.approx(o.azimuths[5]) and len(views[5]["c2w"]) == 4


def test_svd_mv_layout_is_svd_with_elevation_columns():
    ref = json.loads((REFERENCE / "svd_xt.keys.json").read_text())["keys"]
    shapes = {k: list(v.shape) for k, v in build(SVD_MV, device="meta").state_dict().items()}
    assert set(shapes) == set(ref)
    assert shapes[LABEL] == [1280, 1024]  # 768 SVD vector + 256 elevation
    assert {k: v for k, v in shapes.items() if k != LABEL} == {k: v for k, v in ref.items() if k != LABEL}
    spec, _ = loading.detect_spec({k: tuple(v) for k, v in shapes.items()}, {}, "mv.safetensors")
    assert spec.name == "svd_mv"


@pytest.fixture(scope="module")
def svd_mv(tiny_models):
    return mv.init_from(tiny_models("tiny", seed=1), testing.TINY_SVD_MV)


def test_svd_mv_from_svd_starts_as_svd_and_embeds_elevation(svd_mv):
    svd = testing.tiny_model("tiny", seed=1)
    assert torch.equal(svd_mv.state_dict()[LABEL][:, :768], svd.state_dict()[LABEL])
    assert not svd_mv.state_dict()[LABEL][:, 768:].any()
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    c = mv.svd_mv_conditioning(svd_mv, image, elevations=[0, 10, 20, 30, 40], width=64, height=64)
    elev = timestep_embedding(torch.tensor([0.0, 10, 20, 30, 40]), 256)
    torch.testing.assert_close(c.cond.vector[:, 768:], elev)  # sinusoidal elevation concatenated to SVD's vector
    from svd_core.pipeline import image_conditioning
    ref = image_conditioning(svd, image, num_frames=5, width=64, height=64)
    torch.testing.assert_close(c.cond.vector[:, :768], ref.cond.vector)
    torch.testing.assert_close(c.cond.concat, ref.cond.concat)
    with pytest.raises(ValueError, match="elevation only"):
        mv.check_orbit(svd_mv.spec, mv.custom_orbit(10.0, [0, 10, 20, 30, 40], 5))
    # training (the trainer's one path, `training.tasks.img2vid_cond`): each clip's elevation in the vector
    from svd_core.training import tasks
    from svd_core.training.config import TrainConfig
    from svd_core.training.data import collate, encode_window

    frames = torch.rand(2, 5, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    batch = collate([dict(encode_window(svd_mv, f), fps=torch.tensor(7.0), motion_bucket_id=torch.tensor(127.0),
                          elevation=torch.tensor(e)) for f, e in zip(frames, (5.0, 25.0))])
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    tc = tasks.img2vid_cond(svd_mv, batch, 5, gens, TrainConfig.from_preset("multiview", height=64, width=64))
    torch.testing.assert_close(tc.vector[5:, 768:], timestep_embedding(torch.full((5,), 25.0), 256))
    torch.testing.assert_close(tc.vector[:5, 768:], timestep_embedding(torch.full((5,), 5.0), 256))
    assert tc.crossattn.shape == (10, 1, 64) and not tc.crossattn.is_inference()


def test_sv3d_orbits_and_multiview_sampling():
    p = testing.tiny_model("tiny_sv3d_p", seed=3)
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    orbit = mv.dynamic_orbit(5, elevation=10, amplitude=20, azimuth_jitter=10, seed=2)
    cond = mv.multiview_conditioning(p, image, orbit, width=64, height=64)
    polar = torch.tensor([math.radians(90 - e) for e in orbit.elevations])
    torch.testing.assert_close(cond.cond.vector[:, 256:768], timestep_embedding(polar, 512))
    azim = torch.tensor([math.radians((a - orbit.azimuths[-1]) % 360) for a in orbit.azimuths])
    torch.testing.assert_close(cond.cond.vector[:, 768:], timestep_embedding(azim, 512))
    steps = []
    views, out_orbit = mv.multiview(p, image, orbit, width=64, height=64, steps=2,
                                    callback=lambda i, n, s: steps.append(s))
    assert views.shape == (1, 5, 3, 64, 64) and out_orbit is orbit and "sampling" in steps
    u = testing.tiny_model("tiny_sv3d_u", seed=3)
    with pytest.raises(ValueError, match="SV3D_u takes no camera input"):
        mv.multiview(u, image, orbit)
    with pytest.raises(ValueError, match="multi-view needs"):
        mv.multiview(testing.tiny_model("tiny", seed=0), image)
