"""Voting web app: framework-free request handling, served standalone (stdlib http.server behind a bounded worker
pool) or through aiohttp routes (the ComfyUI server registers the same handlers on `PromptServer.instance.routes`).

Who may do what (svd_core/eval/README.md, "Voting page: trust"): participants vote with an organiser-issued code;
results, exports and new codes need the organiser token. Every POST must be a same-origin JSON request; bodies are
bounded in size and read time; only the video / image files of served pairs are sent, resolved inside the study's
media folders, with `X-Content-Type-Options: nosniff`.
"""
from __future__ import annotations

import asyncio
import csv
import hmac
import io
import json
import logging
import os
import re
import secrets
import socket
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlsplit

from .elo import elo_by_axis, votes_rows
from .study import Study, check_token, inside, media_type
from .voting_page import leaderboard_page, voting_page
from .votes_db import VoteConflict, VoteStore

log = logging.getLogger(__name__)
MAX_BODY = 16 << 10  # a vote is ~150 bytes
MAX_FIELD = 200  # longest string accepted in a vote
READ_TIMEOUT = 10.0  # seconds to receive a request (line, headers and body) once connected
IDLE_TIMEOUT = 5.0  # seconds a connection may stay silent
WORKERS, QUEUE = 8, 32  # standalone: worker threads, and connections that may wait for one
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store", "X-Frame-Options": "DENY",
                    "Referrer-Policy": "no-referrer"}
PAGE_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
            "media-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
ORGANISER_ROUTES = {"/leaderboard", "/api/leaderboard", "/api/votes.csv", "/api/codes"}


@dataclass
class Response:
    status: int = 200
    content_type: str = "application/json"
    body: bytes = b""
    file: str | None = None  # stream this file instead of `body`
    headers: dict = field(default_factory=dict)


def _json(data, status: int = 200) -> Response:
    return Response(status, "application/json", json.dumps(data).encode())


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


def body_length(headers: dict) -> int | str:
    """Content-Length of a request as an int, or the reason it is refused (absent on POST, negative, not a number,
    above `MAX_BODY`, or a chunked body)."""
    if "transfer-encoding" in headers:
        return "chunked request bodies are not accepted; send Content-Length"
    raw = headers.get("content-length")
    if raw is None:
        return 0
    if not re.fullmatch(r"[0-9]{1,12}", raw.strip()):  # ASCII digits only ("²".isdigit() is True)
        return f"Content-Length {raw[:40]!r} is not a non-negative integer"
    n = int(raw.strip())
    return n if n <= MAX_BODY else f"request body of {n} bytes is over the {MAX_BODY}-byte limit"


class VotingApp:
    """One study: routes (relative to the app's mount point) -> `Response`.

    `token`: the organiser token (else the manifest's `organiser_token`, else a random one, printed by the CLI /
    node). `allowed_hosts`: when given, the only Host header values answered (guards a loopback server against DNS
    rebinding)."""

    def __init__(self, study: Study, db_path: str, num_orderings: int = 1000, seed: int | None = None,
                 token: str | None = None, allowed_hosts=None):
        self.study = study
        self.token = check_token(token or study.organiser_token or secrets.token_urlsafe(24), "organiser token")
        self.store = VoteStore(db_path, study, seed=seed)
        self.num_orderings = num_orderings
        self.allowed_hosts = {h.lower() for h in allowed_hosts} if allowed_hosts else None

    def leaderboard(self) -> dict:
        votes = self.store.votes()
        tables = elo_by_axis(votes, num_orderings=self.num_orderings) if votes else {}
        return {"tables": tables, "counts": self.store.counts()}

    def is_organiser(self, query: dict, headers: dict) -> bool:
        """The organiser token from `Authorization: Bearer`, `X-Organiser-Token` or `?token=`, compared in constant
        time."""
        auth = headers.get("authorization", "")
        given = (auth[7:] if auth[:7].lower() == "bearer " else "") or headers.get("x-organiser-token") \
            or query.get("token") or ""
        return hmac.compare_digest(given.encode("utf-8", "replace"), self.token.encode())

    def refuse_origin(self, method: str, headers: dict) -> str | None:
        """Why a request is refused on Host / Origin grounds, or None. POSTs must come from this origin (Origin,
        when sent, equals Host; `Sec-Fetch-Site` same-origin) and carry JSON, which a cross-site form cannot send."""
        host = headers.get("host", "").lower()
        if self.allowed_hosts is not None and host not in self.allowed_hosts:
            return f"Host {host[:80]!r} is not served here (expected one of {', '.join(sorted(self.allowed_hosts))})"
        if method != "POST":
            return None
        if not host:
            return "a POST needs a Host header"
        origin = headers.get("origin")
        if origin is not None and urlsplit(origin).netloc.lower() != host:
            return f"cross-origin POST from {origin[:80]!r} refused"
        if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return "cross-site POST refused"
        if headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return "a POST body must be JSON (Content-Type: application/json)"
        return None

    def handle(self, method: str, path: str, query: dict[str, str], body: bytes,
               headers: dict | None = None) -> Response:
        """Dispatch one request (`headers` with lower-case names); errors become JSON `{error}` with a 4xx status."""
        headers = {k.lower(): v for k, v in (headers or {}).items()}
        resp = self._route(method, "/" + path.strip("/"), query, body, headers)
        for k, v in SECURITY_HEADERS.items():
            resp.headers.setdefault(k, v)
        if resp.content_type.startswith("text/html"):
            resp.headers.setdefault("Content-Security-Policy", PAGE_CSP)
        return resp

    def _route(self, method, path, query, body, headers) -> Response:
        try:
            refused = self.refuse_origin(method, headers)
            if refused:
                return _error(403, refused)
            if path in ORGANISER_ROUTES and not self.is_organiser(query, headers):
                return _error(401, "this page needs the organiser token (Authorization: Bearer TOKEN or "
                                   "?token=TOKEN; printed when the study started)")
            if method == "GET" and path in ("/", "/index.html"):
                return Response(200, "text/html; charset=utf-8", voting_page(self.study.name).encode())
            if method == "GET" and path == "/api/next":
                return _json(self.store.next_pair(query.get("code", "")))
            if method == "POST" and path == "/api/vote":
                data = _json_body(body, ("code", "pair_id", "axis", "choice"))
                n = self.store.cast(data["code"], data["pair_id"], data["axis"], data["choice"])
                return _json({"ok": True, "votes_cast": n})
            if method == "POST" and path == "/api/codes":
                count = json.loads(body or b"{}").get("count", 1) if body else 1
                return _json({"codes": self.store.issue_codes(count)})
            if method == "GET" and path == "/api/leaderboard":
                lb = self.leaderboard()
                return _json({"counts": lb["counts"], "axes": {a: t.as_dict() for a, t in lb["tables"].items()}})
            if method == "GET" and path == "/leaderboard":
                lb = self.leaderboard()
                return Response(200, "text/html; charset=utf-8",
                                leaderboard_page(self.study.name, lb["tables"], lb["counts"]).encode())
            if method == "GET" and path == "/api/votes.csv":
                return Response(200, "text/csv; charset=utf-8", self.votes_csv().encode())
            if method == "GET" and path.startswith("/media/"):
                return self._media(path)
            if method not in ("GET", "POST"):
                return Response(405, "application/json", json.dumps({"error": f"method {method[:20]!r} not allowed"})
                                .encode(), headers={"Allow": "GET, POST"})
            return _error(404, f"no route {method} {path[:200]}")
        except VoteConflict as exc:
            return _error(409, str(exc))
        except KeyError as exc:
            return _error(404, str(exc.args[0]) if exc.args else "not found")
        except PermissionError as exc:
            return _error(403, str(exc))
        except (ValueError, AttributeError, UnicodeDecodeError, RecursionError) as exc:  # JSONDecodeError too
            return _error(400, str(exc)[:300])

    def votes_csv(self) -> str:
        """Counted votes as `model_a,model_b,winner,axis`, quoted by the csv module (names may hold commas)."""
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(votes_rows(self.store.votes()))
        return out.getvalue()

    def _media(self, path: str) -> Response:
        """`/media/PAIR/left|right|image`: only files of a served pair, re-checked at every request: inside the
        study's media folders (symlinks resolved), a video / image type, a regular file."""
        parts = path.split("/")
        if len(parts) != 4 or parts[3] not in ("left", "right", "image"):
            return _error(404, f"bad media path {path[:200]!r}")
        p = self.store.pair(parts[2])
        f = p[{"left": "left_path", "right": "right_path", "image": "image_path"}[parts[3]]]
        roots = [os.path.realpath(r) for r in self.study.media_roots]
        ctype = media_type(f) if f else None
        if not f or ctype is None or not inside(f, roots):
            return _error(404, "media file not served")
        real = os.path.realpath(f)
        try:
            if not stat.S_ISREG(os.stat(real).st_mode):
                return _error(404, "media file not served")
        except OSError:
            return _error(404, "media file missing")
        return Response(200, ctype, file=real)

    def close(self) -> None:
        self.store.close()


def _json_body(body: bytes, keys: tuple[str, ...]) -> dict:
    data = json.loads(body or b"{}")
    if not isinstance(data, dict):
        raise ValueError("the request body must be a JSON object")
    missing = [k for k in keys if k not in data]
    if missing:
        raise ValueError(f"request lacks field(s) {', '.join(missing)}")
    for k in keys:
        if not isinstance(data[k], str) or len(data[k]) > MAX_FIELD:
            raise ValueError(f"field {k!r} must be a string of at most {MAX_FIELD} characters")
    return data


# ------------------------------------------------------------------ standalone (stdlib)
class _Handler(BaseHTTPRequestHandler):
    """One request per connection (HTTP/1.0). Socket reads time out after `server.idle_timeout`; the server's
    watchdog closes a connection whose request is not read within `server.read_timeout`."""

    server: "PooledHTTPServer"

    def setup(self):
        self.timeout = self.server.idle_timeout
        super().setup()

    def __getattr__(self, name):  # every method but GET / POST: a clean 405 instead of http.server's 501
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)

    def _not_allowed(self):
        self._send(Response(405, "application/json", b'{"error": "method not allowed"}',
                            headers={"Allow": "GET, POST", **SECURITY_HEADERS}))

    def do_GET(self):
        self._do("GET")

    def do_POST(self):
        self._do("POST")

    def _do(self, method: str):
        headers = {k.lower(): v for k, v in self.headers.items()}
        n = body_length(headers)
        if isinstance(n, str) or (method == "POST" and "content-length" not in headers):
            status = 413 if isinstance(n, str) and "limit" in n else 400 if isinstance(n, str) else 411
            return self._send(_error(status, n if isinstance(n, str) else "a POST needs a Content-Length header"))
        try:
            body = self.rfile.read(n) if (n and method == "POST") else b""
        except (TimeoutError, OSError):
            body = None
        if body is None or len(body) != (n if method == "POST" else 0):
            return self._send(_error(408, "request body not received in time"))
        self.server.request_read()
        try:
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query, max_num_fields=20).items()} if url.query else {}
        except ValueError as exc:  # an invalid URL, or too many query fields
            return self._send(_error(400, f"bad request target: {str(exc)[:100]}"))
        self._send(self.server.app.handle(method, url.path, query, body, headers))

    def _send(self, resp: Response):
        self.server.request_read()
        f = None
        try:
            if resp.file:
                f = open(resp.file, "rb")
                size = os.fstat(f.fileno()).st_size
            else:
                size = len(resp.body)
            self.send_response(resp.status)
            self.send_header("Content-Type", resp.content_type)
            self.send_header("Content-Length", str(size))
            self.send_header("Connection", "close")
            for k, v in {**SECURITY_HEADERS, **resp.headers}.items():
                self.send_header(k, v)
            self.end_headers()
            if f is not None:
                while chunk := f.read(1 << 16):
                    self.wfile.write(chunk)
            else:
                self.wfile.write(resp.body)
        except OSError:  # the client went away
            self.close_connection = True
        finally:
            if f is not None:
                f.close()

    def send_error(self, code, message=None, explain=None):  # malformed request lines / headers: JSON, nosniff
        self.close_connection = True
        try:
            self._send(_error(code, message or "bad request"))
        except Exception:  # noqa: BLE001 -- the connection is being dropped anyway
            pass

    def log_message(self, fmt, *args):
        log.debug("vote server: " + fmt, *args)


class PooledHTTPServer(HTTPServer):
    """`HTTPServer` whose connections run on `workers` threads; up to `queue` more wait, the rest get 503 at once.
    A watchdog shuts a connection whose request is not read within `read_timeout` (slow-drip headers or body)."""

    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, addr, app: VotingApp, workers: int = WORKERS, queue: int = QUEUE,
                 idle_timeout: float = IDLE_TIMEOUT, read_timeout: float = READ_TIMEOUT):
        super().__init__(addr, _Handler)
        self.app, self.idle_timeout, self.read_timeout = app, idle_timeout, read_timeout
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="svd-vote")
        self._slots = threading.BoundedSemaphore(workers + queue)
        self._local = threading.local()

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            try:
                request.settimeout(0.5)
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Retry-After: 2\r\nConnection: close\r\nContent-Length: 27\r\n\r\n"
                                b'{"error": "server is busy"}')
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            self._pool.submit(self._work, request, client_address)
        except RuntimeError:  # shutting down
            self._slots.release()
            self.shutdown_request(request)

    def _work(self, request, client_address):
        watchdog = threading.Timer(self.read_timeout, _cut, (request,))
        watchdog.daemon = True
        self._local.watchdog = watchdog
        watchdog.start()
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 -- one bad connection must not end the worker
            log.debug("vote server: request from %s failed", client_address, exc_info=True)
        finally:
            watchdog.cancel()
            self.shutdown_request(request)
            self._slots.release()

    def request_read(self) -> None:
        """The request is in: the watchdog stops (writing a response is bounded by the idle timeout)."""
        w = getattr(self._local, "watchdog", None)
        if w is not None:
            w.cancel()

    def server_close(self):
        super().server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)


def _cut(sock) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class StandaloneServer:
    """`PooledHTTPServer` around a `VotingApp`; port 0 picks a free port. Bound to a loopback address it answers
    only Host `127.0.0.1:PORT` / `localhost:PORT` (DNS rebinding)."""

    def __init__(self, app: VotingApp, host: str = "127.0.0.1", port: int = 8189, **limits):
        self.app = app
        self.httpd = PooledHTTPServer((host, port), app, **limits)
        if host in ("127.0.0.1", "localhost", "::1") and app.allowed_hosts is None:
            p = self.httpd.server_address[1]
            app.allowed_hosts = {f"127.0.0.1:{p}", f"localhost:{p}", f"[::1]:{p}"}
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> "StandaloneServer":
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.1,), daemon=True)
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


async def _read_body(request) -> bytes | str:
    """At most `MAX_BODY` bytes within `READ_TIMEOUT`, or why not (aiohttp's own `client_max_size` is the whole
    app's upload limit, far above a vote)."""
    n = body_length({k.lower(): v for k, v in request.headers.items() if k.lower() != "transfer-encoding"})
    if isinstance(n, str):
        return n
    chunks, total = [], 0

    async def read():
        nonlocal total
        while total <= MAX_BODY:
            chunk = await request.content.read(MAX_BODY + 1 - total)
            if not chunk:
                return
            chunks.append(chunk)
            total += len(chunk)

    try:
        await asyncio.wait_for(read(), READ_TIMEOUT)
    except asyncio.TimeoutError:
        return "request body not received in time"
    if total > MAX_BODY:
        return f"request body is over the {MAX_BODY}-byte limit"
    return b"".join(chunks)


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
                                      "SVDSuite_VotingStudy node first"}, status=404, headers=SECURITY_HEADERS)
        if tail == "" and not request.path.endswith("/"):
            raise web.HTTPFound(request.path + "/")
        body = await _read_body(request) if request.method == "POST" else b""
        if isinstance(body, str):
            status = 408 if "in time" in body else 413 if "limit" in body else 400
            return web.json_response({"error": body}, status=status, headers=SECURITY_HEADERS)
        resp = STUDIES[name].handle(request.method, "/" + tail, dict(request.query), body, dict(request.headers))
        if resp.file:
            return web.FileResponse(resp.file, headers={"Content-Type": resp.content_type, **resp.headers})
        return web.Response(status=resp.status, body=resp.body, content_type=resp.content_type.split(";")[0],
                            headers=resp.headers)

    for method in ("GET", "POST"):
        routes.route(method, MOUNT + "/{study}")(handler)
        routes.route(method, MOUNT + "/{study}/{tail:.*}")(handler)
