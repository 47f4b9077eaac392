"""Every node input that becomes a path, given hostile values through `/prompt` of a real ComfyUI 0.3.75 (issue 12):
the prompt is refused (HTTP 400, node_errors naming the node and the input, or an execution error naming both) and
nothing is written outside the server's base directory. The helper itself: tests/test_node_paths.py."""
from __future__ import annotations

import json
import os
import uuid

import pytest

from comfy_harness import api_path

# (merged node id, input) of every path-taking input in the graph below
PATH_INPUTS = [
    ("c1", "folder"), ("c3", "dataset_dir"), ("c8", "filename"),            # curation: videos, dataset, manifest
    ("o1", "weights"), ("o2", "aesthetic_weights"),                        # curation model files
    ("e1", "file"), ("e6", "folder_a"), ("e7", "votes_file"),              # evaluation
    ("v1", "models"), ("v2", "manifest"),                                  # voting study folders / manifest
    ("l3", "source"), ("l5", "run_name"), ("l6", "filename"), ("f6", "filename"),  # training data, run, saves
    ("d1", "folder"), ("r3", "lora_name"), ("r1", "ckpt_name"),            # generation loaders
]


def _merged(value: str) -> dict:
    """The shipped curation, evaluation, training and LoRA workflows in one graph, plus the voting study, diffusers
    loader and open_clip nodes, with `value` in every path-taking input."""
    prompt = {}
    for prefix, name in (("c", "curation_filter"), ("e", "eval_compare"), ("l", "train_camera_lora"),
                         ("f", "train_full_finetune"), ("r", "svd_lora")):
        api = json.loads(api_path(name).read_text())
        for node_id, node in api.items():
            if prefix == "f" and int(node_id) > 6:
                continue  # its loss curve and samples would be a valid output (ComfyUI runs the valid part)
            inputs = {k: [prefix + v[0], v[1]] if isinstance(v, list) else v for k, v in node["inputs"].items()}
            prompt[prefix + node_id] = {"class_type": node["class_type"], "inputs": inputs}
    prompt.update({
        "v1": {"class_type": "SVDSuite_VotingStudy", "inputs": {
            "name": "h12", "models": f"a={value}\nb=eval_set_a", "manifest": "", "attention_checks": 0}},
        "v2": {"class_type": "SVDSuite_VotingStudy", "inputs": {
            "name": "h12", "models": "", "manifest": value, "attention_checks": 0}},
        "d1": {"class_type": "SVDSuite_DiffusersLoader", "inputs": {"folder": value, "dtype": "auto"}},
        "d2": {"class_type": "PreviewAny", "inputs": {"source": ["d1", 0]}},
        "o1": {"class_type": "SVDSuite_CurationLoadOpenCLIP", "inputs": {"model": "ViT-B-32", "weights": value}},
        "o2": {"class_type": "SVDSuite_CurationCLIPScore", "inputs": {
            "clips": ["c3", 0], "open_clip": ["o1", 0], "aesthetic_weights": value}},
        "o3": {"class_type": "SVDSuite_CurationDatasetStats", "inputs": {"clips": ["o2", 0]}},
        "o4": {"class_type": "PreviewAny", "inputs": {"source": ["o3", 0]}},
        "p1": {"class_type": "PreviewAny", "inputs": {"source": ["e1", 1]}},
        "p2": {"class_type": "PreviewAny", "inputs": {"source": ["l3", 0]}},
    })
    for node_id, name in PATH_INPUTS:
        prompt[node_id]["inputs"][name] = value
    prompt["v1"]["inputs"]["models"] = f"a={value}\nb=eval_set_a"
    return prompt


def _tree(root) -> set[str]:
    return {os.path.join(d, f) for d, dirs, files in os.walk(root) for f in files + dirs}


@pytest.fixture()
def outside(comfy, tmp_path_factory):
    """A folder outside the server's base directory (and what lies next to the base dir, to see nothing appears)."""
    return tmp_path_factory.mktemp("h12-outside")


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "tmp", "link"])
def test_hostile_paths_are_refused_by_validation(comfy, outside, kind):
    before_parent = set(os.listdir(comfy.base.parent))
    before_outside = _tree(outside)
    marker = f"svd_h12_{uuid.uuid4().hex[:8]}"
    if kind == "link":  # a link inside input/ that leads out
        link = comfy.input_dir / marker
        os.symlink(outside, link)
        value = marker
    else:
        value = {"dotdot": f"../../{marker}", "absolute": "/etc/passwd", "tmp": f"/tmp/{marker}"}[kind]
    r = comfy.post_prompt(_merged(value))
    assert r.status_code == 400, r.text[:2000]
    errors = r.json()["node_errors"]
    for node_id, name in PATH_INPUTS:
        if kind == "link" and node_id in ("c3", "l5"):
            continue  # a new dataset folder in output/, a run name: legit names there (the link is in input/)
        assert node_id in errors, (node_id, name, sorted(errors))
        text = json.dumps(errors[node_id]["errors"])
        assert f"input '{name}'" in text, (node_id, text)
        assert errors[node_id]["class_type"].startswith("SVDSuite_")
    if kind == "link":
        assert "symbolic link" in json.dumps(errors["c1"]["errors"])
        os.unlink(link)
    assert "root:" not in r.text  # never a file's contents (/etc/passwd)
    assert set(os.listdir(comfy.base.parent)) == before_parent  # nothing written next to the base dir
    assert _tree(outside) == before_outside
    assert not os.path.exists(f"/tmp/{marker}")


def test_study_manifest_with_media_outside_input_fails_naming_node_and_input(comfy, outside):
    (outside / "a.mp4").write_bytes(b"x")
    (outside / "b.mp4").write_bytes(b"x")
    name = f"h12_{uuid.uuid4().hex[:8]}.json"
    (comfy.input_dir / name).write_text(json.dumps(
        {"items": [{"id": "1", "videos": {"a": str(outside / "a.mp4"), "b": str(outside / "b.mp4")}}]}))
    prompt = {"1": {"class_type": "SVDSuite_VotingStudy", "inputs": {
        "name": "h12_outside", "models": "", "manifest": name, "attention_checks": 0}}}
    errors = comfy.run_failing(prompt, 60)
    assert errors and errors[0]["node_type"] == "SVDSuite_VotingStudy"
    assert "SVDSuite_VotingStudy: input 'manifest': lists a video or image that is missing or outside" in \
        errors[0]["exception_message"]
