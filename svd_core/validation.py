"""Ranges of the generation arguments, checked before any heavy work (issue 12).

One table, `RULES`, says what every argument of `pipeline.img2vid` / `pipeline.orbit` may be; the Python API
checks a request with `check_request` (a ValueError naming the argument) and the CLI builds its argparse types
from the same rules with `arg_type` (an error naming the option), so `--steps 0` and `steps=0` fail alike,
before the model is loaded. Memory is not a rule here: `svd_core.memory.check_request_fits` bounds it.

Reference ranges: the released SVD models were trained with motion buckets 0-255 (paper Sec. 3 / reference
`simple_video_sample.py` default 127, Stability's API and demo 1-255; the training cache here clamps to 0-255,
`training.data.motion_bucket`), fps conditioning of at least 1 frame per second, `decoding_t` >= 1.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

MAX_STEPS = 1000  # the EDM discretization of the reference samples at most 1000 levels
MAX_SEED = 2 ** 64 - 1  # torch.Generator.manual_seed takes 64-bit seeds
MAX_FRAMES, MAX_SIDE = 1_000_000, 2 ** 20  # hard bounds that keep the memory estimate's arithmetic finite


@dataclass(frozen=True)
class Rule:
    """An integer or a finite real in [minimum, maximum] (None: unbounded), optionally a multiple of `multiple`."""

    kind: type
    minimum: float | None = None
    maximum: float | None = None
    multiple: int | None = None
    why: str = ""

    def expected(self) -> str:
        what = "an integer" if self.kind is int else "a finite number"
        lo, hi = (None if v is None else f"{self.kind(v)}" if self.kind is int else f"{v:g}"
                  for v in (self.minimum, self.maximum))
        if lo is not None and hi is not None:
            what += f" in [{lo}, {hi}]"
        elif lo is not None:
            what += f" >= {lo}"
        elif hi is not None:
            what += f" <= {hi}"
        if self.multiple:
            what += f", a multiple of {self.multiple}"
        return what + (f" ({self.why})" if self.why else "")

    def check(self, name: str, value: Any):
        """`value` if it obeys the rule, else a ValueError `name=value is impossible: expected ...`."""
        bad = ValueError(f"{name}={value!r} is impossible: expected {self.expected()}")
        if isinstance(value, bool):
            raise bad
        if self.kind is int:
            if not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                else:
                    raise bad
        else:
            try:
                value = float(value)
            except (TypeError, ValueError, OverflowError):
                raise bad from None
            if not math.isfinite(value):
                raise bad
        if (self.minimum is not None and value < self.minimum) or (self.maximum is not None and value > self.maximum):
            raise bad
        if self.multiple and value % self.multiple:
            raise bad
        return value


SIDE = Rule(int, 64, MAX_SIDE, 64, "the VAE downsamples 8x and the UNet 8x more")
RULES: dict[str, Rule] = {
    "num_frames": Rule(int, 1, MAX_FRAMES, None, "memory bounds it further"),
    "width": SIDE,
    "height": SIDE,
    "steps": Rule(int, 1, MAX_STEPS),
    "seed": Rule(int, 0, MAX_SEED),
    "decode_t": Rule(int, 1, None, None, "frames decoded at a time"),
    "overlap": Rule(int, 0),
    "decode_tile": Rule(int, 0, MAX_SIDE // 8, None, "latent pixels per spatial decode tile (>= 4); 0: whole frames"),
    "decode_tile_overlap": Rule(int, 0, MAX_SIDE // 16, None, "latent pixels shared by neighbouring decode tiles"),
    "window": Rule(int, 1, MAX_FRAMES, None, "frames per sliding window"),
    "clip_frames": Rule(int, 2, MAX_FRAMES, None, "each chained clip adds clip_frames - 1 new frames"),
    "batch_size": Rule(int, 1, MAX_FRAMES, None, "frame pairs sampled together"),
    "ff_chunk_size": Rule(int, 0, None, None, "0 runs feed-forwards whole"),
    "cond_aug": Rule(float, 0.0, 10.0, None, "std of the noise on the conditioning frame; reference 0.02"),
    "fps": Rule(float, 1.0, 1000.0, None, "frames per second the model is conditioned on; reference 7"),
    "motion_bucket_id": Rule(float, 0.0, 255.0, None, "the motion buckets the released models were trained on; "
                                                      "reference 127"),
    "motion_score": Rule(float, 0.0, 255.0, None, "a motion bucket as SVD's motion_bucket_id (text-to-video); "
                                                  "middle 127"),
    "min_scale": Rule(float, 0.0, 100.0, None, "classifier-free guidance scale"),
    "max_scale": Rule(float, 0.0, 100.0, None, "classifier-free guidance scale"),
    "elevations": Rule(float, -90.0, 90.0, None, "degrees"),
    "azimuths": Rule(float, -3600.0, 3600.0, None, "degrees"),
}


def check(name: str, value: Any, label: str | None = None):
    """`value` checked by `RULES[name]`; errors say `label` (default `name`)."""
    return RULES[name].check(label or name, value)


def check_choice(name: str, value: Any, choices) -> str:
    if value not in tuple(choices):
        raise ValueError(f"{name}={value!r} is not one of {list(choices)}")
    return value


def check_request(values: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Check every argument of a generation request that is not None (None: the variant's default).

    Per-frame lists (motion_bucket_id, cond_aug, elevations, azimuths) are checked element by element; `overlap`
    must be below `decode_t` and `window` (windows would never advance). Returns the checked values (ints as ints)."""
    labels = labels or {}
    out = {}
    for name, value in values.items():
        if value is None or name not in RULES:
            out[name] = value
            continue
        label = labels.get(name, name)
        if isinstance(value, (list, tuple)):
            out[name] = [check(name, v, f"{label}[{i}]") for i, v in enumerate(value)]
        elif hasattr(value, "tolist") and not isinstance(value, (int, float)):  # a tensor / array per frame
            flat = value.reshape(-1).tolist()
            for i, v in enumerate(flat):
                check(name, v, f"{label}[{i}]")
            out[name] = value
        else:
            out[name] = check(name, value, label)
    overlap = out.get("overlap")
    for name, what in (("decode_t", "the frames decoded at a time"), ("window", "the frames of a sliding window")):
        limit = out.get(name)
        if limit is not None and overlap and overlap >= limit:
            raise ValueError(f"{labels.get('overlap', 'overlap')}={overlap} is impossible: it must be smaller than "
                             f"{labels.get(name, name)}={limit} ({what})")
    return out


def arg_type(name: str, option: str, parse: Callable[[str], Any] | None = None) -> Callable[[str], Any]:
    """An argparse `type=` for option `option` obeying `RULES[name]`: argparse reports the message, exit code 2."""
    rule = RULES[name]
    parse = parse or rule.kind

    def convert(text: str):
        try:
            value = parse(text)
        except (TypeError, ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"{text!r} is not {rule.expected()}") from None
        try:
            return rule.check(option, value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text} is impossible: expected {rule.expected()}") from None

    convert.__name__ = name
    return convert


__all__ = ["Rule", "RULES", "MAX_STEPS", "MAX_SEED", "check", "check_choice", "check_request", "arg_type"]
