"""The final ranking of one query: its candidates in the cascade's order, with scores in disjoint bands.

The final ranking is stage 2's order for its candidates, then stage 1's order for
the rest of its candidates, then stage 0's order, then unusable images. Scores keep
that order with disjoint bands: with ``B`` stages holding some of the query's
candidates, a candidate last scored by the stage of band ``b`` (0 = lowest) gets
``(b + s) / B`` where ``s`` in [0, 1) is that stage's own score (the verdict's
``strength / (strength + score_scale)``, or the stage-0 similarity clipped to
[0, 1)). When stage 1 saw every candidate and stage 2 is off, the scores are
exactly the verdict scores.

Ties are broken by fixed keys (scores, then strengths, then the earlier stage's
score, then the image id), so a query's ranking is a pure function of its image,
its candidates, their verdicts and K.
"""

from __future__ import annotations

import numpy as np

from .queries import QueryState

STAGE2_MODES = ("replace", "sum", "max")


def verdict_values(codes: np.ndarray, verdicts: dict[int, tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    got = [verdicts.get(int(c), (0.0, 0.0)) for c in codes]
    arr = np.array(got, np.float64).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def direct_values(q: QueryState, pos: np.ndarray, verdicts: dict[int, tuple[float, float]]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Stage-1 (score, strength) of the candidates at ``pos`` before re-ranking: the query's own scores where a
    ranker gave them (:attr:`QueryState.s1`), else the pairs' scores; strengths are the verdicts'."""
    sc, st = verdict_values(q.pair_codes[pos], verdicts)
    if q.s1 is not None and len(pos):
        own = q.s1[pos]
        sc = np.where(np.isnan(own), sc, own)
    return sc, st


def stage1_values(q: QueryState, pos: np.ndarray, verdicts: dict[int, tuple[float, float]],
                  scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Stage-1 (score, strength) of the candidates at ``pos`` (:func:`direct_values`), re-ranked where the query
    was; a re-ranked score ``s`` stands for the strength ``scale * s / (1 - s)`` (``scale``: the verifier's
    ``score_scale``), so the two stay in step."""
    sc, st = direct_values(q, pos, verdicts)
    if q.rr is not None and len(pos):
        rr = q.rr[pos]
        up = ~np.isnan(rr) & (rr > sc)
        sc = np.where(up, rr, sc)
        st = np.where(up, np.maximum(st, scale * sc / np.maximum(1.0 - sc, 1e-12)), st)
    return sc, st


def stage1_order(q: QueryState, verdicts: dict[int, tuple[float, float]], n: int, scale: float) -> np.ndarray:
    """Positions (into usable) of order0[:n] sorted by stage-1 score, strength, stage-0 score, id."""
    pos = q.order0[:n]
    sc, st = stage1_values(q, pos, verdicts, scale)
    return pos[np.lexsort((q.id_rank[pos], -q.s0[pos], -st, -sc))]


def final_ranking(q: QueryState, v1: dict, v2: dict, k1: int, k2: int, scale: float,
                  bands: tuple[bool, bool] = (False, False), top_k: int | None = None,
                  stage2_mode: str = "max") -> list[tuple[str, float]]:
    """(database id, score) best first: stage 2's candidates, then stage 1's, then stage 0's, then unusable.

    ``bands = (stage 0 in use, stage 2 in use)`` lays out the score bands (see the module
    docstring), each only where the query has candidates in it: with neither, scores are
    the stage-1 verdict scores; candidates of a stage without a band (stage 0 off) score 0.

    ``stage2_mode`` orders stage 2's candidates by a monotone combination of the two
    verdicts: ``max`` (default) by the larger of the two strengths, so a pair stage 2
    confirms strongly rises and one it fails to match keeps its stage-1 evidence;
    ``sum`` by their sum (score ``s / (s + 2 scale)``); ``replace`` by stage 2's verdict alone.
    """
    n1 = min(q.done1, k1, len(q.order0))
    order1 = stage1_order(q, v1, n1, scale) if n1 else np.zeros(0, np.int64)
    n2 = min(q.done2, k2, n1) if bands[1] else 0
    # A band only where this query has candidates in it (a function of the query's own
    # candidates and K): when nothing is cut and stage 2 is off, scores are the verdicts'.
    has0, has2 = bands[0] and n1 < len(q.order0), n2 > 0
    n_bands = 1 + int(has0) + int(has2)
    band0, band1 = (0, int(has0))
    band2 = band1 + 1
    top_s = np.nextafter(1.0, 0.0)
    out: list[tuple[str, float]] = []

    def put(positions, scores, band):
        for p, s in zip(positions, scores):
            value = 0.0 if band is None else (band + min(max(float(s), 0.0), top_s)) / n_bands
            out.append((q.candidates[q.usable[p]], min(1.0, value)))

    if n2:
        top = order1[:n2]
        sc2, st2 = verdict_values(q.pair_codes[top], v2)
        if stage2_mode == "sum":
            st2 = st2 + stage1_values(q, top, v1, scale)[1]
            sc2 = st2 / (st2 + 2 * scale)
        elif stage2_mode == "max":
            st2 = np.maximum(st2, stage1_values(q, top, v1, scale)[1])
            sc2 = st2 / (st2 + scale)
        elif stage2_mode != "replace":
            raise ValueError(f"unknown stage-2 mode {stage2_mode!r}; choose one of {', '.join(STAGE2_MODES)}")
        rank1 = np.arange(n2)  # ties keep stage 1's order
        order = np.lexsort((rank1, -st2, -sc2))
        put(top[order], sc2[order], band2)
    rest1 = order1[n2:]
    put(rest1, stage1_values(q, rest1, v1, scale)[0], band1)
    rest0 = q.order0[n1:]
    put(rest0, np.clip(q.s0[rest0], 0.0, None), band0 if has0 else None)
    ranked = set(q.usable.tolist())
    for i in sorted((i for i in range(len(q.candidates)) if i not in ranked), key=lambda i: q.candidates[i]):
        out.append((q.candidates[i], 0.0))
    return out if top_k is None else out[:top_k]


def rank_by_score(query_image_id: str, candidates: list[str], scores: dict[str, float],
                  strengths: dict[str, float] | None = None, top_k: int | None = None) -> list[tuple[str, float]]:
    """(candidate, score in [0, 1]) best first, from one score per candidate (``strengths`` break ties more
    finely; then the smaller id). The query's own image is dropped; a candidate without a score gets 0."""
    strengths = strengths or {}
    seen = dict.fromkeys(c for c in candidates if c != query_image_id)
    ranked = sorted(seen, key=lambda c: (-scores.get(c, 0.0), -strengths.get(c, 0.0), c))
    ranked = ranked if top_k is None else ranked[:top_k]
    return [(c, min(1.0, max(0.0, float(scores.get(c, 0.0))))) for c in ranked]
