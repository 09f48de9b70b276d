"""The global head's vote on a pair, for a pair model that reads it (feature ``head_similarity``).

The pair model names the head it was trained with (``info.head``: a file, looked up in the weights
folders unless given as a path, and its SHA-256); each photo's embedding by that head is computed from
its cached local features and kept in the global-descriptor cache under the head's checksum, like
stage 0's ``learned-disk`` descriptors. Used by the cascade's learned score and by the curation tool.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..engine import Engine
from ..errors import WeightsError
from ..io import weights
from ..pairs.model import PairModel
from .global_descriptors import GlobalStage

HEAD_DESCRIPTOR = "learned-disk"  # the global descriptor preset whose network the head is


def head_file(model: PairModel) -> Path:
    """The global head the pair model was trained with (``info.head``: a file name looked up in the weights
    folders, or a path), checked against its recorded SHA-256."""
    head = model.info["head"]
    given = Path(head["file"])
    path = weights.locate(given.name, [("by the pair model", given)] if given.parent != Path(".") else [])
    if path is None:
        raise WeightsError(f"{model.source}: reads the global head {given.name}, which is not in "
                           f"{', '.join(str(d) for d in weights.project_dirs())} (make train-global builds it)")
    if weights.file_sha256(path) != head["sha256"]:
        raise WeightsError(f"{path}: not the global head the pair model {model.source} was trained with (SHA-256 "
                           f"differs); retrain the pair model (make train-verifier) or restore that head")
    return path


class HeadVote:
    """The pair model's head, loaded once (and checked against the model's record), and its embeddings."""

    def __init__(self, model: PairModel, engine: Engine):
        self.stage = GlobalStage(HEAD_DESCRIPTOR, engine, head_file(model))

    def embeddings(self, keys) -> dict[str, np.ndarray]:
        """The embedding of each prepared image (``keys``: content hashes or mirror keys)."""
        keys = set(keys)
        self.stage.describe(sorted(keys))
        return {k: self.stage.loaded[k]["emb"] for k in keys}


def with_head_embeddings(model: PairModel, engine: Engine, metadata: dict[str, dict | None]) -> dict[str, dict]:
    """``metadata`` (per content hash) with each photo's embedding by the pair model's global head (computed from
    the photo's cached features, kept in the global-descriptor cache)."""
    emb = HeadVote(model, engine).embeddings(metadata)
    return {sha: {**(meta or {}), "embedding": emb[sha]} for sha, meta in metadata.items()}
