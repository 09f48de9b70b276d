"""The time-budget planner and the deadline guard: K follows the budget and the measured rates;
a run with a budget too small for anything still writes a complete, valid submission."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import run_main
from scenario_factory import loo_and_split

from matcher.cascade.budget import largest_k, plan_cascade
from matcher.challenge import submission
from matcher.timing import Deadline, Rate

N_QUERIES, DB = 400, 300  # a workload of 400 queries against databases of 300 images


class FakeClock:
    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def rate(per_s: float, name: str = "pairs") -> Rate:
    r = Rate(name)
    r.add(int(per_s * 10), 10.0)  # as if measured on 10 s of work
    return r


def plan(budget_s: float, r1: float = 100.0, r2: float = 5.0, elapsed: float = 0.0, k2_max: int = 20):
    clock = FakeClock(elapsed)
    deadline = Deadline(budget_s, start=0.0, clock=clock)
    return plan_cascade(deadline, rate(r1), rate(r2), lambda k: N_QUERIES * min(k, DB),
                        lambda k: N_QUERIES * min(k, DB), DB, k2_max)


def test_largest_k_is_the_last_k_that_fits():
    assert largest_k(lambda k: 2.0 * k, 100, 50.0) == 25
    assert largest_k(lambda k: 2.0 * k, 100, 1e9) == 100
    assert largest_k(lambda k: 1.0 + k, 100, 0.5) == 0
    assert largest_k(lambda k: 0.0, 0, 10.0) == 0


def test_generous_budget_covers_the_whole_database():
    p = plan(10_800.0)
    assert p.k1 == DB and p.full and p.k2 == 20
    assert p.pairs1 == N_QUERIES * DB and p.pairs2 == N_QUERIES * 20
    assert p.projected_s <= 10_800.0


def test_k_shrinks_when_the_budget_shrinks():
    plans = [plan(b) for b in (10_800.0, 2_400.0, 1_200.0, 600.0, 60.0)]
    k1s, k2s = [p.k1 for p in plans], [p.k2 for p in plans]
    assert k1s == sorted(k1s, reverse=True) and k1s[0] > k1s[-2] > 0
    assert k2s == sorted(k2s, reverse=True)
    assert k1s[2] < DB and "K1 cut" in " ".join(plans[2].notes)
    for p in plans:  # every plan fits its budget (less the reserve and safety margin)
        assert p.projected_s <= p.budget_s


def test_k_shrinks_when_the_measured_rate_drops():
    fast, slow, slower = plan(1_500.0, r1=100.0), plan(1_500.0, r1=50.0), plan(1_500.0, r1=20.0)
    assert fast.k1 > slow.k1 > slower.k1
    lg_fast, lg_slow = plan(10_800.0, r2=5.0), plan(10_800.0, r2=0.5)
    assert lg_fast.k1 == lg_slow.k1 == DB and lg_fast.k2 > lg_slow.k2


def test_time_already_spent_counts():
    assert plan(3_000.0, elapsed=0.0).k1 > plan(3_000.0, elapsed=2_000.0).k1


def test_k_beyond_the_database_is_capped():
    p = plan(1e7, k2_max=10_000)
    assert p.k1 == DB and p.k2 == DB


def test_deadline_guard():
    clock = FakeClock(0.0)
    d = Deadline(100.0, start=0.0, clock=clock)
    assert d.allows(50.0) and not d.allows(d.left() + 1)
    clock.t = 99.0
    assert d.left() < 0 and not d.allows(0.0)
    d.trip("stage 2 stopped")
    d.trip("stage 2 stopped")
    assert d.tripped == ["stage 2 stopped"]
    assert Deadline(float("inf")).allows(1e12)


def test_rate_before_and_after_measuring():
    r = Rate("x", prior=4.0)
    assert not r.measured and r.seconds_for(8) == 2.0
    r.add(10, 5.0)
    assert r.measured and r.per_s == 2.0 and r.seconds_for(4) == 2.0
    assert Rate("y").seconds_for(1) == float("inf") and Rate("y").seconds_for(0) == 0.0


@pytest.fixture(scope="module")
def whales(tmp_path_factory):
    root = tmp_path_factory.mktemp("budget")
    return root, loo_and_split(root, n_whales=8, n_loo=5, seed=5)


def expected_answers(root: Path) -> dict:
    from matcher.challenge import layout

    return layout.load(root).expected()


def test_tiny_budget_still_writes_a_complete_valid_submission(whales, tmp_path):
    root, meta = whales
    out = tmp_path / "sub.csv"
    res = run_main(root, out, tmp_path / "cache", "--time-budget", "0.001")
    assert res.returncode == 0, res.stderr
    assert "deadline guard" in res.stderr and "cut" in res.stderr
    sub = pd.read_csv(out, dtype={"query_id": str, "database_image_id": str})
    expected = expected_answers(root)
    submission.validate(sub, expected)  # every query answered, own image never, rows in order
    assert set(sub["query_id"]) == set(expected)
    counts = sub.groupby("query_id").size()
    for qid, (qimg, database) in expected.items():
        assert counts[qid] == min(20, len(database - {qimg}))


def test_budget_that_fits_gives_the_unbudgeted_answer(whales, tmp_path):
    """With the default budget nothing is cut on a small run: same rows as no budget at all."""
    root, meta = whales
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    ra = run_main(root, a, tmp_path / "c1")
    rb = run_main(root, b, tmp_path / "c2", "--time-budget", "none")
    assert ra.returncode == 0 and rb.returncode == 0, ra.stderr + rb.stderr
    assert "plan (planned): stage 1 verifies the top" in ra.stderr and "all of them" in ra.stderr
    assert a.read_bytes() == b.read_bytes()
    assert "deadline guard" not in ra.stderr


class SlowStage:
    """Wraps a pair stage; every pair it computes advances a simulated clock by ``cost`` seconds."""

    def __init__(self, name: str, inner, clock: FakeClock, cost: float):
        self.name, self.inner, self.clock, self.cost = name, inner, clock, cost

    @property
    def computed(self):
        return self.inner.computed

    def cached(self, pairs):
        return self.inner.cached(pairs)

    def stored(self):
        return self.inner.stored()

    def __call__(self, pairs):
        before = self.inner.computed
        out = self.inner(pairs)
        self.clock.t += self.cost * (self.inner.computed - before)
        return out


def simulated_run(root, tmp_path, budget: float, cost1: float, cost2: float):
    """The cascade on generated whales with stage times simulated (stage 2: MNN again, priced as expensive)."""
    from matcher.cascade.scheduler import Cascade, CascadeSettings
    from matcher.cascade.stages import EngineStage
    from matcher.challenge import layout
    from matcher.engine import Engine

    challenge = layout.load(root)
    paths, bad = challenge.image_paths(set(challenge.metadata.index))
    eng = Engine("sift-mnn", tmp_path / "cache", "cpu", progress=False)
    shas, _ = eng.prepare(paths, bad)
    other = Engine("sift-mnn", None, "cpu", workers=1, progress=False)  # the same matcher, its verdicts apart
    other.prepare(paths, bad)
    clock = FakeClock(100.0)
    deadline = Deadline(budget, start=100.0, clock=clock)
    stage1 = SlowStage("s1", EngineStage(eng), clock, cost1)
    stage2 = SlowStage("s2", EngineStage(other), clock, cost2)
    cascade = Cascade(stage1, stage2, None, CascadeSettings(budget_s=budget, k2_max=10, round_min=4), deadline,
                      eng.conf["verifier"]["score_scale"], progress=False)
    cascade.prepare(challenge.query_tasks(), shas)
    plan = cascade.run()
    return cascade, plan, clock, deadline


def test_planned_run_ends_inside_the_budget_with_one_k_for_every_query(whales, tmp_path):
    """Simulated time: 8 queries x 23 or 16 candidates at 1 s a stage-1 pair and 10 s a stage-2 pair."""
    root, meta = whales
    cascade, plan, clock, deadline = simulated_run(root, tmp_path, budget=200.0, cost1=1.0, cost2=10.0)
    assert 0 < plan.k1 < plan.database_max  # not everything fits: stage 1 is cut
    assert clock.t - 100.0 <= 200.0  # and the run (as simulated) ends inside the budget
    done = {min(q.done1, plan.k1) for q in cascade.queries.values() if len(q.usable) >= plan.k1}
    assert done == {plan.k1}  # one K1 for every query
    assert not deadline.tripped or all("stage 2" in t for t in deadline.tripped)


def test_bigger_budget_buys_more_candidates_and_stage_2(whales, tmp_path):
    root, meta = whales
    small = simulated_run(root, tmp_path / "a", budget=150.0, cost1=1.0, cost2=10.0)[1]
    big = simulated_run(root, tmp_path / "b", budget=600.0, cost1=1.0, cost2=10.0)[1]
    huge = simulated_run(root, tmp_path / "c", budget=100_000.0, cost1=1.0, cost2=10.0)[1]
    assert small.k1 < big.k1 == huge.k1 == huge.database_max
    assert small.k2 <= big.k2 < huge.k2 == 10
