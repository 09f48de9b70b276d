"""Labelled pairs of a catalogue for the learned pair model: which pairs, their verdicts and their features.

Every same-whale pair (positives), and negatives that a ranking has to beat: for each photo, the
different-whale photos most like it by the stage-0 global descriptor (the candidates that reach
verification first), photos of other whales taken the same day (what the metadata alone confuses),
and a random share. Each pair is verified by the engine (verdicts cached like any other) and turned
into the pair model's feature row (:func:`matcher.pairs.model.feature_row`) with the photos' metadata.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict

import numpy as np
import pandas as pd

from matcher import presets
from matcher.cascade.global_descriptors import GlobalStage
from matcher.engine import Engine, canonical
from matcher.io.catalogue import Photo
from matcher.pairs.model import feature_names, feature_row

log = logging.getLogger("pair_dataset")


def sample_pairs(photos: list[Photo], shas: dict[str, str], engine: Engine, seed: int = 0, similar: int = 15,
                 same_date: int = 0, random_share: int = 5) -> pd.DataFrame:
    """Pairs of usable photos (``image_a < image_b``) with ``label`` (same whale) and ``kind`` (why sampled):
    per photo, ``similar`` different-whale photos most like it by stage 0, ``same_date`` of other whales taken
    the same day (0: none; they over-represent date confounders against what a ranking meets) and
    ``random_share`` random ones."""
    rng = np.random.default_rng(seed)
    usable = sorted((p for p in photos if p.id in shas), key=lambda p: p.id)
    index = {p.id: i for i, p in enumerate(usable)}
    whale = np.array([p.whale_id for p in usable])
    kinds: dict[tuple[str, str], str] = {}

    def add(a: Photo, b: Photo, kind: str) -> None:
        key = (a.id, b.id) if a.id < b.id else (b.id, a.id)
        if a.id != b.id and key not in kinds:
            kinds[key] = kind

    by_whale = defaultdict(list)
    for p in usable:
        by_whale[p.whale_id].append(p)
    for ps in by_whale.values():
        for i, a in enumerate(ps):
            for b in ps[i + 1:]:
                add(a, b, "same whale")
    stage0 = GlobalStage(presets.default_global(engine.conf), engine)
    order = [shas[p.id] for p in usable]
    stage0.describe(set(order))
    for start in range(0, len(usable), 256):
        block = stage0.score_block(order[start:start + 256], order)
        for row, i in enumerate(range(start, min(start + 256, len(usable)))):
            sim = block[row].copy()
            sim[whale == whale[i]] = -np.inf
            for j in np.argsort(-sim, kind="stable")[:similar]:
                add(usable[i], usable[int(j)], "similar by stage 0")
    by_date = defaultdict(list)
    for p in usable:
        by_date[p.date].append(p)
    for p in usable:
        others = [q for q in by_date[p.date] if q.whale_id != p.whale_id] if p.date else []
        for k in rng.permutation(len(others))[:same_date]:
            add(p, others[int(k)], "same date")
        drawn = rng.choice(len(usable), size=min(len(usable), 3 * random_share), replace=False)
        for j in [int(j) for j in drawn if whale[int(j)] != p.whale_id][:random_share]:
            add(p, usable[j], "random")
    rows = [(a, b, whale[index[a]] == whale[index[b]], whale[index[a]], whale[index[b]], kind)
            for (a, b), kind in sorted(kinds.items())]
    return pd.DataFrame(rows, columns=["image_a", "image_b", "label", "whale_a", "whale_b", "kind"])


def feature_table(pairs: pd.DataFrame, photos: dict[str, Photo], shas: dict[str, str], engine: Engine
                  ) -> pd.DataFrame:
    """The pairs with their verdicts' strength and every feature of the pair model (metadata included)."""
    if pairs.empty:
        return pairs.assign(**{n: [] for n in feature_names(True)})
    keys = [canonical(shas[a], shas[b]) for a, b in zip(pairs["image_a"], pairs["image_b"])]
    verdicts = engine.verdicts(set(keys))
    names = feature_names(True)
    meta = {i: {"date": p.date, "viewpoint": p.viewpoint} for i, p in photos.items()}
    rows = [feature_row(verdicts[k], meta[a], meta[b], names)
            for k, a, b in zip(keys, pairs["image_a"], pairs["image_b"])]
    return pd.concat([pairs.reset_index(drop=True), pd.DataFrame(rows, columns=names)], axis=1)


def digest(table: pd.DataFrame) -> str:
    """SHA-256 (12 hex) of the pairs and labels a model was trained on."""
    text = "\n".join(f"{a},{b},{int(y)}" for a, b, y in zip(table["image_a"], table["image_b"], table["label"]))
    return hashlib.sha256(text.encode()).hexdigest()[:12]
