"""Hardened checkpoint loader (issue 12): safetensors headers validated as the `safetensors` library does, spec
metadata type- and range-checked and sized against the file before anything is built; one CheckpointError naming
the file, before anything is built, never another exception."""
from __future__ import annotations

import json
import struct
from contextlib import contextmanager
from dataclasses import fields, replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import svd_core
from svd_core.__main__ import main
from svd_core.loading import (MAX_HEADER_BYTES, SPEC_METADATA_KEY, CheckpointError, SafetensorsFile, json_depth,
                              min_tensors, optional_keys)
from svd_core.variants import SPEC_LIMITS, TINY, VARIANTS, CLIPSpec, ModelSpec, UNetSpec, VAESpec

# the project's shared/reference beside the checkout (tests/../../shared), or beside a worktree's parent
REFERENCE = next((p / "shared" / "reference" for p in Path(__file__).resolve().parents[2:4]
                  if (p / "shared" / "reference").is_dir()), None)

# The smallest spec with every structural feature: one UNet level, one res block, one ViT layer (builds in ~0.1 s).
MICRO = replace(TINY, name="micro", unet=replace(TINY.unet, channel_mult=(1,), num_res_blocks=1,
                                                 attention_resolutions=(1,)),
                vae=replace(TINY.vae, ch_mult=(1,), num_res_blocks=1), clip=replace(TINY.clip, layers=1))


def write_raw(path: Path, header: "dict | bytes", data: bytes = b"", length: int | None = None) -> Path:
    """A safetensors file from a header (dict or raw bytes) and a byte buffer, header length as given or true."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def split(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """Three tensors of three dtypes, written by the safetensors library."""
    path = tmp_path_factory.mktemp("st") / "small.safetensors"
    save_file({"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.arange(4, dtype=torch.int64),
               "c": torch.ones(5, dtype=torch.bfloat16)}, str(path), metadata={"k": "v"})
    return path


@pytest.fixture(scope="module")
def micro_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("micro") / "micro.safetensors"
    model = svd_core.build(MICRO)
    svd_core.save(model, path)
    return path


@contextmanager
def modules_built():
    """The names of the torch modules constructed inside the block (a refusal that comes before any build is
    cheap whatever the spec asks for; a timing bound would be flaky on a busy machine)."""
    built = []
    init = torch.nn.Module.__init__

    def counting_init(self, *args, **kwargs):
        built.append(type(self).__name__)
        init(self, *args, **kwargs)

    torch.nn.Module.__init__ = counting_init
    try:
        yield built
    finally:
        torch.nn.Module.__init__ = init


def refused(path: Path, match: str, on_meta_build: bool = False) -> str:
    """The file is refused with one CheckpointError naming it, before any module is built (a huge spec would
    otherwise build for minutes); `on_meta_build`: refused by the capped build on the meta device instead."""
    with modules_built() as built, pytest.raises(CheckpointError, match=match) as info:
        svd_core.load(path, device="meta")
    assert bool(built) == on_meta_build, f"{len(built)} modules built before the refusal, first {built[:3]}"
    assert str(path.name) in str(info.value)
    return str(info.value)


# ---------------------------------------------------------------------------------------------- header defects


def test_valid_file_reads_like_the_safetensors_library(small):
    from safetensors import safe_open

    reader = SafetensorsFile(small)
    with safe_open(str(small), "pt") as f:
        assert reader.metadata == f.metadata() == {"k": "v"}
        for key in f.keys():
            assert torch.equal(reader.tensor(key), f.get_tensor(key))


def test_overlapping_offsets_refused(tmp_path, small):
    header, data = split(small)
    begin = header["b"]["data_offsets"][0]  # 'a' (24 bytes) moved into the middle of 'b' (32 bytes)
    header["a"]["data_offsets"] = [begin + 8, begin + 32]
    msg = refused(write_raw(tmp_path / "overlap.safetensors", header, data), "overlaps tensor")
    assert "share storage" in msg


def test_duplicate_offsets_refused(tmp_path):
    # two tensors on the same bytes: each looks consistent, together they would alias one storage
    header = {"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
              "y": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    refused(write_raw(tmp_path / "dup.safetensors", header, bytes(8)), r"'y' at bytes \[0, 8\) overlaps tensor 'x'")


def test_negative_offsets_refused(tmp_path):
    # a negative begin would read the weights from the header itself
    header = {"x": {"dtype": "U8", "shape": [16], "data_offsets": [-16, 0]}}
    refused(write_raw(tmp_path / "neg.safetensors", header, bytes(0)), r"data_offsets \[-16, 0\], expected")


def test_gap_and_trailing_bytes_refused(tmp_path):
    header = {"x": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]}}
    refused(write_raw(tmp_path / "gap.safetensors", header, bytes(8)), "starts at byte 4 but the previous tensor "
                                                                       "ends at 0")
    header = {"x": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}
    refused(write_raw(tmp_path / "tail.safetensors", header, bytes(8)), "4 bytes after the last tensor")


def test_duplicate_keys_refused(tmp_path):
    raw = (b'{"x": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}, '
           b'"x": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]}}')
    refused(write_raw(tmp_path / "dupkey.safetensors", raw, bytes(8)), "key 'x' appears twice")


@pytest.mark.parametrize("header,match", [
    ([1, 2, 3], "does not start with"),
    ({"x": [1, 2]}, "tensor 'x' is a list, expected an object"),
    ({"x": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, r"dtype \['F32'\], expected one of"),
    ({"x": {"dtype": "F32", "data_offsets": [0, 4]}}, "tensor 'x' has no shape"),
    ({"x": {"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]}}, r"shape \[1.0\], expected a list"),
    ({"x": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, r"shape \[True\], expected a list"),
    ({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}}, r"data_offsets \[0, 4, 8\]"),
    ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, "needs 8 bytes but its data_offsets"),
    ({"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, "needs 4 bytes but its data_offsets"),
    ({"x": {"dtype": "F32", "shape": [2 ** 40, 2 ** 40], "data_offsets": [0, 4]}}, "too many elements"),
    ({"__metadata__": {"k": 1}, "x": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}, "__metadata__ must"),
    ({"__metadata__": [], "x": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}, "__metadata__ must"),
    ({"x": {"dtype": "U16", "shape": [2], "data_offsets": [0, 4]}}, "unsupported dtype 'U16'"),
])
def test_malformed_headers_give_one_clean_error(tmp_path, header, match):
    refused(write_raw(tmp_path / "bad.safetensors", json.dumps(header).encode(), bytes(4)), match)


def test_deep_nesting_refused_without_recursion(tmp_path):
    for depth in (9, 100_000):
        raw = b'{"x": ' + b"[" * depth + b"]" * depth + b"}"
        msg = refused(write_raw(tmp_path / f"deep{depth}.safetensors", raw), f"nested {depth + 1} levels deep")
        assert "RecursionError" not in msg
    # brackets inside strings do not count; closing brackets between siblings do
    assert json_depth(b'{"a": "[[[[[[[[[[", "b": [[1], [2], [[3]]]}') == 4


def test_header_length_capped_before_reading(tmp_path):
    big = tmp_path / "huge_header.safetensors"
    with open(big, "wb") as f:  # a sparse file bigger than the cap: nothing of the header may be read
        f.write(struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{")
        f.truncate(MAX_HEADER_BYTES + 100)
    refused(big, f"exceeds the {MAX_HEADER_BYTES} byte limit")
    refused(write_raw(tmp_path / "long.safetensors", b"{}", length=1000), "does not fit a file of")
    refused(write_raw(tmp_path / "not_utf8.safetensors", b'{"\xff": 1}'), "not UTF-8")


def test_truncated_file_still_names_the_last_tensor(tmp_path, small):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(small.read_bytes()[:-3])
    refused(cut, r"truncated: tensor 'c' ends at byte \d+ but the file has \d+ bytes")


# ---------------------------------------------------------------------------------------------- spec metadata


def with_spec(src: Path, dst: Path, spec_text: str) -> Path:
    header, data = split(src)
    header["__metadata__"][SPEC_METADATA_KEY] = spec_text
    return write_raw(dst, header, data)


def spec_dict(spec: ModelSpec = MICRO) -> dict:
    return json.loads(spec.to_json())


def test_absurd_clip_layers_refused_fast(tmp_path, micro_ckpt):
    d = spec_dict()
    d["clip"]["layers"] = 10 ** 7
    msg = refused(with_spec(micro_ckpt, tmp_path / "layers.safetensors", json.dumps(d)),
                  r"clip.layers=10000000: expected an integer in \[1, 128\]")
    assert SPEC_METADATA_KEY in msg


def test_spec_bigger_than_the_file_refused_before_building(tmp_path, micro_ckpt):
    d = spec_dict()
    d["clip"]["layers"] = 128  # in range, but the file holds one layer's tensors
    d["unet"]["num_res_blocks"] = 8
    msg = refused(with_spec(micro_ckpt, tmp_path / "big.safetensors", json.dumps(d)), "needs at least")
    assert "clip.layers=128" in msg and "unet.num_res_blocks=8" in msg


@pytest.mark.parametrize("path,value,match", [
    (("unet", "channel_mult"), "1244", r"unet.channel_mult='1244': expected a list of 1-8 integers"),
    (("vae", "first_stage_quant"), "no", "vae.first_stage_quant='no': expected true or false"),
    (("guider",), "cosine", "guider='cosine': expected one of linear"),
    (("vector_inputs",), [["fps_id", -1]], "vector_inputs=.*expected a list of 1-16"),
    (("clip", "mlp_ratio"), 1e9, r"clip.mlp_ratio=1000000000.0: expected a number in \[0.1, 16\]"),
    (("clip",), [1], "clip must be a JSON object, not list"),
])
def test_spec_field_types_and_ranges(tmp_path, micro_ckpt, path, value, match):
    d = spec_dict()
    target = d
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    refused(with_spec(micro_ckpt, tmp_path / "field.safetensors", json.dumps(d)), match)


def test_unknown_spec_field_named_with_suggestion(tmp_path, micro_ckpt):
    d = spec_dict()
    d["clip"]["layres"] = 2
    refused(with_spec(micro_ckpt, tmp_path / "typo.safetensors", json.dumps(d)),
            r"unknown field clip.layres .*did you mean 'layers'")


def test_spec_that_cannot_be_built_is_a_checkpoint_error(tmp_path, micro_ckpt):
    d = spec_dict()
    d["unet"]["num_head_channels"] = 7  # 32 channels do not split into heads of 7
    refused(with_spec(micro_ckpt, tmp_path / "heads.safetensors", json.dumps(d)), "cannot be built: channels 32",
            on_meta_build=True)
    for text in ("[1, 2]", "not json", '{"name": NaN}', "[" * 50 + "]" * 50):
        refused(with_spec(micro_ckpt, tmp_path / "text.safetensors", text), "unreadable model spec")


def test_every_spec_field_has_limits_and_every_variant_passes_them():
    paths = {f.name for f in fields(ModelSpec) if f.name not in ("unet", "vae", "clip")}
    paths |= {f"{p}.{f.name}" for p, cls in (("unet", UNetSpec), ("vae", VAESpec), ("clip", CLIPSpec))
              for f in fields(cls)}
    assert paths == set(SPEC_LIMITS)
    from svd_core.testing import TINY_VARIANTS
    from tests.test_training_support import micro_spec

    for spec in [*VARIANTS.values(), *TINY_VARIANTS.values(), micro_spec(), MICRO]:
        assert ModelSpec.from_json(spec.to_json()) == spec


def test_min_tensors_is_a_lower_bound_of_the_released_layouts():
    """The closed-form bound never refuses a real file: checked against the released key lists (no build)."""
    if REFERENCE is None:
        pytest.skip("shared/reference (released key layouts) is not beside this checkout")
    files = {"svd_xt": "svd_xt", "svd_image_decoder": "svd_image_decoder", "sv3d_u": "sv3d_u", "sv3d_p": "sv3d_p"}
    for name, layout in files.items():
        keys = json.loads((REFERENCE / f"{layout}.keys.json").read_text())["keys"]
        spec = VARIANTS[name]
        required = [k for k in keys if not k.startswith(optional_keys(spec))]
        assert min_tensors(spec) <= len(required) < 2 * min_tensors(spec), name


def test_micro_round_trip_and_cli_info(micro_ckpt, tmp_path, capsys):
    model = svd_core.load(micro_ckpt, device="meta")
    assert model.spec == MICRO
    d = spec_dict()
    d["clip"]["layers"] = 10 ** 7
    bad = with_spec(micro_ckpt, tmp_path / "cli.safetensors", json.dumps(d))
    with pytest.raises(SystemExit) as info:
        main(["info", str(bad)])
    message = str(info.value.code)
    assert message.startswith("error: ") and "\n" not in message and "clip.layers=10000000" in message
    with pytest.raises(SystemExit) as info:
        main(["info", str(write_raw(tmp_path / "list.safetensors", b"[1]", bytes(4)))])
    assert "\n" not in str(info.value.code) and "does not start with '{'" in str(info.value.code)


# ---------------------------------------------------------------------------------------------- property suites

from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

JUNK = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.text(max_size=6),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                                max_size=2), max_leaves=5)
DTYPES = st.sampled_from(["F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL", "U16", "F8_E4M3",
                          "F17", "f32", ""])
NAMES = st.sampled_from(["a", "b", "c", "d"])
FIELDS = st.sampled_from(["dtype", "shape", "data_offsets"])
SMALL = st.integers(-4, 80)
MUTATION = st.one_of(
    st.tuples(st.just("offsets"), NAMES, SMALL, SMALL),
    st.tuples(st.just("copy_offsets"), NAMES, NAMES),
    st.tuples(st.just("swap_offsets"), NAMES, NAMES),
    st.tuples(st.just("dtype"), NAMES, DTYPES | JUNK),
    st.tuples(st.just("shape"), NAMES, st.lists(st.integers(-2, 9), max_size=4) | JUNK),
    st.tuples(st.just("drop"), NAMES, FIELDS),
    st.tuples(st.just("nest"), NAMES, FIELDS, st.integers(1, 40)),
    st.tuples(st.just("extra"), NAMES, JUNK),
    st.tuples(st.just("metadata"), JUNK | st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=3)),
    st.tuples(st.just("header"), JUNK),
    st.tuples(st.just("length"), st.integers(-12, 12)),
    st.tuples(st.just("truncate"), st.integers(1, 60)),
    st.tuples(st.just("append"), st.integers(1, 16)),
)


def _base_file() -> tuple[dict, bytes]:
    """Four tensors (one empty), contiguous: a F32 [2, 3], b I64 [4], c BF16 [5], d U8 [0]."""
    header = {"__metadata__": {"k": "v"}, "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
              "b": {"dtype": "I64", "shape": [4], "data_offsets": [24, 56]},
              "c": {"dtype": "BF16", "shape": [5], "data_offsets": [56, 66]},
              "d": {"dtype": "U8", "shape": [0], "data_offsets": [66, 66]}}
    return header, bytes(range(66))


def _mutate(mutations) -> bytes:
    header, data = _base_file()
    length_delta, cut, extra = 0, 0, 0
    for m in mutations:
        kind, args = m[0], m[1:]
        named = kind not in ("metadata", "header", "length", "truncate", "append") and isinstance(header, dict)
        info = header.get(args[0]) if named and isinstance(header.get(args[0]), dict) else None
        if kind == "offsets" and info is not None:
            info["data_offsets"] = [args[1], args[2]]
        elif kind in ("copy_offsets", "swap_offsets") and info is not None and isinstance(header.get(args[1]), dict):
            other = header[args[1]]
            if kind == "copy_offsets":
                other["data_offsets"] = info.get("data_offsets")
            else:
                info["data_offsets"], other["data_offsets"] = other.get("data_offsets"), info.get("data_offsets")
        elif kind in ("dtype", "shape") and info is not None:
            info[kind] = args[1]
        elif kind == "drop" and info is not None:
            info.pop(args[1], None)
        elif kind == "nest" and info is not None:
            for _ in range(args[2]):
                info[args[1]] = [info.get(args[1])]
        elif kind == "extra" and info is not None:
            info["extra"] = args[1]
        elif kind == "metadata" and isinstance(header, dict):
            header["__metadata__"] = args[0]
        elif kind == "header":
            header = args[0]
        elif kind == "length":
            length_delta = args[0]
        elif kind == "truncate":
            cut = args[0]
        elif kind == "append":
            extra = args[0]
    raw = json.dumps(header).encode()
    blob = struct.pack("<Q", max(len(raw) + length_delta, 0)) + raw + data + bytes(extra)
    return blob[: len(blob) - cut] if cut else blob


def _library_view(path: Path):
    """What the safetensors library makes of the file: {name: bytes} or None when it refuses it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return {k: f.get_tensor(k).contiguous().view(-1).view(torch.uint8).clone() for k in f.keys()}
    except Exception:  # noqa: BLE001 - any refusal of the library counts as "invalid"
        return None


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(MUTATION, min_size=1, max_size=3))
def test_header_fuzz_matches_the_safetensors_library(fuzz_dir, mutations):
    """Structured mutations of a valid file (offsets, dtypes, shapes, nesting, fields, lengths, truncation): ours
    is a CheckpointError naming the file, or the same tensors as the library; ours refuses a file the library
    reads only for a dtype we cannot view or a duplicate key."""
    path = fuzz_dir / "fuzz.safetensors"
    path.write_bytes(_mutate(mutations))
    try:
        reader = SafetensorsFile(path)
        ours = {k: reader.tensor(k).contiguous().view(-1).view(torch.uint8) for k in reader.entries}
    except CheckpointError as exc:
        assert str(path) in str(exc)
        ours, reason = None, str(exc)
    lib = _library_view(path)
    if ours is not None:
        outcome = "loaded (library agrees)"
        assert lib is not None and ours.keys() == lib.keys()
        assert all(torch.equal(ours[k], lib[k]) for k in ours)
    elif lib is None:
        outcome = "refused (library refuses too)"
    else:
        outcome = "refused (library reads it: dtype we cannot view / duplicate key)"
        assert "unsupported dtype" in reason or "appears twice" in reason, reason
    event(outcome)


SPEC_VALUES = st.one_of(st.integers(-3, 40), st.sampled_from([0, 10 ** 7, 2 ** 63, -(2 ** 31)]), st.floats(),
                        st.booleans(), st.none(), st.text(max_size=6), st.lists(st.integers(-1, 20), max_size=9),
                        JUNK)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(sorted(SPEC_LIMITS) + ["unet.layers", "clip.layres", "frames"]), value=SPEC_VALUES)
def test_spec_metadata_fuzz(fuzz_dir, micro_ckpt, path, value):
    """Any value in any spec field: a CheckpointError naming the file (before any module is built unless the spec
    passes every check and is built on meta), or a model whose spec carries exactly that value."""
    d = spec_dict()
    target = d
    parts = path.split(".")
    for key in parts[:-1]:
        target = target[key]
    target[parts[-1]] = value
    bad = with_spec(micro_ckpt, fuzz_dir / "spec.safetensors", json.dumps(d))
    try:
        with modules_built() as modules:
            model = svd_core.load(bad, device="meta")
    except CheckpointError as exc:
        assert bad.name in str(exc)
        outcome = "refused"
        built = "cannot be built" in str(exc) or "the spec in metadata" not in str(exc)
        assert built or not modules, (str(exc), modules[:3])  # spec checks refuse before any build
    else:
        outcome = "loaded"
        got = model.spec
        for key in parts:
            got = getattr(got, key)
        assert got == (tuple(value) if isinstance(value, list) else value)
    event(outcome)
