"""Property suite over the voting API (issue 12): random methods, paths, headers, Content-Lengths and bodies sent as
raw bytes to a real server on 127.0.0.1. Every request gets a clean 4xx (or a 200 where a valid request happens to be
drawn), never a 5xx, a hang or a file outside the media root; the server still answers afterwards. Bounded in
examples and time; the outcome counts are printed (run with -s) for the issue's closing note."""
import collections
import json
import os
import socket
import threading
import time

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from svd_core.eval.standins import moving_square  # noqa: E402
from svd_core.eval.study import study_from_folders  # noqa: E402
from svd_core.video_io import write_video  # noqa: E402
from svd_core.eval.voting_server import StandaloneServer, VotingApp  # noqa: E402

SECRET = b"TOP-SECRET-MARKER"
OUTCOMES: collections.Counter = collections.Counter()
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    for m_i, m in enumerate(("a", "b")):
        for k in range(2):
            write_video(moving_square(num_frames=3, seed=k + m_i), root / "media" / m / f"p{k}.webm", fps=8)
    (root / "secret.txt").write_bytes(SECRET + b"\n")
    study = study_from_folders("fuzz", {m: str(root / "media" / m) for m in "ab"}, num_checks=1,
                               check_dir=str(root / "media" / "checks"))
    app = VotingApp(study, str(root / "v.sqlite"), num_orderings=5, seed=0)
    server = StandaloneServer(app, port=0, workers=4, queue=4, idle_timeout=0.3, read_timeout=1.0).start()
    server.code = app.store.issue_codes(1)[0]
    server.pair = app.store.next_pair(server.code)["pair_id"]
    try:
        yield server
    finally:
        server.stop()
        app.close()


TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
METHODS = st.sampled_from(["GET"] * 8 + ["POST"] * 8 + ["PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE", "get",
                                                      "CONNECT", "G\x7fT", "P(ST"])
PATHS = st.one_of(
    st.sampled_from(["/", "/index.html", "/api/next", "/api/next?code={code}", "/api/vote", "/api/codes",
                     "/api/votes.csv", "/api/leaderboard", "/leaderboard", "/api/session", "/media/{pair}/left",
                     "/media/{pair}/image", "/media/../secret.txt", "/media/%2e%2e/%2e%2e/secret.txt",
                     "/media/{pair}/../../../secret.txt", "//etc/passwd", "/media/{pair}/left/../../../etc/passwd",
                     "/api/next?code=../../etc/passwd", "/api/votes.csv?token=x&token=y", "*", "http://evil/"]),
    st.builds(lambda p, q: "/" + p + ("?" + q if q else ""), TEXT.filter(lambda t: " " not in t), TEXT))
HEADER_NAMES = st.one_of(st.sampled_from(["Content-Type", "Origin", "Host", "Authorization", "Sec-Fetch-Site",
                                          "Range", "Cookie", "X-Organiser-Token", "Transfer-Encoding", "Expect",
                                          "Connection"]),
                         st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":"),
                                 min_size=1, max_size=12))
HEADER_VALUES = st.one_of(st.sampled_from(["application/json", "text/plain", "http://evil.example", "null", "chunked",
                                           "Bearer x", "cross-site", "same-origin", "bytes=0-10", "100-continue",
                                           "keep-alive", "127.0.0.1", "localhost:1"]),
                          st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=60))
LENGTHS = st.sampled_from(["exact", "absent", "negative", "huge", "short", "garbage", "double", "superscript"])
BODIES = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda d: json.dumps(d).encode(), st.dictionaries(
        st.sampled_from(["code", "pair_id", "axis", "choice", "count", "x"]),
        st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), TEXT, st.lists(st.integers(), max_size=3),
                  st.sampled_from(["{code}", "{pair}", "visual_quality", "left", "tie"])), max_size=5)),
    st.sampled_from([b"[]", b"null", b'"x"', b"[" * 5000, b'{"count": 100000}', b'{"count": -1}']))


def _exchange(srv, data: bytes, body_sent: bool = True) -> tuple[int, bytes]:
    host, port = srv.httpd.server_address[:2]
    with socket.create_connection((host, port), timeout=5) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:  # the server refused early and closed
            pass
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    resp = b"".join(chunks)
    if not resp.startswith(b"HTTP/"):
        return 0, resp
    return int(resp.split(b" ", 2)[1]), resp


@FUZZ
@given(method=METHODS, path=PATHS, headers=st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=6),
       length=LENGTHS, body=BODIES, with_host=st.booleans(), json_type=st.booleans())
def test_random_requests_get_clean_4xx_and_nothing_escapes(srv, method, path, headers, length, body, with_host,
                                                           json_type):
    port = srv.httpd.server_address[1]
    path = path.replace("{code}", srv.code).replace("{pair}", srv.pair)
    body = body.replace(b"{code}", srv.code.encode()).replace(b"{pair}", srv.pair.encode())
    lines = [f"{method} {path} HTTP/1.1"] + ([f"Host: 127.0.0.1:{port}"] if with_host else [])
    lines += ["Content-Type: application/json"] if json_type else []
    lines += [f"{k}: {v}" for k, v in headers]
    cl = {"exact": str(len(body)), "negative": "-1", "huge": str(300 << 20), "short": str(len(body) + 50),
          "garbage": "12abc", "superscript": "\xb2", "double": f"{len(body)}, {len(body)}", "absent": None}[length]
    if cl is not None:
        lines.append(f"Content-Length: {cl}")
    t0 = time.monotonic()
    status, resp = _exchange(srv, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    elapsed = time.monotonic() - t0
    OUTCOMES[status] += 1
    assert SECRET not in resp and b"root:x:0:0" not in resp
    assert elapsed < 3.0  # bounded by the read timeout, never a hang
    assert 200 <= status < 500 or status == 0 and not resp, resp[:300]
    if status == 200:  # only a valid request can succeed: a page, a pair, a media file of a served pair
        assert method == "GET" or path.split("?")[0] in ("/api/vote",), (method, path)
        if "/media/" in path:
            assert resp.split(b"\r\n\r\n", 1)[1][:4] == b"\x1a\x45\xdf\xa3"


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(method=st.sampled_from(["GET", "POST"]), route=st.sampled_from(["/api/vote", "/api/next", "/api/codes",
                                                                       "/media/x/left", "/"]),
       query=st.dictionaries(st.sampled_from(["code", "token", "pair"]), st.one_of(TEXT, st.just("{code}")),
                             max_size=3), body=BODIES,
       headers=st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=4), plain=st.booleans())
def test_app_handler_never_raises(srv, method, route, query, body, headers, plain):
    """The same inputs straight into `VotingApp.handle` (as the aiohttp routes call it): always a Response."""
    if plain:  # a well-formed same-origin request around the random parts
        headers = {**headers, "Host": "127.0.0.1:%d" % srv.httpd.server_address[1], "Content-Type": "application/json"}
        headers.pop("Origin", None), headers.pop("Sec-Fetch-Site", None)
    query = {k: v.replace("{code}", srv.code) for k, v in query.items()}
    body = body.replace(b"{code}", srv.code.encode()).replace(b"{pair}", srv.pair.encode())
    resp = srv.app.handle(method, route, query, body, headers)
    OUTCOMES[f"handle:{resp.status}"] += 1
    assert resp.status in (200, 400, 401, 403, 404, 405, 409), resp.body
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    json.loads(resp.body) if resp.content_type == "application/json" else None


JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                              st.sampled_from(["m/a.webm", "m/b.webm", "../secret.txt", "/etc/passwd", "x.png",
                                               "m/../../secret.webm", "", "a\nb", "__check_good__"]), TEXT),
                    lambda inner: st.one_of(st.lists(inner, max_size=3),
                                            st.dictionaries(st.one_of(TEXT, st.sampled_from(
                                                ["id", "videos", "prompt", "image", "good", "bad"])), inner,
                                                max_size=3)), max_leaves=12)
MANIFEST_KEYS = st.sampled_from(["name", "axes", "check_every", "max_failed_checks", "items", "attention_checks",
                                 "organiser_token", "media_root"])


@pytest.fixture(scope="module")
def manifest_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("manifests")
    (root / "study").mkdir()
    (root / "secret.txt").write_bytes(SECRET)
    (root / "secret.webm").write_bytes(SECRET)
    for name in ("a", "b"):
        write_video(moving_square(num_frames=2, seed=0), root / "study" / "m" / f"{name}.webm", fps=8)
    return root


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(patch=st.dictionaries(MANIFEST_KEYS, JSON, max_size=3), item_patch=st.dictionaries(
    st.sampled_from(["id", "videos", "prompt", "image"]), JSON, max_size=2))
def test_random_manifests_load_inside_the_root_or_fail_cleanly(manifest_dir, patch, item_patch):
    from svd_core.eval.study import load_study

    item = {"id": "x", "videos": {"a": "m/a.webm", "b": "m/b.webm"}, **item_patch}
    path = manifest_dir / "study" / "study.json"
    path.write_text(json.dumps({"items": [item], **patch}))
    try:
        st_ = load_study(str(path))
    except (ValueError, FileNotFoundError) as exc:
        OUTCOMES["manifest:" + type(exc).__name__] += 1
        assert "study" in str(exc) and SECRET.decode() not in str(exc)
        return
    OUTCOMES["manifest:loaded"] += 1
    root = os.path.realpath(manifest_dir / "study")
    files = [p for it in st_.items for p in [*it.videos.values(), it.image] if p]
    assert files and all(os.path.commonpath([f, root]) == root for f in files)


def test_server_still_answers_after_fuzzing(srv):
    threads = threading.active_count()
    status, resp = _exchange(srv, f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{srv.httpd.server_address[1]}\r\n\r\n".encode())
    assert status == 200 and b"Video preference study" in resp
    assert threads < 40
    print("voting API fuzz outcomes:", dict(sorted(OUTCOMES.items(), key=str)))

