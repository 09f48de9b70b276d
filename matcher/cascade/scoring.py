"""How the cascade turns stage 1's verdicts into the ranking's scores (``--pair-score``).

``strength``: each verdict's own score, ``strength / (strength + score_scale)``. ``learned``: the pair
model's P(same whale) (:mod:`matcher.pairs.model`) from the verdict's evidence and the two photos'
metadata. ``ranker``: the learned ranking of each query's verified candidates (:mod:`.ranker`), which
reads each candidate against the query's other candidates; the pairs of the re-ranking's database graph
keep their strength score. ``auto`` (the default): the ranker for the scenario kinds where it beat the
strength out of fold on the large development benchmark (the ranker file says which), the strength
elsewhere and for presets without a ranker. Every score lies in [0, 1].

Only the absence of a default model falls back to the strength: a model file that was given and is
missing, or any model file that is refused, is an error (:func:`check_models` says so before any work).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..engine import Engine
from ..pairs.model import PairModel
from ..pairs.model import for_preset as pair_model_for
from . import ranker as ranking_model
from .head_vote import with_head_embeddings

log = logging.getLogger(__name__)
PAIR_SCORES = ("auto", "strength", "learned", "ranker")

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


def load_models(name: str, engine: Engine, model_path: Path | None = None, ranker_path: Path | None = None
                ) -> tuple[PairModel | None, ranking_model.Ranker | None]:
    """The pair model and the ranker the score ``name`` uses (None where it uses none). A file given by path is
    loaded whatever the score, so that a wrong path is said at once."""
    if name not in PAIR_SCORES:
        raise ValueError(f"unknown pair score {name!r}; choose one of {', '.join(PAIR_SCORES)}")
    model = ranker = None
    if name == "learned" or model_path is not None:
        model = pair_model_for(engine.name, engine.settings_key, model_path)
    if name in ("ranker", "auto") or ranker_path is not None:
        try:
            ranker = ranking_model.for_preset(engine.name, engine.settings_key, ranker_path)
        except ranking_model.NoRanker as exc:
            if name == "ranker":
                raise
            log.info("pair score: strength (%s)", exc)
    return (model if name == "learned" else None), (ranker if name in ("ranker", "auto") else None)


def check_models(name: str, engine: Engine, model_path: Path | None = None, ranker_path: Path | None = None) -> None:
    """Load the models the score would use before any work: a missing or refused file stops the run at once
    (:func:`make_scoring` reuses what was read)."""
    load_models(name, engine, model_path, ranker_path)


def make_scoring(name: str, engine: Engine, metadata: dict[str, dict] | None = None, model_path: Path | None = None,
                 ranker_path: Path | None = None) -> tuple[Scorer, ranking_model.QueryRanking | None]:
    """Stage 1's pair scorer and, where the score uses the ranker, the :class:`~.ranker.QueryRanking` applied
    after stage 1 (see the module docstring); ``metadata``: per content hash, ``date`` and ``viewpoint``."""
    metadata = metadata or {}
    model, ranker = load_models(name, engine, model_path, ranker_path)
    if ranker is not None:
        kinds = None if name == "ranker" else ranker.kinds
        log.info("pair score: %s, the ranker %s for %s; the strength elsewhere", name, ranker.source,
                 "every scenario kind" if kinds is None else "the kinds where it won out of fold: "
                 + (", ".join(kinds) or "none"))
        _warn_in_sample(ranker.info, metadata, "ranker")
        return verdict_scores, ranking_model.QueryRanking(ranker, metadata, kinds)
    if model is None:
        return verdict_scores, None
    log.info("pair score: %s (%d features%s%s)", model.source, len(model.features),
             ", metadata too" if model.uses_metadata else "", ", the global head's vote too" if model.uses_head else "")
    _warn_in_sample(model.info, metadata, "pair model")
    if model.uses_head:
        metadata = with_head_embeddings(model, engine, metadata)
    return LearnedScorer(model, metadata), None


def _warn_in_sample(info: dict, metadata: dict, what: str) -> None:
    """A warning when the model saw some of the run's photos in training: a figure measured on them is in-sample."""
    seen_set = set(info.get("trained_on", {}).get("photos_sha256_16", []))
    seen = sum(1 for sha in metadata if sha[:16] in seen_set)
    if seen:
        log.warning("pair score: %d of the %d images of this run were among the %s's training photos: a score "
                    "measured on them is in-sample, not a result (the model's out-of-fold figures: its file, "
                    "benchmarks/RESULTS.md)", seen, len(metadata), what)
