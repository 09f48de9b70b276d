"""The catalogue index: its store (consistent snapshots, settings, a file that is no index), an update's work
(incremental: new, changed, removed, relabelled; resumed after a stop) and the stage-0 shortlist's arithmetic."""

from __future__ import annotations

import os
import shutil
import sqlite3

import numpy as np
import pytest
from scenario_factory import make_whales

from matcher.curation import indexing
from matcher.curation.catalogue_index import CatalogueIndex, Entry, index_path
from matcher.curation.curator import Curator
from matcher.curation.shortlist import QUANT, comparable_rows, shortlist, similarities, top_k, view_groups
from matcher.engine import Engine
from matcher.io.catalogue import load_catalogue

SETTINGS = {"features": "f-1", "stage0": "s-1"}


def entry(i: str, emb: list[int] | None, **kw) -> Entry:
    return Entry(i, f"/x/{i}.jpg", 10, 1, f"sha{i}", embedding=None if emb is None else bytes(np.int8(emb)), **kw)


# --------------------------------------------------------------------------- the store


def test_a_search_reads_the_index_before_or_after_an_update_never_half_of_it(tmp_path):
    path = tmp_path / "index.sqlite"
    writer = CatalogueIndex(path, SETTINGS)
    writer.stage([entry("a", [1, 2]), entry("b", [3, 4])])
    writer.publish({"a", "b"}, [])
    writer.stage([entry("c", [5, 6])])  # an update in progress: staged, not published
    reader = CatalogueIndex(path, SETTINGS, create=False)
    assert sorted(reader.published()) == ["a", "b"]
    writer.publish({"a", "c"}, [])  # c added, b removed, in one transaction
    snap = reader.snapshot()
    assert [e.image_id for e in snap.usable] == ["a", "c"] and snap.embeddings.tolist() == [[1, 2], [5, 6]]
    assert reader.pending() == {}


def test_an_index_of_other_settings_is_rebuilt_by_an_update_and_only_reported_to_a_search(tmp_path, caplog):
    path = tmp_path / "index.sqlite"
    old = CatalogueIndex(path, SETTINGS)
    old.stage([entry("a", [1, 2])])
    old.publish({"a"}, [])
    old.close()
    search = CatalogueIndex(path, {**SETTINGS, "stage0": "s-2"}, create=False)
    assert search.exists and "stage0" in search.mismatch and list(search.published()) == ["a"]  # left as it was
    update = CatalogueIndex(path, {**SETTINGS, "stage0": "s-2"})
    assert "stage0" in update.mismatch and update.published() == {}
    assert "rebuilding" in caplog.text
    assert CatalogueIndex(path, {**SETTINGS, "stage0": "s-2"}).mismatch == ""  # the rebuilt index fits


def test_a_file_that_is_no_index_is_moved_aside_by_an_update(tmp_path):
    path = tmp_path / "index.sqlite"
    path.write_bytes(b"this is not a database, it is a note" * 100)
    assert CatalogueIndex(path, SETTINGS, create=False).mismatch.startswith("the file is unreadable")
    index = CatalogueIndex(path, SETTINGS)
    assert index.published() == {} and (tmp_path / "index.sqlite.corrupt").is_file()


def test_the_index_of_a_catalogue_is_named_by_its_file_and_lives_in_the_cache(tmp_path):
    cache = tmp_path / "cache"
    a, b = index_path(cache, tmp_path / "one" / "metadata.csv"), index_path(cache, tmp_path / "two" / "metadata.csv")
    assert a != b and a.parent == tmp_path / "cache" / "index" and a.name.startswith("metadata-")


def test_embeddings_of_the_wrong_length_are_refused_naming_the_file(tmp_path):
    index = CatalogueIndex(tmp_path / "index.sqlite", SETTINGS)
    index.stage([entry("a", [1, 2]), entry("b", [1, 2, 3])])
    index.publish({"a", "b"}, [])
    with pytest.raises(Exception, match="wrong length"):
        index.snapshot()


# --------------------------------------------------------------------------- updates


class MeanStage0:
    """A stand-in for the learned head: the int8 mean of an image's descriptors (a function of its features)."""

    def __init__(self, engine: Engine):
        self.engine, self.loaded, self.calls = engine, {}, 0

    def describe(self, keys) -> None:
        for k in keys:
            if k not in self.loaded:
                self.calls += 1
                d = np.asarray(self.engine.feature(k)["descriptors"], np.float32).mean(0)
                self.loaded[k] = {"emb": np.round(QUANT * d / max(np.linalg.norm(d), 1e-9)).astype(np.int8)}


@pytest.fixture
def catalogue(tmp_path):
    root = tmp_path / "cat"
    meta = make_whales(root, n_whales=4, per_whale=2)
    meta.loc[meta["image_id"] == "img011", "viewpoint"] = "left"
    meta.to_csv(root / "metadata.csv", index=False)
    return root


def update(tmp_path, root, chunk=3):
    engine = Engine("sift-mnn", tmp_path / "cache", "cpu", progress=False)
    index = CatalogueIndex(tmp_path / "cache" / "index.sqlite", SETTINGS)
    stage0 = MeanStage0(engine)
    result = indexing.update(index, load_catalogue(root), Curator(engine), stage0, chunk=chunk, progress=False)
    return index, result, stage0


def test_updates_are_incremental_and_say_what_changed(tmp_path, catalogue):
    index, first, _ = update(tmp_path, catalogue)
    assert len(first.plan.new) == 8 and first.unusable == {} and first.extracted == 8
    assert len(index.snapshot().usable) == 8
    meta = (catalogue / "metadata.csv").read_text().splitlines()
    shutil.copy(catalogue / "images" / "img000.jpg", catalogue / "images" / "img001.jpg")  # a changed file
    (catalogue / "images" / "img021.jpg").write_bytes((catalogue / "images" / "img021.jpg").read_bytes())  # touched
    kept = [line for line in meta if not line.startswith("img030,")]  # a removed photo
    kept = [line.replace("w02", "w09") if line.startswith("img020,") else line for line in kept]  # a relabelled one
    (catalogue / "metadata.csv").write_text("\n".join(kept) + "\n")
    index, second, stage0 = update(tmp_path, catalogue)
    p = second.plan
    assert p.removed == ["img030"] and [e.image_id for e in p.relabelled] == ["img020"]
    assert sorted(p.changed) == ["img001", "img021"] and second.redone_same_content == 1 and p.unchanged == 4
    assert stage0.calls == 1  # only the changed content is described again (the touched file's hash is the same)
    rows = index.published()
    assert "img030" not in rows and rows["img020"].whale_id == "w09" and rows["img001"].sha == rows["img000"].sha
    assert "1 removed" in second.lines()[0] and "img030" in "\n".join(second.lines())


def test_a_stopped_update_resumes_where_it_stopped_and_search_sees_the_old_index_meanwhile(tmp_path, catalogue,
                                                                                          monkeypatch):
    index, _, _ = update(tmp_path, catalogue)
    for i in ("img000", "img010", "img020", "img030"):  # four files change
        path = catalogue / "images" / f"{i}.jpg"
        path.write_bytes(path.read_bytes() + b"\0")
    calls = []
    real = MeanStage0.describe

    def stop_after_first_chunk(self, keys):
        calls.append(len(keys))
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(self, keys)

    monkeypatch.setattr(MeanStage0, "describe", stop_after_first_chunk)
    with pytest.raises(KeyboardInterrupt):
        update(tmp_path, catalogue, chunk=2)
    before = CatalogueIndex(tmp_path / "cache" / "index.sqlite", SETTINGS, create=False)
    assert len(before.pending()) == 2  # the first chunk is kept...
    size = os.path.getsize(catalogue / "images" / "img000.jpg")
    assert before.published()["img000"].size == size - 1  # ...but not published
    monkeypatch.setattr(MeanStage0, "describe", real)
    _, resumed, stage0 = update(tmp_path, catalogue, chunk=2)
    assert resumed.plan.resumed == 2 and len(resumed.plan.changed) == 2 and stage0.calls == 2
    final = CatalogueIndex(tmp_path / "cache" / "index.sqlite", SETTINGS).published()
    assert all(final[i].size == os.path.getsize(catalogue / "images" / f"{i}.jpg") for i in final)


def test_missing_and_unreadable_photos_are_named_and_kept_out_of_searches(tmp_path, catalogue):
    (catalogue / "images" / "img000.jpg").unlink()
    (catalogue / "images" / "img010.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    index, result, _ = update(tmp_path, catalogue)
    assert set(result.unusable) == {"img000", "img010"} and "not found" in result.unusable["img000"]
    snap = index.snapshot()
    assert len(snap.usable) == 6 and {e.image_id for e in snap.entries if not e.usable} == {"img000", "img010"}
    assert "unusable" in "\n".join(result.lines())


# --------------------------------------------------------------------------- the shortlist


def test_similarities_are_exact_integer_dot_products_whatever_the_block(monkeypatch):
    rng = np.random.default_rng(0)
    emb = rng.integers(-127, 128, (1000, 256)).astype(np.int8)
    q = rng.integers(-127, 128, 256).astype(np.int8)
    exact = (emb.astype(np.int64) @ q.astype(np.int64)) / (QUANT * QUANT)
    assert np.array_equal(similarities(q, emb), exact)
    monkeypatch.setattr("matcher.curation.shortlist.BLOCK", 7)
    assert np.array_equal(similarities(q, emb), exact)
    rows = np.array([5, 3, 999])
    assert np.array_equal(similarities(q, emb, rows), exact[rows])


def test_top_k_keeps_the_best_and_breaks_ties_by_position():
    scores = np.array([0.1, 0.5, 0.5, 0.9, 0.5, 0.2])
    assert top_k(scores, 3).tolist() == [3, 1, 2]
    assert top_k(scores, 10).tolist() == [3, 1, 2, 4, 5, 0]
    big = np.random.default_rng(1).integers(0, 20, 5000).astype(float)
    assert top_k(big, 50).tolist() == np.lexsort((np.arange(5000), -big))[:50].tolist()


def test_a_flank_is_compared_with_opposite_flanks_through_its_mirror():
    views = np.array(["top", "left", "right", "", "right"], dtype=object)
    groups = view_groups(views)
    assert comparable_rows(groups, "left").tolist() == [1, 2, 3, 4]
    assert comparable_rows(groups, "top").tolist() == [0, 3]
    emb = np.array([[127, 0], [0, 127], [127, 0], [0, 127], [90, 90]], np.int8)
    own, mirror = np.array([0, 127], np.int8), np.array([127, 0], np.int8)
    rows, sims = shortlist(own, mirror, "left", emb, views, 2, comparable_rows(groups, "left"))
    assert rows.tolist() == [1, 2] and sims.tolist() == [1.0, 1.0]  # the left flank by itself, the right by the mirror


def test_an_index_database_locked_by_a_writer_is_waited_for(tmp_path):
    path = tmp_path / "index.sqlite"
    CatalogueIndex(path, SETTINGS).close()
    conn = sqlite3.connect(path)
    conn.execute("BEGIN IMMEDIATE")  # another update holds the write lock
    reader = CatalogueIndex(path, SETTINGS, create=False)
    assert reader.published() == {}  # readers never wait for the writer (write-ahead log)
    conn.rollback()
    conn.close()


def test_searches_during_an_update_see_the_whole_old_or_the_whole_new_index(tmp_path, catalogue):
    """A reader in another thread, snapshotting while an update changes every photo, sees one of two states."""
    import threading

    index, _, _ = update(tmp_path, catalogue)
    old = {e.image_id: e.sha for e in index.snapshot().entries}
    for p in (catalogue / "images").glob("*.jpg"):
        p.write_bytes(p.read_bytes() + b"\0")  # every file changes: new hashes everywhere
    seen, stop = [], threading.Event()

    def read():
        reader = CatalogueIndex(tmp_path / "cache" / "index.sqlite", SETTINGS, create=False)
        while not stop.is_set():
            seen.append({e.image_id: e.sha for e in reader.snapshot().entries})

    t = threading.Thread(target=read)
    t.start()
    try:
        index, _, _ = update(tmp_path, catalogue, chunk=2)
    finally:
        stop.set()
        t.join()
    new = {e.image_id: e.sha for e in index.snapshot().entries}
    assert new != old and seen and all(s in (old, new) for s in seen)
