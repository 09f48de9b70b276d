"""Bringing a catalogue's index up to date: what changed since the last update, and the work it needs.

The index of a catalogue is found by :func:`open_index` (the cache folder, the catalogue's file, the settings:
the engine's features and :func:`stage0_for`).

:func:`plan_update` compares the catalogue (its metadata CSV or folder) with the index's rows by file (path,
size, modification time: nothing is read) and sorts every photo into: new, changed (the file differs: it is
hashed again and redone if its content changed), relabelled (only its metadata changed: no work), unchanged,
resumed (made by an update that was killed before it published) and removed. :func:`update` does the work
in chunks: content hashes, features (extracted where the cache lacks them, on the Ray cluster with
``--backend ray``), the mirrored features of flank photos, the stage-0 embeddings; each chunk's rows are
committed as pending rows (:mod:`.catalogue_index`) and every change is published at the end in one go.
Features are released from memory after each chunk, so a catalogue of any size is indexed in bounded memory.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .. import presets
from ..cascade.global_descriptors import GlobalStage
from ..engine import Engine
from ..errors import ImageError, WhaleMatchError
from ..io.catalogue import LATERAL, Photo, metadata_file
from .catalogue_index import CatalogueIndex, Entry, index_path
from .curator import Curator

log = logging.getLogger(__name__)
CHUNK = 128  # photos per committed chunk: what a kill can cost


def catalogue_file(source: Path) -> Path:
    """What names a catalogue: its metadata CSV (given, or the folder's ``metadata.csv``), else its folder."""
    source = Path(source)
    if source.is_file() or (source / "metadata.csv").is_file():
        return metadata_file(source)
    return source


def stage0_for(engine: Engine) -> GlobalStage:
    """The stage 0 an index keeps (:data:`matcher.presets.CATALOGUE_STAGE0`); :class:`WhaleMatchError` for a preset
    whose features it cannot read."""
    name = presets.CATALOGUE_STAGE0
    model = engine.conf["extractor"]["model"]
    if model != "disk":
        raise WhaleMatchError(f"the catalogue index's stage 0 ({name}) reads DISK features; preset {engine.name} "
                              f"extracts {model} features (choose a DISK preset, e.g. {presets.DEFAULT_PIPELINE}, or "
                              "search with --exhaustive)")
    return GlobalStage(name, engine)


def settings(engine: Engine, stage0: GlobalStage) -> dict:
    """What an index's rows depend on: the features (extractor, runtime, software and weights, by their key) and
    stage 0 (its settings and the head's checksum, by its key)."""
    return {"features": engine.feature_key, "stage0": stage0.key}


def open_index(cache_root: Path | None, source: Path, engine: Engine, stage0: GlobalStage, create: bool = True
               ) -> CatalogueIndex | None:
    """The index of the catalogue at ``source`` in the cache (``None`` without a cache folder, or with
    ``create=False`` when there is none yet)."""
    if cache_root is None:
        return None
    index = CatalogueIndex(index_path(cache_root, catalogue_file(source)), settings(engine, stage0), create)
    return index if index.exists else None


@dataclass
class UpdatePlan:
    todo: list[Photo] = field(default_factory=list)  # new or changed files: to hash, extract and embed
    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    relabelled: list[Entry] = field(default_factory=list)
    unchanged: int = 0
    resumed: int = 0
    removed: list[str] = field(default_factory=list)
    stats: dict[str, tuple[int, int]] = field(default_factory=dict)  # image id -> (size, mtime_ns); absent: missing

    def counts(self) -> str:
        return (f"{len(self.new)} new, {len(self.changed)} changed, {len(self.removed)} removed, "
                f"{len(self.relabelled)} relabelled, {self.unchanged} unchanged"
                + (f", {self.resumed} taken from an update that was stopped" if self.resumed else ""))

    def listed(self, most: int = 8) -> list[str]:
        """The photos new, changed and removed (the first ``most`` of each)."""
        out = []
        for what, ids in (("new", self.new), ("changed", self.changed), ("removed", self.removed)):
            if ids:
                more = f" and {len(ids) - most} more" if len(ids) > most else ""
                out.append(f"  {what}: {', '.join(ids[:most])}{more}")
        return out


@dataclass
class UpdateResult:
    plan: UpdatePlan
    redone_same_content: int = 0  # changed files whose content turned out the same (touched)
    unusable: dict[str, str] = field(default_factory=dict)  # image id -> why (missing, unreadable, no features)
    extracted: int = 0  # images whose features were extracted (not read from the cache)

    def lines(self) -> list[str]:
        """What the update did, in words: the counts, the photos new, changed and removed, the unusable ones."""
        return [self.plan.counts() + self.same_content(), *self.plan.listed(), *self.unusable_lines()]

    def same_content(self) -> str:
        return (f" ({self.redone_same_content} changed files had the same content: kept)"
                if self.redone_same_content else "")

    def unusable_lines(self, most: int = 20) -> list[str]:
        out = [f"  unusable (kept out of searches): {i}: {why}" for i, why in sorted(self.unusable.items())[:most]]
        return out + ([f"  ... and {len(self.unusable) - most} more unusable photos"] if len(self.unusable) > most
                      else [])


def file_stat(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return int(st.st_size), int(st.st_mtime_ns)


def same_metadata(e: Entry, p: Photo) -> bool:
    return (e.viewpoint, e.whale_id, e.date, e.encounter_id) == (p.viewpoint, p.whale_id, p.date, p.encounter_id)


def same_file(e: Entry, p: Photo, stat: tuple[int, int] | None) -> bool:
    """Whether the row was made from the file as it is now (path, size and modification time)."""
    return stat is not None and (e.path, e.size, e.mtime_ns) == (str(p.path), *stat)


def relabel(e: Entry, p: Photo) -> Entry:
    return Entry(e.image_id, e.path, e.size, e.mtime_ns, e.sha, p.viewpoint, p.whale_id, p.date, p.encounter_id,
                 e.embedding, e.error)


def plan_update(index: CatalogueIndex, photos: list[Photo]) -> UpdatePlan:
    """What an update has to do (reads the files' sizes and times, not their contents)."""
    published, pending = index.published(), index.pending()
    plan = UpdatePlan()
    for p in photos:
        stat = file_stat(p.path)
        if stat is not None:
            plan.stats[p.id] = stat
        e, waiting = published.get(p.id), pending.get(p.id)
        if waiting is not None and same_file(waiting, p, stat) and waiting.error == "" and same_metadata(waiting, p):
            plan.resumed += 1
        elif e is not None and same_file(e, p, stat):
            if same_metadata(e, p):
                plan.unchanged += 1
            else:
                plan.relabelled.append(relabel(e, p))
        else:
            (plan.changed if e is not None else plan.new).append(p.id)
            plan.todo.append(p)
    ids = {p.id for p in photos}
    plan.removed = sorted(i for i in published if i not in ids)
    return plan


def _entry(p: Photo, stat: tuple[int, int] | None, sha: str, embedding: bytes | None, error: str) -> Entry:
    size, mtime = stat or (0, 0)
    return Entry(p.id, str(p.path), size, mtime, sha, p.viewpoint, p.whale_id, p.date, p.encounter_id,
                 embedding, error)


def update(index: CatalogueIndex, photos: list[Photo], cur: Curator, stage0, chunk: int = CHUNK,
           progress: bool = True, plan: UpdatePlan | None = None) -> UpdateResult:
    """Bring ``index`` up to date with ``photos`` (see the module's docstring); ``stage0``: a
    :class:`~matcher.cascade.global_descriptors.GlobalStage` with a learned head (the embeddings); ``plan``:
    :func:`plan_update`'s of the same index and photos, when the caller has made it already."""
    plan = plan_update(index, photos) if plan is None else plan
    index.drop_pending(p.id for p in plan.todo)  # rows of a stopped update that this one redoes
    result = UpdateResult(plan)
    published = index.published()
    bar = tqdm(total=len(plan.todo), desc="indexing", unit="img", disable=not progress or not plan.todo)
    for start in range(0, len(plan.todo), chunk):
        part = plan.todo[start:start + chunk]
        rows = []
        missing = [p for p in part if p.id not in plan.stats]
        for p in missing:
            rows.append(_entry(p, None, "", None, f"{p.path}: file not found"))
        present = [p for p in part if p.id in plan.stats]
        cur.hash_only(present)
        same = [p for p in present if p.id in published and published[p.id].usable
                and published[p.id].sha == cur.shas.get(p.id)]
        for p in same:  # the file was touched or copied, its content is the same: its row is kept as it was
            rows.append(_entry(p, plan.stats[p.id], published[p.id].sha, published[p.id].embedding, ""))
        result.redone_same_content += len(same)
        present = [p for p in present if p not in same]
        before = cur.engine.stats.features_extracted
        cur.prepare(present)
        result.extracted += cur.engine.stats.features_extracted - before
        flanks = [p for p in present if p.id in cur.shas and p.viewpoint in LATERAL]
        try:
            cur.prepare_mirrored(flanks)
        except ImageError as exc:  # the file changed under us: its flank features wait for the next update
            log.warning("mirrored features not made: %s", exc)
        usable = {p.id: cur.shas[p.id] for p in present if p.id in cur.shas}
        stage0.describe(set(usable.values()))
        for p in present:
            if p.id in usable:
                emb = stage0.loaded[usable[p.id]]["emb"]
                rows.append(_entry(p, plan.stats[p.id], usable[p.id], bytes(emb.tobytes()), ""))
            else:
                rows.append(_entry(p, plan.stats[p.id], "", None, cur.bad.get(p.id, "unusable")))
        for e in rows:
            if e.error:
                result.unusable[e.image_id] = e.error
        index.stage(rows)
        cur.release(usable.values())
        bar.update(len(part))
    bar.close()
    index.publish({p.id for p in photos}, plan.relabelled)
    for e in index.published().values():  # unusable photos of earlier updates are still named
        if e.error and e.image_id not in result.unusable:
            result.unusable[e.image_id] = e.error
    return result
