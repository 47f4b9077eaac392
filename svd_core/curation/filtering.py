"""Filtering (paper Sec. 3.3, App. E.2.2): drop the bottom p% by a score or by thresholds; the LVD-F preset."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from ..config_check import check_instance, check_types
from . import CurationError

PRESET_PERCENTS = (12.5, 25.0, 50.0)


@dataclass(frozen=True)
class Filter:
    """Keep rows by one score: drop the bottom (`keep='high'`) or top (`keep='low'`) `percent`, or apply thresholds.

    `min_value`/`max_value` are absolute bounds; with `percent` as well a row must pass both, except when
    `combine='or'` (drop when either rule drops, the paper's text-area rule: above 7% or the top 25%)."""

    column: str
    percent: float | None = None
    keep: str = "high"
    min_value: float | None = None
    max_value: float | None = None
    combine: str = "and"

    def __post_init__(self):
        check_instance(self, "filter", CurationError)
        if self.keep not in ("high", "low"):
            raise CurationError(f"filter on {self.column!r}: keep={self.keep!r}; expected 'high' or 'low'")
        if self.percent is not None and not 0 <= self.percent <= 100:
            raise CurationError(f"filter on {self.column!r}: percent {self.percent} must be within 0..100")
        if self.percent is None and self.min_value is None and self.max_value is None:
            raise CurationError(f"filter on {self.column!r} has no rule; give percent, min_value or max_value")
        if self.combine not in ("and", "or"):
            raise CurationError(f"filter on {self.column!r}: combine={self.combine!r}; expected 'and' or 'or'")

    @property
    def name(self) -> str:
        parts = []
        if self.percent is not None:
            parts.append(f"{'bottom' if self.keep == 'high' else 'top'} {self.percent:g}%")
        if self.min_value is not None:
            parts.append(f"< {self.min_value:g}")
        if self.max_value is not None:
            parts.append(f"> {self.max_value:g}")
        return f"{self.column}: drop " + (" or " if self.combine == "or" or len(parts) == 1 else " and ").join(parts)

    def keep_mask(self, values: np.ndarray) -> np.ndarray:
        """Boolean keep-mask over `values`; NaN (missing score) is dropped."""
        v = np.asarray(values, dtype=np.float64)
        finite = np.isfinite(v)
        drops = []
        if self.percent is not None and finite.any():
            if self.keep == "high":
                cut = np.percentile(v[finite], self.percent)
                drops.append(v < cut)
            else:
                cut = np.percentile(v[finite], 100.0 - self.percent)
                drops.append(v > cut)
        if self.min_value is not None:
            drops.append(v < self.min_value)
        if self.max_value is not None:
            drops.append(v > self.max_value)
        if not drops:
            return finite
        if self.combine == "or" or len(drops) == 1:
            drop = np.logical_or.reduce(drops)
        else:
            drop = np.logical_and.reduce(drops)
        return finite & ~drop

    def to_dict(self) -> dict:
        return asdict(self)


def lvd_f_preset() -> list[Filter]:
    """The paper's LVD-F recipe (App. E.2.2): bottom 25% motion, bottom 25% aesthetics, bottom 50% CLIP score,
    text area above 7% or in the top 25%."""
    return [
        Filter("motion", percent=25.0),
        Filter("aesthetic", percent=25.0),
        Filter("clip_score", percent=50.0),
        Filter("text_area", percent=25.0, keep="low", max_value=0.07, combine="or"),
    ]


def bottom_percent(column: str, percent: float) -> Filter:
    """The 12.5 / 25 / 50 % presets of the paper's filtering study (App. E.2.2)."""
    if percent not in PRESET_PERCENTS:
        raise CurationError(f"preset percent {percent} is not one of {PRESET_PERCENTS}; use Filter(...) for others")
    return Filter(column, percent=percent)


def filters_from_dicts(items: Sequence[dict] | str | None) -> list[Filter]:
    """Filters from config: the string 'lvd-f', or a list of Filter field dicts."""
    if items is None:
        return []
    if isinstance(items, str):
        if items.lower() in ("lvd-f", "lvd_f", "lvdf"):
            return lvd_f_preset()
        raise CurationError(f"filter preset {items!r} is unknown; expected 'lvd-f' or a list of filters")
    out = []
    for i, d in enumerate(items):
        if not isinstance(d, dict):
            raise CurationError(f"filter {i} is {type(d).__name__}, expected a table like "
                                f"{{column = 'motion', percent = 25.0}}")
        check_types(Filter, d, f"filter {i}", CurationError)
        if "column" not in d:
            raise CurationError(f"filter {i} has no `column` (the manifest score it filters on)")
        out.append(Filter(**d))
    return out


@dataclass
class FilterReport:
    """How many clips each filter removed, applied in order (each on what the previous ones kept)."""

    total: int
    kept: int
    steps: list[dict]

    def to_text(self) -> str:
        lines = [f"{self.total} clips in, {self.kept} kept"]
        lines += [f"  {s['filter']}: removed {s['removed']} ({s['removed_alone']} on its own)" for s in self.steps]
        return "\n".join(lines)


def apply_filters(rows: Sequence[dict], filters: Sequence[Filter]) -> tuple[list[dict], FilterReport]:
    """Compose filters: each filter's percentiles are taken over the full input (paper: independent thresholds),
    then masks are combined; the report gives removals in order and on their own."""
    rows = list(rows)
    keep = np.ones(len(rows), dtype=bool)
    steps = []
    for f in filters:
        missing = [i for i, r in enumerate(rows) if f.column not in r]
        if missing and len(missing) == len(rows):
            raise CurationError(f"filter column {f.column!r} is not in the manifest; run its scoring stage first "
                                f"(columns: {sorted(rows[0]) if rows else []})")
        values = np.array([np.nan if r.get(f.column) is None else float(r[f.column]) for r in rows])
        mask = f.keep_mask(values) if rows else keep
        removed = int((keep & ~mask).sum())
        steps.append({"filter": f.name, "column": f.column, "removed": removed,
                      "removed_alone": int((~mask).sum())})
        keep &= mask
    kept = [r for r, k in zip(rows, keep) if k]
    return kept, FilterReport(len(rows), len(kept), steps)
