"""The cascade's pair-scoring stages and the registry of expensive (stage-2) matchers.

A stage maps canonical ``(sha, sha)`` pairs to verdict dicts (at least ``score`` in
[0, 1) and ``strength``, see :mod:`matcher.pairs.ransac`), keeps them in a verdict
store, and counts what it computed. Stage 1 is the engine's own preset; stage 2 is
one of :data:`STAGE2_FACTORIES` (LightGlue on the same features, LoFTR with weights
the user gives), built by :func:`build_stage2`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .. import cache, presets
from ..engine import Engine
from ..io import weights

log = logging.getLogger(__name__)


class PairStage:
    """A pair-scoring stage: canonical (sha, sha) pairs -> verdict dicts."""

    name = "stage"

    def __call__(self, pairs: set[tuple[str, str]]) -> dict[tuple[str, str], dict]:
        raise NotImplementedError

    @property
    def computed(self) -> int:
        """Verdicts computed (not read from a store) so far."""
        raise NotImplementedError

    def cached(self, pairs: list[tuple[str, str]]) -> set[tuple[str, str]]:
        """The pairs whose verdicts are already stored (nothing to compute)."""
        raise NotImplementedError

    def stored(self) -> int:
        """Verdicts the stage's store holds."""
        raise NotImplementedError


class EngineStage(PairStage):
    """A preset's matcher and verifier on the engine's features (its own preset by default)."""

    def __init__(self, engine: Engine, preset: str | None = None):
        self.engine = engine
        self.preset = preset
        self.name = preset or engine.name
        engine.verifier(preset)  # built now: a missing or unfit weight file stops here

    @property
    def computed(self) -> int:
        return self.engine.verified(self.preset)

    def __call__(self, pairs):
        return self.engine.verdicts(pairs, self.preset, progress=False)

    def cached(self, pairs):
        return self.engine.cached_pairs(pairs, self.preset)

    def stored(self) -> int:
        return self.engine.stored_verdicts(self.preset)


class LoFTRStage(PairStage):
    """LoFTR (:mod:`matcher.pairs.loftr`, weights supplied by the user) + the preset's verifier, verdicts stored.

    LoFTR needs the pixels (the engine keeps the last few decoded images); pairs are taken in
    order, grouped by their first image, so its backbone features are reused.
    """

    name = "loftr"

    def __init__(self, engine: Engine, conf: dict):
        from ..pairs.loftr import LoFTRMatcher

        self.matcher = LoFTRMatcher(device=engine.device)  # WeightsError when no weights are given
        self.engine = engine
        self.vconf = engine.conf["verifier"]
        made_by = {"software": cache.software(), "weights": weights.file_sha256(self.matcher.weights_path)}
        key = presets.settings_key("loftr", {"dense": self.matcher.conf, "verifier": self.vconf, **made_by})
        self.store = engine.verdict_store(key)
        self._computed = 0

    @property
    def computed(self) -> int:
        return self._computed

    def cached(self, pairs):
        if not pairs or self.store.count() == 0:
            return set()
        return set(self.store.get_many(list(pairs)))

    def stored(self) -> int:
        return self.store.count()

    def __call__(self, pairs):
        pairs = sorted(pairs)
        known = self.store.get_many(pairs)
        new = {}
        for a, b in pairs:
            if (a, b) not in known:
                v = self.matcher.verify(self.engine.image(a), self.engine.image(b), self.vconf, key0=a, key1=b)
                v.pop("inliers", None)
                new[(a, b)] = v
        if new:
            self.store.put_many(new)
            self._computed += len(new)
        return {**known, **new}


def _lightglue_stage(engine: Engine, conf: dict) -> PairStage:
    return EngineStage(engine, conf.get("preset") or f"{engine.conf['extractor']['name']}-lightglue")


def _loftr_stage(engine: Engine, conf: dict) -> PairStage:
    return LoFTRStage(engine, conf)


STAGE2_FACTORIES: dict[str, Callable] = {"lightglue": _lightglue_stage, "loftr": _loftr_stage}


def register_stage2(name: str, factory: Callable) -> None:
    """Hook for another expensive matcher.

    ``factory(engine, conf) -> PairStage``. Raise :class:`~matcher.errors.WhaleMatchError`
    or ``RuntimeError`` when it cannot run (weights missing): the run goes on without
    stage 2 and says so.
    """
    STAGE2_FACTORIES[name] = factory


def parse_stage2(text: str) -> str:
    """A stage-2 choice as written: ``auto``, ``none``, or a registered matcher, optionally ``:PRESET`` (a known
    pipeline preset); ValueError listing the choices otherwise."""
    value = str(text).strip().lower()
    kind, sep, preset = value.partition(":")
    if value in ("auto", "none") or (kind in STAGE2_FACTORIES and (not sep or preset in presets.PIPELINES)):
        return value
    why = f"unknown preset {preset!r} (presets: {', '.join(sorted(presets.PIPELINES))})" if kind in STAGE2_FACTORIES \
        else f"choose auto, none or {'|'.join(sorted(STAGE2_FACTORIES))}[:PRESET]"
    raise ValueError(why)


def build_stage2(engine: Engine, name: str | None) -> PairStage | None:
    """The stage-2 matcher ``name`` (``None``/``"none"``: no stage 2), or None with a warning if it cannot run."""
    if not name or name == "none":
        return None
    kind, _, preset = name.partition(":")
    if kind not in STAGE2_FACTORIES:
        raise KeyError(f"unknown stage-2 matcher {kind!r}; choose one of {', '.join(sorted(STAGE2_FACTORIES))}")
    try:
        return STAGE2_FACTORIES[kind](engine, {"preset": preset} if preset else {})
    except Exception as exc:  # noqa: BLE001 - any failure to build it only costs stage 2
        log.warning("stage 2 (%s) is not available, ranking with stages 0 and 1 only: %s", name, exc)
        return None
