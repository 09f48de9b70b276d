"""The main job: every scenario's queries ranked against their database, as the challenge asks."""

from __future__ import annotations

import logging
import re
from collections import Counter

import pandas as pd

from ..backends import PLAN_NODES, planner
from ..cascade import CascadeResult, CascadeSettings, run_cascade
from ..cascade.scoring import check_models
from ..engine import Engine
from ..errors import DataError
from ..pairs.store import canonical
from ..timing import Deadline
from .layout import ChallengeData
from .submission import SUBMISSION_COLUMNS, TOP_K, distinct_scores

log = logging.getLogger(__name__)
PILOT_PAIRS = 4096  # candidates of the first queries the pilot may take from
# A run that loses at least this share of its images (and this many) to one cause stops: a wrong folder, a
# metadata file that does not fit its images or a broken decoder, not a few bad photos.
ONE_CAUSE_SHARE, ONE_CAUSE_MIN = 0.5, 10
BY_DESIGN = ("the time budget ran out",)  # causes that are the budget's doing, not the input's


def run(data: ChallengeData, engine: Engine, settings: CascadeSettings | None = None,
        deadline: Deadline | None = None, plan_nodes=PLAN_NODES) -> CascadeResult:
    """Prepare every image (within the deadline when the settings have a budget) and run the cascade. On a
    cluster, the plan (:func:`cluster_plan`, projected to ``plan_nodes`` nodes too) is logged first."""
    settings = settings or CascadeSettings()
    if deadline is None:
        deadline = Deadline(settings.budget_s if settings.budget_s is not None else float("inf"))
    check_models(settings.pair_score, engine, settings.pair_model, settings.ranker)
    paths, bad = data.image_paths(data.image_ids())
    if engine.backend.name != "local":
        for line in cluster_plan(data, engine, paths, settings, plan_nodes):
            log.info("%s", line)
    shas, bad = engine.prepare(paths, bad, deadline if settings.budget_s is not None else None)
    check_usable(len(shas), bad)
    return run_cascade(engine, data.query_tasks(), shas, settings, deadline, data.photo_metadata())


def cause(message: str) -> str:
    """What an unusable image's message says went wrong, without the file and the details that vary."""
    text = message.split(": ", 1)[-1]
    text = re.sub(r"'[^']*'", "'...'", text)
    return re.sub(r"\s*\(.*$", "", text).strip()


def check_usable(usable: int, bad: dict[str, str]) -> None:
    """:class:`DataError` when the run could use no image at all, or lost most of its images to one cause
    (:data:`ONE_CAUSE_SHARE`, :data:`ONE_CAUSE_MIN`): its submission would say nothing. A few bad photos stay
    warnings (the engine logs each one)."""
    if not bad:
        return
    counts = Counter(cause(m) for m in bad.values())
    (top, n), total = counts.most_common(1)[0], usable + len(bad)
    example = next(m for m in bad.values() if cause(m) == top)
    if usable == 0 and not any(why in top for why in BY_DESIGN):
        raise DataError(f"none of the run's {total} images could be used ({n} of them: {top}; e.g. {example})")
    if n >= ONE_CAUSE_MIN and n >= ONE_CAUSE_SHARE * total and not any(why in top for why in BY_DESIGN):
        raise DataError(f"{n} of the run's {total} images are unusable for one cause ({top}; e.g. {example}): "
                        "check the data folder and its metadata")


def cluster_plan(data: ChallengeData, engine: Engine, paths: dict, settings: CascadeSettings,
                 node_counts=PLAN_NODES, seconds: float = planner.PILOT_S) -> list[str]:
    """The plan of the run on the engine's cluster, before its work: the images to extract, the pairs stage 1
    and re-ranking verify at most (every candidate of every query, every pair of each scenario's database), a
    pilot on the first queries' candidates (their features and verdicts are kept), and the projected wall time
    of all of it. The cascade then fits K1 to the time budget with the rates it measures itself."""
    shas, _ = engine.hash_images(paths)
    sha_paths = {sha: paths[i] for i, sha in sorted(shas.items())}
    candidates, databases, pilot_pairs = 0, {}, []
    for _, query_image, scenario, database in data.query_tasks():
        usable = [shas[d] for d in database if d in shas]
        databases.setdefault(scenario, len(set(usable)))
        if query_image not in shas:
            continue
        mine = [canonical(shas[query_image], sha) for sha in usable if sha != shas[query_image]]
        candidates += len(mine)
        if len(pilot_pairs) < PILOT_PAIRS:
            pilot_pairs += mine
    database_pairs = sum(n * (n - 1) // 2 for n in databases.values()) if settings.rerank else 0
    images = sum(1 for sha in sha_paths if not engine.has_features(sha))
    todo = sorted(set(pilot_pairs[:PILOT_PAIRS]) - engine.cached_pairs(pilot_pairs[:PILOT_PAIRS]))

    def pilot_part(part: list) -> int:
        engine.features({sha: sha_paths[sha] for pair in part for sha in pair}, progress=False)
        return len(engine.verdicts(part, progress=False))

    pilot = planner.run_pilot(engine.backend, pilot_part, todo, seconds) if todo else None
    work = (f"{images:,} of {len(sha_paths):,} images to extract; at most {candidates + database_pairs:,} pairs to "
            f"verify: {candidates:,} query candidates (every one, K1 = all)"
            + (f" and {database_pairs:,} database pairs for re-ranking" if settings.rerank else "")
            + f"; the verdict store holds {engine.stored_verdicts():,} verdicts for these settings (not verified "
              "again)")
    return planner.lines(engine.backend, pilot, candidates + database_pairs, images, work, node_counts)


def submission_rows(data: ChallengeData, result: CascadeResult, mode: str = "max") -> pd.DataFrame:
    """The submission: the top 20 of each query's final ranking, queries in file order, scores strictly
    decreasing within a query (:func:`distinct_scores`)."""
    return ranked_rows([qid for qid, _, _, _ in data.query_tasks()], result, mode)


def ranked_rows(query_ids, result: CascadeResult, mode: str = "max") -> pd.DataFrame:
    """The submission's rows of these queries (in this order) from a cascade's result."""
    rows = []
    for qid in query_ids:
        ranked = result.ranking(qid, TOP_K, mode)
        rows += [(qid, db_id, score) for (db_id, _), score in zip(ranked, distinct_scores([s for _, s in ranked]))]
    return pd.DataFrame(rows, columns=SUBMISSION_COLUMNS)


def rank_scenarios(data: ChallengeData, engine: Engine, settings: CascadeSettings | None = None,
                   deadline: Deadline | None = None) -> tuple[pd.DataFrame, dict]:
    """The submission for every scenario, and the expected answers used to validate it.

    With no budget and no K nothing is cut (stage 1 verifies every candidate, stage 2 re-scores
    each query's top ``k2_max``); with a budget, the planner chooses the K the settings do not fix.
    """
    settings = settings or CascadeSettings()
    result = run(data, engine, settings, deadline)
    return submission_rows(data, result, settings.stage2_mode), data.expected()
