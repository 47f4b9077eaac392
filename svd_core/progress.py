"""The engine's one progress-and-cancel protocol, shared by sampling, decoding and every whole pipeline.

Progress: ``callback(done, total, stage)``. ``done`` of ``total`` units of ``stage`` are finished; ``done`` grows
step by step and the last call of a stage has ``done == total``. ``stage`` names what is counted ("sampling": sampler
steps, "decoding": decoded frames, "clips": chained clips, "pairs": interpolated pairs, ...); engines with a single
stage may leave it out, so every callback takes it as optional: ``def callback(done, total, stage=None)``.

Cancel: ``cancel() -> bool`` is polled between units (after every sampler step, decoded chunk, window or clip); True
raises `Cancelled` there, so nothing is left half-done and at most one more unit runs after the user asked to stop.
A callback may also raise (ComfyUI's interrupt does): the exception propagates unchanged and stops the work as
promptly.
"""
from __future__ import annotations

from typing import Callable, Optional, Protocol

__all__ = ["ProgressFn", "CancelFn", "Cancelled", "report", "shifted"]


class ProgressFn(Protocol):
    """``callback(done, total, stage=None)``: ``done`` of ``total`` units of ``stage`` finished."""

    def __call__(self, done: int, total: int, stage: Optional[str] = None) -> None: ...


CancelFn = Callable[[], bool]


class Cancelled(RuntimeError):
    """Raised inside sampling or decoding when the cancel hook returns True (nothing is left half-done)."""


def report(callback: ProgressFn | None, cancel: CancelFn | None, done: int, total: int, stage: str,
           cancelled: str) -> None:
    """One unit finished: raise `Cancelled(cancelled)` if `cancel()` says so, else report (done, total, stage)."""
    if cancel is not None and cancel():
        raise Cancelled(cancelled)
    if callback is not None:
        callback(done, total, stage)


def shifted(callback: ProgressFn | None, offset: int, total: int, stage: str) -> ProgressFn | None:
    """A sub-task's progress as part of a larger count: its (done, _) is reported as (offset + done, total, stage)
    (chained clips, batches of interpolated pairs)."""
    if callback is None:
        return None

    def inner(done: int, _total: int, _stage: Optional[str] = None) -> None:
        callback(offset + done, total, stage)
    return inner
