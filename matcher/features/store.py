"""The per-image feature store: an :class:`~matcher.io.array_store.ArrayStore` of an extractor's output,
each entry checked for the shapes and types of real features before it is used."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io.array_store import ArrayStore

FIELDS = ("keypoints", "descriptors", "scores", "size")


def check(feats: dict) -> None:
    """Raise ValueError unless ``feats`` has the shapes and types of an extractor's output."""
    kp, desc, scores, size = (np.asarray(feats[k]) for k in FIELDS)
    n = len(kp)
    if kp.ndim != 2 or kp.shape[1] != 2:
        raise ValueError(f"keypoints have shape {kp.shape}, expected (N, 2)")
    if desc.ndim != 2 or len(desc) != n or (n and desc.shape[1] == 0):
        raise ValueError(f"descriptors have shape {desc.shape} for {n} keypoints")
    if scores.shape != (n,):
        raise ValueError(f"scores have shape {scores.shape} for {n} keypoints")
    if size.shape != (2,) or (size <= 0).any():
        raise ValueError(f"size is {size.tolist()}, expected two positive numbers")
    for name, arr in (("keypoints", kp), ("descriptors", desc), ("scores", scores)):
        if arr.dtype.kind not in "fiu" or not np.isfinite(arr).all():
            raise ValueError(f"{name} are not finite numbers")


def feature_store(folder: Path | None, extractor_conf: dict) -> ArrayStore:
    """The feature entries of one extractor's settings under ``folder`` (``None``: nothing stored)."""
    return ArrayStore(folder, FIELDS, "feature", check, settings=extractor_conf)
