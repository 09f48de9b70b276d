"""The bf16-screened mutual nearest neighbours (matcher.pairs.mnn_screened) give mutual_nn's matches bit for bit:
on generated descriptor sets built to defeat a screen (near-ties below bf16's resolution, exact ties, duplicated
rows), on sets too small to screen, and through the verifier's batched call."""

from __future__ import annotations

import numpy as np
import pytest

from matcher.pairs import mnn_screened
from matcher.pairs.mnn import mutual_nn, mutual_nn_batch


def unit(rng, k: int, dim: int = 128) -> np.ndarray:
    x = rng.standard_normal((k, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def near_copies(rng, a: np.ndarray, k: int) -> np.ndarray:
    """Rows of ``a`` with a few components moved by one float16 step: similarities that differ from each other
    by far less than a bf16 product resolves."""
    rows = a[rng.integers(0, len(a), k)].copy()
    for r in rows:
        idx = rng.integers(0, a.shape[1], 3)
        r[idx] = np.nextafter(r[idx], np.float16(np.inf) if rng.random() < 0.5 else np.float16(-np.inf))
    return rows


def same(x, y) -> bool:
    return (np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) and x[0].dtype == y[0].dtype
            and x[1].dtype == y[1].dtype)


@pytest.fixture(scope="module")
def screen_here():
    if not mnn_screened.usable(128, mutual_nn):
        pytest.skip("the bf16 screen is not usable on this machine (its check failed or it is not faster)")


def test_screen_gives_the_float32_matches_on_hostile_sets(screen_here):
    rng = np.random.default_rng(3)
    for trial in range(6):
        a = unit(rng, int(rng.integers(40, 900)))
        b = np.concatenate([near_copies(rng, a, int(rng.integers(20, 400))), unit(rng, int(rng.integers(12, 300)))])
        b = b[rng.permutation(len(b))]
        b[5] = b[4]  # an exact tie in a row
        a[7] = a[6]  # and in a column
        for x, y, floor in ((a, b, 0.0), (b, a, 0.0), (a, b, 0.5)):
            want = mutual_nn(x, y, floor)
            got = mnn_screened.screened_mutual_nn(x.astype(np.float32), y.astype(np.float32), floor)
            assert same(want, got), f"trial {trial}: {len(want[0])} matches wanted, {len(got[0])} got"
            assert len(want[0]) > 10


def test_the_verifiers_batched_call_screens_and_falls_back(screen_here):
    rng = np.random.default_rng(4)
    a = unit(rng, 600)
    others = [near_copies(rng, a, 500), unit(rng, 20), np.zeros((0, 128), np.float16), unit(rng, 300),
              near_copies(rng, a, 31)]
    want = [mutual_nn(a, d) for d in others]
    assert all(same(w, g) for w, g in zip(want, mutual_nn_batch(a, others)))
    assert all(same(w, g) for w, g in zip([mutual_nn(a[:10], d) for d in others], mutual_nn_batch(a[:10], others)))
    float32 = [d.astype(np.float32) + np.float32(1e-4) for d in others[:1]]  # not float16 values: the product
    assert same(mutual_nn(a, float32[0]), mutual_nn_batch(a, float32)[0])
    assert not mnn_screened.screens(float32[0]) and not mnn_screened.screens(others[1])


def test_switched_off_the_plain_product_runs():
    mnn_screened.set_enabled(False)
    try:
        assert not mnn_screened.usable(128, mutual_nn)
    finally:
        mnn_screened.set_enabled(True)
