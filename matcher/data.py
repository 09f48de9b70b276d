"""Read and validate the challenge's data layout; resolve image paths safely.

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
inside the data folder. Encodings: UTF-8 (with or without BOM), UTF-16 with a BOM,
else Windows-1252 / Latin-1 with a warning; ``,``, ``;``, tab or ``|`` separated,
quoted or not. Column names are matched ignoring case, spaces and ``-``/``_``.
"""

from __future__ import annotations

import csv
import difflib
import io
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

import pandas as pd

from .errors import DataError

log = logging.getLogger(__name__)

SCENARIO_COLUMNS = ("scenario_id", "queries_path", "database_path")
METADATA_COLUMNS = ("image_id", "path")
QUERY_COLUMNS = ("query_id", "query_image_id")
DATABASE_COLUMNS = ("database_image_id",)
MAX_CSV_BYTES = 512 * 1024 * 1024  # a CSV this large is not a scenario file


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
    problems: dict[str, str] = field(default_factory=dict)  # image_id -> why its metadata row is unusable

    def image_path(self, image_id: str) -> Path:
        """Absolute path of an image, refusing paths that leave the data folder."""
        if image_id in self.problems:
            raise DataError(self.problems[image_id])
        if image_id not in self.metadata.index:
            raise DataError(f"{self.root / 'metadata.csv'}: image {image_id!r} is not listed")
        return safe_join(self.root, str(self.metadata.at[image_id, "path"]), self.root / "metadata.csv")


def safe_join(root: Path, relative: str, source: Path) -> Path:
    """``root / relative`` if it stays inside ``root``; :class:`DataError` otherwise (never read).

    The check is on the path as written (``..`` resolved lexically, no file system
    access), so a refused path is never opened, not even to look at it.
    """
    rel = str(relative).strip()
    if "\x00" in rel or any(ord(ch) < 32 for ch in rel):
        raise DataError(f"{source}: path {relative!r} holds control characters; refused")
    if not rel or PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).is_absolute() or PureWindowsPath(rel).drive:
        raise DataError(f"{source}: path {relative!r} is absolute or empty; refused (paths must stay in {root})")
    root_abs = Path(os.path.abspath(root))
    target = Path(os.path.abspath(root_abs / rel))
    if target == root_abs or os.path.commonpath([root_abs, target]) != str(root_abs):
        raise DataError(f"{source}: path {relative!r} points outside the data folder {root}; refused")
    return target


def _decode_text(path: Path, raw: bytes) -> str:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not valid UTF-16 text despite its byte-order mark ({exc})") from None
    if b"\x00" in raw:
        raise DataError(f"{path}: holds NUL bytes; not a text CSV file")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        where = raw[: exc.start].count(b"\n") + 1
        for encoding in ("cp1252", "latin-1"):
            try:
                text = raw.decode(encoding)
            except UnicodeDecodeError:
                continue
            log.warning("%s is not UTF-8 (byte 0x%02x on line %d); reading it as %s",
                        path, raw[exc.start], where, "Windows-1252" if encoding == "cp1252" else "Latin-1")
            return text
    raise AssertionError("latin-1 decodes every byte string")  # pragma: no cover


def _separator(text: str) -> str:
    header = next((line for line in text.splitlines() if line.strip()), "")
    counts = {sep: header.count(sep) for sep in (",", ";", "\t", "|")}
    best = max(counts, key=lambda s: (counts[s], s == ","))
    return best if counts[best] else ","


def _norm(name: str) -> str:
    return re.sub(r"[\s\-_]+", "_", str(name).strip().strip('"').strip()).lower()


def read_csv(path: Path, required: tuple[str, ...], nonblank: tuple[str, ...] | None = None,
             empty_ok: bool = False) -> pd.DataFrame:
    """A CSV of strings with the required columns (names matched ignoring case and spacing).

    ``nonblank`` (default: all required) are columns where an empty value is an error;
    ``empty_ok``: a file with no bytes at all is read as no rows.
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        size = path.stat().st_size
        if size > MAX_CSV_BYTES:
            raise DataError(f"{path}: {size:,} bytes is too large for a CSV file of this layout")
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    text = _decode_text(path, raw)
    if not text.strip():
        if empty_ok:
            log.warning("%s is empty (no header); read as no rows", path)
            return pd.DataFrame({c: pd.Series(dtype=str) for c in required})
        raise DataError(f"{path}: file is empty (expected columns {', '.join(required)})")
    sep = _separator(text)
    if sep != ",":
        log.warning("%s is separated by %r, not commas; reading it so", path, sep)
    try:
        df = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, skipinitialspace=True,
                         skip_blank_lines=True)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty (expected columns {', '.join(required)})") from None
    except (pd.errors.ParserError, csv.Error, ValueError) as exc:
        raise DataError(f"{path}: malformed CSV ({str(exc).strip()})") from None
    df.columns = [str(c).strip() for c in df.columns]
    if any(c not in df.columns for c in required):
        by_norm = {}
        for c in df.columns:
            by_norm.setdefault(_norm(c), c)
        renames = {by_norm[_norm(r)]: r for r in required if r not in df.columns and _norm(r) in by_norm}
        if renames:
            log.warning("%s: reading column(s) %s", path, ", ".join(f"{a!r} as {b!r}" for a, b in renames.items()))
            df = df.rename(columns=renames)
    missing = [c for c in required if c not in df.columns]
    if missing:
        hints = []
        for c in missing:
            close = difflib.get_close_matches(c, [str(x) for x in df.columns], n=1, cutoff=0.5)
            if close:
                hints.append(f"{close[0]!r} for {c!r}?")
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, df.columns)) or 'none'}"
            + (f" (renamed? {' '.join(hints)})" if hints else "")
        )
    for col in required:
        df[col] = df[col].astype(str).str.strip()
    for col in required if nonblank is None else nonblank:
        blank = df[col] == ""
        if blank.any():
            raise DataError(f"{path}: empty {col} on line(s) {', '.join(str(i + 2) for i in df.index[blank][:5])}")
    return df


def read_metadata(root: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """Metadata indexed by image_id, and the image ids whose rows cannot be used (with the reason)."""
    path = root / "metadata.csv"
    meta = read_csv(path, METADATA_COLUMNS, nonblank=())
    problems: dict[str, str] = {}
    blank_id = meta["image_id"] == ""
    if blank_id.any():
        log.warning("%s: %d row(s) with an empty image_id ignored (line(s) %s)", path, int(blank_id.sum()),
                    ", ".join(str(i + 2) for i in meta.index[blank_id][:5]))
        meta = meta[~blank_id]
    dup = meta["image_id"].duplicated()
    if dup.any():
        exact = meta.duplicated(["image_id", "path"])
        if exact.any():
            log.warning("%s: %d repeated row(s) ignored", path, int(exact.sum()))
        distinct = meta[~exact]
        clash = distinct["image_id"][distinct["image_id"].duplicated()].unique()
        for image_id in clash:
            paths = distinct.loc[distinct["image_id"] == image_id, "path"].tolist()
            problems[image_id] = (f"{path}: image_id {image_id!r} is listed twice with different paths "
                                  f"({', '.join(map(repr, paths[:3]))}); refused as ambiguous")
            log.warning("%s", problems[image_id])
        meta = meta[~dup]
    for image_id, p in zip(meta["image_id"], meta["path"]):
        if image_id not in problems and p == "":
            problems[image_id] = f"{path}: image {image_id!r} has an empty path"
    return meta.set_index("image_id", drop=False), problems


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


def load(root: Path) -> ChallengeData:
    """All scenarios, their queries and databases, and the metadata, validated."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    index_path = root / "query_scenarios.csv"
    index = read_csv(index_path, SCENARIO_COLUMNS)
    exact = index.duplicated(list(SCENARIO_COLUMNS))
    if exact.any():
        log.warning("%s: %d repeated scenario row(s) ignored", index_path, int(exact.sum()))
        index = index[~exact]
    if index["scenario_id"].duplicated().any():
        bad = index.loc[index["scenario_id"].duplicated(), "scenario_id"].iloc[0]
        raise DataError(f"{index_path}: scenario_id {bad!r} appears twice with different files")
    metadata, problems = read_metadata(root)
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
        data.scenarios.append(Scenario(row.scenario_id, queries, database))
    return data
