"""Regenerate workflows/NAME.json (UI format) from workflows/NAME.api.json through the real ComfyUI GUI.

    .venv/bin/python tests/comfyui/make_ui_workflow.py NAME [NAME ...]

Starts the test ComfyUI (with the files NAME.test.json declares, so loader drop-downs list them), loads the API graph
into a headless page (`app.loadApiJson`), lays it out left to right in execution order, and writes the frontend's own
serialization. Node ids, links and widget values therefore match the API twin by construction; the tests check it.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from comfy_harness import WORKFLOWS, WORKFLOWS_API, ComfyServer, api_path, comfyui_dir, make_files, meta_path  # noqa: E402
from gui import App, launch, seed_settings  # noqa: E402

LAYOUT_JS = """() => {
    const graph = window.app.graph;
    const nodes = [...(graph.nodes ?? graph._nodes)];
    // column = longest path from a source node; rows in id order
    const byId = new Map(nodes.map(n => [n.id, n]));
    const depth = new Map();
    const d = (n) => {
        if (depth.has(n.id)) return depth.get(n.id);
        let best = 0;
        for (const input of n.inputs ?? []) {
            if (input.link == null) continue;
            const link = graph.links.get ? graph.links.get(input.link) : graph.links[input.link];
            const src = link && byId.get(link.origin_id);
            if (src) best = Math.max(best, d(src) + 1);
        }
        depth.set(n.id, best);
        return best;
    };
    nodes.forEach(d);
    const columns = new Map();
    for (const n of nodes.sort((a, b) => a.id - b.id)) {
        const c = depth.get(n.id);
        if (!columns.has(c)) columns.set(c, []);
        columns.get(c).push(n);
    }
    let x = 40;
    for (const c of [...columns.keys()].sort((a, b) => a - b)) {
        let y = 60, width = 0;
        for (const n of columns.get(c)) {
            n.pos = [x, y];
            y += Math.max(n.size[1], n.type === "LoadImage" ? 320 : 0) + 70;  // LoadImage grows a preview
            width = Math.max(width, n.size[0]);
        }
        x += width + 60;
    }
    // shipped seeds stay as written (reproducible); users switch to randomize in the GUI
    for (const n of nodes) for (const w of n.widgets ?? []) if (w.name === "control_after_generate") w.value = "fixed";
    graph.setDirtyCanvas(true, true);
}"""


def main(names: list[str]) -> int:
    from playwright.sync_api import sync_playwright

    names = names or sorted(p.name[: -len(".api.json")] for p in WORKFLOWS_API.glob("*.api.json"))
    metas = {}
    for name in names:
        meta = meta_path(name)
        metas[name] = json.loads(meta.read_text()) if meta.exists() else {}
    with tempfile.TemporaryDirectory(prefix="svd-ui-") as tmp:
        base = Path(tmp)
        for meta in metas.values():
            make_files(meta.get("models", []), base / "models")
            make_files(meta.get("inputs", []), base / "input")
        seed_settings(base)
        server = ComfyServer(base=base, comfy=comfyui_dir()).start()
        try:
            with sync_playwright() as pw:
                browser = launch(pw)
                app = App(browser, server.url)
                for name in names:
                    api = json.loads(api_path(name).read_text())
                    app.load_api(api, name)
                    app.evaluate(LAYOUT_JS)
                    ui = app.serialize()
                    ui.get("extra", {}).pop("ds", None)  # canvas zoom/offset of this headless page
                    (WORKFLOWS / f"{name}.json").write_text(json.dumps(ui, indent=2) + "\n")
                    print(f"wrote workflows/{name}.json ({len(ui['nodes'])} nodes, {len(ui['links'])} links)")
                browser.close()
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
