"""SQLite store of a voting study: sessions, the pairs shown (with their blinded order) and every vote cast.

Each statement runs in autocommit mode with WAL journaling and `synchronous=FULL`: a vote is on disk when the
request that cast it returns, so stopping the server mid-session loses nothing.
"""
from __future__ import annotations

import itertools
import random
import sqlite3
import threading
import time
import uuid

from .elo import Vote
from .study import Study

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, created REAL NOT NULL, pairs_served INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS pairs (
    id TEXT PRIMARY KEY, session TEXT NOT NULL, item TEXT NOT NULL,
    left_model TEXT NOT NULL, right_model TEXT NOT NULL, left_path TEXT NOT NULL, right_path TEXT NOT NULL,
    image_path TEXT, prompt TEXT NOT NULL DEFAULT '', is_check INTEGER NOT NULL, expected TEXT, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS votes (
    id INTEGER PRIMARY KEY AUTOINCREMENT, pair TEXT NOT NULL, session TEXT NOT NULL, axis TEXT NOT NULL,
    choice TEXT NOT NULL, model_a TEXT NOT NULL, model_b TEXT NOT NULL, winner TEXT NOT NULL,
    is_check INTEGER NOT NULL, correct INTEGER, created REAL NOT NULL, UNIQUE (pair, axis));
"""
CHECK_GOOD, CHECK_BAD = "__check_good__", "__check_bad__"
CHOICES = ("left", "right", "tie")


class VoteStore:
    """Thread-safe access to one study's database file."""

    def __init__(self, path: str, study: Study, seed: int | None = None):
        self.path, self.study = path, study
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)  # autocommit
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _q(self, sql: str, args=()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # ------------------------------------------------------------ sessions and pairs
    def new_session(self) -> str:
        sid = uuid.uuid4().hex
        self._q("INSERT INTO sessions (id, created) VALUES (?, ?)", (sid, time.time()))
        return sid

    def _served(self, session: str) -> int:
        row = self._q("SELECT pairs_served FROM sessions WHERE id = ?", (session,))
        if not row:
            raise KeyError(f"unknown voting session {session!r}; reload the page to start a new one")
        return row[0][0]

    def next_pair(self, session: str) -> dict:
        """Serve a pair: every `check_every`-th one an attention check, otherwise the least-voted
        (item, model pair) combination; left / right order is random."""
        served = self._served(session) + 1
        st = self.study
        if st.checks and st.check_every > 0 and served % st.check_every == 0:
            c = self._rng.choice(st.checks)
            sides = [(CHECK_GOOD, c.good), (CHECK_BAD, c.bad)]
            item, prompt, image, is_check = c.id, c.prompt, c.image, 1
        else:
            counts = {(i, a, b): n for i, a, b, n in self._q(
                "SELECT item, min(left_model, right_model), max(left_model, right_model), count(*) "
                "FROM pairs WHERE is_check = 0 GROUP BY 1, 2, 3")}
            combos = [(it, a, b) for it in st.items for a, b in itertools.combinations(sorted(it.videos), 2)]
            least = min(counts.get((it.id, a, b), 0) for it, a, b in combos)
            it, a, b = self._rng.choice([c for c in combos if counts.get((c[0].id, c[1], c[2]), 0) == least])
            sides = [(a, it.videos[a]), (b, it.videos[b])]
            item, prompt, image, is_check = it.id, it.prompt, it.image, 0
        self._rng.shuffle(sides)  # blinded, randomized order
        pid = uuid.uuid4().hex
        expected = None
        if is_check:
            expected = "left" if sides[0][0] == CHECK_GOOD else "right"
        self._q("INSERT INTO pairs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (pid, session, item, sides[0][0], sides[1][0], sides[0][1], sides[1][1], image, prompt or "",
                 is_check, expected, time.time()))
        self._q("UPDATE sessions SET pairs_served = ? WHERE id = ?", (served, session))
        return {"pair_id": pid, "prompt": prompt or "", "has_image": bool(image), "axes": list(st.axes),
                "questions": {ax: st.question(ax) for ax in st.axes}, "number": served}

    def pair(self, pair_id: str) -> dict:
        rows = self._q("SELECT id, session, item, left_model, right_model, left_path, right_path, image_path, "
                       "prompt, is_check, expected FROM pairs WHERE id = ?", (pair_id,))
        if not rows:
            raise KeyError(f"unknown pair {pair_id!r}")
        keys = ("id", "session", "item", "left_model", "right_model", "left_path", "right_path", "image_path",
                "prompt", "is_check", "expected")
        return dict(zip(keys, rows[0]))

    # ------------------------------------------------------------ votes
    def cast(self, session: str, pair_id: str, axis: str, choice: str) -> int:
        """Record (or change) the vote of a pair on one axis; committed before returning. Returns the count
        of votes this session has cast."""
        if choice not in CHOICES:
            raise ValueError(f"choice {choice!r} must be one of {', '.join(CHOICES)}")
        if axis not in self.study.axes:
            raise ValueError(f"axis {axis!r} is not one of this study's axes ({', '.join(self.study.axes)})")
        p = self.pair(pair_id)
        if p["session"] != session:
            raise PermissionError(f"pair {pair_id!r} was served to another session")
        winner = {"left": "a", "right": "b", "tie": "tie"}[choice]
        correct = int(choice == p["expected"]) if p["is_check"] else None
        self._q("INSERT INTO votes (pair, session, axis, choice, model_a, model_b, winner, is_check, correct, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (pair, axis) DO UPDATE SET choice = excluded.choice,"
                " winner = excluded.winner, correct = excluded.correct, created = excluded.created",
                (pair_id, session, axis, choice, p["left_model"], p["right_model"], winner, p["is_check"], correct,
                 time.time()))
        return self._q("SELECT count(*) FROM votes WHERE session = ?", (session,))[0][0]

    def failed_sessions(self) -> set[str]:
        """Sessions with more failed attention checks than the study allows."""
        rows = self._q("SELECT session, sum(1 - correct) FROM votes WHERE is_check = 1 GROUP BY session")
        return {s for s, failed in rows if failed > self.study.max_failed_checks}

    def votes(self, include_failed: bool = False) -> list[Vote]:
        """Model-vs-model votes (attention checks removed; failed sessions removed unless asked)."""
        bad = set() if include_failed else self.failed_sessions()
        rows = self._q("SELECT session, model_a, model_b, winner, axis FROM votes WHERE is_check = 0 ORDER BY id")
        return [Vote(a, b, w, ax) for s, a, b, w, ax in rows if s not in bad]

    def counts(self) -> dict:
        total, checks = self._q("SELECT count(*), coalesce(sum(is_check), 0) FROM votes")[0]
        sessions = self._q("SELECT count(DISTINCT session) FROM votes")[0][0]
        return {"votes": total, "check_votes": checks, "sessions": sessions,
                "excluded_sessions": len(self.failed_sessions())}
