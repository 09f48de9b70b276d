"""The visual codebook of stage 0: spherical k-means centroids of local descriptors, saved as JSON.

The file (under ``weights/``) holds float16 centroids in base64 with their own SHA-256
and the settings that built it; ``make codebook`` rebuilds it from the images of the
development scenarios (no labels) with ``training/build_codebook.py``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import WeightsError
from ..io import weights
from ..io.atomic import atomic_path

log = logging.getLogger(__name__)

CODEBOOK_FORMAT = "whalematch-codebook"


@dataclass
class Codebook:
    centroids: np.ndarray  # (K, D) float32, rows L2-normalised
    info: dict  # what built it (extractor key, images, seed, ...)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.centroids.astype(np.float16).tobytes()).hexdigest()

    def save(self, path: Path) -> None:
        c16 = self.centroids.astype(np.float16)
        doc = {
            "format": CODEBOOK_FORMAT,
            "version": int(self.info.get("version", 1)),
            "k": int(c16.shape[0]),
            "dim": int(c16.shape[1]),
            "dtype": "float16",
            "sha256": hashlib.sha256(c16.tobytes()).hexdigest(),
            "info": self.info,
            "centroids": base64.b64encode(c16.tobytes()).decode("ascii"),
        }
        with atomic_path(Path(path), suffix=".json") as tmp:
            tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        weights.record_sum(Path(path))

    @classmethod
    def load(cls, path: Path) -> Codebook:
        try:
            doc = json.loads(Path(path).read_text())
            if doc.get("format") != CODEBOOK_FORMAT:
                raise ValueError("not a whalematch codebook")
            raw = base64.b64decode(doc["centroids"])
            if hashlib.sha256(raw).hexdigest() != doc["sha256"]:
                raise ValueError("checksum mismatch: file corrupt or edited")
            c = np.frombuffer(raw, np.float16).reshape(doc["k"], doc["dim"]).astype(np.float32)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise WeightsError(f"{path}: cannot load codebook ({exc})") from None
        return cls(c, doc.get("info", {}))


def spherical_kmeans(x: np.ndarray, k: int, iters: int = 20, seed: int = 0) -> np.ndarray:
    """Centroids (k, D), L2-normalised, of L2-normalised rows ``x``; k-means++ seeding, fixed seed."""
    import torch

    rng = np.random.default_rng(seed)
    xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    n = len(xt)
    if n < k:
        raise ValueError(f"k-means: {n} descriptors cannot make {k} words")
    # k-means++ on a subsample (cosine distance 1 - x.c)
    sub = xt[torch.from_numpy(rng.choice(n, min(n, 20 * k), replace=False))]
    centres = [sub[int(rng.integers(len(sub)))]]
    dist = 1 - sub @ centres[0]
    for _ in range(1, k):
        p = dist.clamp(min=0).double().numpy()
        p = p / p.sum() if p.sum() > 0 else None
        centres.append(sub[int(rng.choice(len(sub), p=p))])
        dist = torch.minimum(dist, 1 - sub @ centres[-1])
    c = torch.stack(centres)
    for it in range(iters):
        assign = torch.empty(n, dtype=torch.long)
        for s in range(0, n, 65536):
            assign[s : s + 65536] = (xt[s : s + 65536] @ c.T).argmax(1)
        sums = torch.zeros_like(c).index_add_(0, assign, xt)
        counts = torch.bincount(assign, minlength=k)
        empty = counts == 0
        if empty.any():  # re-seed empty words on random descriptors
            sums[empty] = xt[torch.from_numpy(rng.choice(n, int(empty.sum()), replace=False))]
        c = sums / sums.norm(dim=1, keepdim=True).clamp(min=1e-12)
        log.debug("k-means iteration %d: %d empty words", it, int(empty.sum()))
    return c.numpy()


def build_codebook_from_features(features: list[np.ndarray], k: int, per_image: int, iters: int, seed: int,
                                 info: dict) -> Codebook:
    rng = np.random.default_rng(seed)
    parts = []
    for d in features:
        d = np.asarray(d, np.float32)
        if len(d) > per_image:
            d = d[np.sort(rng.choice(len(d), per_image, replace=False))]
        parts.append(d)
    x = np.concatenate(parts)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    log.info("k-means: %d descriptors from %d images into %d words", len(x), len(features), k)
    return Codebook(spherical_kmeans(x, k, iters, seed), {**info, "k": k, "per_image": per_image, "iters": iters,
                                                          "seed": seed, "descriptors": int(len(x))})
