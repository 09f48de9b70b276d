"""The plan printed before a run on a cluster: the work, the rate of one worker measured in a short pilot,
and the wall time that rate gives on the cluster connected and on N nodes like its nodes.

The pilot is real work (its verdicts and features are stored and not computed again): the first
pieces of the run, in growing parts (a few pairs per worker, then four times as many) until it has
taken about ``seconds``. A worker's rate is the pairs it verified per second of its tasks' own work (a
new worker's start-up and the transfer of the features not counted), so the projection,
``pairs / (rate x CPU workers)`` plus the extraction at its own measured rate, is the time with every
worker busy: the lower bound that scheduling, transfers and uneven blocks add to (``make bench-ray``
measures how much on this machine: a few per cent).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import PLAN_NODES

PILOT_S = 10.0  # seconds of pilot work at most (about)
PILOT_PER_SLOT = 8  # work items per worker in the pilot's first part


@dataclass
class Pilot:
    items: int = 0  # work items run (pairs, or the caller's tasks)
    pairs: int = 0  # pairs verified by the backend's workers
    images: int = 0  # images extracted by them
    tasks: int = 0
    pair_s: float = 0.0  # the tasks' own seconds, verifying
    image_s: float = 0.0  # and extracting
    wall_s: float = 0.0
    slots: int = 1

    @property
    def pairs_per_worker(self) -> float | None:
        """Pairs per second of one worker (its tasks' time; without per-task times, the wall time shared out)."""
        if self.pair_s > 0:
            return self.pairs / self.pair_s
        if self.pairs and self.wall_s > 0:
            return self.pairs / (self.wall_s * self.slots)
        return None

    @property
    def images_per_worker(self) -> float | None:
        return self.images / self.image_s if self.images and self.image_s > 0 else None


def _totals(backend) -> dict:
    out = {"pairs": 0, "images": 0, "tasks": 0, "pair_s": 0.0, "image_s": 0.0}
    for w in backend.work().values():
        for k in out:
            out[k] += w.get(k, 0)
    return out


def run_pilot(backend, run: Callable[[list], int | None], items: Sequence, seconds: float = PILOT_S) -> Pilot:
    """Run ``run(part)`` on growing parts of ``items`` for about ``seconds``, and measure it. ``run`` returns the
    pairs it verified, counted when the backend does not count them itself (the local one)."""
    pilot = Pilot(slots=backend.slots)
    before = _totals(backend)
    start, n = 0, PILOT_PER_SLOT * backend.slots
    t0 = time.perf_counter()
    while start < len(items):
        part = list(items[start : start + n])
        pilot.pairs += int(run(part) or 0)
        pilot.items += len(part)
        start += len(part)
        if time.perf_counter() - t0 > seconds / 4:
            break
        n *= 4
    pilot.wall_s = time.perf_counter() - t0
    after = _totals(backend)
    if after["tasks"] > before["tasks"]:  # the backend timed its tasks: their own figures
        for k in ("pairs", "images", "tasks", "pair_s", "image_s"):
            setattr(pilot, k, after[k] - before[k])
    return pilot


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def project(pairs: int, images: int, pilot: Pilot, cpus: float, gpus: float) -> float | None:
    """Seconds for ``pairs`` and ``images`` with every worker busy at the pilot's rates (None: not measured)."""
    rate = pilot.pairs_per_worker
    if pairs and not rate:
        return None
    t = pairs / (rate * max(cpus, 1)) if pairs else 0.0
    if images:
        per = pilot.images_per_worker
        if per is None:
            return None
        t += images / (per * max(gpus or cpus, 1))
    return t


def lines(backend, pilot: Pilot | None, pairs: int, images: int, work: str,
          node_counts: Sequence[int] = PLAN_NODES) -> list[str]:
    """The plan: ``work`` (a line on what is to do: ``pairs`` to verify, ``images`` to extract, pilot included),
    the pilot's rates, the projected wall time of the rest here and on ``node_counts`` nodes like these."""
    nodes = backend.nodes()
    cpus, gpus = sum(n.cpus for n in nodes), sum(n.gpus for n in nodes)
    per_cpu, per_gpu = cpus / max(len(nodes), 1), gpus / max(len(nodes), 1)
    out = [f"plan ({backend.label}):", f"  {work}"]
    if pilot is None or (not pilot.pairs and not pilot.images):
        out.append("  pilot: nothing to measure (no work left)" if not pairs and not images else
                   "  pilot: nothing measured")
        return out
    rate, per_img = pilot.pairs_per_worker, pilot.images_per_worker
    out.append(f"  pilot: {pilot.pairs:,} pairs" + (f" and {pilot.images:,} images" if pilot.images else "")
               + (f" in {pilot.tasks} tasks" if pilot.tasks else "")
               + f", {pilot.wall_s:.1f} s (the workers' start-up included): "
               + (f"{rate:.1f} pairs/s per worker" if rate else "pairs not measured")
               + (f", {per_img:.2f} images/s per {'GPU' if gpus else 'worker'}" if per_img else ""))
    left_pairs = max(0, pairs - pilot.pairs)
    left_images = max(0, images - pilot.images)
    here = project(left_pairs, left_images, pilot, cpus, gpus)
    kind = f"{per_cpu:g} CPU{'s' * (per_cpu != 1)}" + (f" + {per_gpu:g} GPU{'s' * (per_gpu != 1)}" if per_gpu else "")
    shown = [f"this cluster ({len(nodes)} node{'s' * (len(nodes) != 1)}, {cpus:g} CPUs"
             + (f", {gpus:g} GPUs" if gpus else "") + f"): {duration(here) if here is not None else 'not measured'}"]
    for n in node_counts:
        t = project(left_pairs, left_images, pilot, n * per_cpu, n * per_gpu)
        shown.append(f"{n} node{'s' * (n != 1)}: {duration(t) if t is not None else 'not measured'}")
    out.append(f"  projected wall time of the rest ({left_pairs:,} pairs, {left_images:,} images), every worker busy: "
               f"{'; '.join(shown)} (nodes of {kind} each)")
    return out
