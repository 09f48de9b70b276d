"""Whales dealt into folds: the one split every out-of-fold figure of the learned models uses.

A fold holds whole whales (all of a whale's photos), so a model scored on a fold saw none of its
whales. The deal depends on the set of whale ids and the seed only: the pair model, the global head
and the heads trained for the pair model's features get the same folds from the same catalogue.
"""

from __future__ import annotations

import numpy as np


def whale_folds(whales, n: int, seed: int) -> dict[str, int]:
    """Fold (0 .. n-1) per whale id: the sorted ids permuted by ``seed`` and dealt in turn."""
    order = sorted(set(whales))
    perm = np.random.default_rng(seed).permutation(len(order))
    return {order[i]: int(k % n) for k, i in enumerate(perm)}
