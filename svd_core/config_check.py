"""Typed config files: read a TOML / JSON file into a dict, and check values against a dataclass's annotations
(bools are bools, lists are lists, numbers are finite numbers, unknown keys named with the closest known one).

Shared by the curation config (`curation/config.py`, its cascade levels and filters) and the training configs
(`training/config.py`). Errors are raised as the caller's error class; the messages name the file, the key, the value
and the expected type."""
from __future__ import annotations

import difflib
import json
import math
import os
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterable

MAX_CONFIG_BYTES = 16 * 1024 * 1024


def short_repr(value: Any, limit: int = 60) -> str:
    """repr() cut to `limit` characters (messages never carry a whole untrusted value)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def kind_of(value: Any) -> str:
    """How a JSON / TOML value reads to a user: 'a string', 'true/false', 'a list', ..."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, float) and not math.isfinite(value):
        return "not a finite number"
    if isinstance(value, (int, float)):
        return "a number"
    return {str: "a string", list: "a list", tuple: "a list", dict: "a table/object", type(None): "null"}.get(
        type(value), type(value).__name__)


def describe(annotation: Any) -> str:
    """The expected type in words: 'true or false', 'a list of strings', 'a number or null', ..."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin is list:
        return f"a list of {_PLURAL.get(args[0], 'values')}" if args else "a list"
    if origin is tuple:
        return f"a list of {len(args)} {_PLURAL.get(args[0], 'values')}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a table/object",
            type(None): "null"}.get(annotation, getattr(annotation, "__name__", str(annotation)))


_PLURAL = {str: "strings", dict: "tables/objects", int: "integers", float: "numbers", bool: "booleans"}


def matches(value: Any, annotation: Any) -> bool:
    """Whether a parsed JSON / TOML value has the annotated type (no coercion: "no" is not a bool, 1 not a str)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(matches(v, args[0]) for v in value)
    if origin is tuple:
        return isinstance(value, (list, tuple)) and len(value) == len(args) and all(
            matches(v, a) for v, a in zip(value, args))
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if annotation is type(None):
        return value is None
    if annotation is Any:
        return True
    return isinstance(value, annotation)


def suggest(key: str, known: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest known key, else the list of known keys."""
    known = sorted(known)
    close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(known)}"


def check_keys(data: dict, known: Iterable[str], where: str, error: type[Exception]) -> None:
    """Every key known; unknown ones are named, the first with the closest known key."""
    known = list(known)
    unknown = [key for key in data if key not in known]
    if unknown:
        raise error(f"{where} has unknown keys {sorted(unknown)}{suggest(unknown[0], known)}")


def check_types(dc_type: type, data: dict, where: str, error: type[Exception]) -> None:
    """Type-check `data` (a dict of a dataclass's fields, or an instance's values) against `dc_type`'s annotations;
    unknown keys are errors. Ranges are the dataclass's own checks."""
    hints = typing.get_type_hints(dc_type)
    check_keys(data, hints.keys() & {f.name for f in fields(dc_type)}, where, error)
    for key, value in data.items():
        if not matches(value, hints[key]):
            raise error(f"{where}: {key} = {short_repr(value)} is {kind_of(value)}, expected {describe(hints[key])}")


def check_instance(obj: Any, where: str, error: type[Exception]) -> None:
    """`check_types` over a dataclass instance's current values (for objects built from code, nodes or files)."""
    check_types(type(obj), {f.name: getattr(obj, f.name) for f in fields(obj)}, where, error)


def need_range(where: str, key: str, value: Any, ok: bool, expected: str, error: type[Exception]) -> None:
    if not ok:
        raise error(f"{where}: {key} = {short_repr(value)} is out of range, expected {expected}")


def read_config(path: "str | os.PathLike", error: type[Exception], what: str = "config") -> dict:
    """A `.toml` or `.json` file as a dict; a missing, unreadable, oversized, malformed or non-object file is one
    `error` naming the file and the problem (line / column for syntax errors)."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{what} file {str(p)!r} does not exist; pass a .toml or .json file")
    if p.suffix.lower() not in (".toml", ".json"):
        raise error(f"{what} file {str(p)!r} must end in .toml or .json")
    try:
        if p.stat().st_size > MAX_CONFIG_BYTES:
            raise error(f"{what} file {str(p)!r} is larger than {MAX_CONFIG_BYTES >> 20} MiB; is it really a config?")
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} file {str(p)!r} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise error(f"cannot read {what} file {str(p)!r}: {exc.strerror or exc}") from None
    try:
        if p.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except RecursionError:
        raise error(f"{what} file {str(p)!r} nests too deeply to be a config") from None
    except ValueError as exc:  # json.JSONDecodeError and tomllib.TOMLDecodeError are ValueErrors
        kind = "TOML" if p.suffix.lower() == ".toml" else "JSON"
        raise error(f"{what} file {str(p)!r} is not valid {kind}: {exc}") from None
    if not isinstance(data, dict):
        raise error(f"{what} file {str(p)!r} holds {kind_of(data)}, expected a table/object of settings")
    return data
