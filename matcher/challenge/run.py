"""The main job: every scenario's queries ranked against their database, as the challenge asks."""

from __future__ import annotations

import pandas as pd

from ..cascade import CascadeResult, CascadeSettings, run_cascade
from ..engine import Engine
from ..timing import Deadline
from .layout import ChallengeData
from .submission import SUBMISSION_COLUMNS, TOP_K, distinct_scores


def run(data: ChallengeData, engine: Engine, settings: CascadeSettings | None = None,
        deadline: Deadline | None = None) -> CascadeResult:
    """Prepare every image (within the deadline when the settings have a budget) and run the cascade."""
    settings = settings or CascadeSettings()
    if deadline is None:
        deadline = Deadline(settings.budget_s if settings.budget_s is not None else float("inf"))
    paths, bad = data.image_paths(data.image_ids())
    shas, _ = engine.prepare(paths, bad, deadline if settings.budget_s is not None else None)
    return run_cascade(engine, data.query_tasks(), shas, settings, deadline, data.photo_metadata())


def submission_rows(data: ChallengeData, result: CascadeResult, mode: str = "max") -> pd.DataFrame:
    """The submission: the top 20 of each query's final ranking, queries in file order, scores strictly
    decreasing within a query (:func:`distinct_scores`)."""
    rows = []
    for qid, _, _, _ in data.query_tasks():
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
