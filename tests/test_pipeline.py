"""The main job end to end on generated whales: submission rules, caching, per-query independence."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_main
from scenario_factory import loo_and_split, write_layout

from matcher.challenge import layout
from matcher.challenge.run import rank_scenarios
from matcher.engine import Engine

PRESET = "sift-mnn"  # needs no weights and is fast; the DISK path is covered in test_verification/test_real_photos


def stats_line(log: str) -> tuple[int, int]:
    """(features extracted, pairs verified) from main.py's summary line."""
    m = re.search(r"(\d+) extracted\), (\d+) pairs \((\d+) verified now\)", log)
    assert m, log
    return int(m.group(1)), int(m.group(3))


@pytest.fixture(scope="module")
def whales(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """Two scenarios over 9 whales x 3 images: one leave-one-out (27 images), one query-vs-other-images."""
    root = tmp_path_factory.mktemp("whales")
    return root, loo_and_split(root, n_whales=9, n_loo=6)


def test_submission_rules_and_second_run_is_free(whales, tmp_path):
    root, meta = whales
    out1, out2, cache = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "cache"
    first = run_main(root, out1, cache)
    assert first.returncode == 0, first.stderr
    extracted, verified = stats_line(first.stderr)
    assert extracted == 27 and verified > 0

    sub = pd.read_csv(out1, dtype={"query_id": str, "database_image_id": str})
    assert list(sub.columns) == ["query_id", "database_image_id", "score"]
    assert sub["score"].between(0, 1).all()
    assert set(sub["query_id"]) == {f"loo-{q}" for q in meta.groupby("whale_id")["image_id"].first()[:6]} | {
        f"split-{q}" for q in meta.groupby("whale_id")["image_id"].first()[6:]}
    counts = sub.groupby("query_id").size()
    assert counts[[q for q in counts.index if q.startswith("loo-")]].eq(20).all()  # 26 candidates, capped at 20
    assert counts[[q for q in counts.index if q.startswith("split-")]].eq(18).all()  # whole database of 18
    for qid, rows in sub.groupby("query_id"):
        qimg = qid.split("-", 1)[1]
        assert qimg not in set(rows["database_image_id"])  # never the query's own image
        assert rows["score"].is_monotonic_decreasing  # best first
        whale = qimg[:5]
        top2 = rows["database_image_id"].iloc[:2].str[:5].tolist()
        assert top2 == [whale, whale], (qid, rows.head(3))  # the two other views of the whale come first

    second = run_main(root, out2, cache)
    assert second.returncode == 0, second.stderr
    assert stats_line(second.stderr) == (0, 0)  # nothing extracted or verified again
    assert out1.read_bytes() == out2.read_bytes()


def test_repeated_query_rows_get_one_answer(whales, tmp_path):
    root, meta = whales
    dup = tmp_path / "dup"
    ids = meta["image_id"].tolist()
    write_layout(dup, meta, {"s": ([ids[0], ids[0], ids[3]], ids[:12])},
                 query_ids={"s": ["q0", "q0", "q1"]})
    for p in (root / "images").iterdir():
        (dup / "images").mkdir(exist_ok=True)
        (dup / "images" / p.name).symlink_to(p)
    res = run_main(dup, tmp_path / "out.csv", tmp_path / "cache")
    assert res.returncode == 0, res.stderr
    assert "repeated query row" in res.stderr
    sub = pd.read_csv(tmp_path / "out.csv", dtype=str)
    assert sub.groupby("query_id").size().to_dict() == {"q0": 11, "q1": 11}


def test_query_ranking_independent_of_other_queries_and_scenarios(whales, tmp_path):
    root, meta = whales
    full = layout.load(root)
    sub_full, _ = rank_scenarios(full, Engine(PRESET, tmp_path / "c1", "cpu", progress=False))

    alone = layout.load(root)
    target = alone.scenarios[0]
    alone.scenarios = [target]
    target.queries = target.queries.iloc[[2]].reset_index(drop=True)
    sub_alone, _ = rank_scenarios(alone, Engine(PRESET, tmp_path / "c2", "cpu", progress=False))

    qid = target.queries["query_id"].iloc[0]
    expected = sub_full[sub_full["query_id"] == qid].reset_index(drop=True)
    pd.testing.assert_frame_equal(sub_alone.reset_index(drop=True), expected)


def test_malformed_csv_stops_with_a_message_naming_the_file(whales, tmp_path):
    root, meta = whales
    bad = tmp_path / "bad"
    write_layout(bad, meta, {"s": (["img000"], ["img001"])})
    (bad / "queries" / "s.csv").write_text("query,image\nq,img000\n")
    res = run_main(bad, tmp_path / "out.csv", tmp_path / "cache")
    assert res.returncode == 2
    assert "queries/s.csv" in res.stderr and "missing column" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "out.csv").exists()


def test_unreadable_image_is_ranked_around(whales, tmp_path):
    root, meta = whales
    broken = tmp_path / "broken"
    ids = meta["image_id"].tolist()
    write_layout(broken, meta, {"s": ([ids[0]], ids[:9])})
    (broken / "images").mkdir()
    for p in (root / "images").iterdir():
        (broken / "images" / p.name).write_bytes(p.read_bytes())
    (broken / "images" / f"{ids[4]}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    res = run_main(broken, tmp_path / "out.csv", tmp_path / "cache")
    assert res.returncode == 0, res.stderr
    assert ids[4] in res.stderr and "unusable image" in res.stderr
    sub = pd.read_csv(tmp_path / "out.csv", dtype={"query_id": str, "database_image_id": str})
    assert len(sub) == 8  # every other database image is answered, the broken one too
    assert sub.loc[sub["database_image_id"] == ids[4], "score"].tolist() == [0.0]
    assert sorted(sub["database_image_id"].iloc[:2]) == [ids[1], ids[2]]  # its own whale first
