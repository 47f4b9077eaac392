"""Voting study under attack (issue 12): one regression test per defect found by trying it, against a real server on
127.0.0.1 with bounded requests and time; the hypothesis suite over the HTTP API is in test_eval_voting_fuzz.py."""
import csv
import io
import json
import os
import shutil
import socket
import threading
import time

import pytest

from svd_core.eval.elo import read_votes_csv
from svd_core.eval.standins import moving_square
from svd_core.eval.study import load_study, study_from_folders
from svd_core.video_io import write_video
from svd_core.eval.voting_server import MAX_BODY, StandaloneServer, VotingApp

MODELS = ("good, v2", 'bad "x"')  # a comma and quotes: the CSV export must quote them


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("secure")
    for m_i, m in enumerate(("good", "bad")):
        for k in range(3):
            write_video(moving_square(num_frames=4, seed=k + 7 * m_i), root / "media" / m / f"p{k}.webm", fps=8)
    (root / "secret.txt").write_text("TOP-SECRET-MARKER\n")
    return root


def make_app(media, tmp_path, **kw):
    st = study_from_folders("sec", {MODELS[0]: str(media / "media" / "good"), MODELS[1]: str(media / "media" / "bad")},
                            num_checks=2, check_dir=str(media / "media" / "checks"))
    return VotingApp(st, str(tmp_path / "v.sqlite"), num_orderings=20, seed=kw.pop("seed", 0), **kw)


@pytest.fixture
def server(media, tmp_path):
    srv = StandaloneServer(make_app(media, tmp_path), port=0, idle_timeout=0.5, read_timeout=2.0).start()
    try:
        yield srv
    finally:
        srv.stop()
        srv.app.close()


def raw(srv, data: bytes, timeout: float = 5.0, half_close: bool = True) -> tuple[int, dict, bytes]:
    """Send raw bytes, read the whole response: (status, headers, body); status 0 when the server just closed."""
    host, port = srv.httpd.server_address[:2]
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    resp = b"".join(chunks)
    if not resp:
        return 0, {}, b""
    head, _, body = resp.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def request(srv, method: str, path: str, body=None, headers=None, **kw):
    host = "127.0.0.1:%d" % srv.httpd.server_address[1]
    data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    hdrs = {"Host": host, **({"Content-Type": "application/json", "Content-Length": str(len(data))}
                             if method == "POST" else {}), **(headers or {})}
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items() if v is not None)
    return raw(srv, head.encode("latin-1") + b"\r\n" + data, **kw)


def next_pair(srv, code):
    status, _, body = request(srv, "GET", f"/api/next?code={code}")
    assert status == 200, body
    return json.loads(body)


def test_results_and_exports_need_the_organiser_token(server):
    token = server.app.token
    assert len(token) >= 32
    for path in ("/api/votes.csv", "/api/leaderboard", "/leaderboard"):
        for headers in ({}, {"Authorization": "Bearer " + token[:-1]}, {"Authorization": "Bearer " + token + "x"}):
            status, _, body = request(server, "GET", path, headers=headers)
            assert status == 401 and b"organiser token" in body, (path, headers)
        assert request(server, "GET", path + "?token=" + token[:8])[0] == 401
        assert request(server, "GET", path, headers={"Authorization": "Bearer " + token})[0] == 200
        assert request(server, "GET", path + "?token=" + token)[0] == 200
    # the participant page does not link to the results
    assert b"leaderboard" not in request(server, "GET", "/")[2]
    # new codes: organiser only
    assert request(server, "POST", "/api/codes", {"count": 3})[0] == 401
    status, _, body = request(server, "POST", "/api/codes", {"count": 3}, {"Authorization": "Bearer " + token})
    assert status == 200 and len(json.loads(body)["codes"]) == 3


def test_participants_need_an_issued_code_and_see_each_pair_once(server):
    assert request(server, "POST", "/api/session", {})[0] == 404  # no throw-away sessions any more
    for code in ("", "short", "a" * 20, "../../etc/passwd"):
        status, _, body = request(server, "GET", f"/api/next?code={code}")
        assert status == 403 and b"participant code" in body
    code, other = server.app.store.issue_codes(2)
    combos, checks, numbers = set(), 0, []
    for _ in range(20):
        p = next_pair(server, code)
        if p["done"]:
            break
        row = server.app.store.pair(p["pair_id"])
        numbers.append(p["number"])
        if row["is_check"]:
            checks += 1
        else:
            combos.add((row["item"], min(row["left_model"], row["right_model"])))
        for axis in p["axes"]:
            vote = {"code": code, "pair_id": p["pair_id"], "axis": axis, "choice": "left"}
            assert request(server, "POST", "/api/vote", vote)[0] == 200
    # 3 items x 1 model pair, each once, plus the check of the first block; then done
    assert len(combos) == 3 and checks == 1 and numbers == [1, 2, 3, 4] and p == {"done": True, "number": 4}
    # another participant's code cannot vote on this participant's pair
    status, _, body = request(server, "POST", "/api/vote", {"code": other, "pair_id": row["id"],
                                                            "axis": "visual_quality", "choice": "right"})
    assert status == 403 and b"another participant" in body


def test_one_vote_per_pair_and_axis_revotes_refused(server):
    code = server.app.store.issue_codes(1)[0]
    p = next_pair(server, code)
    vote = {"code": code, "pair_id": p["pair_id"], "axis": "visual_quality", "choice": "left"}
    assert request(server, "POST", "/api/vote", vote)[0] == 200
    status, _, body = request(server, "POST", "/api/vote", {**vote, "choice": "right"})
    assert status == 409 and b"final" in body
    assert server.app.store._q("SELECT choice FROM votes WHERE pair = ?", (p["pair_id"],)) == [("left",)]
    # the half-answered pair comes back (a reload cannot skip a pair, e.g. an attention check)
    assert next_pair(server, code)["pair_id"] == p["pair_id"]


def test_attention_checks_at_unpredictable_positions_and_failures_reported(media, tmp_path):
    app = make_app(media, tmp_path, seed=None)  # the server's own randomness
    app.study.check_every = 2
    positions = []
    for code in app.store.issue_codes(12):
        p, n = app.store.next_pair(code), 0
        while not p["done"]:
            n += 1
            row = app.store.pair(p["pair_id"])
            if row["is_check"]:
                positions.append(n)
            for axis in app.study.axes:
                app.store.cast(code, p["pair_id"], axis, "tie")  # a tie is a failed check
            p = app.store.next_pair(code)
    # one check in each block of 2 served (3 pairs + checks), at both positions: not predictable by counting
    assert len(positions) >= 24 and {x for x in positions if x <= 2} == {1, 2}
    counts = app.store.counts()
    assert counts["excluded_participants"] == 12 and len(counts["excluded_codes"]) == 12
    assert app.store.votes() == [] and len(app.store.votes(include_failed=True)) > 0  # left out of the Elo
    page = app.handle("GET", "/leaderboard", {"token": app.token}, b"").body.decode()
    assert "12 participants left out for failed attention checks" in page and counts["excluded_codes"][0] in page
    app.close()


def test_cross_origin_and_non_json_posts_refused(server):
    code = server.app.store.issue_codes(1)[0]
    p = next_pair(server, code)
    vote = {"code": code, "pair_id": p["pair_id"], "axis": "visual_quality", "choice": "left"}
    port = server.httpd.server_address[1]
    for headers in ({"Origin": "http://evil.example"}, {"Origin": f"http://127.0.0.1:{port + 1}"},
                    {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}, {"Content-Type": "text/plain"},
                    {"Host": f"attacker.example:{port}"}, {"Host": None}):
        status, _, body = request(server, "POST", "/api/vote", vote, headers)
        assert status == 403, (headers, body)
    assert request(server, "GET", "/", headers={"Host": "rebound.example"})[0] == 403  # DNS rebinding
    assert server.app.store._q("SELECT count(*) FROM votes") == [(0,)]
    status, _, _ = request(server, "POST", "/api/vote", vote, {"Origin": f"http://127.0.0.1:{port}",
                                                                "Sec-Fetch-Site": "same-origin"})
    assert status == 200


def test_body_size_and_content_length_limits(server):
    t0 = time.monotonic()
    head = "POST /api/vote HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n" % (
        server.httpd.server_address[1])
    cases = {f"Content-Length: {300 << 20}": 413, f"Content-Length: {MAX_BODY + 1}": 413, "Content-Length: -1": 400,
             "Content-Length: abc": 400, "Content-Length: 1e3": 400, "Content-Length: \xb2": 400,
             "Transfer-Encoding: chunked": 400, "": 411}
    for line, expected in cases.items():
        status, headers, body = raw(server, (head + (line + "\r\n" if line else "") + "\r\n").encode("latin-1"),
                                    half_close=False)
        assert status == expected, (line, body)
        assert "error" in json.loads(body) and headers["x-content-type-options"] == "nosniff"
    assert time.monotonic() - t0 < 5  # nothing waited for a body it refused
    # a body shorter than announced: 408 after the idle timeout, not a blocked thread
    t0 = time.monotonic()
    status, _, _ = raw(server, (head + "Content-Length: 100\r\n\r\n{").encode(), half_close=False)
    assert status == 408 and time.monotonic() - t0 < 3
    assert request(server, "GET", "/")[0] == 200


def test_bounded_pool_idle_and_slow_connections(media, tmp_path):
    srv = StandaloneServer(make_app(media, tmp_path), port=0, workers=2, queue=2, idle_timeout=0.5,
                           read_timeout=1.5).start()
    threads_before = threading.active_count()
    host, port = srv.httpd.server_address[:2]
    idle = [socket.create_connection((host, port), timeout=5) for _ in range(12)]
    try:
        time.sleep(0.2)
        busy = 0
        for s in idle:
            s.settimeout(3)
            first = s.recv(64)  # the server answers or closes every one of them, quickly
            busy += first.startswith(b"HTTP/1.0 503")
        assert busy >= 12 - 4  # only workers + queue connections were taken in
        assert threading.active_count() <= threads_before + 2 * 2  # workers and their watchdogs, no thread each
        # slow drip: a header byte every 0.3 s (under the idle timeout) is cut at the read timeout
        t0 = time.monotonic()
        with socket.create_connection((host, port), timeout=5) as s:
            try:
                for ch in b"GET / HTTP/1.1\r\nX-Slow: " + b"a" * 30:
                    s.sendall(bytes([ch]))
                    time.sleep(0.3 if ch == ord("a") else 0)
            except OSError:
                pass
        assert time.monotonic() - t0 < 4
        assert request(srv, "GET", "/")[0] == 200  # still answers
    finally:
        for s in idle:
            s.close()
        srv.stop()
        srv.app.close()


def test_media_only_inside_the_root_with_nosniff(media, tmp_path, server):
    code = server.app.store.issue_codes(1)[0]
    p = next_pair(server, code)
    status, headers, body = request(server, "GET", f"/media/{p['pair_id']}/left")
    assert status == 200 and headers["content-type"] == "video/webm" and body[:4] == b"\x1a\x45\xdf\xa3"
    assert headers["x-content-type-options"] == "nosniff"
    for path in ("/media/../secret.txt", "/media/%2e%2e/%2e%2e/secret.txt", f"/media/{p['pair_id']}/../../secret",
                 "/media/" + "0" * 32 + "/left", f"/media/{p['pair_id']}/image"):
        status, _, body = request(server, "GET", path)
        assert status == 404 and b"TOP-SECRET" not in body, path
    # a file swapped for a symlink to the outside after the study was loaded is not served
    row = server.app.store.pair(p["pair_id"])
    target = row["right_path"]
    os.rename(target, target + ".bak")
    try:
        os.symlink(str(media / "secret.txt"), target)
        status, _, body = request(server, "GET", f"/media/{p['pair_id']}/right")
        assert status == 404 and b"TOP-SECRET" not in body
    finally:
        os.remove(target)
        os.rename(target + ".bak", target)


def _manifest(tmp_path, data) -> str:
    path = tmp_path / "study.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


def test_manifest_validated_at_load(media, tmp_path):
    root = tmp_path
    shutil.copytree(media / "media", root / "m")
    good = {"name": "ok", "items": [{"id": "x", "videos": {"a": "m/good/p0.webm", "b": "./m/bad/../bad/p0.webm"}}]}
    st = load_study(_manifest(root, good))
    assert st.items[0].videos["b"] == os.path.realpath(root / "m" / "bad" / "p0.webm")
    os.symlink(str(media / "media"), str(root / "linked"))  # a folder linked from outside the root
    (root / "sub").mkdir()
    os.symlink("/etc/passwd", str(root / "sub" / "passwd.mp4"))
    bad = {
        "/etc/passwd": ({"a": "/etc/passwd", "b": "m/bad/p0.webm"}, "not a video"),
        "outside": ({"a": "../" + os.path.basename(media) + "/media/good/p1.webm", "b": "m/bad/p0.webm"},
                    "outside the study's media folder"),
        "symlink out": ({"a": "sub/passwd.mp4", "b": "m/bad/p0.webm"}, "outside the study's media folder"),
        "linked folder": ({"a": "linked/good/p0.webm", "b": "m/bad/p0.webm"}, "outside the study's media folder"),
        "missing": ({"a": "m/good/nope.webm", "b": "m/bad/p0.webm"}, "not found"),
        "text": ({"a": "../secret.txt", "b": "m/bad/p0.webm"}, "not a video"),
        "list path": ({"a": ["m/good/p0.webm"], "b": "m/bad/p0.webm"}, "expected a path"),
        "newline name": ({"a\nb": "m/good/p0.webm", "b": "m/bad/p0.webm"}, "printable"),
        "reserved name": ({"__check_good__": "m/good/p0.webm", "b": "m/bad/p0.webm"}, "must not start with"),
    }
    for case, (videos, msg) in bad.items():
        with pytest.raises((ValueError, FileNotFoundError), match=msg):
            load_study(_manifest(root, {"items": [{"id": "x", "videos": videos}]}))
    for data, msg in (("[1, 2]", "expected an object"), ("{not json", "not valid JSON"),
                      ({"items": "abc"}, "expected a list"), ({"check_every": "5"}, "integer"),
                      ({"check_every": True}, "integer"), ({"check_every": 0}, "outside"),
                      ({"axes": ["x;drop"]}, "axis"), ({"axes": [[]]}, "axis"), ({"axes": ["a", "a"]}, "distinct"),
                      ({"oops": 1}, "unknown key"),
                      ({"organiser_token": "short"}, "organiser token"), ({"name": "a\x00b"}, "printable"),
                      ({"items": [{"id": "x", "videos": {"a": "m/good/p0.webm"}}] * 2}, "two or more models"),
                      ({"items": good["items"] * 2}, "unique"), ({"items": [{"id": "x"}]}, "videos: expected"),
                      ("[" * 100000 + "]" * 100000, "not valid JSON")):
        with pytest.raises(ValueError, match=msg):
            load_study(_manifest(root, {**good, **data} if isinstance(data, dict) else data))
    (root / "study.json").write_bytes(b'{"name": "\xff"}')
    with pytest.raises(ValueError, match="not valid JSON"):
        load_study(str(root / "study.json"))
    (root / "study.json").write_bytes(b" " * (5 << 20))
    with pytest.raises(ValueError, match="bytes; at most"):
        load_study(str(root / "study.json"))


def test_csv_export_quotes_model_names(server):
    code = server.app.store.issue_codes(1)[0]
    p = next_pair(server, code)
    while p["done"] is False:
        row = server.app.store.pair(p["pair_id"])
        choice = row["expected"] if row["is_check"] else ("left" if row["left_model"] == MODELS[0] else "right")
        for axis in p["axes"]:
            request(server, "POST", "/api/vote", {"code": code, "pair_id": p["pair_id"], "axis": axis,
                                                  "choice": choice})
        p = next_pair(server, code)
    status, headers, body = request(server, "GET", "/api/votes.csv?token=" + server.app.token)
    assert status == 200 and headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(body.decode())))
    assert rows[0] == ["model_a", "model_b", "winner", "axis"] and all(len(r) == 4 for r in rows)
    votes = read_votes_csv(body.decode())
    assert len(votes) == 6 and {v.model_a for v in votes} | {v.model_b for v in votes} == set(MODELS)
    assert all((v.model_a if v.winner == "a" else v.model_b) == MODELS[0] for v in votes)


def test_foreign_votes_database_is_one_clear_error(media, tmp_path):
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    old = tmp_path / "old.sqlite"
    import sqlite3
    sqlite3.connect(old).executescript("CREATE TABLE pairs (id TEXT, session TEXT); CREATE TABLE votes (id INT);")
    app = make_app(media, tmp_path)
    study = app.study
    app.close()
    for name in ("junk.sqlite", "old.sqlite"):
        with pytest.raises(ValueError, match="new --db file"):
            VotingApp(study, str(tmp_path / name))


def test_cli_serve_prints_token_and_codes_and_refuses_hostile_manifests(media, tmp_path, capsys):
    """`eval serve`: a manifest reaching /etc/passwd is one clean error; a real study prints the organiser token
    and the participant codes, and its results need that token."""
    import subprocess
    import sys

    from svd_core.__main__ import main

    (tmp_path / "evil.json").write_text(json.dumps({"items": [{"id": "x", "videos": {
        "a": "/etc/passwd", "b": "../../../../../../etc/passwd"}}]}))
    assert main(["eval", "serve", str(tmp_path / "evil.json"), "--db", str(tmp_path / "e.sqlite")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not a video file" in err and "Traceback" not in err
    assert main(["eval", "serve", "--model", f"a={media / 'media' / 'good'}", "--model",
                 f"b={media / 'media' / 'bad'}", "--db", str(tmp_path / "c.sqlite"), "--codes", "5000"]) == 2
    assert "--codes 5000" in capsys.readouterr().err
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-m", "svd_core", "eval", "serve", "--model",
                             f"good={media / 'media' / 'good'}", "--model", f"bad={media / 'media' / 'bad'}",
                             "--checks", "1", "--db", str(tmp_path / "cli.sqlite"), "--port", "0", "--codes", "3",
                             "--token", "organiser-token-0123456789"], cwd=repo, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONPATH": repo})
    try:
        lines = [proc.stdout.readline() for _ in range(4)]
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert lines[1] == "organiser token: organiser-token-0123456789\n", lines
    codes = lines[3].split(": ", 1)[1].split()
    assert lines[3].startswith("participant codes (3): ") and len(codes) == 3 and len(set(codes)) == 3
    import sqlite3
    assert sorted(codes) == sorted(r[0] for r in sqlite3.connect(tmp_path / "cli.sqlite").execute(
        "SELECT code FROM participants"))
