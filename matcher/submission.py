"""Validate a submission and write it atomically (temporary file, then rename)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .atomic import atomic_path
from .errors import WhaleMatchError
from .ranking import SUBMISSION_COLUMNS, TOP_K


class InvalidSubmission(WhaleMatchError):
    pass


def validate(sub: pd.DataFrame, expected: dict[str, tuple[str, set[str]]]) -> None:
    """Check columns, row limit, score range, own-image exclusion and that every query is answered.

    ``expected`` maps query_id to (query image id, set of database image ids).
    A query whose database holds nothing but its own image may have no rows.
    """
    if list(sub.columns) != SUBMISSION_COLUMNS:
        raise InvalidSubmission(f"columns are {list(sub.columns)}, expected {SUBMISSION_COLUMNS}")
    if sub["score"].isna().any() or not sub["score"].between(0.0, 1.0).all():
        raise InvalidSubmission("a score is missing or outside [0, 1]")
    counts = sub.groupby("query_id").size()
    if (counts > TOP_K).any():
        raise InvalidSubmission(f"query {counts.idxmax()!r} has {counts.max()} rows (at most {TOP_K})")
    if sub.duplicated(["query_id", "database_image_id"]).any():
        raise InvalidSubmission("a database image appears twice for one query")
    unknown = set(counts.index) - set(expected)
    if unknown:
        raise InvalidSubmission(f"answers for unknown queries, e.g. {sorted(unknown)[0]!r}")
    answers = {qid: set(g) for qid, g in sub.groupby("query_id", sort=False)["database_image_id"]}
    for qid, (image_id, database) in expected.items():
        given = answers.get(qid, set())
        if image_id in given:
            raise InvalidSubmission(f"query {qid!r} is answered with its own image {image_id!r}")
        if not given <= database:
            raise InvalidSubmission(f"query {qid!r} is answered with images outside its database")
        if len(given) < min(TOP_K, len(database - {image_id})):
            raise InvalidSubmission(f"query {qid!r} has {len(given)} rows, fewer than its database allows")


def write(sub: pd.DataFrame, path: Path, expected: dict[str, tuple[str, set[str]]]) -> None:
    validate(sub, expected)
    with atomic_path(Path(path), suffix=".csv") as tmp:
        sub.to_csv(tmp, index=False, float_format="%.6f")
