"""Atomic file writes: the one owner of temp-file-then-rename in svd_core.

Every file the project writes (videos, frames, checkpoints, statistics, manifests) goes through `atomic_path`:
the content is written to a clearly named temp file beside the target, `.NAME.svd-partial-PID-TOKEN`, which is
renamed onto the target only when complete, so a reader never sees a half-written file and an interrupted run
(error, Ctrl-C) leaves nothing behind. Temp files are created like a normal `open(path, "w")` would create the
target (mode 0o666 minus the umask; `tempfile.mkstemp` would make them 0600). A run that was killed (SIGKILL,
power loss) cannot clean up: the next write to the same target sweeps the temp files of processes that no longer
exist, and only files that carry our own marker.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

MARKER = ".svd-partial-"
_PATTERN = re.compile(r"^\.(?P<name>.+)\.svd-partial-(?P<pid>\d+)-[0-9a-f]{8}(?P<ext>\.[A-Za-z0-9]+)?$")

__all__ = ["MARKER", "temp_path_for", "is_partial", "sweep_partials", "atomic_path", "atomic_write_bytes",
           "atomic_dir", "write_with"]


def temp_path_for(path: "str | os.PathLike", keep_suffix: bool = False) -> Path:
    """A fresh temp name beside `path`: `.NAME.svd-partial-PID-TOKEN` (+ the target's suffix when `keep_suffix`,
    for writers that pick the format from the extension)."""
    path = Path(path)
    ext = path.suffix if keep_suffix else ""
    return path.with_name(f".{path.name}{MARKER}{os.getpid()}-{secrets.token_hex(4)}{ext}")


def is_partial(name: str) -> bool:
    """Whether a file name is one of our temp files (an unfinished write)."""
    return _PATTERN.match(name) is not None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else
    return True


def sweep_partials(path: "str | os.PathLike") -> list[Path]:
    """Remove the temp files (or temp frame folders) left beside `path` by killed runs writing the same target.

    Only names made by `temp_path_for` for this target, of processes that no longer run; folders only when they
    hold nothing but files. Returns what was removed."""
    path = Path(path)
    removed = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _PATTERN.match(entry.name)
        if m is None or m["name"] != path.name or _alive(int(m["pid"])):
            continue
        try:
            if entry.is_symlink() or entry.is_file():
                entry.unlink()
            elif entry.is_dir() and all(p.is_file() and not p.is_symlink() for p in entry.iterdir()):
                shutil.rmtree(entry)
            else:
                continue
            removed.append(entry)
        except OSError:
            pass
    return removed


def _create(tmp: Path, private: bool = False) -> int:
    """Create `tmp` exclusively with the permissions a normal open() gives (0o666 & ~umask), or owner-only 0o600
    for a file holding a secret; returns them."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o666)
    try:
        return os.fstat(fd).st_mode & 0o7777
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: "str | os.PathLike", keep_suffix: bool = False, private: bool = False) -> Iterator[Path]:
    """`with atomic_path(target) as tmp: write(tmp)`: the temp file becomes `target` (one rename) if the block
    finishes, and is removed if it raises (KeyboardInterrupt included). Parent folders are created. `private`:
    readable by the owner only (a file holding a secret, e.g. a study's organiser token)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_partials(path)
    tmp = temp_path_for(path, keep_suffix)
    mode = _create(tmp, private)
    try:
        yield tmp
        if os.stat(tmp).st_mode & 0o7777 != mode:  # a writer that recreated the file privately (safetensors: 0600)
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: "str | os.PathLike", data: bytes) -> Path:
    """Write `data` to `path` atomically (temp file, then rename)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


@contextmanager
def atomic_dir(path: "str | os.PathLike") -> Iterator[Path]:
    """A temp folder beside `path` (normal permissions) for a set of files; removed with its files if the block
    raises. The caller moves the files into place (see video_io.write_frames)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_partials(path)
    tmp = temp_path_for(path)
    tmp.mkdir(0o777)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    else:
        shutil.rmtree(tmp, ignore_errors=True)  # emptied by the caller; anything left was not moved


def write_with(path: "str | os.PathLike", writer: Callable[[Path], object], keep_suffix: bool = False) -> Path:
    """`writer(tmp)` writes the content to the temp path, which then becomes `path`."""
    with atomic_path(path, keep_suffix) as tmp:
        writer(tmp)
    return Path(path)
