"""Voting web app: framework-free request handling, served standalone (stdlib http.server) or through aiohttp
routes (the ComfyUI server registers the same handlers on `PromptServer.instance.routes`)."""
from __future__ import annotations

import json
import logging
import mimetypes
import os
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from .elo import elo_by_axis
from .study import Study
from .voting_page import leaderboard_page, voting_page
from .votes_db import VoteStore

log = logging.getLogger(__name__)
mimetypes.add_type("video/webm", ".webm")
mimetypes.add_type("video/mp4", ".mp4")


@dataclass
class Response:
    status: int = 200
    content_type: str = "application/json"
    body: bytes = b""
    file: str | None = None  # stream this file instead of `body`
    headers: dict = field(default_factory=dict)


def _json(data, status: int = 200) -> Response:
    return Response(status, "application/json", json.dumps(data).encode())


class VotingApp:
    """One study: routes (relative to the app's mount point) -> `Response`."""

    def __init__(self, study: Study, db_path: str, num_orderings: int = 1000, seed: int | None = None):
        self.study = study
        self.store = VoteStore(db_path, study, seed=seed)
        self.num_orderings = num_orderings

    def leaderboard(self) -> dict:
        votes = self.store.votes()
        tables = elo_by_axis(votes, num_orderings=self.num_orderings) if votes else {}
        return {"tables": tables, "counts": self.store.counts()}

    def handle(self, method: str, path: str, query: dict[str, str], body: bytes) -> Response:
        """Dispatch one request; errors become JSON `{error}` with a 4xx status."""
        path = "/" + path.strip("/")
        try:
            if method == "GET" and path in ("/", "/index.html"):
                return Response(200, "text/html; charset=utf-8", voting_page(self.study.name).encode())
            if method == "POST" and path == "/api/session":
                return _json({"session": self.store.new_session()})
            if method == "GET" and path == "/api/next":
                return _json(self.store.next_pair(query.get("session", "")))
            if method == "POST" and path == "/api/vote":
                data = json.loads(body or b"{}")
                missing = [k for k in ("session", "pair_id", "axis", "choice") if k not in data]
                if missing:
                    raise ValueError(f"vote lacks field(s) {', '.join(missing)}")
                n = self.store.cast(data["session"], data["pair_id"], data["axis"], data["choice"])
                return _json({"ok": True, "votes_cast": n})
            if method == "GET" and path == "/api/leaderboard":
                lb = self.leaderboard()
                return _json({"counts": lb["counts"], "axes": {a: t.as_dict() for a, t in lb["tables"].items()}})
            if method == "GET" and path == "/leaderboard":
                lb = self.leaderboard()
                return Response(200, "text/html; charset=utf-8",
                                leaderboard_page(self.study.name, lb["tables"], lb["counts"]).encode())
            if method == "GET" and path == "/api/votes.csv":
                rows = ["model_a,model_b,winner,axis"] + [f"{v.model_a},{v.model_b},{v.winner},{v.axis}"
                                                          for v in self.store.votes()]
                return Response(200, "text/csv", ("\n".join(rows) + "\n").encode())
            if method == "GET" and path.startswith("/media/"):
                return self._media(path)
            return _json({"error": f"no route {method} {path}"}, 404)
        except KeyError as exc:
            return _json({"error": str(exc.args[0]) if exc.args else "not found"}, 404)
        except PermissionError as exc:
            return _json({"error": str(exc)}, 403)
        except (ValueError, json.JSONDecodeError) as exc:
            return _json({"error": str(exc)}, 400)

    def _media(self, path: str) -> Response:
        """`/media/PAIR/left|right|image`: only files of a served pair, never an arbitrary path."""
        parts = path.split("/")
        if len(parts) != 4 or parts[3] not in ("left", "right", "image"):
            return _json({"error": f"bad media path {path!r}"}, 404)
        p = self.store.pair(parts[2])
        f = p[{"left": "left_path", "right": "right_path", "image": "image_path"}[parts[3]]]
        if not f or not os.path.isfile(f):
            return _json({"error": "media file missing"}, 404)
        ctype = mimetypes.guess_type(f)[0] or "application/octet-stream"
        return Response(200, ctype, file=f, headers={"Cache-Control": "no-store"})

    def close(self) -> None:
        self.store.close()


# ------------------------------------------------------------------ standalone (stdlib)
def _make_handler(app: VotingApp):
    class Handler(BaseHTTPRequestHandler):
        def _do(self, method: str):
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else b""
            resp = app.handle(method, url.path, query, body)
            data = resp.body
            if resp.file:
                with open(resp.file, "rb") as f:
                    data = f.read()
            self.send_response(resp.status)
            self.send_header("Content-Type", resp.content_type)
            self.send_header("Content-Length", str(len(data)))
            for k, v in resp.headers.items():
                self.send_header(k, v)
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(data)

        def do_GET(self):
            self._do("GET")

        def do_POST(self):
            self._do("POST")

        def log_message(self, fmt, *args):
            log.debug("vote server: " + fmt, *args)

    return Handler


class StandaloneServer:
    """`ThreadingHTTPServer` around a `VotingApp`; port 0 picks a free port."""

    def __init__(self, app: VotingApp, host: str = "127.0.0.1", port: int = 8189):
        self.app = app
        self.httpd = ThreadingHTTPServer((host, port), _make_handler(app))
        self.httpd.daemon_threads = True
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> "StandaloneServer":
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# ------------------------------------------------------------------ aiohttp (ComfyUI's server)
STUDIES: dict[str, VotingApp] = {}
_ROUTED: set[int] = set()
MOUNT = "/svd/vote"


def register_study(name: str, app: VotingApp) -> str:
    """Serve `app` under `/svd/vote/NAME/` of the aiohttp routes added by `aiohttp_routes`; returns that path."""
    old = STUDIES.get(name)
    if old is not None and old is not app:
        old.close()
    STUDIES[name] = app
    return f"{MOUNT}/{name}/"


def aiohttp_routes(routes) -> None:
    """Add GET / POST `/svd/vote/{study}/...` to an aiohttp `RouteTableDef` (e.g. ComfyUI's
    `PromptServer.instance.routes`); requests go to the study registered under that name."""
    from aiohttp import web

    if id(routes) in _ROUTED:  # a module reloaded by ComfyUI must not add the same routes twice
        return
    _ROUTED.add(id(routes))

    async def handler(request):
        name = request.match_info["study"]
        tail = request.match_info.get("tail", "")
        if name not in STUDIES:
            return web.json_response({"error": f"no voting study {name!r} is running; run the "
                                      "SVDSuite_VotingStudy node first"}, status=404)
        if tail == "" and not request.path.endswith("/"):
            raise web.HTTPFound(request.path + "/")
        body = await request.read()
        resp = STUDIES[name].handle(request.method, "/" + tail, dict(request.query), body)
        if resp.file:
            return web.FileResponse(resp.file, headers={"Content-Type": resp.content_type, **resp.headers})
        return web.Response(status=resp.status, body=resp.body, content_type=resp.content_type.split(";")[0],
                            headers=resp.headers)

    for method in ("GET", "POST"):
        routes.route(method, MOUNT + "/{study}")(handler)
        routes.route(method, MOUNT + "/{study}/{tail:.*}")(handler)
