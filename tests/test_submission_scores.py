"""Submitted scores are strictly decreasing within a query as written (the challenge's scorer groups ties)."""

import numpy as np
import pytest

from matcher.challenge.submission import SCORE_DIGITS, distinct_scores


def written(values):
    return [float(f"{v:.{SCORE_DIGITS}f}") for v in values]


def test_ties_are_separated_by_one_step_and_the_order_is_kept():
    out = written(distinct_scores([0.5, 0.5, 0.5, 0.3, 0.3]))
    assert out == [0.5, 0.499999, 0.499998, 0.3, 0.299999]


def test_scores_stay_in_the_unit_interval_and_positive_ones_stay_positive():
    out = written(distinct_scores([1.5, 1.0, 2e-7, 1e-9, 0.0, 0.0]))
    assert out[0] == 1.0 and out[1] == 0.999999
    assert out[2] > out[3] > 0  # tiny positive evidence stays above the rows with none
    assert out[4:] == [0.0, 0.0]  # no evidence at all (unusable images): 0, ranked last


@pytest.mark.parametrize("seed", range(20))
def test_random_rankings_become_strictly_decreasing_and_move_little(seed):
    rng = np.random.default_rng(seed)
    scores = np.sort(np.round(rng.random(20), int(rng.integers(1, 4))))[::-1]
    out = np.array(written(distinct_scores(scores.tolist())))
    positive = scores > 0
    assert (np.diff(out[positive]) < 0).all() and (out[~positive] == 0).all()
    assert np.abs(out - scores).max() <= 20 * 10 ** -SCORE_DIGITS + 1e-12
