"""Re-ranking with the database's own structure (pure functions, no I/O).

Photos of one whale in a database verify strongly with each other (same encounter,
or the same marks seen again). A query that verifies strongly with one of them is
probably the same whale as the others too, even where its direct verdict with them is
weak (another angle, other light, a mark half hidden). AP@20 rewards finding *all*
of a whale's photos, so pulling those up helps exactly where direct verification is
weakest.

Inputs, for one query and its candidates (its scenario's database without its own
image), all scores in [0, 1] (the engine's pair scores):

    query_scores  (n,)    query -> candidate i
    db_scores     (n, n)  candidate i <-> candidate j (symmetric; the diagonal is ignored)

Modes:

``max-path``
    ``s'_i = max(s_i, weight * max_j min(s_j, W_ji))``: the strength of the best path
    query -> j -> i, where a path is as strong as its weakest link, discounted by
    ``weight`` < 1 so that direct evidence wins over an equally strong path. Repeated
    ``hops`` times (``None``: until nothing changes, at most n times), it gives the
    strongest chain query -> j1 -> ... -> i through the database, discounted by
    ``weight`` per database step: a widest-path (bottleneck) search on the graph of
    verified pairs.
``none``
    the query scores unchanged.

Only the query and its own scenario's database are used, so a query's ranking still
depends on nothing outside its scenario.
"""

from __future__ import annotations

import numba
import numpy as np

MODES = ("none", "max-path")
DEFAULT_MODE = "max-path"
DEFAULT_WEIGHT = 0.9
DEFAULT_HOPS = None  # until convergence


def _check(query_scores: np.ndarray, db_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = np.asarray(query_scores, dtype=np.float64)
    w = np.asarray(db_scores, dtype=np.float64)
    if q.ndim != 1:
        raise ValueError(f"query_scores must be one-dimensional, got shape {q.shape}")
    if w.shape != (len(q), len(q)):
        raise ValueError(f"db_scores must be ({len(q)}, {len(q)}) for {len(q)} candidates, got {w.shape}")
    if not (np.isfinite(q).all() and np.isfinite(w).all()):
        raise ValueError("scores must be finite")
    q = np.clip(q, 0.0, 1.0)
    w = np.clip(np.maximum(w, w.T), 0.0, 1.0)  # symmetric; one verdict per unordered pair
    np.fill_diagonal(w, 0.0)
    return q, w


def max_path(query_scores: np.ndarray, db_scores: np.ndarray, weight: float = DEFAULT_WEIGHT,
             hops: int | None = 1) -> np.ndarray:
    """Best of the direct score and the discounted strongest path query -> j1 -> ... -> i (``hops`` database steps)."""
    q, w = _check(query_scores, db_scores)
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must lie in [0, 1], got {weight}")
    if hops is not None and hops < 0:
        raise ValueError(f"hops must be >= 0 or None, got {hops}")
    return np.clip(_widest_paths(q, w, float(weight), len(q) if hops is None else int(hops)), 0.0, 1.0)


@numba.njit(cache=True, nogil=True)
def _widest_paths(q: np.ndarray, w: np.ndarray, weight: float, rounds: int) -> np.ndarray:
    """``rounds`` times (or until nothing changes): ``q_i <- max(q_i, weight * max_j min(q_j, W_ji))``.

    Compiled: one pass over ``W`` per round with no temporaries (the re-ranking of a query with a
    database of n images is O(n^2) per round, for thousands of queries at the challenge's scale).
    """
    n = q.shape[0]
    q = q.copy()
    for _ in range(rounds):
        new = q.copy()
        changed = False
        for i in range(n):
            best = 0.0
            for j in range(n):
                v = min(q[j], w[j, i])
                if v > best:
                    best = v
            if weight * best > new[i]:
                new[i] = weight * best
                changed = True
        q = new
        if not changed:
            break
    return q


def top_positions(query_scores: np.ndarray, top: int) -> np.ndarray:
    """Positions of the ``top`` best direct scores, best first (ties: the earlier position first)."""
    q = np.asarray(query_scores, dtype=np.float64)
    return np.lexsort((np.arange(len(q)), -q))[: max(0, top)]


def rerank(query_scores: np.ndarray, db_scores: np.ndarray, mode: str = DEFAULT_MODE,
           weight: float = DEFAULT_WEIGHT, hops: int | None = DEFAULT_HOPS, top: int | None = None) -> np.ndarray:
    """New scores in [0, 1] for the candidates of one query (see the module docstring).

    ``top``: use only the graph of the query's ``top`` best candidates by direct score (the
    others keep their scores). Then only ``top * (top - 1) / 2`` database pairs per query
    are needed, not the whole database's, which is what lets the engine afford it at the
    challenge's scale (entries of ``db_scores`` outside that graph are never read).
    """
    if mode not in MODES:
        raise ValueError(f"unknown re-ranking mode {mode!r}; choose one of {', '.join(MODES)}")
    if top is not None:
        q = _check(query_scores, np.zeros((len(query_scores),) * 2))[0]
        idx = top_positions(q, top)
        w = np.asarray(db_scores, dtype=np.float64)
        if w.shape != (len(q), len(q)):
            raise ValueError(f"db_scores must be ({len(q)}, {len(q)}) for {len(q)} candidates, got {w.shape}")
        q[idx] = rerank(q[idx], w[np.ix_(idx, idx)], mode, weight, hops)
        return q
    if mode == "none":
        return _check(query_scores, db_scores)[0]
    return max_path(query_scores, db_scores, weight, hops)
