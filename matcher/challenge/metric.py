"""The challenge's ranking metric, computed as its own scorer does (pure functions, no I/O).

A submission is a DataFrame with columns query_id, database_image_id, score; labels are a
DataFrame with columns query_id, database_image_id, one row per true match. Per query, the
challenge's scorer takes scikit-learn's ``average_precision_score`` over the submitted rows
(relevant or not, by score; rows of equal score form one group, whatever their order in the
file) and multiplies it by (relevant rows found) / min(relevant images, 20). This module
computes exactly that, without scikit-learn (the tests compare the two on random submissions
with ties).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import islice

import numpy as np
import pandas as pd

K = 20


def average_precision(scores: Sequence[float], hits: Sequence[bool], n_relevant: int, k: int = K) -> float:
    """AP of one query's rows under the challenge's rule.

    ``scores`` and ``hits`` (whether each row is a true match) are the query's submitted rows;
    ``n_relevant`` is how many true matches its database holds. The ``k`` best-scored rows count
    (file order among equal scores decides which, as a stable sort would). Rows of equal score
    form one group: every row of a group is reached at once, so the precision of the group is
    that after its last row.
    """
    if n_relevant <= 0:
        raise ValueError("average_precision: the query has no relevant image")
    s = np.asarray(scores, np.float64)
    h = np.asarray(hits, bool)
    order = np.argsort(-s, kind="stable")[:k]
    s, h = s[order], h[order]
    found = int(h.sum())
    if found == 0:
        return 0.0
    ends = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]  # the last row of each group of equal scores
    tp = np.cumsum(h)[ends]
    precision = tp / (ends + 1)
    recall_gain = np.diff(np.r_[0, tp])
    return float((recall_gain * precision).sum() / min(n_relevant, k))


def _relevant_by_query(labels: pd.DataFrame) -> dict:
    """query_id -> set of relevant database image ids, in label order."""
    if labels.empty:
        raise ValueError("labels hold no queries")
    return {q: set(g) for q, g in labels.groupby("query_id", sort=False)["database_image_id"]}


def _rows_by_query(submission: pd.DataFrame, query_ids: Iterable) -> dict:
    """query_id -> (database ids, scores) of its rows, in file order."""
    sub = submission[submission["query_id"].isin(list(query_ids))]
    return {q: (g["database_image_id"].tolist(), g["score"].astype(float).tolist())
            for q, g in sub.groupby("query_id", sort=False)}


def _hits(ids: list, relevant: set) -> list[bool]:
    """Whether each row is a true match; a repeated id is a hit only at its first row."""
    seen: set = set()
    out = []
    for i in ids:
        out.append(i in relevant and i not in seen)
        seen.add(i)
    return out


def mean_average_precision(submission: pd.DataFrame, labels: pd.DataFrame, k: int = K) -> tuple[float, pd.Series]:
    """Mean AP@k over the labelled queries, and AP@k per query (:func:`average_precision`).

    A labelled query without rows scores 0; queries absent from the labels are ignored.
    """
    relevant = _relevant_by_query(labels)
    rows = _rows_by_query(submission, relevant)
    values = {}
    for q, rel in relevant.items():
        ids, scores = rows.get(q, ([], []))
        values[q] = average_precision(scores, _hits(ids, rel), len(rel), k) if ids else 0.0
    series = pd.Series(values, dtype=float, name=f"ap@{k}")
    series.index.name = "query_id"
    return float(series.mean()), series


def top1_accuracy(submission: pd.DataFrame, labels: pd.DataFrame) -> tuple[float, pd.Series]:
    """Fraction of labelled queries whose best-scored row is relevant (the first such row in the file where
    several tie), and 0/1 per query."""
    relevant = _relevant_by_query(labels)
    rows = _rows_by_query(submission, relevant)
    values = {}
    for q, rel in relevant.items():
        ids, scores = rows.get(q, ([], []))
        values[q] = float(bool(ids) and ids[int(np.argsort(-np.asarray(scores), kind="stable")[0])] in rel)
    series = pd.Series(values, dtype=float, name="top1")
    series.index.name = "query_id"
    return float(series.mean()), series


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
