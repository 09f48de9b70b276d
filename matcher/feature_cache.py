"""Per-image feature store on disk, keyed by image content hash + extractor settings.

Layout: ``ROOT/features/<settings key>/<sha[:2]>/<sha>.npz`` with the settings
themselves in ``ROOT/features/<settings key>/settings.json``. Entries are
written to a temporary file and renamed, so a killed run never leaves a
half-written entry under the real name; an entry that fails to load or to pass
the shape checks (truncated by a full disk, a flipped bit caught by the zip's
CRC-32, a foreign file) is reported, deleted and recomputed. A cache that cannot
be written (disk full, read-only) is reported once; the run goes on without
writing, still reading the entries that are there.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .presets import feature_key

log = logging.getLogger(__name__)
FIELDS = ("keypoints", "descriptors", "scores", "size")


def check(feats: dict) -> None:
    """Raise ValueError unless ``feats`` has the shapes and types of an extractor's output."""
    kp, desc, scores, size = (np.asarray(feats[k]) for k in FIELDS)
    n = len(kp)
    if kp.ndim != 2 or kp.shape[1] != 2:
        raise ValueError(f"keypoints have shape {kp.shape}, expected (N, 2)")
    if desc.ndim != 2 or len(desc) != n or (n and desc.shape[1] == 0):
        raise ValueError(f"descriptors have shape {desc.shape} for {n} keypoints")
    if scores.shape != (n,):
        raise ValueError(f"scores have shape {scores.shape} for {n} keypoints")
    if size.shape != (2,) or (size <= 0).any():
        raise ValueError(f"size is {size.tolist()}, expected two positive numbers")
    for name, arr in (("keypoints", kp), ("descriptors", desc), ("scores", scores)):
        if arr.dtype.kind not in "fiu" or not np.isfinite(arr).all():
            raise ValueError(f"{name} are not finite numbers")


class FeatureCache:
    def __init__(self, root: Path | None, extractor_conf: dict):
        self.key = feature_key(extractor_conf)
        self.folder = Path(root) / "features" / self.key if root else None
        self.enabled = self.folder is not None  # entries are read
        self.writable = self.enabled  # entries are written
        self.dropped = 0  # corrupt entries found and deleted
        self._lock = threading.Lock()
        if self.enabled:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                settings = self.folder / "settings.json"
                if not settings.exists():
                    with atomic_path(settings) as tmp:
                        tmp.write_text(json.dumps(extractor_conf, indent=2, sort_keys=True))
            except OSError as exc:
                self._disable(exc)
                self.enabled = self.folder.is_dir()

    def _disable(self, exc: OSError) -> None:
        with self._lock:  # entries are written from a thread pool: report once
            was, self.writable = self.writable, False
        if was:
            log.warning("feature cache at %s is not writable (%s); continuing without caching features",
                        self.folder, exc)

    def path(self, sha: str) -> Path:
        return self.folder / sha[:2] / f"{sha}.npz"

    def get(self, sha: str) -> dict | None:
        if not self.enabled:
            return None
        path = self.path(sha)
        try:
            if not path.is_file():
                return None
            with np.load(path, allow_pickle=False) as data:
                feats = {k: data[k] for k in FIELDS}
            check(feats)
            return feats
        except Exception as exc:  # noqa: BLE001 - whatever is wrong with an entry, it is recomputed
            with self._lock:
                self.dropped += 1
            log.warning("feature cache entry %s is corrupt (%s: %s); dropping it and recomputing",
                        path, type(exc).__name__, exc)
            try:
                path.unlink(missing_ok=True)
            except OSError as unlink_exc:
                log.warning("cannot delete %s (%s)", path, unlink_exc)
            return None

    def put(self, sha: str, feats: dict) -> None:
        if not self.writable:
            return
        try:
            with atomic_path(self.path(sha), suffix=".npz") as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, **{k: feats[k] for k in FIELDS})
        except OSError as exc:
            self._disable(exc)
