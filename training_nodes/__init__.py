"""Training, curation and evaluation nodes. Each submodule exposes `NODES`; one whose optional
dependencies are missing is skipped with a warning so the generation nodes still register."""
from __future__ import annotations

import importlib
import logging

_SUBMODULES = ("curation", "evaluation", "training")


def get_nodes() -> list:
    nodes = []
    for name in _SUBMODULES:
        try:
            module = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:  # an optional extra is not installed
            logging.warning("[svd] training_nodes.%s not loaded: %s", name, exc)
            continue
        nodes.extend(module.NODES)
    return nodes
