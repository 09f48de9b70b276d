"""How the cascade turns stage 1's verdicts into the ranking's pair scores.

``strength``: the verdict's own score, ``strength / (strength + score_scale)``. ``learned``: the
learned pair model's P(same whale) (:mod:`matcher.pairs.model`) from the verdict's evidence and the
two photos' metadata. Either way a score lies in [0, 1] and is used everywhere a pair is judged:
the ranking, the re-ranking's edge weights and the score bands.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..engine import Engine
from ..pairs.model import NoPairModel, PairModel, for_preset
from .head_vote import with_head_embeddings

log = logging.getLogger(__name__)
PAIR_SCORES = ("auto", "strength", "learned")

Scorer = Callable[[list[tuple[str, str]], list[dict]], np.ndarray]


def verdict_scores(pairs: list[tuple[str, str]], verdicts: list[dict]) -> np.ndarray:
    """The verdicts' own scores."""
    return np.array([float(v["score"]) for v in verdicts], np.float64)


class LearnedScorer:
    """P(same whale) from the pair model, with each photo's metadata looked up by content hash."""

    def __init__(self, model: PairModel, metadata: dict[str, dict] | None):
        self.model = model
        self.metadata = metadata or {}

    def __call__(self, pairs: list[tuple[str, str]], verdicts: list[dict]) -> np.ndarray:
        return self.model.scores(verdicts, [(self.metadata.get(a), self.metadata.get(b)) for a, b in pairs])


def check_pair_model(name: str, engine: Engine, model_path: Path | None = None) -> None:
    """Load the pair model the score ``name`` would use, before any work, so that a model file that is missing or
    refused stops the run at once (:func:`make_scorer` then reuses it)."""
    if name != "strength":
        try:
            for_preset(engine.name, engine.settings_key, model_path)
        except NoPairModel:
            if name == "learned":
                raise


def make_scorer(name: str, engine: Engine, metadata: dict[str, dict] | None = None,
                model_path: Path | None = None) -> Scorer:
    """The pair score ``name`` (:data:`PAIR_SCORES`; ``auto``: learned where the preset has a pair model, else
    strength); ``metadata``: per content hash, ``date`` and ``viewpoint`` of the photo (what the learned model
    reads besides the verdict). Only the absence of a default model falls back to the strength: a model file
    that was given (``model_path``) and is missing, or any model file that is refused, is an error."""
    if name == "strength":
        return verdict_scores
    if name not in PAIR_SCORES:
        raise ValueError(f"unknown pair score {name!r}; choose one of {', '.join(PAIR_SCORES)}")
    try:
        model = for_preset(engine.name, engine.settings_key, model_path)
    except NoPairModel as exc:
        if name == "learned":
            raise
        log.info("pair score: strength (%s)", exc)
        return verdict_scores
    log.info("pair score: %s (%d features%s%s)", model.source, len(model.features),
             ", metadata too" if model.uses_metadata else "", ", the global head's vote too" if model.uses_head else "")
    seen = model.trained_on(metadata or {})
    if seen:
        log.warning("pair score: %d of the %d images of this run were among the pair model's training photos: a "
                    "score measured on them is in-sample, not a result (the model's out-of-fold figures: its file, "
                    "benchmarks/RESULTS.md)", seen, len(metadata))
    if model.uses_head:
        metadata = with_head_embeddings(model, engine, metadata or {})
    return LearnedScorer(model, metadata)
