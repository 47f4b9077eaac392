"""Drive the real ComfyUI GUI (frontend package served by the test server) in Debian's headless Chromium."""
from __future__ import annotations

import json
import os
from pathlib import Path

CHROMIUM = os.environ.get("SVD_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run"]
# user settings so the first page load shows the canvas, not the template browser / tutorial
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Workflow.ShowMissingNodesWarning": True,
            "Comfy.Validation.Workflows": True}


def seed_settings(base: Path) -> None:
    path = base / "user" / "default" / "comfy.settings.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(SETTINGS))


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)


class App:
    """One ComfyUI page: console and page errors are collected in `errors`."""

    def __init__(self, browser, url: str, timeout_ms: int = 60_000):
        self.page = browser.new_page(viewport={"width": 1600, "height": 1000})
        self.page.set_default_timeout(timeout_ms)
        self.console: list[str] = []
        self.errors: list[str] = []
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        self.page.goto(url, timeout=timeout_ms)
        self.page.wait_for_function("() => window.app && window.app.graph && window.app.vueAppReady === true",
                                    timeout=timeout_ms)
        self.page.keyboard.press("Escape")  # close any welcome dialog

    def _on_console(self, msg) -> None:
        self.console.append(f"{msg.type}: {msg.text}")

    def evaluate(self, script: str, arg=None):
        return self.page.evaluate(script, arg)

    def registered_types(self) -> set[str]:
        return set(self.evaluate("() => Object.keys(LiteGraph.registered_node_types)"))

    def close_dialogs(self, tries: int = 3) -> None:
        """Close what an earlier load left open (e.g. the missing-nodes dialog), as the user would: Escape."""
        for _ in range(tries):
            if not self.evaluate("() => document.querySelectorAll('.p-dialog-mask').length"):
                return
            self.page.keyboard.press("Escape")
            self.page.wait_for_timeout(200)

    def load_ui(self, workflow: dict, name: str) -> dict:
        """Load a UI-format workflow like drag-and-drop does (after closing dialogs an earlier load left open);
        report what the GUI thinks of it."""
        self.close_dialogs()
        return self.evaluate(
            """async ([wf, name]) => {
                document.querySelectorAll('.p-toast-message .p-toast-close-button').forEach(b => b.click());
                await new Promise(r => setTimeout(r, 200));
                await window.app.loadGraphData(structuredClone(wf), true, true, name);
                await new Promise(r => setTimeout(r, 300));
                const nodes = window.app.graph.nodes ?? window.app.graph._nodes;
                const registered = LiteGraph.registered_node_types;
                return {
                    count: nodes.length,
                    missing: nodes.filter(n => !registered[n.type]).map(n => n.type),
                    errors: nodes.filter(n => n.has_errors).map(n => `${n.id} ${n.type}`),
                    dialogs: [...document.querySelectorAll('.p-dialog')].map(d => d.innerText.slice(0, 300)),
                    toasts: [...document.querySelectorAll('.p-toast-message')].map(t => t.innerText.slice(0, 600)),
                };
            }""", [workflow, name])

    def load_api(self, prompt: dict, name: str) -> None:
        self.evaluate("async ([p, name]) => { await window.app.loadApiJson(structuredClone(p), name); }",
                      [prompt, name])

    def serialize(self) -> dict:
        # through JSON like the GUI's own Save: `undefined` fields are dropped, not turned into null
        return self.evaluate("() => JSON.parse(JSON.stringify(window.app.graph.serialize()))")

    def graph_to_prompt(self) -> dict:
        return self.evaluate("async () => (await window.app.graphToPrompt()).output")

    def set_widgets(self, overrides: dict) -> list[str]:
        """Set widget values by node id and input name (what the user would type); returns what was not found."""
        return self.evaluate(
            """(overrides) => {
                const missing = [];
                for (const [id, values] of Object.entries(overrides)) {
                    const node = window.app.graph.getNodeById(Number(id));
                    if (!node) { missing.push(`node ${id}`); continue; }
                    for (const [name, value] of Object.entries(values)) {
                        const w = (node.widgets || []).find(w => w.name === name);
                        if (!w) { missing.push(`${id}.${name}`); continue; }
                        w.value = value;
                        w.callback?.(value);
                    }
                }
                window.app.graph.setDirtyCanvas(true, true);
                return missing;
            }""", overrides)

    def queue_from_page(self, timeout_ms: int = 30_000) -> dict:
        """Press the GUI's Run (queue) button; returns the server's /prompt answer."""
        with self.page.expect_response(lambda r: r.url.endswith("/prompt") and r.request.method == "POST",
                                       timeout=timeout_ms) as info:
            button = self.page.locator("[data-testid='queue-button'], button:has-text('Run')").first
            button.click(timeout=timeout_ms)
        response = info.value
        return {"status": response.status, "body": response.json()}

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path))
        return path

    def close(self) -> None:
        self.page.close()
