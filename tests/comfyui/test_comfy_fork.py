"""`run_in_comfyui` (tests/comfyui/comfy_fork.py: forks of one ComfyUI worker): each script runs with its own base
directory, arguments, stdin and working directory, on ComfyUI's state as imported (what a script changes never
reaches the next one), and a failing script fails the test with its output. Also true with SVD_TEST_FORK=0."""
from __future__ import annotations

import pytest

from comfy_harness import run_in_comfyui

SCRIPT = r'''
import comfy.model_management as mm
out = {"input": folder_paths.get_input_directory(), "output": folder_paths.get_output_directory(),
       "checkpoints": folder_paths.get_folder_paths("checkpoints")[0], "vram": mm.vram_state.name,
       "marker": getattr(folder_paths, "svd_test_marker", None), "args": args, "stdin": sys.stdin.read(),
       "cwd": os.getcwd(), "pack": hasattr(sys.modules.get("svd_suite"), "comfy_entrypoint")}
folder_paths.svd_test_marker = "left behind"  # neither of these may reach the next script
mm.vram_state = mm.VRAMState.LOW_VRAM
print("RESULT " + json.dumps(out))
'''


def test_each_script_gets_its_folders_and_comfyuis_state_as_imported(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = run_in_comfyui(SCRIPT, tmp_path / "a", "x", "y", stdin="hello")
    b = run_in_comfyui(SCRIPT, tmp_path / "b")
    for run, name in ((a, "a"), (b, "b")):
        base = tmp_path / name / "base"
        assert (run["input"], run["output"]) == (str(base / "input"), str(base / "output")), run
        assert run["checkpoints"] == str(base / "models" / "checkpoints") and run["cwd"] == str(tmp_path / name)
        assert run["marker"] is None and run["vram"] != "LOW_VRAM" and run["pack"]
    assert (a["args"], a["stdin"], b["args"], b["stdin"]) == (["x", "y"], "hello", [], "")
    assert a["vram"] == b["vram"]


def test_a_failing_script_fails_with_its_output(tmp_path):
    with pytest.raises(AssertionError, match=r"(?s)before the error.*ZeroDivisionError"):
        run_in_comfyui("print('before the error', flush=True)\n1 / 0\n", tmp_path)
