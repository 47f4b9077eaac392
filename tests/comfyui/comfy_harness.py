"""Real-ComfyUI test harness: a ComfyUI 0.3.75 server process with our pack, driven over HTTP and the websocket.

The server is the unmodified copy that `scripts/setup.d/50-comfyui.sh` puts in `.cache/comfyui`; each test session
runs it with `--base-directory` pointing at a temp dir (models, input, output, user, custom_nodes/svd_suite -> repo),
so the cached copy is never written to. Every wait is bounded; a hung server fails the test instead of CI.
"""
from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "workflows"  # UI workflows only: ComfyUI's template browser lists every *.json directly here
WORKFLOWS_API = WORKFLOWS / "api"  # NAME.api.json twins (POST /prompt)
WORKFLOWS_TESTS = WORKFLOWS / "tests"  # NAME.test.json test metadata


def api_path(name: str) -> Path:
    return WORKFLOWS_API / f"{name}.api.json"


def meta_path(name: str) -> Path:
    return WORKFLOWS_TESTS / f"{name}.test.json"
PACK_NAME = "svd_suite"  # folder name of the pack inside custom_nodes/
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
# the frontend adds one extra serialized value after these widgets (not an input of the node)
UPLOAD_FLAGS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload")


def comfyui_dir() -> Path:
    """The ComfyUI copy made by scripts/setup.d/50-comfyui.sh (set up here if missing: the script is idempotent)."""
    path = Path(os.environ.get("SVD_COMFYUI_DIR", REPO / ".cache" / "comfyui"))
    if not (path / "main.py").is_file():
        subprocess.run(["bash", str(REPO / "scripts" / "setup.d" / "50-comfyui.sh")], check=True, timeout=900)
    if not (path / "main.py").is_file():
        raise RuntimeError(f"no ComfyUI at {path}: run scripts/setup.d/50-comfyui.sh")
    return path


# ------------------------------------------------------------------------------------------------ in-process
# A fresh interpreter with ComfyUI imported (`--cpu`, base directory `base`) and the pack loaded the way ComfyUI
# loads it (a package `svd_suite` whose modules import each other relatively), so ComfyUI's globals stay out of the
# test process. The script body sees `repo`, `base`, `args` (the extra arguments), `folder_paths` and `json`.
PRELUDE = """\
import importlib.util, json, os, sys
comfy_dir, repo, base = sys.argv[1:4]
args = sys.argv[4:]
sys.path.insert(0, comfy_dir)
sys.path.append(repo)
sys.argv = ["main.py", "--cpu", "--base-directory", base]
import comfy.options
comfy.options.enable_args_parsing()
import folder_paths
_spec = importlib.util.spec_from_file_location("svd_suite", os.path.join(repo, "__init__.py"),
                                               submodule_search_locations=[repo])
sys.modules["svd_suite"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sys.modules["svd_suite"])
"""


_WORKER = []  # the session's comfy_fork.ComfyWorker, started on first use


def _worker():
    if not _WORKER:
        import atexit

        from comfy_fork import ComfyWorker

        log = Path(os.environ.get("TMPDIR", "/tmp")) / f"svd-comfy-worker-{os.getpid()}.log"
        _WORKER.append(ComfyWorker(comfyui_dir(), REPO, log))
        atexit.register(_WORKER[0].stop)
    return _WORKER[0]


def run_in_comfyui(body: str, tmp: Path, *args: str, stdin: str | None = None, timeout: float = 600) -> dict:
    """Run `body` (which ends by printing "RESULT " + json) after `PRELUDE` in a process of its own, ComfyUI's base
    folder `tmp/base`: a fork of the session's ComfyUI worker (tests/comfyui/comfy_fork.py: ComfyUI imported once),
    or with SVD_TEST_FORK=0 a fresh interpreter; returns the parsed result, or fails with the tail of the output."""
    script = tmp / "run.py"
    if os.environ.get("SVD_TEST_FORK", "1") != "0":
        script.write_text(body)
        stdin_path = None
        if stdin is not None:
            stdin_path = tmp / "stdin.txt"
            stdin_path.write_text(stdin)
        output = tmp / "output.txt"
        rc = _worker().run(script, tmp / "base", list(args), stdin_path, tmp, output, timeout)
        text = output.read_text(errors="replace")
        lines = [line for line in text.splitlines() if line.startswith("RESULT ")]
        assert rc == 0 and lines, text[-6000:]
        return json.loads(lines[-1][len("RESULT "):])
    script.write_text(PRELUDE + body)
    proc = subprocess.run([sys.executable, str(script), str(comfyui_dir()), str(REPO), str(tmp / "base"), *args],
                          input=stdin, capture_output=True, text=True, timeout=timeout, cwd=str(tmp))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


# ------------------------------------------------------------------------------------------------ workflows
@dataclass
class Workflow:
    name: str
    ui: dict
    api: dict
    meta: dict

    @property
    def run(self) -> bool:
        return bool(self.meta.get("run", False))

    @property
    def browser(self) -> bool:
        return bool(self.meta.get("browser", True))

    @property
    def timeout(self) -> float:
        return float(self.meta.get("timeout_s", 180))

    def prompt(self) -> dict:
        """The API graph with the test's `overrides` applied (a deep copy)."""
        prompt = json.loads(json.dumps(self.api))
        for node_id, values in self.meta.get("overrides", {}).items():
            if node_id not in prompt:
                raise KeyError(f"{self.name}.test.json overrides node {node_id!r}, absent from {self.name}.api.json")
            for key, value in values.items():
                if isinstance(prompt[node_id]["inputs"].get(key), list):
                    raise ValueError(f"{self.name}.test.json overrides linked input {node_id}.{key}")
                prompt[node_id]["inputs"][key] = value
        return prompt


def load_workflows(complete_only: bool = True) -> list[Workflow]:
    """Workflows with a NAME.test.json; incomplete ones (a twin missing) only when complete_only=False (ui/api None)."""
    out = []
    for meta in sorted(WORKFLOWS_TESTS.glob("*.test.json")):
        name = meta.name[: -len(".test.json")]
        ui, api = WORKFLOWS / f"{name}.json", api_path(name)
        if not (ui.is_file() and api.is_file()) and complete_only:
            continue
        read = lambda p: json.loads(p.read_text()) if p.is_file() else None  # noqa: E731
        out.append(Workflow(name, read(ui), read(api), json.loads(meta.read_text())))
    return out


def _resolve(ref: str):
    module, _, attr = ref.partition(":")
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return getattr(importlib.import_module(module), attr)


# factories that write exactly the file they are given (deterministic): a second call with the same arguments under
# another name is a copy of the first one's file (a tiny checkpoint costs seconds to build, a copy a memcpy)
COPYABLE_FACTORIES = {"tests.comfyui.factories:tiny_checkpoint"}


def make_files(entries: list[dict], root: Path) -> list[Path]:
    """Create the `models` / `inputs` files a workflow's metadata declares (factory(path, **kwargs))."""
    made, by_call = [], {}
    for entry in entries:
        dest = root / entry.get("folder", "") / entry["name"]
        call = (entry["factory"], json.dumps(entry.get("kwargs", {}), sort_keys=True), dest.suffix)
        if entry["factory"] not in COPYABLE_FACTORIES:
            call = (id(entry),)  # never shared
        if dest.exists():
            by_call.setdefault(call, dest)
            made.append(dest)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        if call in by_call and by_call[call].is_file():
            shutil.copyfile(by_call[call], dest)
        else:
            _resolve(entry["factory"])(dest, **entry.get("kwargs", {}))
        if not dest.exists():
            raise FileNotFoundError(f"factory {entry['factory']} did not write {dest}")
        by_call.setdefault(call, dest)
        made.append(dest)
    return made


# ------------------------------------------------------------------------------------------------ UI <-> API
def _input_specs(info: dict) -> tuple[list[str], dict[str, tuple]]:
    order = info["input_order"].get("required", []) + info["input_order"].get("optional", [])
    specs = {}
    for section in ("required", "optional"):
        for name, spec in info["input"].get(section, {}).items():
            specs[name] = (spec[0], spec[1] if len(spec) > 1 else {})
    return order, specs


def _optional(info: dict) -> set[str]:
    return set(info["input"].get("optional", {}))


def is_widget(spec: tuple) -> bool:
    typ, opts = spec
    return (isinstance(typ, list) or typ in WIDGET_TYPES) and not opts.get("forceInput", False)


def widget_extras(name: str, spec: tuple) -> int:
    """Values the frontend serializes after a widget that are no node input (control_after_generate, upload)."""
    _, opts = spec
    extra = 0
    if opts.get("control_after_generate"):
        extra += 1
    if any(opts.get(flag) for flag in UPLOAD_FLAGS):
        extra += 1
    return extra


def ui_to_api(ui: dict, object_info: dict) -> dict:
    """The API prompt a UI-format workflow stands for (the frontend's graphToPrompt, for our plain graphs).

    Forward compatible: a workflow saved on one ComfyUI release stays meaningful on a newer one, whose native nodes
    may declare extra *optional* widgets (e.g. ``CreateVideo.bit_depth``) after the ones the file knows. Such a widget
    has no value in ``widgets_values``, so it is left out of the prompt (the server uses its default), exactly as
    the newer frontend does when it loads an older file. A missing *required* widget is still an error."""
    links = {link[0]: link for link in ui["links"]}
    prompt = {}
    for node in ui["nodes"]:
        node_id, class_type = str(node["id"]), node["type"]
        if node.get("mode", 0) != 0:
            raise ValueError(f"UI node {node_id} ({class_type}) is muted or bypassed; shipped workflows must not be")
        if class_type not in object_info:
            raise KeyError(f"UI node {node_id}: node type {class_type!r} is not in /object_info")
        order, specs = _input_specs(object_info[class_type])
        optional = _optional(object_info[class_type])
        ui_inputs = {i["name"]: i for i in node.get("inputs", [])}
        values = node.get("widgets_values", [])
        idx, inputs = 0, {}
        for name in order:
            spec = specs[name]
            ui_in = ui_inputs.get(name)
            link_id = ui_in.get("link") if ui_in else None
            if is_widget(spec):
                if isinstance(values, dict):
                    if name not in values and name in optional and link_id is None:
                        continue
                    value = values.get(name)
                else:
                    if idx >= len(values) and name in optional and link_id is None:
                        continue  # an optional widget newer than the file: the server's default applies
                    if idx >= len(values):
                        raise ValueError(f"UI node {node_id} ({class_type}): widgets_values too short at {name!r}")
                    value = values[idx]
                    idx += 1 + widget_extras(name, spec)
                if link_id is None:
                    inputs[name] = value
            if link_id is not None:
                link = links[link_id]
                inputs[name] = [str(link[1]), link[2]]
        if isinstance(values, list) and idx != len(values):
            raise ValueError(f"UI node {node_id} ({class_type}): {len(values)} widgets_values, {idx} expected")
        prompt[node_id] = {"class_type": class_type, "inputs": inputs}
    return prompt


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or a == b and type(a) is type(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def diff_prompts(expected: dict, actual: dict) -> list[str]:
    """Human-readable differences between two API prompts (empty when they are the same graph and values)."""
    problems = []
    for node_id in sorted(set(expected) | set(actual), key=str):
        if node_id not in actual:
            problems.append(f"node {node_id} missing from the UI graph")
            continue
        if node_id not in expected:
            problems.append(f"node {node_id} ({actual[node_id]['class_type']}) missing from the API graph")
            continue
        e, a = expected[node_id], actual[node_id]
        if e["class_type"] != a["class_type"]:
            problems.append(f"node {node_id}: class_type {e['class_type']} (API) vs {a['class_type']} (UI)")
            continue
        for key in sorted(set(e["inputs"]) | set(a["inputs"])):
            if key not in a["inputs"]:
                problems.append(f"node {node_id} {e['class_type']}.{key}: only in the API graph")
            elif key not in e["inputs"]:
                problems.append(f"node {node_id} {e['class_type']}.{key}: only in the UI graph")
            elif not _same(e["inputs"][key], a["inputs"][key]):
                problems.append(f"node {node_id} {e['class_type']}.{key}: API {e['inputs'][key]!r} vs UI {a['inputs'][key]!r}")
    return problems


def check_against_object_info(prompt: dict, object_info: dict) -> list[str]:
    """Every node type exists, every input is declared, every required input is given, combos hold a listed value."""
    problems = []
    for node_id, node in prompt.items():
        ct = node["class_type"]
        if ct not in object_info:
            problems.append(f"node {node_id}: {ct} not in /object_info")
            continue
        _, specs = _input_specs(object_info[ct])
        for key in node["inputs"]:
            if key not in specs:
                problems.append(f"node {node_id} {ct}: input {key!r} not declared by the server")
        for key in object_info[ct]["input"].get("required", {}):
            if key not in node["inputs"]:
                problems.append(f"node {node_id} {ct}: required input {key!r} not given")
    return problems


# ------------------------------------------------------------------------------------------------ server
def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM if the test process dies without cleaning up (killed CI job, timeout)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ComfyServer:
    base: Path
    comfy: Path
    port: int = 0
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    client_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    last_prompt: str | None = None  # the id of the prompt queued last (by us or noted by a test that queued it)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def output_dir(self) -> Path:
        return self.base / "output"

    @property
    def input_dir(self) -> Path:
        return self.base / "input"

    def start(self, timeout: float = 240) -> "ComfyServer":
        return self.launch().wait_ready(timeout)

    def launch(self) -> "ComfyServer":
        """Start the server process without waiting for it (ComfyUI's imports take a while: make the model and
        input files meanwhile; ComfyUI lists its folders when a request asks, not at start-up), then `wait_ready`."""
        for sub in ("models/checkpoints", "models/diffusers", "input", "output", "temp", "user", "custom_nodes"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        link = self.base / "custom_nodes" / PACK_NAME
        if not link.exists():
            link.symlink_to(REPO, target_is_directory=True)
        self.port = self.port or free_port()
        self.log_path = self.base / "comfyui.log"
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(self.base), "--database-url", "sqlite:///:memory:",
               "--disable-auto-launch", "--disable-api-nodes", "--log-stdout",
               "--preview-method", "latent2rgb"]  # live previews while sampling, as a user would see them
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                   DO_NOT_TRACK="1", COMFYUI_SKIP_UPDATE_CHECK="1")
        env.pop("PYTHONPATH", None)  # the pack must make svd_core importable on its own
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=self.comfy, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        return self

    def wait_ready(self, timeout: float = 240) -> "ComfyServer":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode} during start-up:\n{self.log_tail()}")
            try:
                if requests.get(self.url + "/system_stats", timeout=5).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"ComfyUI did not answer within {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=20)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=20)
        if getattr(self, "_log", None):
            self._log.close()

    def log_tail(self, n: int = 80) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    # ---------------------------------------------------------------- HTTP
    def get(self, path: str, timeout: float = 30) -> Any:
        r = requests.get(self.url + path, timeout=timeout)
        r.raise_for_status()
        return r.json()

    def post_prompt(self, prompt: dict, timeout: float = 60) -> requests.Response:
        r = requests.post(self.url + "/prompt", json={"prompt": prompt, "client_id": self.client_id}, timeout=timeout)
        if r.status_code == 200:
            self.last_prompt = r.json()["prompt_id"]
        return r

    def queue(self, prompt: dict) -> str:
        r = self.post_prompt(prompt)
        if r.status_code != 200:
            raise AssertionError(f"/prompt answered {r.status_code}: {r.text}")
        return r.json()["prompt_id"]

    def interrupt(self) -> None:
        requests.post(self.url + "/interrupt", json={}, timeout=10).raise_for_status()

    def websocket(self, timeout: float = 10):
        import websocket  # websocket-client

        ws = websocket.WebSocket()
        ws.connect(f"ws://127.0.0.1:{self.port}/ws?clientId={self.client_id}", timeout=timeout)
        return ws

    def run(self, prompt: dict, timeout: float) -> tuple[dict, list[dict]]:
        """Queue `prompt` on a websocket of our own and follow it to the end: (/history entry, messages)."""
        ws = self.websocket()
        try:
            return self.wait(self.queue(prompt), timeout, ws=ws)
        finally:
            ws.close()

    def run_failing(self, prompt: dict, timeout: float) -> list[dict]:
        """Run a prompt that must fail: the `execution_error` messages' data (node_type, exception_message, ...)."""
        entry, messages = self.run(prompt, timeout)
        assert entry["status"]["status_str"] == "error", json.dumps(entry["status"])[:3000]
        return [m["data"] for m in messages if m["type"] == "execution_error"]

    def wait(self, prompt_id: str, timeout: float, ws=None, on_message=None,
             own_client: bool = True, on_binary=None) -> tuple[dict, list[dict]]:
        """Follow the websocket until the prompt finishes (or errors), then return (/history entry, messages).

        `own_client=False` for prompts queued by another client (the GUI): their messages never reach this socket, so
        only /history tells the end. Otherwise the final message (execution_success / _error / _interrupted) is
        awaited too (briefly), since the history entry can appear before the last messages arrive.
        `on_binary(event_type, payload)` gets the binary frames (preview images: `preview_image`).
        """
        own_ws = ws is None
        ws = ws or self.websocket()
        messages: list[dict] = []
        deadline = time.monotonic() + timeout
        entry, finished = None, False
        poll = 2.0 if own_client else 0.25  # another client's prompt: only /history tells the end, so ask often
        try:
            while time.monotonic() < deadline:
                ws.settimeout(max(0.1, min(poll if entry is None else 0.5, deadline - time.monotonic())))
                try:
                    raw = ws.recv()
                except Exception as exc:  # websocket timeout: poll /history, then keep listening
                    if type(exc).__name__ not in ("WebSocketTimeoutException", "TimeoutError"):
                        raise
                    raw = None
                if isinstance(raw, bytes) and on_binary is not None and len(raw) >= 4:
                    on_binary(int.from_bytes(raw[:4], "big"), raw[4:])
                if isinstance(raw, str):
                    msg = json.loads(raw)
                    data = msg.get("data", {})
                    if data.get("prompt_id") in (None, prompt_id):
                        messages.append(msg)
                        if on_message:
                            on_message(msg)
                    finished = finished or (
                        msg["type"] in ("execution_error", "execution_interrupted", "execution_success")
                        and data.get("prompt_id") == prompt_id)
                    done = finished or (msg["type"] == "executing" and data.get("node") is None
                                        and data.get("prompt_id") == prompt_id)
                    if not done and entry is None:
                        continue
                if entry is None:
                    hist = self.get(f"/history/{prompt_id}")  # an entry appears once the prompt has finished
                    if prompt_id in hist:
                        entry = hist[prompt_id]
                        deadline = min(deadline, time.monotonic() + 10)  # grace for the last messages
                if entry is not None and (finished or not own_client):
                    return entry, messages
            if entry is not None:
                return entry, messages
        finally:
            if own_ws:
                ws.close()
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout}s; server log:\n{self.log_tail()}")

    def output_file(self, item: dict) -> Path:
        root = {"output": self.output_dir, "temp": self.base / "temp", "input": self.input_dir}[item.get("type", "output")]
        return root / item.get("subfolder", "") / item["filename"]


def cached_nodes(entry: dict) -> list[str]:
    """The node ids ComfyUI's execution cache served for a finished prompt (its `execution_cached` status message)."""
    return next((data["nodes"] for kind, data in entry["status"].get("messages", []) if kind == "execution_cached"), [])


class WorkflowRuns:
    """Each shipped workflow's test-size prompt executed once per session through the API, on our own websocket:
    `run(wf)` gives its (/history entry, messages), executing it on first use only. The API test checks that run
    (outputs, progress); the GUI test calls `latest(wf)` and queues the page's prompt right after it, so ComfyUI's
    execution cache (which keeps the last prompt's node outputs) serves every node of an identical prompt."""

    def __init__(self, server: ComfyServer):
        self.server = server
        self.runs: dict[str, tuple[str, dict, list[dict]]] = {}

    def run(self, wf: Workflow) -> tuple[dict, list[dict]]:
        if wf.name not in self.runs:
            ws = self.server.websocket()
            try:
                prompt_id = self.server.queue(wf.prompt())
                entry, messages = self.server.wait(prompt_id, wf.timeout, ws=ws)
            finally:
                ws.close()
            self.runs[wf.name] = (prompt_id, entry, messages)
        return self.runs[wf.name][1:]

    def latest(self, wf: Workflow) -> tuple[dict, list[dict]]:
        """`run(wf)`, executed again if another prompt was queued since (only when tests run out of their order)."""
        if wf.name in self.runs and self.runs[wf.name][0] != self.server.last_prompt:
            del self.runs[wf.name]
        return self.run(wf)


PREVIEW_IMAGE = 1  # ComfyUI protocol.BinaryEventTypes: the payload is a 4-byte image type (1 JPEG, 2 PNG) + image


def preview_image(payload: bytes):
    """The PIL image of a PREVIEW_IMAGE websocket frame's payload."""
    import io

    from PIL import Image

    return Image.open(io.BytesIO(payload[4:]))


def media_info(path: Path) -> tuple[int, int, int]:
    """(frames, width, height) of an image, animated WEBP/GIF (Pillow) or video container (PyAV)."""
    suffix = path.suffix.lower()
    if suffix in (".png", ".webp", ".gif", ".jpg", ".jpeg", ".apng"):
        from PIL import Image

        with Image.open(path) as im:
            return getattr(im, "n_frames", 1), im.width, im.height
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return frames, stream.codec_context.width, stream.codec_context.height


def video_fps(path: Path) -> float:
    """The frame rate a video container declares for its video stream (PyAV)."""
    import av

    with av.open(str(path)) as container:
        return float(container.streams.video[0].average_rate)


def check_outputs(server: ComfyServer, wf: Workflow, entry: dict) -> list[str]:
    problems = []
    outputs = entry.get("outputs", {})
    for check in wf.meta.get("outputs", []):
        node, key = str(check["node"]), check.get("key", "images")
        items = outputs.get(node, {}).get(key)
        if items is None:
            problems.append(f"{wf.name}: no outputs[{node}][{key}] in /history (got {sorted(outputs)})")
            continue
        if "count" in check and len(items) != check["count"]:
            problems.append(f"{wf.name}: outputs[{node}][{key}] has {len(items)} files, expected {check['count']}")
        for item in items:
            path = server.output_file(item)
            if not path.is_file():
                problems.append(f"{wf.name}: {path} does not exist")
                continue
            frames, width, height = media_info(path)
            for name, got in (("frames", frames), ("width", width), ("height", height)):
                if name in check and got != check[name]:
                    problems.append(f"{wf.name}: {path.name} has {name}={got}, expected {check[name]}")
            if "fps" in check and abs(video_fps(path) - check["fps"]) > 1e-3:
                problems.append(f"{wf.name}: {path.name} plays at {video_fps(path)} fps, expected {check['fps']}")
    return problems


def copy_artifact(src: Path, name: str) -> Path:
    dest_dir = REPO / "test-artifacts" / "comfyui"
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / name
    shutil.copyfile(src, dest)
    return dest
