"""Node inputs that become paths stay inside ComfyUI's folders (issue 12): the node kit's one helper
(`nodes/_comfy.py`: confine / node_path / path_error / plain_name / new_file) and every path-taking node's
`validate_inputs`, inside a real ComfyUI import (`--cpu`, in a subprocess so ComfyUI's globals stay out of the test
process). The same values through `/prompt` of a running server: tests/comfyui/test_comfyui_paths.py."""
import json
import textwrap

import pytest
from comfy_harness import run_in_comfyui

pytestmark = pytest.mark.slow  # one ComfyUI import in a subprocess (~30-60 s on 2 busy cores) for all the cases

SCRIPT = textwrap.dedent(r'''
    import os, sys
    outside = args[0]
    from svd_suite.nodes import _comfy
    from svd_suite.training_nodes import curation, evaluation, training
    from svd_suite.nodes import loaders, lora

    inp, out = folder_paths.get_input_directory(), folder_paths.get_output_directory()
    os.makedirs(os.path.join(inp, "clips", "sub"), exist_ok=True)
    open(os.path.join(inp, "clips", "a.mp4"), "wb").close()
    open(os.path.join(inp, "top.mp4"), "wb").close()
    os.makedirs(os.path.join(out, "made"), exist_ok=True)
    os.symlink(outside, os.path.join(inp, "out_link"))                         # a folder link leading out
    os.symlink(outside, os.path.join(out, "out_link"))                         # and one in output/
    os.symlink(os.path.join(outside, "secret.txt"), os.path.join(inp, "out_file.mp4"))  # a file link leading out
    os.symlink(os.path.join(inp, "clips"), os.path.join(inp, "in_link"))       # a link that stays inside
    ckpts = folder_paths.get_folder_paths("checkpoints")[0]
    os.makedirs(ckpts, exist_ok=True)
    open(os.path.join(ckpts, "mine.safetensors"), "wb").close()
    os.symlink(os.path.join(outside, "shared.safetensors"), os.path.join(ckpts, "shared.safetensors"))

    def outcome(fn, *args, **kw):
        try:
            return ["ok", os.path.relpath(fn(*args, **kw), base)]
        except ValueError as exc:
            return ["refused", str(exc)]

    CASES = json.loads(sys.stdin.read())
    res = {"confine": [outcome(_comfy.node_path, "N", "x", v, f, **kw) for v, f, kw in CASES["confine"]],
           "names": [outcome(lambda v, s: os.path.join(base, _comfy.plain_name("N", "x", v, s)), v, s)
                     for v, s in CASES["names"]]}
    # saving never replaces a file the user did not ask to replace
    res["new_file"] = [outcome(_comfy.new_file, "N", "filename", "checkpoints", n, mode)
                       for n, mode in (("mine.safetensors", "new name"), ("mine.safetensors", "error"),
                                       ("mine.safetensors", "overwrite"), ("fresh.safetensors", "error"),
                                       ("shared.safetensors", "overwrite"))]
    # validate_inputs of every path-taking node, legit and hostile: True or the message
    nodes = {"LoadVideos": (curation.LoadVideos, {"folder": "V"}),
             "ClipVideos": (curation.ClipVideos, {"dataset_dir": "V", "min_duration": 1.0}),
             "WriteDataset": (curation.WriteDataset, {"filename": "V"}),
             "LoadOpenClip": (curation.LoadOpenClip, {"model": "V", "weights": "V"}),
             "ClipScore": (curation.ClipScore, {"aesthetic_weights": "V"}),
             "FVDFolders_a": (evaluation.FVDFolders, {"folder_a": "V", "folder_b": "clips"}),
             "FVDFolders_b": (evaluation.FVDFolders, {"folder_a": "clips", "folder_b": "V"}),
             "EloFromVotes": (evaluation.EloFromVotes, {"votes_file": "V"}),
             "VotingStudy_models": (evaluation.VotingStudy, {"name": "s", "models": "a=clips\nb=V", "manifest": ""}),
             "VotingStudy_manifest": (evaluation.VotingStudy, {"name": "s", "models": "", "manifest": "V"}),
             "LoadVideoFrames": (evaluation.LoadVideoFrames, {"file": "V"}),
             "TrainDataset": (training.Dataset, {"source": "V", "max_windows_per_clip": 0}),
             "Train": (training.Train, {"run_name": "V", "checkpoint_every": 1, "validate_every": 0,
                                        "sample_steps": 0}),
             "SaveTrainedCheckpoint": (training.SaveCheckpoint, {"filename": "V", "if_exists": "error"}),
             "SaveTrainedLoRA": (training.SaveLoRA, {"filename": "V", "if_exists": "error"})}
    res["validate"] = {}
    for key, (cls, kw) in nodes.items():
        res["validate"][key] = {}
        for v in CASES["hostile"]:
            args = {k: x.replace("V", v) if isinstance(x, str) else x for k, x in kw.items()}
            if key == "LoadOpenClip":
                args["model"] = v + ".json"
            res["validate"][key][v] = cls.validate_inputs(**args)
    # legit values pass
    res["legit"] = [training.Dataset.validate_inputs("clips", 0), curation.LoadVideos.validate_inputs("clips"),
                    curation.ClipVideos.validate_inputs("made/ds1", 1.0),
                    evaluation.FVDFolders.validate_inputs("clips", "in_link"),
                    training.SaveLoRA.validate_inputs("cam.safetensors", "new name"),
                    training.Train.validate_inputs("run_1", 1, 0, 0),
                    evaluation.LoadVideoFrames.validate_inputs("top.mp4")]
    # a node at run time: a link leading out is refused, and so is a symlinked video inside the folder
    os.symlink(os.path.join(outside, "v.mp4"), os.path.join(inp, "clips", "sub", "leak.mp4"))
    res["run"] = [outcome(lambda: curation.LoadVideos.execute("clips")),
                  outcome(lambda: curation.LoadVideos.execute("out_link")),
                  outcome(lambda: loaders.CheckpointLoader.execute("../../etc/passwd"))]
    # a voting-study manifest whose videos lie outside input/ (existing or not: the same message)
    for name, videos in (("out.json", {"a": os.path.join(outside, "v.mp4"), "b": os.path.join(outside, "v2.mp4")}),
                         ("gone.json", {"a": os.path.join(outside, "nope.mp4"), "b": "clips/a.mp4"}),
                         ("rel.json", {"a": "../../" + os.path.basename(outside) + "/v.mp4", "b": "clips/a.mp4"})):
        with open(os.path.join(inp, name), "w") as f:
            json.dump({"items": [{"id": "1", "videos": videos}]}, f)
        res["run"].append(outcome(lambda: evaluation.VotingStudy.execute("s", "", name, 0)))
    # a model folder of a study holding a link that leads out (its video would be served, its .txt shown)
    os.makedirs(os.path.join(inp, "leaky"))
    os.symlink(os.path.join(outside, "secret.txt"), os.path.join(inp, "leaky", "a.txt"))
    open(os.path.join(inp, "leaky", "a.mp4"), "wb").close()
    res["study_link"] = outcome(lambda: evaluation.VotingStudy.execute("s3", "a=clips\nb=leaky", "", 0))
    res["eval_model"] = [outcome(evaluation._eval_path, "N", v, "i3d_name") for v in ("../../x", "/etc/passwd")]
    # validate_inputs of every training / curation / evaluation node with widgets: good values pass, one bad value
    # per case fails before anything runs, with a message naming the node and that input (BAD_VALUES below)
    groups = {"training": training, "curation": curation, "evaluation": evaluation}
    res["bad_values"] = {}
    for key, (group, node, good, bad) in CASES["bad_values"].items():
        cls = next(c for c in groups[group].NODES if c.ID == "SVDSuite_" + node)
        res["bad_values"][key] = [cls.validate_inputs(**good), cls.validate_inputs(**{**good, **bad})]
    # the one cancel rule of the kit's Progress: ComfyUI's interrupt flag
    import comfy.model_management as mm

    def ends(fn):
        try:
            fn()
        except mm.InterruptProcessingException:
            return "interrupt"
        except RuntimeError as exc:
            return f"error: {exc}"
        return "ran"

    def engine_stops(progress, message):
        def run():
            with progress.stopping():
                raise RuntimeError(message)
        return run

    import comfy.utils

    def server_hook(value, total, preview, prompt_id=None, node_id=None):  # what ComfyUI's server sets (main.py)
        mm.throw_exception_if_processing_interrupted()

    comfy.utils.set_progress_bar_global_hook(server_hook)
    cancel = {}
    unpolled = _comfy.Progress(4)
    mm.interrupt_current_processing(True)
    cancel["unpolled_progress"] = ends(lambda: unpolled(1, 4))  # an engine without a cancel hook: stopped here
    cancel["flag_after"] = mm.processing_interrupted()
    polled = _comfy.Progress(4)
    cancel["cancel_before"] = polled.cancel()
    mm.interrupt_current_processing(True)
    cancel["cancel_after"] = polled.cancel()
    cancel["polled_progress"] = ends(lambda: polled(2, 4, 0.5))  # the engine stops itself (saves its state)
    cancel["flag_kept"] = polled.cancel()  # the bar's hook raised and lowered the flag: raised again for the engine
    cancel["engine_stop"] = ends(engine_stops(polled, "cancelled at step 2"))  # its exception -> ComfyUI's interrupt
    cancel["real_error"] = ends(engine_stops(_comfy.Progress(1), "disk full"))  # no Cancel: the error stays
    mm.interrupt_current_processing(True)
    cancel["start"] = ends(lambda: _comfy.Progress(1))  # Cancel before the node ran
    comfy.utils.set_progress_bar_global_hook(None)
    res["cancel"] = cancel
    # property (hypothesis, bounded): any value built from path pieces is refused or lands inside its folder
    from hypothesis import given, settings, strategies as st
    pieces = st.sampled_from(["..", ".", "a", "clips", "out_link", "in_link", "/", "\\", "C:", "\x00", " ", "~",
                              "%2e%2e", "\u2025", "a.mp4", "//server/"])
    counts = {"ok": 0, "refused": 0, "escaped": []}

    @settings(max_examples=400, deadline=None, database=None, derandomize=True)
    @given(st.lists(pieces, max_size=8).map("".join), st.sampled_from(["input", "output", "temp"]))
    def prop(value, folder):
        root = os.path.realpath(_comfy.folder_roots(folder)[0])
        try:
            path = _comfy.node_path("N", "x", value, folder, allow_root=True)
        except _comfy.NodeInputError as exc:
            assert str(exc).startswith("N: input 'x': ")
            counts["refused"] += 1
            return
        counts["ok"] += 1
        if os.path.commonpath([root, os.path.realpath(path)]) != root:
            counts["escaped"].append([value, folder])

    prop()
    res["property"] = counts
    print("RESULT " + json.dumps(res))
''')

HOSTILE = ["../../etc", "/etc/passwd", "/tmp/x", "..\\..\\x", "clips/../../x", "C:\\Windows\\x", "a\x00b", "",
           "out_link/x"]
# (value, folder(s), options) -> "ok" (and where) or the reason it is refused
CONFINE = [
    ("clips/a.mp4", "input", {"kind": "file"}, ["ok", "input/clips/a.mp4"]),
    ("clips\\a.mp4", "input", {"kind": "file"}, ["ok", "input/clips/a.mp4"]),  # Windows separators
    ("./clips//sub/", "input", {"kind": "dir"}, ["ok", "input/clips/sub"]),
    ("in_link/a.mp4", "input", {"kind": "file"}, ["ok", "input/clips/a.mp4"]),  # a link that stays inside
    (".", "input", {"kind": "dir", "allow_root": True}, ["ok", "input"]),
    ("made/new_ds", "output", {}, ["ok", "output/made/new_ds"]),  # an output not written yet
    ("made", ("input", "output"), {}, ["ok", "output/made"]),  # looked up in input/, then output/
    ("shared.safetensors", "checkpoints", {"kind": "file", "links_out": True}, ["ok", None]),  # linked model file
    ("../../etc", "input", {}, "goes up with '..'"),
    ("clips/../a", "input", {}, "goes up with '..'"),
    ("..\\..\\x", "output", {}, "goes up with '..'"),
    ("/etc/passwd", "input", {}, "is an absolute path"),
    ("/tmp/x", "output", {}, "is an absolute path"),
    ("\\\\server\\share\\x", "input", {}, "is an absolute path"),
    ("C:\\Windows\\x", "input", {}, "is an absolute path"),
    ("C:x", "input", {}, "is an absolute path"),
    ("a\x00b", "input", {}, "contains a NUL byte"),
    ("x" * 300, "output", {}, "is too long"),
    ("a/" * 600, "output", {}, "is too long"),
    ("", "input", {}, "is empty"),
    ("   ", "output", {}, "is empty"),
    (".", "output", {}, "names the folder itself"),
    ("out_link", "input", {}, "leads outside the folder through a symbolic link"),
    ("out_link/secret.txt", "input", {"kind": "file"}, "leads outside the folder through a symbolic link"),
    ("out_file.mp4", "input", {"kind": "file"}, "leads outside the folder through a symbolic link"),
    ("out_link/new", "output", {}, "leads outside the folder through a symbolic link"),  # a write through it
    ("shared.safetensors", "checkpoints", {"kind": "file"}, "leads outside the folder through a symbolic link"),
    ("nope.mp4", "input", {"kind": "file"}, "is not an existing file"),
    ("clips/a.mp4", "input", {"kind": "dir"}, "is not an existing folder"),
]
NAMES = [("run_1", "", True), ("cam.safetensors", ".safetensors", True), ("a/b", "", False), ("a\\b", "", False),
         ("..", "", False), (".hidden", "", False), ("x\x00y", "", False), ("", "", False), ("C:x", "", False),
         ("x.ckpt", ".safetensors", False), (".safetensors", ".safetensors", False),
         ("n" * 256, "", False)]


_SETTINGS = dict(preset="img2vid", mode="preset", steps=10, learning_rate=0.0, batch_size=1, grad_accum=1, num_frames=0,
                 width=0, height=0, lora_rank=16, ema_decay=0.9999, precision="fp32", overrides='{"p_mean": 1.0}')
_CUTS = dict(hard_threshold=27.0, mid_fps=8.0, mid_threshold=2.5, slow_fps=2.0, slow_threshold=1.5, fade_threshold=12.0)
_FILTER = dict(preset="custom", column="motion", percent=25.0, drop="bottom", min_value=-1e9, max_value=1e9)
_UCF = dict(real_folder="clips", run_name="ucf", i3d_name="i3d.pt", num_samples=10, samples_per_class=0, cfg=7.0,
            num_frames=16, fps=25, width=576, height=320, steps=0, seed=0)
_METRICS = dict(lpips_weights="none", lpips_net="alex", clip_weights="none", clip_model="ViT-H-14")
# case -> (node group, node id without prefix, good widget values, the bad change, the input the message names,
#          a word of the reason)
BAD_VALUES = {
    "settings_json": ("training", "TrainSettings", _SETTINGS, {"overrides": '{"p_mean": '}, "overrides", "JSON"),
    "settings_list": ("training", "TrainSettings", _SETTINGS, {"overrides": "[1]"}, "overrides", "JSON object"),
    "settings_mode": ("training", "TrainSettings", _SETTINGS, {"mode": "everything"}, "mode", "not one of"),
    "settings_steps": ("training", "TrainSettings", _SETTINGS, {"steps": 0}, "steps", "below the minimum"),
    "settings_ema": ("training", "TrainSettings", _SETTINGS, {"ema_decay": float("nan")}, "ema_decay", "finite"),
    "train_model": ("training", "TrainModel", {"target": "as loaded"}, {"target": "sideways"}, "target",
                    "not one of"),
    "train_run": ("training", "Train", {"run_name": "r", "checkpoint_every": 1, "validate_every": 0,
                                        "sample_steps": 0}, {"checkpoint_every": 0}, "checkpoint_every", "minimum"),
    "val_sampler": ("training", "TrainValidationSampler", {"steps": 2, "videos": 1, "cfg": 1.0, "seed": 0},
                    {"videos": 65}, "videos", "above the maximum"),
    "stage1": ("training", "Stage1FromSD2", {"ckpt_name": "sd21.safetensors", "filename": "v.safetensors",
                                             "prediction": "auto"}, {"prediction": "x0"}, "prediction", "not one of"),
    "cuts": ("curation", "CurationDetectCuts", _CUTS, {"mid_threshold": 0.5}, "mid_threshold", "minimum"),
    "text": ("curation", "CurationTextScore", {"canvas_size": 1280}, {"canvas_size": 8}, "canvas_size", "minimum"),
    "caption": ("curation", "CurationCaption", {"max_tokens": 30}, {"max_tokens": 77}, "max_tokens", "maximum"),
    "filter_column": ("curation", "CurationFilter", _FILTER, {"column": " "}, "column", "empty"),
    "filter_bounds": ("curation", "CurationFilter", _FILTER, {"min_value": 2.0, "max_value": 1.0}, "min_value",
                      "above"),
    "filter_drop": ("curation", "CurationFilter", _FILTER, {"drop": "middle"}, "drop", "not one of"),
    "fvd_folders": ("evaluation", "FVDFolders", {"folder_a": "clips", "folder_b": "clips", "i3d_name": "i3d.pt",
                                                 "protocol": "ucf101", "num_frames": 16, "batch_size": 8},
                    {"i3d_name": "../i3d.pt"}, "i3d_name", "'..'"),
    "fvd_images": ("evaluation", "FVDImages", {"frames_per_video": 14, "i3d_name": "i3d.pt", "protocol": "none",
                                               "num_frames": 0}, {"protocol": "kinetics"}, "protocol", "not one of"),
    "ucf101_size": ("evaluation", "UCF101FVD", _UCF, {"width": 600}, "width", "multiple of 64"),
    "ucf101_cfg": ("evaluation", "UCF101FVD", _UCF, {"cfg": 0.0}, "cfg", "minimum"),
    "metrics_net": ("evaluation", "VideoMetrics", _METRICS, {"lpips_net": "resnet"}, "lpips_net", "not one of"),
    "metrics_clip": ("evaluation", "VideoMetrics", {**_METRICS, "clip_weights": "clip.bin"}, {"clip_model": ""},
                     "clip_model", "empty"),
    "elo": ("evaluation", "EloFromVotes", {"votes_file": "votes.csv", "orderings": 10, "ci": 0.95, "ordering_seed": 0},
            {"ci": 1.5}, "ci", "maximum"),
    "grid": ("evaluation", "ComparisonGrid", {"labels": "a,b", "num_frames": 4, "cell_height": 0,
                                              "layout": "models_as_rows"}, {"layout": "diagonal"}, "layout",
             "not one of"),
    "grid_labels": ("evaluation", "ComparisonGrid", {"labels": "a,b", "num_frames": 4, "cell_height": 0,
                                                     "layout": "models_as_rows"}, {"labels": "a,b,c,d,e"}, "labels",
                    "at most 4"),
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("paths")
    outside = tmp / "outside"
    outside.mkdir()
    for name in ("secret.txt", "v.mp4", "v2.mp4", "shared.safetensors"):
        (outside / name).write_bytes(b"TOP-SECRET-CONTENT")
    cases = {"confine": [[v, f, kw] for v, f, kw, _ in CONFINE], "names": [[v, s] for v, s, _ in NAMES],
             "hostile": HOSTILE, "bad_values": {k: v[:4] for k, v in BAD_VALUES.items()}}
    result = run_in_comfyui(SCRIPT, tmp, str(outside), stdin=json.dumps(cases), timeout=300)
    before = sorted(p.name for p in outside.iterdir())
    assert before == ["secret.txt", "shared.safetensors", "v.mp4", "v2.mp4"]  # nothing written outside
    return result


@pytest.mark.parametrize("i", range(len(CONFINE)), ids=[repr(c[0])[:40] + "-" + str(c[1]) for c in CONFINE])
def test_confine(run, i):
    value, folder, kw, expected = CONFINE[i]
    got = run["confine"][i]
    if isinstance(expected, list):
        assert got[0] == "ok", got
        if expected[1] is not None:
            assert got[1] == expected[1]
        else:
            assert got[1].startswith("models/checkpoints/")
    else:
        assert got[0] == "refused", got
        msg = got[1]
        assert msg.startswith("N: input 'x': ") and expected in msg, msg
        assert "TOP-SECRET" not in msg


def test_plain_names(run):
    for (value, suffix, ok), got in zip(NAMES, run["names"]):
        assert (got[0] == "ok") == ok, (value, got)
        if not ok:
            assert "N: input 'x'" in got[1] and "must be a plain name" in got[1]


def test_new_file_never_replaces_unasked(run):
    numbered, error, overwrite, fresh, link = run["new_file"]
    assert numbered == ["ok", "models/checkpoints/mine_00001.safetensors"]
    assert error[0] == "refused" and "'mine.safetensors' already exists in models/checkpoints" in error[1]
    assert overwrite == ["ok", "models/checkpoints/mine.safetensors"]  # asked for
    assert fresh == ["ok", "models/checkpoints/fresh.safetensors"]
    assert link[0] == "refused"  # "overwrite" never writes through a link that leads elsewhere


def test_every_path_node_validates_hostile_values(run):
    for key, by_value in run["validate"].items():
        node = "SVDSuite_" + {"WriteDataset": "CurationWriteDataset", "LoadVideos": "CurationLoadVideos",
                              "ClipVideos": "CurationClip", "LoadOpenClip": "CurationLoadOpenCLIP",
                              "ClipScore": "CurationCLIPScore", "TrainDataset": "TrainDataset"}.get(
            key, key.split("_")[0])
        for value, result in by_value.items():
            if key == "ClipScore" and value == "":
                assert result is True  # '' means none, like the combo's 'none'
                continue
            assert isinstance(result, str), (key, value, result)
            assert result.startswith(node + ": input '"), (key, result)
        assert all("TOP-SECRET" not in str(r) for r in by_value.values())


def test_legit_values_pass_validation(run):
    assert run["legit"] == [True] * len(run["legit"])


def test_nodes_refuse_at_run_time(run):
    linked_video, out_link, ckpt, *studies = run["run"]
    assert linked_video[0] == "refused" and "SVDSuite_CurationLoadVideos: input 'folder'" in linked_video[1]
    assert "outside ComfyUI's input folder" in linked_video[1]
    assert out_link[0] == "refused" and "symbolic link" in out_link[1]
    assert ckpt[0] == "refused" and "SVDSuite_CheckpointLoader: input 'ckpt_name'" in ckpt[1]
    for got in studies:  # missing or outside: one message, never which
        assert got[0] == "refused", got
        assert "SVDSuite_VotingStudy: input 'manifest': lists a video or image that is missing or outside" in got[1]
    assert len({s[1] for s in studies}) == 1


def test_study_folder_link_and_eval_model_names(run):
    got = run["study_link"]
    assert got[0] == "refused" and "SVDSuite_VotingStudy: input 'models': 'a.txt' in a model folder links" in got[1]
    assert "TOP-SECRET" not in got[1]
    for got, reason in zip(run["eval_model"], ("goes up with '..'", "is an absolute path")):
        assert got[0] == "refused" and "N: input 'i3d_name'" in got[1] and reason in got[1], got
        assert "models/svd_eval" in got[1] and "found:" in got[1]


def test_property_no_value_escapes(run):
    """Hypothesis (400 examples, derandomized): every value built from path pieces ('..', '/', '\\', 'C:', NUL,
    links in and out, ...) is refused naming node and input, or resolves inside its folder."""
    counts = run["property"]
    print("property:", counts)
    assert counts["escaped"] == []
    assert counts["ok"] > 20 and counts["refused"] > 100, counts


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_validate_inputs_names_the_input_of_a_bad_value(run, case):
    """Every training / curation / evaluation node with widgets checks them in `validate_inputs` (no node runs):
    good values pass, a bad one is refused naming the node and the input."""
    _, node, _, _, name, reason = BAD_VALUES[case]
    good, bad = run["bad_values"][case]
    assert good is True, good
    assert isinstance(bad, str) and bad.startswith(f"SVDSuite_{node}: input '{name}'") and reason in bad, bad


def test_progress_has_one_cancel_rule_comfyuis_interrupt(run):
    """One adapter for every node: a polled `cancel()` lets the engine stop cleanly (the trainer saves its state) even
    though ComfyUI's progress hook raises on Cancel, an engine without the hook is stopped by the progress callback,
    and `stopping()` turns what the engine raises after Cancel into ComfyUI's interrupt; without Cancel an error stays
    an error."""
    assert run["cancel"] == {"unpolled_progress": "interrupt", "flag_after": False, "cancel_before": False,
                             "cancel_after": True, "polled_progress": "ran", "flag_kept": True,
                             "engine_stop": "interrupt", "real_error": "error: disk full", "start": "interrupt"}
