"""The ranker of a query's verified candidates: its relative features, the scenario kinds, its model file, and
its use by the cascade (main.py's ranking is the ranker's order; auto uses it only for the kinds it won)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from matcher.cascade import ranker as ranking
from matcher.errors import WeightsError
from matcher.io.catalogue import Photo
from matcher.io.tree_file import content_sha256
from matcher.pairs.model import feature_names as pair_features

PRESET = "sift-mnn"


def test_relative_features_by_hand():
    s = np.array([10.0, 30.0, 20.0, 30.0, 5.0])
    sd = np.array([1, 0, 1, np.nan, 1.0])  # NaN: the date unknown, not the query's day
    f = ranking.relative_features(s, sd)
    col = {n: f[:, i] for i, n in enumerate(ranking.RELATIVE)}
    assert col["s_rank"].tolist() == [4, 1, 3, 1, 5]  # ties share the best rank
    assert col["s_rel_max"].tolist() == pytest.approx([1 / 3, 1, 2 / 3, 1, 1 / 6])
    assert col["s_minus_med"].tolist() == pytest.approx([-10, 10, 0, 10, -15])
    assert col["s_over_q90"][1] == pytest.approx(1.0)  # the 90th percentile of these is 30
    assert (col["n_cand"] == 5).all() and (col["n_same_day"] == 3).all() and col["share_same_day"][0] == 0.6
    assert col["s_rel_max_sd"].tolist()[0] == pytest.approx(0.5) and np.isnan(col["s_rel_max_sd"][1])
    assert col["s_rank_sd"][[0, 2, 4]].tolist() == [2, 1, 3]
    assert col["s_rel_max_od"].tolist() == pytest.approx([1 / 3, 1, 2 / 3, 1, 1 / 6])  # the best other-day: 30
    perm = np.array([3, 0, 4, 1, 2])  # a function of the set: the order of the candidates does not matter
    np.testing.assert_array_equal(ranking.relative_features(s[perm], sd[perm]), f[perm])
    none = ranking.relative_features(s, np.full(5, np.nan))
    assert (none[:, ranking.RELATIVE.index("n_same_day")] == 0).all()


def test_scenario_kinds_from_views_and_years():
    def m(view, date):
        return {"viewpoint": view, "date": date}

    y17, y18 = m("top", "2017-08-01"), m("top", "2018-08-01")
    assert ranking.scenario_kind(y18, [y18, m("top", "2018-08-09")]) == "within_year"
    assert ranking.scenario_kind(y18, [y17, y17]) == "across_years"
    assert ranking.scenario_kind(y18, [y17, y18]) == "all_years"
    assert ranking.scenario_kind(y17, [y18]) == "unknown"  # an earlier query against a later database
    assert ranking.scenario_kind(y17, [m("left", "2017-08-01"), m("right", "2017-08-02")]) == "top_to_lateral"
    assert ranking.scenario_kind(m("right", "2017-08-01"), [y17]) == "lateral_to_top"
    assert ranking.scenario_kind(y17, [y17, m("left", "2017-08-01")]) == "unknown"  # mixed views
    assert ranking.scenario_kind(m("top", ""), [y17]) == "unknown" and ranking.scenario_kind(None, [y17]) == "unknown"
    assert set(ranking.TYPE_KINDS.values()) <= set(ranking.KINDS)


def toy_ranker(rows: int = 400, seed: int = 0) -> ranking.Ranker:
    """A ranker trained on random groups where the candidate photographed on the query's day is the match."""
    import lightgbm

    rng = np.random.default_rng(seed)
    names = pair_features(True)
    x, y, groups = [], [], []
    for _ in range(rows // 10):
        base = np.full((10, len(names)), np.nan)
        base[:, names.index("strength")] = rng.random(10) * 20
        same = np.zeros(10)
        same[int(rng.integers(10))] = 1
        base[:, names.index("same_date")] = same
        x.append(ranking.query_rows(base))
        y.append(same.astype(int))
        groups.append(10)
    booster = lightgbm.train({"objective": "lambdarank", "verbose": -1, "min_data_in_leaf": 5, "num_threads": 1},
                             lightgbm.Dataset(np.vstack(x), np.concatenate(y), group=groups), 20)
    return ranking.Ranker(ranking.feature_names(), "k", booster.model_to_string(), {"kinds": ["within_year"]})


def test_the_model_file_round_trips_and_refuses_what_it_cannot_use(tmp_path):
    pytest.importorskip("lightgbm")
    model = toy_ranker()
    model.save(tmp_path / "r.json")
    again = ranking.Ranker.load(tmp_path / "r.json")
    base = np.full((4, len(pair_features(True))), np.nan)
    base[:, 0] = [3, 2, 1, 0]
    base[:, pair_features(True).index("same_date")] = [0, 0, 1, 0]
    scores = again.scores(base)
    assert scores.argmax() == 2 and ((0 < scores) & (scores < 1)).all() and again.kinds == ["within_year"]
    doc = json.loads((tmp_path / "r.json").read_text())
    for name, change in [("features", lambda d: d.update(features=d["features"][:-1])),
                         ("kinds", lambda d: d["info"].update(kinds=["on_tuesdays"])),
                         ("trees", lambda d: d.update(lightgbm_model=d["lightgbm_model"][:500]))]:
        bad = json.loads(json.dumps(doc))
        change(bad)
        bad["sha256"] = content_sha256(bad)
        (tmp_path / f"{name}.json").write_text(json.dumps(bad))
        with pytest.raises(WeightsError, match=rf"{name}\.json: cannot load the ranker"):
            ranking.Ranker.load(tmp_path / f"{name}.json")
    doc["info"]["note"] = "edited after it was written"
    (tmp_path / "edited.json").write_text(json.dumps(doc))
    with pytest.raises(WeightsError, match="does not match its own SHA-256"):
        ranking.Ranker.load(tmp_path / "edited.json")
    with pytest.raises(ranking.NoRanker):
        ranking.for_preset(PRESET, "k")


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A generated challenge, an engine with its verdicts, and a ranker trained on it (train_ranker's groups)."""
    pytest.importorskip("lightgbm")
    from scenario_factory import loo_and_split

    from matcher.engine import Engine
    from training import train_ranker

    tmp = tmp_path_factory.mktemp("ranker")
    root = tmp / "data"
    meta = loo_and_split(root, n_whales=8, n_loo=5, seed=11)
    photos = {r.image_id: Photo(r.image_id, root / r.path, r.viewpoint, r.whale_id, r.date)
              for r in meta.itertuples()}
    engine = Engine(PRESET, tmp / "cache", "cpu", progress=False)
    groups = train_ranker.build_groups([root], engine, photos, seed=0)
    model = ranking.Ranker(ranking.feature_names(), engine.settings_key, train_ranker.fit(groups, 0),
                           {"kinds": ["within_year"]})
    model.save(tmp / "ranker.json")
    return root, tmp, engine, photos, model


def ranked(sub: pd.DataFrame) -> dict[str, list[str]]:
    return {q: g["database_image_id"].tolist() for q, g in sub.groupby("query_id", sort=False)}


def test_main_ranks_each_query_in_the_rankers_order(toy_run, capsys, restore_logging):
    from conftest import load_main

    from matcher.challenge import layout
    from matcher.engine import canonical
    from matcher.pairs.model import feature_row

    root, tmp, engine, photos, model = toy_run
    entry = load_main()
    out = tmp / "ranked.csv"
    args = ["--data-dir", str(root), "--output", str(out), "--cache-dir", str(tmp / "cache"), "--preset", PRESET,
            "--quiet", "--time-budget", "none", "--stage2", "none", "--rerank", "none",
            "--ranker", str(tmp / "ranker.json")]
    assert entry.main([*args, "--pair-score", "ranker"]) == 0
    err = capsys.readouterr().err
    assert "queries ranked by it" in err
    sub = pd.read_csv(out, dtype=str)
    data = layout.load(root)
    paths, _ = data.image_paths(data.image_ids())
    shas, _ = engine.hash_images(paths)
    names = pair_features(True)
    meta = data.photo_metadata()
    for qid, q, _, database in data.query_tasks():
        cands = [c for c in database if c != q]
        verdicts = engine.verdicts({canonical(shas[q], shas[c]) for c in cands})
        base = np.array([feature_row(verdicts[canonical(shas[q], shas[c])], meta[q], meta[c], names) for c in cands])
        scores = model.scores(base)
        strengths = np.array([verdicts[canonical(shas[q], shas[c])]["strength"] for c in cands])
        expected = [cands[i] for i in np.lexsort((-strengths, -scores))][:20]  # ties by strength, as the cascade
        assert ranked(sub)[qid] == expected, qid
    # auto: the ranker only for the kinds it won (these photos share one year: within_year) ...
    assert entry.main([*args, "--pair-score", "auto", "--output", str(tmp / "auto.csv")]) == 0
    assert ranked(pd.read_csv(tmp / "auto.csv", dtype=str)) == ranked(sub)
    # ... and the strength elsewhere
    model.info["kinds"] = ["across_years"]
    model.save(tmp / "other-kinds.json")
    assert entry.main([*args, "--pair-score", "auto", "--ranker", str(tmp / "other-kinds.json"), "--output",
                       str(tmp / "auto2.csv")]) == 0
    err = capsys.readouterr().err
    assert "0 queries ranked by it" in err and "by the pair score (within_year: kinds where it did not win" in err
    assert entry.main([*args, "--pair-score", "strength", "--output", str(tmp / "strength.csv")]) == 0
    by_strength = ranked(pd.read_csv(tmp / "strength.csv", dtype=str))
    assert ranked(pd.read_csv(tmp / "auto2.csv", dtype=str)) == by_strength
    assert by_strength != ranked(sub)  # the two orders differ here: the comparisons above tell them apart


def test_rerank_on_the_top_candidates_only(toy_run):
    """The graph of each query's top N candidates: with N at least the database, the whole graph's ranking; with
    a small N, fewer database pairs verified."""
    from matcher.cascade import CascadeSettings, run_cascade
    from matcher.challenge import layout
    from matcher.challenge.run import submission_rows
    from matcher.engine import Engine

    root, tmp, _, _, _ = toy_run
    data = layout.load(root)
    subs, pairs = {}, {}
    for top in (None, 100, 3):
        engine = Engine(PRESET, None, "cpu", progress=False)  # no cache: every verdict counted
        shas, _ = engine.prepare(*data.image_paths(data.image_ids()))
        result = run_cascade(engine, data.query_tasks(), shas, CascadeSettings(stage2="none", rerank=True,
                                                                               rerank_top=top, pair_score="strength"))
        subs[top], pairs[top] = submission_rows(data, result), engine.verified()
    assert subs[None].equals(subs[100]) and pairs[None] == pairs[100]
    assert pairs[3] < pairs[None]


def test_direct_rows_rank_each_group_by_its_scores_and_classifiers_fit_the_same_rows(toy_run):
    """train_ranker's pair classifiers rank the very rows the ranker is trained on: each query's candidates by
    score, at most 20, scores strictly decreasing; the classifier with the relative features reads them all."""
    from training import train_ranker

    root, tmp, engine, photos, _ = toy_run
    groups = train_ranker.build_groups([root], engine, photos, seed=0, blank_share=0.0)
    assert not groups.blanked.any() and len(groups.candidate) == len(groups.rows)
    strength = train_ranker.strength_score(groups, engine)
    sub = train_ranker.direct_rows(groups, strength)
    for q, g in sub.groupby("query_id", sort=False):
        idx = np.flatnonzero(groups.query == f"{root.name}/{q}")
        best = groups.candidate[idx[np.argsort(-strength[idx], kind="stable")]][: len(g)]
        assert g["database_image_id"].tolist() == best.tolist() and len(g) <= 20
        scores = g["score"].to_numpy()
        assert (np.diff(scores[scores > 0]) < 0).all()  # strictly decreasing; only rows without evidence tie at 0
        by_id = dict(zip(groups.candidate[idx], strength[idx]))
        assert all((sc > 0) == (by_id[c] > 0) for c, sc in zip(g["database_image_id"], scores))
    full = train_ranker.fit_classifier(groups, 0)
    assert full.num_feature() == len(ranking.feature_names())
    pair_only = train_ranker.fit_classifier(groups, 0, len(ranking.feature_names()) - len(ranking.RELATIVE))
    assert pair_only.num_feature() == len(ranking.feature_names()) - len(ranking.RELATIVE)
