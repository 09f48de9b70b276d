"""Catalogue searches of the development photos, played out of sample: what ``train_new_whale`` and
``bench-search`` measure.

For every sighting of :mod:`training.sighting_split` and each of its photos, every comparable catalogue
photo (the sighting's encounter left out) is put in stage-0 order by the global head of the whale's fold,
a head trained without any photo of the fold's whales (:mod:`training.oof_heads`), through the product's
own shortlist (:mod:`matcher.curation.catalogue_search`). The first ``verify_top`` candidates are verified
(for returning sightings, with ``exhaustive``, all of them: the baseline a shortlist is measured against),
verdicts reused from the cache. The result is one table of every verified pair with its stage-0 rank, so
a search with a shortlist of any K up to ``verify_top`` is the table's rows of rank below K.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from matcher.curation import whale_evidence
from matcher.curation.catalogue_search import PER_WHALE, StageZero, search_tasks
from matcher.curation.curator import Curator
from matcher.curation.shortlist import capped
from matcher.engine import Engine
from matcher.features.global_head import GlobalHead
from matcher.features.stage import mirror_key
from matcher.io.catalogue import LATERAL, Photo, read_photos
from training import oof_heads
from training.head_training import TRAIN
from training.sighting_split import Sighting, sightings

log = logging.getLogger("search_eval")
PAIR_COLUMNS = ["sighting", "photo", "candidate", "whale", "strength", "n_inliers", "stage0_rank", "stage0_sim",
                "capped_rank"]


@dataclass
class Setup:
    photos: dict[str, Photo]
    sightings: list[Sighting]
    cur: Curator
    stage0: dict[int, StageZero]  # per fold: every usable photo with the fold head's embedding
    heads: dict[int, Path]  # per fold: the head's weights file (to embed the mirrors of flank photos)

    @property
    def engine(self) -> Engine:
        return self.cur.engine


def setup(catalogue: Path, cache_dir: Path, max_photos: int = 3, folds: int = 5, seed: int = 0,
          workers: int | None = None, train: dict | None = None) -> Setup:
    """The photos, the sightings, an engine on the cache (strength scores: no learned pair model) and the fold
    heads (trained here once if the cache lacks them, with ``train``, default ``TRAIN``: a few minutes each)."""
    photos = read_photos(Path(catalogue) / "metadata.csv")
    engine = Engine("disk-mnn", cache_dir, "cpu", workers=workers)
    cur = Curator(engine)
    head_photos = oof_heads.load_photos(Path(catalogue), cache_dir)
    excluded = oof_heads.exclusions(head_photos, None, folds, seed)
    stage0, heads = {}, {}
    usable = sorted(head_photos.inputs)
    for f in range(folds):
        pt, emb = oof_heads.trained_head(head_photos, excluded[f"fold{f}"], cache_dir, seed, dict(train or TRAIN))
        heads[f] = pt
        stage0[f] = StageZero([photos[i] for i in usable], np.stack([emb[i] for i in usable]))
    return Setup(photos, sightings(photos, max_photos, folds, seed), cur, stage0, heads)


def mirror_embeddings(s: Setup) -> dict[tuple[int, str], np.ndarray]:
    """Per (fold, flank sighting photo): the fold head's embedding of the photo's mirror."""
    flanks = [(x.fold, q) for x in s.sightings for q in x.photos if s.photos[q].viewpoint in LATERAL]
    if not flanks:
        return {}
    s.cur.prepare([s.photos[q] for _, q in flanks])
    s.cur.prepare_mirrored([s.photos[q] for _, q in flanks])
    out, loaded = {}, {}
    for f, q in flanks:
        if f not in loaded:
            loaded[f] = GlobalHead.load(s.heads[f])
        out[(f, q)] = loaded[f].embed(s.engine.feature(mirror_key(s.cur.shas[q])))
    return out


def stage0_orders(s: Setup) -> dict[tuple[str, str], list[tuple[Photo, float]]]:
    """Per (sighting, photo): every comparable catalogue photo, best first by the fold head (its whale unseen)."""
    mirrors = mirror_embeddings(s)
    out = {}
    for x in s.sightings:
        z = s.stage0[x.fold]
        for q in x.photos:
            photo = s.photos[q]
            if q not in z.row_of:
                continue
            emb = z.embeddings[z.row_of[q]]
            out[(x.id, q)] = z.shortlist(photo, emb, mirrors.get((x.fold, q)), len(z.photos), exclude=x.excluded,
                                         per_whale=None)
    return out


def capped_ranks(ranked: list[tuple[Photo, float]], per_whale: int | None) -> np.ndarray:
    """Each candidate's place in the shortlist order that keeps at most ``per_whale`` photos of a whale (the
    product's, :func:`matcher.curation.shortlist.capped`), -1 for those the cap leaves out."""
    out = np.full(len(ranked), -1, np.int64)
    if not per_whale:
        out[:] = np.arange(len(ranked))
        return out
    kept = capped(np.arange(len(ranked)), np.array([p.whale_id for p, _ in ranked], dtype=object), per_whale)
    out[kept] = np.arange(len(kept))
    return out


def verified_pairs(s: Setup, verify_top: int, exhaustive: bool = False, chunk: int = 20000,
                   orders: dict | None = None, per_whale: int | None = PER_WHALE) -> pd.DataFrame:
    """Every pair of a sighting photo with its first ``verify_top`` stage-0 candidates, with at most ``per_whale``
    of a whale (all of them for the returning sightings with ``exhaustive``), verified, as rows of
    :data:`PAIR_COLUMNS` (``orders``: those of :func:`stage0_orders`, computed here when not given)."""
    orders = stage0_orders(s) if orders is None else orders
    by_id = {x.id: x for x in s.sightings}
    todo, meta = [], []
    for (sid, q), ranked in orders.items():
        capped_rank = capped_ranks(ranked, per_whale)
        every = exhaustive and not by_id[sid].new
        chosen = [i for i in range(len(ranked)) if every or 0 <= capped_rank[i] < verify_top]
        tasks = search_tasks(s.photos[q], [ranked[i][0] for i in chosen])
        todo += tasks
        meta += [(sid, q, t.b.id, i, ranked[i][1], capped_rank[i]) for t, i in zip(tasks, chosen)]
    log.info("%d sighting photos, %d pairs (verify_top %d%s)", len(orders), len(todo), verify_top,
             ", returning sightings exhaustive" if exhaustive else "")
    rows = []
    for start in tqdm(range(0, len(todo), chunk), desc="verifying sighting pairs", unit="chunk"):
        rows += s.cur.verify(todo[start:start + chunk])
    whale = {i: p.whale_id for i, p in s.photos.items()}
    table = pd.DataFrame([(sid, q, c, whale[c], r["strength"], r["n_inliers"], rank, sim, cr)
                          for (sid, q, c, rank, sim, cr), r in zip(meta, rows) if not r.get("error")],
                         columns=PAIR_COLUMNS)
    return table


def shortlisted(pairs: pd.DataFrame, k: int | None, per_whale_cap: bool = True) -> pd.DataFrame:
    """The pairs a shortlist of ``k`` verifies (all with ``None``): by the capped order, or the plain one."""
    if k is None:
        return pairs
    rank = pairs["capped_rank"] if per_whale_cap else pairs["stage0_rank"]
    return pairs[(rank >= 0) & (rank < k)]


def rankings(pairs: pd.DataFrame, k: int | None, decay: float = whale_evidence.DECAY,
             photo_decay: float | None = None, per_whale_cap: bool = True) -> dict[str, pd.DataFrame]:
    """Per sighting: its whale ranking from the pairs a shortlist of ``k`` verifies (:func:`shortlisted`);
    ``photo_decay`` (default ``decay``) combines a sighting's photos."""
    part = shortlisted(pairs, k, per_whale_cap)
    out = {}
    for sid, g in part.groupby("sighting", sort=True):
        out[sid] = whale_evidence.whale_ranking(g[list(whale_evidence.PAIR_COLUMNS)], decay,
                                                decay if photo_decay is None else photo_decay)
    return out


def top_hits(s: Setup, ranked: dict[str, pd.DataFrame], ks=(1, 5)) -> dict[int, float]:
    """Share of returning sightings whose whale is among the first k whales, per k."""
    returning = [x for x in s.sightings if not x.new]
    out = {}
    for k in ks:
        hits = [x.whale in set(ranked[x.id]["whale"].head(k)) if x.id in ranked else False for x in returning]
        out[k] = float(np.mean(hits)) if hits else float("nan")
    return out
