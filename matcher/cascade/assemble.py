"""Put the cascade together from an engine and run it over a list of queries."""

from __future__ import annotations

import logging

from .. import presets
from ..engine import Engine
from ..timing import Deadline
from .global_descriptors import GlobalStage
from .scheduler import Cascade, CascadeResult, CascadeSettings
from .scoring import make_scoring
from .stages import EngineStage, build_stage2

log = logging.getLogger(__name__)


def run_cascade(engine: Engine, tasks: list[tuple[str, str, str, list[str]]], shas: dict[str, str],
                settings: CascadeSettings | None = None, deadline: Deadline | None = None,
                metadata: dict[str, dict] | None = None) -> CascadeResult:
    """Every query through the cascade; the result keeps each stage's scores (for benchmarks).

    ``tasks``: (query id, query image id, scenario id, database image ids) per query; ``shas``: the
    content hash of every usable image id (:meth:`Engine.prepare`); ``metadata``: per image id, what
    the learned pair score reads (``date``, ``viewpoint``), where known.
    """
    settings = settings or CascadeSettings()
    if deadline is None:
        deadline = Deadline(settings.budget_s if settings.budget_s is not None else float("inf"))
    stage2_name = presets.default_stage2(engine.conf) if settings.stage2 == "auto" else settings.stage2
    global_name = (presets.default_global(engine.conf) if settings.global_descriptor == "auto"
                   else settings.global_descriptor or "none")
    by_sha = {}
    for image_id, sha in sorted(shas.items()):  # an image file listed under two ids: the first id's metadata
        by_sha.setdefault(sha, (metadata or {}).get(image_id))
    scorer, ranking = make_scoring(settings.pair_score, engine, by_sha, settings.pair_model, settings.ranker)
    stage0 = GlobalStage(global_name, engine, settings.global_head)
    cascade = Cascade(EngineStage(engine), build_stage2(engine, stage2_name), stage0, settings, deadline,
                      engine.conf["verifier"]["score_scale"], engine.progress, scorer, ranking)
    cascade.prepare(tasks, shas)
    cascade.run()
    result = cascade.result()
    engine.stats.pairs = result.pairs_total
    engine.stats.pairs_verified = engine.verified()
    engine.stats.seconds.update(result.seconds)
    if deadline.tripped:
        log.warning("the time budget cut the run (%s); the submission ranks every query from what was done",
                    "; ".join(deadline.tripped))
    return result
