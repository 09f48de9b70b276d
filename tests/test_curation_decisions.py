"""``whalematch apply-decisions`` on generated catalogues: a new photo gets its whale, confirmed whales merge,
contradictions are refused naming their rows, the input is never touched, and the verdict cache still serves."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from curation_helpers import PRESET, save_rgb, write_catalogue

from matcher.curation import decisions
from matcher.curation.cli import main
from matcher.curation.curator import Curator, pair_task
from matcher.curation.review_page import EXPORT_COLUMNS
from matcher.engine import Engine
from matcher.io.catalogue import read_photos

SIZES = {"whaleA": 3, "whaleB": 2, "whaleC": 2, "whaleD": 2, "whaleE": 1}


def tiny(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (24, 16, 3), dtype=np.uint8)


def catalogue(root, sizes=SIZES, blank: tuple[str, ...] = ()) -> tuple:
    """A metadata CSV (with a column apply-decisions does not know) over tiny photos: ``<whale>_<n>``."""
    rows = []
    n = 0
    for whale, count in sizes.items():
        for j in range(count):
            image_id = f"{whale}_{j}"
            save_rgb(root / "images" / f"{image_id}.png", tiny(n))
            n += 1
            rows.append({"image_id": image_id, "path": f"images/{image_id}.png", "viewpoint": "top",
                         "whale_id": "" if image_id in blank else whale, "date": f"2019-07-0{1 + j}",
                         "notes": f"field note {n}"})
    path = root / "metadata.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def decisions_csv(path, rows: list[tuple]) -> str:
    """The page's export: (query, candidate, decision[, comment]) per row."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(EXPORT_COLUMNS)
        for r in rows:
            q, c, d = r[:3]
            w.writerow([q, c, c.rsplit("_", 1)[0], d, r[3] if len(r) > 3 else "", "tester", "2024-05-01T10:00:00Z"])
    return str(path)


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(args, capsys) -> tuple[int, str, str]:
    rc = main(["apply-decisions", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_new_photo_confirmed_as_a_whale_is_added_with_that_whale(tmp_path, capsys):
    meta = catalogue(tmp_path / "cat")
    before = digest(meta)
    new = save_rgb(tmp_path / "field" / "IMG_0042.png", tiny(99))  # outside the catalogue's folder
    dec = decisions_csv(tmp_path / "d.csv", [(str(new), "whaleB_1", "same", "notch on the left"),
                                             (str(new), "whaleA_0", "different"), (str(new), "whaleC_1", "not sure")])
    rc, out, err = run([dec, "--metadata", meta, "--new-photos", new.parent], capsys)
    assert rc == 0, err
    assert digest(meta) == before  # never in place without --in-place
    new_meta = tmp_path / "cat" / "metadata.decided.csv"
    table = pd.read_csv(new_meta, dtype=str, keep_default_na=False)
    assert list(table.columns) == ["image_id", "path", "viewpoint", "whale_id", "date", "notes"]  # columns kept
    assert len(table) == sum(SIZES.values()) + 1
    added = table.iloc[-1]
    assert (added["image_id"], added["whale_id"], added["viewpoint"]) == ("IMG_0042", "whaleB", "top")
    assert added["path"] == "new_photos/IMG_0042.png"
    assert (tmp_path / "cat" / "new_photos" / "IMG_0042.png").read_bytes() == new.read_bytes()
    photos = read_photos(new_meta)  # the new catalogue reads, its photo included
    assert photos["IMG_0042"].path.is_file() and photos["whaleB_0"].whale_id == "whaleB"
    assert table.iloc[:-1].equals(pd.read_csv(meta, dtype=str, keep_default_na=False))  # nothing else changed
    log = pd.read_csv(tmp_path / "cat" / "metadata.decided.changes.csv", keep_default_na=False)
    assert list(log["action"]).count("add") == 1
    assert "add: IMG_0042 new row, whale whaleB" in out and "d.csv line 2" in out
    # Applied again to the new catalogue, the same decisions change nothing (the photo is already there).
    rc, out, _ = run([dec, "--metadata", new_meta, "--output", tmp_path / "cat" / "again.csv"], capsys)
    assert rc == 0 and "0 changes" in out
    assert len(pd.read_csv(tmp_path / "cat" / "again.csv")) == len(table)


def test_new_photo_inside_the_catalogue_folder_keeps_its_path_and_a_free_id(tmp_path, capsys):
    meta = catalogue(tmp_path / "cat")
    new = save_rgb(tmp_path / "cat" / "incoming" / "whaleA_0.png", tiny(123))  # its stem is a taken id
    dec = decisions_csv(tmp_path / "cat" / "d.csv", [("incoming/whaleA_0.png", "whaleD_0", "same")])
    rc, out, err = run([dec, "--metadata", meta, "--output", tmp_path / "cat" / "new.csv"], capsys)
    assert rc == 0, err
    table = pd.read_csv(tmp_path / "cat" / "new.csv", dtype=str, keep_default_na=False)
    added = table.iloc[-1]
    assert (added["image_id"], added["path"], added["whale_id"]) == ("whaleA_0-2", "incoming/whaleA_0.png", "whaleD")
    assert not (tmp_path / "cat" / "new_photos").exists() and new.is_file()


def test_merge_keeps_the_whale_with_more_photos_and_logs_every_change(tmp_path, capsys):
    meta = catalogue(tmp_path / "cat", blank=("whaleE_0",))
    dec = decisions_csv(tmp_path / "d.csv", [
        ("whaleB_0", "whaleA_2", "same"),  # B (2 photos) into A (3)
        ("whaleD_1", "whaleC_0", "same"),  # a tie: the smaller id, C, is kept
        ("whaleA_0", "whaleA_1", "different"),  # an isolated image's pair: nothing changes, logged
        ("whaleE_0", "whaleD_0", "same"),  # an unlabelled catalogue photo gets D's id after the merge: C
        ("whaleA_1", "whaleC_1", "different"),  # consistent with the merges
        ("whaleB_1", "whaleB_0", "same", "the same encounter"),  # confirms a label
    ])
    before = digest(meta)
    rc, out, err = run([dec, "--metadata", meta, "--output", tmp_path / "cat" / "merged.csv"], capsys)
    assert rc == 0, err
    assert digest(meta) == before
    table = pd.read_csv(tmp_path / "cat" / "merged.csv", dtype=str, keep_default_na=False).set_index("image_id")
    assert table["whale_id"].to_dict() == {
        "whaleA_0": "whaleA", "whaleA_1": "whaleA", "whaleA_2": "whaleA", "whaleB_0": "whaleA", "whaleB_1": "whaleA",
        "whaleC_0": "whaleC", "whaleC_1": "whaleC", "whaleD_0": "whaleC", "whaleD_1": "whaleC", "whaleE_0": "whaleC"}
    log = pd.read_csv(tmp_path / "cat" / "merged.changes.csv", keep_default_na=False)
    merges = log[log["action"] == "merge"]
    assert set(merges["image_id"]) == {"whaleB_0", "whaleB_1", "whaleD_0", "whaleD_1"}
    assert merges.set_index("image_id").loc["whaleB_1", "detail"] == \
        "whales whaleB and whaleA decided the same; kept whaleA (3 photos) over whaleB (2 photos)"
    assert merges.set_index("image_id").loc["whaleD_0", "decisions"].endswith("d.csv line 3")
    label = log[log["action"] == "label"].iloc[0]
    assert (label["image_id"], label["whale_after"]) == ("whaleE_0", "whaleC")
    unchanged = log[log["action"] == "no change"]
    assert any("one label may be wrong" in d for d in unchanged["detail"])
    assert "2 whale ids merged, 1 photos labelled, 0 new photos added" in out


@pytest.mark.parametrize("case", ["same-and-different", "new-photo-two-whales", "merge-chain",
                                  "new-photo-not-its-whale"])
def test_contradictions_are_refused_naming_the_rows(tmp_path, capsys, case):
    meta = catalogue(tmp_path / "cat")
    new = save_rgb(tmp_path / "new.png", tiny(77))
    other = tmp_path / "other.csv"
    if case == "same-and-different":  # two reviewers disagree on one pair (in either order)
        files = [decisions_csv(tmp_path / "a.csv", [("whaleA_0", "whaleA_1", "not sure"), ("whaleA_0", "whaleB_0",
                                                                                          "same")]),
                 decisions_csv(other, [("whaleB_0", "whaleA_0", "different")])]
        named = ["a.csv line 3", "other.csv line 2", "decided same", "and different"]
    elif case == "new-photo-two-whales":
        files = [decisions_csv(tmp_path / "a.csv", [(str(new), "whaleA_0", "same"), (str(new), "whaleC_1", "same")])]
        named = ["whale whaleA (", "a.csv line 2", "whale whaleC (", "a.csv line 3", "merge them first"]
    elif case == "merge-chain":
        files = [decisions_csv(tmp_path / "a.csv", [("whaleA_0", "whaleB_0", "same"), ("whaleB_1", "whaleC_0", "same"),
                                                    ("whaleC_1", "whaleA_2", "different")])]
        named = ["whaleC_1 and whaleA_2 are decided different (", "a.csv line 4", "merges join whaleC and whaleA",
                 "a.csv line 2", "a.csv line 3"]
    else:
        files = [decisions_csv(tmp_path / "a.csv", [(str(new), "whaleA_0", "same"), (str(new), "whaleA_2",
                                                                                      "different")])]
        named = ["decided different (", "a.csv line 3", "both whale whaleA"]
    before = digest(meta)
    rc, out, err = run([*files, "--metadata", meta, "--new-photos", tmp_path], capsys)
    assert rc == 2
    assert "contradictory decisions; nothing was written" in err
    for text in named:
        assert text in err, (text, err)
    assert digest(meta) == before and not (tmp_path / "cat" / "metadata.decided.csv").exists()
    assert not (tmp_path / "cat" / "new_photos").exists()


def test_bad_decision_files_and_options_are_reported(tmp_path, capsys):
    meta = catalogue(tmp_path / "cat")
    before = digest(meta)
    bad = tmp_path / "bad.csv"
    bad.write_text("query_image,candidate_image,decision\nwhaleA_0,whaleB_0,same\nwhaleA_0,whaleC_0,maybe\n")
    rc, _, err = run([bad, "--metadata", meta], capsys)
    assert rc == 2 and "bad.csv: decision must be same, different, not sure or new whale; line(s) 3 ('maybe')" in err
    bad.write_text("query,candidate_image,decision\nwhaleA_0,whaleB_0,same\n")
    rc, _, err = run([bad, "--metadata", meta], capsys)
    assert rc == 2 and "missing column(s) query_image" in err
    unknown = decisions_csv(tmp_path / "u.csv", [("whaleA_0", "whaleZ_9", "same"), ("nope.png", "whaleA_0", "same")])
    rc, _, err = run([unknown, "--metadata", meta], capsys)
    assert rc == 2 and "2 unknown or refused images" in err
    assert "u.csv line 2: candidate_image 'whaleZ_9' is not an image of" in err
    assert "u.csv line 3: query_image 'nope.png' is neither an image id" in err
    ok = decisions_csv(tmp_path / "ok.csv", [("whaleB_0", "whaleA_0", "same")])
    rc, _, err = run([ok, "--metadata", meta, "--output", meta], capsys)
    assert rc == 2 and "give --in-place" in err
    assert run([ok, "--metadata", meta, "--dry-run"], capsys)[0] == 0
    assert not (tmp_path / "cat" / "metadata.decided.csv").exists()
    assert digest(meta) == before  # untouched by every refusal
    rc, out, err = run([ok, "--metadata", meta, "--in-place"], capsys)
    assert rc == 0, err
    assert (tmp_path / "cat" / "metadata.csv.bak").read_bytes() != meta.read_bytes()
    assert digest(tmp_path / "cat" / "metadata.csv.bak") == before
    assert set(pd.read_csv(meta)["whale_id"]) == {"whaleA", "whaleC", "whaleD", "whaleE"}
    rc, _, err = run([ok, "--metadata", meta, "--output", tmp_path / "elsewhere" / "m.csv"], capsys)
    assert rc == 2 and "not inside that folder" in err


def test_plan_is_a_function_of_the_decisions():
    """The planning on its own (no files written): merge direction and the chain of decisions named."""
    from matcher.io.catalogue import Photo

    photos = {f"{w}_{j}": Photo(f"{w}_{j}", Path(f"/nowhere/{w}_{j}.png"), "top", w)
              for w, n in (("b", 2), ("a", 2), ("c", 1)) for j in range(n)}
    cat = decisions.Catalogue(path=Path("/nowhere/metadata.csv"), photos=photos, table=pd.DataFrame())
    ds = [decisions.Decision("f line 2", "c_0", "b_0", decision="same"),
          decisions.Decision("f line 3", "a_1", "b_1", decision="same")]
    plan = decisions.plan_changes(ds, cat, [])
    assert plan.merged == {"b": "a", "c": "a"}  # a tie between a and b: the smaller id; c has fewer photos
    assert {c.image_id for c in plan.changes} == {"b_0", "b_1", "c_0"}


def test_verdicts_are_reused_after_the_catalogue_changes(tmp_path, capsys):
    """Verdicts are keyed by the photos' contents: after a merge nothing is verified or extracted again."""
    meta = write_catalogue(tmp_path / "cat", whales=3, per_whale=2)
    photos = list(read_photos(meta).values())
    cur = Curator(Engine(PRESET, tmp_path / "cache", "cpu", 1, progress=False))
    cur.verify([pair_task(a, b) for i, a in enumerate(photos) for b in photos[i + 1:]])
    dec = decisions_csv(tmp_path / "d.csv", [("w0_0", "w1_1", "same")])
    assert run([dec, "--metadata", meta], capsys)[0] == 0
    merged = list(read_photos(tmp_path / "cat" / "metadata.decided.csv").values())
    assert {p.whale_id for p in merged} == {"whale0", "whale2"}
    again = Curator(Engine(PRESET, tmp_path / "cache", "cpu", 1, progress=False))
    rows = again.verify([pair_task(a, b) for i, a in enumerate(merged) for b in merged[i + 1:]])
    assert again.engine.verified() == 0 and again.engine.stats.features_extracted == 0
    assert all(not r["error"] for r in rows)


def new_whale_csv(path, rows: list[tuple]) -> str:
    """New-whale rows of the page's export: (query, decision, sighting), no candidate."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(EXPORT_COLUMNS)
        for q, d, sighting in rows:
            w.writerow([q, "", "", d, "", "tester", "2024-05-01T10:00:00Z", sighting])
    return str(path)


def test_new_photos_decided_a_new_whale_get_one_new_id_per_sighting(tmp_path, capsys):
    meta = catalogue(tmp_path / "cat", sizes={"whale007": 2, "whale012": 1, "other": 1})
    field = tmp_path / "field"
    a, b, c = (save_rgb(field / f"IMG_{i}.png", tiny(200 + i)) for i in range(3))
    dec = new_whale_csv(tmp_path / "d.csv", [(str(a), "new whale", "encounter e1"), (str(b), "new whale",
                                                                                     "encounter e1"),
                                             (str(c), "new whale", "")])
    rc, out, err = run([dec, "--metadata", meta, "--new-photos", field], capsys)
    assert rc == 0, err
    table = pd.read_csv(tmp_path / "cat" / "metadata.decided.csv", dtype=str, keep_default_na=False)
    added = dict(zip(table["image_id"], table["whale_id"]))
    assert added["IMG_0"] == added["IMG_1"] == "whale013" and added["IMG_2"] == "whale014"  # the pattern continued
    assert "a new whale" in out
    # Applied again to the new catalogue: nothing changes, the photos have their ids.
    rc, out, _ = run([dec, "--metadata", tmp_path / "cat" / "metadata.decided.csv", "--output",
                      tmp_path / "cat" / "again.csv"], capsys)
    assert rc == 0 and "0 changes" in out


def test_a_photo_decided_a_new_whale_and_the_same_as_a_whale_is_refused(tmp_path, capsys):
    meta = catalogue(tmp_path / "cat")
    new = save_rgb(tmp_path / "field" / "IMG_9.png", tiny(300))
    other = save_rgb(tmp_path / "field" / "IMG_10.png", tiny(301))
    dec = new_whale_csv(tmp_path / "d.csv", [(str(new), "new whale", "s1"), (str(other), "new whale", "s1")])
    same = decisions_csv(tmp_path / "s.csv", [(str(other), "whaleB_1", "same")])
    rc, _, err = run([dec, same, "--metadata", meta, "--new-photos", new.parent], capsys)
    assert rc == 2 and "decided a new whale" in err and "whale whaleB" in err and "IMG_9" in err
    blank = new_whale_csv(tmp_path / "b.csv", [(str(new), "same", "")])  # "same" needs a candidate
    rc, _, err = run([blank, "--metadata", meta, "--new-photos", new.parent], capsys)
    assert rc == 2 and "candidate_image is empty" in err and "line(s) 2" in err


def test_next_whale_ids_continue_the_catalogues_pattern():
    assert decisions.next_whale_ids({"whale008", "whale010", "x"}, 2) == ["whale011", "whale012"]
    assert decisions.next_whale_ids({"Alpha", "Beta"}, 2) == ["new-whale-1", "new-whale-2"]
    assert decisions.next_whale_ids({"B-9", "B-10"}, 1) == ["B-11"]
