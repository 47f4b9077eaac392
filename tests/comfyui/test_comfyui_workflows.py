"""Shipped workflows (workflows/README.md format) against a real ComfyUI 0.3.75: twins agree, graphs validate, runs work."""
from __future__ import annotations

import json

import pytest
import requests

from comfy_harness import (PACK_NAME, WORKFLOWS, WORKFLOWS_API, Workflow, cached_nodes, check_against_object_info,
                           check_outputs, diff_prompts, load_workflows, ui_to_api)

WORKFLOW_LIST = load_workflows()
BY_NAME = {wf.name: wf for wf in WORKFLOW_LIST}
RUNNABLE = [wf.name for wf in WORKFLOW_LIST if wf.run]
# what issue 4 promises to ship
REQUIRED = {"svd_img2vid", "svd_xt_img2vid", "sv3d_orbit", "txt2img2vid"}


def test_every_shipped_workflow_has_twins_and_metadata():
    api_names = {p.name[: -len(".api.json")] for p in WORKFLOWS_API.glob("*.api.json")}
    ui_names = {p.name[: -len(".json")] for p in WORKFLOWS.glob("*.json")}
    meta_names = {wf.name for wf in load_workflows(complete_only=False)}
    assert api_names == ui_names == meta_names == set(BY_NAME), (
        "every workflow needs NAME.json, api/NAME.api.json and tests/NAME.test.json (workflows/README.md)",
        api_names, ui_names, meta_names)
    assert REQUIRED <= set(BY_NAME)
    readme = (WORKFLOWS / "README.md").read_text()
    for name in REQUIRED:
        assert f"`{name}`" in readme, f"workflows/README.md does not describe {name}"
    for name in REQUIRED - {"txt2img2vid"}:
        assert BY_NAME[name].run, f"{name} must execute in the real-ComfyUI test"


def test_every_ui_workflow_has_a_jpg_thumbnail():
    """The template browser shows NAME.jpg for NAME.json (the frontend's mediaSubtype "jpg" for custom-node
    templates): every UI workflow has one, a real JPEG of a sensible size (scripts/make_workflow_thumbnails.py)."""
    from PIL import Image

    for name in BY_NAME:
        path = WORKFLOWS / f"{name}.jpg"
        assert path.is_file(), f"{path.name} missing: run scripts/make_workflow_thumbnails.py {name}"
        assert path.stat().st_size < 200_000, f"{path.name} is {path.stat().st_size} bytes; keep thumbnails small"
        with Image.open(path) as im:
            assert im.format == "JPEG" and 64 <= im.width <= 1024 and 32 <= im.height <= 1024, (name, im.size)
    assert {p.stem for p in WORKFLOWS.glob("*.jpg")} == set(BY_NAME), "a thumbnail without its workflow"


def test_template_browser_lists_only_ui_workflows(comfy):
    """ComfyUI lists every *.json directly in a pack's workflows/ folder as a template (app/custom_node_manager.py):
    exactly the UI workflows must be there, each one a LiteGraph graph the frontend can open."""
    templates = comfy.get("/workflow_templates", timeout=30)
    assert sorted(templates.get(PACK_NAME, [])) == sorted(BY_NAME)
    for name in BY_NAME:
        served = comfy.get(f"/api/workflow_templates/{PACK_NAME}/{name}.json", timeout=30)
        assert served.get("version") == 0.4 and served["nodes"] and "links" in served, name
        thumb = requests.get(f"{comfy.url}/api/workflow_templates/{PACK_NAME}/{name}.jpg", timeout=30)
        assert thumb.status_code == 200 and thumb.content[:3] == b"\xff\xd8\xff", (name, thumb.status_code)


def with_new_optional_widget(object_info: dict, types: set[str]) -> dict:
    """object_info as a newer ComfyUI might declare it: each node type gained an optional widget at the end."""
    info = {t: json.loads(json.dumps(object_info[t])) for t in types}
    for spec in info.values():
        spec["input"].setdefault("optional", {})["svd_test_new_widget"] = ["INT", {"default": 0}]
        spec["input_order"].setdefault("optional", []).append("svd_test_new_widget")
    return info


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_twins_stay_equal_when_newer_nodes_add_optional_widgets(name, object_info):
    wf: Workflow = BY_NAME[name]
    info = with_new_optional_widget(object_info, {n["type"] for n in wf.ui["nodes"]})
    assert diff_prompts(wf.api, ui_to_api(wf.ui, info)) == []


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_ui_and_api_twins_describe_the_same_graph(name, object_info):
    wf: Workflow = BY_NAME[name]
    assert wf.ui.get("version") == 0.4 and wf.ui["nodes"], "NAME.json must be a UI-format (LiteGraph 0.4) workflow"
    from_ui = ui_to_api(wf.ui, object_info)
    problems = diff_prompts(wf.api, from_ui)
    assert not problems, f"{name}.json and {name}.api.json differ:\n" + "\n".join(problems)
    # every UI link is a real connection of the API graph (no dangling links left in the UI file)
    linked = {(str(link[3]), link[4]) for link in wf.ui["links"]}
    assert len(linked) == len(wf.ui["links"])
    api_links = sum(isinstance(v, list) for node in wf.api.values() for v in node["inputs"].values())
    assert api_links == len(wf.ui["links"])


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_api_graph_matches_object_info(name, object_info):
    wf = BY_NAME[name]
    problems = check_against_object_info(wf.api, object_info)
    assert not problems, "\n".join(problems)
    problems = check_against_object_info(wf.prompt(), object_info)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", RUNNABLE)
def test_workflow_runs_in_real_comfyui(name, comfy, workflow_runs):
    """The session's one API execution of the workflow (shared with the GUI test, which re-queues it from the page):
    it succeeds, writes the outputs its metadata promises and reports per-step progress."""
    wf = BY_NAME[name]
    prompt = wf.prompt()
    sampler_ids = [nid for nid, node in prompt.items() if node["class_type"] == "SVDSuite_Sampler"]
    entry, messages = workflow_runs.run(wf)
    checked = {str(check["node"]) for check in wf.meta.get("outputs", [])}
    assert not checked & set(cached_nodes(entry)), f"{name}: its outputs came from ComfyUI's cache, not executed"
    status = entry["status"]
    assert status["status_str"] == "success", json.dumps(status, indent=1)[:4000] + "\n" + comfy.log_tail()
    problems = check_outputs(comfy, wf, entry)
    assert not problems, "\n".join(problems)
    # the sampler reported per-step progress over the websocket: 1..steps of steps
    for sid in sampler_ids:
        steps = prompt[sid]["inputs"]["steps"]
        values = [m["data"]["value"] for m in messages if m["type"] == "progress" and m["data"].get("node") == sid]
        assert values and values[-1] == steps and all(
            m["data"]["max"] == steps for m in messages if m["type"] == "progress" and m["data"].get("node") == sid
        ), (sid, values)


def test_twin_check_detects_changed_values_and_links(object_info):
    """The UI/API comparison is not vacuous: a changed widget value, control value slot or link is reported."""
    wf = BY_NAME["svd_img2vid"]
    ui = json.loads(json.dumps(wf.ui))
    sampler = next(n for n in ui["nodes"] if n["type"] == "SVDSuite_Sampler")
    sampler["widgets_values"][2] = 7  # steps
    assert diff_prompts(wf.api, ui_to_api(ui, object_info)) == [
        "node 5 SVDSuite_Sampler.steps: API 25 vs UI 7"]
    ui = json.loads(json.dumps(wf.ui))
    link = next(link for link in ui["links"] if link[3] == 6 and link[4] == 1)  # sampler -> decode.latent
    link[1] = 3
    assert diff_prompts(wf.api, ui_to_api(ui, object_info)) == [
        "node 6 SVDSuite_Decode.latent: API ['5', 0] vs UI ['3', 0]"]
    ui = json.loads(json.dumps(wf.ui))
    node = next(n for n in ui["nodes"] if n["type"] == "SVDSuite_Sampler")
    node["widgets_values"] = node["widgets_values"][:2]  # a required widget (steps) without a value
    with pytest.raises(ValueError, match="widgets_values too short at 'steps'"):
        ui_to_api(ui, object_info)
