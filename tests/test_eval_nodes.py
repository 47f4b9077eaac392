"""Evaluation nodes inside a real ComfyUI import (`--cpu`, in a subprocess so ComfyUI's globals stay out of the
test process): schemas, and every node executed on tiny stand-in weights and synthetic videos."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(r'''
    import json, os, sys
    comfy, repo, base = sys.argv[1:4]
    sys.path.insert(0, comfy)
    sys.path.append(repo)
    sys.argv = ["main.py", "--cpu", "--base-directory", base]
    import comfy.options
    comfy.options.enable_args_parsing()
    import torch
    from svd_core.eval.standins import moving_square, random_lpips, tiny_i3d, video_set, votes_csv
    models = os.path.join(base, "models", "svd_eval")
    tiny_i3d(os.path.join(models, "i3d_torchscript.pt"))
    random_lpips(os.path.join(models, "lpips_alex.safetensors"))
    inp = os.path.join(base, "input")
    video_set(os.path.join(inp, "set_a"), n=3, seed=0)
    video_set(os.path.join(inp, "set_b"), n=3, seed=0, noise=50.0)
    votes_csv(os.path.join(inp, "votes.csv"), {"xt": 300.0, "svd": 0.0}, n=200)
    import importlib.util  # the pack as ComfyUI imports it (a package; its modules import each other relatively)
    spec = importlib.util.spec_from_file_location("svd_suite", os.path.join(repo, "__init__.py"),
                                                  submodule_search_locations=[repo])
    sys.modules["svd_suite"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules["svd_suite"])
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
    r = ev.VideoMetrics.execute((a + 0.1).clamp(0, 1), a, "lpips_alex.safetensors", "alex", "none", "ViT-H-14")
    out["metrics"] = list(r.result[:4]) + [r.result[4].splitlines()[0]]
    try:
        ev.VideoMetrics.execute(a, a, "missing.pth", "alex", "none", "ViT-H-14")
    except ValueError as e:
        out["metrics_error"] = str(e)
    r = ev.EloFromVotes.execute("votes.csv", 100, 0.95, 0)
    out["elo"] = json.loads(r.result[1])
    r = ev.ComparisonGrid.execute(a, "svd, xt", 3, 0, "models_as_columns", images_2=b)
    out["grid"] = list(r.result[0].shape)
    r = ev.VotingStudy.execute("demo", "a=set_a\nb=set_b", "", 1)
    from svd_core.eval.voting_server import STUDIES
    out["study"] = [r.result[0], sorted(STUDIES), STUDIES["demo"].study.models, len(STUDIES["demo"].study.checks)]
    print("RESULT " + json.dumps(out))
''')


@pytest.fixture(scope="module")
def node_run(tmp_path_factory):
    comfy = Path(os.environ.get("SVD_COMFYUI_DIR", REPO / ".cache" / "comfyui"))
    if not (comfy / "main.py").is_file():
        subprocess.run(["bash", str(REPO / "scripts" / "setup.d" / "50-comfyui.sh")], check=True, timeout=900)
    tmp = tmp_path_factory.mktemp("nodes")
    (tmp / "run.py").write_text(SCRIPT)
    base = tmp / "base"
    proc = subprocess.run([sys.executable, str(tmp / "run.py"), str(comfy), str(REPO), str(base)],
                          capture_output=True, text=True, timeout=300, cwd=str(tmp))
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_schemas_have_prefix_category_and_tooltips(node_run):
    assert sorted(node_run["schemas"]) == sorted("SVDSuite_" + n for n in (
        "LoadVideoFrames", "FVDFolders", "FVDImages", "VideoMetrics", "EloFromVotes", "ComparisonGrid", "VotingStudy"))
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
    assert node_run["grid"] == [1, 18 + 3 * 32 + 2 * 4, 2 * 48 + 4, 3]
    url, studies, models, checks = node_run["study"]
    assert url == "/svd/vote/demo/" and studies == ["demo"] and models == ["a", "b"] and checks == 1
