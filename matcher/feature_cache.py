"""Per-image feature store on disk, keyed by image content hash + extractor settings.

Layout: ``ROOT/features/<settings key>/<sha[:2]>/<sha>.npz`` with the settings
themselves in ``ROOT/features/<settings key>/settings.json``. Entries are
written to a temporary file and renamed, so a killed run never leaves a
half-written entry under the real name; an entry that fails to load (truncated
by a full disk, say) is reported, deleted and recomputed.
"""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .presets import feature_key

log = logging.getLogger(__name__)
FIELDS = ("keypoints", "descriptors", "scores", "size")


class FeatureCache:
    def __init__(self, root: Path | None, extractor_conf: dict):
        self.key = feature_key(extractor_conf)
        self.folder = Path(root) / "features" / self.key if root else None
        self.enabled = self.folder is not None
        if self.enabled:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                settings = self.folder / "settings.json"
                if not settings.exists():
                    with atomic_path(settings) as tmp:
                        tmp.write_text(json.dumps(extractor_conf, indent=2, sort_keys=True))
            except OSError as exc:
                self._disable(exc)

    def _disable(self, exc: OSError) -> None:
        log.warning("feature cache at %s is not writable (%s); continuing without caching features", self.folder, exc)
        self.enabled = False

    def path(self, sha: str) -> Path:
        return self.folder / sha[:2] / f"{sha}.npz"

    def get(self, sha: str) -> dict | None:
        if not self.enabled:
            return None
        path = self.path(sha)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                feats = {k: data[k] for k in FIELDS}
            if len(feats["keypoints"]) != len(feats["descriptors"]):
                raise ValueError("keypoint and descriptor counts differ")
            return feats
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            log.warning("feature cache entry %s is corrupt (%s); dropping it and recomputing", path, exc)
            path.unlink(missing_ok=True)
            return None

    def put(self, sha: str, feats: dict) -> None:
        if not self.enabled:
            return
        try:
            with atomic_path(self.path(sha), suffix=".npz") as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, **{k: feats[k] for k in FIELDS})
        except OSError as exc:
            self._disable(exc)
