"""Ranking metrics of the Where's Whale-do? challenge (pure functions, no I/O).

A submission is a DataFrame with columns query_id, database_image_id, score;
labels are a DataFrame with columns query_id, database_image_id, one row per
true match. Within a query, predictions are ranked by score, highest first,
ties kept in the submission's row order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import islice

import pandas as pd

K = 20


def average_precision_at_k(ranked_ids: Iterable, relevant_ids: Iterable, k: int = K) -> float:
    """AP@k: sum of precision@i at each relevant rank i <= k, over min(#relevant, k).

    A repeated id counts only at its first occurrence; later copies take up a
    rank but are not hits.
    """
    relevant = set(relevant_ids)
    if not relevant:
        raise ValueError("average_precision_at_k: relevant_ids is empty")
    seen: set = set()
    hits = 0
    total = 0.0
    for rank, item in enumerate(islice(ranked_ids, k), start=1):
        if item in relevant and item not in seen:
            hits += 1
            total += hits / rank
        seen.add(item)
    return total / min(len(relevant), k)


def _relevant_by_query(labels: pd.DataFrame) -> dict:
    """query_id -> set of relevant database image ids, in label order."""
    if labels.empty:
        raise ValueError("labels hold no queries")
    return {q: set(g) for q, g in labels.groupby("query_id", sort=False)["database_image_id"]}


def ranked_predictions(submission: pd.DataFrame, query_ids: Iterable | None = None) -> dict:
    """query_id -> database image ids ranked by score (stable: ties keep row order)."""
    sub = submission
    if query_ids is not None:
        sub = sub[sub["query_id"].isin(list(query_ids))]
    sub = sub.sort_values("score", ascending=False, kind="stable", na_position="last")
    return {q: list(g) for q, g in sub.groupby("query_id", sort=False)["database_image_id"]}


def _per_query(submission: pd.DataFrame, labels: pd.DataFrame, score_one) -> tuple[float, pd.Series]:
    relevant = _relevant_by_query(labels)
    ranked = ranked_predictions(submission, relevant)
    values = {q: score_one(ranked.get(q, []), rel) for q, rel in relevant.items()}
    series = pd.Series(values, dtype=float)
    series.index.name = "query_id"
    return float(series.mean()), series


def mean_average_precision(
    submission: pd.DataFrame, labels: pd.DataFrame, k: int = K
) -> tuple[float, pd.Series]:
    """Mean AP@k over the labelled queries, and AP@k per query.

    A labelled query without predictions scores 0; queries absent from the
    labels are ignored.
    """
    mean, series = _per_query(
        submission, labels, lambda ranked, rel: average_precision_at_k(ranked, rel, k)
    )
    return mean, series.rename(f"ap@{k}")


def top1_accuracy(submission: pd.DataFrame, labels: pd.DataFrame) -> tuple[float, pd.Series]:
    """Fraction of labelled queries whose best-scored prediction is relevant, and 0/1 per query."""
    mean, series = _per_query(
        submission, labels, lambda ranked, rel: float(bool(ranked) and ranked[0] in rel)
    )
    return mean, series.rename("top1")


def recall_at_k(candidates: Mapping[object, Sequence], labels: pd.DataFrame, k: int) -> float:
    """Fraction of true (query, database image) pairs found in the first k candidates."""
    pairs = labels[["query_id", "database_image_id"]].drop_duplicates()
    if pairs.empty:
        raise ValueError("labels hold no queries")
    shortlist = {q: set(islice(ids, k)) for q, ids in candidates.items()}
    found = sum(
        db in shortlist.get(q, ())
        for q, db in zip(pairs["query_id"], pairs["database_image_id"], strict=True)
    )
    return found / len(pairs)
