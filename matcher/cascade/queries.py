"""Per-query state of the cascade, and the integer codes of the pairs it verifies.

Each query's candidates are its scenario's database without its own image. Pairs are
coded as integers over the sorted content hashes of the run (``a * n + b`` with
``a <= b``: the canonical pair), so the per-stage verdicts of a run are plain
``{code: (score, strength)}`` dicts and a pair shared by queries or scenarios is
computed once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class QueryState:
    query_id: str
    query_image: str
    scenario: str
    candidates: list[str]  # database ids without the query's own image, unique, in database order
    usable: np.ndarray = None  # indices into candidates of those with features (and a usable query)
    pair_codes: np.ndarray = None  # per usable candidate: code of its canonical pair
    s0: np.ndarray = None  # per usable candidate: stage-0 similarity
    id_rank: np.ndarray = None  # per usable candidate: rank of its id (final tie-break)
    order0: np.ndarray = None  # positions into usable, best first
    done1: int = 0  # prefix of order0 scored by stage 1
    done2: int = 0  # prefix of order1 scored by stage 2
    order1: np.ndarray | None = None  # positions into usable, stage-1 order of order0[:k1]
    sha_idx: np.ndarray = None  # per usable candidate: index of its content hash (for database pairs)
    query_idx: int = -1  # index of the query's content hash (-1: the query image is unusable)
    rr: np.ndarray | None = None  # per usable candidate: re-ranked stage-1 score (NaN: not re-ranked)
    s1: np.ndarray | None = None  # per usable candidate: the query's own stage-1 score (the ranker's); None: the pair's


class PairCodes:
    """Integer codes of canonical pairs over a run's content hashes (sorted)."""

    def __init__(self, shas):
        self.shas = sorted(set(shas))
        self.index = {s: i for i, s in enumerate(self.shas)}
        self.n = len(self.shas)

    def decode(self, code: int) -> tuple[str, str]:
        return self.shas[code // self.n], self.shas[code % self.n]

    def of_members(self, members: np.ndarray) -> np.ndarray:
        """Codes of every pair among ``members`` (sorted hash indices), in ``triu`` order."""
        a, b = np.triu_indices(len(members), 1)
        return members[a] * self.n + members[b]


def build_queries(tasks: list[tuple[str, str, str, list[str]]], shas: dict[str, str],
                  codes: PairCodes) -> dict[str, QueryState]:
    """A :class:`QueryState` per task ``(query id, query image, scenario, database ids)``; ``shas`` holds the
    content hash of every usable image id."""
    queries: dict[str, QueryState] = {}
    for qid, qimg, scenario, database in tasks:
        cands = [d for d in dict.fromkeys(database) if d != qimg]
        q = QueryState(qid, qimg, scenario, cands)
        if qimg in shas:
            q.usable = np.array([i for i, c in enumerate(cands) if c in shas], np.int64)
        else:
            q.usable = np.zeros(0, np.int64)
        id_order = np.argsort(np.array([cands[i] for i in q.usable], dtype=object), kind="stable")
        q.id_rank = np.empty(len(q.usable), np.int64)
        q.id_rank[id_order] = np.arange(len(q.usable))
        if len(q.usable):
            qi = q.query_idx = codes.index[shas[qimg]]
            ci = np.array([codes.index[shas[cands[i]]] for i in q.usable], np.int64)
            q.pair_codes = np.minimum(qi, ci) * codes.n + np.maximum(qi, ci)
            q.sha_idx = ci
        else:
            q.pair_codes = np.zeros(0, np.int64)
            q.sha_idx = np.zeros(0, np.int64)
        queries[qid] = q
    return queries


def order_by_stage0(group: list[QueryState], shas: dict[str, str], global_stage) -> None:
    """Stage-0 similarities and order of one scenario's queries with their candidates (exact per pair);
    with stage 0 off (``global_stage`` None or disabled) every similarity is 0 and the order is the ids'."""
    use_global = global_stage is not None and global_stage.enabled
    block, db_pos, q_pos = None, {}, {}
    if use_global:
        db = sorted({shas[q.candidates[i]] for q in group for i in q.usable})
        qs = sorted({shas[q.query_image] for q in group if len(q.usable)})
        db_pos = {s: i for i, s in enumerate(db)}
        q_pos = {s: i for i, s in enumerate(qs)}
        block = global_stage.score_block(qs, db) if qs and db else None
    for q in group:
        if use_global and len(q.usable):
            row = block[q_pos[shas[q.query_image]]]
            q.s0 = np.array([row[db_pos[shas[q.candidates[i]]]] for i in q.usable], np.float64)
        else:
            q.s0 = np.zeros(len(q.usable), np.float64)
        q.order0 = np.lexsort((q.id_rank, -q.s0)) if len(q.usable) else np.zeros(0, np.int64)
