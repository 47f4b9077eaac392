"""One real ComfyUI server per test session (with our pack and tiny checkpoints), shared by the HTTP and browser tests."""
from __future__ import annotations

import pytest

from comfy_harness import ComfyServer, comfyui_dir, load_workflows, make_files
from gui import seed_settings

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


@pytest.fixture(scope="session")
def workflows():
    return load_workflows()


@pytest.fixture(scope="session")
def comfy(tmp_path_factory, workflows):
    base = tmp_path_factory.mktemp("comfyui-base")
    models, inputs = list(BASE_MODELS), list(BASE_INPUTS)
    for wf in workflows:
        if wf.run or wf.browser:
            models += wf.meta.get("models", [])
            inputs += wf.meta.get("inputs", [])
    make_files(models, base / "models")
    make_files(inputs, base / "input")
    seed_settings(base)  # GUI user settings: no tutorial / template dialog on the first page load
    server = ComfyServer(base=base, comfy=comfyui_dir())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def object_info(comfy):
    return comfy.get("/object_info", timeout=60)
