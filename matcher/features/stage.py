"""The feature stage: features per image content hash, from the store or freshly extracted.

The images to extract are put in order of their working size (read from the file
header, without decoding), so that images of equal working size arrive together
and fill the extractor's batches; the next chunk of images is decoded in a thread
pool while the network runs on the current one (Pillow releases the GIL while it
decodes); store entries are written in order from the calling thread (about a
millisecond each), so a killed run leaves at most one temporary file. The order
only changes which images share a batch, never what an image's features are.

Mirrored features (:meth:`FeatureStage.mirrored`) are those of the horizontally
flipped photo, kept under :func:`mirror_key` of the image's hash: a left flank is
matched against the mirrored right flank of the same whale.

With a ``remote`` runner (an execution backend, :mod:`matcher.backends`), the images to
extract are handed to it in the same order, chunk by chunk; it runs this same stage on
them elsewhere (a Ray cluster's workers, with a store that keeps nothing) and gives the
features back, and this stage writes the store entries and keeps them in memory as it
does with its own: the calling process stays the one writer of the cache.
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import ImageError, WeightsError
from ..io import device as devices
from ..io import images
from ..io.array_store import ArrayStore
from . import extractors

log = logging.getLogger(__name__)
IO_THREADS = 2  # decoding and store I/O beside the network


def mirror_key(sha: str) -> str:
    """Key of the features of an image's horizontal mirror (a pure function of the image hash)."""
    return hashlib.sha256(f"whalematch-hflip:{sha}".encode()).hexdigest()


class FeatureStage:
    """Extract features once per image content and keep them (in memory and in ``store``)."""

    def __init__(self, conf: dict, device: str, store: ArrayStore, progress: bool = True,
                 batch_size: int | None = None, io_threads: int = IO_THREADS):
        self.conf = conf
        self.device = device
        self.store = store
        self.progress = progress
        self.batch_size = batch_size
        self.io_threads = max(1, io_threads)
        self.loaded: dict[str, dict] = {}
        self.extracted = 0
        self.remote = None  # an execution backend's runner (see the module docstring); None: extract here
        self.export_dir = None  # where an exported network is kept (the cache's exports/; None: a temporary folder)
        self._extractor = None

    @property
    def extractor(self) -> extractors.Extractor:
        if self._extractor is None:
            self._extractor = extractors.build(self.conf, self.device, self.batch_size, self.export_dir)
        return self._extractor

    def has(self, sha: str) -> bool:
        """Whether the features of ``sha`` need no extraction (in memory or stored)."""
        return sha in self.loaded or self.store.has(sha)

    def _ordered(self, todo: dict[str, Path], pool: ThreadPoolExecutor) -> list[tuple[str, Path]]:
        """The images in order of working size (unreadable headers last), then hash: equal sizes side by side."""
        sizes = list(pool.map(images.header_size, todo.values()))
        ex = self.extractor

        def key(item):
            (sha, _), size = item
            return (0, ex.working_size(*size), sha) if size else (1, (0, 0), sha)

        return [item for item, _ in sorted(zip(todo.items(), sizes), key=key)]

    def __call__(self, sha_paths: dict[str, Path], progress: bool | None = None
                 ) -> tuple[dict[str, dict], dict[str, str]]:
        """Features per content hash, and an error message per hash that could not be used."""
        out, bad, todo = {}, {}, {}
        missing = {sha: path for sha, path in sha_paths.items() if sha not in self.loaded}
        for sha in sha_paths.keys() - missing.keys():
            out[sha] = self.loaded[sha]
        with ThreadPoolExecutor(self.io_threads) as pool:
            for (sha, path), feats in zip(missing.items(), pool.map(self.store.get, missing)):
                if feats is None:
                    todo[sha] = path
                else:
                    out[sha] = self.loaded[sha] = feats
            if todo:
                self._extract(todo, out, bad, pool, self.progress if progress is None else progress)
        return out, bad

    def mirrored(self, sha_paths: dict[str, Path]) -> None:
        """Features of the horizontally mirrored images, under :func:`mirror_key` of each hash (stored like any
        other features); :class:`~matcher.errors.ImageError` for an image that cannot be decoded."""
        todo = []
        for sha, path in sha_paths.items():
            key = mirror_key(sha)
            if key in self.loaded:
                continue
            feats = self.store.get(key)
            if feats is None:
                todo.append((key, path))
            else:
                self.loaded[key] = feats
        if self.remote is not None and todo:
            error = None
            with tqdm(total=len(todo), desc=f"extracting mirrored features ({self.remote.label})", unit="img",
                      disable=not self.progress) as bar:
                for feats, errors, done in self.remote.extract_mirrored(self.conf, todo):
                    self._keep(feats)
                    error = error or next(iter(errors.values()), None)
                    bar.update(done)
            if error is not None:
                raise ImageError(error)
            return
        for key, path in tqdm(todo, desc="extracting mirrored features", unit="img",
                              disable=not self.progress or not todo):
            self._keep(self.extract_mirrored([(key, path)]))

    def extract_mirrored(self, todo: list[tuple[str, Path]]) -> dict[str, dict]:
        """Features of each mirrored image (``(key, path)``), computed now and kept nowhere; :class:`ImageError`
        for an image that cannot be decoded."""
        return {key: self.extractor.extract([np.ascontiguousarray(images.load(path)[:, ::-1])])[0]
                for key, path in todo}

    def _keep(self, feats: dict[str, dict]) -> None:
        for key, f in feats.items():
            self.store.put(key, f)
            self.loaded[key] = f

    def _extract(self, todo: dict[str, Path], out: dict, bad: dict, pool: ThreadPoolExecutor, progress: bool) -> None:
        items = self._ordered(todo, pool)
        if self.remote is not None:
            with tqdm(total=len(items), desc=f"extracting features ({self.remote.label})", unit="img",
                      disable=not progress) as bar:
                for feats, bad_part, done in self.remote.extract(self.conf, items):
                    bad.update(bad_part)
                    for sha, f in feats.items():
                        self.store.put(sha, f)
                        out[sha] = self.loaded[sha] = f
                        self.extracted += 1
                    bar.update(done)
            return
        # a chunk: a few batches (on a GPU) or enough images for the CPU's threads, decoded while the one before runs
        step = max(8, max(1, self.extractor.batch_size) * (4 if devices.is_cuda(self.device) else 2))
        chunks = [items[i : i + step] for i in range(0, len(items), step)]
        decoding: dict[int, list] = {}

        def decode_ahead(ci: int) -> None:
            if ci < len(chunks) and ci not in decoding:
                decoding[ci] = [(sha, pool.submit(images.load, path)) for sha, path in chunks[ci]]

        with tqdm(total=len(items), desc="extracting features", unit="img", disable=not progress) as bar:
            for ci in range(len(chunks)):
                decode_ahead(ci)
                decode_ahead(ci + 1)  # decoded while the network runs on this chunk
                decoded = {}
                for sha, future in decoding.pop(ci):
                    try:
                        decoded[sha] = future.result()
                    except ImageError as exc:
                        bad[sha] = str(exc)
                for sha, feats in self._run(decoded, dict(chunks[ci]), bad).items():
                    self.store.put(sha, feats)
                    out[sha] = self.loaded[sha] = feats
                    self.extracted += 1
                bar.update(len(chunks[ci]))

    def _run(self, decoded: dict[str, object], paths: dict[str, Path], bad: dict) -> dict[str, dict]:
        """Features of a chunk of decoded images; if the chunk fails, each image alone, so one bad image
        costs only itself (it is reported in ``bad`` and ranked around, and the run goes on)."""
        shas = list(decoded)
        try:
            return dict(zip(shas, self.extractor.extract([decoded[s] for s in shas])))
        except WeightsError:  # the extractor cannot be built: no image would fare better, the run cannot go on
            raise
        except Exception as exc:  # noqa: BLE001 - isolated per image below; out-of-memory is split upstream
            if len(shas) == 1:
                bad[shas[0]] = f"{paths[shas[0]]}: feature extraction failed ({type(exc).__name__}: {exc})"
                log.warning("%s", bad[shas[0]])
                return {}
            log.warning("feature extraction failed on a batch of %d images (%s); retrying them one by one",
                        len(shas), exc)
        out = {}
        for sha in shas:
            out.update(self._run({sha: decoded[sha]}, paths, bad))
        return out
