"""ComfyUI entry point of the SVD suite (V3 schema): `comfy_entrypoint()` returns the extension listing every node.

ComfyUI imports this file as a package named after its path (``custom_nodes/<folder>``), so everything inside the
pack is imported relatively (ComfyUI owns the top-level module ``nodes``). The engine `svd_core` lives next to this
file and the pack always runs that copy, the one its nodes were written against: it is loaded by file location
under its own name, so neither an `svd_core` installed elsewhere (another checkout's `pip install -e`, an older
release) can stand in for it, nor can the pack folder's `nodes/` shadow ComfyUI's on sys.path. A pack shipped
without the engine folder falls back to an installed `svd_core`.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import sys

_PACK_DIR = os.path.dirname(os.path.realpath(__file__))


def _own_engine() -> None:
    engine = os.path.join(_PACK_DIR, "svd_core")
    loaded = sys.modules.get("svd_core")
    if loaded is not None:
        where = os.path.dirname(os.path.realpath(loaded.__file__ or ""))
        if where != engine and os.path.isdir(engine):
            logging.warning("[svd] svd_core was already imported from %s, not from the pack (%s): nodes and engine "
                            "may disagree; restart ComfyUI", where, engine)
        return
    init = os.path.join(engine, "__init__.py")
    if not os.path.isfile(init):
        import svd_core  # noqa: F401  (installed engine, pack shipped without its source)
        return
    spec = importlib.util.spec_from_file_location("svd_core", init, submodule_search_locations=[engine])
    module = importlib.util.module_from_spec(spec)
    sys.modules["svd_core"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["svd_core"]
        raise


_own_engine()

try:
    from comfy_api.latest import ComfyExtension, io
except ModuleNotFoundError:  # imported outside ComfyUI (pytest collects this folder as a package): nothing to register
    ComfyExtension = None

if ComfyExtension is not None:
    from .nodes import GENERATION_NODES

    class SVDSuiteExtension(ComfyExtension):
        """Generation nodes (always) plus the training/curation/evaluation nodes whose optional extras are installed."""

        async def get_node_list(self) -> list[type[io.ComfyNode]]:
            nodes: list[type[io.ComfyNode]] = list(GENERATION_NODES)
            try:
                from .training_nodes import get_nodes
            except Exception as exc:  # a broken optional part must never hide the generation nodes
                logging.warning("[svd] training nodes not loaded: %s", exc)
            else:
                try:
                    nodes.extend(get_nodes())
                except Exception as exc:
                    logging.warning("[svd] training nodes not loaded: %s", exc)
            return nodes

    async def comfy_entrypoint() -> SVDSuiteExtension:
        return SVDSuiteExtension()


# served to the GUI (none yet); keeps ComfyUI from scanning the repo for a web folder
WEB_DIRECTORY = None
