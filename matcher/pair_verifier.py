"""The verification stage: match and verify canonical pairs of image hashes, once each.

Pairs are grouped by their first image; each group's descriptors are matched
in one batched call (mutual nearest neighbours) or pair by pair (LightGlue),
and RANSAC runs on a pool of worker threads (OpenCV releases the GIL).
Verdicts are flushed to the pair store every few hundred pairs, so a killed
run keeps what it verified.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm.auto import tqdm

from .matching import LightGlueMatcher, mutual_nn_batch
from .pair_cache import PairCache, canonical
from .verification import verify

log = logging.getLogger(__name__)
FLUSH_EVERY = 256  # verdicts per store transaction


class PairVerifier:
    def __init__(self, conf: dict, device: str, store: PairCache, workers: int = 1, progress: bool = True):
        self.conf = conf  # the resolved pipeline preset
        self.device = device
        self.store = store
        self.workers = max(1, workers)
        self.progress = progress
        self.verified = 0
        self._lightglue = None

    @property
    def lightglue(self) -> LightGlueMatcher:
        if self._lightglue is None:
            self._lightglue = LightGlueMatcher(self.conf["matcher"], self.device)
        return self._lightglue

    def match(self, fa: dict, fbs: list[dict]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Tentative matches of one image against several."""
        mconf = self.conf["matcher"]
        if mconf["model"] == "mnn":
            return mutual_nn_batch(
                fa["descriptors"].astype(np.float32),
                [f["descriptors"].astype(np.float32) for f in fbs],
                self.device,
                mconf["min_similarity"],
            )
        return [self.lightglue.match(fa, fb) for fb in fbs]

    def verify_pair(self, fa: dict, fb: dict, keep_inliers: bool = False) -> dict:
        """Verdict of one pair given in canonical order (the curation tool keeps the inlier mask)."""
        (m, s), = self.match(fa, [fb])
        v = verify(fa["keypoints"], fb["keypoints"], m, s, self.conf["verifier"])
        if keep_inliers:
            v["matches"] = m
        else:
            v.pop("inliers")
        return v

    def _group(self, features: dict[str, dict], sha_a: str, others: list[str]) -> dict:
        fa = features[sha_a]
        fbs = [features[b] for b in others]
        out = {}
        for b, fb, (m, s) in zip(others, fbs, self.match(fa, fbs)):
            v = verify(fa["keypoints"], fb["keypoints"], m, s, self.conf["verifier"])
            v.pop("inliers")
            out[(sha_a, b)] = v
        return out

    def __call__(self, pairs: set[tuple[str, str]], features: dict[str, dict]) -> dict[tuple[str, str], dict]:
        """Verdicts of the pairs (canonicalised), verifying only those the store lacks."""
        import torch

        pairs = {canonical(a, b) for a, b in pairs}
        known = self.store.get_many(sorted(pairs))
        todo = sorted(pairs - set(known))
        if not todo:
            return known
        groups: dict[str, list[str]] = defaultdict(list)
        for a, b in todo:
            groups[a].append(b)
        pending: dict[tuple[str, str], dict] = {}
        threads = torch.get_num_threads()
        if self.workers > 1 and not self.device.startswith("cuda"):
            torch.set_num_threads(1)  # the worker pool gives the parallelism on a CPU
        try:
            with ThreadPoolExecutor(self.workers) as pool, tqdm(
                total=len(todo), desc="verifying pairs", unit="pair", disable=not self.progress
            ) as bar:
                for result in pool.map(lambda item: self._group(features, *item), groups.items()):
                    pending.update(result)
                    bar.update(len(result))
                    if len(pending) >= FLUSH_EVERY:
                        self._flush(pending, known)
                self._flush(pending, known)
        finally:
            torch.set_num_threads(threads)
        return known

    def _flush(self, pending: dict, known: dict) -> None:
        if pending:
            self.store.put_many(pending)
            self.verified += len(pending)
            known.update(pending)
            pending.clear()
