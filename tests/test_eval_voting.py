"""Voting study: SQLite store, HTTP API of the standalone server, and the page driven in headless Chromium."""
import json
import sqlite3
import urllib.error
import urllib.request

import pytest

from svd_core.eval.study import load_study, save_study, study_from_folders
from svd_core.eval.standins import moving_square
from svd_core.video_io import write_video
from svd_core.eval.voting_server import StandaloneServer, VotingApp
from svd_core.eval.votes_db import CHECK_BAD, CHECK_GOOD, VoteStore

MODELS = ("strong", "middle", "weak")  # the voters below always prefer the earlier one
RANK = {m: i for i, m in enumerate(MODELS)}


@pytest.fixture(scope="module")
def study_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    for m_i, m in enumerate(MODELS):
        for k in range(4):  # 4 items x 3 model pairs = 12 pairs per participant (+ one check per 5)
            write_video(moving_square(num_frames=6, seed=10 * k + m_i), root / m / f"prompt{k}.webm", fps=8)
    (root / "strong" / "prompt0.txt").write_text("a red square moving right")
    from PIL import Image
    (root / "images").mkdir()
    Image.fromarray(moving_square(num_frames=1)[0]).save(root / "images" / "prompt1.png")
    return root


def make_study(root, **kw):
    return study_from_folders("demo", {m: str(root / m) for m in MODELS}, image_dir=str(root / "images"),
                              num_checks=2, check_dir=str(root / "checks"), **kw)


def test_study_from_folders_and_manifest_roundtrip(study_dirs, tmp_path):
    st = make_study(study_dirs)
    assert [it.id for it in st.items] == ["prompt0", "prompt1", "prompt2", "prompt3"]
    assert st.items[0].prompt == "a red square moving right" and st.items[1].prompt == "prompt1"
    assert st.items[1].image.endswith("prompt1.png") and st.items[0].image is None
    assert st.models == sorted(MODELS) and len(st.checks) == 2
    save_study(st, str(study_dirs / "study.json"))
    back = load_study(str(study_dirs / "study.json"))
    assert back.items == st.items and back.checks == st.checks and back.axes == st.axes
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"items": [{"id": "x", "videos": {"a": "missing.mp4", "b": "m2.mp4"}}]}))
    with pytest.raises(FileNotFoundError, match="model 'a'"):
        load_study(str(bad))


def _http(url, body=None, headers=None):
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **(headers or {})},
                                 method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("Content-Type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read()


def test_http_api_votes_are_committed_and_blinded(study_dirs, tmp_path):
    db = tmp_path / "votes.sqlite"
    server = StandaloneServer(VotingApp(make_study(study_dirs), str(db), num_orderings=50, seed=0), port=0).start()
    url = server.url
    try:
        status, ctype, page = _http(url)
        assert status == 200 and "text/html" in ctype and b"Video preference study: demo" in page
        sid, other = server.app.store.ensure_codes(2)
        seen_checks, lefts = 0, []
        for n in range(1, 11):
            pair = json.loads(_http(url + f"api/next?code={sid}")[2])
            assert pair["number"] == n and pair["axes"] == ["visual_quality", "prompt_following"]
            assert not any(m in json.dumps(pair) for m in MODELS)  # blinded: no model names reach the page
            status, ctype, data = _http(url + f"media/{pair['pair_id']}/left")
            assert status == 200 and ctype == "video/webm" and data[:4] == b"\x1a\x45\xdf\xa3"
            row = sqlite3.connect(db).execute("SELECT left_model, right_model, is_check FROM pairs WHERE id = ?",
                                              (pair["pair_id"],)).fetchone()
            lefts.append(row[0])
            seen_checks += row[2]
            r = json.loads(_http(url + "api/vote", {"code": sid, "pair_id": pair["pair_id"],
                                                    "axis": "visual_quality", "choice": "left"})[2])
            # committed at once: another connection sees the vote while the server still runs
            count = sqlite3.connect(db).execute("SELECT count(*) FROM votes").fetchone()[0]
            assert count == r["votes_cast"] == 2 * n - 1
            if n % 5 == 0:  # one attention check in every block of 5 pairs
                assert seen_checks == n // 5
            # the unfinished pair (one axis of two answered) comes back, e.g. after a reload
            assert json.loads(_http(url + f"api/next?code={sid}")[2])["pair_id"] == pair["pair_id"]
            _http(url + "api/vote", {"code": sid, "pair_id": pair["pair_id"], "axis": "prompt_following",
                                     "choice": "left"})
        assert len(set(lefts)) > 1  # order is randomized
        assert _http(url + "api/vote", {"code": sid, "pair_id": "nope", "axis": "visual_quality",
                                        "choice": "left"})[0] == 404
        assert _http(url + "api/vote", {"code": sid, "pair_id": pair["pair_id"], "axis": "smell",
                                        "choice": "left"})[0] == 400
        assert _http(url + "media/../../etc/passwd")[0] == 404
        assert _http(url + "api/vote", {"code": other, "pair_id": pair["pair_id"], "axis": "visual_quality",
                                        "choice": "left"})[0] == 403
    finally:
        server.stop()
        server.app.close()


def test_failed_attention_checks_drop_a_session(study_dirs, tmp_path):
    app = VotingApp(make_study(study_dirs), str(tmp_path / "v.sqlite"), num_orderings=20, seed=1)
    good, careless = app.store.issue_codes(2)
    for sid, attentive in ((good, True), (careless, False)):
        for _ in range(10):
            p = app.store.next_pair(sid)
            row = app.store.pair(p["pair_id"])
            for axis in app.study.axes:
                if row["is_check"]:
                    choice = row["expected"] if attentive else ("left" if row["expected"] == "right" else "right")
                else:
                    choice = "left" if RANK[row["left_model"]] < RANK[row["right_model"]] else "right"
                app.store.cast(sid, p["pair_id"], axis, choice)
    assert app.store.failed_participants() == {careless}
    assert app.store.counts()["excluded_participants"] == 1 and app.store.counts()["excluded_codes"] == [careless]
    assert len(app.store.votes()) == 16 and len(app.store.votes(include_failed=True)) == 32
    assert all(CHECK_GOOD not in (v.model_a, v.model_b) and CHECK_BAD not in (v.model_a, v.model_b)
               for v in app.store.votes(include_failed=True))
    app.close()


@pytest.mark.parametrize("models", [MODELS[:2], MODELS])
def test_every_block_has_one_check_and_no_block_is_opened_for_a_check_alone(study_dirs, tmp_path, models):
    """4 items x 1 model pair = 4 pairs: one block of 5 (the check at any of its 5 positions), never a 6th pair
    that would be a lone check in a new block. 12 pairs: 3 blocks of 4 pairs + 1 check, whatever the draws."""
    study = study_from_folders("blocks", {m: str(study_dirs / m) for m in models}, num_checks=3,
                               check_dir=str(tmp_path / "checks"))
    pairs = len(study.items) * len(models) * (len(models) - 1) // 2
    positions = set()
    for seed in range(30):
        store = VoteStore(str(tmp_path / f"v{len(models)}-{seed}.sqlite"), study, seed=seed)
        code = store.issue_codes(1)[0]
        shown = []
        while not (p := store.next_pair(code))["done"]:
            shown.append(store.pair(p["pair_id"])["is_check"])
            for axis in study.axes:
                store.cast(code, p["pair_id"], axis, "left")
        store.close()
        blocks = [shown[i:i + study.check_every] for i in range(0, len(shown), study.check_every)]
        assert len(shown) - sum(shown) == pairs and all(sum(b) == 1 for b in blocks), (seed, shown)
        assert len(blocks) == -(-pairs // (study.check_every - 1))
        positions.add(blocks[0].index(1))
    assert positions == set(range(study.check_every))  # the check really moves around the block


def test_voting_in_headless_chromium(study_dirs, tmp_path):
    from playwright.sync_api import sync_playwright

    db = tmp_path / "browser.sqlite"
    server = StandaloneServer(VotingApp(make_study(study_dirs), str(db), num_orderings=200, seed=2), port=0).start()
    clicks, code = 0, server.app.store.ensure_codes(1)[0]
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"])
            page = browser.new_page()
            page.goto(server.url)  # no code yet: the page asks for one
            page.wait_for_selector("#code", state="visible", timeout=60000)
            page.fill("#code", "not-a-code-of-this-study")
            page.click("#start")
            page.wait_for_selector("#status:has-text('unknown participant')", timeout=60000)
            page.fill("#code", code)
            page.click("#start")
            for n in range(1, 16):  # 12 pairs + 3 attention checks: every pair this participant can see
                page.wait_for_selector(f"#pair[data-number='{n}']", state="attached", timeout=60000)
                pid = page.get_attribute("#pair", "data-pair-id")
                row = server.app.store.pair(pid)
                if n == 1:  # the videos really load in the browser
                    page.locator("#left").evaluate("v => v.readyState >= 1 || new Promise((ok) => "
                                                   "v.addEventListener('loadedmetadata', ok))")
                    assert page.evaluate("document.getElementById('left').videoWidth") == 48
                assert page.inner_text("#prompt") == "Prompt: " + row["prompt"]
                assert page.is_visible("#cond") == bool(row["image_path"])
                if row["is_check"]:
                    choice = row["expected"]
                else:
                    choice = "left" if RANK[row["left_model"]] < RANK[row["right_model"]] else "right"
                for axis in ("visual_quality", "prompt_following"):
                    page.click(f".axis[data-axis='{axis}'] button[data-choice='{choice}']")
                    clicks += 1
            page.wait_for_selector("#pair[data-number='done']", state="attached", timeout=60000)
            assert f"Votes cast: {clicks}" in page.inner_text("#status")
            page.goto(server.url + "leaderboard")
            assert "organiser token" in page.inner_text("body")
            page.goto(server.url + f"leaderboard?token={server.app.token}")
            page.wait_for_selector("table.leaderboard")
            for axis in ("visual_quality", "prompt_following"):
                rows = page.locator(f"table[data-axis='{axis}'] tr").all()[1:]
                models = [r.locator("td.model").inner_text() for r in rows]
                assert models == list(MODELS)
                elos = [float(r.locator("td.elo").inner_text()) for r in rows]
                lows = [float(r.locator("span.low").inner_text()) for r in rows]
                highs = [float(r.locator("span.high").inner_text()) for r in rows]
                assert elos == sorted(elos, reverse=True)
                assert all(lo <= e <= hi for lo, e, hi in zip(lows, elos, highs))
            assert "from 1 participants; 0 participants left out" in page.inner_text("#counts")
            browser.close()
    finally:
        server.stop()
        server.app.close()
    # nothing lost: after the server stopped, a fresh connection finds every click
    con = sqlite3.connect(db)
    assert con.execute("SELECT count(*) FROM votes").fetchone()[0] == clicks
    assert con.execute("SELECT count(*) FROM votes WHERE is_check = 1").fetchone()[0] == 6
    assert con.execute("SELECT count(*) FROM votes WHERE is_check = 1 AND correct = 1").fetchone()[0] == 6


def test_aiohttp_routes_serve_the_same_app(study_dirs, tmp_path):
    """The routes ComfyUI's PromptServer gets: a RouteTableDef served by aiohttp, studies looked up by name."""
    import asyncio

    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from svd_core.eval import voting_server

    app = VotingApp(make_study(study_dirs), str(tmp_path / "aio.sqlite"), num_orderings=20, seed=3)
    assert voting_server.register_study("aio", app) == "/svd/vote/aio/"
    routes = web.RouteTableDef()
    voting_server.aiohttp_routes(routes)
    voting_server.aiohttp_routes(routes)  # a second registration on the same table is a no-op
    assert len(routes) == 4

    async def scenario():
        web_app = web.Application()
        web_app.add_routes(routes)
        async with TestClient(TestServer(web_app)) as client:
            r = await client.get("/svd/vote/aio", allow_redirects=False)
            assert r.status == 302 and r.headers["Location"] == "/svd/vote/aio/"
            r = await client.get("/svd/vote/aio/")
            assert r.status == 200 and "Video preference study: demo" in await r.text()
            sid = app.store.ensure_codes(1)[0]
            pair = await (await client.get(f"/svd/vote/aio/api/next?code={sid}")).json()
            r = await client.get(f"/svd/vote/aio/media/{pair['pair_id']}/right")
            assert r.status == 200 and r.headers["Content-Type"] == "video/webm" and len(await r.read()) > 100
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            vote = {"code": sid, "pair_id": pair["pair_id"], "axis": "visual_quality", "choice": "tie"}
            r = await client.post("/svd/vote/aio/api/vote", json=vote, headers={"Origin": "http://evil.example"})
            assert r.status == 403 and "cross-origin" in (await r.json())["error"]
            r = await client.post("/svd/vote/aio/api/vote", data=b"x" * (1 << 20),
                                  headers={"Content-Type": "application/json"})
            assert r.status == 413
            r = await client.post("/svd/vote/aio/api/vote", json=vote)
            assert (await r.json())["votes_cast"] == 1
            r = await client.post("/svd/vote/aio/api/vote", json=vote)
            assert r.status == 409  # votes are final
            assert (await client.get("/svd/vote/aio/api/leaderboard")).status == 401
            lb = await (await client.get("/svd/vote/aio/api/leaderboard",
                                         headers={"Authorization": "Bearer " + app.token})).json()
            assert lb["counts"]["votes"] == 1 and len(lb["axes"]["visual_quality"]["ratings"]) == 2
            r = await client.get("/svd/vote/nope/")
            assert r.status == 404 and "SVDSuite_VotingStudy" in (await r.json())["error"]

    try:
        asyncio.run(scenario())
    finally:
        voting_server.STUDIES.pop("aio", None)
        app.close()
