"""`python -m svd_core eval ...`: fvd, elo, mv, prompts in-process; serve as a real process killed mid-session."""
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from svd_core.__main__ import main
from svd_core.eval.standins import random_lpips, tiny_clip, tiny_i3d, video_set, votes_csv

REPO = Path(__file__).resolve().parents[1]


def test_eval_fvd(tmp_path, capsys):
    tiny_i3d(tmp_path / "i3d.pt")
    video_set(tmp_path / "a", n=3, seed=0)
    video_set(tmp_path / "b", n=3, seed=0, noise=50.0)
    args = ["eval", "fvd", str(tmp_path / "a"), str(tmp_path / "b"), "--i3d", str(tmp_path / "i3d.pt"),
            "--num-frames", "8", "--cache-dir", str(tmp_path / "cache"), "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["fvd"] > 0 and len(list((tmp_path / "cache").glob("*.safetensors"))) == 2
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out) == first  # from the cache
    assert main(["eval", "fvd", str(tmp_path / "a"), str(tmp_path / "a"), "--i3d", str(tmp_path / "i3d.pt"),
                 "--num-frames", "8"]) == 0
    assert capsys.readouterr().out.strip() == "FVD: 0.0000"
    assert main(["eval", "fvd", str(tmp_path / "a"), str(tmp_path / "b"), "--i3d", str(tmp_path / "no.pt")]) == 2
    assert "i3d_torchscript.pt" in capsys.readouterr().err


def test_eval_elo_prints_ratings_with_intervals(tmp_path, capsys):
    votes_csv(tmp_path / "votes.csv", {"svd_xt": 300.0, "svd": 150.0, "baseline": 0.0}, n=900)
    assert main(["eval", "elo", str(tmp_path / "votes.csv"), "--orderings", "200"]) == 0
    out = capsys.readouterr().out
    for axis in ("visual_quality", "prompt_following"):
        block = out.split(f"axis: {axis}")[1].split("axis:")[0]
        models = [line.split()[1] for line in block.splitlines() if line.strip()[:1].isdigit()]
        assert models == ["svd_xt", "svd", "baseline"]
    assert main(["eval", "elo", str(tmp_path / "votes.csv"), "--orderings", "50", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    top = data["visual_quality"]["ratings"][0]
    assert top["model"] == "svd_xt" and top["low"] < top["elo"] < top["high"]
    assert main(["eval", "elo", str(tmp_path / "votes.csv"), "--orderings", "50", "--aggregate", "--json"]) == 0
    agg = json.loads(capsys.readouterr().out)
    assert list(agg) == ["visual_quality", "prompt_following", "aggregated"]
    assert agg["aggregated"]["num_votes"] == 900 and agg["aggregated"]["ratings"][0]["model"] == "svd_xt"
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    assert main(["eval", "elo", str(tmp_path / "bad.csv")]) == 2
    assert "lacks column" in capsys.readouterr().err


def test_eval_mv(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for obj in ("obj1", "obj2"):
        (tmp_path / "gt" / obj).mkdir(parents=True)
        (tmp_path / "gen" / obj).mkdir(parents=True)
        for v in range(3):
            gt = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(gt).save(tmp_path / "gt" / obj / f"{v:02d}.png")
            Image.fromarray(np.clip(gt.astype(int) + 10, 0, 255).astype(np.uint8)).save(
                tmp_path / "gen" / obj / f"{v:02d}.png")
    random_lpips(tmp_path / "lpips.safetensors")
    name = tiny_clip(tmp_path / "clip.safetensors", config_dir=tmp_path / "cfg")
    assert main(["eval", "mv", str(tmp_path / "gen"), str(tmp_path / "gt"), "--lpips",
                 str(tmp_path / "lpips.safetensors"), "--clip-model", name, "--clip-weights",
                 str(tmp_path / "clip.safetensors"), "--clip-config", str(tmp_path / "cfg" / f"{name}.json"),
                 "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert sorted(data["objects"]) == ["obj1", "obj2"]
    mean = data["average"]["mean"]
    assert set(mean) == {"psnr", "ssim", "lpips", "clip_s"}
    assert 25 < mean["psnr"] < 29  # ~+10/255 offset (clipped at 255): PSNR slightly above 20 log10(25.5) = 28.1
    assert len(data["average"]["per_view"]["psnr"]) == 3
    assert main(["eval", "mv", str(tmp_path / "gen" / "obj1"), str(tmp_path / "gt" / "obj1")]) == 0
    out = capsys.readouterr().out
    assert "psnr↑" in out and "ssim↑" in out and "mean" in out


def test_eval_prompts(capsys):
    assert main(["eval", "prompts", "--num", "202"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 202 and lines[0] == "ApplyEyeMakeup\tapply eye makeup" and lines[101] == lines[0]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_process_killed_mid_session_loses_no_vote(tmp_path):
    for m in ("m1", "m2"):
        video_set(tmp_path / m, n=3, seed=0 if m == "m1" else 5)
    port, db = _free_port(), tmp_path / "votes.sqlite"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "svd_core", "eval", "serve", "--model", f"m1={tmp_path / 'm1'}",
                             "--model", f"m2={tmp_path / 'm2'}", "--checks", "1", "--db", str(db), "--port",
                             str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(4)]
        assert "voting page: http://127.0.0.1" in lines[0] and lines[1].startswith("organiser token: ")
        code = lines[3].split(": ", 1)[1].split()[0]  # "participant codes (10): CODE ..."
        base = f"http://127.0.0.1:{port}/"

        def call(path, body=None):
            req = urllib.request.Request(base + path, data=None if body is None else json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as r:
                return json.loads(r.read())

        for _ in range(3):
            p = call(f"api/next?code={code}")
            for axis in ("visual_quality", "prompt_following"):
                call("api/vote", {"code": code, "pair_id": p["pair_id"], "axis": axis, "choice": "right"})
        proc.send_signal(signal.SIGKILL)  # no clean shutdown
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    assert sqlite3.connect(db).execute("SELECT count(*) FROM votes").fetchone()[0] == 6


class _MeanColor:
    id = "mean-color-cli"

    def __init__(self, device="cpu"):
        self.device = device

    def __call__(self, videos):
        return videos.mean(dim=(1, 3, 4))  # b t c h w -> b c


def make_mean_color(device="cpu"):
    return _MeanColor(device)


def test_eval_fvd_with_a_pluggable_extractor(tmp_path, capsys, monkeypatch):
    video_set(tmp_path / "a", n=3, seed=0)
    video_set(tmp_path / "b", n=3, seed=0, noise=50.0)
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    assert main(["eval", "fvd", str(tmp_path / "a"), str(tmp_path / "b"), "--extractor",
                 "test_eval_cli:make_mean_color", "--num-frames", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fvd"] > 0
    assert main(["eval", "fvd", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert "--i3d PATH is required" in capsys.readouterr().err
