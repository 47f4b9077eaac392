"""Evaluation nodes inside a real ComfyUI import (`--cpu`, in a subprocess so ComfyUI's globals stay out of the
test process): schemas, and every node executed on tiny stand-in weights and synthetic videos."""
import textwrap

import pytest
from comfy_harness import run_in_comfyui


SCRIPT = textwrap.dedent(r'''
    import torch
    from svd_core.eval.standins import moving_square, random_lpips, tiny_i3d, video_set, votes_csv
    models = os.path.join(base, "models", "svd_eval")
    tiny_i3d(os.path.join(models, "i3d_torchscript.pt"))
    random_lpips(os.path.join(models, "lpips_alex.safetensors"))
    inp = os.path.join(base, "input")
    video_set(os.path.join(inp, "set_a"), n=3, seed=0)
    video_set(os.path.join(inp, "set_b"), n=3, seed=0, noise=50.0)
    votes_csv(os.path.join(inp, "votes.csv"), {"xt": 300.0, "svd": 0.0}, n=200)
    import svd_suite.training_nodes.evaluation as ev
    out = {"schemas": {}}
    for node in ev.NODES:
        s = node.define_schema()
        out["schemas"][s.node_id] = {
            "category": s.category,
            "untipped": [i.id for i in s.inputs if not i.tooltip] + [o.display_name for o in s.outputs if not o.tooltip]}
    video_set(inp, n=1, seed=7, ext=".mp4")  # input/clip000.mp4
    r = ev.LoadVideoFrames.execute("clip000.mp4", 5, 0.0)
    out["load"] = [list(r.result[0].shape), r.result[1], float(r.result[0].max())]
    r = ev.FVDFolders.execute("set_a", "set_b", "i3d_torchscript.pt", "none", 8, 2, True)
    same = ev.FVDFolders.execute("set_a", "set_a", "i3d_torchscript.pt", "none", 8, 2, True)
    out["fvd_folders"] = [r.result[0], same.result[0], r.result[1]]
    out["cache_files"] = sorted(os.listdir(os.path.join(base, "output", "svd_eval", "fvd_stats")))
    a = torch.from_numpy(moving_square(num_frames=16)).float() / 255
    b = torch.from_numpy(moving_square(num_frames=16, seed=3)).float() / 255
    r = ev.FVDImages.execute(torch.cat([a, b]), torch.cat([b, a]), 16, "i3d_torchscript.pt", "none", 0)
    out["fvd_images"] = r.result[0]
    try:
        ev.FVDImages.execute(a, b, 5, "i3d_torchscript.pt", "none", 0)
    except ValueError as e:
        out["fvd_images_error"] = str(e)
    # UCF-101 FVD node: a thin tiny t2v model behind the loader's handle interface (spec, name, acquire)
    from dataclasses import replace
    from svd_core import testing
    from svd_core.video_io import write_video
    for k, cls in enumerate(["Archery", "Archery", "YoYo"]):
        write_video(moving_square(num_frames=18, seed=k),
                    os.path.join(inp, "ucf_real", cls, f"v_{cls}_g{k:02d}_c01.avi"), fps=25)
    T = testing.TINY_T2V
    thin = replace(T, name="tiny_t2v_thin", unet=replace(T.unet, num_res_blocks=1),
                   vae=replace(T.vae, ch=16, norm_groups=16, num_res_blocks=1))
    class Handle:
        def __init__(self, model):
            self.model, self.spec, self.name = model, model.spec, model.spec.name
        def acquire(self):
            return self.model
    t2v = Handle(testing.tiny_model(thin, seed=1))
    args = ("ucf_real", "i3d_torchscript.pt", "run1", 2, 0, 7.0, 16, 25, 128, 64, 1, 0)
    r = ev.UCF101FVD.execute(t2v, *args)
    again = ev.UCF101FVD.execute(t2v, *args)
    run = os.path.join(base, "output", "svd_eval", "ucf101", "run1")
    man = json.load(open(os.path.join(run, "manifest.json")))
    out["ucf101"] = [r.result[0], r.result[1], again.result[0], again.result[1], sorted(os.listdir(run)),
                     [(p["class"], p["prompt"], p["seed"]) for p in man["plan"]], man["settings"]["cfg_scale"]]
    for bad in ((Handle(testing.tiny_model("tiny")),) + args, (t2v,) + args[:2] + ("../x",) + args[3:]):
        try:
            ev.UCF101FVD.execute(*bad)
        except ValueError as e:
            out.setdefault("ucf101_errors", []).append(str(e))
    r = ev.VideoMetrics.execute((a + 0.1).clamp(0, 1), a, "lpips_alex.safetensors", "alex", "none", "ViT-H-14")
    out["metrics"] = list(r.result[:4]) + [r.result[4].splitlines()[0]]
    try:
        ev.VideoMetrics.execute(a, a, "missing.pth", "alex", "none", "ViT-H-14")
    except ValueError as e:
        out["metrics_error"] = str(e)
    r = ev.EloFromVotes.execute("votes.csv", 100, 0.95, 0)
    out["elo"] = json.loads(r.result[1])
    r = ev.EloFromVotes.execute("votes.csv", 100, 0.95, 0, aggregate=True)
    out["elo_aggregated"] = json.loads(r.result[1])
    r = ev.ComparisonGrid.execute(a, "svd, xt", 3, 0, "models_as_columns", images_2=b)
    out["grid"] = list(r.result[0].shape)
    r = ev.VotingStudy.execute("demo", "a=set_a\nb=set_b", "", 1)
    from svd_core.eval.voting_server import STUDIES
    out["study"] = [r.result[0], sorted(STUDIES), STUDIES["demo"].study.models, len(STUDIES["demo"].study.checks)]
    print("RESULT " + json.dumps(out))
''')


@pytest.fixture(scope="module")
def node_run(tmp_path_factory):
    return run_in_comfyui(SCRIPT, tmp_path_factory.mktemp("nodes"))


def test_schemas_have_prefix_category_and_tooltips(node_run):
    assert sorted(node_run["schemas"]) == sorted("SVDSuite_" + n for n in (
        "LoadVideoFrames", "FVDFolders", "FVDImages", "UCF101FVD", "VideoMetrics", "EloFromVotes", "ComparisonGrid", "VotingStudy"))
    for node_id, s in node_run["schemas"].items():
        assert s["category"] == "svd/evaluation" and s["untipped"] == [], node_id


def test_load_video_frames(node_run):
    shape, count, top = node_run["load"]
    assert shape == [5, 32, 48, 3] and count == 5 and 0.5 < top <= 1.0


def test_fvd_nodes(node_run):
    fvd, same, report = node_run["fvd_folders"]
    assert fvd > 0 and same < 1e-6 and report.startswith("FVD = ")
    assert len(node_run["cache_files"]) == 2  # set_a and set_b statistics, reused by the second call
    assert node_run["fvd_images"] < 1e-6  # the same two clips in both sets (order does not matter)
    assert "frames_per_video=5" in node_run["fvd_images_error"]


def test_metric_elo_grid_and_study_nodes(node_run):
    psnr, ssim, lp, clip_s, head = node_run["metrics"]
    assert 19 < psnr < 21 and 0 < ssim < 1 and lp > 0 and clip_s == -1.0
    assert head.split() == ["view", "psnr↑", "ssim↑", "lpips↓"]
    assert "missing.pth" in node_run["metrics_error"] and "lpips_weights" in node_run["metrics_error"]
    for axis in ("visual_quality", "prompt_following"):
        assert node_run["elo"][axis]["ratings"][0]["model"] == "xt"
    assert "aggregated" not in node_run["elo"]
    agg = node_run["elo_aggregated"]["aggregated"]  # App. E.1.2, all axes' votes pooled
    assert agg["num_votes"] == 200 and agg["ratings"][0]["model"] == "xt"
    assert node_run["grid"] == [1, 18 + 3 * 32 + 2 * 4, 2 * 48 + 4, 3]
    url, studies, models, checks = node_run["study"]
    assert url == "/svd/vote/demo/" and studies == ["demo"] and models == ["a", "b"] and checks == 1


def test_ucf101_fvd_node(node_run):
    """Paper Sec. 4.3 / App. E through the node: class-name prompts, CFG 7, per-sample seeds, the FVD reported
    with the protocol name; queued again, nothing is regenerated and the value is the same."""
    fvd, report, fvd2, report2, files, plan, cfg = node_run["ucf101"]
    assert fvd > 0 and fvd2 == fvd and cfg == 7.0
    assert report.startswith(f"FVD (ucf101) = {fvd:.4f}") and "2 generated, 2 new; 3 real; 2 classes" in report
    assert "2 generated, 0 new" in report2
    assert files == ["fvd.json", "fvd_stats", "manifest.json", "videos"]
    assert plan == [["Archery", "archery", 0], ["YoYo", "yo yo", 1]]
    not_t2v, bad_name = node_run["ucf101_errors"]
    assert "input 'svd_model'" in not_t2v and "text-to-video" in not_t2v
    assert "input 'run_name'" in bad_name
