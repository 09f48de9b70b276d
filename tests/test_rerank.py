"""Re-ranking with database-database verdicts: a pure function of the scores."""

from __future__ import annotations

import numpy as np
import pytest

from matcher.cascade import rerank as reranking
from matcher.cascade.rerank import DEFAULT_WEIGHT, MODES, max_path, rerank


def sym(n: int, entries: dict[tuple[int, int], float]) -> np.ndarray:
    w = np.zeros((n, n))
    for (i, j), v in entries.items():
        w[i, j] = w[j, i] = v
    return w


def test_a_weak_photo_of_the_matched_whale_is_pulled_up():
    # candidate 0 verifies strongly with the query; candidate 1 (same whale) weakly with the
    # query but strongly with candidate 0; candidate 2 is another whale at chance level.
    q = np.array([0.8, 0.2, 0.3])
    w = sym(3, {(0, 1): 0.7, (0, 2): 0.1, (1, 2): 0.1})
    out = rerank(q, w)
    assert np.argsort(-out).tolist() == [0, 1, 2]
    assert out[1] == pytest.approx(DEFAULT_WEIGHT * 0.7)  # the path's weakest link, discounted
    assert out[0] == pytest.approx(0.8) and out[2] == pytest.approx(0.3)


def test_direct_evidence_wins_over_an_equally_strong_path():
    q = np.array([0.6, 0.6])
    w = sym(2, {(0, 1): 0.9})
    out = rerank(q, w)
    np.testing.assert_allclose(out, q)


def test_scores_never_go_down_and_stay_in_unit_interval():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 40):
        q = rng.random(n)
        w = rng.random((n, n))
        for mode in MODES:
            out = rerank(q, w, mode=mode)
            assert out.shape == (n,)
            assert np.all((out >= 0) & (out <= 1))
            assert np.all(out >= q - 1e-12)


def test_diagonal_and_asymmetry_are_handled():
    q = np.array([0.2, 0.5])
    w = np.array([[1.0, 0.0], [0.8, 1.0]])  # a self-score of 1 must not count; (1, 0) given one way only
    out = max_path(q, w, weight=1.0)
    assert out[0] == pytest.approx(0.5)  # path query -> 1 -> 0, capped by the weaker link 0.5
    assert out[1] == pytest.approx(0.5)


def test_permuting_candidates_permutes_scores():
    rng = np.random.default_rng(1)
    q, w = rng.random(9), rng.random((9, 9))
    w = (w + w.T) / 2
    perm = rng.permutation(9)
    np.testing.assert_allclose(rerank(q, w)[perm], rerank(q[perm], w[np.ix_(perm, perm)]))


def test_none_and_zero_weight_leave_scores_unchanged():
    q, w = np.array([0.1, 0.4, 0.3]), np.full((3, 3), 0.9)
    np.testing.assert_allclose(rerank(q, w, mode="none"), q)
    np.testing.assert_allclose(rerank(q, w, weight=0.0), q)


def test_empty_candidates():
    assert rerank(np.zeros(0), np.zeros((0, 0))).shape == (0,)


@pytest.mark.parametrize(
    "q, w, kwargs, message",
    [
        (np.zeros((2, 2)), np.zeros((2, 2)), {}, "one-dimensional"),
        (np.zeros(3), np.zeros((2, 2)), {}, "db_scores must be"),
        (np.array([np.nan]), np.zeros((1, 1)), {}, "finite"),
        (np.zeros(2), np.zeros((2, 2)), {"weight": 1.5}, "weight"),
        (np.zeros(2), np.zeros((2, 2)), {"mode": "magic"}, "unknown re-ranking mode"),
    ],
)
def test_bad_input_is_refused(q, w, kwargs, message):
    with pytest.raises(ValueError, match=message):
        rerank(q, w, **kwargs)


def test_longer_chains_through_the_database():
    # query -> 0 (strong) -> 1 -> 2: only a two-step database path reaches candidate 2
    q = np.array([0.9, 0.1, 0.1, 0.3])
    w = sym(4, {(0, 1): 0.8, (1, 2): 0.8})
    one = max_path(q, w, weight=0.9, hops=1)
    assert one[1] == pytest.approx(0.72) and one[2] == pytest.approx(0.1)
    two = max_path(q, w, weight=0.9, hops=2)
    assert two[2] == pytest.approx(0.9 * 0.72)  # discounted once per database step
    np.testing.assert_allclose(max_path(q, w, weight=0.9, hops=None), two)  # converged: nothing further to reach
    np.testing.assert_allclose(rerank(q, w), two)  # the default runs to convergence
    assert max_path(q, w, hops=0).tolist() == pytest.approx(q.tolist())


def test_converged_scores_are_a_fixed_point():
    rng = np.random.default_rng(2)
    q, w = rng.random(30) * 0.5, rng.random((30, 30))
    out = max_path(q, w, hops=None)
    np.testing.assert_allclose(max_path(out, w, hops=1), out)


def test_negative_hops_are_refused():
    with pytest.raises(ValueError, match="hops"):
        max_path(np.zeros(2), np.zeros((2, 2)), hops=-1)


def test_top_restricts_the_graph_to_the_best_candidates():
    # candidates 0 and 1 are the query's best; 2 is a weak direct match linked strongly to 0;
    # 3 is weaker still and linked strongly to 0 as well, but lies outside the top 3
    q = np.array([0.8, 0.6, 0.1, 0.05, 0.2])
    w = np.full((5, 5), np.nan)  # entries outside the top-3 graph must never be read
    top = [0, 1, 4]
    for a in top:
        for b in top:
            w[a, b] = 0.0
    w[0, 4] = w[4, 0] = 0.7
    out = reranking.rerank(q, w, "max-path", weight=0.9, hops=None, top=3)
    assert out[4] == pytest.approx(0.9 * 0.7)  # pulled up through candidate 0
    assert out[[0, 1, 2, 3]].tolist() == q[[0, 1, 2, 3]].tolist()  # outside the graph, or nothing stronger
    assert reranking.top_positions(q, 3).tolist() == [0, 1, 4]
    full = np.nan_to_num(w)
    assert np.array_equal(reranking.rerank(q, full, top=len(q)), reranking.rerank(q, full))  # top >= n: the whole graph


def test_top_zero_changes_nothing():
    q = np.array([0.3, 0.2])
    assert reranking.rerank(q, np.ones((2, 2)), top=0).tolist() == q.tolist()
