"""The ComfyUI entry point runs the engine that ships beside it, whatever else is installed as `svd_core`."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

LOAD_PACK = f"""
import importlib.util, logging, sys
logging.basicConfig(level=logging.WARNING, format="%(message)s")
{{pre}}
spec = importlib.util.spec_from_file_location("svd_suite_pack", {str(REPO / "__init__.py")!r},
                                              submodule_search_locations=[{str(REPO)!r}])
pack = importlib.util.module_from_spec(spec)
sys.modules["svd_suite_pack"] = pack
spec.loader.exec_module(pack)
import svd_core
print("ENGINE", svd_core.__file__)
"""


def run_pack(tmp_path: Path, pre: str = "") -> subprocess.CompletedProcess:
    decoy = tmp_path / "site" / "svd_core"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("DECOY = True\n")  # e.g. another checkout's `pip install -e .`
    return subprocess.run([sys.executable, "-c", LOAD_PACK.replace("{pre}", pre)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"})


def test_pack_imports_its_own_engine_not_an_installed_one(tmp_path):
    proc = run_pack(tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    engine = proc.stdout.split("ENGINE ", 1)[1].strip()
    assert Path(engine).resolve() == (REPO / "svd_core" / "__init__.py").resolve()
    assert "already imported" not in proc.stderr


def test_an_engine_imported_before_the_pack_is_kept_and_reported(tmp_path):
    proc = run_pack(tmp_path, pre="import svd_core")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert str(tmp_path / "site" / "svd_core") in proc.stdout  # not swapped under code that already holds it
    assert "svd_core was already imported from" in proc.stderr and "restart ComfyUI" in proc.stderr


def test_comfy_registry_metadata():
    """pyproject.toml carries what the Comfy Registry requires (docs.comfy.org/registry/specifications, parsed by
    ComfyUI's comfy_config): a node id without "ComfyUI", an X.Y.Z version, the repository URL and [tool.comfy]
    PublisherId / DisplayName / Icon. The repository, publisher and icon are placeholders until the pack is public:
    they are marked so, and `comfy node publish` must not run before the maintainer fills them in."""
    import re
    import tomllib

    text = (REPO / "pyproject.toml").read_text()
    data = tomllib.loads(text)
    project, comfy = data["project"], data["tool"]["comfy"]
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*([-_.][A-Za-z0-9]+)*", project["name"]) and len(project["name"]) < 100
    assert "comfyui" not in project["name"].lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert re.fullmatch(r"https://\S+", project["urls"]["Repository"])
    for key in ("PublisherId", "DisplayName", "Icon"):
        assert isinstance(comfy.get(key), str) and comfy[key].strip(), key
    assert re.fullmatch(r"https://\S+\.(png|jpg|jpeg|svg|webp)", comfy["Icon"])
    assert re.fullmatch(r">=\s*\d+\.\d+\.\d+", comfy["requires-comfyui"])
    placeholders = [v for v in (project["urls"]["Repository"], comfy["PublisherId"], comfy["Icon"])
                    if "fill-in" in v.lower()]
    assert not placeholders or text.count("PLACEHOLDER") >= 2  # a placeholder is always marked for the maintainer
