"""Node reference pages, docs/nodes/<group>.md, rendered from the real server's /object_info.

One page per node group (the part of the category after `svd/`): each node's display name, id, description, and
a table of its inputs and outputs with type, default/range and tooltip, exactly as ComfyUI shows them.
`tests/comfyui/test_comfyui_nodes.py::test_node_docs_are_current` fails when a page no longer matches the schemas;
regenerate with `.venv/bin/python tests/comfyui/node_docs.py` (starts the test ComfyUI, writes the pages).
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs" / "nodes"
PREFIX = "SVDSuite_"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def _range(opts: dict, typ: str, local: frozenset[str]) -> str:
    parts = []
    if typ == "COMBO" or "options" in opts:
        # lists of the user's files depend on their folders: only the fixed choices are documented. A list is the
        # user's files when every option is a file name or a name in the server's folders; from a mixed list
        # ("none" + files) only the file names (with '.' or '/') are left out.
        options = [str(o) for o in opts.get("options", [])]
        file_like = [("." in o or "/" in o) for o in options]
        if all(f or o in local for f, o in zip(file_like, options)):  # also an empty list
            parts.append("a file from its ComfyUI folder")
        else:
            options = [o for f, o in zip(file_like, options) if not f]
            parts.append(", ".join(f"`{o}`" for o in options[:8]) + (f", … ({len(options)})" if len(options) > 8 else ""))
    if "default" in opts:
        parts.append(f"default `{opts['default']}`")
    if "min" in opts or "max" in opts:
        parts.append(f"{opts.get('min', '')} … {opts.get('max', '')}")
    return "; ".join(parts)


def _inputs(info: dict, local: frozenset[str]) -> list[str]:
    rows = []
    for section in ("required", "optional"):
        for name in info["input_order"].get(section, []):
            spec = info["input"][section][name]
            typ = spec[0] if isinstance(spec[0], str) else "COMBO"
            opts = spec[1] if len(spec) > 1 else {}
            if typ == "COMBO" and "options" not in opts and isinstance(spec[0], list):
                opts = dict(opts, options=spec[0])
            req = "" if section == "required" else " (optional)"
            rows.append(f"| `{name}`{req} | {typ} | {_cell(_range(opts, typ, local))} | {_cell(opts.get('tooltip', ''))} |")
    return rows


def _outputs(info: dict) -> list[str]:
    tips = info.get("output_tooltips") or [""] * len(info["output"])
    return [f"| `{name}` | {typ} | {_cell(tip or '')} |"
            for name, typ, tip in zip(info["output_name"], info["output"], tips)]


def local_names(base: Path) -> frozenset[str]:
    """Names of everything in a server's base folders: combo options that list them are the user's files."""
    return frozenset(p.name for p in base.rglob("*") if "custom_nodes" not in p.parts)


def render(object_info: dict, local: frozenset[str] = frozenset()) -> dict[str, str]:
    """{file name: page text} for every group of the pack's nodes (`local`: see local_names)."""
    groups: dict[str, list[dict]] = {}
    for node_id, info in object_info.items():
        if node_id.startswith(PREFIX):
            groups.setdefault(info["category"].split("/", 1)[-1].replace("/", "_"), []).append(info)
    pages = {}
    for group, nodes in sorted(groups.items()):
        lines = [f"# `svd/{group}` nodes", "",
                 "Generated from the nodes' own schemas (`tests/comfyui/node_docs.py`); the tooltips are the ones the",
                 "ComfyUI GUI shows. Workflows using them: `workflows/README.md`.", ""]
        for info in sorted(nodes, key=lambda i: i["display_name"]):
            lines += [f"## {info['display_name']} (`{info['name']}`)", "", _cell(info.get("description", "")), ""]
            inputs = _inputs(info, local)
            if inputs:
                lines += ["| input | type | values | what it does |", "|---|---|---|---|", *inputs, ""]
            outputs = _outputs(info)
            if outputs:
                lines += ["| output | type | what it is |", "|---|---|---|", *outputs, ""]
        pages[f"{group}.md"] = "\n".join(lines).rstrip() + "\n"
    index = ["# Node reference", "", "The pack's nodes by menu group (**svd/…** in ComfyUI's node menu):", ""]
    index += [f"- [svd/{name[:-3]}]({name}): " + ", ".join(sorted(i["display_name"] for i in groups[name[:-3]]))
              for name in sorted(pages)]
    pages["README.md"] = "\n".join(index) + "\n"
    return pages


def main() -> int:
    sys.path.insert(0, str(Path(__file__).parent))
    from comfy_harness import ComfyServer, comfyui_dir

    with tempfile.TemporaryDirectory(prefix="svd-docs-") as tmp:
        server = ComfyServer(base=Path(tmp), comfy=comfyui_dir()).start()
        try:
            object_info = server.get("/object_info", timeout=60)
        finally:
            server.stop()
    pages = render(object_info)
    DOCS.mkdir(parents=True, exist_ok=True)
    for stale in DOCS.glob("*.md"):
        if stale.name not in pages:
            stale.unlink()  # only our generated pages live in docs/nodes/
    for name, text in pages.items():
        (DOCS / name).write_text(text)
        print(f"wrote docs/nodes/{name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
