"""The UI -> API conversion of the test harness stays meaningful on newer ComfyUI releases (no server needed)."""
from __future__ import annotations

import copy

import pytest

from comfy_harness import diff_prompts, ui_to_api

INFO = {
    "LoadImage": {"input": {"required": {"image": [["a.png", "b.png"], {"image_upload": True}]}},
                  "input_order": {"required": ["image"]}},
    "CreateVideo": {"input": {"required": {"images": ["IMAGE", {}], "fps": ["FLOAT", {"default": 30.0}]},
                              "optional": {"audio": ["AUDIO", {}]}},
                    "input_order": {"required": ["images", "fps"], "optional": ["audio"]}},
}
UI = {"version": 0.4, "links": [[1, 1, 0, 2, 0, "IMAGE"]], "nodes": [
    {"id": 1, "type": "LoadImage", "inputs": [], "widgets_values": ["a.png", "image"],
     "properties": {"models": [{"name": "x.safetensors", "url": "https://example.invalid/x", "directory": "vae"}]}},
    {"id": 2, "type": "CreateVideo", "inputs": [{"name": "images", "link": 1}, {"name": "audio", "link": None}],
     "widgets_values": [16.0]},
]}
API = {"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
       "2": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": 16.0}}}


def newer(info: dict) -> dict:
    """object_info as a newer release declares it: CreateVideo gained an optional widget after the known ones."""
    info = copy.deepcopy(info)
    info["CreateVideo"]["input"]["optional"]["bit_depth"] = [["8", "10"], {"default": "8"}]
    info["CreateVideo"]["input_order"]["optional"].append("bit_depth")
    return info


def test_plain_conversion_and_missing_model_flags_are_ignored():
    assert diff_prompts(API, ui_to_api(UI, INFO)) == []


def test_optional_widget_added_by_a_newer_release_is_left_to_its_default():
    assert diff_prompts(API, ui_to_api(UI, newer(INFO))) == []


def test_a_missing_required_widget_is_still_an_error():
    info = newer(INFO)
    info["CreateVideo"]["input"]["required"]["codec"] = [["auto", "h264"], {}]
    info["CreateVideo"]["input_order"]["required"].append("codec")
    with pytest.raises(ValueError, match="too short at 'codec'"):
        ui_to_api(UI, info)
