"""``whalematch search --batch``: several new photos (a folder, a text list, a metadata CSV) against a catalogue,
every pair verified in one call, each photo ranked as ``search`` ranks one, with its own folder of results."""

from __future__ import annotations

import pandas as pd
import pytest
from scenario_factory import make_whales, new_view

from matcher.curation.cli import main
from matcher.engine import Engine

PRESET = "sift-mnn"


@pytest.fixture
def catalogue(tmp_path):
    root = tmp_path / "cat"
    meta = make_whales(root, n_whales=5, per_whale=2)
    meta.to_csv(root / "metadata.csv", index=False)
    return root


def test_a_folder_of_new_photos_is_searched_in_one_go_and_each_photo_gets_its_results(catalogue, tmp_path,
                                                                                      monkeypatch, capsys):
    new = tmp_path / "new"
    new_view(catalogue, "img010", new / "first.jpg")
    new_view(catalogue, "img041", new / "sub" / "second.jpg")
    (new / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    calls = []
    verdicts = Engine.verdicts
    monkeypatch.setattr(Engine, "verdicts", lambda self, pairs, *a, **k: calls.append(len(set(pairs)))
                        or verdicts(self, pairs, *a, **k))
    out = tmp_path / "out"
    assert main(["search", "--batch", str(new), "--catalogue", str(catalogue), "--preset", PRESET, "--cache-dir",
                 str(tmp_path / "cache"), "--out", str(out), "--top", "1", "--quiet"]) == 0
    assert calls[0] == 2 * 10  # every pair of every usable new photo in the first call; the rankings read them back
    summary = pd.read_csv(out / "batch.csv", keep_default_na=False)
    assert list(summary["new_photo"]) == ["broken.jpg", "first.jpg", "sub/second.jpg"]
    broken, first, second = summary.to_dict("records")
    assert "not an image file" in broken["error"] or "corrupt" in broken["error"]
    assert first["best_whale"] == "w01" and first["best_image"].startswith("img01") and first["error"] == ""
    assert second["best_whale"] == "w04" and second["compared"] == 10
    for name in ("first", "second"):
        cands = pd.read_csv(out / name / "candidates.csv")
        assert len(cands) == 10 and (out / name / "whales.csv").is_file() and (out / name / "report.html").is_file()
    assert pd.read_csv(out / "first" / "candidates.csv")["whale_id"].iloc[0] == "w01"
    text = capsys.readouterr().out
    assert "first.jpg" in text and "w01" in text and "error:" in text and str(out / "batch.csv") in text


def test_a_text_list_or_a_metadata_csv_of_new_photos(catalogue, tmp_path):
    a = new_view(catalogue, "img020", tmp_path / "photos" / "a.jpg")
    b = new_view(catalogue, "img031", tmp_path / "photos" / "img000.jpg")  # a catalogue id, another file
    listing = tmp_path / "new.txt"
    listing.write_text(f"# new photos\nphotos/a.jpg\n\n{b}\n")
    out = tmp_path / "out"
    common = ["--catalogue", str(catalogue / "metadata.csv"), "--preset", PRESET, "--cache-dir",
              str(tmp_path / "cache"), "--top", "0", "--quiet"]
    assert main(["search", "--batch", str(listing), "--out", str(out), *common]) == 0
    summary = pd.read_csv(out / "batch.csv", keep_default_na=False)
    assert list(summary["best_whale"]) == ["w02", "w03"]
    assert summary["new_photo"].iloc[1] == str(b)  # renamed: the id img000 names a catalogue photo already
    assert summary["compared"].iloc[1] == 10  # so the catalogue's img000 is still compared with it
    pd.DataFrame([{"image_id": "n1", "path": str(a.relative_to(tmp_path)), "viewpoint": "left"}]).to_csv(
        tmp_path / "new.csv", index=False)
    assert main(["search", "--batch", str(tmp_path / "new.csv"), "--out", str(tmp_path / "out2"), *common]) == 0
    row = pd.read_csv(tmp_path / "out2" / "batch.csv", keep_default_na=False).iloc[0]
    # a left flank against a catalogue of top views: nothing comparable, said so
    assert row["compared"] == 0 and "no catalogue image to compare with (views: left)" in row["error"]


def test_search_needs_one_photo_or_a_batch(catalogue, tmp_path, capsys):
    new = new_view(catalogue, "img000", tmp_path / "n.jpg")
    args = ["--catalogue", str(catalogue), "--preset", PRESET, "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert main(["search", *args]) == 2
    assert main(["search", str(new), "--batch", str(tmp_path), *args]) == 2
    assert "one new photo, or --batch" in capsys.readouterr().err
