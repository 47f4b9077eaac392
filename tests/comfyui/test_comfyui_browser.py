"""The shipped UI workflows in the real ComfyUI GUI (frontend package of ComfyUI 0.3.75) in headless Debian Chromium:
load like drag-and-drop, no missing node types or widget errors, the GUI's own prompt equals the API twin, queue from
the page and check the outputs. Screenshots go to test-artifacts/comfyui/."""
from __future__ import annotations

import json

import pytest

from comfy_harness import REPO, cached_nodes, check_outputs, diff_prompts, load_workflows

WORKFLOWS = {wf.name: wf for wf in load_workflows() if wf.browser}
ARTIFACTS = REPO / "test-artifacts" / "comfyui"


@pytest.fixture(scope="module")
def gui(comfy):
    from playwright.sync_api import sync_playwright

    from gui import App, launch

    with sync_playwright() as pw:
        browser = launch(pw)
        app = App(browser, comfy.url)
        try:
            yield app
        finally:
            app.close()
            browser.close()


def test_gui_knows_every_pack_node(gui, object_info):
    registered = gui.registered_types()
    ours = {k for k in object_info if k.startswith("SVDSuite_")}
    assert ours and ours <= registered, sorted(ours - registered)


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_gui_loads_workflow(gui, name):
    wf = WORKFLOWS[name]
    report = gui.load_ui(wf.ui, f"{name}.json")
    gui.screenshot(ARTIFACTS / f"{name}_loaded.png")
    assert report["count"] == len(wf.ui["nodes"]), report
    assert report["missing"] == [], f"missing node types in the GUI: {report['missing']}"
    assert report["errors"] == [], f"nodes flagged with errors: {report['errors']}"
    assert not [d for d in report["dialogs"] if "missing" in d.lower()], report["dialogs"]
    assert report["toasts"] == [], f"the GUI raised alerts while loading: {report['toasts']}"
    # what the GUI would queue is exactly the API twin (widget values survived loading unchanged)
    problems = diff_prompts(wf.api, gui.graph_to_prompt())
    assert not problems, f"GUI prompt of {name}.json differs from {name}.api.json:\n" + "\n".join(problems)
    page_errors = [e for e in gui.errors if "pageerror" in e]
    assert not page_errors, page_errors


# Queued from the page and executed there in full: the generation workflow (LoadImage's upload widget, the seed's
# control_after_generate, the sampler's progress and live previews routed to the page, SaveVideo) and an analysis one
# (SaveImage PNGs of the evaluation nodes); both cheap. Every other workflow is queued from the page right after the
# session's API run of the same prompt (comfy_harness.WorkflowRuns, checked by test_workflow_runs_in_real_comfyui),
# so ComfyUI's execution cache serves every node: that proves the server takes the page's queue and that its prompt
# is the API-tested one (same cache signature: node types, inputs, links, file hashes), without a second execution.
EXECUTED_FROM_PAGE = {"svd_img2vid", "eval_compare"}


@pytest.mark.parametrize("name", sorted(n for n, wf in WORKFLOWS.items() if wf.run))
def test_gui_queues_workflow(gui, comfy, workflow_runs, name):
    wf = WORKFLOWS[name]
    api_entry = None if name in EXECUTED_FROM_PAGE else workflow_runs.latest(wf)[0]
    gui.load_ui(wf.ui, f"{name}.json")
    assert gui.set_widgets(wf.meta.get("overrides", {})) == []
    assert not diff_prompts(wf.prompt(), gui.graph_to_prompt())  # test-size values are what gets queued
    answer = gui.queue_from_page()
    assert answer["status"] == 200 and not answer["body"].get("node_errors"), answer
    comfy.last_prompt = answer["body"]["prompt_id"]
    entry, _ = comfy.wait(comfy.last_prompt, wf.timeout, own_client=False)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    cached = set(cached_nodes(entry))
    if api_entry is None:  # executed from the page: its outputs were made by this run
        gui.page.wait_for_timeout(500)  # let the page render the result
        gui.screenshot(ARTIFACTS / f"{name}_queued.png")
        assert not {str(c["node"]) for c in wf.meta.get("outputs", [])} & cached, cached
    else:  # the API run's prompt, node for node: every output served from the cache, the same files
        assert cached == set(wf.prompt()), sorted(set(wf.prompt()) - cached)
        assert entry["outputs"] == api_entry["outputs"]
    problems = check_outputs(comfy, wf, entry)
    assert not problems, "\n".join(problems)


def test_gui_check_detects_missing_node_types(gui):
    """The load check is not vacuous: an unknown node type in a UI file is reported as missing."""
    wf = json.loads(json.dumps(WORKFLOWS["svd_img2vid"].ui))
    wf["nodes"][0]["type"] = "SVDSuite_DoesNotExist"
    report = gui.load_ui(wf, "broken.json")
    gui.screenshot(ARTIFACTS / "missing_node_detected.png")
    gui.close_dialogs()  # the missing-nodes dialog would block the next test's Run button
    assert report["missing"] == ["SVDSuite_DoesNotExist"], report
    assert not gui.evaluate("() => document.querySelectorAll('.p-dialog-mask').length")


def test_gui_shows_live_previews_while_the_pack_samples(gui, comfy):
    """Queued from the page with the server's --preview-method latent2rgb, the SVD Sampler's step previews reach the
    GUI and are shown on the sampler node (the frontend's nodePreviewImages), as for native samplers. The screenshot
    is taken while sampling is still running."""
    wf = WORKFLOWS["svd_img2vid"]
    gui.load_ui(wf.ui, "svd_img2vid.json")
    overrides = json.loads(json.dumps(wf.meta.get("overrides", {})))
    overrides.setdefault("3", {}).update(width=256, height=128)
    overrides.setdefault("5", {})["steps"] = 24  # long enough to catch previews before the end
    assert gui.set_widgets(overrides) == []
    sampler = "5"
    # what the page had when each preview arrived (recorded by the page itself, so it does not depend on how fast
    # the sampler runs compared with this test's polling): the progress so far and the sampler node's preview
    gui.evaluate("""(sampler) => {
        window.__svdPreviews = [];
        window.__svdProgress = null;
        const api = window.comfyAPI.api.api;
        api.addEventListener("progress", ({detail}) => { window.__svdProgress = detail; });
        api.addEventListener("b_preview", () => {
            const progress = window.__svdProgress;
            setTimeout(() => window.__svdPreviews.push({progress,
                shown: (window.app.nodePreviewImages?.[sampler] ?? []).length > 0}), 0);
        });
    }""", sampler)
    answer = gui.queue_from_page()
    assert answer["status"] == 200 and not answer["body"].get("node_errors"), answer
    comfy.last_prompt = answer["body"]["prompt_id"]
    gui.page.wait_for_function("() => window.__svdPreviews.filter((p) => p.shown).length >= 2", timeout=240_000)
    gui.page.wait_for_timeout(300)  # let the canvas draw the preview
    shot = gui.screenshot(ARTIFACTS / "svd_sampler_live_preview.png")
    print(f"\nGUI screenshot with a live preview on the SVD Sampler (taken as previews arrive): {shot}")
    entry, _ = comfy.wait(answer["body"]["prompt_id"], 300, own_client=False)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    previews = gui.evaluate("() => window.__svdPreviews")
    # previews came while the sampler was part-way, and the node showed them (not only the final result)
    part_way = [p for p in previews if p["progress"] and p["progress"]["node"] == sampler
                and p["progress"]["value"] < p["progress"]["max"] and p["shown"]]
    assert len(part_way) >= 2, previews[:4]
