"""Elo ratings from pairwise human votes, bootstrapped over random vote orderings (paper App. E.1.2)."""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field

import numpy as np

from ..atomic import atomic_path

K_FACTOR = 1.0
INITIAL_RATING = 1000.0
NUM_ORDERINGS = 1000
AXES = ("visual_quality", "prompt_following")
TIE_WORDS = ("tie", "draw", "equal", "both", "none", "0.5")


@dataclass(frozen=True)
class Vote:
    """One pairwise judgement: `winner` is 'a', 'b' or 'tie' (normalised by `parse_winner`)."""

    model_a: str
    model_b: str
    winner: str
    axis: str = "overall"

    @property
    def score_a(self) -> float:
        return {"a": 1.0, "b": 0.0, "tie": 0.5}[self.winner]


def parse_winner(value: str, model_a: str, model_b: str, where: str = "") -> str:
    """Accepts a / b / left / right / 1 / 2 / tie / the model name; returns 'a', 'b' or 'tie'."""
    v = str(value).strip()
    low = v.lower()
    if low in ("a", "left", "1", "model_a") or v == model_a:
        return "a"
    if low in ("b", "right", "2", "model_b") or v == model_b:
        return "b"
    if low in TIE_WORDS:
        return "tie"
    raise ValueError(f"{where}winner {value!r} is neither model_a ({model_a!r}), model_b ({model_b!r}), "
                     f"'a', 'b' nor a tie word ({', '.join(TIE_WORDS)})")


def read_votes_csv(path_or_text: str) -> list[Vote]:
    """Votes table with columns model_a, model_b, winner[, axis] (CSV file path or CSV text)."""
    if os.path.isfile(path_or_text):
        with open(path_or_text, newline="", encoding="utf-8") as f:
            text, name = f.read(), path_or_text
    else:
        text, name = path_or_text, "<votes>"
    reader = csv.DictReader(io.StringIO(text))
    cols = [c.strip() for c in (reader.fieldnames or [])]
    missing = [c for c in ("model_a", "model_b", "winner") if c not in cols]
    if missing:
        raise ValueError(f"{name}: votes table lacks column(s) {', '.join(missing)}; expected a CSV header "
                         f"model_a,model_b,winner,axis (got {', '.join(cols) or 'no header'})")
    votes = []
    for i, row in enumerate(reader, start=2):
        row = {k.strip(): csv_value((v or "").strip()) for k, v in row.items() if k}
        a, b = row["model_a"], row["model_b"]
        if not a or not b:
            raise ValueError(f"{name} line {i}: empty model name")
        if a == b:
            raise ValueError(f"{name} line {i}: model {a!r} is compared with itself")
        w = parse_winner(row["winner"], a, b, where=f"{name} line {i}: ")
        votes.append(Vote(a, b, w, row.get("axis") or "overall"))
    if not votes:
        raise ValueError(f"{name}: the votes table has no rows")
    return votes


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what spreadsheets read as a formula (OWASP "CSV injection")


def csv_cell(value: str) -> str:
    """A cell a spreadsheet shows as text: a leading formula character gets an apostrophe in front, which
    `csv_value` takes off again when the table is read back."""
    return "'" + value if value.startswith(FORMULA_START) else value


def csv_value(cell: str) -> str:
    """The value `csv_cell` wrote."""
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(FORMULA_START) else cell


def votes_rows(votes: list[Vote]):
    """The votes table, header first, every cell guarded by `csv_cell` (model names come from folder names)."""
    yield ["model_a", "model_b", "winner", "axis"]
    for v in votes:
        yield [csv_cell(str(c)) for c in (v.model_a, v.model_b, v.winner, v.axis)]


def write_votes_csv(votes: list[Vote], path: str) -> None:
    """The votes table (quoted CSV), written atomically by `svd_core.atomic`: normal permissions, nothing left
    behind on error."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(votes_rows(votes))


def expected_score(r1, r2):
    """E1 = 1 / (1 + 10^((R2 - R1) / 400))."""
    return 1.0 / (1.0 + 10.0 ** ((np.asarray(r2) - np.asarray(r1)) / 400.0))


def elo_sequential(votes: list[Vote], k: float = K_FACTOR, initial: float = INITIAL_RATING) -> dict[str, float]:
    """One pass in the given order: R' = R + K (S - E) for both players of every vote."""
    ratings: dict[str, float] = {}
    for v in votes:
        ra, rb = ratings.setdefault(v.model_a, initial), ratings.setdefault(v.model_b, initial)
        ea = float(expected_score(ra, rb))
        ratings[v.model_a] = ra + k * (v.score_a - ea)
        ratings[v.model_b] = rb + k * ((1.0 - v.score_a) - (1.0 - ea))
    return ratings


@dataclass
class EloTable:
    """Bootstrapped Elo of one axis: mean rating over orderings and a percentile interval."""

    axis: str
    models: list[str]
    rating: np.ndarray
    low: np.ndarray
    high: np.ndarray
    num_votes: int
    wins: dict[str, int] = field(default_factory=dict)
    games: dict[str, int] = field(default_factory=dict)
    ci: float = 0.95

    def ranked(self) -> list[tuple[str, float, float, float]]:
        order = np.argsort(-self.rating, kind="stable")
        return [(self.models[i], float(self.rating[i]), float(self.low[i]), float(self.high[i])) for i in order]

    def as_dict(self) -> dict:
        return {"axis": self.axis, "num_votes": self.num_votes, "ci": self.ci,
                "ratings": [{"model": m, "elo": r, "low": lo, "high": hi, "wins": self.wins.get(m, 0),
                             "games": self.games.get(m, 0)} for m, r, lo, hi in self.ranked()]}


def bootstrap_elo(votes: list[Vote], num_orderings: int = NUM_ORDERINGS, k: float = K_FACTOR,
                  initial: float = INITIAL_RATING, ci: float = 0.95, seed: int = 0,
                  axis: str = "overall") -> EloTable:
    """Elo over `num_orderings` random permutations of the votes (App. E.1.2); all orderings run at once."""
    if not votes:
        raise ValueError(f"no votes for axis {axis!r}")
    models = sorted({v.model_a for v in votes} | {v.model_b for v in votes})
    index = {m: i for i, m in enumerate(models)}
    a = np.array([index[v.model_a] for v in votes])
    b = np.array([index[v.model_b] for v in votes])
    s = np.array([v.score_a for v in votes])
    rng = np.random.default_rng(seed)
    perms = np.stack([rng.permutation(len(votes)) for _ in range(num_orderings)])  # orderings, votes
    r = np.full((num_orderings, len(models)), initial, dtype=np.float64)  # orderings, models
    rows = np.arange(num_orderings)
    for step in range(len(votes)):
        j = perms[:, step]  # the vote each ordering plays at this step
        ia, ib, sa = a[j], b[j], s[j]
        ra, rb = r[rows, ia], r[rows, ib]
        ea = expected_score(ra, rb)
        r[rows, ia] = ra + k * (sa - ea)
        r[rows, ib] = rb + k * ((1.0 - sa) - (1.0 - ea))
    q = (1.0 - ci) / 2.0
    wins = {m: 0 for m in models}
    games = {m: 0 for m in models}
    for v in votes:
        games[v.model_a] += 1
        games[v.model_b] += 1
        if v.winner == "a":
            wins[v.model_a] += 1
        elif v.winner == "b":
            wins[v.model_b] += 1
    return EloTable(axis, models, r.mean(0), np.quantile(r, q, axis=0), np.quantile(r, 1.0 - q, axis=0),
                    len(votes), wins, games, ci)


def elo_by_axis(votes: list[Vote], **kw) -> dict[str, EloTable]:
    """One bootstrapped table per axis present in the votes (e.g. visual_quality, prompt_following)."""
    axes = sorted({v.axis for v in votes}, key=lambda x: (AXES.index(x) if x in AXES else len(AXES), x))
    return {ax: bootstrap_elo([v for v in votes if v.axis == ax], axis=ax, **kw) for ax in axes}


def format_tables(tables: dict[str, EloTable]) -> str:
    """Plain-text leaderboard: rank, model, Elo and its interval, per axis."""
    lines = []
    for ax, t in tables.items():
        lines.append(f"axis: {ax}  ({t.num_votes} votes, {int(t.ci * 100)}% interval over orderings)")
        lines.append(f"  {'rank':<5}{'model':<28}{'elo':>9}  {'interval':<19}{'wins/games':>11}")
        for rank, (m, r, lo, hi) in enumerate(t.ranked(), start=1):
            wg = f"{t.wins[m]}/{t.games[m]}"
            lines.append(f"  {rank:<5}{m:<28}{r:9.2f}  [{lo:7.2f}, {hi:7.2f}]{wg:>11}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


AGGREGATE_AXIS = "aggregated"


def aggregate_elo(votes: list[Vote], axes: "list[str] | tuple[str, ...] | None" = None, **kw) -> EloTable:
    """Aggregated Elo across axes (paper App. E.1.2; the "aggregated" preference shown next to prompt alignment
    and visual quality in Figs. 3-4): every vote of every axis is one game, and the pooled games are rated as
    App. E.1.2 rates one axis (K = 1, start 1000, mean over random orderings). A model thus gains from a win on
    either axis, in proportion to the votes cast; `axes` restricts the pool (default: every axis present).
    Keyword arguments as `bootstrap_elo` (num_orderings, k, initial, ci, seed)."""
    present = sorted({v.axis for v in votes})
    if axes:
        unknown = [a for a in axes if a not in present]
        if unknown:
            raise ValueError(f"axis {unknown[0]!r} has no votes; the votes have axes {', '.join(present)}")
    chosen = set(axes or present)
    pooled = [Vote(v.model_a, v.model_b, v.winner, AGGREGATE_AXIS) for v in votes if v.axis in chosen]
    return bootstrap_elo(pooled, axis=AGGREGATE_AXIS, **kw)


def elo_by_axis_and_aggregate(votes: list[Vote], **kw) -> dict[str, EloTable]:
    """`elo_by_axis` plus the pooled table of all axes (`aggregate_elo`) under the key "aggregated"."""
    tables = elo_by_axis(votes, **kw)
    if AGGREGATE_AXIS in tables:
        raise ValueError(f"the votes already use the axis name {AGGREGATE_AXIS!r}; rename that axis to aggregate")
    tables[AGGREGATE_AXIS] = aggregate_elo(votes, **kw)
    return tables
