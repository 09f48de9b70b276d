"""SQLite store of pair verdicts, keyed by the unordered image pair and the settings.

A verdict is its counts, strength, score and fitted model, and its evidence (:mod:`matcher.pairs.evidence`)
as JSON. The verdict's layout has a version (:data:`VERDICT_SCHEMA`) that is part of every settings key
(:mod:`matcher.cache`), so entries of an older layout are never read as new ones: they are recomputed.

A key is ``(sha_a, sha_b, settings)`` with ``sha_a <= sha_b`` (content hashes),
so (a, b), (b, a), the same pair in two scenarios, or in a second run, is
verified once. Writes go in transactions (a killed run keeps every committed
batch and nothing of the one in flight). A database file that is not a valid
SQLite store, or that turns out corrupt while in use, is moved aside (with its
``-wal`` and ``-shm`` files) with a warning and started afresh; a row that does
not hold a verdict (a value of the wrong type, a count out of range, evidence that
is not a table of numbers: a tampered or damaged row) is dropped with a warning and
its pair verified again; a store that cannot be opened or written (disk full,
read-only, locked) is reported once and the run goes on with verdicts kept in memory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
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
    evidence TEXT,
    PRIMARY KEY (sha_a, sha_b, settings)
) WITHOUT ROWID;
"""
VERDICT_SCHEMA = 2  # 2: with the evidence column
COLUMNS = ("n_matches", "n_inliers", "strength", "score", "model", "evidence")
INSERT = (f"INSERT OR REPLACE INTO verdicts ({', '.join(('sha_a', 'sha_b', 'settings', *COLUMNS))}) "
          f"VALUES ({', '.join('?' * (3 + len(COLUMNS)))})")


def canonical(sha0: str, sha1: str) -> tuple[str, str]:
    return (sha0, sha1) if sha0 <= sha1 else (sha1, sha0)


class BadRow(ValueError):
    """A stored row that does not hold a verdict."""


def _number(value, what: str, finite: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (finite and not math.isfinite(value)):
        raise BadRow(f"{what} is {str(value)[:40]!r}, not a{' finite' if finite else ''} number")
    return float(value)


def _verdict(row) -> dict:
    """The verdict of a stored row; :class:`BadRow` when a value has the wrong type or lies out of range."""
    v = dict(zip(COLUMNS, row))
    for name in ("n_matches", "n_inliers"):
        if isinstance(v[name], bool) or not isinstance(v[name], int) or v[name] < 0:
            raise BadRow(f"{name} is {str(v[name])[:40]!r}, not a count")
    v["strength"], v["score"] = _number(v["strength"], "strength"), _number(v["score"], "score")
    if not (0.0 <= v["score"] <= 1.0) or v["strength"] < 0 or v["n_inliers"] > v["n_matches"]:
        raise BadRow(f"implausible verdict: {v['n_inliers']} inliers of {v['n_matches']} matches, strength "
                     f"{v['strength']}, score {v['score']}")
    try:
        model = json.loads(v["model"]) if v["model"] else None
        ev = json.loads(v["evidence"]) if v["evidence"] else {}
    except (TypeError, ValueError) as exc:
        raise BadRow(f"model or evidence is not JSON ({exc})") from None
    if model is not None:  # a 2x3 (affine) or 3x3 (homography) matrix, row-major
        if not isinstance(model, list) or len(model) not in (6, 9):
            raise BadRow("the fitted model is not a 2x3 or 3x3 matrix")
        for x in model:
            _number(x, "a fitted model's entry")
    if not isinstance(ev, dict):
        raise BadRow(f"evidence is {type(ev).__name__}, not a table of numbers")
    for key, x in ev.items():
        _number(x, f"evidence {str(key)[:40]!r}", finite=False)  # NaN where a value does not apply
    v["model"], v["evidence"] = model, ev
    return v


class VerdictStore:
    """Verdict store. ``path=None`` keeps verdicts in memory only."""

    def __init__(self, path: Path | None, settings: str):
        self.settings = settings
        self.path = Path(path) if path else None
        self.on_disk = False
        self.conn = self._open()

    # -- opening, and what to do when the file is bad

    def _memory(self) -> sqlite3.Connection:
        self.on_disk = False
        return self._init(sqlite3.connect(":memory:", check_same_thread=False))

    def _open(self) -> sqlite3.Connection:
        if self.path is None:
            return self._memory()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._init(sqlite3.connect(self.path, timeout=60, check_same_thread=False))
            self.on_disk = True
            return conn
        except sqlite3.DatabaseError as exc:
            if is_io_problem(exc):
                log.warning("pair cache %s cannot be opened (%s); keeping verdicts in memory only", self.path, exc)
                return self._memory()
            return self._restart(exc)
        except OSError as exc:
            log.warning("pair cache %s cannot be opened (%s); keeping verdicts in memory only", self.path, exc)
            return self._memory()

    def _restart(self, exc: Exception) -> sqlite3.Connection:
        """Move a corrupt store aside and start an empty one (in memory if even that fails)."""
        aside = self.path.with_suffix(self.path.suffix + ".corrupt")
        log.warning("pair cache %s is unreadable (%s); moving it to %s and starting afresh", self.path, exc, aside)
        try:
            if getattr(self, "conn", None) is not None:
                self.conn.close()
            for extra in ("", "-wal", "-shm"):
                src = Path(str(self.path) + extra)
                if src.exists():
                    src.replace(Path(str(aside) + extra))
            conn = self._init(sqlite3.connect(self.path, timeout=60, check_same_thread=False))
            self.on_disk = True
            return conn
        except (OSError, sqlite3.Error) as exc2:
            log.warning("cannot start pair cache %s afresh (%s); keeping verdicts in memory only", self.path, exc2)
            return self._memory()

    @staticmethod
    def _init(conn: sqlite3.Connection) -> sqlite3.Connection:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(SCHEMA)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(verdicts)")}
            if "evidence" not in columns:  # a store of the first layout: its entries stay, under their old keys
                with conn:
                    conn.execute("ALTER TABLE verdicts ADD COLUMN evidence TEXT")
            conn.execute("SELECT count(*) FROM verdicts").fetchone()
        except BaseException:
            conn.close()
            raise
        return conn

    # -- reading and writing

    def get_many(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], dict]:
        """Stored verdicts of the given canonical pairs (missing ones are absent)."""
        found: dict[tuple[str, str], dict] = {}
        bad: dict[tuple[str, str], str] = {}
        try:
            cur = self.conn.cursor()
            for a, b in pairs:
                row = cur.execute(
                    f"SELECT {', '.join(COLUMNS)} FROM verdicts "
                    "WHERE sha_a=? AND sha_b=? AND settings=?",
                    (a, b, self.settings),
                ).fetchone()
                if row is not None:
                    try:
                        found[(a, b)] = _verdict(row)
                    except BadRow as exc:
                        bad[(a, b)] = str(exc)
        except sqlite3.DatabaseError as exc:
            if is_io_problem(exc):
                log.warning("cannot read pair cache %s (%s); verifying the pairs again", self.path, exc)
            elif self.path is not None:
                self.conn = self._restart(exc)
            return {}
        if bad:
            self._drop(bad)
        return found

    def _drop(self, bad: dict[tuple[str, str], str]) -> None:
        """Delete rows that hold no verdict (their pairs are then verified again), with one warning."""
        first = next(iter(bad.values()))
        log.warning("pair cache %s: %d stored verdict(s) unreadable (e.g. %s); dropped, their pairs are verified "
                    "again", self.path or "in memory", len(bad), first)
        try:
            with self.conn:
                self.conn.executemany("DELETE FROM verdicts WHERE sha_a=? AND sha_b=? AND settings=?",
                                      [(a, b, self.settings) for a, b in bad])
        except sqlite3.DatabaseError as exc:
            log.warning("cannot delete them from pair cache %s (%s); they are written over once verified", self.path,
                        exc)

    def rows(self, verdicts: dict[tuple[str, str], dict]) -> list[tuple]:
        """The table rows of these verdicts (canonical pairs) for this store's settings."""
        return [(a, b, self.settings, v["n_matches"], v["n_inliers"], v["strength"], v["score"],
                 json.dumps(v["model"]), json.dumps(v.get("evidence") or {})) for (a, b), v in verdicts.items()]

    def put_many(self, verdicts: dict[tuple[str, str], dict]) -> None:
        rows = self.rows(verdicts)
        try:
            with self.conn:
                self.conn.executemany(INSERT, rows)
        except sqlite3.DatabaseError as exc:
            log.warning("cannot write to pair cache %s (%s); continuing without caching verdicts", self.path, exc)
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()
            self.conn = self._memory()
            with self.conn:
                self.conn.executemany(INSERT, rows)

    def count(self) -> int:
        """Verdicts stored for these settings (0, after moving it aside, if the store turns out corrupt)."""
        try:
            return self.conn.execute("SELECT count(*) FROM verdicts WHERE settings=?", (self.settings,)).fetchone()[0]
        except sqlite3.DatabaseError as exc:
            if is_io_problem(exc) or self.path is None:
                raise
            self.conn = self._restart(exc)
            return 0

    def close(self) -> None:
        self.conn.close()


def is_io_problem(exc: sqlite3.DatabaseError) -> bool:
    """A fault of the disk or of access (full, read-only, locked), not of the file's content."""
    text = str(exc).lower()
    return any(s in text for s in ("locked", "full", "readonly", "read-only", "unable to open", "disk i/o",
                                   "permission", "busy"))
