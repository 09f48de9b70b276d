"""The front door: images ``{id: path}`` -> content hashes -> features -> pair verdicts, all cached.

:class:`Engine` holds one pipeline preset's feature stage and pair verifiers and owns the
cache layout (:mod:`matcher.cache`). Everything above it (the shortlist cascade, the
challenge run, the curation tool, the benchmarks) works through its public methods and
the plain data they return: content hashes, feature dicts, verdict dicts.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import backends, cache, presets
from .errors import ImageError
from .features import runtimes
from .features.stage import FeatureStage, mirror_key
from .features.store import feature_store
from .io import device as devices
from .io import images
from .pairs.store import VerdictStore, canonical
from .pairs.verifier import PairVerifier
from .timing import Deadline, Rate

log = logging.getLogger(__name__)
IMAGES_KEPT = 32  # decoded images kept in memory for matchers and pictures that need the pixels

__all__ = ["Engine", "Stats", "canonical", "mirror_key"]


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
    """Cached features and pair verdicts for one pipeline preset.

    ``cache_dir=None`` keeps everything in memory. Verdicts of another preset on the same features
    (LightGlue instead of mutual nearest neighbours, say) are asked for with ``preset=``.

    ``backend``: where feature extraction and pair verification run, ``local`` (this process) or
    ``ray`` (the Ray cluster at ``ray_address``: ``auto``, ``local`` or ``HOST:PORT``), see
    :mod:`matcher.backends`; either way this process writes the caches and the verdicts are the same.
    """

    def __init__(self, preset: str = presets.DEFAULT_PIPELINE, cache_dir: Path | None = None,
                 device: str | None = None, workers: int | None = None, progress: bool = True,
                 batch_size: int | None = None, backend: str = backends.DEFAULT_BACKEND,
                 ray_address: str | None = None, runtime: str | None = None):
        self.conf = presets.resolve(preset)
        self.device = devices.pick(device)
        self.runtime = runtimes.resolve(runtime, self.device, self.conf["extractor"]["model"])
        self.progress = progress
        self.workers = devices.cpu_workers(workers)
        self.backend = backends.make(backend, ray_address, self.workers, self.device)
        self.cache = cache.CacheLayout(cache_dir)
        self.feature_key = cache.feature_key(self.conf, self.runtime)
        extractor = {**self.conf["extractor"], **({"runtime": self.runtime} if self.runtime != "torch" else {})}
        store = feature_store(self.cache.features(self.feature_key),
                              {**extractor, **cache.provenance({"extractor": self.conf["extractor"]}, self.runtime)})
        self._features = FeatureStage(extractor, self.device, store, progress, batch_size)
        self._features.remote = self.backend.remote
        self._features.export_dir = self.cache.exports
        self._verifiers: dict[str, PairVerifier] = {}
        self._images: OrderedDict[str, np.ndarray] = OrderedDict()
        self.image_paths: dict[str, Path] = {}  # content hash -> file, for what needs the pixels
        self.stats = Stats()
        self.extract_rate = Rate("images")

    @property
    def name(self) -> str:
        return self.conf["name"]

    @property
    def batch_size(self) -> int:
        """Images per batch of the extractor at a typical working size."""
        return self._features.extractor.batch_size

    @property
    def settings_key(self) -> str:
        """The verdicts' settings (what a calibration is fitted for), without the software versions."""
        return presets.verdict_settings_key(self.conf)

    # -- images and features -------------------------------------------------------------------

    def hash_images(self, paths: dict[str, Path]) -> tuple[dict[str, str], dict[str, str]]:
        """Content hash per image id, and an error message per unreadable image id."""
        shas, bad = {}, {}
        for image_id, path in tqdm(paths.items(), desc="hashing images", unit="img", disable=not self.progress):
            try:
                shas[image_id] = images.content_hash(images.read_bytes(path))
            except ImageError as exc:
                bad[image_id] = str(exc)
        return shas, bad

    def prepare(self, paths: dict[str, Path], bad: dict[str, str] | None = None,
                deadline: Deadline | None = None) -> tuple[dict[str, str], dict[str, str]]:
        """Hash the images and make sure their features exist; ``(sha per usable id, error per unusable id)``.

        ``bad``: image ids already known to be unusable (reported with the others). With a ``deadline``,
        features are extracted in chunks (the first one measures the rate and the projected time is
        logged) and extraction stops when the next chunk would pass the deadline: the images left are
        ranked around like unusable ones.
        """
        bad = dict(bad or {})
        requested = len(set(paths) | set(bad))
        t0 = time.perf_counter()
        shas, unreadable = self.hash_images(dict(sorted(paths.items())))
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
        self.stats.images, self.stats.bad_images = requested, len(bad)
        return shas, bad

    def features(self, sha_paths: dict[str, Path], progress: bool | None = None
                 ) -> tuple[dict[str, dict], dict[str, str]]:
        """Features per content hash (from memory, the store, or extracted), and why each other one failed."""
        self.image_paths.update(sha_paths)
        out = self._features(sha_paths, progress)
        self.stats.features_extracted = self._features.extracted
        return out

    def mirrored_features(self, sha_paths: dict[str, Path]) -> None:
        """Make the features of the horizontally mirrored images available under :func:`mirror_key`."""
        self._features.mirrored(sha_paths)

    def release(self, shas) -> None:
        """Drop these images' features (and their mirrors') from memory; the cache keeps them (what bounds the
        memory of a pass over a large catalogue)."""
        for sha in shas:
            self._features.loaded.pop(sha, None)
            self._features.loaded.pop(mirror_key(sha), None)

    def feature(self, key: str) -> dict:
        """The features of an image already prepared (``key``: its hash, or :func:`mirror_key` of it)."""
        return self._features.loaded[key]

    def has_features(self, sha: str) -> bool:
        """Whether the image's features need no extraction (in memory or in the cache)."""
        return self._features.has(sha)

    def extract(self, image: np.ndarray) -> dict:
        """Features of one decoded image, computed now and kept nowhere."""
        return self._features.extractor.extract([image])[0]

    def image(self, sha: str) -> np.ndarray:
        """The decoded pixels of a prepared image (the last few kept in memory)."""
        if sha in self._images:
            self._images.move_to_end(sha)
            return self._images[sha]
        img = images.load(self.image_paths[sha])
        self._images[sha] = img
        while len(self._images) > IMAGES_KEPT:
            self._images.popitem(last=False)
        return img

    def _features_in_time(self, sha_paths: dict[str, Path], deadline: Deadline) -> dict[str, str]:
        bad: dict[str, str] = {}
        in_memory = {sha: path for sha, path in sha_paths.items() if sha in self._features.loaded}
        if in_memory:
            self.features(in_memory)  # nothing to compute
        items = [(sha, path) for sha, path in sha_paths.items() if sha not in in_memory]
        start, chunk = 0, 8
        with tqdm(total=len(items), desc="features", unit="img", disable=not self.progress) as bar:
            while start < len(items):
                part = dict(items[start : start + chunk])
                expected = self.extract_rate.seconds_for(len(part)) if self.extract_rate.measured else 0.0
                if deadline.left() <= 0 or not deadline.allows(expected):
                    deadline.trip(f"feature extraction stopped with {len(items) - start} images left")
                    for sha, _ in items[start:]:
                        bad[sha] = "not processed: the time budget ran out before its features were extracted"
                    break
                before, t0 = self._features.extracted, deadline.clock()
                _, bad_part = self.features(part, progress=False)
                self.extract_rate.add(self._features.extracted - before, deadline.clock() - t0)
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

    # -- pairs -----------------------------------------------------------------------------------

    def verdict_store(self, key: str) -> VerdictStore:
        """The verdict store of the cache layout, for verdicts of settings ``key``."""
        return VerdictStore(self.cache.verdicts, key)

    def verifier(self, preset: str | None = None) -> PairVerifier:
        """The pair verifier of this engine's preset, or of another preset on the same features (built once;
        a missing weight file raises here)."""
        name = preset or self.name
        if name not in self._verifiers:
            conf = presets.resolve(name)
            if conf["extractor"] != self.conf["extractor"]:
                raise ValueError(f"preset {name} uses other features than {self.name}")
            verifier = PairVerifier(conf, self.device, self.verdict_store(cache.verdict_key(conf, self.runtime)),
                                    self.workers,
                                    self.progress)
            verifier.remote = self.backend.remote
            if not verifier.uses_mnn:
                verifier.lightglue  # noqa: B018 - build the model now: a missing or unfit weight file stops here
            self._verifiers[name] = verifier
        return self._verifiers[name]

    def verdicts(self, pairs, preset: str | None = None, progress: bool | None = None
                 ) -> dict[tuple[str, str], dict]:
        """Verdicts of pairs of prepared images (keyed by the canonical pair), verifying only what the store
        lacks."""
        verifier = self.verifier(preset)
        out = verifier(set(pairs), self._features.loaded, progress)
        if preset is None or preset == self.name:
            self.stats.pairs_verified = verifier.verified
        return out

    def verified(self, preset: str | None = None) -> int:
        """Verdicts computed (not read from the store) by this engine so far."""
        return self.verifier(preset).verified

    def cached_pairs(self, pairs, preset: str | None = None) -> set[tuple[str, str]]:
        """The canonical pairs whose verdicts the store already holds."""
        store = self.verifier(preset).store
        pairs = sorted({canonical(a, b) for a, b in pairs})
        if not pairs or store.count() == 0:
            return set()
        return set(store.get_many(pairs))

    def stored_verdicts(self, preset: str | None = None) -> int:
        """Verdicts the store holds for the preset's settings."""
        return self.verifier(preset).store.count()

    def matches(self, pairs) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
        """Tentative matches of the canonical pairs, without RANSAC or the store (what a benchmark times)."""
        return self.verifier().matches(set(pairs), self._features.loaded)

    def verify_features(self, fa: dict, fb: dict, keep_inliers: bool = False) -> dict:
        """The verdict of two feature sets as given (no store); ``keep_inliers`` adds the matches and inlier mask."""
        return self.verifier().verify_pair(fa, fb, keep_inliers)

    def verify_pair(self, key_a: str, key_b: str) -> dict:
        """The verdict of two prepared images, computed in canonical order, with ``matches`` (K, 2) and the
        ``inliers`` mask oriented as asked (column 0 indexes ``key_a``'s keypoints)."""
        ca, cb = canonical(key_a, key_b)
        v = self.verify_features(self.feature(ca), self.feature(cb), keep_inliers=True)
        if (ca, cb) != (key_a, key_b):
            v["matches"] = v["matches"][:, ::-1]
        return v
