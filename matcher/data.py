"""Read and validate the challenge's data layout; resolve image paths safely.

    DATA/query_scenarios.csv   scenario_id, queries_path, database_path (relative to DATA)
    DATA/metadata.csv          image_id, path, height, width, viewpoint, date (path relative to DATA)
    DATA/queries/*.csv         query_id, query_image_id
    DATA/databases/*.csv       database_image_id

Every problem raises :class:`DataError` naming the file and what is wrong.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

import pandas as pd

from .errors import DataError

log = logging.getLogger(__name__)

SCENARIO_COLUMNS = ("scenario_id", "queries_path", "database_path")
METADATA_COLUMNS = ("image_id", "path")
QUERY_COLUMNS = ("query_id", "query_image_id")
DATABASE_COLUMNS = ("database_image_id",)


@dataclass
class Scenario:
    scenario_id: str
    queries: pd.DataFrame  # query_id, query_image_id (unique query_id)
    database: list[str]  # database image ids, unique, in file order


@dataclass
class ChallengeData:
    root: Path
    metadata: pd.DataFrame  # indexed by image_id
    scenarios: list[Scenario] = field(default_factory=list)

    def image_path(self, image_id: str) -> Path:
        """Absolute path of an image, refusing paths that leave the data folder."""
        if image_id not in self.metadata.index:
            raise DataError(f"{self.root / 'metadata.csv'}: image {image_id!r} is not listed")
        return safe_join(self.root, str(self.metadata.at[image_id, "path"]), self.root / "metadata.csv")


def safe_join(root: Path, relative: str, source: Path) -> Path:
    """``root / relative`` if it stays inside ``root``; :class:`DataError` otherwise (never read)."""
    rel = relative.strip()
    if not rel or PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).is_absolute() or PureWindowsPath(rel).drive:
        raise DataError(f"{source}: image path {relative!r} is absolute or empty; refused (paths must stay in {root})")
    root_abs = Path(os.path.abspath(root))
    target = Path(os.path.abspath(root_abs / rel))
    if os.path.commonpath([root_abs, target]) != str(root_abs):
        raise DataError(f"{source}: image path {relative!r} points outside the data folder {root}; refused")
    return target


def read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    """A CSV of strings with the required columns (whitespace around names ignored)."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig", skipinitialspace=True)
        except UnicodeDecodeError:
            log.warning("%s is not UTF-8; reading it as Latin-1", path)
            df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="latin-1", skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty (expected columns {', '.join(required)})") from None
    except (pd.errors.ParserError, csv.Error, ValueError) as exc:
        raise DataError(f"{path}: malformed CSV ({str(exc).strip()})") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, df.columns)) or 'none'}"
        )
    for col in required:
        df[col] = df[col].astype(str).str.strip()
        blank = df[col] == ""
        if blank.any():
            raise DataError(f"{path}: empty {col} on line(s) {', '.join(str(i + 2) for i in df.index[blank][:5])}")
    return df


def read_metadata(root: Path) -> pd.DataFrame:
    path = root / "metadata.csv"
    meta = read_csv(path, METADATA_COLUMNS)
    dup = meta["image_id"].duplicated()
    if dup.any():
        conflicting = meta[meta["image_id"].isin(meta.loc[dup, "image_id"])].drop_duplicates(["image_id", "path"])
        if conflicting["image_id"].duplicated().any():
            bad = conflicting.loc[conflicting["image_id"].duplicated(), "image_id"].iloc[0]
            raise DataError(f"{path}: image_id {bad!r} is listed twice with different paths")
        log.warning("%s: %d repeated row(s) ignored", path, int(dup.sum()))
        meta = meta[~dup]
    return meta.set_index("image_id", drop=False)


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
    ids = read_csv(path, DATABASE_COLUMNS)["database_image_id"].tolist()
    unique = list(dict.fromkeys(ids))
    if len(unique) < len(ids):
        log.warning("%s: %d repeated database row(s) ignored", path, len(ids) - len(unique))
    return unique


def load(root: Path) -> ChallengeData:
    """All scenarios, their queries and databases, and the metadata, validated."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    index_path = root / "query_scenarios.csv"
    index = read_csv(index_path, SCENARIO_COLUMNS)
    if index["scenario_id"].duplicated().any():
        bad = index.loc[index["scenario_id"].duplicated(), "scenario_id"].iloc[0]
        raise DataError(f"{index_path}: scenario_id {bad!r} appears twice")
    data = ChallengeData(root=root, metadata=read_metadata(root))
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
        data.scenarios.append(Scenario(row.scenario_id, queries, database))
    return data
