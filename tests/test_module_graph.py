"""The engine's module graph (issue 15 item 6): no import circles (the former `loading` <-> `diffusers_io`,
`curation.pipeline` <-> `curation.ray_runner`, `eval.protocols` <-> `eval.ucf101` are gone), and no inference
module imports `svd_core.training`.
Imports are read with `ast` (function-level ones included, so a circle cannot hide in a function body)."""
from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORMER_CIRCLES = ("svd_core.loading", "svd_core.diffusers_io", "svd_core.curation.pipeline",
                  "svd_core.curation.ray_runner")
# everything but the trainer, the data curation and evaluation tools, and the command-line entry
NOT_INFERENCE = ("svd_core.training", "svd_core.curation", "svd_core.eval", "svd_core.__main__")


def _modules() -> dict[str, Path]:
    out = {}
    for path in (ROOT / "svd_core").rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _targets(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """Absolute names an import statement loads: `from .a import b` -> pkg.a and pkg.a.b (b may be a module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = module.split(".") if is_package else module.split(".")[:-1]
    if node.level:
        base = base[:len(base) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return [target] + [f"{target}.{a.name}" for a in node.names]


@functools.cache  # parsed once per session; the tests only read it
def import_graph() -> dict[str, set[str]]:
    """svd_core module -> the svd_core modules its code imports (every import statement, at any depth; importing
    a.b.c runs a and a.b too, except the importer's own packages, which are already loading)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(node, name, path.name == "__init__.py"):
                    parts = target.split(".")
                    deps |= {q for q in (".".join(parts[:i]) for i in range(1, len(parts) + 1))
                             if q in modules and q != name and q not in own}
        graph[name] = deps
    return graph


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in graph[todo.pop()] - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


def test_the_former_import_circles_are_gone():
    graph = import_graph()
    assert "svd_core.diffusers_io" in graph["svd_core.loading"]  # the loader dispatches folders to the mapping
    assert "svd_core.curation.ray_runner" in graph["svd_core.curation.pipeline"]  # the pipeline runs on Ray
    circles = {m: sorted(d for d in _reachable(graph, m) if m in _reachable(graph, d)) for m in FORMER_CIRCLES}
    assert circles == {m: [] for m in FORMER_CIRCLES}


def test_no_inference_module_imports_training():
    graph = import_graph()
    inference = [m for m in graph if m.startswith("svd_core.") and not m.startswith(NOT_INFERENCE)]
    assert {"svd_core.pipeline", "svd_core.interpolation", "svd_core.multiview", "svd_core.text2video",
            "svd_core.conditioner", "svd_core.denoiser"} <= set(inference)
    reach = {m: sorted(d for d in _reachable(graph, m) if d.startswith("svd_core.training")) for m in inference}
    assert {m: r for m, r in reach.items() if r} == {}
    # the walk sees what it must: the trainer imports the engine, and `tasks` the inference modules it shares
    assert {"svd_core.interpolation", "svd_core.text2video"} <= graph["svd_core.training.tasks"]


# One interpreter imports each module first, after dropping every svd_core module the previous import loaded: the
# svd_core modules start from nothing each time, as in a fresh interpreter, while torch and the other libraries
# (what a start-up costs) load once.
IMPORT_EACH_ALONE = """
import importlib, json, sys, traceback
failed = {}
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "svd_core" or m.startswith("svd_core.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed[name] = traceback.format_exc()[-2000:]
print(json.dumps(failed))
"""


def test_each_former_circle_module_imports_alone():
    """Each first of the pair in a clean svd_core state (a circle fails when its other end is imported first)."""
    proc = subprocess.run([sys.executable, "-c", IMPORT_EACH_ALONE, *FORMER_CIRCLES], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {}


def test_no_module_of_the_engine_is_in_an_import_circle():
    """Beyond the former circles: no svd_core module reaches itself (eval's protocols <-> ucf101 was the last)."""
    graph = import_graph()
    assert "svd_core.eval.protocols" in graph["svd_core.eval.ucf101"]
    circles = {m: sorted(d for d in _reachable(graph, m) if m in _reachable(graph, d)) for m in graph}
    assert {m: c for m, c in circles.items() if c} == {}
