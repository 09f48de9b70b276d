"""The cache layout and the keys that say exactly what produced each entry.

One cache folder holds everything a run computes::

    ROOT/features/<feature key>/<sha[:2]>/<sha>.npz    per-image features (matcher.features)
    ROOT/global/<global key>/<sha[:2]>/<sha>.npz       per-image global descriptors (matcher.cascade)
    ROOT/pairs.sqlite                                 pair verdicts, keyed by (sha_a, sha_b, verdict key)
    ROOT/exports/<export key>.onnx                    a network exported for another runtime (matcher.features)

A key is ``<name>-<12 hex>``, the digest of the stage settings (the presets) together with
what made the entry: the versions of torch, kornia and OpenCV, the SHA-256 of the weight
files the settings load and the image decoder's limits. Any change to one of them gives new
keys, so an upgrade recomputes and never silently reuses old features or verdicts.
``ROOT=None`` keeps everything in memory.
"""

from __future__ import annotations

import importlib.metadata
from functools import lru_cache
from pathlib import Path

from . import presets
from .features import runtimes
from .io import images, weights
from .pairs.store import VERDICT_SCHEMA

PACKAGES = ("torch", "kornia")


@lru_cache(maxsize=None)
def software() -> dict[str, str]:
    """Versions of the libraries whose numerics an entry depends on (read without importing torch)."""
    import cv2

    versions = {"opencv": cv2.__version__}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def provenance(conf: dict, runtime: str = "torch") -> dict:
    """What, besides a resolved pipeline preset's settings, decides its entries: software, weights, how images
    are decoded (the size limit and the scale large images decode at) and where the network ran (a runtime
    other than PyTorch, the reference, :mod:`matcher.features.runtimes`)."""
    return {"software": software(), "weights": weights.digest_for(conf), "decoder": images.DECODER,
            **runtimes.provenance(runtime)}


def feature_key(conf: dict, runtime: str = "torch") -> str:
    """Cache key of one extractor's features (``conf``: a resolved pipeline preset)."""
    ex = conf["extractor"]
    return presets.settings_key(ex["name"], {"settings": ex, **provenance({"extractor": ex}, runtime)})


def verdict_key(conf: dict, runtime: str = "torch") -> str:
    """Cache key of a pair verdict: the features, the matches and the geometric model."""
    name = "+".join(conf[stage]["name"] for stage in presets.STAGES)
    return presets.settings_key(name, {"settings": presets.verdict_settings_key(conf), "layout": VERDICT_SCHEMA,
                                       **provenance(conf, runtime)})


class CacheLayout:
    """Where a run keeps what it computes (``root=None``: nowhere, everything stays in memory)."""

    def __init__(self, root: Path | None):
        self.root = Path(root) if root else None

    def features(self, key: str) -> Path | None:
        return self.root / "features" / key if self.root else None

    @property
    def exports(self) -> Path | None:
        return self.root / "exports" if self.root else None

    def global_descriptors(self, key: str) -> Path | None:
        return self.root / "global" / key if self.root else None

    @property
    def verdicts(self) -> Path | None:
        return self.root / "pairs.sqlite" if self.root else None

    def describe(self) -> str:
        return str(self.root) if self.root else "memory only"
