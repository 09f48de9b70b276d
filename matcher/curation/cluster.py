"""The plan a curation command prints before its work on a cluster (``--backend ray``): the pairs to verify and
the images to extract, a short pilot on the first of them, and the projected wall time
(:mod:`matcher.backends.planner`)."""

from __future__ import annotations

from ..backends import PLAN_NODES, planner
from ..pairs.store import canonical
from .curator import Curator, PairTask


def wanted(cur: Curator, tasks: list[PairTask]) -> bool:
    """Whether to print a plan: on a cluster, with work to do."""
    return cur.engine.backend.name != "local" and bool(tasks)


def plan_lines(cur: Curator, tasks: list[PairTask], node_counts=PLAN_NODES, seconds: float = planner.PILOT_S
               ) -> list[str]:
    """The plan of verifying ``tasks``: what the caches lack, a pilot on the first tasks that need work (its
    verdicts are kept), the projection."""
    cached = cur.engine.cached_pairs(cur.pair_keys(tasks))
    todo = [t for t in tasks if t.a.id in cur.shas and t.b.id in cur.shas and canonical(*cur.keys(t)) not in cached]
    pairs = {canonical(*cur.keys(t)) for t in todo}
    keys = {cur.key(p, t.mirror == side) for t in todo for p, side in ((t.a, "a"), (t.b, "b"))}
    images = sum(1 for k in keys if not cur.engine.has_features(k))
    backend = cur.engine.backend
    pilot = planner.run_pilot(backend, lambda part: len(cur.verdicts(part)), todo, seconds) if todo else None
    work = (f"{len(pairs):,} pairs to verify ({len(cached):,} more already in the verdict store, not verified again); "
            f"{images:,} images to extract")
    return planner.lines(backend, pilot, len(pairs), images, work, node_counts)
