"""Per-query ranking: order candidates by verified score, drop the query's own image, keep the top 20.

A query's ranking is a pure function of its image, its candidates and their
verdicts, so it cannot depend on which other queries are in the run.
"""

from __future__ import annotations

import pandas as pd

TOP_K = 20
SUBMISSION_COLUMNS = ["query_id", "database_image_id", "score"]


def rank_query(
    query_id: str,
    query_image_id: str,
    candidates: list[str],
    scores: dict[str, float],
    strengths: dict[str, float] | None = None,
    top_k: int = TOP_K,
) -> pd.DataFrame:
    """Rows of the submission for one query, best first.

    ``scores`` maps database image id to a score in [0, 1]; ``strengths`` (optional)
    breaks ties more finely. Remaining ties go to the smaller image id, so the
    order never depends on input order. Candidates without a score are ranked
    last with score 0.
    """
    strengths = strengths or {}
    seen = dict.fromkeys(c for c in candidates if c != query_image_id)
    ranked = sorted(seen, key=lambda c: (-scores.get(c, 0.0), -strengths.get(c, 0.0), c))[:top_k]
    return pd.DataFrame(
        {
            "query_id": [query_id] * len(ranked),
            "database_image_id": ranked,
            "score": [min(1.0, max(0.0, float(scores.get(c, 0.0)))) for c in ranked],
        },
        columns=SUBMISSION_COLUMNS,
    )
