"""Compose the stages: images -> features -> shortlist cascade (verdicts) -> rankings.

:class:`Engine` holds one preset's feature stage, verification stage and
caches, and (built on first use) the cascade's stage 0 (global descriptors)
and stage 2 (an expensive matcher). :func:`rank_scenarios` is the main job:
every scenario's queries ranked against their database through the cascade of
:mod:`matcher.shortlist`, sized by the time budget of :mod:`matcher.budget`,
with the expected answers for validation.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from . import device as devices
from . import global_descriptors, images, presets, shortlist
from .budget import Deadline, Rate
from .data import ChallengeData
from .errors import DataError, ImageError
from .extraction import FeatureStage
from .pair_cache import PairCache
from .pair_verifier import PairVerifier
from .ranking import SUBMISSION_COLUMNS, TOP_K

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
        stage2: str | None = "auto",
        global_descriptor: str | None = "auto",
    ):
        self.conf = presets.resolve(preset)
        self.device = devices.pick(device)
        self.progress = progress
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.feature_stage = FeatureStage(self.conf["extractor"], self.device, cache_dir, progress)
        store = PairCache(Path(cache_dir) / "pairs.sqlite" if cache_dir else None, presets.verdict_key(self.conf))
        self.workers = devices.cpu_workers(workers)
        self.verifier = PairVerifier(self.conf, self.device, store, self.workers, progress)
        self.stats = Stats()
        self.stage2_name = default_stage2(self.conf) if stage2 == "auto" else stage2
        if self.stage2_name in ("", "none"):
            self.stage2_name = None
        self.global_name = (global_descriptors.DEFAULT_FOR_EXTRACTOR.get(self.conf["extractor"]["name"], "none")
                            if global_descriptor == "auto" else (global_descriptor or "none"))
        self._global_stage = None
        self._stage2: shortlist.PairStage | None | bool = False  # False: not built yet
        self.image_paths: dict[str, Path] = {}  # content hash -> file, for matchers that need the pixels
        self.extract_rate = Rate("images")
        self.last_plan = None  # the cascade plan of the last run (K per stage, projected time)

    @property
    def global_stage(self) -> global_descriptors.GlobalStage:
        """Stage 0: global descriptors of the loaded features (passes everything through when off)."""
        if self._global_stage is None:
            self._global_stage = global_descriptors.GlobalStage(self.global_name, self.conf["extractor"],
                                                                self.cache_dir)
        return self._global_stage

    @property
    def stage2(self) -> shortlist.PairStage | None:
        """Stage 2: the expensive matcher, or None (none configured, or it cannot run here)."""
        if self._stage2 is False:
            self._stage2 = shortlist.build_stage2(self, self.stage2_name)
        return self._stage2

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

    def prepare_images(self, data: ChallengeData, image_ids: set[str],
                       deadline: Deadline | None = None) -> tuple[dict[str, str], dict[str, str]]:
        """Hash and extract features of the images; ``(sha per usable id, error per unusable id)``.

        With a ``deadline``, features are extracted in chunks (the first one measures the
        rate and the projected time is logged) and extraction stops when the next chunk
        would pass the deadline: the images left are ranked around like unusable ones.
        """
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
        sha_paths = {sha: paths[i] for i, sha in sorted(shas.items())}
        self.image_paths.update(sha_paths)
        if deadline is None:
            _, bad_sha = self.features(sha_paths)
        else:
            bad_sha = self._features_in_time(sha_paths, deadline)
        for image_id, sha in list(shas.items()):
            if sha in bad_sha:
                bad[image_id] = bad_sha[sha]
                del shas[image_id]
        self.stats.seconds["features"] = time.perf_counter() - t0
        for image_id, msg in sorted(bad.items()):
            log.warning("unusable image %s: %s (ranked around it with score 0)", image_id, msg)
        self.stats.images, self.stats.bad_images = len(image_ids), len(bad)
        return shas, bad

    def _features_in_time(self, sha_paths: dict[str, Path], deadline: Deadline) -> dict[str, str]:
        bad: dict[str, str] = {}
        in_memory = {sha: path for sha, path in sha_paths.items() if sha in self.feature_stage.loaded}
        if in_memory:
            self.features(in_memory)  # nothing to compute
        items = [(sha, path) for sha, path in sha_paths.items() if sha not in in_memory]
        start, chunk = 0, 8
        with shortlist.quiet(self.feature_stage), tqdm(total=len(items), desc="features", unit="img",
                                                        disable=not self.progress) as bar:
            while start < len(items):
                part = dict(items[start : start + chunk])
                expected = self.extract_rate.seconds_for(len(part)) if self.extract_rate.measured else 0.0
                if deadline.left() <= 0 or not deadline.allows(expected):
                    deadline.trip(f"feature extraction stopped with {len(items) - start} images left")
                    for sha, _ in items[start:]:
                        bad[sha] = "not processed: the time budget ran out before its features were extracted"
                    break
                before, t0 = self.feature_stage.extracted, deadline.clock()
                _, bad_part = self.features(part)
                self.extract_rate.add(self.feature_stage.extracted - before, deadline.clock() - t0)
                bad.update(bad_part)
                if self.extract_rate.measured and chunk == 8 and start + chunk < len(items):
                    left = len(items) - start - len(part)
                    log.info("features: %d images left to extract or load at %s: about %.0f s at most",
                             left, self.extract_rate, self.extract_rate.seconds_for(left))
                start += len(part)
                bar.update(len(part))
                if self.extract_rate.measured:
                    chunk = max(8, int(self.extract_rate.per_s * 15))
        return bad


# Stage 2 switched on by default, per preset: only where benchmarks/cascade.py measured it to add accuracy.
# LightGlue on the DISK features (``--stage2 lightglue``) did not on the development photos (README,
# "Shortlist and time budget"): it finds fewer inliers than MNN + RANSAC on the hard (cross-year) pairs.
STAGE2_BY_DEFAULT: dict[str, str] = {}


def default_stage2(conf: dict) -> str | None:
    """The expensive matcher a preset uses unless told otherwise (see ``STAGE2_BY_DEFAULT``)."""
    return STAGE2_BY_DEFAULT.get(conf["name"])


def candidate_lists(data: ChallengeData) -> dict[str, tuple[str, list[str]]]:
    """Per query_id: (query image id, database image ids to verify). Every database image, for now."""
    out = {}
    for sc in data.scenarios:
        for qid, qimg in sc.queries.itertuples(index=False):
            out[qid] = (qimg, [d for d in sc.database if d != qimg])
    return out


def query_tasks(data: ChallengeData) -> list[tuple[str, str, str, list[str]]]:
    """(query id, query image id, scenario id, database ids) for every query, in file order."""
    return [(qid, qimg, sc.scenario_id, list(sc.database))
            for sc in data.scenarios for qid, qimg in sc.queries.itertuples(index=False)]


def run_cascade(data: ChallengeData, engine: Engine, settings: shortlist.CascadeSettings | None = None,
                deadline: Deadline | None = None) -> shortlist.CascadeResult:
    """Every query through the shortlist cascade; the result keeps each stage's scores (for benchmarks)."""
    settings = settings or shortlist.CascadeSettings()
    if deadline is None:
        deadline = Deadline(settings.budget_s if settings.budget_s is not None else float("inf"))
    needed = set()
    for sc in data.scenarios:
        needed.update(sc.queries["query_image_id"])
        needed.update(sc.database)
    shas, _ = engine.prepare_images(data, needed, deadline if settings.budget_s is not None else None)

    stage1 = shortlist.VerifierStage(engine.conf["name"], engine.verifier, engine.feature_stage.loaded,
                                     on_done=lambda: setattr(engine.stats, "pairs_verified", engine.verifier.verified))
    cascade = shortlist.Cascade(engine, stage1, engine.stage2, engine.global_stage, settings, deadline)
    tasks = query_tasks(data)
    cascade.prepare(tasks, shas)
    plan = cascade.run()
    engine.last_plan = plan
    engine.stats.pairs = len({int(c) for q in cascade.queries.values() for c in q.pair_codes[q.order0[:plan.k1]]}) \
        + cascade.database_pairs
    engine.stats.pairs_verified = engine.verifier.verified
    for k, v in cascade.seconds.items():
        engine.stats.seconds[k] = v

    expected = {}
    for sc in data.scenarios:
        database = set(sc.database)
        for qid, qimg in sc.queries.itertuples(index=False):
            expected[qid] = (qimg, database)
    result = cascade.result(expected)
    k2 = plan.k2 if engine.stage2 is not None else 0
    rows = []
    for qid, _, _, _ in tasks:
        for db_id, score in shortlist.final_ranking(cascade.queries[qid], cascade.v1, cascade.v2, plan.k1, k2,
                                                    result.bands, TOP_K, settings.stage2_mode):
            rows.append((qid, db_id, score))
    result.submission = pd.DataFrame(rows, columns=SUBMISSION_COLUMNS)
    if deadline.tripped:
        log.warning("the time budget cut the run (%s); the submission ranks every query from what was done",
                    "; ".join(deadline.tripped))
    return result


def rank_scenarios(data: ChallengeData, engine: Engine, budget_s: float | None = None, k1: int | None = None,
                   k2: int | None = None, k2_max: int = shortlist.CascadeSettings.k2_max,
                   deadline: Deadline | None = None, stage2_mode: str = shortlist.CascadeSettings.stage2_mode,
                   rerank: bool = shortlist.CascadeSettings.rerank) -> tuple[pd.DataFrame, dict]:
    """The submission for every scenario, and the expected answers used to validate it.

    ``budget_s=None`` and no K: nothing is cut (stage 1 verifies every candidate, stage 2
    re-scores each query's top ``k2_max``). With a budget, the planner chooses the K the
    caller did not fix (:mod:`matcher.budget`). ``rerank`` re-ranks each query's stage-1
    candidates with the verdicts among its scenario's database images (:mod:`matcher.rerank`).
    """
    settings = shortlist.CascadeSettings(k1=k1, k2=k2, k2_max=k2_max, budget_s=budget_s, stage2_mode=stage2_mode,
                                         rerank=rerank)
    result = run_cascade(data, engine, settings, deadline)
    return result.submission, result.expected
