"""Descriptor matching by mutual nearest neighbours (MNN), pair by pair on the CPU, batched on a GPU.

Every function returns, for each pair, ``matches`` as an (K, 2) int array of
keypoint indices (first image, second image) sorted by the first column, and
``similarity`` (K,) float32 in [0, 1] (the cosine similarity). Pairs are always
matched in their canonical order (see :mod:`matcher.pairs.store`), so (a, b) and
(b, a) get the same answer.

Mutual nearest neighbours, on the CPU, is computed pair by pair in float32
(:func:`mutual_nn`): one matrix product per pair, then the row maxima and the
column maxima, which numpy finds an order of magnitude faster than torch's
``argmax`` over a column. The verifier's batched call (:func:`mutual_nn_batch`)
gets the same matches about twice as fast from a bf16 product that only screens
which similarities to compute exactly (:mod:`matcher.pairs.mnn_screened`).
On a GPU, the descriptors stay on the GPU in half
precision (:class:`DescriptorBank`; they are stored as float16 anyway, so this
loses nothing), padded to a length that depends on the image alone, and a chunk
of pairs sharing the first image is matched in one batched product
(:func:`mnn_padded`), with the chunk sized from the GPU memory cap. The product
itself is float32: similarities rounded to float16 tie so often that 3 pairs in
4 of real DISK features got other mutual matches than in float32 (and other
RANSAC verdicts); float32 inputs that hold float16 values are also exact in
TF32, so tensor cores may be allowed without changing a match. In both, ties go
to the lowest index (``argmax``'s rule), so the answer is a function of the two
descriptor sets alone.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np

from ..io import device as devices
from . import mnn_screened

log = logging.getLogger(__name__)
PAD_MULTIPLE = 64  # descriptor sets are padded to a multiple of this on the GPU (a function of the image alone)
CELL_BYTES = 12  # GPU bytes per (keypoint, keypoint) cell of a batched float32 similarity matrix, with temporaries
MATCH_SHARE = 0.5  # of the memory left under the cap, what one batched product may use
MAX_CHUNK = 1024  # pairs per batched product
BANK_SHARE = 0.35  # of the GPU memory cap, what resident descriptors may use


def empty() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)


def sort_matches(matches: np.ndarray, sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((matches[:, 1], matches[:, 0])) if len(matches) else np.zeros(0, np.int64)
    return matches[order].astype(np.int64), sims[order].astype(np.float32)


def mutual_nn(desc0: np.ndarray, desc1: np.ndarray, min_similarity: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Mutual nearest neighbours of two descriptor sets on the CPU, in float32."""
    import torch

    if len(desc0) == 0 or len(desc1) == 0:
        return empty()
    d0 = torch.from_numpy(np.ascontiguousarray(desc0, np.float32))
    d1 = torch.from_numpy(np.ascontiguousarray(desc1, np.float32))
    with torch.inference_mode():
        sim = (d0 @ d1.T).numpy()  # (M, N)
    rows = np.arange(len(sim))
    nn01 = sim.argmax(axis=1)
    best = sim[rows, nn01]
    col_max = sim.max(axis=0)
    cand = np.flatnonzero(best == col_max[nn01])  # row i holds the maximum of its column nn01[i]...
    cols = nn01[cand]
    first = (sim[:, cols] == col_max[cols]).argmax(axis=0)  # ...and is the first row that does (argmax's tie rule)
    keep = cand[(first == cand) & (best[cand] > min_similarity)]
    m = np.stack([keep, nn01[keep]], axis=1)
    return sort_matches(m, np.clip(best[keep], 0.0, 1.0))


def mnn_padded(d0, d1, lengths, min_similarity: float = 0.0):
    """Mutual nearest neighbours of ``d0`` (M, D) against a padded batch ``d1`` (B, N, D) of ``lengths`` (B,).

    Torch on any device; the inputs may be stored in half precision, the similarities are float32. Returns
    ``(keep, nn01, best)``, each (B, M): whether row m of d0 has a mutual match in pair b, its column, and the
    similarity. Padded columns never match.
    """
    import torch

    b, n, _ = d1.shape
    m = d0.shape[0]
    sim = torch.einsum("md,bnd->bmn", d0.float(), d1.float())  # (B, M, N)
    valid = torch.arange(n, device=d1.device)[None, :] < lengths[:, None]  # (B, N)
    sim.masked_fill_(~valid[:, None, :], float("-inf"))
    nn01 = sim.argmax(dim=2)  # (B, M)
    best = sim.gather(2, nn01[:, :, None])[:, :, 0]
    nn10 = sim.argmax(dim=1)  # (B, N)
    rows = torch.arange(m, device=d1.device)[None, :]
    keep = (nn10.gather(1, nn01) == rows) & (best > min_similarity) & (lengths[:, None] > 0)
    return keep, nn01, best


def _unpack(keep, nn01, best) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-pair (matches, similarity) numpy arrays from :func:`mnn_padded`'s output, with one transfer."""
    import torch

    packed = torch.stack([torch.where(keep, nn01, -1).float(), best.float()]).cpu().numpy()  # (2, B, M)
    out = []
    for cols, sims in zip(packed[0], packed[1]):
        rows = np.flatnonzero(cols >= 0)
        m = np.stack([rows, cols[rows].astype(np.int64)], axis=1)
        out.append(sort_matches(m, np.clip(sims[rows], 0.0, 1.0)))
    return out


def padded_length(n: int) -> int:
    return max(PAD_MULTIPLE, -(-n // PAD_MULTIPLE) * PAD_MULTIPLE)


def chunk_pairs(device: str, m: int, n: int, requested: int | None = None) -> int:
    """Pairs per batched product for an (m x n) similarity matrix: from the memory left under the cap."""
    if requested:
        return max(1, requested)
    free = devices.free_within_cap(device)
    if free is None:
        return 64
    per_pair = max(1, m) * max(1, n) * CELL_BYTES
    return int(max(1, min(MAX_CHUNK, free * MATCH_SHARE // per_pair)))


def _run_chunked(fn, items: list, chunk: int, device: str) -> list:
    """``fn`` over ``items`` in chunks; a chunk that runs out of GPU memory is halved (and so are later ones)."""
    import torch

    out, start = [], 0
    while start < len(items):
        part = items[start : start + chunk]
        try:
            out.extend(fn(part))
        except RuntimeError as exc:
            if not devices.is_out_of_memory(exc) or chunk == 1:
                raise
            torch.cuda.empty_cache()
            chunk = max(1, chunk // 2)
            log.warning("GPU out of memory matching %d pairs at once; now %d", len(part), chunk)
            continue
        start += len(part)
    return out


def mutual_nn_batch(
    desc0: np.ndarray, others: list[np.ndarray], device: str = "cpu", min_similarity: float = 0.0,
    chunk: int | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Mutual nearest neighbours of ``desc0`` against each descriptor set in ``others``.

    On the CPU, pair by pair: :func:`mutual_nn`'s matches, found with a bf16 screen where that is checked to give
    them and to be faster (:mod:`matcher.pairs.mnn_screened`), else by :func:`mutual_nn` itself. On a GPU, the
    second sets are sent in half precision, padded to :func:`padded_length`, and those of equal padded length
    matched ``chunk`` at a time (by default as many as the memory cap allows) in one batched float32 product.
    """
    if not devices.is_cuda(device):  # the first set converted to float32 once for all its pairs (same values)
        d0 = np.ascontiguousarray(desc0, np.float32)
        if not mnn_screened.screens(desc0) or not mnn_screened.usable(d0.shape[1], mutual_nn):
            return [mutual_nn(d0, d, min_similarity) for d in others]
        out = []
        for d in others:  # the same matches as mutual_nn's, screened by a bf16 product (mnn_screened)
            if mnn_screened.screens(d):
                out.append(mnn_screened.screened_mutual_nn(d0, np.ascontiguousarray(d, np.float32), min_similarity))
            else:
                out.append(mutual_nn(d0, d, min_similarity))
        return out
    import torch

    results: list = [None] * len(others)
    if len(desc0) == 0:
        return [empty() for _ in others]
    d0 = torch.from_numpy(np.ascontiguousarray(desc0, np.float16)).to(device)
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, d in enumerate(others):
        by_length[padded_length(len(d))].append(i)
    for n, idx in by_length.items():

        def run(part, n=n):
            padded = np.zeros((len(part), n, desc0.shape[1]), np.float16)
            for j, i in enumerate(part):
                padded[j, : len(others[i])] = others[i]
            lengths = torch.tensor([len(others[i]) for i in part], device=device)
            with torch.inference_mode():
                return _unpack(*mnn_padded(d0, torch.from_numpy(padded).to(device), lengths, min_similarity))

        for i, r in zip(idx, _run_chunked(run, idx, chunk_pairs(device, len(desc0), n, chunk), device)):
            results[i] = r
    return results


class DescriptorBank:
    """Descriptors of many images resident on the GPU in half precision, for :meth:`match`.

    Each image's set is padded to :func:`padded_length` of its own size, and images of equal padded length share
    one (count, length, D) tensor, so a chunk of second images is gathered on the GPU without any transfer.
    """

    def __init__(self, features: dict[str, dict], shas, device: str, dtype=None):
        import torch

        self.device = device
        self.dtype = dtype or (torch.float16 if devices.is_cuda(device) else torch.float32)
        self.where: dict[str, tuple[int, int]] = {}
        self.count: dict[str, int] = {}  # keypoints per image, on the host (no GPU round trip to read one)
        by_length: dict[int, list[str]] = defaultdict(list)
        for sha in sorted(set(shas)):
            by_length[padded_length(len(features[sha]["descriptors"]))].append(sha)
        self.banks, self.lengths = {}, {}
        np_dtype = np.float16 if self.dtype == torch.float16 else np.float32
        for n, group in by_length.items():
            dim = features[group[0]]["descriptors"].shape[1]
            host = np.zeros((len(group), n, dim), np_dtype)
            for row, sha in enumerate(group):
                d = features[sha]["descriptors"]
                host[row, : len(d)] = d
                self.where[sha] = (n, row)
                self.count[sha] = len(d)
            self.banks[n] = torch.from_numpy(host).to(device)
            self.lengths[n] = torch.tensor([len(features[s]["descriptors"]) for s in group], device=device)

    @staticmethod
    def nbytes(features: dict[str, dict], shas, device: str) -> int:
        """GPU bytes a bank of these images would take."""
        item = 2 if devices.is_cuda(device) else 4
        return sum(padded_length(len(features[s]["descriptors"])) * features[s]["descriptors"].shape[1] * item
                   for s in set(shas))

    def match(self, sha0: str, others: list[str], min_similarity: float = 0.0,
              chunk: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Mutual nearest neighbours of image ``sha0`` against each of ``others`` (all in the bank)."""
        import torch

        n0, r0 = self.where[sha0]
        m = self.count[sha0]
        if m == 0:
            return [empty() for _ in others]
        d0 = self.banks[n0][r0, :m]
        results: list = [None] * len(others)
        by_length: dict[int, list[int]] = defaultdict(list)
        for i, sha in enumerate(others):
            by_length[self.where[sha][0]].append(i)
        for n, idx in by_length.items():

            def run(part, n=n):
                rows = torch.tensor([self.where[others[i]][1] for i in part], device=self.device)
                with torch.inference_mode():
                    d1, lengths = self.banks[n].index_select(0, rows), self.lengths[n].index_select(0, rows)
                    return _unpack(*mnn_padded(d0, d1, lengths, min_similarity))

            for i, r in zip(idx, _run_chunked(run, idx, chunk_pairs(self.device, m, n, chunk), self.device)):
                results[i] = r
        return results
