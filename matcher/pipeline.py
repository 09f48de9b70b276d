"""Compose the stages: images -> features -> candidate pairs -> verdicts -> rankings.

:class:`Engine` holds one preset's feature stage, verification stage and
caches. :func:`rank_scenarios` is the main job: every scenario's queries
ranked against their database, with the expected answers for validation.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from . import device as devices
from . import images, presets
from .data import ChallengeData
from .errors import DataError, ImageError
from .extraction import FeatureStage
from .pair_cache import PairCache, canonical
from .pair_verifier import PairVerifier
from .ranking import SUBMISSION_COLUMNS, rank_query

log = logging.getLogger(__name__)


@dataclass
class Stats:
    images: int = 0
    bad_images: int = 0
    features_extracted: int = 0
    pairs: int = 0
    pairs_verified: int = 0
    seconds: dict = field(default_factory=dict)

    def summary(self) -> str:
        times = ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items())
        return (
            f"{self.images} images ({self.bad_images} unusable, {self.features_extracted} extracted), "
            f"{self.pairs} pairs ({self.pairs_verified} verified now); {times}"
        )


class Engine:
    """Cached features and pair verdicts for one pipeline preset."""

    def __init__(
        self,
        preset: str = presets.DEFAULT_PIPELINE,
        cache_dir: Path | None = None,
        device: str | None = None,
        workers: int | None = None,
        progress: bool = True,
    ):
        self.conf = presets.resolve(preset)
        self.device = devices.pick(device)
        self.progress = progress
        self.feature_stage = FeatureStage(self.conf["extractor"], self.device, cache_dir, progress)
        store = PairCache(Path(cache_dir) / "pairs.sqlite" if cache_dir else None, presets.verdict_key(self.conf))
        workers = workers or max(1, min(os.cpu_count() or 1, 8))
        self.verifier = PairVerifier(self.conf, self.device, store, workers, progress)
        self.stats = Stats()

    def hash_images(self, paths: dict[str, Path]) -> tuple[dict[str, str], dict[str, str]]:
        """Content hash per image id, and an error message per unreadable image id."""
        shas, bad = {}, {}
        for image_id, path in tqdm(paths.items(), desc="hashing images", unit="img", disable=not self.progress):
            try:
                shas[image_id] = images.content_hash(images.read_bytes(path))
            except ImageError as exc:
                bad[image_id] = str(exc)
        return shas, bad

    def features(self, sha_paths: dict[str, Path]) -> tuple[dict[str, dict], dict[str, str]]:
        out = self.feature_stage(sha_paths)
        self.stats.features_extracted = self.feature_stage.extracted
        return out

    def verdicts(self, pairs: set[tuple[str, str]]) -> dict[tuple[str, str], dict]:
        out = self.verifier(pairs, self.feature_stage.loaded)
        self.stats.pairs_verified = self.verifier.verified
        return out

    def prepare_images(self, data: ChallengeData, image_ids: set[str]) -> tuple[dict[str, str], dict[str, str]]:
        """Hash and extract features of the images; ``(sha per usable id, error per unusable id)``."""
        paths, bad = {}, {}
        for image_id in sorted(image_ids):
            try:
                paths[image_id] = data.image_path(image_id)
            except DataError as exc:
                bad[image_id] = str(exc)
        t0 = time.perf_counter()
        shas, unreadable = self.hash_images(paths)
        bad.update(unreadable)
        self.stats.seconds["hash"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, bad_sha = self.features({sha: paths[i] for i, sha in sorted(shas.items())})
        for image_id, sha in list(shas.items()):
            if sha in bad_sha:
                bad[image_id] = bad_sha[sha]
                del shas[image_id]
        self.stats.seconds["features"] = time.perf_counter() - t0
        for image_id, msg in sorted(bad.items()):
            log.warning("unusable image %s: %s (ranked around it with score 0)", image_id, msg)
        self.stats.images, self.stats.bad_images = len(image_ids), len(bad)
        return shas, bad


def candidate_lists(data: ChallengeData) -> dict[str, tuple[str, list[str]]]:
    """Per query_id: (query image id, database image ids to verify). Every database image, for now."""
    out = {}
    for sc in data.scenarios:
        for qid, qimg in sc.queries.itertuples(index=False):
            out[qid] = (qimg, [d for d in sc.database if d != qimg])
    return out


def rank_scenarios(data: ChallengeData, engine: Engine) -> tuple[pd.DataFrame, dict]:
    """The submission for every scenario, and the expected answers used to validate it."""
    needed = set()
    for sc in data.scenarios:
        needed.update(sc.queries["query_image_id"])
        needed.update(sc.database)
    shas, _ = engine.prepare_images(data, needed)

    t0 = time.perf_counter()
    candidates = candidate_lists(data)
    pairs = {canonical(shas[q], shas[c]) for q, cands in candidates.values() if q in shas for c in cands if c in shas}
    engine.stats.pairs = len(pairs)
    verdicts = engine.verdicts(pairs)
    engine.stats.seconds["verify"] = time.perf_counter() - t0

    frames, expected = [], {}
    for sc in data.scenarios:
        database = set(sc.database)
        for qid, qimg in sc.queries.itertuples(index=False):
            expected[qid] = (qimg, database)
            _, cands = candidates[qid]
            scores, strengths = {}, {}
            if qimg in shas:
                for c in cands:
                    if c in shas:
                        v = verdicts[canonical(shas[qimg], shas[c])]
                        scores[c], strengths[c] = v["score"], v["strength"]
            frames.append(rank_query(qid, qimg, cands, scores, strengths))
    sub = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SUBMISSION_COLUMNS)
    return sub, expected
