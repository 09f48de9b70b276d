"""Validate a submission and write it atomically (temporary file, then rename).

The file at the output path is only ever replaced by a complete, validated
submission: a run killed while writing, or one whose submission fails
validation or cannot be written (disk full), leaves the previous file as it was.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import WhaleMatchError
from ..io.atomic import atomic_path

TOP_K = 20  # rows per query at most
SUBMISSION_COLUMNS = ["query_id", "database_image_id", "score"]


SCORE_DIGITS = 6  # decimals written for a score
SCORE_STEP = 10 ** -SCORE_DIGITS


class InvalidSubmission(WhaleMatchError):
    pass


def distinct_scores(scores: list[float]) -> list[float]:
    """Scores in ranking order (non-increasing), made strictly decreasing as written (on the grid of
    ``SCORE_DIGITS`` decimals, in [0, 1]): where one ties with the one above it is lowered by the least that
    separates them, and every positive score stays positive. The challenge's scorer treats equal scores as
    one group; this keeps the ranking's own order for them. Rows without any evidence (score 0: unusable
    images, ranked last) keep 0."""
    units = [int(np.floor(min(1.0, max(0.0, float(s))) / SCORE_STEP + 1e-9)) for s in scores]
    positive = sum(1 for s in scores if float(s) > 0)
    out = []
    for i, u in enumerate(units):
        if i >= positive:
            out.append(0)
            continue
        if out:
            u = min(u, out[-1] - 1)
        out.append(max(u, positive - i))
    return [u * SCORE_STEP for u in out]


def validate(sub: pd.DataFrame, expected: dict[str, tuple[str, set[str]]]) -> None:
    """Check columns, row limit, score range and order, own-image exclusion and that every query is answered.

    ``expected`` maps query_id to (query image id, set of database image ids).
    A query whose database holds nothing but its own image may have no rows.
    """
    if list(sub.columns) != SUBMISSION_COLUMNS:
        raise InvalidSubmission(f"columns are {list(sub.columns)}, expected {SUBMISSION_COLUMNS}")
    for col in ("query_id", "database_image_id"):
        if sub[col].isna().any() or not sub[col].map(lambda v: isinstance(v, str) and v != "").all():
            raise InvalidSubmission(f"a {col} is missing or not a non-empty string")
    score = pd.to_numeric(sub["score"], errors="coerce")
    if score.isna().any() or not score.between(0.0, 1.0).all():
        raise InvalidSubmission("a score is missing, not a number or outside [0, 1]")
    counts = sub.groupby("query_id").size()
    if (counts > TOP_K).any():
        raise InvalidSubmission(f"query {counts.idxmax()!r} has {counts.max()} rows (at most {TOP_K})")
    if sub.duplicated(["query_id", "database_image_id"]).any():
        first = sub.loc[sub.duplicated(["query_id", "database_image_id"]), "query_id"].iloc[0]
        raise InvalidSubmission(f"query {first!r}: a database image appears twice")
    unknown = set(counts.index) - set(expected)
    if unknown:
        raise InvalidSubmission(f"answers for unknown queries, e.g. {sorted(unknown)[0]!r}")
    answers = {}
    for qid, rows in sub.assign(score=score).groupby("query_id", sort=False):
        if not rows["score"].is_monotonic_decreasing:
            raise InvalidSubmission(f"query {qid!r}: rows are not in order of decreasing score")
        answers[qid] = set(rows["database_image_id"])
    for qid, (image_id, database) in expected.items():
        given = answers.get(qid, set())
        if image_id in given:
            raise InvalidSubmission(f"query {qid!r} is answered with its own image {image_id!r}")
        if not given <= set(database):
            outside = sorted(given - set(database))[0]
            raise InvalidSubmission(f"query {qid!r} is answered with {outside!r}, which is not in its database")
        if len(given) < min(TOP_K, len(set(database) - {image_id})):
            raise InvalidSubmission(f"query {qid!r} has {len(given)} rows, fewer than its database allows")


def write(sub: pd.DataFrame, path: Path, expected: dict[str, tuple[str, set[str]]]) -> None:
    """Validate ``sub`` and write it to ``path`` atomically; :class:`WhaleMatchError` naming the file on failure."""
    path = Path(path)
    try:
        validate(sub, expected)
    except InvalidSubmission as exc:
        raise InvalidSubmission(f"{path}: not written, the submission is invalid: {exc}") from None
    try:
        with atomic_path(path, suffix=".csv") as tmp:
            sub.to_csv(tmp, index=False, float_format=f"%.{SCORE_DIGITS}f")
    except OSError as exc:
        raise WhaleMatchError(f"{path}: cannot write the submission ({exc.strerror or exc}); "
                              "any previous file there is unchanged") from None
