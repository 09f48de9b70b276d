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

A learned alternative (``model: learned``, preset ``learned-disk``): a small head trained on whale
identities over the same DISK keypoints (:mod:`matcher.features.global_head`), one int8 unit vector
per image, similarity its cosine mapped to [0, 1]. Its weights are found by
:func:`matcher.io.weights.locate`; when asked for and missing, :class:`~matcher.errors.WeightsError`
says how to rebuild them.

The codebook is :mod:`matcher.cascade.codebook`. Stage-0 settings are named presets
(:data:`matcher.presets.GLOBAL_DESCRIPTORS`). Descriptors are cached per image content
hash under ``CACHE/global/<key>/`` (:mod:`matcher.cache`); the key covers the stage-0
settings, the codebook's (or the head's) checksum and the features' cache key.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .. import presets
from ..engine import Engine
from ..errors import WeightsError
from ..features.global_head import GlobalHead, flip_average
from ..features.global_head import similarity as cosine
from ..features.stage import mirror_key
from ..io import weights
from ..io.array_store import ArrayStore
from .codebook import Codebook

log = logging.getLogger(__name__)

QUANT = 127  # int8 scale of the aggregated word vectors


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
    """Global descriptors per image content hash, computed from the engine's local features and cached."""

    def __init__(self, name: str, engine: Engine, head_path: Path | None = None):
        """``head_path``: for a learned descriptor, this head file instead of the preset's."""
        if name not in presets.GLOBAL_DESCRIPTORS:
            raise KeyError(f"unknown global descriptor {name!r}; "
                           f"choose one of {', '.join(sorted(presets.GLOBAL_DESCRIPTORS))}")
        self.name = name
        self.engine = engine
        self.conf = dict(presets.GLOBAL_DESCRIPTORS[name])
        self.codebook: Codebook | None = None
        self.head: GlobalHead | None = None
        digest = None
        if self.conf["model"] == "learned":
            path = Path(head_path) if head_path is not None else weights.locate(self.conf["weights"])
            if path is None:
                raise WeightsError(f"stage 0 {name!r}: the global head {self.conf['weights']} is not in "
                                   f"{' or '.join(str(d) for d in weights.project_dirs())}; rebuild it with "
                                   "`make train-global`, or choose another --global-descriptor")
            self.head = GlobalHead.load(path)
            digest = weights.file_sha256(path)
        elif self.conf["model"] == "asmk":
            path = weights.locate(self.conf["codebook"])
            if path is None:
                log.warning("stage 0: codebook %s not found; passing every candidate through", self.conf["codebook"])
                self.conf = dict(presets.GLOBAL_DESCRIPTORS["none"])
            else:
                self.codebook = Codebook.load(path)
                made_for = presets.extractor_settings_key(engine.conf["extractor"])
                if self.codebook.info.get("extractor") not in (None, made_for):
                    log.warning("stage 0: codebook %s was built for %s, not %s", path.name,
                                self.codebook.info.get("extractor"), made_for)
        self.enabled = self.conf["model"] != "none"
        key_parts = {"global": self.conf, "codebook": self.codebook.digest if self.codebook else None,
                     "features": engine.feature_key}
        if digest is not None:
            key_parts["head"] = digest
        self.key = presets.settings_key(f"{name}", key_parts)
        folder = engine.cache.global_descriptors(self.key) if self.enabled else None
        fields = ("emb",) if self.head is not None else ("words", "vecs")
        self.store = ArrayStore(folder, fields, "global descriptor", settings=key_parts)
        self.loaded: dict[str, dict] = {}
        self.computed = 0

    def describe(self, shas) -> None:
        """Compute (or load) the global descriptors of prepared images."""
        if not self.enabled:
            return
        stored = {}
        for sha in shas:
            if sha not in self.loaded:
                stored[sha] = self.store.get(sha)
        if self.head is not None and self.conf.get("flip"):  # the mirrors of the images still to describe
            todo = {sha: self.engine.image_paths[sha] for sha, g in stored.items() if g is None}
            if todo:
                self.engine.mirrored_features(todo)
        for sha, g in stored.items():
            if g is None and self.head is not None:
                emb = self.head.embed(self.engine.feature(sha))
                if self.conf.get("flip"):
                    emb = flip_average(emb, self.head.embed(self.engine.feature(mirror_key(sha))))
                g = {"emb": emb}
                self.store.put(sha, g)
                self.computed += 1
            elif g is None:
                descriptors = self.engine.feature(sha)["descriptors"]
                centroids = (self.codebook.centroids if self.codebook is not None
                             else np.zeros((1, descriptors.shape[1]), np.float32))
                g = aggregate(descriptors, centroids)
                self.store.put(sha, g)
                self.computed += 1
            self.loaded[sha] = g

    def scores(self, query_sha: str, database_shas: list[str]) -> np.ndarray:
        """Stage-0 similarity of one query with each database image (zeros when stage 0 is off)."""
        if not self.enabled or not database_shas:
            return np.zeros(len(database_shas))
        return self.score_block([query_sha], database_shas)[0]

    def score_block(self, query_shas: list[str], database_shas: list[str]) -> np.ndarray:
        """Stage-0 similarities of several queries with one database, (nq, nd); entries as :meth:`scores`."""
        if not self.enabled:
            return np.zeros((len(query_shas), len(database_shas)))
        if self.head is not None:  # cosine of int8 unit vectors, mapped to [0, 1]: exact per pair
            if not query_shas or not database_shas:
                return np.zeros((len(query_shas), len(database_shas)))
            q = np.stack([self.loaded[s]["emb"] for s in query_shas])
            d = np.stack([self.loaded[s]["emb"] for s in database_shas])
            return (1.0 + np.clip(cosine(q, d), -1.0, 1.0)) / 2.0  # int8 rounding can pass 1 by a hair
        return similarity_matrix([self.loaded[s] for s in query_shas], [self.loaded[s] for s in database_shas],
                                 self.conf)
