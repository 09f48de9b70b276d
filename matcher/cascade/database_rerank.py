"""The re-ranking pass of a cascade run: the pairs of each scenario's database verified with stage 1's
matcher, then each query's stage-1 candidates re-scored with :func:`matcher.cascade.rerank.rerank`.

The graph is every pair of the database (``rerank_top`` None), or, for each query, the pairs among its
``rerank_top`` best stage-1 candidates only: the paths that can lift a candidate into the top of the
ranking run through the top anyway, and the pairs to verify grow with the queries instead of with the
square of the database (a database of 1,500 photos has 1.1 million pairs).

Scenarios are done smallest first, each whole or not at all: one the deadline guard stops keeps its
stage-1 ranking, and so do the larger ones after it. ``run`` is the :class:`~matcher.cascade.scheduler.Cascade`
whose queries are re-ranked.
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from . import rerank as reranking
from .queries import QueryState
from .ranking import direct_values, stage1_order


def database_graphs(run) -> dict[str, np.ndarray]:
    """Per scenario: the content-hash indices of its usable database images (sorted)."""
    members: dict[str, set[int]] = {}
    for q in run.queries.values():
        members.setdefault(q.scenario, set()).update(int(i) for i in q.sha_idx)
    return {sc: np.array(sorted(m), np.int64) for sc, m in members.items() if len(m) > 1}


def query_codes(run) -> np.ndarray:
    """Codes of every query-database pair of the run."""
    return np.concatenate([q.pair_codes for q in run.queries.values()] or [np.zeros(0, np.int64)])


def _stored(run, codes: list[int]) -> set[tuple[str, str]]:
    """The pairs of ``codes`` whose stage-1 verdicts were stored before the run."""
    if not codes or not run.stored_before.get(run.stage1.name):
        return set()
    return run.stage1.cached([run.codes.decode(c) for c in codes])


def top_pairs(run, scenario: str, top: int) -> np.ndarray:
    """Codes of the pairs among each query's ``top`` best stage-1 candidates (its scenario ``scenario``)."""
    codes = set()
    for q in run.queries.values():
        if q.scenario == scenario and q.order1 is not None and len(q.order1) > 1:
            idx = np.sort(q.sha_idx[q.order1[:top]])
            codes.update(run.codes.of_members(idx).tolist())
    return np.array(sorted(codes), np.int64)


def uncached_pairs(run, graphs: dict[str, np.ndarray]) -> int:
    """Distinct database pairs of all the graphs that are neither verified in this run nor stored (with
    ``rerank_top``, a bound: the pairs among every query's top candidates, before stage 1 says which)."""
    if not graphs:
        return 0
    top = run.s.rerank_top
    if top is not None:
        return int(sum(min(top, len(q.usable)) * (min(top, len(q.usable)) - 1) // 2 for q in run.queries.values()))
    codes = np.unique(np.concatenate([run.codes.of_members(m) for m in graphs.values()]))
    # query-database pairs that are also database pairs (leave-one-out scenarios) are stage 1's
    codes = codes[~np.isin(codes, query_codes(run))]
    return int(len(codes) - len(_stored(run, [int(c) for c in codes])))


def rerank_databases(run, graphs: dict[str, np.ndarray]) -> bool:
    """Verify the pairs of each scenario's graph (smallest scenarios first), then re-score its queries. A
    scenario the deadline guard stops keeps its stage-1 ranking. False if one was stopped."""
    top = run.s.rerank_top
    graph_codes = {sc: run.codes.of_members(m) if top is None else top_pairs(run, sc, top) for sc, m in graphs.items()}
    total = sum(len(c) for c in graph_codes.values())
    known = np.fromiter(run.v1, np.int64, len(run.v1))  # stage 1's verdicts (query-database pairs)
    rate, deadline = run.rate1, run.deadline
    done_codes = []
    with tqdm(total=total, desc="re-rank: database pairs", unit="pair", disable=not run.progress,
              leave=False) as bar:
        for sc, members in sorted(graphs.items(), key=lambda kv: (len(kv[1]), kv[0])):
            codes = graph_codes[sc]
            fresh = ~np.isin(codes, known)
            if rate.measured:  # a scenario is re-ranked whole or not at all: does it fit?
                left = codes[fresh].tolist()
                stored = _stored(run, left)
                left = [c for c in left if run.codes.decode(c) not in stored]
                if not deadline.allows(rate.seconds_for(len(left))):
                    deadline.trip(f"re-ranking stopped before scenario {sc} ({len(left)} database pairs "
                                  f"would pass the deadline): its queries and those of the larger "
                                  f"scenarios keep their stage-1 ranking")
                    run.cut.append("re-rank")
                    return False
            got: dict[int, tuple[float, float]] = {}
            start = 0
            while start < len(codes):
                size = 512 if not rate.measured else max(256, int(rate.per_s * run.s.chunk_s))
                todo = codes[start : start + size][fresh[start : start + size]].tolist()
                if todo and not deadline.allows(rate.seconds_for(len(todo)) if rate.measured else 0.0):
                    deadline.trip(f"re-ranking stopped at scenario {sc}: its queries and those of the "
                                  f"larger scenarios keep their stage-1 ranking")
                    run.cut.append("re-rank")
                    return False
                before = run.stage1.computed
                run.score_codes(run.stage1, rate, got, todo)
                run.pairs["rerank"] += run.stage1.computed - before
                bar.update(min(size, len(codes) - start))
                start += size
            scores = np.array([(got if f else run.v1)[c][0] for c, f in zip(codes.tolist(), fresh.tolist())],
                              np.float32)
            done_codes.append(codes)
            if top is None:
                w = np.zeros((len(members), len(members)), np.float32)
                a, b = np.triu_indices(len(members), 1)
                w[a, b] = scores
                w[b, a] = scores
                row = {int(m): i for i, m in enumerate(members)}
                for q in run.queries.values():
                    if q.scenario == sc and len(q.order1):
                        _apply(run, q, w, row)
            else:
                edge = dict(zip(codes.tolist(), scores.tolist()))
                for q in run.queries.values():
                    if q.scenario == sc and len(q.order1) > 1:
                        _apply_top(run, q, edge, top)
            run.database_pairs = int(np.setdiff1d(np.concatenate(done_codes), query_codes(run)).size)
    return True


def _apply_top(run, q: QueryState, edge: dict[int, float], top: int) -> None:
    """Re-score the query's ``top`` best stage-1 candidates with the graph of the pairs among them."""
    pos = q.order1[:top]
    idx = q.sha_idx[pos]
    n = run.codes.n
    lo, hi = np.minimum.outer(idx, idx), np.maximum.outer(idx, idx)
    w = np.array([edge.get(int(c), 0.0) for c in (lo * n + hi).ravel()], np.float64).reshape(len(pos), len(pos))
    direct = direct_values(q, pos, run.v1)[0]
    q.rr = np.full(len(q.usable), np.nan)
    q.rr[pos] = reranking.rerank(direct, w, weight=run.s.rerank_weight)
    q.order1 = stage1_order(q, run.v1, len(q.order1), run.scale)


def _apply(run, q: QueryState, w: np.ndarray, row: dict[int, int]) -> None:
    """Re-score the query's stage-1 candidates with the database graph ``w`` (rows: ``row[sha index]``)."""
    pos = q.order1
    idx = np.array([row[int(i)] for i in q.sha_idx[pos]], np.int64)
    direct = direct_values(q, pos, run.v1)[0]
    q.rr = np.full(len(q.usable), np.nan)
    q.rr[pos] = reranking.rerank(direct, w[np.ix_(idx, idx)], weight=run.s.rerank_weight)
    q.order1 = stage1_order(q, run.v1, len(q.order1), run.scale)
