"""Mutual nearest neighbours on the CPU, screened by a bfloat16 product: the same matches, about twice as fast.

:func:`matcher.pairs.mnn.mutual_nn` spends two thirds of a verdict in one float32 product of the two descriptor
sets (1,500 x 1,500 x 128 a pair). Here that product is made in bfloat16 (a few times as fast where the CPU
has bf16 instructions), which is only a *screen*: every similarity it gives lies within a bound ``delta`` of the
float32 one, so a row's float32 maximum is among the entries within ``2 * delta`` of the row's screened maximum
(and so is a column's). Those few entries (one in most rows) are computed again exactly, and the mutual
matches, their similarities and the tie rule (lowest index, ``argmax``'s) are decided on the exact values alone:
the answer is :func:`~matcher.pairs.mnn.mutual_nn`'s, bit for bit.

Why "exactly": the descriptors hold float16 values (the feature store keeps them so), whose products are exact
in float32, so a float32 dot product depends only on the order of its sums; the BLAS product torch uses (MKL)
sums over the descriptor dimension in order, as :func:`_dot` does, for sets of 8 by 16 keypoints and more
(smaller ones take another kernel, measured), so the screen is used from :data:`MIN_KEYPOINTS` a set on, and
only after a check on this machine (:func:`usable`: random float16 sets of several sizes, ties included,
against ``mutual_nn``, and a timing against it); the plain product is kept where the check fails or the
screen is not faster.

The bound: bfloat16 keeps 8 significant bits, so rounding each input and the product's output costs at most
``2**-9`` of ``|a| |b|`` each (3 roundings; 4 are allowed, for an output truncated rather than rounded), and
float32 sums at most ``128 * 2**-24`` of it in either product (``2**-15`` allowed).
"""

from __future__ import annotations

import logging
import threading
import time

import numba
import numpy as np

log = logging.getLogger(__name__)
ROUNDING = 4 * 2.0**-9 + 2.0**-15  # screened vs float32 similarity, per unit of |a| |b| (see the module docstring)
MIN_KEYPOINTS = 32  # smaller sets: the plain product (BLAS sums them in another order)
_WORKSPACE_MIN = 1 << 22  # cells kept per thread for the screen (bf16 and float32: 24 MB), grown as needed
_local = threading.local()
_checked: dict[int, bool] = {}
_check_lock = threading.Lock()


@numba.njit(cache=True, nogil=True)
def _dot(a, b, i, j):
    """Row ``i`` of ``a`` dot row ``j`` of ``b`` in float32, summed in order (as the BLAS product does)."""
    acc = np.float32(0.0)
    for t in range(a.shape[1]):
        acc += a[i, t] * b[j, t]
    return acc


@numba.njit(cache=True, nogil=True)
def _column_max(screen):
    """Each column's screened maximum and its first row."""
    m, n = screen.shape
    cmax = screen[0].copy()
    carg = np.zeros(n, np.int64)
    for i in range(1, m):
        for j in range(n):
            v = screen[i, j]
            better = v > cmax[j]
            cmax[j] = v if better else cmax[j]
            carg[j] = i if better else carg[j]
    return cmax, carg


@numba.njit(cache=True, nogil=True)
def _counts(screen, rlo, clo):
    """Per row: the entries that may be its maximum, and those that may also be their column's; per column: the
    entries that may be its maximum."""
    m, n = screen.shape
    rc = np.zeros(m, np.int32)
    pc = np.zeros(m, np.int32)
    cc = np.zeros(n, np.int32)
    for i in range(m):
        lo = rlo[i]
        c = 0
        p = 0
        for j in range(n):
            v = screen[i, j]
            in_row = v >= lo
            in_col = v >= clo[j]
            c += in_row
            p += in_row & in_col
            cc[j] += in_col
        rc[i] = c
        pc[i] = p
    return rc, pc, cc


@numba.njit(cache=True, nogil=True)
def _decide(screen, a, b, rarg, rlo, rc, pc, carg, clo, cc, min_similarity):
    """The mutual matches, decided on exact float32 similarities of the entries the screen left open."""
    m, n = screen.shape
    keep = np.zeros(m, np.bool_)
    nn = np.zeros(m, np.int64)
    best = np.zeros(m, np.float32)
    first = np.full(n, -2, np.int64)  # a column's first exact maximum (-2: not decided yet)
    for i in range(m):
        if pc[i] == 0:  # no entry of this row can be both its row's and its column's maximum
            continue
        if rc[i] == 1:
            j = rarg[i]
            s = _dot(a, b, i, j)
        else:
            s = np.float32(-np.inf)
            j = -1
            for c in range(n):
                if screen[i, c] >= rlo[i]:
                    d = _dot(a, b, i, c)
                    if d > s:  # strict: ties go to the lowest column
                        s = d
                        j = c
        if screen[i, j] < clo[j]:  # row i cannot be column j's maximum
            continue
        if first[j] == -2:
            if cc[j] == 1:
                first[j] = carg[j]
            else:
                cv = np.float32(-np.inf)
                ci = -1
                for k in range(m):
                    if screen[k, j] >= clo[j]:
                        d = _dot(a, b, k, j)
                        if d > cv:  # strict: ties go to the lowest row
                            cv = d
                            ci = k
                first[j] = ci
        if first[j] == i and s > min_similarity:
            keep[i] = True
            nn[i] = j
            best[i] = s
    return keep, nn, best


def _workspace(cells: int):
    import torch

    bufs = getattr(_local, "bufs", None)
    if bufs is None or bufs[0].numel() < cells:
        size = max(cells, _WORKSPACE_MIN)
        _local.bufs = bufs = (torch.empty(size, dtype=torch.bfloat16), torch.empty(size, dtype=torch.float32))
    return bufs


def holds_float16(x: np.ndarray) -> bool:
    """Whether every value of ``x`` is a finite float16 (what makes float32 products exact)."""
    if x.dtype == np.float16:
        return bool(np.isfinite(x).all())
    return bool(np.isfinite(x).all() and np.array_equal(x, x.astype(np.float16).astype(x.dtype)))


def screens(d: np.ndarray) -> bool:
    """Whether a descriptor set can be screened: at least :data:`MIN_KEYPOINTS` rows of float16 values."""
    return len(d) >= MIN_KEYPOINTS and holds_float16(d)


def screened_mutual_nn(a: np.ndarray, b: np.ndarray, min_similarity: float = 0.0):
    """:func:`~matcher.pairs.mnn.mutual_nn` of two float32 sets holding float16 values (each of at least
    :data:`MIN_KEYPOINTS`), screened."""
    import torch

    m, n = len(a), len(b)
    bf16, f32 = _workspace(m * n)
    with torch.inference_mode():
        out = bf16[: m * n].view(m, n)
        torch.mm(torch.from_numpy(a).bfloat16(), torch.from_numpy(b).bfloat16().T, out=out)
        screen = f32[: m * n].view(m, n).copy_(out).numpy()
    na = float(np.sqrt(np.einsum("ij,ij->i", a, a, dtype=np.float64).max()))
    nb = float(np.sqrt(np.einsum("ij,ij->i", b, b, dtype=np.float64).max()))
    delta = ROUNDING * na * nb + 2.0**-24
    rarg = screen.argmax(axis=1)
    # a margin of 2 * delta, rounded up to the next float32: the float32 maximum is always inside it
    margin = np.nextafter(np.float32(2 * delta), np.float32(np.inf))
    rlo = screen[np.arange(m), rarg] - margin
    cmax, carg = _column_max(screen)
    clo = cmax - margin
    rc, pc, cc = _counts(screen, rlo, clo)
    keep, nn, best = _decide(screen, a, b, rarg, rlo, rc, pc, carg, clo, cc, np.float32(min_similarity))
    rows = np.flatnonzero(keep)  # ascending, one match a row: mutual_nn's order
    return np.stack([rows, nn[rows]], axis=1).astype(np.int64), np.clip(best[rows], 0.0, 1.0).astype(np.float32)


def _check(dim: int, mutual_nn) -> bool:
    """The screen gives ``mutual_nn``'s matches on random float16 sets of ``dim`` (several sizes, ties and
    duplicated rows included) and is faster than it at 1,500 keypoints a photo, on one thread (as the verifier's
    workers run it; the best of three interleaved rounds)."""
    rng = np.random.default_rng(0)

    def unit(k):
        x = rng.standard_normal((k, dim)).astype(np.float32)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16).astype(np.float32)

    for m, n in ((MIN_KEYPOINTS, MIN_KEYPOINTS), (33, 47), (100, 257), (257, 300), (1500, 1400), (2048, 700)):
        a, b = unit(m), unit(n)
        if m > 2 and n > 2:
            a[1], b[2] = a[0], a[0]  # ties in a row and in a column
        for x, y in ((a, b), (b, a)):
            want, got = mutual_nn(x, y), screened_mutual_nn(x, y)
            if not (np.array_equal(want[0], got[0]) and np.array_equal(want[1], got[1])):
                log.info("mutual NN: the bf16 screen differs from the float32 product here; the product is kept")
                return False
    import torch

    a, b = unit(1500), unit(1500)
    times = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the verifier's workers run (one thread each): on two threads of a busy machine
    try:  # the bf16 product lost to the float32 one, so the screen was turned off where it would have won
        for name, fn in (("float32", mutual_nn), ("screened", screened_mutual_nn)) * 3:
            t = time.perf_counter()
            for _ in range(3):
                fn(a, b)
            times[name] = min(times.get(name, np.inf), time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads)
    if times["screened"] >= times["float32"]:
        log.info("mutual NN: the bf16 screen is not faster on this CPU (%.1f vs %.1f ms); the product is kept",
                 times["screened"] * 333, times["float32"] * 333)
        return False
    log.debug("mutual NN screened by a bf16 product (%.1fx the float32 product's rate, the same matches)",
              times["float32"] / times["screened"])
    return True


_enabled = [True]


def set_enabled(flag: bool) -> None:
    """Screen (the default) or not (``benchmarks.runtimes`` times the verifier both ways in one run)."""
    _enabled[0] = bool(flag)


def usable(dim: int, reference) -> bool:
    """Whether to screen descriptor sets of this dimension on this machine, checked once per process against
    ``reference`` (:func:`matcher.pairs.mnn.mutual_nn`, what the screen must reproduce)."""
    if not _enabled[0]:
        return False
    with _check_lock:
        if dim not in _checked:
            try:
                _checked[dim] = _check(dim, reference)
            except Exception as exc:  # noqa: BLE001 - no bf16 product here (or numba cannot build): the product stays
                log.info("mutual NN: no bf16 screen (%s: %s); the float32 product is used", type(exc).__name__, exc)
                _checked[dim] = False
        return _checked[dim]
