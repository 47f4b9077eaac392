"""Per-clip annotations (paper App. C) and filtering (Sec. 3.3, App. E.2.2) on real footage and tiny models."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from svd_core.curation.captions import EOT, SOT, CocaCaptioner, caption_clip, load_hook
from svd_core.curation.clip_models import (AestheticMLP, ClipEmbedder, aesthetic_scores, clip_similarity,
                                           load_aesthetic_mlp)
from svd_core.curation.filtering import Filter, apply_filters, bottom_percent, filters_from_dicts, lvd_f_preset
from svd_core.curation.motion import COARSE, FINE, flow_magnitudes, motion_scores
from svd_core.curation.text_area import CraftTextDetector, default_craft_weights
from svd_core.curation import CurationError
from test_curation_support import (bikes, bikes_frames, media, tiny_models, write_video)  # noqa: F401


# ------------------------------------------------------------------------------------------------- motion
def test_static_clip_scores_lower_motion_than_moving_clip(media, bikes_frames, tmp_path):
    moving = write_video(tmp_path / "moving.mp4", bikes_frames[76:137])  # the fast shot of bikes.mp4
    static, move = motion_scores(media["static"], fine=True), motion_scores(moving, fine=True)
    assert static["motion"] < 0.1 < 1.0 < move["motion"]
    assert static["motion_fine"] < 0.01 < move["motion_fine"]
    # 2 fps sampling: 61 frames at 25 fps -> 5 samples -> 4 flow pairs
    assert flow_magnitudes(moving, COARSE).shape == (4,)
    assert COARSE.map_short_side == 16 and COARSE.fps == 2.0 and FINE.map_short_side == 16


# ------------------------------------------------------------------------------------------------ CRAFT
@pytest.fixture(scope="module")
def craft():
    return CraftTextDetector(default_craft_weights(), canvas_size=320)  # half the frame: a quarter of the work


def test_printed_text_has_larger_text_area(craft, bikes_frames):
    import cv2

    plain = bikes_frames[150].copy()
    text = plain.copy()
    cv2.putText(text, "CURATION TEST", (40, 150), cv2.FONT_HERSHEY_SIMPLEX, 2.0, (255, 255, 255), 5)
    r_plain, r_text = craft.area_ratio(plain), craft.area_ratio(text)
    assert r_plain < 0.02
    assert r_text > r_plain + 0.05  # the caption box covers > 5% of the 640x272 frame
    boxes = craft.boxes(text)
    assert boxes and all(b.shape == (4, 2) for b in boxes)
    xs = np.concatenate([b[:, 0] for b in boxes])
    assert xs.min() >= 20 and xs.max() <= 640  # boxes lie where the text was drawn


def test_craft_missing_weights_error(tmp_path):
    with pytest.raises(CurationError, match="do not exist"):
        CraftTextDetector(str(tmp_path / "missing.pth"))


# ------------------------------------------------------------------------------------- CLIP / aesthetics
def test_clip_embeddings_shapes_and_determinism(tiny_models, bikes_frames):
    cfg, w = tiny_models["clip"]
    emb = ClipEmbedder(cfg, w)
    frames = [bikes_frames[0], bikes_frames[100], bikes_frames[200]]
    a, b = emb.embed_images(frames), ClipEmbedder(cfg, w).embed_images(frames)
    assert a.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(a, b, atol=1e-6)  # same weights file -> same embeddings
    t = emb.embed_texts(["a bike race", "a cat"])
    sims = clip_similarity(a, t)
    np.testing.assert_allclose(sims, (t @ a.T).mean(axis=1), atol=1e-6)
    assert sims.shape == (2,) and np.all(np.abs(sims) <= 1.0)


def test_open_clip_loader_errors(tiny_models, tmp_path):
    cfg, w = tiny_models["clip"]
    with pytest.raises(CurationError, match="not found"):
        ClipEmbedder(cfg, tmp_path / "missing.safetensors")
    with pytest.raises(CurationError, match="is unknown"):
        ClipEmbedder("NoSuchNet-99", w)
    with pytest.raises(CurationError, match="do not fit"):
        ClipEmbedder(tiny_models["coca"][0], w)  # CLIP weights into a CoCa architecture


def test_aesthetic_mlp_layout_and_scores(tiny_models, tmp_path):
    mlp = load_aesthetic_mlp(tiny_models["aesthetic"])
    assert mlp.input_size == 32
    keys = set(AestheticMLP(768).state_dict())
    assert keys == {f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}  # LAION layout
    emb = torch.nn.functional.normalize(torch.randn(4, 32), dim=-1).numpy()
    s = aesthetic_scores(mlp, emb)
    expected = mlp.layers(torch.as_tensor(emb))[:, 0].detach().numpy()
    np.testing.assert_allclose(s, expected, atol=1e-6)
    with pytest.raises(CurationError, match="expects 32-d"):
        aesthetic_scores(mlp, np.zeros((1, 768), np.float32))
    torch.save({"w": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(CurationError, match="layers.0.weight"):
        load_aesthetic_mlp(tmp_path / "bad.pth")


# --------------------------------------------------------------------------------------------- captions
def test_coca_greedy_captions_are_consistent_with_the_model(tiny_models, bikes_frames):
    cfg, w = tiny_models["coca"]
    cap = CocaCaptioner(cfg, w, max_len=10, min_len=3)
    with torch.no_grad():  # make the random decoder less degenerate so tokens vary
        g = torch.Generator().manual_seed(1)
        for p in cap.model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    frames = [bikes_frames[0], bikes_frames[200]]
    tokens = cap.tokens(frames)
    assert tokens.shape[0] == 2 and tokens.shape[1] <= 10
    assert (tokens[:, 0] == SOT).all() and (tokens[:, -1] == EOT).all()
    # teacher forcing: every greedy token is the argmax of the logits given the prefix (min length respected)
    images = cap._images(frames)
    logits = cap.model(images, tokens[:, :-1])["logits"].float()  # b t vocab
    for t in range(tokens.shape[1] - 2):
        step = logits[:, t].clone()
        if t + 1 < cap.min_len:
            step[:, EOT] = -float("inf")
        done = (tokens[:, 1:t + 1] == EOT).any(dim=1)
        assert torch.equal(step.argmax(-1)[~done], tokens[~done, t + 1])
    assert torch.equal(cap.tokens(frames), tokens)  # deterministic
    texts = cap.caption_frames(frames)
    assert len(texts) == 2 and all(isinstance(t, str) and t for t in texts)
    cap.method = "top_k"
    assert torch.equal(cap.tokens(frames), cap.tokens(frames))  # seeded sampling


def test_caption_hooks(tiny_models, media):
    out = caption_clip(media["static"], None, video_captioner=lambda p: "video says hi",
                       merger=lambda caps: " | ".join(sorted(caps.values())))
    assert out == {"caption_video": "video says hi", "caption_llm": "video says hi"}
    assert load_hook("os.path:basename")("/a/b.mp4") == "b.mp4"
    with pytest.raises(CurationError, match="must look like"):
        load_hook("no_colon")
    with pytest.raises(CurationError, match="needs at least one caption"):
        caption_clip(media["static"], None, None, merger=lambda c: "x")
    with pytest.raises(CurationError, match="not a CoCa model"):
        CocaCaptioner(*tiny_models["clip"])


# -------------------------------------------------------------------------------------------- filtering
def _rows(n=8):
    rng = np.random.RandomState(0)
    return [{"clip_id": f"c{i}", "motion": float(i), "aesthetic": float(rng.rand()), "clip_score": float(i % 4),
             "text_area": 0.01 * i} for i in range(n)]


def test_bottom_percent_presets():
    rows = _rows(8)
    for pct, kept in ((12.5, 7), (25.0, 6), (50.0, 4)):
        out, rep = apply_filters(rows, [bottom_percent("motion", pct)])
        assert len(out) == kept and rep.steps[0]["removed"] == 8 - kept
        assert min(r["motion"] for r in out) == 8 - kept  # the lowest scores went
    with pytest.raises(CurationError, match="not one of"):
        bottom_percent("motion", 10)


def test_thresholds_and_composition_report():
    rows = _rows(8)
    out, rep = apply_filters(rows, [Filter("motion", min_value=2.0), Filter("text_area", max_value=0.05)])
    assert [r["clip_id"] for r in out] == ["c2", "c3", "c4", "c5"]
    assert [s["removed"] for s in rep.steps] == [2, 2]  # in order: text removes c6, c7 (c0, c1 already gone)
    assert [s["removed_alone"] for s in rep.steps] == [2, 2]
    assert "8 clips in, 4 kept" in rep.to_text()
    with pytest.raises(CurationError, match="not in the manifest"):
        apply_filters(rows, [Filter("nope", percent=25)])
    with pytest.raises(CurationError, match="no rule"):
        Filter("motion")


def test_lvd_f_preset_is_the_paper_recipe():
    f = {x.column: x for x in lvd_f_preset()}
    assert (f["motion"].percent, f["aesthetic"].percent, f["clip_score"].percent) == (25.0, 25.0, 50.0)
    assert f["text_area"].keep == "low" and f["text_area"].max_value == 0.07 and f["text_area"].combine == "or"
    rows = [{"clip_id": f"c{i}", "motion": 1.0 + i, "aesthetic": 5.0, "clip_score": 0.3, "text_area": 0.0}
            for i in range(8)]
    rows[7]["text_area"] = 0.5  # lots of text
    out, rep = apply_filters(rows, filters_from_dicts("lvd-f"))
    assert rep.steps[0]["removed"] == 2  # bottom 25% motion
    assert all(r["text_area"] <= 0.07 for r in out)
    assert rep.kept == len(out)
