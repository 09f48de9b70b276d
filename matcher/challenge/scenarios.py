"""Build labelled development scenarios in the challenge's code-execution layout.

From a labelled catalogue (a folder holding metadata.csv and the images) this
writes, under OUT:

    query_scenarios.csv        scenario_id,queries_path,database_path
    scenario_types.csv         scenario_id,scenario_type
    queries/<scenario>.csv     query_id,query_image_id
    databases/<scenario>.csv   database_image_id
    metadata.csv               image_id,path,height,width,viewpoint,date (no labels)
    images/...                 hard links (or copies) of every image used

and a labels file (query_id,database_image_id: one row per true match).

Usage: python -m matcher.challenge.scenarios --catalogue ../shared/belugas --out data/dev
       --labels data/dev_labels.csv [--seed 0] [--max-queries 25] [--max-database 120]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError, WhaleMatchError
from ..io.catalogue import metadata_file, read_metadata
from ..io.tables import read_csv
from .layout import Scenario

REQUIRED_COLUMNS = ("image_id", "path", "height", "width", "viewpoint", "date", "whale_id")
PUBLIC_COLUMNS = ["image_id", "path", "height", "width", "viewpoint", "date"]
TOP = ("top",)
LATERAL = ("left", "right")
QUERIES_PER_WHALE = 3  # at most this many queries from one whale per scenario
WHALE_SHARE = 1 / 3  # a query whale may fill at most this share of a database
QUERY_WHALES_SHARE = 0.6  # query whales fill at most this share; distractors the rest


@dataclass(frozen=True)
class Spec:
    """Which images may be queries and which form the database."""

    query_views: tuple[str, ...]
    query_year: int | None
    db_views: tuple[str, ...]
    db_year: int | None
    leave_one_out: bool


SPECS: dict[str, Spec] = {
    "top_all_loo": Spec(TOP, None, TOP, None, True),
    "top_2017": Spec(TOP, 2017, TOP, 2017, True),
    "top_2018": Spec(TOP, 2018, TOP, 2018, True),
    "top_2019": Spec(TOP, 2019, TOP, 2019, True),
    "top_2018_to_2017": Spec(TOP, 2018, TOP, 2017, False),
    "top_2019_to_2017": Spec(TOP, 2019, TOP, 2017, False),
    "top_2019_to_2018": Spec(TOP, 2019, TOP, 2018, False),
    "top_to_lateral": Spec(TOP, 2017, LATERAL, 2017, False),
    "lateral_to_top": Spec(LATERAL, 2017, TOP, 2017, False),
}
SCENARIO_TYPES = tuple(SPECS)


# ---------------------------------------------------------------- catalogue


def read_labelled_catalogue(catalogue_dir: str | Path) -> pd.DataFrame:
    """CATALOGUE/metadata.csv with the columns scenarios need, checked; adds an integer ``year`` column."""
    meta = metadata_file(Path(catalogue_dir))
    df, problems = read_metadata(meta, REQUIRED_COLUMNS)
    if problems:
        raise DataError(next(iter(problems.values())))
    return _clean_catalogue(df.reset_index(drop=True), meta)


def _clean_catalogue(df: pd.DataFrame, meta: Path) -> pd.DataFrame:
    df = df[list(REQUIRED_COLUMNS)].copy()
    empty = [c for c in REQUIRED_COLUMNS if (df[c] == "").any()]
    if empty:
        raise DataError(f"{meta}: empty values in column(s) {', '.join(empty)}")
    dates = pd.to_datetime(df["date"], errors="coerce", format="ISO8601")
    if dates.isna().any():
        raise DataError(f"{meta}: unreadable date {df['date'][dates.isna()].iloc[0]!r}")
    df["year"] = dates.dt.year.astype(int)
    df["viewpoint"] = df["viewpoint"].astype(str).str.strip().str.lower()
    return df.sort_values("image_id", kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------- sampling


def _pool(catalogue: pd.DataFrame, views: Sequence[str], year: int | None) -> pd.DataFrame:
    keep = catalogue["viewpoint"].isin(list(views))
    if year is not None:
        keep &= catalogue["year"] == year
    return catalogue[keep]


def _images_by_whale(pool: pd.DataFrame) -> dict[str, list[str]]:
    return {w: sorted(g) for w, g in pool.groupby("whale_id")["image_id"]}


def _pick_queries(
    queries: dict[str, list[str]],
    database: dict[str, list[str]],
    spec: Spec,
    rng: np.random.Generator,
    max_queries: int,
    max_database: int,
) -> tuple[list[str], list[str]]:
    """Sample query whales and queries; returns (query image ids, query whales)."""
    need = 2 if spec.leave_one_out else 1  # a match other than the query itself
    eligible = sorted(w for w in queries if len(database.get(w, ())) >= need)
    whale_cap = max(need, int(max_database * WHALE_SHARE))
    budget = max(need, int(max_database * QUERY_WHALES_SHARE))
    picked: list[str] = []
    whales: list[str] = []
    used = 0
    for whale in rng.permutation(eligible) if eligible else []:
        if len(picked) >= max_queries:
            break
        size = len(database[whale])
        if size > whale_cap or used + size > budget:
            continue
        n = min(QUERIES_PER_WHALE, len(queries[whale]), max_queries - len(picked))
        picked += sorted(rng.choice(queries[whale], size=n, replace=False).tolist())
        whales.append(str(whale))
        used += size
    return picked, whales


def _add_distractors(
    database: dict[str, list[str]],
    query_whales: Sequence[str],
    rng: np.random.Generator,
    max_database: int,
    seen: set[str],
) -> list[str]:
    """All images of the query whales, then whole other whales where they fit, then single images.

    Distractor whales with images already used by earlier scenarios come first,
    which keeps the number of distinct images (the cost of a dev run) down.
    """
    chosen = [i for w in query_whales for i in database[w]]
    others = [w for w in sorted(database) if w not in set(query_whales)]
    shuffled = [str(w) for w in rng.permutation(others)] if others else []
    shuffled.sort(key=lambda w: seen.isdisjoint(database[w]))  # stable: reused whales first
    leftovers: list[str] = []
    for whale in shuffled:
        images = database[whale]
        if len(chosen) + len(images) <= max_database:
            chosen += images
        else:
            leftovers += images
    room = max_database - len(chosen)
    if room > 0 and leftovers:
        chosen += rng.choice(sorted(leftovers), size=min(room, len(leftovers)), replace=False).tolist()
    return [str(i) for i in rng.permutation(chosen)]


def _build_one(
    catalogue: pd.DataFrame,
    spec: Spec,
    rng: np.random.Generator,
    max_queries: int,
    max_database: int,
    seen: set[str],
) -> tuple[list[str], list[str]]:
    db_pool = _images_by_whale(_pool(catalogue, spec.db_views, spec.db_year))
    q_pool = db_pool if spec.leave_one_out else _images_by_whale(
        _pool(catalogue, spec.query_views, spec.query_year)
    )
    queries, whales = _pick_queries(q_pool, db_pool, spec, rng, max_queries, max_database)
    if not queries:
        return [], []
    return queries, _add_distractors(db_pool, whales, rng, max_database, seen)


def build_scenarios(
    catalogue: pd.DataFrame, seed: int = 0, max_queries: int = 25, max_database: int = 120
) -> list[Scenario]:
    """Sample every scenario type (in SCENARIO_TYPES order); types without any usable query are skipped."""
    if max_queries < 1 or max_database < 2:
        raise ValueError("max_queries must be >= 1 and max_database >= 2")
    rng = np.random.default_rng(seed)
    scenarios = []
    seen: set[str] = set()
    for scenario_type, spec in SPECS.items():
        queries, database = _build_one(catalogue, spec, rng, max_queries, max_database, seen)
        seen.update(queries, database)
        if queries:
            sid = f"scenario{len(scenarios) + 1:02d}"
            table = pd.DataFrame({"query_id": [f"{sid}-{q}" for q in queries], "query_image_id": list(queries)})
            scenarios.append(Scenario(sid, table, list(database), scenario_type))
    return scenarios


def scenario_labels(scenarios: Sequence[Scenario], whale_of: Mapping[str, str]) -> pd.DataFrame:
    """One row per true match: same whale, never the query's own image."""
    rows = [
        (qid, d)
        for s in scenarios
        for qid, q in s.queries.itertuples(index=False)
        for d in s.database
        if d != q and whale_of[d] == whale_of[q]
    ]
    return pd.DataFrame(rows, columns=["query_id", "database_image_id"])


def summarize(scenarios: Sequence[Scenario], labels: pd.DataFrame) -> pd.DataFrame:
    """scenario, type, n_queries, n_database, mean true matches per query."""
    matches = labels.groupby("query_id").size()
    rows = []
    for s in scenarios:
        counts = [int(matches.get(qid, 0)) for qid in s.queries["query_id"]]
        rows.append((s.scenario_id, s.scenario_type, len(s.queries), len(s.database), float(np.mean(counts))))
    return pd.DataFrame(rows, columns=["scenario", "type", "n_queries", "n_database", "mean_true_matches"])


# ---------------------------------------------------------------- writing


def _place_image(src: Path, dst: Path) -> None:
    """Hard link src at dst, or copy it where links are impossible (never a symlink)."""
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _write_tables(scenarios: Sequence[Scenario], out: Path) -> None:
    (out / "queries").mkdir(parents=True, exist_ok=True)
    (out / "databases").mkdir(parents=True, exist_ok=True)
    index = []
    for s in scenarios:
        queries_path, database_path = f"queries/{s.scenario_id}.csv", f"databases/{s.scenario_id}.csv"
        s.queries.to_csv(out / queries_path, index=False)
        pd.DataFrame({"database_image_id": list(s.database)}).to_csv(out / database_path, index=False)
        index.append((s.scenario_id, queries_path, database_path))
    pd.DataFrame(index, columns=["scenario_id", "queries_path", "database_path"]).to_csv(
        out / "query_scenarios.csv", index=False
    )
    pd.DataFrame(
        [(s.scenario_id, s.scenario_type) for s in scenarios], columns=["scenario_id", "scenario_type"]
    ).to_csv(out / "scenario_types.csv", index=False)


def _write_images(used: pd.DataFrame, catalogue_dir: Path, out: Path) -> None:
    """Place every used image under OUT/images and write OUT/metadata.csv (no labels)."""
    sources = [catalogue_dir / p for p in used["path"]]
    absent = [str(p) for p in sources if not p.is_file()]
    if absent:
        raise DataError(f"{absent[0]}: image file not found ({len(absent)} missing in all)")
    (out / "images").mkdir(parents=True, exist_ok=True)
    targets = [f"images/{i}{Path(p).suffix.lower()}" for i, p in zip(used["image_id"], used["path"], strict=True)]
    for src, dst in zip(sources, targets, strict=True):
        _place_image(src, out / dst)
    meta = used[PUBLIC_COLUMNS].assign(path=targets)
    meta.to_csv(out / "metadata.csv", index=False)


def write_dev_set(
    scenarios: Sequence[Scenario],
    catalogue: pd.DataFrame,
    catalogue_dir: str | Path,
    out_dir: str | Path,
    labels_path: str | Path,
) -> pd.DataFrame:
    """Write the layout under out_dir and the labels file; returns the summary table."""
    out = Path(out_dir)
    used_ids = {i for s in scenarios for i in (*s.queries["query_image_id"], *s.database)}
    used = catalogue[catalogue["image_id"].isin(used_ids)]
    _write_images(used, Path(catalogue_dir), out)
    _write_tables(scenarios, out)
    labels = scenario_labels(scenarios, dict(zip(catalogue["image_id"], catalogue["whale_id"], strict=True)))
    labels_path = Path(labels_path)
    labels_path.parent.mkdir(parents=True, exist_ok=True)
    labels.to_csv(labels_path, index=False)
    return summarize(scenarios, labels)


def make_dev_set(
    catalogue_dir: str | Path,
    out_dir: str | Path,
    labels_path: str | Path,
    seed: int = 0,
    max_queries: int = 25,
    max_database: int = 120,
) -> pd.DataFrame:
    """read_labelled_catalogue + build_scenarios + write_dev_set."""
    catalogue = read_labelled_catalogue(catalogue_dir)
    scenarios = build_scenarios(catalogue, seed, max_queries, max_database)
    if not scenarios:
        raise DataError(f"{Path(catalogue_dir) / 'metadata.csv'}: no scenario can be built (no whale seen twice)")
    return write_dev_set(scenarios, catalogue, catalogue_dir, out_dir, labels_path)


def dev_set_size(scenarios: Sequence[Scenario]) -> tuple[int, int]:
    """(distinct images, query x database pairs) over all scenarios."""
    images = {i for s in scenarios for i in (*s.queries["query_image_id"], *s.database)}
    return len(images), sum(len(s.queries) * len(s.database) for s in scenarios)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m matcher.challenge.scenarios", description=__doc__.split("\n")[0])
    parser.add_argument("--catalogue", default="../shared/belugas", help="folder holding metadata.csv and images")
    parser.add_argument("--out", default="data/dev", help="output folder (challenge layout)")
    parser.add_argument("--labels", default="data/dev_labels.csv", help="labels CSV to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-queries", type=int, default=25, help="queries per scenario, at most")
    parser.add_argument("--max-database", type=int, default=120, help="database images per scenario, at most")
    args = parser.parse_args(argv)
    try:
        summary = make_dev_set(args.catalogue, args.out, args.labels, args.seed, args.max_queries, args.max_database)
    except (WhaleMatchError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    meta = read_csv(Path(args.out) / "metadata.csv", ("image_id",))
    pairs = int((summary["n_queries"] * summary["n_database"]).sum())
    print(f"\n{len(summary)} scenarios, {int(summary['n_queries'].sum())} queries, "
          f"{len(meta)} distinct images, {pairs} query x database pairs")
    print(f"layout written to {args.out}, labels to {args.labels}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
