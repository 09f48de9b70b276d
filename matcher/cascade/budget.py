"""Time budget: the plan (K per stage) that fits the cuttable work into the time left.

The run has a wall-clock budget (default 3 hours, the challenge's limit). Work
that cannot be cut (hashing, feature extraction, stage 0) is done first; the
cascade's K are then chosen so that the projected time of the cuttable work
(stage-1 and stage-2 pairs) fits what is left, with a safety margin:

* stage 1 (cheap verification) is sized first: ``K1`` is the largest number of
  stage-0 candidates per query whose still-unverified pairs fit the time left;
* stage 2 (the expensive matcher) gets what stage 1 leaves: ``K2`` is the
  largest number of stage-1 candidates per query (at most ``k2_max``) whose
  pairs fit in the remainder.

Rates are measured on the first chunk of each stage's real work (pairs that
every plan needs, so nothing is wasted), and the plan is revised when a stage's
own rate is known. K is the same for every query of the run and is logged, and
the results are deterministic given K, so a query's ranking depends only on
its image, its scenario's database and the run's K (:mod:`matcher.cascade.scheduler`;
the reasoning is in benchmarks/RESULTS.md, "Shortlist and time budget").

:class:`~matcher.timing.Deadline` is the hard guard: every stage works in chunks
and asks it before each chunk whether the chunk still fits; once it says no, the
expensive stages stop, the run ranks every query from what it has and says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..timing import Deadline, Rate

SAFETY = 0.10  # fraction of the time left kept back from the plan


@dataclass
class Plan:
    """K per stage and what they cost, as projected when chosen."""

    k1: int  # stage-0 candidates per query that stage 1 verifies
    k2: int  # stage-1 candidates per query that stage 2 re-scores
    pairs1: int  # stage-1 pairs still to verify at k1 (cached ones excluded)
    pairs2: int  # stage-2 pairs still to verify at k2 (an upper bound before stage 1 has run)
    seconds1: float
    seconds2: float
    elapsed_s: float  # run time when the plan was made
    budget_s: float
    database_max: int  # the largest candidate list of any query
    fixed: bool = False  # K given by the user, not chosen from the budget
    notes: list[str] = field(default_factory=list)
    first_projection_s: float | None = None  # projected_s when the plan was first logged (later revisions aside)
    stage2: bool = True  # whether the run has a stage 2 at all
    revised_projection_s: float | None = None  # run time projected by the last revision of the plan

    @property
    def projected_s(self) -> float:
        return self.elapsed_s + self.seconds1 + self.seconds2

    @property
    def full(self) -> bool:
        """Whether stage 1 sees every candidate of every query (nothing cut by stage 0)."""
        return self.k1 >= self.database_max

    def describe(self) -> str:
        how = "given" if self.fixed else "planned"
        lines = [
            f"plan ({how}): stage 1 verifies the top {self.k1} stage-0 candidates per query "
            f"({'all of them' if self.full else f'of up to {self.database_max}'}): {self.pairs1} pairs to verify, "
            f"{self.seconds1:.0f} s",
            (f"plan ({how}): stage 2 re-scores the top {self.k2} stage-1 candidates per query: "
             f"{self.pairs2} pairs at most, {self.seconds2:.0f} s") if self.stage2 else f"plan ({how}): no stage 2",
            f"plan ({how}): projected run time {self.projected_s:.0f} s of a {self.budget_s:.0f} s budget "
            f"({self.elapsed_s:.0f} s already spent)",
        ]
        return "\n".join(lines + [f"plan: {n}" for n in self.notes])


def largest_k(cost: Callable[[int], float], k_max: int, limit: float) -> int:
    """The largest k in [0, k_max] with ``cost(k) <= limit``; ``cost`` must be non-decreasing in k."""
    if k_max <= 0 or cost(0) > limit:
        return 0
    if cost(k_max) <= limit:
        return k_max
    lo, hi = 0, k_max  # cost(lo) <= limit < cost(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if cost(mid) <= limit:
            lo = mid
        else:
            hi = mid
    return lo


def plan_cascade(
    deadline: Deadline,
    rate1: Rate,
    rate2: Rate | None,
    pairs1_at: Callable[[int], int],
    pairs2_at: Callable[[int], int],
    database_max: int,
    k2_max: int,
    safety: float = SAFETY,
    k1_fixed: int | None = None,
) -> Plan:
    """Choose K1 then K2 so the cuttable work fits the time left (see the module docstring).

    ``pairs1_at(k)`` / ``pairs2_at(k)``: the stage's pairs still to compute when each query
    sends its top k candidates to it (non-decreasing in k). ``rate2=None``: no stage 2.
    """
    left = max(0.0, deadline.left())
    usable = left * (1.0 - safety)

    def t1(k: int) -> float:
        return rate1.seconds_for(pairs1_at(k))

    def t2(k: int) -> float:
        return rate2.seconds_for(pairs2_at(k)) if rate2 is not None else 0.0

    notes = []
    k1 = largest_k(t1, database_max, usable) if k1_fixed is None else min(k1_fixed, database_max)
    k2 = 0
    if rate2 is not None:
        k2 = largest_k(t2, min(k2_max, k1), usable - t1(k1))
    if k1 < database_max and k1_fixed is None:
        notes.append(f"stage 1 cannot verify every candidate in the budget: K1 cut to {k1} of {database_max}")
    if rate2 is not None and k2 < min(k2_max, k1):
        notes.append(f"stage 2 cut to K2 = {k2} (wanted {min(k2_max, k1)})")
    return Plan(k1, k2, pairs1_at(k1), pairs2_at(k2) if rate2 is not None else 0, t1(k1), t2(k2),
                deadline.elapsed(), deadline.budget_s, database_max, notes=notes, stage2=rate2 is not None)
