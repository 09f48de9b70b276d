"""The feature stage: features per image content hash, from the cache or freshly extracted."""

from __future__ import annotations

import logging
from pathlib import Path

from tqdm.auto import tqdm

from . import features as feature_extractors
from . import images
from .errors import ImageError
from .feature_cache import FeatureCache

log = logging.getLogger(__name__)
DECODE_MAX_SIDE = 4096  # large JPEGs decode at reduced scale; nothing finer survives the working size


class FeatureStage:
    """Extract features once per image content and keep them (in memory and on disk)."""

    def __init__(self, conf: dict, device: str, cache_dir: Path | None, progress: bool = True):
        self.conf = conf
        self.device = device
        self.cache = FeatureCache(cache_dir, conf)
        self.progress = progress
        self.loaded: dict[str, dict] = {}
        self.extracted = 0
        self._extractor = None

    @property
    def extractor(self):
        if self._extractor is None:
            self._extractor = feature_extractors.build(self.conf, self.device)
        return self._extractor

    def __call__(self, sha_paths: dict[str, Path]) -> tuple[dict[str, dict], dict[str, str]]:
        """Features per content hash, and an error message per hash that could not be used."""
        out, bad, todo = {}, {}, {}
        for sha, path in sha_paths.items():
            feats = self.loaded.get(sha) or self.cache.get(sha)
            if feats is None:
                todo[sha] = path
            else:
                out[sha] = self.loaded[sha] = feats
        if not todo:
            return out, bad
        items = list(todo.items())
        step = max(1, self.extractor.batch_size) * 4
        with tqdm(total=len(items), desc="extracting features", unit="img", disable=not self.progress) as bar:
            for start in range(0, len(items), step):
                chunk = items[start : start + step]
                decoded = {}
                for sha, path in chunk:
                    try:
                        decoded[sha] = images.decode(images.read_bytes(path), path, max_side=DECODE_MAX_SIDE)
                    except ImageError as exc:
                        bad[sha] = str(exc)
                shas = list(decoded)
                for sha, feats in zip(shas, self.extractor.extract([decoded[s] for s in shas])):
                    self.cache.put(sha, feats)
                    out[sha] = self.loaded[sha] = feats
                    self.extracted += 1
                bar.update(len(chunk))
        return out, bad
