"""ComfyUI entry point of the SVD suite (V3 schema): `comfy_entrypoint()` returns the extension listing every node.

ComfyUI imports this file as a package named after its path (``custom_nodes/<folder>``), so everything inside the
pack is imported relatively (ComfyUI owns the top-level module ``nodes``). The engine `svd_core` lives next to this
file; when it was not pip-installed (plain clone into ``custom_nodes/``) the pack folder is appended to sys.path.
"""
from __future__ import annotations

import logging
import os
import sys

try:
    import svd_core  # noqa: F401  (pip install . / -e . made it importable)
except ModuleNotFoundError:
    _PACK_DIR = os.path.dirname(os.path.abspath(__file__))
    if _PACK_DIR not in sys.path:
        # appended, never prepended: ComfyUI's own top-level modules (nodes, utils, ...) must keep winning
        sys.path.append(_PACK_DIR)
    import svd_core  # noqa: F401

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
