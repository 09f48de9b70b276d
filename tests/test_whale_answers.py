"""Whale-level answers: evidence combined per whale and per sighting, P(new whale) and its model file, sightings."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from matcher.curation import new_whale, sightings, whale_evidence
from matcher.curation.new_whale import FEATURES, Judge, NewWhaleModel
from matcher.errors import WeightsError
from matcher.io.catalogue import Photo


def pairs(rows):
    return pd.DataFrame(rows, columns=list(whale_evidence.PAIR_COLUMNS))


def test_a_whale_is_ranked_by_its_best_pair_and_sums_are_there_to_measure():
    table = pairs([("q", "a1", "A", 30.0, 29), ("q", "a2", "A", 20.0, 19), ("q", "a3", "A", 4.0, 3),
                   ("q", "b1", "B", 40.0, 39), ("q", "c1", "C", 1.0, 0)])
    r = whale_evidence.whale_ranking(table)
    assert r["whale"].tolist() == ["B", "A", "C"] and r["rank"].tolist() == [1, 2, 3]
    assert r["evidence"].tolist() == [40.0, 30.0, 1.0] and r["best_candidate"].iloc[1] == "a1"
    assert r["candidates"].iloc[1] == 3 and r["score"].iloc[0] == pytest.approx(40 / 60)
    halved = whale_evidence.whale_ranking(table, decay=0.5)  # the k-th best pair weighs 0.5 ** (k - 1)
    assert halved["whale"].tolist() == ["A", "B", "C"] and halved["evidence"].iloc[0] == pytest.approx(30 + 10 + 1)


def test_a_sighting_takes_each_whales_best_pair_over_its_photos():
    table = pairs([("p1", "a1", "A", 25.0, 24), ("p1", "b1", "B", 30.0, 29),
                   ("p2", "a2", "A", 32.0, 31), ("p2", "b1", "B", 3.0, 2)])
    r = whale_evidence.whale_ranking(table)
    assert r["whale"].tolist() == ["A", "B"] and r["photos"].tolist() == [2, 2]
    assert r["evidence"].iloc[0] == 32.0 and r["best_photo"].iloc[0] == "p2" and r["best_candidate"].iloc[0] == "a2"
    one = whale_evidence.whale_ranking(table[table["photo"] == "p1"])
    assert one["whale"].iloc[0] == "B"  # the first photo alone would have said B
    summed = whale_evidence.whale_ranking(table, photo_decay=1.0)
    assert summed["evidence"].tolist() == [57.0, 33.0]


def test_an_empty_search_ranks_no_whale():
    r = whale_evidence.whale_ranking(pairs([]))
    assert r.empty and list(r.columns) == ["rank", *whale_evidence.WHALE_COLUMNS]
    assert new_whale.feature_row(pairs([])) == [0.0, 0.0, 0.0, 0.0]


def test_the_new_whale_features_read_the_best_whales_and_the_level_of_chance_matches():
    table = pairs([("p1", f"x{i}", f"W{i}", float(i), i) for i in range(1, 11)] + [("p1", "a1", "A", 50.0, 49)])
    best, second, chance, photos = new_whale.feature_row(table)
    assert best == pytest.approx(np.log1p(50)) and second == pytest.approx(np.log1p(10))
    assert chance == pytest.approx(np.log1p(np.quantile([*range(1, 11), 50], 0.9))) and photos == 0.0


def model(tmp_path, prior=0.4):
    m = NewWhaleModel("key-1", [1.0] * 4, [2.0] * 4, [-2.0, 0.5, -1.0, 0.0], 0.3, prior,
                      {"fitted_with": {"k": 200}})
    path = tmp_path / "new-whale.json"
    m.save(path)
    return m, path


def test_p_new_whale_falls_as_the_best_whale_gets_stronger_and_follows_the_base_rate(tmp_path):
    m, path = model(tmp_path)
    loaded = NewWhaleModel.load(path)
    rows = [[np.log1p(e), np.log1p(e / 3), np.log1p(e * 0.8), 0.0] for e in (0.0, 10.0, 40.0, 200.0)]
    p = loaded.probability(rows)
    assert np.all(np.diff(p) < 0) and np.allclose(p, m.probability(rows))
    assert np.all(loaded.probability(rows, prior=0.1) < p) and np.all(loaded.probability(rows, prior=0.9) > p)
    even = loaded.probability(rows, prior=0.5)
    z = 0.3 + ((np.array(rows) - 1.0) / 2.0) @ np.array([-2.0, 0.5, -1.0, 0.0])
    assert np.allclose(even, 1 / (1 + np.exp(-z)))


def test_a_model_file_edited_or_of_another_kind_is_refused_naming_it(tmp_path):
    _, path = model(tmp_path)
    doc = json.loads(path.read_text())
    doc["intercept"] = 5.0
    path.write_text(json.dumps(doc))
    with pytest.raises(WeightsError, match=f"{path}.*checksum"):
        NewWhaleModel.load(path)
    path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(WeightsError, match="not a whalematch-new-whale file"):
        NewWhaleModel.load(path)
    path.write_text("{ not json")
    with pytest.raises(WeightsError, match=str(path)):
        NewWhaleModel.load(path)


def test_the_judge_says_which_base_rate_and_blank_without_a_model(tmp_path):
    m, _ = model(tmp_path)
    table = pairs([("q", "a1", "A", 50.0, 49)])
    judge = Judge(m)
    assert 0 < judge.probability(table) < 1 and "base rate of 0.40" in judge.line()
    assert "--new-whale-prior" in Judge(m, prior=0.2).line() and Judge(m, prior=0.2).base_rate == 0.2
    blank = Judge(None, why="no file")
    assert blank.probability(table) is None and "left blank: no file" in blank.line()


def test_the_shipped_model_if_any_fits_the_default_preset():
    from matcher import presets
    from matcher.engine import Engine

    engine = Engine(presets.DEFAULT_PIPELINE, None, "cpu", progress=False)
    judge = new_whale.judge_for(engine.name, engine.settings_key)
    if judge.model is None:
        pytest.skip(judge.why)
    assert judge.model.settings_key == engine.settings_key and len(judge.model.coef) == len(FEATURES)
    assert judge.model.info["out_of_fold"]["sighting"]["auc"] > 0.5


def test_new_photos_are_grouped_into_sightings():
    ps = [Photo("a", "a.jpg", encounter_id="e1", date="2020-01-01"), Photo("b", "b.jpg", encounter_id="e1"),
          Photo("c", "c.jpg", date="2020-01-01"), Photo("d", "d.jpg")]
    by_enc = sightings.group(ps, "encounter")
    assert [(s.id, [p.id for p in s.photos]) for s in by_enc] == [("encounter e1", ["a", "b"]), ("c", ["c"]),
                                                                  ("d", ["d"])]
    by_date = sightings.group(ps, "date")
    assert [[p.id for p in s.photos] for s in by_date] == [["a", "c"], ["b"], ["d"]]
    assert [len(s.photos) for s in sightings.group(ps, "none")] == [1, 1, 1, 1]


def test_a_sighting_is_identified_from_all_its_photos():
    whale_of = {"a1": "A", "a2": "A", "b1": "B"}
    rows = {"p1": [{"image_a": "p1", "image_b": "b1", "strength": 30.0, "n_inliers": 29},
                   {"image_a": "p1", "image_b": "a1", "strength": 25.0, "n_inliers": 24}],
            "p2": [{"image_a": "p2", "image_b": "a2", "strength": 33.0, "n_inliers": 32},
                   {"image_a": "p2", "image_b": "x9", "strength": 99.0, "n_inliers": 98}]}  # x9: no whale id
    s = sightings.Sighting("enc", [Photo("p1", "p1.jpg"), Photo("p2", "p2.jpg"), Photo("p3", "p3.jpg")])
    found = sightings.identify(s, rows, whale_of, None)
    assert found.searched == ["p1", "p2"] and found.ranking["whale"].tolist() == ["A", "B"]  # p1 alone: B
    row = found.row("out/enc")
    assert row["best_whale"] == "A" and row["second_whale"] == "B" and row["photos"] == 3 and row["p_new_whale"] is None
