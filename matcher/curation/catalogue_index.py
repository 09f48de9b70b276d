"""The catalogue's persistent index: one row per catalogue photo with what a search needs of it, kept in the cache.

``CACHE/index/<catalogue stem>-<12 hex of the metadata file's resolved path>.sqlite`` holds, per photo: its
id, file (path, size, modification time), content hash (the key of its features, verdicts and everything
else cached), viewpoint, whale id, date and encounter, its stage-0 embedding (int8 unit vector of the
global head, :mod:`matcher.cascade.global_descriptors`) or why the photo is unusable.

* **Settings.** The ``meta`` table names the settings key the rows were made with (the stage-0 key, which
  covers the head's checksum, the features' key, the runtime and the software versions). An index made
  with other settings is rebuilt, with a message; a file that is no index (or is corrupt) is moved aside.
* **Consistency.** A search reads the published rows (``photos``) in one transaction. An update writes
  the rows it (re)makes into ``pending``, committed every few dozen photos, and publishes them, removals
  included, in a single transaction at its end: a search running beside an update sees the index before
  or after it, never half of it (SQLite's write-ahead log: readers never wait for the writer).
* **Resuming.** A killed update leaves its committed ``pending`` rows (and the features it cached); the
  next one takes every pending row whose file is unchanged, so it goes on where the first stopped.

The rows are plain data (:class:`Entry`); what updates them is :mod:`.indexing`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..pairs.store import is_io_problem

log = logging.getLogger(__name__)

FORMAT = 1  # the layout of the tables below; part of the settings an index is checked against
COLUMNS = ("image_id", "path", "size", "mtime_ns", "sha", "viewpoint", "whale_id", "date", "encounter_id",
           "embedding", "error")
TABLE = """CREATE TABLE IF NOT EXISTS {name} (
    image_id TEXT PRIMARY KEY, path TEXT NOT NULL, size INTEGER, mtime_ns INTEGER, sha TEXT,
    viewpoint TEXT, whale_id TEXT, date TEXT, encounter_id TEXT, embedding BLOB, error TEXT)"""
SCHEMA = ("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
          TABLE.format(name="photos"), TABLE.format(name="pending"))


@dataclass(frozen=True)
class Entry:
    """One catalogue photo as the index holds it."""

    image_id: str
    path: str  # absolute
    size: int
    mtime_ns: int
    sha: str  # content hash ("" when the file could not be read)
    viewpoint: str = ""
    whale_id: str = ""
    date: str = ""
    encounter_id: str = ""
    embedding: bytes | None = None  # int8 stage-0 vector; None when unusable
    error: str = ""  # why the photo is unusable

    @property
    def usable(self) -> bool:
        return self.embedding is not None and not self.error

    def row(self) -> tuple:
        return tuple(getattr(self, c) for c in COLUMNS)


@dataclass
class Snapshot:
    """The published rows of an index as arrays (row i of each is one photo), usable photos first."""

    entries: list[Entry]
    embeddings: np.ndarray  # (n usable, dim) int8, row i = entries[i]

    @property
    def usable(self) -> list[Entry]:
        return self.entries[: len(self.embeddings)]

    def rows(self) -> dict[str, int]:
        """Each usable photo's row of :attr:`embeddings`, by image id."""
        return {e.image_id: i for i, e in enumerate(self.usable)}


def index_path(cache_root: Path, catalogue_file: Path) -> Path:
    """Where the index of a catalogue (its metadata CSV, or the folder of images) is kept in a cache folder."""
    real = os.path.realpath(catalogue_file)
    digest = hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(real).stem)[:40] or "catalogue"
    return Path(cache_root) / "index" / f"{stem}-{digest}.sqlite"


class CatalogueIndex:
    """The index file at ``path`` for the settings ``settings`` (a dict: what made the rows; its digest is the
    key). ``create=False`` opens only an index that exists (:meth:`exists` says whether one does)."""

    def __init__(self, path: Path, settings: dict, create: bool = True):
        self.path = Path(path)
        self.settings = settings
        self.key = hashlib.sha256(json.dumps({"format": FORMAT, **settings}, sort_keys=True).encode()).hexdigest()[:16]
        self.mismatch = ""  # why the index found here does not fit the settings ("": it does, or none was there)
        self.conn: sqlite3.Connection | None = None
        if create or self.path.is_file():
            self.conn = self._open(reset=create)

    @property
    def exists(self) -> bool:
        """Whether there is an index (of these settings or not: :attr:`mismatch`) to read."""
        return self.conn is not None or bool(self.mismatch)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=120, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            with conn:
                for statement in SCHEMA:
                    conn.execute(statement)
        except BaseException:
            conn.close()
            raise
        return conn

    def _open(self, reset: bool) -> sqlite3.Connection:
        """The connection; with ``reset`` (an update), an index of other settings is emptied and a file that is no
        index moved aside; without (a search), they are only reported (:attr:`mismatch`)."""
        try:
            conn = self._connect()
            found = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            if is_io_problem(exc):
                raise DataError(f"{self.path}: the catalogue index cannot be opened ({exc})") from None
            if not reset:
                self.mismatch = f"the file is unreadable ({exc})"
                return None
            self._move_aside(exc)
            conn = self._connect()
            found = {}
        if found.get("key") not in (None, self.key):
            self.mismatch = _difference(found, self.settings)
            if not reset:
                return conn
            log.warning("%s: the index was built with other settings (%s); rebuilding it", self.path, self.mismatch)
            with conn:
                conn.execute("DELETE FROM photos")
                conn.execute("DELETE FROM pending")
                conn.execute("DELETE FROM meta")
        if found.get("key") != self.key and reset:
            with conn:
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('key', ?)", (self.key,))
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('settings', ?)",
                             (json.dumps({"format": FORMAT, **self.settings}, sort_keys=True),))
        return conn

    def _move_aside(self, exc: Exception) -> None:
        aside = self.path.with_suffix(self.path.suffix + ".corrupt")
        log.warning("%s is not a readable catalogue index (%s); moving it to %s and building afresh", self.path,
                    exc, aside)
        self.mismatch = f"the file was unreadable ({exc})"
        for extra in ("", "-wal", "-shm"):
            src = Path(str(self.path) + extra)
            if src.exists():
                src.replace(Path(str(aside) + extra))

    # -- reading

    def published(self) -> dict[str, Entry]:
        """The published rows by image id."""
        return self._read("photos")

    def pending(self) -> dict[str, Entry]:
        """Rows an unfinished update made and did not publish yet."""
        return self._read("pending")

    def _read(self, table: str) -> dict[str, Entry]:
        if self.conn is None:
            return {}
        rows = self.conn.execute(f"SELECT {', '.join(COLUMNS)} FROM {table} ORDER BY image_id").fetchall()
        return {r[0]: Entry(*r[:3], int(r[3] or 0), *(v or "" for v in r[4:9]), r[9], r[10] or "") for r in rows}

    def snapshot(self) -> Snapshot:
        """The published rows as arrays (one read transaction: a consistent index even during an update); a
        :class:`DataError` naming the file when the embeddings are not all of one length."""
        entries = list(self.published().values())
        usable = [e for e in entries if e.usable]
        dim = len(usable[0].embedding) if usable else 0
        bad = [e.image_id for e in usable if len(e.embedding) != dim]
        if bad:
            raise DataError(f"{self.path}: {len(bad)} embedding(s) of the wrong length (e.g. {bad[0]}); "
                            "rebuild the index (delete the file and run whalematch index)")
        emb = (np.frombuffer(b"".join(e.embedding for e in usable), np.int8).reshape(len(usable), dim)
               if usable else np.zeros((0, dim), np.int8))
        return Snapshot(usable + [e for e in entries if not e.usable], emb)

    # -- writing

    def stage(self, entries: list[Entry]) -> None:
        """Commit rows of an update in progress (kept if the update is killed)."""
        with self.conn:
            self.conn.executemany(f"INSERT OR REPLACE INTO pending ({', '.join(COLUMNS)}) VALUES "
                                  f"({', '.join('?' * len(COLUMNS))})", [e.row() for e in entries])

    def drop_pending(self, image_ids) -> None:
        """Forget pending rows (of a stopped update) that are to be made again."""
        with self.conn:
            self.conn.executemany("DELETE FROM pending WHERE image_id = ?", [(i,) for i in image_ids])

    def publish(self, keep: set[str], relabelled: list[Entry]) -> None:
        """In one transaction: the pending rows become published, published rows not in ``keep`` (image ids of
        the catalogue) are removed, and ``relabelled`` rows (metadata changed, file not) are written."""
        cols = ", ".join(COLUMNS)
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute(f"INSERT OR REPLACE INTO photos ({cols}) SELECT {cols} FROM pending")
            self.conn.execute("DELETE FROM pending")
            self.conn.executemany(f"INSERT OR REPLACE INTO photos ({cols}) VALUES ({', '.join('?' * len(COLUMNS))})",
                                  [e.row() for e in relabelled])
            gone = [(i,) for (i,) in self.conn.execute("SELECT image_id FROM photos") if i not in keep]
            self.conn.executemany("DELETE FROM photos WHERE image_id = ?", gone)

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()
            self.conn = None


def _difference(found: dict, settings: dict) -> str:
    """Which settings differ between an index's ``meta`` and ``settings``, in words."""
    try:
        old = json.loads(found.get("settings", "{}"))
    except ValueError:
        return "its settings are unreadable"
    new = {"format": FORMAT, **settings}
    names = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "differs in " + ", ".join(names) if names else "another key"

