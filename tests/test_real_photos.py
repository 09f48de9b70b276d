"""Ranking real beluga photos (skipped, with the reason, when ../shared/belugas is absent)."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
from scenario_factory import write_layout

from matcher.challenge import layout
from matcher.challenge.metric import mean_average_precision
from matcher.challenge.run import rank_scenarios
from matcher.engine import Engine


def test_small_real_scenario_scores_well_above_random(belugas, tmp_path):
    meta = pd.read_csv(belugas / "metadata.csv", dtype=str)
    top = meta[(meta["viewpoint"] == "top") & meta["date"].str.startswith("2018")]
    sizes = top["whale_id"].value_counts()
    rng = np.random.default_rng(7)
    whales = rng.choice(sorted(sizes[sizes.between(3, 6)].index), size=8, replace=False)
    chosen = top[top["whale_id"].isin(whales)].groupby("whale_id").head(4)
    for rel in chosen["path"]:
        (tmp_path / "d" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(belugas / rel, tmp_path / "d" / rel)
    queries = chosen.groupby("whale_id")["image_id"].first().tolist()
    database = chosen["image_id"].tolist()
    write_layout(tmp_path / "d", chosen[["image_id", "path", "height", "width", "viewpoint", "date"]],
                 {"real": (queries, database)})

    sub, _ = rank_scenarios(layout.load(tmp_path / "d"), Engine("disk-mnn", tmp_path / "cache", "cpu", progress=False))

    whale_of = dict(zip(chosen["image_id"], chosen["whale_id"]))
    labels = pd.DataFrame(
        [(f"real-{q}", d) for q in queries for d in database if d != q and whale_of[d] == whale_of[q]],
        columns=["query_id", "database_image_id"],
    )
    score, _ = mean_average_precision(sub, labels)
    # Random rankings of the same database, for the same queries: the chance level.
    chance = []
    for seed in range(50):
        r = np.random.default_rng(seed)
        rows = [(f"real-{q}", d, float(s)) for q in queries
                for d, s in zip(r.permutation([d for d in database if d != q]), np.linspace(1, 0, len(database) - 1))]
        chance.append(mean_average_precision(pd.DataFrame(rows, columns=sub.columns), labels)[0])
    assert score > max(0.5, 2 * np.mean(chance)), (score, np.mean(chance))
