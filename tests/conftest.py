"""Session-wide test fixtures shared by every test file.

- One real ComfyUI server per test session (our pack, tiny checkpoints, the workflows' inputs), started on first use
  by whichever test asks for `comfy` first and shared by the HTTP, browser and voting-page tests: a test that needs
  its own input files writes them into `comfy.input_dir` under names unique to it.
- Tiny random models in the real key layout (svd_core.testing), built once per session and variant/seed by
  `tiny_models` and handed out as private deep copies (a test may train, patch or move its model).
- Two workers (pytest-xdist, `scripts/test.sh`: `-n 2 --dist loadgroup`): each test file runs whole on one worker
  (its module fixtures are built once), and every test that uses the ComfyUI server, or imports ComfyUI through
  `comfy_harness.run_in_comfyui`, on the same worker, so a session still starts one server and one ComfyUI
  worker. Each worker computes on one thread (two workers on two cores: no oversubscription).
"""
from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):  # before torch is imported: its thread pools read this once
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

COMFY_TESTS = Path(__file__).resolve().parent / "comfyui"
if str(COMFY_TESTS) not in sys.path:
    sys.path.insert(0, str(COMFY_TESTS))  # comfy_harness, factories, gui: importable from every test file

# files every session provides besides the workflows' own (the node tests use these)
BASE_MODELS = [
    {"folder": "checkpoints", "name": "svd_suite_tiny.safetensors",
     "factory": "tests.comfyui.factories:tiny_checkpoint", "kwargs": {"variant": "tiny"}},
    {"folder": "diffusers", "name": "tiny_svd_diffusers", "factory": "tests.comfyui.factories:tiny_diffusers_folder"},
]
BASE_INPUTS = [
    {"name": "svd_suite_test.png", "factory": "tests.comfyui.factories:test_image",
     "kwargs": {"width": 160, "height": 96}},
]


COMFYUI_FILES = ("test_native.py", "test_node_paths.py", "test_eval_nodes.py")  # they use run_in_comfyui


def pytest_collection_modifyitems(config, items):
    """xdist groups (used by `--dist loadgroup`): the ComfyUI-facing tests share one, every other file is its own."""
    for item in items:
        path = Path(str(item.fspath))
        comfy = "comfy" in getattr(item, "fixturenames", ()) or path.name in COMFYUI_FILES
        item.add_marker(pytest.mark.xdist_group("comfyui" if comfy else path.stem))


# ------------------------------------------------------------------------------------------------ ComfyUI server
@pytest.fixture(scope="session")
def workflows():
    from comfy_harness import load_workflows

    return load_workflows()


@pytest.fixture(scope="session")
def comfy(tmp_path_factory, workflows):
    """The session's one ComfyUI server (tests/comfyui/comfy_harness.py), stopped when the session ends."""
    from comfy_harness import ComfyServer, comfyui_dir, make_files
    from gui import seed_settings

    base = tmp_path_factory.mktemp("comfyui-base")
    models, inputs = list(BASE_MODELS), list(BASE_INPUTS)
    for wf in workflows:
        if wf.run or wf.browser:
            models += wf.meta.get("models", [])
            inputs += wf.meta.get("inputs", [])
    seed_settings(base)  # GUI user settings: no tutorial / template dialog on the first page load
    server = ComfyServer(base=base, comfy=comfyui_dir())
    server.launch()  # ComfyUI imports while this process builds the files (it lists folders on request only)
    try:
        make_files(models, base / "models")
        make_files(inputs, base / "input")
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def workflow_runs(comfy):
    """Each shipped workflow's API run, executed once per session (comfy_harness.WorkflowRuns)."""
    from comfy_harness import WorkflowRuns

    return WorkflowRuns(comfy)


@pytest.fixture(scope="session")
def object_info(comfy):
    return comfy.get("/object_info", timeout=60)


# ------------------------------------------------------------------------------------------------ tiny models
@pytest.fixture(scope="session")
def tiny_models():
    """`tiny_models(variant="tiny", seed=0)`: svd_core.testing.tiny_model built once per session and key, handed out
    as a private deep copy (a test may train, patch or move it). Module fixtures of files that use the same variant
    and seed share one build (a copy costs a memcpy, a build the layers' init and the seeded randomisation)."""
    from svd_core.testing import tiny_model

    built = {}

    def get(variant="tiny", seed: int = 0):
        key = (variant if isinstance(variant, str) else repr(variant), seed)
        if key not in built:
            built[key] = tiny_model(variant, seed=seed)
        return copy.deepcopy(built[key])

    return get
