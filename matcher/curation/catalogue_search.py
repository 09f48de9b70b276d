"""A catalogue as a search sees it through its index: the photos, their stage-0 embeddings, the shortlist.

:func:`from_index` lines up the catalogue's photos (the metadata as it is now: whale ids, views) with the
index's embeddings. A photo the index lacks, or whose file changed since it was indexed, is described now
(its features extracted or read from the cache, its embedding computed; nothing is written to the index)
and the caller is told how many, so that it can say ``whalematch index`` would save that time.
:meth:`StageZero.shortlist` then gives a new photo's K most similar comparable catalogue photos
(:mod:`.shortlist`), which a search verifies instead of every catalogue photo.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from .. import presets
from ..errors import WhaleMatchError
from ..features.stage import mirror_key
from ..io.catalogue import LATERAL, Photo, comparable
from . import indexing
from .catalogue_index import CatalogueIndex
from .curator import Curator, PairTask, mirror_side
from .shortlist import comparable_rows, shortlist, view_groups

log = logging.getLogger(__name__)


def search_tasks(query: Photo, catalogue: list[Photo], mirror: bool = False, all_views: bool = False) -> list[PairTask]:
    """The query against every catalogue image (but itself) of a comparable view (any view with ``all_views``);
    the query is the photo mirrored for an opposite flank or with ``mirror``."""
    tasks = []
    for c in catalogue:
        if c.id == query.id and c.path == query.path:
            continue
        if not all_views and not comparable(query, c):
            continue
        tasks.append(PairTask(query, c, mirror_side(query, c, mirror, prefer="a")))
    return tasks


PER_WHALE = 3  # photos of one whale a shortlist keeps at most (benchmarks/RESULTS.md, catalogue search)


@dataclass
class StageZero:
    """Catalogue photos (rows) with their int8 embeddings."""

    photos: list[Photo]
    embeddings: np.ndarray  # (n, dim) int8
    described_now: list[str] = field(default_factory=list)  # photos the index lacked (or had stale)
    unusable: dict[str, str] = field(default_factory=dict)  # image id -> why it takes no part

    def __post_init__(self):
        self.views = np.array([p.viewpoint for p in self.photos], dtype=object)
        self.groups = view_groups(self.views)
        self.whales = np.array([p.whale_id for p in self.photos], dtype=object)
        self.row_of = {p.id: i for i, p in enumerate(self.photos)}

    def comparable(self, query: Photo, all_views: bool = False, exclude=frozenset()) -> np.ndarray:
        """Rows of the catalogue photos a new photo is compared with (not itself, nor ``exclude``)."""
        rows = comparable_rows(self.groups, query.viewpoint, all_views)
        drop = {self.row_of[i] for i in exclude if i in self.row_of}
        own = self.row_of.get(query.id)
        if own is not None and self.photos[own].path == query.path:
            drop.add(own)
        return rows[~np.isin(rows, list(drop))] if drop else rows

    def shortlist(self, query: Photo, embedding: np.ndarray, mirror: np.ndarray | None, k: int,
                  all_views: bool = False, exclude=frozenset(), per_whale: int | None = PER_WHALE
                  ) -> list[tuple[Photo, float]]:
        """The ``k`` comparable catalogue photos most like the new photo, best first, with their similarity, at most
        ``per_whale`` of one whale (``None``: no limit)."""
        rows = self.comparable(query, all_views, exclude)
        if len(rows) == 0:
            return []
        best, sims = shortlist(embedding, mirror, query.viewpoint, self.embeddings, self.views, k, rows,
                               self.whales, per_whale)
        return [(self.photos[r], float(s)) for r, s in zip(best, sims)]

    def memory_bytes(self) -> int:
        """The embeddings' bytes and a rough count for each row's fields."""
        return int(self.embeddings.nbytes + sum(120 + len(p.id) + len(str(p.path)) + len(p.whale_id)
                                                for p in self.photos))


def embed(cur: Curator, stage0, photos: list[Photo], mirrored: bool = False) -> dict[str, np.ndarray]:
    """The stage-0 embeddings of photos (features from the cache or extracted; of their mirrors with
    ``mirrored``), by image id; unusable photos are left out (and named in ``cur.bad``)."""
    cur.prepare(photos)
    if mirrored:
        cur.prepare_mirrored([p for p in photos if p.id in cur.shas])
    keys = {p.id: (mirror_key(cur.shas[p.id]) if mirrored else cur.shas[p.id]) for p in photos if p.id in cur.shas}
    stage0.describe(set(keys.values()))
    return {i: stage0.loaded[k]["emb"] for i, k in keys.items()}


def query_embeddings(cur: Curator, stage0, query: Photo) -> tuple[np.ndarray | None, np.ndarray | None]:
    """A new photo's embedding and, for a flank, its mirror's (``None`` when the photo is unusable)."""
    own = embed(cur, stage0, [query]).get(query.id)
    if own is None or query.viewpoint not in LATERAL:
        return own, None
    return own, embed(cur, stage0, [query], mirrored=True).get(query.id)


def from_index(cur: Curator, stage0, catalogue: list[Photo], index: CatalogueIndex) -> StageZero:
    """The catalogue's photos lined up with the index's embeddings; photos the index lacks (or has for another
    file) described now; unusable ones left out."""
    snap = index.snapshot()
    entries, row = {e.image_id: e for e in snap.entries}, snap.rows()
    embeddings, order, stale = {}, [], []
    unusable = {}
    for p in catalogue:
        e = entries.get(p.id)
        if e is not None and indexing.same_file(e, p, indexing.file_stat(p.path)):
            if e.usable:
                embeddings[p.id] = snap.embeddings[row[p.id]]
                cur.shas.setdefault(p.id, e.sha)
            else:
                unusable[p.id] = e.error
                continue
        else:
            stale.append(p)
        order.append(p)
    if stale:
        log.info("%d catalogue photos are not in the index as they are now: described now", len(stale))
        embeddings.update(embed(cur, stage0, stale))
        cur.release(cur.shas[p.id] for p in stale if p.id in cur.shas)
        unusable.update({p.id: cur.bad[p.id] for p in stale if p.id in cur.bad})
    photos = [p for p in order if p.id in embeddings]
    dim = len(next(iter(embeddings.values()))) if embeddings else 0
    matrix = np.stack([embeddings[p.id] for p in photos]) if photos else np.zeros((0, dim), np.int8)
    return StageZero(photos, matrix, [p.id for p in stale], unusable)


@dataclass
class Candidates:
    """Which catalogue photos a search verifies for each new photo: every comparable one (``zero=None``: no
    index, or ``--exhaustive``), or the ``k`` that stage 0 finds most alike in the index."""

    catalogue: list[Photo]
    cur: Curator
    zero: StageZero | None = None
    stage0: object = None  # the index's GlobalStage (embeds new photos)
    k: int = 0
    source: str = ""  # in words: what decides the candidates
    per_whale: int | None = PER_WHALE

    def tasks(self, query: Photo, mirror: bool = False, all_views: bool = False) -> list[PairTask]:
        """The pairs to verify for a new photo (none when the photo is unusable: ``cur.bad`` says why)."""
        if self.zero is None:
            return search_tasks(query, self.catalogue, mirror, all_views)
        own, flipped = query_embeddings(self.cur, self.stage0, query)
        if own is None:
            return []
        short = self.zero.shortlist(query, own, flipped, self.k, all_views, per_whale=self.per_whale)
        return search_tasks(query, [p for p, _ in short], mirror, all_views)

    def comparable_photos(self, query: Photo, all_views: bool = False) -> list[Photo]:
        """The catalogue photos a new photo is comparable with (what an exhaustive search verifies)."""
        return [t.b for t in search_tasks(query, self.catalogue, False, all_views)]


def candidates(cur: Curator, catalogue: list[Photo], source, k: int, exhaustive: bool = False,
               per_whale: int | None = PER_WHALE) -> Candidates:
    """How a search picks its candidates: the catalogue's index when there is one (described photo by photo
    where it is stale) and ``exhaustive`` is not asked, else every comparable photo."""
    if exhaustive:
        return Candidates(catalogue, cur, source="every comparable catalogue photo (--exhaustive)")
    try:
        stage0 = indexing.stage0_for(cur.engine)
    except WhaleMatchError as exc:
        return Candidates(catalogue, cur, source=f"every comparable catalogue photo (no index: {exc})")
    index = indexing.open_index(cur.engine.cache.root, source, cur.engine, stage0, create=False)
    if index is None or index.mismatch:
        why = f"the one there does not fit: {index.mismatch}" if index is not None else "none yet"
        return Candidates(catalogue, cur, source=f"every comparable catalogue photo (no index: {why}; "
                                                 f"`whalematch index {source}` makes searches verify a shortlist)")
    zero = from_index(cur, stage0, catalogue, index)
    index.close()
    stale = (f"; {len(zero.described_now)} photos not in the index as they are now were described for this search "
             f"(`whalematch index {source}` keeps them)") if zero.described_now else ""
    cap = f", at most {per_whale} of a whale" if per_whale else ""
    return Candidates(catalogue, cur, zero, stage0, k,
                      f"the {k} photos most alike by stage 0 ({presets.CATALOGUE_STAGE0}{cap}) of the index "
                      f"{index.path} ({len(zero.photos)} photos){stale}", per_whale)


PAIRS_PER_S_PER_WORKER = 165  # verified pairs/s of one CPU worker, disk-mnn (benchmarks/RESULTS.md: 330 on 2 cores)


def work_line(cur: Curator, tasks: list[PairTask]) -> str:
    """Pairs to verify, those already in the verdict cache, and about how long the rest takes."""
    pairs = cur.pair_keys(tasks)
    cached = cur.engine.cached_pairs(pairs)
    todo = len(pairs) - len(cached)
    rate = PAIRS_PER_S_PER_WORKER * cur.engine.workers if cur.engine.device == "cpu" else None
    eta = f", about {todo / rate:.1f} s to verify the rest" if rate and todo else ""
    return f"{len(pairs)} pairs ({len(cached)} in the verdict cache{eta})"


def plan_line(cur: Curator, query: Photo, tasks: list[PairTask], comparable: int) -> str:
    """What a search of one new photo is about to verify, of its comparable catalogue photos."""
    return f"plan for {query.id}: {work_line(cur, tasks)} of {comparable} comparable catalogue photos"


def batch_plan_line(cur: Curator, tasks: list[PairTask], queries: int) -> str:
    """What a search of several new photos is about to verify."""
    return f"plan: {queries} new photos, {work_line(cur, tasks)}"
