"""The challenge's data layout: read and validate it, and resolve its image paths safely.

    DATA/query_scenarios.csv   scenario_id, queries_path, database_path (relative to DATA)
    DATA/metadata.csv          image_id, path, height, width, viewpoint, date (path relative to DATA)
    DATA/queries/*.csv         query_id, query_image_id
    DATA/databases/*.csv       database_image_id

A file that cannot be read as the CSV it should be (missing, malformed, a required
column absent) raises :class:`DataError` naming the file and what is wrong: the run
cannot go on without it. Problems confined to rows are reported and worked around:
repeated rows are dropped, a metadata row with an empty or unsafe path or an
``image_id`` listed with two different paths makes that one image unusable (it is
ranked around with score 0), and an image path is never opened unless it stays
inside the data folder. CSV files are read by :mod:`matcher.io.tables` (encodings,
separators, column names) and the metadata by :mod:`matcher.io.catalogue`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..errors import DataError
from ..io.catalogue import read_metadata
from ..io.paths import checked, safe_join
from ..io.tables import read_csv

log = logging.getLogger(__name__)

SCENARIO_COLUMNS = ("scenario_id", "queries_path", "database_path")
QUERY_COLUMNS = ("query_id", "query_image_id")
DATABASE_COLUMNS = ("database_image_id",)


@dataclass
class Scenario:
    scenario_id: str
    queries: pd.DataFrame  # query_id, query_image_id (unique query_id)
    database: list[str]  # database image ids, unique, in file order
    scenario_type: str = ""  # known for the development scenarios (scenario_types.csv), else empty


@dataclass
class ChallengeData:
    root: Path
    metadata: pd.DataFrame  # indexed by image_id
    scenarios: list[Scenario] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)  # image_id -> why its metadata row is unusable

    def image_path(self, image_id: str) -> Path:
        """Absolute path of an image, refusing paths that leave the data folder."""
        if image_id in self.problems:
            raise DataError(self.problems[image_id])
        if image_id not in self.metadata.index:
            raise DataError(f"{self.root / 'metadata.csv'}: image {image_id!r} is not listed")
        return safe_join(self.root, str(self.metadata.at[image_id, "path"]), self.root / "metadata.csv")

    def image_paths(self, image_ids) -> tuple[dict[str, Path], dict[str, str]]:
        """Path per usable image id, and why each other one cannot be used."""
        paths, bad = {}, {}
        for image_id in sorted(image_ids):
            try:
                paths[image_id] = self.image_path(image_id)
            except DataError as exc:
                bad[image_id] = str(exc)
        return paths, bad

    def image_ids(self) -> set[str]:
        """Every query and database image id of every scenario."""
        ids: set[str] = set()
        for sc in self.scenarios:
            ids.update(sc.queries["query_image_id"])
            ids.update(sc.database)
        return ids

    def photo_metadata(self) -> dict[str, dict]:
        """Per image id, the metadata a pair model may read: ``date`` and ``viewpoint`` where the file has them."""
        cols = [c for c in ("date", "viewpoint") if c in self.metadata.columns]
        return {i: {c: v for c, v in zip(cols, row) if str(v).strip()}
                for i, row in zip(self.metadata.index, self.metadata[cols].itertuples(index=False))}

    def query_tasks(self) -> list[tuple[str, str, str, list[str]]]:
        """(query id, query image id, scenario id, database ids) for every query, in file order."""
        return [(qid, qimg, sc.scenario_id, list(sc.database))
                for sc in self.scenarios for qid, qimg in sc.queries.itertuples(index=False)]

    def expected(self) -> dict[str, tuple[str, set[str]]]:
        """Per query id: its image and its database, what a submission is validated against."""
        return {qid: (qimg, set(sc.database)) for sc in self.scenarios
                for qid, qimg in sc.queries.itertuples(index=False)}


def read_queries(path: Path) -> pd.DataFrame:
    q = read_csv(path, QUERY_COLUMNS)[list(QUERY_COLUMNS)]
    dup = q["query_id"].duplicated()
    if dup.any():
        clash = q[q["query_id"].isin(q.loc[dup, "query_id"])].drop_duplicates()
        if clash["query_id"].duplicated().any():
            bad = clash.loc[clash["query_id"].duplicated(), "query_id"].iloc[0]
            raise DataError(f"{path}: query_id {bad!r} is given two different query images")
        log.warning("%s: %d repeated query row(s) ignored", path, int(dup.sum()))
        q = q[~dup]
    return q.reset_index(drop=True)


def read_database(path: Path) -> list[str]:
    ids = read_csv(path, DATABASE_COLUMNS, empty_ok=True)["database_image_id"].tolist()
    unique = list(dict.fromkeys(ids))
    if len(unique) < len(ids):
        log.warning("%s: %d repeated database row(s) ignored", path, len(ids) - len(unique))
    return unique


def read_types(root: Path) -> dict[str, str]:
    """Scenario id -> type from ``scenario_types.csv`` (written for the development scenarios), if present."""
    path = root / "scenario_types.csv"
    if not path.is_file():
        return {}
    try:
        table = read_csv(path, ("scenario_id", "scenario_type"), nonblank=("scenario_id",))
    except DataError as exc:  # only labels the scenarios: the run does not need it
        log.warning("%s; scenario types unknown", exc)
        return {}
    return dict(zip(table["scenario_id"], table["scenario_type"]))


def load(root: Path) -> ChallengeData:
    """All scenarios, their queries and databases, and the metadata, validated."""
    root = checked(root, "data folder")
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    index_path = root / "query_scenarios.csv"
    index = read_csv(index_path, SCENARIO_COLUMNS)
    if index.empty:
        log.warning("%s lists no scenarios (a header only): the submission will hold no rows", index_path)
    exact = index.duplicated(list(SCENARIO_COLUMNS))
    if exact.any():
        log.warning("%s: %d repeated scenario row(s) ignored", index_path, int(exact.sum()))
        index = index[~exact]
    if index["scenario_id"].duplicated().any():
        bad = index.loc[index["scenario_id"].duplicated(), "scenario_id"].iloc[0]
        raise DataError(f"{index_path}: scenario_id {bad!r} appears twice with different files")
    metadata, problems = read_metadata(root / "metadata.csv")
    types = read_types(root)
    data = ChallengeData(root=root, metadata=metadata, problems=problems)
    seen_queries: dict[str, str] = {}
    for row in index.itertuples(index=False):
        queries = read_queries(safe_join(root, row.queries_path, index_path))
        database = read_database(safe_join(root, row.database_path, index_path))
        repeated = queries["query_id"].isin(seen_queries)
        for qid in queries.loc[repeated, "query_id"]:
            log.warning(
                "%s: query_id %r already appears in scenario %s; answering it there only",
                root / row.queries_path, qid, seen_queries[qid],
            )
        queries = queries[~repeated].reset_index(drop=True)
        seen_queries.update(dict.fromkeys(queries["query_id"], row.scenario_id))
        if not database:
            log.warning("%s: database of scenario %s is empty", root / row.database_path, row.scenario_id)
        data.scenarios.append(Scenario(row.scenario_id, queries, database, types.get(row.scenario_id, "")))
    return data
