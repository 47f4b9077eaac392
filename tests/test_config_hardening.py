"""Config files and resume state (issue 12): curation and training configs type-checked key by key (bools are bools,
lists lists, numbers in range, unknown keys with a suggestion), malformed files and corrupt / foreign resume states
refused with one message naming the file, the key or problem, and what to do."""
from __future__ import annotations

import json
import struct
import tempfile
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from svd_core.__main__ import main
from svd_core.curation.config import CurationConfig, load_config
from svd_core.curation import CurationError
from svd_core.training.config import ConfigError, RunConfig, TrainConfig
from svd_core.training.trainer import ResumeError, Trainer
from tests.test_training import fresh, manifest, micro_data, small_cfg  # noqa: F401 - fixtures


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------------ curation config


@pytest.mark.parametrize("text,match", [
    ('out_dir = "o"\nsources = "clip.mp4"\n', "sources = 'clip.mp4' is a string, expected a list of strings"),
    ('out_dir = "o"\nmotion = "no"\n', "motion = 'no' is a string, expected true or false"),
    ('out_dir = "o"\ntext = 1\n', "text = 1 is a number, expected true or false"),
    ('out_dir = "o"\nanalysis_width = 0\n', r"analysis_width = 0 is out of range, expected 16 <= analysis_width"),
    ('out_dir = "o"\nmerge_window = nan\n', "merge_window = nan is not a finite number, expected a number"),
    ('out_dir = "o"\nmoton = true\n', r"unknown keys \['moton'\] \(did you mean 'motion'\?\)"),
    ('out_dir = "o"\ncascade = "content"\n', "cascade = 'content' is a string, expected a list of tables"),
    ('out_dir = "o"\ncascade = [{detector = "content", fps = "8"}]\n',
     "cascade level 0: fps = '8' is a string, expected a number or null"),
    ('out_dir = "o"\nfilters = [{column = "motion", percent = "25"}]\n',
     "filter 0: percent = '25' is a string, expected a number or null"),
    ('out_dir = "o"\nfilters = [{percent = 25.0}]\n', "filter 0 has no `column`"),
    ('out_dir = "o"\ncaption_method = "beam"\n', "caption_method = 'beam' is unknown"),
    ('out_dir = "o"\nsources = [1, 2]\n', r"sources = \[1, 2\] is a list, expected a list of strings"),
    ('out_dir = 5\n', "out_dir = 5 is a number, expected a string"),
    ('out_dir = "o"\nmotion = tru\n', "is not valid TOML"),
    ("curation = 3\n", "must be a table of settings"),
])
def test_curation_config_type_errors_name_file_key_value(tmp_path, text, match):
    path = write(tmp_path / "curate.toml", text)
    with pytest.raises(CurationError, match=match) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_curation_config_bad_json_and_cli_one_line(tmp_path, capsys):
    bad = write(tmp_path / "curate.json", '{"out_dir": "o",, }')
    with pytest.raises(CurationError, match=r"curate.json' is not valid JSON: .*line 1 column 17"):
        load_config(bad)
    write(tmp_path / "list.json", "[1, 2]")
    with pytest.raises(CurationError, match="holds a list, expected a table/object"):
        load_config(tmp_path / "list.json")
    deep = write(tmp_path / "deep.json", "[" * 100_000 + "]" * 100_000)
    with pytest.raises(CurationError, match="nests too deeply"):
        load_config(deep)
    assert main(["curate", "run", str(write(tmp_path / "c.toml", 'out_dir = "o"\nmotion = "no"\n'))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "motion = 'no'" in err


def test_curation_config_good_file_still_loads(tmp_path):
    path = write(tmp_path / "ok.toml", 'out_dir = "o"\nsources = ["a.mp4"]\nmotion = false\nmerge_window = 1\n'
                                       'cascade = [{detector = "content", threshold = 20}]\n'
                                       'filters = [{column = "motion", percent = 25}]\n')
    cfg = load_config(path)
    assert cfg.motion is False and cfg.sources == [str(tmp_path / "a.mp4")] and cfg.out_dir == str(tmp_path / "o")
    assert cfg.merge_window == 1 and cfg.cascade[0]["threshold"] == 20


# ------------------------------------------------------------------------------------------------ training config


@pytest.mark.parametrize("body,match", [
    ({"resume": "no"}, "resume = 'no' is a string, expected true or false"),
    ({"modle": "tiny"}, r"unknown keys \['modle'\] \(did you mean 'model'\?\)"),
    ({"train": "fast"}, "train = 'fast' must be a table"),
    ({"train": {"steps": "100"}}, "steps = '100' is a string, expected an integer"),
    ({"train": {"steps": 10.5}}, "steps = 10.5 is a number, expected an integer"),
    ({"train": {"lr": True}}, "lr = True is a boolean, expected a number"),
    ({"train": {"betas": [0.9]}}, r"betas = \(0.9,\) is a list, expected a list of 2 numbers"),
    ({"train": {"p_meen": 1.0}}, r"unknown training setting 'p_meen' \(did you mean 'p_mean'\?\)"),
    ({"train": {"preset": ["img2vid"]}}, r"unknown preset \['img2vid'\]"),
    ({"train": {"preset": "img2vdi"}}, r"unknown preset 'img2vdi' \(did you mean 'img2vid'\?\)"),
    ({"train": {"gradient_checkpointing": "yes"}}, "gradient_checkpointing = 'yes' is a string"),
    ({"train": {"name": "../elsewhere"}}, "name='../elsewhere' is invalid: expected a plain file-name prefix"),
    ({"train": {"warmup_steps": -1}}, "warmup_steps=-1 is invalid"),
    ({"model": 3}, "model = 3 is a number, expected a string"),
])
def test_training_config_type_errors_name_file_key_value(tmp_path, body, match):
    path = write(tmp_path / "run.json", json.dumps({"model": "tiny", "data": "d", "out_dir": "o", **body}))
    with pytest.raises(ConfigError, match=match) as info:
        RunConfig.load(path)
    assert str(path) in str(info.value)


def test_training_config_bad_files_and_cli_one_line(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"run.toml' is not valid TOML"):
        RunConfig.load(write(tmp_path / "run.toml", 'model = "tiny"\ndata = \n'))
    with pytest.raises(ConfigError, match="holds a string"):
        RunConfig.load(write(tmp_path / "s.json", '"model"'))
    good = write(tmp_path / "ok.json", json.dumps({"model": "tiny", "data": "d", "out_dir": "o"}))
    assert main(["train", str(good), "--set", "steps=abc"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "steps = 'abc' is a string, expected an integer" in err and "--set" in err
    assert main(["train", str(good), "--set", "resume=0"]) == 2
    assert "resume = 0 is a number, expected true or false" in capsys.readouterr().err
    cfg = RunConfig.load(good, {"steps": 7, "lr": 1})  # ints are numbers; good values still load
    assert cfg.train.steps == 7 and cfg.train.lr == 1 and cfg.resume is True


# ------------------------------------------------------------------------------------------------ fuzz


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10 ** 6, 10 ** 6) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6)
# plausible values too, so that loads are checked as well as refusals
CONFIG_VALUES = st.one_of(st.booleans(), st.integers(0, 300), st.floats(0, 1),
                          st.lists(st.text(max_size=4), max_size=2),
                          st.sampled_from(["lora", "full", "fp32", "content", "greedy", "local", "lvd-f", "x"]),
                          JSON_VALUES)
CURATION_KEYS = [f.name for f in fields(CurationConfig)] + ["cascade_", "motoin"]
TRAIN_KEYS = [f.name for f in fields(TrainConfig)] + ["stpes"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(CURATION_KEYS), value=CONFIG_VALUES)
def test_fuzz_curation_config_values(key, value):
    """Any value for any key: a loaded config whose field is that value (paths made absolute), or one
    CurationError naming the file; never another exception."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.json"
        path.write_text(json.dumps({"out_dir": "o", key: value}))
        try:
            cfg = load_config(path)
        except CurationError as exc:
            assert str(path) in str(exc)
            event("refused")
            return
        event("loaded")
        got = getattr(cfg, key)
        assert type(got) is type(value) or (isinstance(value, int) and isinstance(got, (int, float)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(TRAIN_KEYS), value=CONFIG_VALUES)
def test_fuzz_training_config_values(key, value):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.json"
        path.write_text(json.dumps({"model": "tiny", "data": "d", "out_dir": "o", "train": {key: value}}))
        try:
            cfg = RunConfig.load(path)
        except ConfigError as exc:
            assert str(path) in str(exc)
            event("refused")
            return
        event("loaded")
        got = getattr(cfg.train, key)
        assert got == (tuple(value) if isinstance(value, list) else value)


# ------------------------------------------------------------------------------------------------ resume state


@pytest.fixture
def saved(micro_data, tmp_path):
    model, data = micro_data
    cfg = small_cfg(steps=2, mode="temporal")
    trainer = Trainer(fresh(model), cfg, data.dataset, data.train_idx, data.val_idx, tmp_path / "run")
    trainer.run()  # saves the state at the end
    assert trainer.state_path.is_file()

    def again():
        return Trainer(fresh(model), cfg, data.dataset, data.train_idx, data.val_idx, tmp_path / "run")

    return trainer.state_path, again


def _rewrite_metadata(path: Path, **changes) -> None:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    header["__metadata__"].update(changes)
    for k, v in list(header["__metadata__"].items()):
        if v is None:
            del header["__metadata__"][k]
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])


def test_corrupt_truncated_or_foreign_state_is_one_clear_error(saved, tmp_path):
    path, again = saved
    good = path.read_bytes()
    cases = [
        (good[: len(good) // 2], "the state file is damaged .*truncated"),
        (b"\x00" * 64, "the state file is damaged .*not a safetensors file"),
        (good[:8] + b"[" + good[9:], "the state file is damaged .*does not start with"),
    ]
    for data, match in cases:
        path.write_bytes(data)
        with pytest.raises(ResumeError, match=match) as info:
            again().resume()
        assert str(path) in str(info.value) and "--no-resume" in str(info.value) and "resume = false" in str(info.value)
    for changes, match in [({"state_version": None}, "not a training state of this suite"),
                           ({"config": "{not json"}, "metadata is incomplete or malformed"),
                           ({"losses": '[["a", 1]]'}, "metadata is incomplete or malformed"),
                           ({"step": "-3"}, "negative step")]:
        path.write_bytes(good)
        _rewrite_metadata(path, **changes)
        with pytest.raises(ResumeError, match=match):
            again().resume()
    # a foreign file: a model checkpoint where the state should be
    import svd_core
    from svd_core.testing import tiny_model
    from tests.test_training_support import micro_spec

    svd_core.save(tiny_model(micro_spec()), path)
    with pytest.raises(ResumeError, match="not a training state of this suite"):
        again().resume()
    path.write_bytes(good)
    tr = again()
    assert tr.resume() and tr.step == 2  # the intact file still resumes


def test_state_for_another_model_is_refused(saved):
    from safetensors.torch import load_file, save_file

    path, again = saved
    tensors = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    key = next(k for k in tensors if k.startswith("param.") and tensors[k].numel() > 1)
    tensors[key] = tensors[key].flatten()[:1].clone()
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(ResumeError, match=rf"{key} has shape \[1\].*saved for another model"):
        again().resume()
    del tensors[key]
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(ResumeError, match=rf"it lacks {key}"):
        again().resume()


def test_damaged_latent_cache_file_is_one_clear_error(micro_data, tmp_path):
    from svd_core.training.data import CachedDataset, DataError

    _, data = micro_data
    good = Path(data.dataset.paths[0]).read_bytes()
    bad = tmp_path / "window.safetensors"
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=rf"latent cache file {bad} is damaged or foreign .*delete it"):
        CachedDataset([bad])
    import svd_core
    from svd_core.testing import tiny_model
    from tests.test_training_support import micro_spec

    svd_core.save(tiny_model(micro_spec()), bad)  # a foreign file: no window metadata
    with pytest.raises(DataError, match="KeyError: 'window'"):
        CachedDataset([bad])
    bad.write_bytes(good)
    assert torch.equal(CachedDataset([bad])[0]["latents"], data.dataset[0]["latents"])
