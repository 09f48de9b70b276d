"""The shortlist cascade: each stage narrows the candidates of the one before.

For every query, its candidates are its scenario's database without its own
image. Then:

stage 0   a global-descriptor similarity (:mod:`matcher.global_descriptors`) orders
          all candidates; the top ``K1`` go on (all of them when stage 0 is off or
          ``K1`` covers the database);
stage 1   cheap verified matching (mutual NN + affine RANSAC: ``Engine.verdicts``)
          scores those ``K1``; the top ``K2`` by stage-1 score go on;
re-rank   (``rerank``, on by default) every pair of each scenario's database is
          verified with stage 1's matcher (the same verdict store: a pair shared by
          scenarios or runs is verified once), and each query's stage-1 scores are
          re-scored with :func:`matcher.rerank.rerank`: a candidate verified strongly
          with one the query matched rises (the database's own structure; a query
          uses only its own scenario's database, so its ranking still depends on
          nothing else). The planner counts these pairs; where they do not fit the
          budget after stage 1's, re-ranking is dropped (stage 1's coverage first),
          and a scenario the deadline guard cuts keeps its stage-1 ranking;
stage 2   an expensive matcher (LightGlue on the same DISK features; LoFTR through
          :func:`register_stage2`) re-scores those ``K2``.

The final ranking is stage 2's order for its candidates, then stage 1's order
for the rest of its candidates, then stage 0's order, then unusable images.
Scores keep that order with disjoint bands: with ``B`` stages holding some of
the query's candidates, a candidate last scored by the stage of band ``b``
(0 = lowest) gets ``(b + s) / B`` where ``s`` in [0, 1) is that stage's own
score (the verdict's ``strength / (strength + 20)``, or the stage-0 similarity
clipped to [0, 1)). When stage 1 saw every candidate and stage 2 is off, the
scores are exactly the verdict scores.

K is one value per run, for every query; ties are broken by fixed keys
(scores, then strengths, then the earlier stage's score, then the image id),
so a query's ranking is a pure function of its image, its database and K.
Work is done in rounds over the candidate ranks (every query's next few
candidates), in chunks between which :class:`~matcher.budget.Deadline` is
asked whether the next chunk still fits; a stage the guard stops leaves each
query with the prefix it reached, and the later stages are skipped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import presets
from . import rerank as reranking
from .budget import Deadline, Plan, Rate, plan_cascade
from .pair_cache import PairCache
from .ranking import SUBMISSION_COLUMNS, TOP_K

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- stage-2 matchers


class PairStage:
    """A pair-scoring stage: canonical (sha, sha) pairs -> verdict dicts, cached in a pair store."""

    name = "stage"

    def __call__(self, pairs: set[tuple[str, str]]) -> dict[tuple[str, str], dict]:
        raise NotImplementedError

    def cached(self, pairs: list[tuple[str, str]]) -> set[tuple[str, str]]:
        """The pairs whose verdicts are already stored (nothing to compute)."""
        store = self.store
        if store is None or not pairs or store.count() == 0:
            return set()
        return set(store.get_many(pairs))

    store: PairCache | None = None
    computed = 0  # verdicts computed (not read from the store) so far


class VerifierStage(PairStage):
    """A :class:`~matcher.pair_verifier.PairVerifier` on the engine's loaded features."""

    def __init__(self, name: str, verifier, features: dict[str, dict], on_done: Callable[[], None] | None = None):
        self.name = name
        self.verifier = verifier
        self.features = features
        self.store = verifier.store
        self.on_done = on_done

    @property
    def computed(self) -> int:
        return self.verifier.verified

    def __call__(self, pairs):
        with quiet(self.verifier):
            out = self.verifier(pairs, self.features)
        if self.on_done:
            self.on_done()
        return out


@contextmanager
def quiet(obj):
    """Silence an object's own progress bars while the cascade shows one per stage."""
    old = getattr(obj, "progress", None)
    if old is not None:
        obj.progress = False
    try:
        yield obj
    finally:
        if old is not None:
            obj.progress = old


def _lightglue_stage(engine, conf: dict) -> PairStage:
    from .pair_verifier import PairVerifier

    pconf = presets.resolve(conf.get("preset") or f"{engine.conf['extractor']['name']}-lightglue")
    if pconf["extractor"] != engine.conf["extractor"]:
        raise ValueError(f"stage 2 preset {pconf['name']} uses other features than {engine.conf['name']}")
    store = PairCache(Path(engine.cache_dir) / "pairs.sqlite" if engine.cache_dir else None,
                      presets.verdict_key(pconf))
    verifier = PairVerifier(pconf, engine.device, store, engine.workers, engine.progress)
    verifier.lightglue  # noqa: B018 - build the model now: a missing or unfit weight file stops stage 2 here
    return VerifierStage(pconf["name"], verifier, engine.feature_stage.loaded)


class LoFTRStage(PairStage):
    """LoFTR (:mod:`matcher.loftr`, weights supplied by the user) + the preset's verifier, verdicts cached.

    LoFTR needs the pixels: images are decoded from ``engine.image_paths`` (the last few
    kept in memory) and pairs are taken grouped by their first image, so its backbone
    features are reused.
    """

    name = "loftr"

    def __init__(self, engine, conf: dict):
        from .loftr import LoFTRMatcher

        self.matcher = LoFTRMatcher(device=engine.device)  # WeightsError when no weights are given
        self.paths = engine.image_paths
        self.vconf = engine.conf["verifier"]
        key = presets.settings_key("loftr", {"dense": self.matcher.conf, "verifier": self.vconf})
        self.store = PairCache(Path(engine.cache_dir) / "pairs.sqlite" if engine.cache_dir else None, key)
        self.computed = 0
        self._images: dict[str, np.ndarray] = {}

    def _image(self, sha: str) -> np.ndarray:
        from . import images

        if sha not in self._images:
            if len(self._images) >= 32:
                self._images.pop(next(iter(self._images)))
            self._images[sha] = images.load(self.paths[sha], max_side=4096)[0]
        return self._images[sha]

    def __call__(self, pairs):
        pairs = sorted(pairs)
        known = self.store.get_many(pairs)
        new = {}
        for a, b in pairs:
            if (a, b) not in known:
                v = self.matcher.verify(self._image(a), self._image(b), self.vconf, key0=a, key1=b)
                v.pop("inliers", None)
                new[(a, b)] = v
        if new:
            self.store.put_many(new)
            self.computed += len(new)
        return {**known, **new}


def _loftr_stage(engine, conf: dict) -> PairStage:
    return LoFTRStage(engine, conf)


STAGE2_FACTORIES: dict[str, Callable] = {"lightglue": _lightglue_stage, "loftr": _loftr_stage}


def register_stage2(name: str, factory: Callable) -> None:
    """Hook for another expensive matcher (LoFTR, say).

    ``factory(engine, conf) -> PairStage``: a callable mapping canonical pairs of
    content hashes to verdict dicts with at least ``score`` in [0, 1) and
    ``strength`` (see :mod:`matcher.verification`), keeping its verdicts in a
    :class:`PairCache` (``store``) and counting what it computed (``computed``).
    ``engine.image_paths`` maps content hash to image file for a matcher that
    needs the pixels. Raise :class:`~matcher.errors.WhaleMatchError` or
    ``RuntimeError`` when it cannot run (weights missing): the run goes on
    without stage 2 and says so.
    """
    STAGE2_FACTORIES[name] = factory


def build_stage2(engine, name: str | None) -> PairStage | None:
    """The stage-2 matcher ``name`` (``None``/``"none"``: no stage 2), or None with a warning if it cannot run."""
    if not name or name == "none":
        return None
    kind, _, preset = name.partition(":")
    if kind not in STAGE2_FACTORIES:
        raise KeyError(f"unknown stage-2 matcher {kind!r}; choose one of {', '.join(sorted(STAGE2_FACTORIES))}")
    try:
        return STAGE2_FACTORIES[kind](engine, {"preset": preset} if preset else {})
    except Exception as exc:  # noqa: BLE001 - any failure to build it only costs stage 2
        log.warning("stage 2 (%s) is not available, ranking with stages 0 and 1 only: %s", name, exc)
        return None


# ---------------------------------------------------------------- per-query state


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
    rr: np.ndarray | None = None  # per usable candidate: re-ranked stage-1 score (NaN: not re-ranked)


@dataclass
class CascadeResult:
    submission: pd.DataFrame
    expected: dict
    plan: Plan | None
    queries: dict[str, QueryState]
    stage1: dict[int, tuple[float, float]]  # pair code -> (score, strength)
    stage2: dict[int, tuple[float, float]]
    shas: list[str]  # pair codes index this list (sorted content hashes)
    seconds: dict[str, float] = field(default_factory=dict)
    pairs: dict[str, int] = field(default_factory=dict)  # pairs computed per stage (not read from a cache)
    cut: list[str] = field(default_factory=list)  # what the deadline guard stopped
    bands: tuple[bool, bool] = (False, False)

    def final_order(self, q: QueryState, k1: int, k2: int) -> list[tuple[str, float]]:
        return final_ranking(q, self.stage1, self.stage2, k1, k2, self.bands, top_k=None)


# ---------------------------------------------------------------- ranking


STRENGTH_SCALE = 20.0  # a verdict's score is strength / (strength + STRENGTH_SCALE) (matcher.verification)


def _vals(codes: np.ndarray, verdicts: dict[int, tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    got = [verdicts.get(int(c), (0.0, 0.0)) for c in codes]
    arr = np.array(got, np.float64).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def _vals1(q: QueryState, pos: np.ndarray, verdicts: dict[int, tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Stage-1 (score, strength) of the candidates at ``pos``, re-ranked where the query was; a re-ranked
    score ``s`` stands for the strength ``STRENGTH_SCALE * s / (1 - s)``, so the two stay in step."""
    sc, st = _vals(q.pair_codes[pos], verdicts)
    if q.rr is not None and len(pos):
        rr = q.rr[pos]
        up = ~np.isnan(rr) & (rr > sc)
        sc = np.where(up, rr, sc)
        st = np.where(up, np.maximum(st, STRENGTH_SCALE * sc / np.maximum(1.0 - sc, 1e-12)), st)
    return sc, st


def stage1_order(q: QueryState, verdicts: dict[int, tuple[float, float]], n: int) -> np.ndarray:
    """Positions (into usable) of order0[:n] sorted by stage-1 score, strength, stage-0 score, id."""
    pos = q.order0[:n]
    sc, st = _vals1(q, pos, verdicts)
    return pos[np.lexsort((q.id_rank[pos], -q.s0[pos], -st, -sc))]


STAGE2_MODES = ("replace", "sum", "max")


def final_ranking(q: QueryState, v1: dict, v2: dict, k1: int, k2: int, bands: tuple[bool, bool] = (False, False),
                  top_k: int | None = TOP_K, stage2_mode: str = "max") -> list[tuple[str, float]]:
    """(database id, score) best first: stage 2's candidates, then stage 1's, then stage 0's, then unusable.

    ``bands = (stage 0 in use, stage 2 in use)`` lays out the score bands (see the module
    docstring), each only where the query has candidates in it: with neither, scores are
    the stage-1 verdict scores; candidates of a stage without a band (stage 0 off) score 0.

    ``stage2_mode`` orders stage 2's candidates by a monotone combination of the two
    verdicts: ``max`` (default) by the larger of the two strengths, so a pair stage 2
    confirms strongly rises and one it fails to match keeps its stage-1 evidence;
    ``sum`` by their sum (score ``s / (s + 40)``); ``replace`` by stage 2's verdict alone.
    On the development photos ``replace`` lost accuracy with LightGlue (README).
    """
    n1 = min(q.done1, k1, len(q.order0))
    order1 = stage1_order(q, v1, n1) if n1 else np.zeros(0, np.int64)
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
        sc2, st2 = _vals(q.pair_codes[top], v2)
        if stage2_mode == "sum":
            st2 = st2 + _vals1(q, top, v1)[1]
            sc2 = st2 / (st2 + 40.0)
        elif stage2_mode == "max":
            st2 = np.maximum(st2, _vals1(q, top, v1)[1])
            sc2 = st2 / (st2 + STRENGTH_SCALE)
        elif stage2_mode != "replace":
            raise ValueError(f"unknown stage-2 mode {stage2_mode!r}; choose one of {', '.join(STAGE2_MODES)}")
        rank1 = np.arange(n2)  # ties keep stage 1's order
        order = np.lexsort((rank1, -st2, -sc2))
        put(top[order], sc2[order], band2)
    rest1 = order1[n2:]
    put(rest1, _vals1(q, rest1, v1)[0], band1)
    rest0 = q.order0[n1:]
    put(rest0, np.clip(q.s0[rest0], 0.0, None), band0 if has0 else None)
    ranked = set(q.usable.tolist())
    for i in sorted((i for i in range(len(q.candidates)) if i not in ranked), key=lambda i: q.candidates[i]):
        out.append((q.candidates[i], 0.0))
    return out if top_k is None else out[:top_k]


# ---------------------------------------------------------------- the cascade


@dataclass
class CascadeSettings:
    k1: int | None = None  # fixed K1 (None: from the budget planner)
    k2: int | None = None  # fixed K2 (None: from the planner, at most k2_max)
    k2_max: int = 20
    budget_s: float | None = None  # None: no time limit (K = k1/k2 or everything)
    round_min: int = 16  # candidate ranks per stage-1 round at least
    round_min2: int = 2  # candidate ranks per stage-2 round at least
    rounds: int = 8  # rounds a stage is split into (so a cut stage leaves queries even)
    chunk_s: float = 10.0  # target seconds of work between two deadline checks
    pilot_s: float = 15.0  # stage-1 work measured before the plan is made (at most)
    pilot2_pairs: int = 16  # stage-2 pairs timed before the plan is made (at most; 4 at a time)
    pilot2_s: float = 15.0  # seconds of stage-2 work timed before the plan is made (at most)
    stage2_mode: str = "max"  # how stage 2's candidates are ordered (see final_ranking)
    rerank: bool = False  # re-rank with every verified pair of each scenario's database
    rerank_weight: float = reranking.DEFAULT_WEIGHT


class Cascade:
    def __init__(self, engine, stage1: PairStage, stage2: PairStage | None, global_stage,
                 settings: CascadeSettings, deadline: Deadline):
        self.engine = engine
        self.stage1 = stage1
        self.stage2 = stage2
        self.global_stage = global_stage
        self.s = settings
        self.deadline = deadline
        self.rate1 = Rate(f"stage 1 ({stage1.name}) pairs")
        self.rate2 = Rate(f"stage 2 ({stage2.name}) pairs") if stage2 else None
        self.v1: dict[int, tuple[float, float]] = {}
        self.v2: dict[int, tuple[float, float]] = {}
        self.seconds: dict[str, float] = {}
        self.pairs = {"stage1": 0, "rerank": 0, "stage2": 0}
        self.database_pairs = 0  # distinct database pairs (not query-database ones) of the re-ranked scenarios
        self.cut: list[str] = []

    # --- setup -------------------------------------------------------------------------------

    def prepare(self, tasks: list[tuple[str, str, str, list[str]]], shas: dict[str, str]) -> None:
        """Per-query state and stage-0 order. ``tasks``: (query id, query image, scenario, database ids)."""
        t0 = self.deadline.clock()
        self.stored_before = {st.name: bool(st.store is not None and st.store.count() > 0)
                              for st in (self.stage1, self.stage2) if st is not None}
        self.sha_list = sorted(set(shas.values()))
        self.sha_index = {s: i for i, s in enumerate(self.sha_list)}
        self.n_sha = len(self.sha_list)
        if self.global_stage is not None and self.global_stage.enabled:
            self.global_stage.describe({s: self.engine.feature_stage.loaded[s] for s in self.sha_list})
        self.queries: dict[str, QueryState] = {}
        by_scenario: dict[str, list[QueryState]] = {}
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
                qi = self.sha_index[shas[qimg]]
                ci = np.array([self.sha_index[shas[cands[i]]] for i in q.usable], np.int64)
                q.pair_codes = np.minimum(qi, ci) * self.n_sha + np.maximum(qi, ci)
                q.sha_idx = ci
            else:
                q.pair_codes = np.zeros(0, np.int64)
                q.sha_idx = np.zeros(0, np.int64)
            self.queries[qid] = q
            by_scenario.setdefault(scenario, []).append(q)
        for group in by_scenario.values():
            self._stage0(group, shas)
        self.seconds["stage0"] = self.deadline.clock() - t0

    def _stage0(self, group: list[QueryState], shas: dict[str, str]) -> None:
        """Stage-0 similarities of a scenario's queries with their candidates (exact per pair)."""
        use_global = self.global_stage is not None and self.global_stage.enabled
        block, db_pos, q_pos = None, {}, {}
        if use_global:
            db = sorted({shas[q.candidates[i]] for q in group for i in q.usable})
            qs = sorted({shas[q.query_image] for q in group if len(q.usable)})
            db_pos = {s: i for i, s in enumerate(db)}
            q_pos = {s: i for i, s in enumerate(qs)}
            block = self.global_stage.score_block(qs, db) if qs and db else None
        for q in group:
            if use_global and len(q.usable):
                row = block[q_pos[shas[q.query_image]]]
                q.s0 = np.array([row[db_pos[shas[q.candidates[i]]]] for i in q.usable], np.float64)
            else:
                q.s0 = np.zeros(len(q.usable), np.float64)
            q.order0 = np.lexsort((q.id_rank, -q.s0)) if len(q.usable) else np.zeros(0, np.int64)

    @property
    def database_max(self) -> int:
        return max((len(q.usable) for q in self.queries.values()), default=0)

    def _decode(self, code: int) -> tuple[str, str]:
        return self.sha_list[code // self.n_sha], self.sha_list[code % self.n_sha]

    # --- counting pairs for the planner ---------------------------------------------------------

    def _first_needed(self, orders: dict[str, np.ndarray], stage: PairStage, known: dict[int, tuple]) -> np.ndarray:
        """For each distinct pair still to compute: the smallest K at which some query needs it (sorted).

        ``known``: verdicts this run already has; the stage's store is asked about the rest
        only if it held verdicts before the run (a store this run started empty has nothing more).
        """
        codes, ks = [], []
        for qid, order in orders.items():
            q = self.queries[qid]
            codes.append(q.pair_codes[order])
            ks.append(np.arange(1, len(order) + 1))
        if not codes:
            return np.zeros(0, np.int64)
        codes, ks = np.concatenate(codes), np.concatenate(ks)
        idx = np.lexsort((ks, codes))
        codes, ks = codes[idx], ks[idx]
        first = np.r_[True, codes[1:] != codes[:-1]] if len(codes) else np.zeros(0, bool)
        codes, ks = codes[first], ks[first]
        if known:
            keep = np.array([int(c) not in known for c in codes], bool)
            codes, ks = codes[keep], ks[keep]
        if self.stored_before.get(stage.name) and len(codes):
            cached = stage.cached([self._decode(int(c)) for c in codes])
            if cached:
                keep = np.array([self._decode(int(c)) not in cached for c in codes], bool)
                ks = ks[keep]
        return np.sort(ks)

    # --- running a stage in rounds and chunks ---------------------------------------------------

    def _run_stage(self, label: str, stage: PairStage, rate: Rate, verdicts: dict, k: int,
                   prefix: Callable[[QueryState, int], np.ndarray], done_attr: str,
                   stop_after_s: float | None = None, first_chunk: int = 64,
                   replan: Callable[[int, int], int] | None = None, round_min: int | None = None) -> bool:
        """Score every query's candidates up to rank k. False if the deadline guard stopped it.

        ``prefix(q, n)``: positions of q's first n candidates in this stage's input order.
        ``stop_after_s``: return after this much work (the pilot), leaving the rest for later.
        ``replan(done, k)``: called at the end of each round, when every query has reached
        rank ``done``; returns the K to go on to (kept >= done), so a revised K is still
        the same for every query.
        """
        started = self.deadline.clock()
        queries = [q for q in self.queries.values() if len(q.usable)]
        total = sum(max(0, min(k, len(q.usable)) - getattr(q, done_attr)) for q in queries)
        if total <= 0:
            return True
        step = max(round_min or self.s.round_min, math.ceil(k / max(1, self.s.rounds)))
        bar = tqdm(total=total, desc=label, unit="pair", disable=not self.engine.progress, leave=False)
        try:
            target = 0
            while True:
                if target >= k:  # done, unless the re-plan finds time for more
                    more = replan(target, k) if replan is not None and target > 0 else k
                    if more <= k:
                        break
                    k = more
                target = min(k, target + step)
                batch: list[tuple[QueryState, int]] = []
                n_batch = 0
                for q in queries + [None]:
                    if q is not None:
                        hi = min(target, len(q.usable))
                        if getattr(q, done_attr) < hi:
                            batch.append((q, hi))
                            n_batch += hi - getattr(q, done_attr)
                    size = first_chunk if not rate.measured else max(16, int(rate.per_s * self.s.chunk_s))
                    if batch and (n_batch >= size or q is None):
                        if not self.deadline.allows(rate.seconds_for(n_batch) if rate.measured else 0.0):
                            if stop_after_s is not None and rate.measured:
                                return True  # the pilot ends here; the plan sizes what fits
                            self.deadline.trip(f"{label} stopped: the next {n_batch} pairs would pass the deadline")
                            self.cut.append(label)
                            return False
                        self._chunk(stage, rate, verdicts, batch, prefix, done_attr)
                        bar.update(n_batch)
                        batch, n_batch = [], 0
                        if stop_after_s is not None and self.deadline.clock() - started >= stop_after_s:
                            return True
                if replan is not None and target < k:
                    k = max(target, replan(target, k))
        finally:
            bar.close()
        return True

    def _chunk(self, stage, rate, verdicts, batch, prefix, done_attr) -> None:
        codes = set()
        for q, hi in batch:
            pos = prefix(q, hi)[getattr(q, done_attr):hi]
            codes.update(int(c) for c in q.pair_codes[pos])
        todo = [c for c in codes if c not in verdicts]
        before, t0 = stage.computed, self.deadline.clock()
        got = stage({self._decode(c) for c in todo}) if todo else {}
        rate.add(stage.computed - before, self.deadline.clock() - t0)
        for c in todo:
            v = got[self._decode(c)]
            verdicts[c] = (float(v["score"]), float(v["strength"]))
        for q, hi in batch:
            setattr(q, done_attr, hi)

    # --- the whole run ------------------------------------------------------------------------

    def run(self) -> Plan:
        s = self.s
        dbmax = self.database_max
        fixed_k1 = dbmax if s.k1 is None and s.budget_s is None else s.k1
        fixed_k2 = (s.k2 if s.k2 is not None else s.k2_max) if s.budget_s is None or s.k2 is not None else None
        order0 = {qid: q.order0 for qid, q in self.queries.items()}

        def prefix0(q, n):
            return q.order0[:n]

        t0 = self.deadline.clock()
        # Pilot: the first chunks of stage 1 (every query's top candidates: work any plan needs).
        if fixed_k1 is None:
            pilot_k = min(dbmax, s.round_min)
            pilot_s = min(s.pilot_s, 0.01 * (s.budget_s or 0) + 2.0)
            self._run_stage("stage 1 (pilot)", self.stage1, self.rate1, self.v1, pilot_k, prefix0, "done1",
                            stop_after_s=pilot_s)
        ks1 = self._first_needed(order0, self.stage1, self.v1)
        if fixed_k1 is None and not self.rate1.measured and len(ks1) and self.deadline.left() > 0:
            self._pilot_uncached(pilot_s)  # the pilot's pairs were cached (a resumed run): time uncached ones
            ks1 = self._first_needed(order0, self.stage1, self.v1)
        if self.stage2 is not None and fixed_k2 is None and self.deadline.left() > 0:
            self._pilot2()
        graphs = self._database_graphs() if s.rerank else {}
        rr_pairs = self._uncached_graph_pairs(graphs)
        pairs1_only = lambda k: int(np.searchsorted(ks1, k, side="right"))  # noqa: E731
        pairs1_at = lambda k: pairs1_only(k) + rr_pairs  # noqa: E731  (re-ranking's pairs: stage-1 work)
        n_queries = [len(q.usable) for q in self.queries.values()]
        pairs2_bound = lambda k: int(sum(min(k, n) for n in n_queries))  # noqa: E731
        if fixed_k1 is not None and (fixed_k2 is not None or self.stage2 is None):
            k2 = min(fixed_k2 or 0, fixed_k1) if self.stage2 is not None else 0
            plan = Plan(fixed_k1, k2, pairs1_at(fixed_k1), pairs2_bound(k2), self.rate1.seconds_for(pairs1_at(fixed_k1))
                        if self.rate1.measured else 0.0, 0.0, self.deadline.elapsed(), self.deadline.budget_s, dbmax,
                        fixed=True, stage2=self.stage2 is not None)
        else:
            k2_max = s.k2_max if fixed_k2 is None else fixed_k2
            plan = plan_cascade(self.deadline, self.rate1, self.rate2, pairs1_at, pairs2_bound, dbmax, k2_max,
                                k1_fixed=fixed_k1)
            if graphs and rr_pairs:
                without = plan_cascade(self.deadline, self.rate1, self.rate2, pairs1_only, pairs2_bound, dbmax, k2_max,
                                       k1_fixed=fixed_k1)
                if without.k1 > plan.k1:  # stage 1's coverage comes first; re-rank with what time is left
                    without.notes.append(f"re-ranking: its {rr_pairs} database pairs do not all fit beside stage "
                                         f"1's; scenarios are re-ranked, smallest first, while the time left allows")
                    plan, pairs1_at = without, pairs1_only
        if graphs and pairs1_at is not pairs1_only:
            plan.notes.append(f"re-ranking: every pair of each scenario's database verified ({rr_pairs} not cached, "
                              f"counted in stage 1's pairs)")
        log.info("rates: %s; %s", self.rate1, self.rate2 or "no stage 2")
        for line in plan.describe().splitlines():
            log.info("%s", line)
        plan.first_projection_s = plan.projected_s
        self.plan = plan

        def replan1(done: int, k: int) -> int:
            if plan.fixed or fixed_k1 is not None:
                return k
            already, rr_left = pairs1_only(done), pairs1_at(0) - pairs1_only(0)  # rr_left: re-ranking's, if planned
            new = plan_cascade(self.deadline, self.rate1, self.rate2,
                               lambda kk: max(0, pairs1_only(kk) - already) + rr_left,
                               pairs2_bound, dbmax, s.k2_max if fixed_k2 is None else fixed_k2)
            k_new = max(done, new.k1)
            if k < k_new < k + max(1, k // 10):  # raise K only for a worthwhile gain: no flapping
                k_new = k
            if k_new != k:
                plan.revised_projection_s = self.deadline.elapsed() + new.seconds1 + new.seconds2
                log.info("plan: K1 %d -> %d after stage 1 reached rank %d for every query (%s); projected run "
                         "time now %.0f s", k, k_new, done, self.rate1, plan.revised_projection_s)
                plan.k1 = k_new
            return k_new

        ok = self._run_stage("stage 1", self.stage1, self.rate1, self.v1, plan.k1, prefix0, "done1",
                             replan=replan1)
        self.seconds["stage1"] = self.deadline.clock() - t0
        self.pairs["stage1"] = self.rate1.items
        for q in self.queries.values():
            n1 = min(q.done1, plan.k1)
            q.order1 = stage1_order(q, self.v1, n1) if n1 else np.zeros(0, np.int64)
        if ok and graphs:
            t0 = self.deadline.clock()
            ok = self._rerank(graphs)
            self.seconds["rerank"] = self.deadline.clock() - t0
        if not ok or self.stage2 is None or plan.k2 <= 0:
            if not ok and self.stage2 is not None:
                self.cut.append("stage 2 skipped")
            return plan

        t0 = self.deadline.clock()
        order1 = {qid: q.order1 for qid, q in self.queries.items()}
        ks2 = self._first_needed(order1, self.stage2, self.v2)
        pairs2_at = lambda k: int(np.searchsorted(ks2, k, side="right"))  # noqa: E731
        if not plan.fixed and fixed_k2 is None:
            replan = plan_cascade(self.deadline, Rate("done", 1e12), self.rate2, lambda k: 0, pairs2_at, dbmax,
                                  min(s.k2_max, plan.k1))
            if replan.k2 != plan.k2:
                plan.revised_projection_s = self.deadline.elapsed() + replan.seconds2
                log.info("plan: stage 2 re-planned with the measured rates: K2 %d -> %d (%d pairs, %.0f s); "
                         "projected run time now %.0f s", plan.k2, replan.k2, replan.pairs2, replan.seconds2,
                         plan.revised_projection_s)
            plan.k2, plan.pairs2, plan.seconds2 = replan.k2, replan.pairs2, replan.seconds2

        def prefix1(q, n):
            return q.order1[:n]

        def replan2(done: int, k: int) -> int:
            if plan.fixed or fixed_k2 is not None:
                return k
            already = pairs2_at(done)
            new = plan_cascade(self.deadline, Rate("done", 1e12), self.rate2, lambda kk: 0,
                               lambda kk: max(0, pairs2_at(kk) - already), dbmax, min(s.k2_max, plan.k1))
            k_new = max(done, new.k2)
            if k < k_new < k + max(1, k // 10):
                k_new = k
            if k_new != k:
                plan.revised_projection_s = self.deadline.elapsed() + new.seconds2
                log.info("plan: K2 %d -> %d after stage 2 reached rank %d for every query (%s); projected run "
                         "time now %.0f s", k, k_new, done, self.rate2, plan.revised_projection_s)
                plan.k2 = k_new
            return k_new

        ok = self._run_stage("stage 2", self.stage2, self.rate2, self.v2, min(plan.k2, plan.k1), prefix1, "done2",
                             replan=replan2, round_min=s.round_min2, first_chunk=8)
        self.seconds["stage2"] = self.deadline.clock() - t0
        self.pairs["stage2"] = self.rate2.items
        return plan

    # --- re-ranking with each scenario's database ---------------------------------------------

    def _database_graphs(self) -> dict[str, np.ndarray]:
        """Per scenario: the content-hash indices of its usable database images (sorted)."""
        members: dict[str, set[int]] = {}
        for q in self.queries.values():
            members.setdefault(q.scenario, set()).update(int(i) for i in q.sha_idx)
        return {sc: np.array(sorted(m), np.int64) for sc, m in members.items() if len(m) > 1}

    def _graph_codes(self, members: np.ndarray) -> np.ndarray:
        a, b = np.triu_indices(len(members), 1)
        return members[a] * self.n_sha + members[b]  # members are sorted: the canonical pair code

    def _uncached_graph_pairs(self, graphs: dict[str, np.ndarray]) -> int:
        """Distinct database pairs of all the graphs that are neither verified in this run nor stored."""
        if not graphs:
            return 0
        codes = np.unique(np.concatenate([self._graph_codes(m) for m in graphs.values()]))
        # query-database pairs that are also database pairs (leave-one-out scenarios) are stage 1's
        codes = codes[~np.isin(codes, self._query_codes())]
        if len(codes) and self.stored_before.get(self.stage1.name):
            cached = self.stage1.cached([self._decode(int(c)) for c in codes])
            return int(len(codes) - len(cached))
        return int(len(codes))

    def _rerank(self, graphs: dict[str, np.ndarray]) -> bool:
        """Verify every pair of each scenario's database (smallest scenarios first), then re-score its
        queries. A scenario the deadline guard stops keeps its stage-1 ranking. False if one was stopped."""
        total = sum(len(m) * (len(m) - 1) // 2 for m in graphs.values())
        known = np.fromiter(self.v1, np.int64, len(self.v1))  # stage 1's verdicts (query-database pairs)
        done_codes = []
        with tqdm(total=total, desc="re-rank: database pairs", unit="pair", disable=not self.engine.progress,
                  leave=False) as bar:
            for sc, members in sorted(graphs.items(), key=lambda kv: (len(kv[1]), kv[0])):
                codes = self._graph_codes(members)
                fresh = ~np.isin(codes, known)
                if self.rate1.measured:  # a scenario is re-ranked whole or not at all: does it fit?
                    left = codes[fresh].tolist()
                    if left and self.stored_before.get(self.stage1.name):
                        cached = self.stage1.cached([self._decode(c) for c in left])
                        left = [c for c in left if self._decode(c) not in cached]
                    if not self.deadline.allows(self.rate1.seconds_for(len(left))):
                        self.deadline.trip(f"re-ranking stopped before scenario {sc} ({len(left)} database pairs "
                                           f"would pass the deadline): its queries and those of the larger "
                                           f"scenarios keep their stage-1 ranking")
                        self.cut.append("re-rank")
                        return False
                got: dict[int, tuple[float, float]] = {}
                start = 0
                while start < len(codes):
                    size = 512 if not self.rate1.measured else max(256, int(self.rate1.per_s * self.s.chunk_s))
                    todo = codes[start : start + size][fresh[start : start + size]].tolist()
                    if todo and not self.deadline.allows(self.rate1.seconds_for(len(todo)) if self.rate1.measured
                                                         else 0.0):
                        self.deadline.trip(f"re-ranking stopped at scenario {sc}: its queries and those of the "
                                           f"larger scenarios keep their stage-1 ranking")
                        self.cut.append("re-rank")
                        return False
                    before = self.stage1.computed
                    self._score_codes(self.stage1, self.rate1, got, todo)
                    self.pairs["rerank"] += self.stage1.computed - before
                    bar.update(min(size, len(codes) - start))
                    start += size
                scores = np.array([(got if f else self.v1)[c][0] for c, f in zip(codes.tolist(), fresh.tolist())],
                                  np.float32)
                w = np.zeros((len(members), len(members)), np.float32)
                a, b = np.triu_indices(len(members), 1)
                w[a, b] = scores
                w[b, a] = scores
                done_codes.append(codes)
                row = {int(m): i for i, m in enumerate(members)}
                for q in self.queries.values():
                    if q.scenario == sc and len(q.order1):
                        self._apply_rerank(q, w, row)
                self.database_pairs = int(np.setdiff1d(np.concatenate(done_codes), self._query_codes()).size)
        return True

    def _query_codes(self) -> np.ndarray:
        return np.concatenate([q.pair_codes for q in self.queries.values()] or [np.zeros(0, np.int64)])

    def _apply_rerank(self, q: QueryState, w: np.ndarray, row: dict[int, int]) -> None:
        """Re-score the query's stage-1 candidates with the database graph ``w`` (rows: ``row[sha index]``)."""
        pos = q.order1
        idx = np.array([row[int(i)] for i in q.sha_idx[pos]], np.int64)
        direct = _vals(q.pair_codes[pos], self.v1)[0]
        q.rr = np.full(len(q.usable), np.nan)
        q.rr[pos] = reranking.rerank(direct, w[np.ix_(idx, idx)], weight=self.s.rerank_weight)
        q.order1 = stage1_order(q, self.v1, len(q.order1))

    def _pilot_uncached(self, limit_s: float, want: int = 32) -> None:
        """Time stage 1 on the first pairs (by stage-0 rank) that are neither verified in this run nor cached."""
        started, picked = self.deadline.clock(), []
        queries = [q for q in self.queries.values() if len(q.usable)]
        for lo in range(0, self.database_max, 16):
            codes = list(dict.fromkeys(int(c) for q in queries for c in q.pair_codes[q.order0[lo : lo + 16]]
                                       if int(c) not in self.v1))
            cached = self.stage1.cached([self._decode(c) for c in codes]) if codes else set()
            picked += [c for c in codes if self._decode(c) not in cached][: want - len(picked)]
            if len(picked) >= want or self.deadline.clock() - started > limit_s:
                break
        if picked:
            self._score_codes(self.stage1, self.rate1, self.v1, picked)

    def _pilot2(self) -> None:
        """Time the expensive matcher on a few pairs every plan is likely to need (stage 0's best candidates)."""
        codes = list(dict.fromkeys(int(q.pair_codes[q.order0[0]]) for q in self.queries.values() if len(q.usable)))
        if not codes:
            return
        self._score_codes(self.stage2, None, self.v2, codes[:2])  # the first calls build and warm the model
        limit = min(self.s.pilot2_s, 0.01 * (self.s.budget_s or 0) + 2.0)
        started, i = self.deadline.clock(), 2
        while i < len(codes) and self.deadline.clock() - started < limit and self.rate2.items < self.s.pilot2_pairs:
            self._score_codes(self.stage2, self.rate2, self.v2, codes[i : i + 4])
            i += 4
        if not self.rate2.measured:  # all cached: nothing to time; assume stage 1's rate / 20 until measured
            self.rate2.prior = (self.rate1.per_s or 1.0) / 20

    def _score_codes(self, stage, rate, verdicts, codes) -> None:
        todo = [c for c in codes if c not in verdicts]
        if not todo:
            return
        before, t0 = stage.computed, self.deadline.clock()
        got = stage({self._decode(c) for c in todo})
        if rate is not None:
            rate.add(stage.computed - before, self.deadline.clock() - t0)
        for c in todo:
            v = got[self._decode(c)]
            verdicts[c] = (float(v["score"]), float(v["strength"]))

    def result(self, expected: dict) -> CascadeResult:
        bands = (self.global_stage is not None and self.global_stage.enabled, self.stage2 is not None)
        return CascadeResult(pd.DataFrame(columns=SUBMISSION_COLUMNS), expected, getattr(self, "plan", None),
                             self.queries, self.v1, self.v2, self.sha_list, dict(self.seconds), dict(self.pairs),
                             list(self.cut), bands)
