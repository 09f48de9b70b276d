"""A per-image store of named numpy arrays on disk, one ``.npz`` file per image content hash.

Layout: ``FOLDER/<sha[:2]>/<sha>.npz``, with the settings that produced the entries in
``FOLDER/settings.json``; the folder's name is the cache key (see :mod:`matcher.cache`).
Entries are written to a temporary file and renamed, so a killed run never leaves a
half-written entry under the real name; an entry that fails to load or to pass ``check``
(truncated by a full disk, a flipped bit caught by the zip's CRC-32, a foreign file) is
reported, deleted and recomputed by the caller. A store that cannot be written (disk full,
read-only) is reported once; the run goes on without writing, still reading the entries
that are there. ``folder=None`` stores nothing.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .atomic import atomic_path

log = logging.getLogger(__name__)


class ArrayStore:
    """Entries of the arrays ``fields`` per content hash under ``folder``; ``what`` names them in messages."""

    def __init__(self, folder: Path | None, fields: tuple[str, ...], what: str,
                 check: Callable[[dict], None] | None = None, settings: dict | None = None):
        self.folder = Path(folder) if folder else None
        self.fields = tuple(fields)
        self.what = what
        self.check = check
        self.enabled = self.folder is not None  # entries are read
        self.writable = self.enabled  # entries are written
        self.dropped = 0  # corrupt entries found and deleted
        self._lock = threading.Lock()
        if self.enabled:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                path = self.folder / "settings.json"
                if settings is not None and not path.exists():
                    with atomic_path(path) as tmp:
                        tmp.write_text(json.dumps(settings, indent=2, sort_keys=True))
            except OSError as exc:
                self._disable(exc)
                self.enabled = self.folder.is_dir()

    def _disable(self, exc: OSError) -> None:
        with self._lock:  # entries are written from a thread pool: report once
            was, self.writable = self.writable, False
        if was:
            log.warning("%s cache at %s is not writable (%s); continuing without caching %ss",
                        self.what, self.folder, exc, self.what)

    def path(self, sha: str) -> Path:
        return self.folder / sha[:2] / f"{sha}.npz"

    def has(self, sha: str) -> bool:
        return self.enabled and self.path(sha).is_file()

    def get(self, sha: str) -> dict | None:
        """The entry's arrays, or ``None`` when it is absent or corrupt (a corrupt one is deleted)."""
        if not self.enabled:
            return None
        path = self.path(sha)
        try:
            if not path.is_file():
                return None
            with np.load(path, allow_pickle=False) as data:
                entry = {k: data[k] for k in self.fields}
            if self.check is not None:
                self.check(entry)
            return entry
        except Exception as exc:  # noqa: BLE001 - whatever is wrong with an entry, it is recomputed
            with self._lock:
                self.dropped += 1
            log.warning("%s cache entry %s is corrupt (%s: %s); dropping it and recomputing",
                        self.what, path, type(exc).__name__, exc)
            try:
                path.unlink(missing_ok=True)
            except OSError as unlink_exc:
                log.warning("cannot delete %s (%s)", path, unlink_exc)
            return None

    def put(self, sha: str, entry: dict) -> None:
        if not self.writable:
            return
        try:
            with atomic_path(self.path(sha), suffix=".npz") as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, **{k: entry[k] for k in self.fields})
        except OSError as exc:
            self._disable(exc)
