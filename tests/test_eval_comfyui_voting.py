"""The voting page served by a real ComfyUI 0.3.75 (routes on PromptServer): start a study with the
SVDSuite_VotingStudy node over /prompt, vote in headless Chromium at /svd/vote/<name>/, read the leaderboard."""
import sqlite3
import sys
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "comfyui"))

from comfy_harness import ComfyServer, comfyui_dir  # noqa: E402

from svd_core.eval.standins import video_set  # noqa: E402

PREFERENCE = ("good", "bad")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy-vote")
    video_set(base / "input" / "vote_good", n=2, seed=0)
    video_set(base / "input" / "vote_bad", n=2, seed=0, noise=70.0)
    srv = ComfyServer(base=base, comfy=comfyui_dir()).start()
    try:
        yield srv
    finally:
        srv.stop()


def test_voting_page_on_the_comfyui_server(server):
    from playwright.sync_api import sync_playwright

    missing = requests.get(server.url + "/svd/vote/nostudy/", timeout=10)
    assert missing.status_code == 404 and "SVDSuite_VotingStudy" in missing.json()["error"]
    prompt = {"1": {"class_type": "SVDSuite_VotingStudy", "inputs": {
        "name": "realui", "models": "good=vote_good\nbad=vote_bad", "manifest": "", "attention_checks": 1}}}
    entry, _ = server.wait(server.queue(prompt), timeout=120)
    assert entry["status"]["status_str"] == "success", server.log_tail()
    assert entry["outputs"]["1"]["text"][0].startswith("voting page: /svd/vote/realui/")
    db = server.output_dir / "svd_eval" / "votes" / "realui.sqlite"
    clicks = 0
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page()
            page.goto(server.url + "/svd/vote/realui/")
            for n in range(1, 7):
                page.wait_for_function(f"document.getElementById('pair').dataset.number === '{n}'", timeout=15000)
                pid = page.get_attribute("#pair", "data-pair-id")
                left, right, is_check, expected = sqlite3.connect(db).execute(
                    "SELECT left_model, right_model, is_check, expected FROM pairs WHERE id = ?", (pid,)).fetchone()
                choice = expected if is_check else ("left" if left == "good" else "right")
                for axis in ("visual_quality", "prompt_following"):
                    page.click(f".axis[data-axis='{axis}'] button[data-choice='{choice}']")
                    clicks += 1
            page.wait_for_function("document.getElementById('pair').dataset.number === '7'", timeout=15000)
            page.click("a[href='leaderboard']")
            page.wait_for_selector("table.leaderboard")
            for axis in ("visual_quality", "prompt_following"):
                models = page.locator(f"table[data-axis='{axis}'] td.model").all_inner_texts()
                assert models == ["good", "bad"]
        finally:
            browser.close()
    con = sqlite3.connect(db)
    assert con.execute("SELECT count(*) FROM votes").fetchone()[0] == clicks == 12
    assert con.execute("SELECT count(*) FROM votes WHERE is_check = 1 AND correct = 1").fetchone()[0] == 2
