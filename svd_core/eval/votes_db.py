"""SQLite store of a voting study: participant codes, the pairs shown (with their blinded order) and every vote.

Each statement runs in autocommit mode with WAL journaling and `synchronous=FULL`: a vote is on disk when the
request that cast it returns, so stopping the server mid-session loses nothing.

Participants are identified by organiser-issued codes (`issue_codes` / `ensure_codes`), never by sessions a client
can mint: a participant sees each (item, model pair) at most once, gets back the pair it has not finished after a
reload, and a vote, once cast, is final (a second vote on the same pair and axis is refused with `VoteConflict`).
One pair in every block of `Study.check_every` is an attention check, at a random position in the block
(paper App. E.1.2 uses attention checks; the scheme is ours).
"""
from __future__ import annotations

import itertools
import random
import re
import secrets
import sqlite3
import threading
import time
import uuid

from .elo import Vote
from .study import Study

SCHEMA = """
CREATE TABLE IF NOT EXISTS participants (
    code TEXT PRIMARY KEY, created REAL NOT NULL, pairs_served INTEGER NOT NULL DEFAULT 0, next_check INTEGER);
CREATE TABLE IF NOT EXISTS pairs (
    id TEXT PRIMARY KEY, participant TEXT NOT NULL, number INTEGER NOT NULL, item TEXT NOT NULL,
    left_model TEXT NOT NULL, right_model TEXT NOT NULL, left_path TEXT NOT NULL, right_path TEXT NOT NULL,
    image_path TEXT, prompt TEXT NOT NULL DEFAULT '', is_check INTEGER NOT NULL, expected TEXT, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS votes (
    id INTEGER PRIMARY KEY AUTOINCREMENT, pair TEXT NOT NULL, participant TEXT NOT NULL, axis TEXT NOT NULL,
    choice TEXT NOT NULL, model_a TEXT NOT NULL, model_b TEXT NOT NULL, winner TEXT NOT NULL,
    is_check INTEGER NOT NULL, correct INTEGER, created REAL NOT NULL, UNIQUE (pair, axis));
CREATE INDEX IF NOT EXISTS pairs_by_participant ON pairs (participant);
"""
CHECK_GOOD, CHECK_BAD = "__check_good__", "__check_bad__"
CHOICES = ("left", "right", "tie")
CODE_RE = re.compile(r"[A-Za-z0-9_-]{8,64}")
PAIR_RE = re.compile(r"[0-9a-f]{32}")
MAX_CODES = 100_000


class VoteConflict(ValueError):
    """A second vote on a pair and axis: votes are final."""


class VoteStore:
    """Thread-safe access to one study's database file."""

    def __init__(self, path: str, study: Study, seed: int | None = None):
        self.path, self.study = path, study
        self._lock = threading.RLock()
        self._rng = random.Random(seed) if seed is not None else secrets.SystemRandom()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)  # autocommit
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            self._db.close()
            raise ValueError(f"votes database {path!r} is not a database of this study version ({exc}); give a new "
                             "--db file (or study name)") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _q(self, sql: str, args=()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # ------------------------------------------------------------ participant codes
    def issue_codes(self, n: int) -> list[str]:
        """`n` new random participant codes (96 bits each), stored before they are returned."""
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= 1000:
            raise ValueError(f"number of codes {n!r} must be an integer in [0, 1000]")
        with self._lock:
            if self._q("SELECT count(*) FROM participants")[0][0] + n > MAX_CODES:
                raise ValueError(f"a study holds at most {MAX_CODES} participant codes")
            codes = [secrets.token_urlsafe(12) for _ in range(n)]
            for c in codes:
                self._q("INSERT INTO participants (code, created, next_check) VALUES (?, ?, ?)",
                        (c, time.time(), self._first_check()))
        return codes

    def ensure_codes(self, n: int) -> list[str]:
        """The study's codes, issuing new ones until there are at least `n` (a reopened study keeps its codes)."""
        have = [r[0] for r in self._q("SELECT code FROM participants ORDER BY created, rowid")]
        return have + self.issue_codes(max(0, n - len(have)))

    def _first_check(self) -> int:
        return self._rng.randint(1, self.study.check_every)

    def _participant(self, code) -> tuple[int, int]:
        if not isinstance(code, str) or not CODE_RE.fullmatch(code):
            raise PermissionError("a participant code is needed (8-64 letters, digits, '-', '_'); ask the study "
                                  "organiser for yours and open the page with ?code=YOUR_CODE")
        row = self._q("SELECT pairs_served, next_check FROM participants WHERE code = ?", (code,))
        if not row:
            raise PermissionError("unknown participant code; check it, or ask the study organiser for yours")
        return row[0]

    # ------------------------------------------------------------ pairs
    def next_pair(self, code: str) -> dict:
        """The participant's unfinished pair if any; else a new one: an attention check at the drawn position of
        this block, otherwise the least-voted (item, model pair) the participant has not seen. Left / right order is
        random. `{"done": True}` once every combination was shown."""
        with self._lock:
            served, next_check = self._participant(code)
            open_pair = self._q(
                "SELECT id, number, prompt, image_path FROM pairs p WHERE participant = ? AND "
                "(SELECT count(*) FROM votes v WHERE v.pair = p.id) < ? ORDER BY number DESC LIMIT 1",
                (code, len(self.study.axes)))
            if open_pair:
                pid, number, prompt, image = open_pair[0]
                return self._payload(pid, number, prompt, image)
            return self._new_pair(code, served + 1, next_check)

    def _new_pair(self, code: str, number: int, next_check: int | None) -> dict:
        st = self.study
        seen = {(i, a, b) for i, a, b in self._q(
            "SELECT item, min(left_model, right_model), max(left_model, right_model) FROM pairs "
            "WHERE participant = ? AND is_check = 0", (code,))}
        combos = [(it, a, b) for it in st.items for a, b in itertools.combinations(sorted(it.videos), 2)
                  if (it.id, a, b) not in seen]
        ce = st.check_every
        same_block = next_check is not None and (next_check - 1) // ce == (number - 1) // ce
        check_due = bool(st.checks) and next_check is not None and (
            (combos and number >= next_check)  # the drawn position of this block
            # no pairs left: a block already begun still gets its check, a block not begun is not opened for one
            or (not combos and (number - 1) % ce != 0 and same_block))
        if not combos and not check_due:
            return {"done": True, "number": number - 1}
        if check_due:
            shown = {r[0] for r in self._q("SELECT item FROM pairs WHERE participant = ? AND is_check = 1", (code,))}
            c = self._rng.choice([c for c in st.checks if c.id not in shown] or st.checks)
            sides = [(CHECK_GOOD, c.good), (CHECK_BAD, c.bad)]
            item, prompt, image, is_check = c.id, c.prompt, c.image, 1
            next_check = -(-number // ce) * ce + self._rng.randint(1, ce)  # a random position in the next block
        else:
            counts = {(i, a, b): n for i, a, b, n in self._q(
                "SELECT item, min(left_model, right_model), max(left_model, right_model), count(*) "
                "FROM pairs WHERE is_check = 0 GROUP BY 1, 2, 3")}
            least = min(counts.get((it.id, a, b), 0) for it, a, b in combos)
            it, a, b = self._rng.choice([c for c in combos if counts.get((c[0].id, c[1], c[2]), 0) == least])
            sides = [(a, it.videos[a]), (b, it.videos[b])]
            item, prompt, image, is_check = it.id, it.prompt, it.image, 0
        self._rng.shuffle(sides)  # blinded, randomized order
        pid = uuid.uuid4().hex
        expected = ("left" if sides[0][0] == CHECK_GOOD else "right") if is_check else None
        self._q("INSERT INTO pairs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (pid, code, number, item, sides[0][0], sides[1][0], sides[0][1], sides[1][1], image, prompt or "",
                 is_check, expected, time.time()))
        self._q("UPDATE participants SET pairs_served = ?, next_check = ? WHERE code = ?", (number, next_check, code))
        return self._payload(pid, number, prompt, image)

    def _payload(self, pid: str, number: int, prompt: str | None, image: str | None) -> dict:
        st = self.study
        return {"pair_id": pid, "prompt": prompt or "", "has_image": bool(image), "axes": list(st.axes),
                "questions": {ax: st.question(ax) for ax in st.axes}, "number": number, "done": False}

    def pair(self, pair_id) -> dict:
        if not isinstance(pair_id, str) or not PAIR_RE.fullmatch(pair_id):
            raise KeyError(f"unknown pair {str(pair_id)[:80]!r}")
        keys = ("id", "participant", "item", "left_model", "right_model", "left_path", "right_path", "image_path",
                "prompt", "is_check", "expected")
        rows = self._q(f"SELECT {', '.join(keys)} FROM pairs WHERE id = ?", (pair_id,))
        if not rows:
            raise KeyError(f"unknown pair {pair_id!r}")
        return dict(zip(keys, rows[0]))

    # ------------------------------------------------------------ votes
    def cast(self, code: str, pair_id: str, axis: str, choice: str) -> int:
        """Record the vote of a pair on one axis; committed before returning; a second vote on the same pair and
        axis raises `VoteConflict`. Returns the count of votes this participant has cast."""
        self._participant(code)
        if not isinstance(choice, str) or choice not in CHOICES:
            raise ValueError(f"choice {str(choice)[:40]!r} must be one of {', '.join(CHOICES)}")
        if not isinstance(axis, str) or axis not in self.study.axes:
            raise ValueError(f"axis {str(axis)[:40]!r} is not one of this study's axes ({', '.join(self.study.axes)})")
        p = self.pair(pair_id)
        if p["participant"] != code:
            raise PermissionError(f"pair {pair_id!r} was served to another participant")
        winner = {"left": "a", "right": "b", "tie": "tie"}[choice]
        correct = int(choice == p["expected"]) if p["is_check"] else None
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO votes (pair, participant, axis, choice, model_a, model_b, winner, is_check, correct, "
                "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (pair, axis) DO NOTHING",
                (pair_id, code, axis, choice, p["left_model"], p["right_model"], winner, p["is_check"], correct,
                 time.time()))
            if cur.rowcount != 1:
                raise VoteConflict(f"pair {pair_id!r} already has your vote on {axis!r}; votes are final")
            return self._db.execute("SELECT count(*) FROM votes WHERE participant = ?", (code,)).fetchone()[0]

    def failed_participants(self) -> set[str]:
        """Participants with more failed attention checks than the study allows."""
        rows = self._q("SELECT participant, sum(1 - correct) FROM votes WHERE is_check = 1 GROUP BY participant")
        return {s for s, failed in rows if failed > self.study.max_failed_checks}

    def votes(self, include_failed: bool = False) -> list[Vote]:
        """Model-vs-model votes (attention checks removed; failed participants removed unless asked)."""
        bad = set() if include_failed else self.failed_participants()
        rows = self._q("SELECT participant, model_a, model_b, winner, axis FROM votes WHERE is_check = 0 ORDER BY id")
        return [Vote(a, b, w, ax) for s, a, b, w, ax in rows if s not in bad]

    def counts(self) -> dict:
        total, checks = self._q("SELECT count(*), coalesce(sum(is_check), 0) FROM votes")[0]
        voters = self._q("SELECT count(DISTINCT participant) FROM votes")[0][0]
        excluded = sorted(self.failed_participants())
        return {"votes": total, "check_votes": checks, "participants": voters,
                "excluded_participants": len(excluded), "excluded_codes": excluded}
