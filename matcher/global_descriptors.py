"""Stage 0 of the shortlist cascade: a global descriptor per image and a similarity between two.

The descriptor is an ASMK aggregation (Tolias, Avrithis & Jegou, "To aggregate
or not to aggregate: selective match kernels for image search", ICCV 2013) of
the image's local descriptors (DISK by default) over a visual codebook fitted
on the development photos with spherical k-means:

* every local descriptor is assigned to its nearest visual word;
* per word present in the image, the residuals (descriptor - word) are summed
  and L2-normalised (one vector per word: burstiness is aggregated away);
* the vectors are quantised to int8 (x 127), so storing them is compact and
  dot products of two images are exact integers whatever the BLAS kernel or
  batch shape: a similarity never depends on which other images are scored
  with it;
* the similarity of two images is ``sum over shared words c of
  sigma(u_c) / sqrt(n_words(a) * n_words(b))`` with ``u_c`` the cosine of the
  two word vectors and the selective kernel ``sigma(u) = sign(u) |u|^alpha``
  for ``u > tau``, else 0.

Plain mean or GeM pooling of DISK descriptors is no better than chance on
these photos (every image is a white whale on grey water); the selective
kernel keeps only words whose residuals agree closely, which behaves like a
cheap, geometry-free count of matching marks. ``benchmarks/cascade.py``
measures whether it earns its place; the cascade passes every candidate
through when no codebook is available (``model: none``).

The codebook is a small JSON file under ``weights/`` (float16 centroids,
base64) with its own SHA-256 and the settings that built it; ``make codebook``
rebuilds it from the development scenarios::

    python -m matcher.global_descriptors --data-dir data/dev --cache-dir submission/cache \
        --out weights/codebook-disk-k1024-v1.json

Descriptors are cached per image content hash under
``CACHE/global/<settings key>/<sha[:2]>/<sha>.npz``; the key covers the
stage-0 settings, the codebook's checksum and the extractor's settings.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import presets
from .atomic import atomic_path
from .errors import WeightsError

log = logging.getLogger(__name__)

CODEBOOK_FORMAT = "whalematch-codebook"
QUANT = 127  # int8 scale of the aggregated word vectors

# Stage-0 settings, by name. ``codebook`` is a file name looked for like the
# pretrained weights (``$WHALEMATCH_WEIGHTS_DIR``, then ``weights/``).
GLOBALS: dict[str, dict] = {
    "asmk-disk": {"model": "asmk", "codebook": "codebook-disk-k1024-v1.json", "alpha": 3.0, "tau": 0.0},
    # Plain mean pooling, for comparison (the benchmark's baseline): ASMK with one all-zero word.
    "mean-disk": {"model": "mean", "alpha": 1.0, "tau": -1.0},
    "none": {"model": "none"},
}
DEFAULT_FOR_EXTRACTOR = {"disk": "asmk-disk"}  # others: stage 0 off unless asked for


# ---------------------------------------------------------------- codebook


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


def find_codebook(name: str) -> Path | None:
    from . import weights

    import os

    folders = [Path(os.environ["WHALEMATCH_WEIGHTS_DIR"])] if os.environ.get("WHALEMATCH_WEIGHTS_DIR") else []
    for folder in folders + [weights.WEIGHTS_DIR]:
        if (folder / name).is_file():
            return folder / name
    return None


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


# ---------------------------------------------------------------- descriptors


def aggregate(descriptors: np.ndarray, centroids: np.ndarray) -> dict:
    """ASMK descriptor of one image: ``words`` (n,) int32 sorted, ``vecs`` (n, D) int8."""
    d = np.asarray(descriptors, np.float32)
    dim = centroids.shape[1]
    if len(d) == 0:
        return {"words": np.zeros(0, np.int32), "vecs": np.zeros((0, dim), np.int8)}
    assign = (d @ centroids.T).argmax(1)
    resid = d - centroids[assign]
    words = np.unique(assign)
    sums = np.zeros((len(words), dim), np.float64)
    np.add.at(sums, np.searchsorted(words, assign), resid)
    norms = np.linalg.norm(sums, axis=1)
    keep = norms > 1e-6
    vecs = np.round(sums[keep] / norms[keep, None] * QUANT).astype(np.int8)
    return {"words": words[keep].astype(np.int32), "vecs": vecs}


def similarity_matrix(queries: list[dict], database: list[dict], conf: dict) -> np.ndarray:
    """ASMK similarity (nq, nd) of every query descriptor with every database descriptor.

    Exact per pair: int8 products summed in float32 stay integers below 2**24,
    and each entry accumulates its words in increasing word order, so an entry
    is the same whatever else is in either list.
    """
    nq, nd = len(queries), len(database)
    out = np.zeros((nq, nd), np.float64)
    if nq == 0 or nd == 0:
        return out
    alpha, tau = float(conf.get("alpha", 3.0)), float(conf.get("tau", 0.0))

    def stack(descs):
        words = np.concatenate([g["words"] for g in descs]).astype(np.int64)
        owner = np.concatenate([np.full(len(g["words"]), i, np.int64) for i, g in enumerate(descs)])
        vecs = np.concatenate([g["vecs"] for g in descs]).astype(np.float32)
        order = np.argsort(words, kind="stable")
        return words[order], owner[order], vecs[order]

    qw, qo, qv = stack(queries)
    dw, do, dv = stack(database)
    shared = np.intersect1d(qw, dw)
    qs, qe = np.searchsorted(qw, shared), np.searchsorted(qw, shared, side="right")
    ds, de = np.searchsorted(dw, shared), np.searchsorted(dw, shared, side="right")
    for a0, a1, b0, b1 in zip(qs, qe, ds, de):
        u = (qv[a0:a1] @ dv[b0:b1].T).astype(np.float64) / (QUANT * QUANT)
        s = np.where(u > tau, np.sign(u) * np.abs(u) ** alpha, 0.0)
        out[np.ix_(qo[a0:a1], do[b0:b1])] += s
    nq_words = np.array([max(1, len(g["words"])) for g in queries], np.float64)
    nd_words = np.array([max(1, len(g["words"])) for g in database], np.float64)
    return out / np.sqrt(np.outer(nq_words, nd_words))


class GlobalStage:
    """Global descriptors per image content hash, computed from local features and cached."""

    def __init__(self, name: str, extractor_conf: dict, cache_dir: Path | None):
        if name not in GLOBALS:
            raise KeyError(f"unknown global descriptor {name!r}; choose one of {', '.join(sorted(GLOBALS))}")
        self.name = name
        self.conf = dict(GLOBALS[name])
        self.codebook: Codebook | None = None
        if self.conf["model"] == "asmk":
            path = find_codebook(self.conf["codebook"])
            if path is None:
                log.warning("stage 0: codebook %s not found; passing every candidate through", self.conf["codebook"])
                self.conf = dict(GLOBALS["none"])
            else:
                self.codebook = Codebook.load(path)
                if self.codebook.info.get("extractor") not in (None, presets.feature_key(extractor_conf)):
                    log.warning("stage 0: codebook %s was built for %s, not %s", path.name,
                                self.codebook.info.get("extractor"), presets.feature_key(extractor_conf))
        self.enabled = self.conf["model"] != "none"
        key_parts = {"global": self.conf, "codebook": self.codebook.digest if self.codebook else None,
                     "extractor": presets.feature_key(extractor_conf)}
        self.key = presets.settings_key(f"{name}", key_parts)
        self.folder = Path(cache_dir) / "global" / self.key if (cache_dir and self.enabled) else None
        self.loaded: dict[str, dict] = {}
        self.computed = 0

    def _path(self, sha: str) -> Path:
        return self.folder / sha[:2] / f"{sha}.npz"

    def _get(self, sha: str) -> dict | None:
        if self.folder is None or not self._path(sha).exists():
            return None
        try:
            with np.load(self._path(sha), allow_pickle=False) as z:
                return {"words": z["words"], "vecs": z["vecs"]}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            log.warning("global descriptor cache entry %s is corrupt (%s); recomputing", self._path(sha), exc)
            self._path(sha).unlink(missing_ok=True)
            return None

    def _put(self, sha: str, g: dict) -> None:
        if self.folder is None:
            return
        try:
            with atomic_path(self._path(sha), suffix=".npz") as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, words=g["words"], vecs=g["vecs"])
        except OSError as exc:
            log.warning("global descriptor cache %s is not writable (%s); keeping them in memory", self.folder, exc)
            self.folder = None

    def describe(self, features: dict[str, dict]) -> dict[str, dict]:
        """Global descriptor per content hash of the given local features (cached)."""
        if not self.enabled:
            return {}
        for sha, feats in features.items():
            if sha in self.loaded:
                continue
            g = self._get(sha)
            if g is None:
                centroids = (self.codebook.centroids if self.codebook is not None
                             else np.zeros((1, feats["descriptors"].shape[1]), np.float32))
                g = aggregate(feats["descriptors"], centroids)
                self._put(sha, g)
                self.computed += 1
            self.loaded[sha] = g
        return {sha: self.loaded[sha] for sha in features}

    def scores(self, query_sha: str, database_shas: list[str]) -> np.ndarray:
        """Stage-0 similarity of one query with each database image (zeros when stage 0 is off)."""
        if not self.enabled or not database_shas:
            return np.zeros(len(database_shas))
        return similarity_matrix([self.loaded[query_sha]], [self.loaded[s] for s in database_shas], self.conf)[0]

    def score_block(self, query_shas: list[str], database_shas: list[str]) -> np.ndarray:
        """Stage-0 similarities of several queries with one database, (nq, nd); entries as :meth:`scores`."""
        if not self.enabled:
            return np.zeros((len(query_shas), len(database_shas)))
        return similarity_matrix([self.loaded[s] for s in query_shas], [self.loaded[s] for s in database_shas],
                                 self.conf)


# ---------------------------------------------------------------- codebook command


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


def main(argv=None) -> int:
    from . import data as data_mod
    from . import settings
    from .errors import WhaleMatchError
    from .pipeline import Engine

    p = argparse.ArgumentParser(description="Fit the stage-0 codebook on the images of a scenario folder.")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--cache-dir", type=Path, default=settings.default_cache_dir())
    p.add_argument("--preset", default=presets.DEFAULT_PIPELINE, choices=sorted(presets.PIPELINES))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--k", type=int, default=1024)
    p.add_argument("--per-image", type=int, default=256, help="descriptors sampled per image")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--version", type=int, default=1)
    args = p.parse_args(argv)
    settings.setup_logging()
    try:
        challenge = data_mod.load(args.data_dir)
        engine = Engine(args.preset, args.cache_dir, "cpu", progress=True)
        ids = set()
        for sc in challenge.scenarios:
            ids.update(sc.queries["query_image_id"])
            ids.update(sc.database)
        shas, _ = engine.prepare_images(challenge, ids)
        feats = engine.feature_stage.loaded
        order = sorted(set(shas.values()))
        info = {"extractor": engine.feature_stage.cache.key, "images": len(order), "version": args.version,
                "built_from": "labelled development scenarios (images only, no labels)"}
        book = build_codebook_from_features([feats[s]["descriptors"] for s in order], args.k, args.per_image,
                                            args.iters, args.seed, info)
    except WhaleMatchError as exc:
        log.error("%s", exc)
        return 2
    book.save(args.out)
    log.info("wrote %s (%d words, sha256 %s)", args.out, len(book.centroids), book.digest[:12])
    return 0


if __name__ == "__main__":
    sys.exit(main())
