"""One ComfyUI import per test session for the in-process checks (`comfy_harness.run_in_comfyui`).

A worker interpreter imports ComfyUI once (`--cpu`: torch, comfy.*, ComfyUI's `nodes` and the pack's engine) and
forks a child per script; the child points ComfyUI's folders at the script's base directory (`folder_paths` is
re-executed in place, the only ComfyUI module that reads `--base-directory`), loads the pack the way ComfyUI does
and runs the script with its stdout / stderr in a file. Each script still gets its own process, so ComfyUI's
globals and whatever the script patches (vram state, dynamo caches, folder registrations) never reach the next
script or the test process; the 10-40 s import (2 busy cores) is paid once instead of once per test module.
`SVD_TEST_FORK=0` runs every script in a fresh interpreter instead.
"""
from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

WORKER = r'''
import importlib, importlib.util, json, os, sys, traceback
comfy_dir, repo = sys.argv[1:3]
sys.path.insert(0, comfy_dir)
sys.path.append(repo)
sys.argv = ["main.py", "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
import comfy.cli_args
import folder_paths
import nodes  # ComfyUI's own: torch, comfy.sd, comfy.model_management, comfy_api ... inherited by every fork
import svd_core.pipeline, svd_core.testing  # the engine the pack and the scripts use
protocol_in, protocol_out = sys.stdin.buffer, sys.stdout
protocol_out.write("READY\n"); protocol_out.flush()


def child(req):
    out = os.open(req["output"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(out, 1)
    os.dup2(out, 2)
    sys.stdin = open(req["stdin"]) if req["stdin"] else open(os.devnull)
    os.chdir(req["cwd"])
    base = req["base"]
    sys.argv = ["main.py", "--cpu", "--base-directory", base]
    comfy.cli_args.args.base_directory = base
    importlib.reload(folder_paths)  # the folders of this script's base directory (module object unchanged)
    spec = importlib.util.spec_from_file_location("svd_suite", os.path.join(repo, "__init__.py"),
                                                  submodule_search_locations=[repo])
    sys.modules["svd_suite"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules["svd_suite"])
    scope = {"__name__": "__main__", "comfy_dir": comfy_dir, "repo": repo, "base": base, "args": req["args"],
             "json": json, "os": os, "sys": sys, "importlib": importlib, "folder_paths": folder_paths}
    with open(req["script"]) as f:
        exec(compile(f.read(), req["script"], "exec"), scope)


for line in iter(protocol_in.readline, b""):
    req = json.loads(line)
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            child(req)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)
    protocol_out.write(json.dumps({"pid": pid}) + "\n"); protocol_out.flush()
    _, status = os.waitpid(pid, 0)
    protocol_out.write(json.dumps({"rc": os.waitstatus_to_exitcode(status)}) + "\n"); protocol_out.flush()
'''


class ComfyWorker:
    """The worker process (started on first use, stopped with the test process)."""

    def __init__(self, comfy_dir: Path, repo: Path, log: Path):
        self.log_path = log
        self._log = open(log, "w")
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        from comfy_harness import _die_with_parent

        self.proc = subprocess.Popen([sys.executable, "-c", WORKER, str(comfy_dir), str(repo)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log, env=env, start_new_session=True,
                                     preexec_fn=_die_with_parent)
        self._buf = b""
        ready = self._line(time.monotonic() + 600)
        if ready != "READY":
            self.stop()
            raise RuntimeError(f"the ComfyUI worker did not start ({ready!r}):\n{self.log_tail()}")

    def log_tail(self, n: int = 60) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def _line(self, deadline: float) -> str | None:
        """The worker's next protocol line, or None at EOF / the deadline."""
        fd = self.proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    return None
                chunk = os.read(fd, 65536)
                if not chunk:
                    return None
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def run(self, script: Path, base: Path, args: list[str], stdin: Path | None, cwd: Path, output: Path,
            timeout: float) -> int:
        """Run `script` in a fork; its exit status (a timeout kills it and raises TimeoutError)."""
        req = {"script": str(script), "base": str(base), "args": list(args), "stdin": str(stdin) if stdin else "",
               "cwd": str(cwd), "output": str(output)}
        self.proc.stdin.write((json.dumps(req) + "\n").encode())
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        started = self._line(deadline)
        if started is None:
            raise RuntimeError(f"the ComfyUI worker died:\n{self.log_tail()}")
        pid = json.loads(started)["pid"]
        done = self._line(deadline)
        if done is None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._line(time.monotonic() + 30)  # the worker reports the killed child
            raise TimeoutError(f"{script} ran past {timeout}s")
        return json.loads(done)["rc"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
