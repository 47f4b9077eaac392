"""The voting page served by a real ComfyUI 0.3.75 (routes on PromptServer): start a study with the
SVDSuite_VotingStudy node over /prompt, vote in headless Chromium at /svd/vote/<name>/, read the leaderboard."""
import sqlite3
import uuid

import pytest
import requests

from svd_core.eval.standins import video_set

PREFERENCE = ("good", "bad")


@pytest.fixture(scope="module")
def study(comfy):
    """The session's ComfyUI server (tests/conftest.py) with this test's two video sets in its input folder, under
    names no other test uses; returns the server and a unique study / folder stem."""
    stem = f"vote_{uuid.uuid4().hex[:8]}"
    video_set(comfy.input_dir / f"{stem}_good", n=4, seed=0)
    video_set(comfy.input_dir / f"{stem}_bad", n=4, seed=0, noise=70.0)
    return comfy, stem


def test_voting_page_on_the_comfyui_server(study):
    from playwright.sync_api import sync_playwright

    server, stem = study
    missing = requests.get(server.url + "/svd/vote/nostudy/", timeout=10)
    assert missing.status_code == 404 and "SVDSuite_VotingStudy" in missing.json()["error"]
    prompt = {"1": {"class_type": "SVDSuite_VotingStudy", "inputs": {
        "name": stem, "models": f"good={stem}_good\nbad={stem}_bad", "manifest": "", "attention_checks": 1,
        "participants": 2}}}
    entry, _ = server.wait(server.queue(prompt), timeout=120)
    assert entry["status"]["status_str"] == "success", server.log_tail()
    text = entry["outputs"]["1"]["text"][0]
    assert text.startswith(f"voting page: /svd/vote/{stem}/")
    token = text.split("leaderboard?token=")[1].split()[0]
    codes = text.split("participant codes: ")[1].split()
    db = server.output_dir / "svd_eval" / "votes" / f"{stem}.sqlite"
    assert len(codes) == 2 and sorted(codes) == sorted(r[0] for r in sqlite3.connect(db).execute(
        "SELECT code FROM participants"))
    base = server.url + f"/svd/vote/{stem}/"
    assert requests.get(base + "api/votes.csv", timeout=10).status_code == 401
    assert requests.get(base + "api/next", params={"code": "made-up-code-123"}, timeout=10).status_code == 403
    cross = requests.post(base + "api/vote", json={}, headers={"Origin": "http://evil.example"}, timeout=10)
    assert cross.status_code == 403
    clicks = 0
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page()
            page.goto(base + f"?code={codes[0]}")
            for n in range(1, 6):  # 4 pairs and the attention check of the first block
                page.wait_for_selector(f"#pair[data-number='{n}']", state="attached", timeout=60000)
                pid = page.get_attribute("#pair", "data-pair-id")
                left, right, is_check, expected = sqlite3.connect(db).execute(
                    "SELECT left_model, right_model, is_check, expected FROM pairs WHERE id = ?", (pid,)).fetchone()
                choice = expected if is_check else ("left" if left == "good" else "right")
                for axis in ("visual_quality", "prompt_following"):
                    page.click(f".axis[data-axis='{axis}'] button[data-choice='{choice}']")
                    clicks += 1
            try:
                page.wait_for_selector("#pair[data-number='done']", state="attached", timeout=60000)
            except Exception:
                raise AssertionError("page never finished: " + page.inner_text("#status") + " | number "
                                     + str(page.get_attribute("#pair", "data-number")) + "\n" + server.log_tail(400))
            page.goto(base + f"leaderboard?token={token}")
            page.wait_for_selector("table.leaderboard")
            for axis in ("visual_quality", "prompt_following"):
                models = page.locator(f"table[data-axis='{axis}'] td.model").all_inner_texts()
                assert models == ["good", "bad"]
        finally:
            browser.close()
    con = sqlite3.connect(db)
    assert con.execute("SELECT count(*) FROM votes").fetchone()[0] == clicks == 10
    assert con.execute("SELECT count(*) FROM votes WHERE is_check = 1 AND correct = 1").fetchone()[0] == 2
    csv_text = requests.get(base + "api/votes.csv", headers={"Authorization": "Bearer " + token}, timeout=10).text
    assert csv_text.count("\n") == 1 + 8 and all(line.split(",")[2] == ("a" if line.startswith("good") else "b")
                                                  for line in csv_text.splitlines()[1:])
