"""SQLite store of pair verdicts, keyed by the unordered image pair and the settings.

A key is ``(sha_a, sha_b, settings)`` with ``sha_a <= sha_b`` (content hashes),
so (a, b), (b, a), the same pair in two scenarios, or in a second run, is
verified once. Writes go in transactions; a database file that is not a
valid SQLite store is moved aside with a warning and started afresh.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS verdicts (
    sha_a TEXT NOT NULL,
    sha_b TEXT NOT NULL,
    settings TEXT NOT NULL,
    n_matches INTEGER NOT NULL,
    n_inliers INTEGER NOT NULL,
    strength REAL NOT NULL,
    score REAL NOT NULL,
    model TEXT,
    PRIMARY KEY (sha_a, sha_b, settings)
) WITHOUT ROWID;
"""
COLUMNS = ("n_matches", "n_inliers", "strength", "score", "model")


def canonical(sha0: str, sha1: str) -> tuple[str, str]:
    return (sha0, sha1) if sha0 <= sha1 else (sha1, sha0)


class PairCache:
    """Verdict store. ``path=None`` keeps verdicts in memory only."""

    def __init__(self, path: Path | None, settings: str):
        self.settings = settings
        self.path = Path(path) if path else None
        self.conn = self._open()

    def _open(self) -> sqlite3.Connection:
        if self.path is None:
            return self._init(sqlite3.connect(":memory:"))
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return self._init(sqlite3.connect(self.path, timeout=60))
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise
            aside = self.path.with_suffix(self.path.suffix + ".corrupt")
            log.warning("pair cache %s is unreadable (%s); moving it to %s and starting afresh", self.path, exc, aside)
            self.path.replace(aside)
            return self._init(sqlite3.connect(self.path, timeout=60))
        except OSError as exc:
            log.warning("pair cache %s cannot be opened (%s); keeping verdicts in memory only", self.path, exc)
            return self._init(sqlite3.connect(":memory:"))

    @staticmethod
    def _init(conn: sqlite3.Connection) -> sqlite3.Connection:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(SCHEMA)
        conn.execute("SELECT count(*) FROM verdicts LIMIT 1").fetchone()
        return conn

    def get_many(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], dict]:
        """Stored verdicts of the given canonical pairs (missing ones are absent)."""
        found: dict[tuple[str, str], dict] = {}
        cur = self.conn.cursor()
        for a, b in pairs:
            row = cur.execute(
                "SELECT n_matches, n_inliers, strength, score, model FROM verdicts "
                "WHERE sha_a=? AND sha_b=? AND settings=?",
                (a, b, self.settings),
            ).fetchone()
            if row is not None:
                verdict = dict(zip(COLUMNS, row))
                verdict["model"] = json.loads(verdict["model"]) if verdict["model"] else None
                found[(a, b)] = verdict
        return found

    def put_many(self, verdicts: dict[tuple[str, str], dict]) -> None:
        rows = [
            (a, b, self.settings, v["n_matches"], v["n_inliers"], v["strength"], v["score"], json.dumps(v["model"]))
            for (a, b), v in verdicts.items()
        ]
        try:
            with self.conn:
                self.conn.executemany("INSERT OR REPLACE INTO verdicts VALUES (?,?,?,?,?,?,?,?)", rows)
        except sqlite3.OperationalError as exc:
            log.warning("cannot write to pair cache %s (%s); continuing without caching verdicts", self.path, exc)
            self.conn = self._init(sqlite3.connect(":memory:"))
            with self.conn:
                self.conn.executemany("INSERT OR REPLACE INTO verdicts VALUES (?,?,?,?,?,?,?,?)", rows)

    def count(self) -> int:
        return self.conn.execute("SELECT count(*) FROM verdicts WHERE settings=?", (self.settings,)).fetchone()[0]

    def close(self) -> None:
        self.conn.close()
