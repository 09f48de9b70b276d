"""Measured rates of work and the hard wall-clock deadline of a run.

:class:`Rate` is items per second of one kind of work, measured on the run's own work.
:class:`Deadline` is the guard every long stage asks, chunk by chunk, whether the next
chunk still ends in time; once it says no, the stage stops, the run ranks every query
from what it has and says so (see :mod:`matcher.cascade.budget` for the plan).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

DEFAULT_BUDGET_S = 3 * 3600.0  # the challenge's limit
RESERVE_S = 20.0  # seconds kept back for ranking and writing the submission
RESERVE_SHARE = 0.01  # and this share of the whole budget


class Rate:
    """Items per second of one kind of work, measured on the run's own work."""

    def __init__(self, name: str, prior: float | None = None):
        self.name = name
        self.prior = prior  # items/s to assume before any measurement
        self.items = 0
        self.seconds = 0.0

    def add(self, items: int, seconds: float) -> None:
        if items > 0:
            self.items += items
            self.seconds += max(seconds, 0.0)

    @property
    def measured(self) -> bool:
        return self.items > 0 and self.seconds > 0

    @property
    def per_s(self) -> float | None:
        if self.measured:
            return self.items / self.seconds
        return self.prior

    def seconds_for(self, items: int) -> float:
        if items <= 0:
            return 0.0
        rate = self.per_s
        return math.inf if not rate else items / rate

    def __str__(self) -> str:
        rate = self.per_s
        how = f"measured on {self.items}" if self.measured else "assumed"
        return f"{self.name}: {rate:.3g}/s ({how})" if rate else f"{self.name}: unknown"


class Deadline:
    """The hard wall-clock guard of a run."""

    def __init__(self, budget_s: float = DEFAULT_BUDGET_S, start: float | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        self.budget_s = float(budget_s)
        self.clock = clock
        self.start = clock() if start is None else start
        finite = math.isfinite(self.budget_s)
        self.reserve_s = min(RESERVE_S + RESERVE_SHARE * self.budget_s, 0.2 * self.budget_s) if finite else 0.0
        self.tripped: list[str] = []  # what was cut, for the log

    def elapsed(self) -> float:
        return self.clock() - self.start

    def left(self) -> float:
        """Seconds left for work, the reserve for writing the result kept back."""
        return self.budget_s - self.reserve_s - self.elapsed()

    def allows(self, seconds: float) -> bool:
        """Whether work expected to take ``seconds`` still ends before the deadline."""
        return seconds <= self.left()

    def trip(self, what: str) -> None:
        if what not in self.tripped:
            self.tripped.append(what)
            log.warning("deadline guard: %s (%.0f s of %.0f s used)", what, self.elapsed(), self.budget_s)
