"""The verification stage: match and verify canonical pairs of image hashes, once each.

Pairs are grouped by their first image and cut into work items of a few dozen
pairs. On a GPU, the calling thread matches (mutual nearest neighbours in
batched half-precision products against descriptors kept on the GPU, or
LightGlue pair by pair) and hands each item's matches to a pool of CPU threads
that run RANSAC (OpenCV releases the GIL), so the GPU matches the next items
while the CPU verifies the previous ones; at most a few items per thread wait
in between, which bounds memory. On the CPU, each pool thread matches and
verifies whole items, with torch's own threading turned down to one thread
(small products parallelise better across pairs than inside one).

Every pair's verdict comes from the same per-pair computation whatever the
batching, the number of threads or the order of completion, so it equals
:meth:`PairVerifier.verify_pair` on the same two images. Verdicts are flushed to
the pair store every few hundred pairs from the calling thread (SQLite
connections stay in the thread that opened them), so a killed run keeps what it
verified.

With a ``remote`` runner (an execution backend, :mod:`matcher.backends`), the pairs the
store lacks are handed to it instead of the thread pool: its workers run
:meth:`PairVerifier.match_and_verify` on blocks of them elsewhere (a Ray cluster) and the
verdicts come back here, where they are flushed to the store as above: the calling
process stays the one writer of the store.
"""

from __future__ import annotations

import logging
from collections import defaultdict, deque
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from tqdm.auto import tqdm

from ..io import device as devices
from . import evidence
from .lightglue import LightGlueMatcher
from .mnn import BANK_SHARE, DescriptorBank, mutual_nn_batch
from .ransac import verify
from .store import VerdictStore, canonical

log = logging.getLogger(__name__)
FLUSH_EVERY = 256  # verdicts per store transaction
ITEM_PAIRS = 32  # pairs per work item
IN_FLIGHT_PER_WORKER = 4  # work items queued per pool thread


class PairVerifier:
    def __init__(self, conf: dict, device: str, store: VerdictStore, workers: int = 1, progress: bool = True,
                 item_pairs: int = ITEM_PAIRS, match_chunk: int | None = None):
        self.conf = conf  # the resolved pipeline preset
        self.device = device
        self.store = store
        self.workers = max(1, workers)
        self.progress = progress
        self.item_pairs = max(1, item_pairs)
        self.match_chunk = match_chunk  # pairs per batched GPU product; None: sized from the memory cap
        self.verified = 0
        self.remote = None  # an execution backend's runner (see the module docstring); None: verify here
        self._lightglue = None
        # GPU mode: match on the calling thread (batched products against resident descriptors) while the pool
        # runs RANSAC; CPU mode: the pool threads match and verify. Tests switch GPU mode on for a CPU.
        self.batched_matching = devices.is_cuda(device)
        if devices.is_cuda(device):
            devices.apply_memory_cap(device)

    @property
    def lightglue(self) -> LightGlueMatcher:
        if self._lightglue is None:
            self._lightglue = LightGlueMatcher(self.conf["matcher"], self.device)
        return self._lightglue

    @property
    def uses_mnn(self) -> bool:
        return self.conf["matcher"]["model"] == "mnn"

    def match(self, fa: dict, fbs: list[dict]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Tentative matches of one image against several."""
        mconf = self.conf["matcher"]
        if self.uses_mnn:
            return mutual_nn_batch(
                fa["descriptors"], [f["descriptors"] for f in fbs], self.device, mconf["min_similarity"],
                self.match_chunk,
            )
        return [self.lightglue.match(fa, fb) for fb in fbs]

    def _verdict(self, fa: dict, fb: dict, m: np.ndarray, s: np.ndarray) -> dict:
        """The verdict of one pair from its tentative matches, with its evidence (and the inlier mask)."""
        vconf = self.conf["verifier"]
        v = verify(fa["keypoints"], fb["keypoints"], m, s, vconf)
        v["evidence"] = evidence.describe(fa, fb, m, s, v["inliers"], v["model"], vconf["threshold"])
        return v

    def verify_pair(self, fa: dict, fb: dict, keep_inliers: bool = False) -> dict:
        """Verdict of one pair given in canonical order (the curation tool keeps the inlier mask)."""
        (m, s), = self.match(fa, [fb])
        v = self._verdict(fa, fb, m, s)
        if keep_inliers:
            v["matches"] = m
        else:
            v.pop("inliers")
        return v

    # -- the batched, concurrent path ------------------------------------------------------------

    def _verify_item(self, features: dict, a: str, others: list[str], matches: list) -> dict:
        """RANSAC for one work item (runs in a pool thread)."""
        fa = features[a]
        out = {}
        for b, (m, s) in zip(others, matches):
            v = self._verdict(fa, features[b], m, s)
            v.pop("inliers")
            out[(a, b)] = v
        return out

    def match_and_verify(self, features: dict, a: str, others: list[str]) -> dict:
        """Verdicts of the canonical pairs ``(a, b)`` for each ``b`` in ``others``: one work item, matched and
        verified here (a pool thread, or an execution backend's worker)."""
        return self._verify_item(features, a, others, self.match(features[a], [features[b] for b in others]))

    def _items(self, todo: list[tuple[str, str]]) -> list[tuple[str, list[str]]]:
        groups: dict[str, list[str]] = defaultdict(list)
        for a, b in todo:
            groups[a].append(b)
        step = self.item_pairs
        return [(a, bs[i : i + step]) for a, bs in groups.items() for i in range(0, len(bs), step)]

    def __call__(self, pairs: set[tuple[str, str]], features: dict[str, dict], progress: bool | None = None
                 ) -> dict[tuple[str, str], dict]:
        """Verdicts of the pairs (canonicalised), verifying only those the store lacks."""
        import torch

        pairs = {canonical(a, b) for a, b in pairs}
        known = self.store.get_many(sorted(pairs))
        todo = sorted(pairs - set(known))
        if not todo:
            return known
        if self.remote is not None:
            return self._remote(todo, features, known, self.progress if progress is None else progress)
        on_gpu = self.batched_matching
        pending: dict[tuple[str, str], dict] = {}
        in_flight: deque[Future] = deque()
        threads = torch.get_num_threads()
        if self.workers > 1 and not devices.is_cuda(self.device):
            torch.set_num_threads(1)  # the worker pool gives the parallelism on a CPU
        try:
            with ThreadPoolExecutor(self.workers) as pool, tqdm(
                total=len(todo), desc="verifying pairs", unit="pair",
                disable=not (self.progress if progress is None else progress)) as bar:

                limit = self.workers * IN_FLIGHT_PER_WORKER

                def drain(keep: int) -> None:
                    """Take in finished items, waiting until at most ``keep`` are still queued."""
                    while in_flight and (len(in_flight) > keep or in_flight[0].done()):
                        result = in_flight.popleft().result()
                        pending.update(result)
                        bar.update(len(result))
                        if len(pending) >= FLUSH_EVERY:
                            self._flush(pending, known)

                def submit(fn, *args) -> None:
                    in_flight.append(pool.submit(fn, *args))
                    drain(limit)

                try:
                    if on_gpu:
                        for a, bs, matches in self._gpu_matches(todo, features):
                            submit(self._verify_item, features, a, bs, matches)
                    else:
                        for a, bs in self._items(todo):
                            submit(self.match_and_verify, features, a, bs)
                    drain(0)
                finally:
                    self._flush(pending, known)  # what was verified is kept, even when something failed
        finally:
            torch.set_num_threads(threads)
        return known

    def _remote(self, todo: list[tuple[str, str]], features: dict, known: dict, progress: bool) -> dict:
        """The pairs verified by the remote runner, block by block as they come back, flushed here."""
        pending: dict[tuple[str, str], dict] = {}
        with tqdm(total=len(todo), desc=f"verifying pairs ({self.remote.label})", unit="pair",
                  disable=not progress) as bar:
            try:
                for result in self.remote.verify(self.conf, todo, features):
                    pending.update(result)
                    bar.update(len(result))
                    if len(pending) >= FLUSH_EVERY:
                        self._flush(pending, known)
            finally:
                self._flush(pending, known)  # what was verified is kept, even when something failed
        return known

    def matches(self, pairs: set[tuple[str, str]], features: dict[str, dict]) -> dict[tuple[str, str], tuple]:
        """Tentative matches of the (canonicalised) pairs, by the same path as verification but without RANSAC
        or the store: what the benchmark times as the matching stage."""
        import torch

        todo = sorted({canonical(a, b) for a, b in pairs})
        out: dict[tuple[str, str], tuple] = {}
        if self.batched_matching:
            for a, bs, matches in self._gpu_matches(todo, features):
                out.update(((a, b), m) for b, m in zip(bs, matches))
            return out
        threads = torch.get_num_threads()
        if self.workers > 1:
            torch.set_num_threads(1)
        try:
            items = self._items(todo)
            with ThreadPoolExecutor(self.workers) as pool:
                for (a, bs), matches in zip(items, pool.map(
                        lambda item: self.match(features[item[0]], [features[b] for b in item[1]]), items)):
                    out.update(((a, b), m) for b, m in zip(bs, matches))
        finally:
            torch.set_num_threads(threads)
        return out

    def _gpu_matches(self, todo: list[tuple[str, str]], features: dict):
        """(a, others, matches) per work item, matched on the GPU in the calling thread."""
        items = self._items(todo)
        if not self.uses_mnn:
            for a, bs in items:
                yield a, bs, self.match(features[a], [features[b] for b in bs])
            return
        mconf = self.conf["matcher"]
        cap = devices.memory_cap(self.device) or 0
        for block in self._bank_blocks(items, features, int(cap * BANK_SHARE)):
            bank = DescriptorBank(features, {s for a, bs in block for s in (a, *bs)}, self.device)
            # one batched product per first image (its items together), then cut back into items
            by_first: dict[str, list[list[str]]] = defaultdict(list)
            for a, bs in block:
                by_first[a].append(bs)
            for a, parts in by_first.items():
                everyone = [b for bs in parts for b in bs]
                matches = bank.match(a, everyone, mconf["min_similarity"], self.match_chunk)
                start = 0
                for bs in parts:
                    yield a, bs, matches[start : start + len(bs)]
                    start += len(bs)
            del bank

    @staticmethod
    def _bank_blocks(items: list, features: dict, budget: int) -> list[list]:
        """Consecutive runs of items whose images' descriptors fit in ``budget`` GPU bytes (one run if all do)."""
        everything = {s for a, bs in items for s in (a, *bs)}
        if not budget or DescriptorBank.nbytes(features, everything, "cuda") <= budget:
            return [items]
        blocks, block, shas, used = [], [], set(), 0
        for a, bs in items:
            new = {a, *bs} - shas
            extra = DescriptorBank.nbytes(features, new, "cuda")
            if block and used + extra > budget:
                blocks.append(block)
                block, shas, used = [], set(), 0
                new = {a, *bs}
                extra = DescriptorBank.nbytes(features, new, "cuda")
            block.append((a, bs))
            shas |= new
            used += extra
        if block:
            blocks.append(block)
        log.info("descriptors exceed %.1f GiB of GPU memory: matching in %d blocks", budget / 2**30, len(blocks))
        return blocks

    def _flush(self, pending: dict, known: dict) -> None:
        if pending:
            self.store.put_many(pending)
            self.verified += len(pending)
            known.update(pending)
            pending.clear()
