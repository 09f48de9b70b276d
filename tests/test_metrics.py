"""Hand-computed AP@20 values (arithmetic in the comments), and the challenge's own rule (scikit-learn's
average_precision_score over the submitted rows, ties as one group) on random submissions."""

import numpy as np
import pandas as pd
import pytest

from matcher.challenge.metric import (
    average_precision,
    mean_average_precision,
    recall_at_k,
    top1_accuracy,
)


def average_precision_at_k(ranked_ids, relevant_ids, k=20):
    """AP of a ranking given as ids best first (strictly decreasing scores: no ties)."""
    relevant = set(relevant_ids)
    if not relevant:
        raise ValueError("no relevant image")
    ranked = list(ranked_ids)
    seen, hits = set(), []
    for i in ranked:
        hits.append(i in relevant and i not in seen)
        seen.add(i)
    return average_precision(np.arange(len(ranked), 0, -1, dtype=float), hits, len(relevant), k)


def submission(rows):
    return pd.DataFrame(rows, columns=["query_id", "database_image_id", "score"])


def labels(rows):
    return pd.DataFrame(rows, columns=["query_id", "database_image_id"])


def test_perfect_ranking():
    # relevant a, b at ranks 1, 2: (1/1 + 2/2) / min(2, 20) = 1
    assert average_precision_at_k(["a", "b", "x"], {"a", "b"}) == 1.0


def test_single_hit_at_rank_3():
    # one relevant at rank 3: precision@3 = 1/3, divided by min(1, 20) = 1
    assert average_precision_at_k(["x", "y", "a"], ["a"]) == pytest.approx(1 / 3)


def test_two_relevant_at_ranks_1_and_3():
    # precision@1 = 1/1, precision@3 = 2/3 -> (1 + 2/3) / 2 = 5/6
    assert average_precision_at_k(["a", "x", "b"], ["a", "b"]) == pytest.approx((1 + 2 / 3) / 2)


def test_duplicates_count_once_and_take_a_rank():
    # ranking a, a, b: rank 1 hit (1/1); rank 2 is a repeat, not a hit; rank 3 hit (2/3)
    # -> (1 + 2/3) / 2 = 5/6 (not 1.0, and not a third hit)
    assert average_precision_at_k(["a", "a", "b"], ["a", "b"]) == pytest.approx((1 + 2 / 3) / 2)


def test_25_relevant_all_20_predictions_relevant():
    # 20 hits at ranks 1..20, each precision 1: 20 / min(25, 20) = 1.0
    relevant = [f"r{i}" for i in range(25)]
    assert average_precision_at_k(relevant[:20], relevant) == pytest.approx(1.0)


def test_25_relevant_only_10_hits_at_ranks_1_to_10():
    # 10 hits with precision 1 each, ranks 11..20 misses: 10 / min(25, 20) = 0.5
    relevant = [f"r{i}" for i in range(25)]
    ranking = relevant[:10] + [f"x{i}" for i in range(10)]
    assert average_precision_at_k(ranking, relevant) == pytest.approx(0.5)


def test_relevant_at_rank_21_not_counted():
    # only relevant item at rank 21, beyond k=20: 0 / 1 = 0
    ranking = [f"x{i}" for i in range(20)] + ["a"]
    assert average_precision_at_k(ranking, ["a"]) == 0.0
    # with k=21 it counts: 1/21
    assert average_precision_at_k(ranking, ["a"], k=21) == pytest.approx(1 / 21)


def test_empty_relevant_raises():
    with pytest.raises(ValueError):
        average_precision_at_k(["a"], [])


def test_tied_rows_form_one_group_whatever_the_file_order():
    # q1: a and x tie at 0.9 (x first in the file), q2: the same tie with a first. Either way the group
    # {a, x} is reached at once: precision 1/2 at its end -> AP 1/2 for both (not 1/2 and 1 by file order)
    sub = submission(
        [
            ("q1", "x", 0.9),
            ("q2", "a", 0.9),
            ("q1", "a", 0.9),
            ("q2", "x", 0.9),
            ("q1", "z", 0.1),
        ]
    )
    lab = labels([("q1", "a"), ("q2", "a")])
    mean, per_query = mean_average_precision(sub, lab)
    assert per_query["q1"] == pytest.approx(0.5)
    assert per_query["q2"] == pytest.approx(0.5)
    assert mean == pytest.approx(0.5)


def test_two_hits_inside_a_tied_group():
    # scores a 0.9, then b, x, c tied at 0.5; relevant a, b, c (3 in the database)
    # groups: {a}: 1 hit, precision 1; {b, x, c}: 2 more hits, precision 3/4 -> (1 + 2 * 3/4) / 3 = 5/6
    assert average_precision([0.9, 0.5, 0.5, 0.5], [True, True, False, True], 3) == pytest.approx(5 / 6)


def test_matches_the_challenge_scorer_on_random_submissions_with_ties():
    """The challenge's rule, literally: sklearn's average_precision_score over the rows, times
    found / min(relevant, 20); half the rows tie with another within their query."""
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(400):
        n = int(rng.integers(1, 21))
        scores = np.round(rng.random(n), 1) if rng.random() < 0.5 else rng.integers(0, 4, n) / 4
        hits = rng.random(n) < 0.3
        n_relevant = int(hits.sum() + rng.integers(0, 25))
        if n_relevant == 0:
            continue
        expected = 0.0
        if hits.any():
            expected = sklearn_metrics.average_precision_score(hits, scores) * hits.sum() / min(n_relevant, 20)
        assert average_precision(scores, hits, n_relevant) == pytest.approx(expected, abs=1e-12)


def test_sorted_by_score_not_file_order():
    # file order x, a but a scores higher -> ranking a, x: AP = 1
    sub = submission([("q1", "x", 0.2), ("q1", "a", 0.8)])
    mean, _ = mean_average_precision(sub, labels([("q1", "a")]))
    assert mean == 1.0


def test_query_without_predictions_scores_zero():
    # q1 perfect (1.0), q2 labelled but absent from the submission (0): mean 0.5
    # q3 is predicted but not labelled: ignored
    sub = submission([("q1", "a", 1.0), ("q3", "c", 1.0)])
    lab = labels([("q1", "a"), ("q2", "b")])
    mean, per_query = mean_average_precision(sub, lab)
    assert per_query.to_dict() == {"q1": 1.0, "q2": 0.0}
    assert mean == 0.5


def test_mean_over_queries_with_many_relevant():
    # q1: 25 relevant, 10 hits at ranks 1..10 -> 10/20 = 0.5
    # q2: hit at rank 3 only -> 1/3;   mean = (0.5 + 1/3) / 2
    rel = [f"r{i}" for i in range(25)]
    rows = [("q1", r, 1 - i / 100) for i, r in enumerate(rel[:10])]
    rows += [("q1", f"x{i}", 0.5 - i / 100) for i in range(10)]
    rows += [("q2", "x", 0.9), ("q2", "y", 0.8), ("q2", "b", 0.7)]
    lab = labels([("q1", r) for r in rel] + [("q2", "b")])
    mean, _ = mean_average_precision(submission(rows), lab)
    assert mean == pytest.approx((0.5 + 1 / 3) / 2)


def test_top1_accuracy():
    # q1 best = a (relevant) -> 1; q2 best = x -> 0; q3 no predictions -> 0: 1/3
    sub = submission([("q1", "a", 0.9), ("q1", "x", 0.1), ("q2", "x", 0.9), ("q2", "b", 0.5)])
    lab = labels([("q1", "a"), ("q2", "b"), ("q3", "c")])
    mean, per_query = top1_accuracy(sub, lab)
    assert per_query.to_dict() == {"q1": 1.0, "q2": 0.0, "q3": 0.0}
    assert mean == pytest.approx(1 / 3)


def test_recall_at_k_is_micro_averaged():
    # true pairs: (q1,a), (q1,b), (q1,c), (q2,d) = 4
    # k=2: q1 shortlist [a, x] finds a; q2 shortlist [y, d] finds d -> 2/4
    lab = labels([("q1", "a"), ("q1", "b"), ("q1", "c"), ("q2", "d")])
    candidates = {"q1": ["a", "x", "b"], "q2": ["y", "d"]}
    assert recall_at_k(candidates, lab, k=2) == 0.5
    # k=3 adds b: 3/4
    assert recall_at_k(candidates, lab, k=3) == 0.75
