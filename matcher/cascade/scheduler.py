"""The shortlist cascade: each stage narrows the candidates of the one before, within the time budget.

For every query, its candidates are its scenario's database without its own
image (:mod:`matcher.cascade.queries`). Then:

stage 0   a global-descriptor similarity (:mod:`matcher.cascade.global_descriptors`)
          orders all candidates; the top ``K1`` go on (all of them when stage 0 is
          off or ``K1`` covers the database);
stage 1   cheap verified matching (the engine's preset: mutual NN + affine RANSAC)
          scores those ``K1``; the top ``K2`` by stage-1 score go on;
re-rank   (``rerank``) every pair of each scenario's database is verified with stage
          1's matcher (the same verdict store: a pair shared by scenarios or runs is
          verified once), and each query's stage-1 scores are re-scored with
          :func:`matcher.cascade.rerank.rerank`: a candidate verified strongly with one
          the query matched rises (the database's own structure; a query uses only its
          own scenario's database, so its ranking still depends on nothing else). The
          planner counts these pairs; where they do not fit the budget after stage 1's,
          re-ranking is dropped (stage 1's coverage first), and a scenario the deadline
          guard cuts keeps its stage-1 ranking;
stage 2   an expensive matcher (:mod:`matcher.cascade.stages`) re-scores those ``K2``.

The final ranking and its score bands are :mod:`matcher.cascade.ranking`. K is one
value per run, for every query (:mod:`matcher.cascade.budget` plans it from rates
measured on the run's first pairs), so a query's ranking is a pure function of its
image, its database and K. Work is done in rounds over the candidate ranks (every
query's next few candidates), in chunks between which the deadline guard is asked
whether the next chunk still fits; a stage the guard stops leaves each query with the
prefix it reached, and the later stages are skipped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from ..timing import Deadline, Rate
from . import database_rerank
from . import rerank as reranking
from .budget import Plan, plan_cascade
from .queries import PairCodes, QueryState, build_queries, order_by_stage0
from .ranking import final_ranking, stage1_order
from .scoring import Scorer, verdict_scores
from .stages import PairStage

log = logging.getLogger(__name__)


@dataclass
class CascadeSettings:
    k1: int | None = None  # fixed K1 (None: from the budget planner)
    k2: int | None = None  # fixed K2 (None: from the planner, at most k2_max)
    k2_max: int = 20
    budget_s: float | None = None  # None: no time limit (K = k1/k2 or everything)
    stage2: str | None = "auto"  # stage-2 matcher: auto (the preset's default), none, or a registered name
    stage2_mode: str = "max"  # how stage 2's candidates are ordered (see ranking.final_ranking)
    global_descriptor: str = "auto"  # stage-0 descriptor: auto (the preset's default) or a preset name
    global_head: str | None = None  # a learned stage 0's head file (None: the preset's, from the weights folders)
    pair_score: str = "auto"  # stage 1's score: strength (the verdict's), learned, ranker, or auto (scoring.py)
    pair_model: str | None = None  # the learned pair model's file (None: the preset's, from the weights folders)
    ranker: str | None = None  # the ranker's file (None: the preset's, from the weights folders)
    rerank: bool = False  # re-rank with the verified pairs of each scenario's database
    rerank_weight: float = reranking.DEFAULT_WEIGHT
    rerank_top: int | None = None  # the graph: pairs among each query's top N candidates (None: the whole database)
    round_min: int = 16  # candidate ranks per stage-1 round at least
    round_min2: int = 2  # candidate ranks per stage-2 round at least
    rounds: int = 8  # rounds a stage is split into (so a cut stage leaves queries even)
    chunk_s: float = 10.0  # target seconds of work between two deadline checks
    pilot_s: float = 15.0  # stage-1 work measured before the plan is made (at most)
    pilot2_pairs: int = 16  # stage-2 pairs timed before the plan is made (at most; 4 at a time)
    pilot2_s: float = 15.0  # seconds of stage-2 work timed before the plan is made (at most)


@dataclass(frozen=True)
class StageInput:
    """Which order of a query's candidates a verification stage reads, and where its progress is kept: stage 1
    reads the stage-0 order (``order0``; progress ``done1``), stage 2 the stage-1 order (``order1``; ``done2``)."""

    number: int

    def order(self, q: QueryState) -> np.ndarray:
        return q.order0 if self.number == 1 else q.order1

    def done(self, q: QueryState) -> int:
        return q.done1 if self.number == 1 else q.done2

    def reached(self, q: QueryState, n: int) -> None:
        if self.number == 1:
            q.done1 = n
        else:
            q.done2 = n


STAGE1, STAGE2 = StageInput(1), StageInput(2)


@dataclass
class CascadeResult:
    plan: Plan | None
    queries: dict[str, QueryState]
    stage1: dict[int, tuple[float, float]]  # pair code -> (score, strength)
    stage2: dict[int, tuple[float, float]]
    shas: list[str]  # pair codes index this list (sorted content hashes)
    scale: float  # the verifier's score_scale: score = strength / (strength + scale)
    seconds: dict[str, float] = field(default_factory=dict)
    pairs: dict[str, int] = field(default_factory=dict)  # pairs computed per stage (not read from a cache)
    cut: list[str] = field(default_factory=list)  # what the deadline guard stopped
    bands: tuple[bool, bool] = (False, False)
    pairs_total: int = 0  # distinct pairs the run used (stage 1's and the re-ranked databases')

    def final_ranking(self, q: QueryState, k1: int, k2: int, top_k: int | None = None,
                      mode: str = "max") -> list[tuple[str, float]]:
        """(database id, score) best first for one query at (K1, K2) (see :func:`ranking.final_ranking`)."""
        return final_ranking(q, self.stage1, self.stage2, k1, k2, self.scale, self.bands, top_k, mode)

    def stage1_order(self, q: QueryState, n: int) -> np.ndarray:
        return stage1_order(q, self.stage1, n, self.scale)

    def ranking(self, query_id: str, top_k: int | None = None, mode: str = "max") -> list[tuple[str, float]]:
        """The query's final ranking at the run's own plan."""
        k2 = self.plan.k2 if self.bands[1] else 0
        return self.final_ranking(self.queries[query_id], self.plan.k1, k2, top_k, mode)


class Cascade:
    """One run of the cascade over a set of queries (see the module docstring)."""

    def __init__(self, stage1: PairStage, stage2: PairStage | None, global_stage, settings: CascadeSettings,
                 deadline: Deadline, scale: float, progress: bool = True, scorer: Scorer = verdict_scores,
                 ranking=None):
        self.stage1 = stage1
        self.scorer = scorer  # stage 1's pair score (stage 2 keeps its verdicts' own)
        self.ranking = ranking  # a ranker.QueryRanking applied after stage 1, or None
        self.stage2 = stage2
        self.global_stage = global_stage
        self.s = settings
        self.deadline = deadline
        self.scale = scale
        self.progress = progress
        self.rate1 = Rate(f"stage 1 ({stage1.name}) pairs")
        self.rate2 = Rate(f"stage 2 ({stage2.name}) pairs") if stage2 else None
        self.v1: dict[int, tuple[float, float]] = {}
        self.v2: dict[int, tuple[float, float]] = {}
        self.seconds: dict[str, float] = {}
        self.pairs = {"stage1": 0, "rerank": 0, "stage2": 0}
        self.database_pairs = 0  # distinct database pairs (not query-database ones) of the re-ranked scenarios
        self.cut: list[str] = []
        self.plan: Plan | None = None
        # set by prepare() and run(): the pair codes, the queries, and what the planner counts
        self.stored_before: dict[str, bool] = {}
        self.codes: PairCodes | None = None
        self.queries: dict[str, QueryState] = {}
        self.fixed_k1: int | None = None  # K1 given (or everything, without a budget); None: planned
        self.fixed_k2: int | None = None
        self.ks1 = np.zeros(0, np.int64)  # per stage-1 pair still to verify, the smallest K that needs it
        self.ks2 = np.zeros(0, np.int64)
        self.rerank_planned = 0  # the re-ranking's database pairs the plan counts as stage-1 work

    # --- setup -------------------------------------------------------------------------------

    def prepare(self, tasks: list[tuple[str, str, str, list[str]]], shas: dict[str, str]) -> None:
        """Per-query state and stage-0 order. ``tasks``: (query id, query image, scenario, database ids);
        ``shas``: the content hash of every usable image id."""
        t0 = self.deadline.clock()
        self.stored_before = {st.name: st.stored() > 0 for st in (self.stage1, self.stage2) if st is not None}
        self.codes = PairCodes(shas.values())
        if self.global_stage is not None and self.global_stage.enabled:
            self.global_stage.describe(self.codes.shas)
        self.queries = build_queries(tasks, shas, self.codes)
        by_scenario: dict[str, list[QueryState]] = {}
        for q in self.queries.values():
            by_scenario.setdefault(q.scenario, []).append(q)
        for group in by_scenario.values():
            order_by_stage0(group, shas, self.global_stage)
        self.seconds["stage0"] = self.deadline.clock() - t0

    @property
    def database_max(self) -> int:
        return max((len(q.usable) for q in self.queries.values()), default=0)

    def _decode(self, code: int) -> tuple[str, str]:
        return self.codes.decode(code)

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

    def pairs1_only(self, k: int) -> int:
        """Stage 1's pairs still to verify when every query sends its top k stage-0 candidates."""
        return int(np.searchsorted(self.ks1, k, side="right"))

    def pairs1_at(self, k: int) -> int:
        """As :meth:`pairs1_only`, with the re-ranking's database pairs where the plan counts them."""
        return self.pairs1_only(k) + self.rerank_planned

    def pairs2_bound(self, k: int) -> int:
        """Stage 2's pairs at most when every query sends its top k stage-1 candidates."""
        return int(sum(min(k, len(q.usable)) for q in self.queries.values()))

    def pairs2_at(self, k: int) -> int:
        return int(np.searchsorted(self.ks2, k, side="right"))

    # --- running a stage in rounds and chunks ---------------------------------------------------

    def _run_stage(self, label: str, stage: PairStage, rate: Rate, verdicts: dict, k: int, which: StageInput,
                   stop_after_s: float | None = None, first_chunk: int = 64,
                   replan: Callable[[int, int], int] | None = None, round_min: int | None = None) -> bool:
        """Score every query's candidates up to rank k. False if the deadline guard stopped it.

        ``which``: the order of q's candidates this stage reads, and where its progress is kept.
        ``stop_after_s``: return after this much work (the pilot), leaving the rest for later.
        ``replan(done, k)``: called at the end of each round, when every query has reached
        rank ``done``; returns the K to go on to (kept >= done), so a revised K is still
        the same for every query.
        """
        started = self.deadline.clock()
        queries = [q for q in self.queries.values() if len(q.usable)]
        total = sum(max(0, min(k, len(q.usable)) - which.done(q)) for q in queries)
        if total <= 0:
            return True
        step = max(round_min or self.s.round_min, math.ceil(k / max(1, self.s.rounds)))
        bar = tqdm(total=total, desc=label, unit="pair", disable=not self.progress, leave=False)
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
                        if which.done(q) < hi:
                            batch.append((q, hi))
                            n_batch += hi - which.done(q)
                    size = first_chunk if not rate.measured else max(16, int(rate.per_s * self.s.chunk_s))
                    if batch and (n_batch >= size or q is None):
                        if not self.deadline.allows(rate.seconds_for(n_batch) if rate.measured else 0.0):
                            if stop_after_s is not None and rate.measured:
                                return True  # the pilot ends here; the plan sizes what fits
                            self.deadline.trip(f"{label} stopped: the next {n_batch} pairs would pass the deadline")
                            self.cut.append(label)
                            return False
                        self._chunk(stage, rate, verdicts, batch, which)
                        bar.update(n_batch)
                        batch, n_batch = [], 0
                        if stop_after_s is not None and self.deadline.clock() - started >= stop_after_s:
                            return True
                if replan is not None and target < k:
                    k = max(target, replan(target, k))
        finally:
            bar.close()
        return True

    def _chunk(self, stage: PairStage, rate: Rate, verdicts: dict, batch: list[tuple[QueryState, int]],
               which: StageInput) -> None:
        codes = set()
        for q, hi in batch:
            pos = which.order(q)[which.done(q):hi]
            codes.update(int(c) for c in q.pair_codes[pos])
        todo = [c for c in codes if c not in verdicts]
        before, t0 = stage.computed, self.deadline.clock()
        got = stage({self._decode(c) for c in todo}) if todo else {}
        rate.add(stage.computed - before, self.deadline.clock() - t0)
        self._record(stage, verdicts, todo, got)
        for q, hi in batch:
            which.reached(q, hi)

    # --- the whole run ------------------------------------------------------------------------

    def run(self) -> Plan:
        """Pilot, plan, stage 1, re-ranking, stage 2; returns the plan as it ended."""
        s = self.s
        dbmax = self.database_max
        self.fixed_k1 = dbmax if s.k1 is None and s.budget_s is None else s.k1
        self.fixed_k2 = (s.k2 if s.k2 is not None else s.k2_max) if s.budget_s is None or s.k2 is not None else None
        t0 = self.deadline.clock()
        self._pilots()
        graphs = database_rerank.database_graphs(self) if s.rerank else {}
        plan = self.plan = self._plan(graphs)
        ok = self._run_stage("stage 1", self.stage1, self.rate1, self.v1, plan.k1, STAGE1,
                             replan=lambda done, k: self._replan(STAGE1, done, k))
        self.seconds["stage1"] = self.deadline.clock() - t0
        self.pairs["stage1"] = self.rate1.items
        for q in self.queries.values():
            n1 = min(q.done1, plan.k1)
            q.order1 = stage1_order(q, self.v1, n1, self.scale) if n1 else np.zeros(0, np.int64)
        if self.ranking is not None:
            t0 = self.deadline.clock()
            self.ranking.apply(self)
            self.seconds["ranker"] = self.deadline.clock() - t0
        if ok and graphs:
            t0 = self.deadline.clock()
            ok = database_rerank.rerank_databases(self, graphs)
            self.seconds["rerank"] = self.deadline.clock() - t0
        if not ok or self.stage2 is None or plan.k2 <= 0:
            if not ok and self.stage2 is not None:
                self.cut.append("stage 2 skipped")
            return plan
        t0 = self.deadline.clock()
        self._run_stage2(plan)
        self.seconds["stage2"] = self.deadline.clock() - t0
        self.pairs["stage2"] = self.rate2.items
        return plan

    def _pilots(self) -> None:
        """Measure the rates the plan needs on work every plan needs; leaves ``ks1`` (stage 1's pairs by K)."""
        s = self.s
        order0 = {qid: q.order0 for qid, q in self.queries.items()}
        pilot_s = min(s.pilot_s, 0.01 * (s.budget_s or 0) + 2.0)
        if self.fixed_k1 is None:  # the first chunks of stage 1: every query's top candidates
            self._run_stage("stage 1 (pilot)", self.stage1, self.rate1, self.v1, min(self.database_max, s.round_min),
                            STAGE1, stop_after_s=pilot_s)
        self.ks1 = self._first_needed(order0, self.stage1, self.v1)
        if self.fixed_k1 is None and not self.rate1.measured and len(self.ks1) and self.deadline.left() > 0:
            self._pilot_uncached(pilot_s)  # the pilot's pairs were cached (a resumed run): time uncached ones
            self.ks1 = self._first_needed(order0, self.stage1, self.v1)
        if self.stage2 is not None and self.fixed_k2 is None and self.deadline.left() > 0:
            self._pilot2()

    def _plan(self, graphs: dict[str, np.ndarray]) -> Plan:
        """K1 and K2 for the run: given, or planned from the measured rates to fit the budget."""
        dbmax = self.database_max
        rr_pairs = database_rerank.uncached_pairs(self, graphs)
        self.rerank_planned = rr_pairs  # re-ranking's pairs count as stage-1 work
        if self.fixed_k1 is not None and (self.fixed_k2 is not None or self.stage2 is None):
            k1 = self.fixed_k1
            k2 = min(self.fixed_k2 or 0, k1) if self.stage2 is not None else 0
            plan = Plan(k1, k2, self.pairs1_at(k1), self.pairs2_bound(k2),
                        self.rate1.seconds_for(self.pairs1_at(k1)) if self.rate1.measured else 0.0, 0.0,
                        self.deadline.elapsed(), self.deadline.budget_s, dbmax, fixed=True,
                        stage2=self.stage2 is not None)
        else:
            plan = plan_cascade(self.deadline, self.rate1, self.rate2, self.pairs1_at, self.pairs2_bound, dbmax,
                                self._k2_max(), k1_fixed=self.fixed_k1)
            if graphs and rr_pairs:
                without = plan_cascade(self.deadline, self.rate1, self.rate2, self.pairs1_only, self.pairs2_bound,
                                       dbmax, self._k2_max(), k1_fixed=self.fixed_k1)
                if without.k1 > plan.k1:  # stage 1's coverage comes first; re-rank with what time is left
                    without.notes.append(f"re-ranking: its {rr_pairs} database pairs do not all fit beside stage "
                                         f"1's; scenarios are re-ranked, smallest first, while the time left allows")
                    plan, self.rerank_planned = without, 0
        if graphs and self.rerank_planned == rr_pairs:
            plan.notes.append(f"re-ranking: every pair of each scenario's database verified ({rr_pairs} not cached, "
                              f"counted in stage 1's pairs)")
        log.info("rates: %s; %s", self.rate1, self.rate2 or "no stage 2")
        for line in plan.describe().splitlines():
            log.info("%s", line)
        plan.first_projection_s = plan.projected_s
        return plan

    def _k2_max(self) -> int:
        return self.s.k2_max if self.fixed_k2 is None else self.fixed_k2

    def _replan(self, which: StageInput, done: int, k: int) -> int:
        """A stage's K once every query reached rank ``done``, re-planned with the rates measured so far (a K
        raised only for a worthwhile gain: no flapping)."""
        plan = self.plan
        fixed = self.fixed_k1 if which is STAGE1 else self.fixed_k2
        if plan.fixed or fixed is not None:
            return k
        if which is STAGE1:
            already = self.pairs1_only(done)
            new = plan_cascade(self.deadline, self.rate1, self.rate2,
                               lambda kk: max(0, self.pairs1_only(kk) - already) + self.rerank_planned,
                               self.pairs2_bound, self.database_max, self._k2_max())
            k_new, seconds, rate = max(done, new.k1), new.seconds1 + new.seconds2, self.rate1
        else:
            already = self.pairs2_at(done)
            new = plan_cascade(self.deadline, Rate("done", 1e12), self.rate2, lambda kk: 0,
                               lambda kk: max(0, self.pairs2_at(kk) - already), self.database_max,
                               min(self.s.k2_max, plan.k1))
            k_new, seconds, rate = max(done, new.k2), new.seconds2, self.rate2
        if k < k_new < k + max(1, k // 10):
            k_new = k
        if k_new != k:
            plan.revised_projection_s = self.deadline.elapsed() + seconds
            log.info("plan: K%d %d -> %d after stage %d reached rank %d for every query (%s); projected run "
                     "time now %.0f s", which.number, k, k_new, which.number, done, rate, plan.revised_projection_s)
            if which is STAGE1:
                plan.k1 = k_new
            else:
                plan.k2 = k_new
        return k_new

    def _run_stage2(self, plan: Plan) -> None:
        """Stage 2 on each query's top K2 stage-1 candidates, K2 re-planned from the rates measured so far."""
        order1 = {qid: q.order1 for qid, q in self.queries.items()}
        self.ks2 = self._first_needed(order1, self.stage2, self.v2)
        if not plan.fixed and self.fixed_k2 is None:
            replan = plan_cascade(self.deadline, Rate("done", 1e12), self.rate2, lambda k: 0, self.pairs2_at,
                                  self.database_max, min(self.s.k2_max, plan.k1))
            if replan.k2 != plan.k2:
                plan.revised_projection_s = self.deadline.elapsed() + replan.seconds2
                log.info("plan: stage 2 re-planned with the measured rates: K2 %d -> %d (%d pairs, %.0f s); "
                         "projected run time now %.0f s", plan.k2, replan.k2, replan.pairs2, replan.seconds2,
                         plan.revised_projection_s)
            plan.k2, plan.pairs2, plan.seconds2 = replan.k2, replan.pairs2, replan.seconds2
        self._run_stage("stage 2", self.stage2, self.rate2, self.v2, min(plan.k2, plan.k1), STAGE2,
                        replan=lambda done, k: self._replan(STAGE2, done, k), round_min=self.s.round_min2,
                        first_chunk=8)

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
            self.score_codes(self.stage1, self.rate1, self.v1, picked)

    def _pilot2(self) -> None:
        """Time the expensive matcher on a few pairs every plan is likely to need (stage 0's best candidates)."""
        codes = list(dict.fromkeys(int(q.pair_codes[q.order0[0]]) for q in self.queries.values() if len(q.usable)))
        if not codes:
            return
        self.score_codes(self.stage2, None, self.v2, codes[:2])  # the first calls build and warm the model
        limit = min(self.s.pilot2_s, 0.01 * (self.s.budget_s or 0) + 2.0)
        started, i = self.deadline.clock(), 2
        while i < len(codes) and self.deadline.clock() - started < limit and self.rate2.items < self.s.pilot2_pairs:
            self.score_codes(self.stage2, self.rate2, self.v2, codes[i : i + 4])
            i += 4
        if not self.rate2.measured:  # all cached: nothing to time; assume stage 1's rate / 20 until measured
            self.rate2.prior = (self.rate1.per_s or 1.0) / 20

    def score_codes(self, stage, rate, verdicts, codes) -> None:
        todo = [c for c in codes if c not in verdicts]
        if not todo:
            return
        before, t0 = stage.computed, self.deadline.clock()
        got = stage({self._decode(c) for c in todo})
        if rate is not None:
            rate.add(stage.computed - before, self.deadline.clock() - t0)
        self._record(stage, verdicts, todo, got)

    def _record(self, stage: PairStage, verdicts: dict, codes: list[int], got: dict) -> None:
        """Each pair's (score, strength): stage 1's score from :attr:`scorer`, stage 2's from its verdict."""
        if not codes:
            return
        pairs = [self._decode(c) for c in codes]
        found = [got[p] for p in pairs]
        scores = (self.scorer if stage is self.stage1 else verdict_scores)(pairs, found)
        for c, v, s in zip(codes, found, scores):
            verdicts[c] = (float(s), float(v["strength"]))

    def result(self) -> CascadeResult:
        bands = (self.global_stage is not None and self.global_stage.enabled, self.stage2 is not None)
        k1 = self.plan.k1 if self.plan else 0
        used = {int(c) for q in self.queries.values() for c in q.pair_codes[q.order0[:k1]]}
        return CascadeResult(self.plan, self.queries, self.v1, self.v2, self.codes.shas, self.scale,
                             dict(self.seconds), dict(self.pairs), list(self.cut), bands,
                             len(used) + self.database_pairs)
