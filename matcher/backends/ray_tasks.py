"""What runs on a Ray cluster's workers for the Ray backend (:mod:`matcher.backends.ray_backend`): the tasks
that extract a chunk of images and verify a block of pairs with the very code of the local path (the feature
stage and the pair verifier, built once per worker process), and the probe that reports a node's software.
Imported by the workers through the driver's remote functions; imports ray only inside the tasks."""

from __future__ import annotations

import json
import socket
import time

from .. import __version__, cache
from ..errors import ImageError
from ..io import images

_WORKER: dict = {}  # per worker process: the verifier and the feature stage of each setting, built once


def _conf_key(kind: str, conf: dict, *extra) -> tuple:
    return (kind, json.dumps(conf, sort_keys=True, default=str), *extra)


def _worker_verifier(conf: dict):
    key = _conf_key("verifier", conf)
    if key not in _WORKER:
        from ..pairs.verifier import PairVerifier

        _WORKER[key] = PairVerifier(conf, "cpu", None, workers=1, progress=False)
    return _WORKER[key]


def _worker_stage(conf: dict, device: str):
    key = _conf_key("features", conf, device)
    if key not in _WORKER:
        from ..features.stage import FeatureStage
        from ..features.store import feature_store

        stage = _WORKER[key] = FeatureStage(conf, device, feature_store(None, conf), progress=False)
        stage.extractor  # noqa: B018 - built now (weights loaded), before the first chunk is timed
    return _WORKER[key]


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def verify_block(conf: dict, items: list[tuple[str, list[str]]], shas: list[str], *feats) -> tuple:
    """A task: the verdicts of a block of work items ``(a, [b, ...])``, given the features of ``shas`` (in that
    order); returns (verdicts, node id, seconds of work, CPU seconds of work: a new worker's imports and set-up
    not counted)."""
    import torch

    torch.set_num_threads(1)  # one CPU per task, as the local pool gives each thread
    verifier = _worker_verifier(conf)
    t0, c0 = time.perf_counter(), time.process_time()
    features = dict(zip(shas, feats))
    out: dict = {}
    for a, others in items:
        out.update(verifier.match_and_verify(features, a, others))
    return out, _node_id(), time.perf_counter() - t0, time.process_time() - c0


def extract_chunk(conf: dict, device: str, blobs: list[tuple[str, images.Blob]]) -> tuple:
    """A task: the features of a chunk of images (their bytes); returns (features, errors, node id, seconds of
    work: building the extractor not counted)."""
    stage = _worker_stage(conf, device)
    t0 = time.perf_counter()
    try:
        feats, bad = stage(dict(blobs), progress=False)
    finally:
        stage.loaded.clear()
    return feats, bad, _node_id(), time.perf_counter() - t0


def extract_mirrored_chunk(conf: dict, device: str, blobs: list[tuple[str, images.Blob]]) -> tuple:
    """A task: the features of the mirrored images (key, bytes); returns (features, errors, node id, seconds)."""
    stage = _worker_stage(conf, device)
    t0 = time.perf_counter()
    feats, errors = {}, {}
    for key, blob in blobs:
        try:
            feats.update(stage.extract_mirrored([(key, blob)]))
        except ImageError as exc:
            errors[key] = str(exc)
    return feats, errors, _node_id(), time.perf_counter() - t0


def probe() -> dict:
    """A task: what this node runs (the versions verdicts depend on)."""
    return {"software": cache.software(), "whalematch": __version__, "node": _node_id(), "host": socket.gethostname()}
