"""Stage 0 of a catalogue search: the K catalogue photos most like a new photo, from the index's embeddings.

Each indexed photo holds the learned global head's int8 unit vector (:mod:`matcher.features.global_head`),
256 bytes. A new photo's similarity to every comparable catalogue photo is one matrix-vector product, done
in blocks converted to float32 (exact: int8 products summed in float32 stay integers below 2**24, so a
similarity never depends on the block or on which other photos are scored), and the K best are kept, ties
broken by index order (deterministic). A flank (left or right) is compared with the opposite flank through
its mirror's embedding, as its pairs are verified.
"""

from __future__ import annotations

import numpy as np

from ..features.global_head import QUANT
from ..io.catalogue import LATERAL, view_group

BLOCK = 1 << 16  # catalogue rows converted to float32 at a time


def similarities(query: np.ndarray, embeddings: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Cosine similarity of one int8 embedding with the int8 ``embeddings`` (or their ``rows``), exact."""
    q = np.asarray(query, np.float32)
    idx = np.arange(len(embeddings)) if rows is None else np.asarray(rows)
    out = np.empty(len(idx), np.float64)
    for start in range(0, len(idx), BLOCK):
        part = idx[start:start + BLOCK]
        out[start:start + len(part)] = embeddings[part].astype(np.float32) @ q
    return out / (QUANT * QUANT)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` largest scores, best first (equal scores in position order)."""
    n = len(scores)
    if k >= n:
        return np.lexsort((np.arange(n), -scores))
    part = np.argpartition(-scores, k - 1)[:k]
    threshold = scores[part].min()
    tied = np.flatnonzero(scores >= threshold)  # every entry level with the K-th, so ties resolve by position
    order = tied[np.lexsort((tied, -scores[tied]))]
    return order[:k]


def view_groups(views) -> np.ndarray:
    """Each catalogue photo's view group (:func:`matcher.io.catalogue.view_group`), once for many searches."""
    return np.array([view_group(v) for v in views], dtype=object)


def comparable_rows(groups: np.ndarray, query_view: str, all_views: bool = False) -> np.ndarray:
    """Rows of catalogue photos (their :func:`view_groups`) comparable with a new photo of ``query_view`` (any
    view when it is unknown or with ``all_views``; photos of unknown view always)."""
    if all_views or not view_group(query_view):
        return np.arange(len(groups))
    return np.flatnonzero((groups == view_group(query_view)) | (groups == ""))


def capped(order: np.ndarray, whales: np.ndarray, per_whale: int) -> np.ndarray:
    """The positions of ``order`` kept when each whale keeps at most ``per_whale`` (an empty id: no limit)."""
    seen: dict = {}
    keep = []
    for i, w in enumerate(whales[order]):
        if not w or seen.get(w, 0) < per_whale:
            seen[w] = seen.get(w, 0) + 1
            keep.append(i)
    return np.asarray(keep, np.int64)


def shortlist(query: np.ndarray, query_mirror: np.ndarray | None, query_view: str, embeddings: np.ndarray,
              views: np.ndarray, k: int, rows: np.ndarray | None = None, whales: np.ndarray | None = None,
              per_whale: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best catalogue rows for a new photo among ``rows`` (default: all), best first, and their
    similarities; with ``whales`` (each row's whale id) and ``per_whale``, at most that many photos of one whale
    (the next best photos of other whales take the places). A flank's opposite flanks are scored with
    ``query_mirror`` (its mirror's embedding)."""
    rows = np.arange(len(embeddings)) if rows is None else np.asarray(rows)
    sims = similarities(query, embeddings, rows)
    if query_mirror is not None and query_view in LATERAL:
        opposite = LATERAL[1 - LATERAL.index(query_view)]
        flip = np.flatnonzero(views[rows] == opposite)
        if len(flip):
            sims[flip] = similarities(query_mirror, embeddings, rows[flip])
    if whales is None or not per_whale:
        best = top_k(sims, k)
        return rows[best], sims[best]
    depth = min(len(rows), 4 * k)
    while True:  # the best ``depth`` rows, capped per whale; deeper until k are kept or every row was looked at
        order = top_k(sims, depth)
        kept = order[capped(rows[order], whales, per_whale)][:k]
        if len(kept) >= k or depth >= len(rows):
            return rows[kept], sims[kept]
        depth = min(len(rows), 4 * depth)
