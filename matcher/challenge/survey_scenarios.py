"""Development scenarios at the challenge's scale: databases made of whole survey days.

The quick development set (:mod:`matcher.challenge.scenarios`) samples databases of 120 photos across
years, so a query's own day holds few photos of other whales and "taken the same day" nearly means
"the same whale". The challenge's databases were all the photos of the scenario's scope (a year, every
year, 2017's flanks), up to about 1,500, made of whole survey days, where a query's day holds dozens
of other whales. This builder makes the same kind of scenario from a labelled catalogue:

* a database is **every** photo of its views taken on its days: the days of the scenario's year
  (``top_2018``: every top view of 2018), for the all-years type a seeded draw of whole days up to
  ``max_database`` photos (the challenge's largest databases held about 1,500), for the flank types
  the days of 2017;
* queries are drawn (seeded) among the photos of the query views and year that have another photo of
  their whale in the database, at most ``per_whale`` from one whale and ``max_queries`` in all;
* per type, :func:`day_statistics` says what the date can tell: the query's true matches on its own day
  and the database photos of other whales on that day.

Usage: python -m matcher.challenge.survey_scenarios --catalogue ../shared/belugas --out data/dev-large
       --labels data/dev-large_labels.csv [--seed 0] [--max-queries 50] [--max-database 1500]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError, WhaleMatchError
from .layout import Scenario
from .scenarios import SPECS, Spec, read_labelled_catalogue, write_dev_set

MAX_QUERIES = 50
MAX_DATABASE = 1500  # the challenge's largest databases held about this many photos
PER_WHALE = 2  # queries of one whale per scenario, at most


def database_days(catalogue: pd.DataFrame, spec: Spec, rng: np.random.Generator, max_database: int) -> list[str]:
    """The survey days whose photos (of the database views) form the database: every day of ``spec.db_year``, or
    for a scenario over all years a seeded draw of whole days while they fit in ``max_database`` photos."""
    pool = catalogue[catalogue["viewpoint"].isin(spec.db_views)]
    if spec.db_year is not None:
        pool = pool[pool["year"] == spec.db_year]
    sizes = pool.groupby("date").size()
    if spec.db_year is not None:
        return sorted(sizes.index)
    days, total = [], 0
    for day in rng.permutation(sorted(sizes.index)):
        if total + sizes[day] <= max_database:
            days.append(str(day))
            total += int(sizes[day])
    return sorted(days)


def pick_queries(catalogue: pd.DataFrame, spec: Spec, database: list[str], rng: np.random.Generator,
                 max_queries: int, per_whale: int) -> list[str]:
    """Seeded queries of the query views and year with another photo of their whale in the database."""
    whale = dict(zip(catalogue["image_id"], catalogue["whale_id"]))
    in_db = pd.Series([whale[i] for i in database]).value_counts()
    pool = catalogue[catalogue["viewpoint"].isin(spec.query_views)]
    if spec.query_year is not None:
        pool = pool[pool["year"] == spec.query_year]
    if spec.leave_one_out:
        pool = pool[pool["image_id"].isin(set(database))]
    need = 2 if spec.leave_one_out else 1
    pool = pool[pool["whale_id"].map(lambda w: in_db.get(w, 0) >= need)]
    picked: list[str] = []
    for w in rng.permutation(sorted(pool["whale_id"].unique())):
        if len(picked) >= max_queries:
            break
        photos = sorted(pool.loc[pool["whale_id"] == w, "image_id"])
        n = min(per_whale, len(photos), max_queries - len(picked))
        picked += sorted(rng.choice(photos, size=n, replace=False).tolist())
    return picked


def build(catalogue: pd.DataFrame, seed: int = 0, max_queries: int = MAX_QUERIES, max_database: int = MAX_DATABASE,
          per_whale: int = PER_WHALE) -> list[Scenario]:
    """One scenario per type of :data:`~matcher.challenge.scenarios.SPECS` (types without a query skipped)."""
    if max_queries < 1 or max_database < 2 or per_whale < 1:
        raise ValueError("max_queries, per_whale must be >= 1 and max_database >= 2")
    rng = np.random.default_rng(seed)
    scenarios = []
    for scenario_type, spec in SPECS.items():
        days = set(database_days(catalogue, spec, rng, max_database))
        db = catalogue[catalogue["viewpoint"].isin(spec.db_views) & catalogue["date"].isin(days)]
        database = sorted(db["image_id"])
        queries = pick_queries(catalogue, spec, database, rng, max_queries, per_whale)
        if not queries:
            continue
        sid = f"large{len(scenarios) + 1:02d}"
        table = pd.DataFrame({"query_id": [f"{sid}-{q}" for q in queries], "query_image_id": queries})
        scenarios.append(Scenario(sid, table, [str(i) for i in rng.permutation(database)], scenario_type))
    return scenarios


def day_statistics(scenarios: Sequence[Scenario], catalogue: pd.DataFrame) -> pd.DataFrame:
    """Per scenario: database size and days, whales, and per query (means) the true matches, those on the query's
    own day, and the database photos of other whales on that day: what the date alone can tell apart."""
    whale = dict(zip(catalogue["image_id"], catalogue["whale_id"]))
    date = dict(zip(catalogue["image_id"], catalogue["date"]))
    rows = []
    for s in scenarios:
        db = list(s.database)
        true, same_day_true, same_day_other = [], [], []
        for q in s.queries["query_image_id"]:
            others = [d for d in db if d != q]
            true.append(sum(whale[d] == whale[q] for d in others))
            same_day_true.append(sum(whale[d] == whale[q] and date[d] == date[q] for d in others))
            same_day_other.append(sum(whale[d] != whale[q] and date[d] == date[q] for d in others))
        rows.append({"scenario": s.scenario_id, "type": s.scenario_type, "queries": len(s.queries),
                     "database": len(db), "days": len({date[d] for d in db}), "whales": len({whale[d] for d in db}),
                     "true_per_query": float(np.mean(true)), "true_same_day": float(np.mean(same_day_true)),
                     "other_whales_same_day": float(np.mean(same_day_other))})
    return pd.DataFrame(rows)


def make(catalogue_dir: str | Path, out_dir: str | Path, labels_path: str | Path, seed: int = 0,
         max_queries: int = MAX_QUERIES, max_database: int = MAX_DATABASE, per_whale: int = PER_WHALE
         ) -> pd.DataFrame:
    """read + build + write (layout under ``out_dir``, labels in ``labels_path``); the day statistics."""
    catalogue = read_labelled_catalogue(catalogue_dir)
    scenarios = build(catalogue, seed, max_queries, max_database, per_whale)
    if not scenarios:
        raise DataError(f"{Path(catalogue_dir) / 'metadata.csv'}: no scenario can be built (no whale seen twice)")
    write_dev_set(scenarios, catalogue, catalogue_dir, out_dir, labels_path)
    return day_statistics(scenarios, catalogue)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m matcher.challenge.survey_scenarios",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--catalogue", default="../shared/belugas", help="folder holding metadata.csv and images")
    parser.add_argument("--out", default="data/dev-large", help="output folder (challenge layout)")
    parser.add_argument("--labels", default="data/dev-large_labels.csv", help="labels CSV to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-queries", type=int, default=MAX_QUERIES, help="queries per scenario, at most")
    parser.add_argument("--max-database", type=int, default=MAX_DATABASE,
                        help="photos of the all-years database, at most (whole days)")
    parser.add_argument("--per-whale", type=int, default=PER_WHALE, help="queries of one whale per scenario")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        stats = make(args.catalogue, args.out, args.labels, args.seed, args.max_queries, args.max_database,
                     args.per_whale)
    except (WhaleMatchError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(stats.to_string(index=False, float_format=lambda x: f"{x:.1f}"))
    pairs = int((stats["queries"] * stats["database"]).sum())
    print(f"\n{len(stats)} scenarios, {int(stats['queries'].sum())} queries, {pairs:,} query x database pairs; "
          f"layout written to {args.out}, labels to {args.labels} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
