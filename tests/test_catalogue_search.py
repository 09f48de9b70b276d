"""``whalematch index`` then ``search``: the index's shortlist is what gets verified, a stale index is completed
for the search, sightings of several photos are identified together, and a view the catalogue lacks is said."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scenario_factory import make_whales, new_view

from matcher.cascade.global_descriptors import GlobalStage
from matcher.curation.cli import main
from matcher.curation.curator import Curator
from matcher.engine import Engine
from matcher.features.global_head import similarity
from matcher.io.catalogue import load_catalogue

PRESET = "disk-mnn"  # the index's stage 0 reads DISK features


@pytest.fixture
def catalogue(tmp_path):
    root = tmp_path / "cat"
    meta = make_whales(root, n_whales=6, per_whale=2)
    meta.to_csv(root / "metadata.csv", index=False)
    return root


def common(tmp_path, out="out"):
    return ["--preset", PRESET, "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / out), "--quiet",
            "--pair-score", "strength"]


def test_a_search_with_an_index_verifies_the_k_photos_stage_0_ranks_first(catalogue, tmp_path, capsys):
    assert main(["index", str(catalogue), "--preset", PRESET, "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "12 new, 0 changed, 0 removed" in out and "12 photos searchable" in out
    query = new_view(catalogue, "img030", tmp_path / "new" / "q.jpg")
    assert main(["search", str(query), "--catalogue", str(catalogue), "--viewpoint", "top", "--k", "4",
                 *common(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "the 4 photos most alike by stage 0" in err and "plan for" in err and "4 pairs" in err
    cands = pd.read_csv(tmp_path / "out" / "candidates.csv")
    # the 4 verified are the 4 catalogue photos the head's embedding puts first (computed here independently)
    engine = Engine(PRESET, tmp_path / "cache", "cpu", progress=False)
    cur = Curator(engine)
    photos = load_catalogue(catalogue)
    cur.prepare(photos + [load_catalogue(query.parent)[0]])
    head = GlobalStage("learned-disk", engine)
    shas = [cur.shas[p.id] for p in photos]
    qsha = engine.hash_images({"q": query})[0]["q"]
    head.describe(set(shas) | {qsha})
    sims = similarity(head.loaded[qsha]["emb"][None], np.stack([head.loaded[s]["emb"] for s in shas]))[0]
    expected = {photos[i].id for i in np.lexsort((np.arange(len(shas)), -sims))[:4]}
    assert set(cands["image_b"]) == expected
    # --exhaustive verifies every comparable photo, and the right whale comes first
    assert main(["search", str(query), "--catalogue", str(catalogue), "--viewpoint", "top", "--exhaustive",
                 *common(tmp_path, "all")]) == 0
    every = pd.read_csv(tmp_path / "all" / "candidates.csv")
    assert len(every) == 12 and every["whale_id"].iloc[0] == "w03"
    whales = pd.read_csv(tmp_path / "all" / "whales.csv")
    assert whales["whale_id"].iloc[0] == "w03" and {"evidence", "score", "images_verified"} <= set(whales.columns)
    page = (tmp_path / "all" / "report.html").read_text()
    assert 'data-new="1"' in page and "New whale?" in page


def test_photos_the_index_lacks_are_described_for_the_search_and_named(catalogue, tmp_path, capsys):
    assert main(["index", str(catalogue), "--preset", PRESET, "--cache-dir", str(tmp_path / "cache"), "--quiet",
                 "--dry-run"]) == 0
    assert "12 new" in capsys.readouterr().out and not list((tmp_path / "cache").glob("features/*/*/*.npz"))
    assert main(["index", str(catalogue), "--preset", PRESET, "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 0
    meta = pd.read_csv(catalogue / "metadata.csv")
    extra = new_view(catalogue, "img050", catalogue / "images" / "late.jpg", angle=3.0)
    meta = pd.concat([meta, pd.DataFrame([{"image_id": "late", "path": "images/late.jpg", "viewpoint": "top",
                                           "date": "2018-08-02", "whale_id": "w05"}])])
    meta.to_csv(catalogue / "metadata.csv", index=False)
    query = new_view(catalogue, "img051", tmp_path / "q.jpg", angle=-3.0)
    capsys.readouterr()
    assert main(["search", str(query), "--catalogue", str(catalogue), "--viewpoint", "top", "--k", "13",
                 *common(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "1 photos not in the index as they are now were described" in err and extra.is_file()
    assert "late" in set(pd.read_csv(tmp_path / "out" / "candidates.csv")["image_b"])
    assert main(["index", str(catalogue), "--preset", PRESET, "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 0
    assert "1 new, 0 changed, 0 removed, 0 relabelled, 12 unchanged" in capsys.readouterr().out


def test_the_photos_of_a_sighting_are_identified_together(catalogue, tmp_path, capsys):
    new = tmp_path / "new"
    new_view(catalogue, "img020", new / "a.jpg", angle=-5.0)
    new_view(catalogue, "img021", new / "b.jpg", angle=4.0)
    new_view(catalogue, "img040", new / "c.jpg", angle=2.0)
    pd.DataFrame([{"image_id": "a", "path": "a.jpg", "viewpoint": "top", "encounter_id": "e1"},
                  {"image_id": "b", "path": "b.jpg", "viewpoint": "top", "encounter_id": "e1"},
                  {"image_id": "c", "path": "c.jpg", "viewpoint": "top", "encounter_id": "e2"}]).to_csv(
        new / "new.csv", index=False)
    assert main(["search", "--batch", str(new / "new.csv"), "--catalogue", str(catalogue), *common(tmp_path)]) == 0
    text = capsys.readouterr().out
    summary = pd.read_csv(tmp_path / "out" / "batch.csv", keep_default_na=False)
    assert {"p_new_whale", "sighting"} <= set(summary.columns)
    assert list(summary["sighting"]) == ["encounter e1", "encounter e1", "encounter e2"]
    enc = pd.read_csv(tmp_path / "out" / "encounters.csv", keep_default_na=False)
    assert list(enc["sighting"]) == ["encounter e1", "encounter e2"] and list(enc["best_whale"]) == ["w02", "w04"]
    assert enc["photos"].tolist() == [2, 1] and enc["photo_ids"].iloc[0] == "a;b"
    page = tmp_path / "out" / "sightings" / "encounter_e1" / "report.html"
    assert page.is_file() and "Whales of the sighting" in page.read_text()
    files = ", ".join(f"&quot;{new / n}&quot;" for n in ("a.jpg", "b.jpg"))
    assert f'data-photos="[{files}]"' in page.read_text()  # a decision stands for both photos (by their files)
    assert "identified together" in text


def test_a_new_photo_of_a_view_the_catalogue_lacks_gets_a_clear_answer(catalogue, tmp_path, capsys):
    query = new_view(catalogue, "img010", tmp_path / "q.jpg")
    assert main(["search", str(query), "--catalogue", str(catalogue), "--viewpoint", "left", *common(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no catalogue image to compare with (views: left): the catalogue holds top views" in err


def test_index_refuses_a_preset_whose_features_its_stage_0_cannot_read(catalogue, tmp_path, capsys):
    assert main(["index", str(catalogue), "--preset", "sift-mnn", "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "reads DISK features" in capsys.readouterr().err


def test_a_damaged_index_is_searched_around_and_rebuilt_by_the_next_update(catalogue, tmp_path, capsys):
    assert main(["index", str(catalogue), "--preset", PRESET, "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 0
    (index,) = (tmp_path / "cache" / "index").glob("*.sqlite")
    index.write_bytes(b"garbage" * 1000)
    for extra in ("-wal", "-shm"):
        (tmp_path / "cache" / "index" / (index.name + extra)).unlink(missing_ok=True)
    query = new_view(catalogue, "img030", tmp_path / "q.jpg")
    capsys.readouterr()
    assert main(["search", str(query), "--catalogue", str(catalogue), "--viewpoint", "top", *common(tmp_path)]) == 0
    assert "no index: the one there does not fit: the file is unreadable" in capsys.readouterr().err
    assert len(pd.read_csv(tmp_path / "out" / "candidates.csv")) == 12  # every comparable photo verified
    assert main(["index", str(catalogue), "--preset", PRESET, "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 0
    assert "12 new" in capsys.readouterr().out and index.with_suffix(".sqlite.corrupt").is_file()
