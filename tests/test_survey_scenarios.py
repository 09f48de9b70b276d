"""The large development benchmark: databases of whole survey days, built from a generated catalogue (and from
the real one when present)."""

from __future__ import annotations

import pandas as pd
import pytest
from PIL import Image

from matcher.challenge import survey_scenarios as survey
from matcher.challenge.scenarios import SPECS, read_labelled_catalogue


def write_catalogue(root):
    """30 whales over 9 survey days (3 a year); each day sees two thirds of them from the top; on the 2017 days
    some are also photographed from the side."""
    (root / "images").mkdir(parents=True)
    rows = []
    for year in (2017, 2018, 2019):
        for d in range(3):
            day = f"{year}-08-{10 + d:02d}"
            for w in range(30):
                if (w + d + year) % 3 == 0:
                    continue
                views = ["top"] + (["left"] if year == 2017 and w % 3 == 0 else [])
                for v in views:
                    image_id = f"img{len(rows):04d}"
                    Image.new("RGB", (30, 20), (w * 8, d * 60, 90)).save(root / "images" / f"{image_id}.jpg")
                    rows.append((image_id, f"images/{image_id}.jpg", 20, 30, v, day, f"{day} 12:00:00",
                                 f"whale{w:02d}", f"whale{w:02d}-{day}"))
    cols = "image_id,path,height,width,viewpoint,date,timestamp,whale_id,encounter_id".split(",")
    pd.DataFrame(rows, columns=cols).to_csv(root / "metadata.csv", index=False)
    return root


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    root = write_catalogue(tmp_path_factory.mktemp("survey"))
    return root, read_labelled_catalogue(root)


def test_every_database_is_made_of_whole_days_of_its_scope(catalogue):
    _, cat = catalogue
    scenarios = survey.build(cat, seed=3, max_queries=8, max_database=50, per_whale=2)
    assert [s.scenario_type for s in scenarios] == list(SPECS)
    by_id = cat.set_index("image_id")
    for s in scenarios:
        spec = SPECS[s.scenario_type]
        db = by_id.loc[s.database]
        days = set(db["date"])
        whole = cat[cat["date"].isin(days) & cat["viewpoint"].isin(spec.db_views)]
        assert set(whole["image_id"]) == set(s.database), s.scenario_type  # every photo of those days, no other
        assert set(db["viewpoint"]) <= set(spec.db_views)
        if spec.db_year is not None:
            scope = cat[(cat["year"] == spec.db_year) & cat["viewpoint"].isin(spec.db_views)]
            assert set(scope["image_id"]) == set(s.database), s.scenario_type  # the whole year
        else:
            assert len(s.database) <= 50 and len(days) >= 2
        queries = by_id.loc[s.queries["query_image_id"]]
        assert set(queries["viewpoint"]) <= set(spec.query_views)
        if spec.query_year is not None:
            assert set(queries["year"]) == {spec.query_year}
        assert queries["whale_id"].value_counts().max() <= 2 and len(queries) <= 8
        for q, w in zip(queries.index, queries["whale_id"]):
            others = [d for d in s.database if d != q and by_id.at[d, "whale_id"] == w]
            assert others, (s.scenario_type, q)  # every query has a true match
            assert (q in set(s.database)) == spec.leave_one_out


def test_the_same_seed_builds_the_same_benchmark_and_the_day_statistics_count(catalogue):
    _, cat = catalogue
    a = survey.build(cat, seed=1, max_queries=6, max_database=50)
    b = survey.build(cat, seed=1, max_queries=6, max_database=50)
    assert [(s.queries.to_dict("list"), s.database) for s in a] == [(s.queries.to_dict("list"), s.database) for s in b]
    stats = survey.day_statistics(a, cat).set_index("type")
    by_id = cat.set_index("image_id")
    s = next(x for x in a if x.scenario_type == "top_2018")
    same_day_other = []
    for q in s.queries["query_image_id"]:
        same_day_other.append(sum(by_id.at[d, "date"] == by_id.at[q, "date"] and
                                  by_id.at[d, "whale_id"] != by_id.at[q, "whale_id"] for d in s.database if d != q))
    assert stats.at["top_2018", "other_whales_same_day"] == pytest.approx(sum(same_day_other) / len(same_day_other))
    assert stats.at["top_2018_to_2017", "true_same_day"] == 0  # across years nothing shares a day
    assert stats.at["top_2018", "days"] == 3


def test_the_command_writes_the_layout_and_labels(catalogue, tmp_path, capsys):
    root, _ = catalogue
    rc = survey.main(["--catalogue", str(root), "--out", str(tmp_path / "large"), "--labels",
                      str(tmp_path / "labels.csv"), "--max-queries", "5", "--max-database", "50"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "other_whales_same_day" in out and "query x database pairs" in out
    labels = pd.read_csv(tmp_path / "labels.csv")
    assert len(labels) and (tmp_path / "large" / "query_scenarios.csv").is_file()
    assert len(list((tmp_path / "large" / "images").iterdir())) == len(pd.read_csv(tmp_path / "large" /
                                                                                   "metadata.csv"))


def test_on_the_real_photos_a_query_day_holds_many_other_whales(belugas):
    cat = read_labelled_catalogue(belugas)
    scenarios = survey.build(cat)
    stats = survey.day_statistics(scenarios, cat).set_index("type")
    assert 1000 <= stats.at["top_all_loo", "database"] <= survey.MAX_DATABASE
    for t in ("top_2017", "top_2018", "top_2019", "lateral_to_top"):
        assert stats.at[t, "other_whales_same_day"] > 50, t  # the date alone no longer tells whales apart
    assert (stats["queries"] == survey.MAX_QUERIES).all()
