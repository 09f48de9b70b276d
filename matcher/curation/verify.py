"""The commands' inputs (photos named by id or path, subsets of a catalogue, pair lists) and the verify
command's batch: verdicts ranked, drawn, written as a CSV and shown on a review page."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import DataError
from ..io.catalogue import Photo
from ..io.paths import checked
from ..io.tables import read_csv
from . import report
from .curator import RESULT_COLUMNS, Curator, PairTask, mirror_side
from .review_page import Review

TRUE = {"1", "true", "yes", "y", "t"}


def resolve_photo(value: str, meta: dict[str, Photo] | None, base: Path | None = None) -> Photo:
    """An image id of the metadata, else a path (relative to the working folder, then to ``base``)."""
    if meta is not None and value in meta:
        return meta[value]
    path = checked(Path(value).expanduser(), "image")
    if not path.is_absolute() and not path.exists() and base is not None and (base / path).exists():
        path = base / path
    if meta is not None and not path.exists():
        raise DataError(f"{value!r} is neither an image id of the metadata nor an image file")
    return Photo(id=value, path=path)


def apply_subset(photos: list[Photo], subset: Path | None) -> list[Photo]:
    """Only the photos whose image id a CSV (column image_id) lists, when one is given."""
    if subset is None:
        return photos
    keep = set(read_csv(subset, ("image_id",))["image_id"])
    out = [p for p in photos if p.id in keep]
    if not out:
        raise DataError(f"{subset}: none of its image ids is in the catalogue")
    return out


def read_pairs(path: Path, meta: dict[str, Photo] | None, force_mirror: bool) -> list[PairTask]:
    """The pairs of a CSV (``image_a,image_b`` and optionally ``mirror``: 1/0); photos resolved by
    :func:`resolve_photo`, relative paths also against the CSV's folder."""
    df = read_csv(path, ("image_a", "image_b"))
    has_mirror = "mirror" in df.columns
    tasks = []
    for row in df.to_dict("records"):
        a = resolve_photo(row["image_a"], meta, path.parent)
        b = resolve_photo(row["image_b"], meta, path.parent)
        flag = force_mirror or (has_mirror and str(row["mirror"]).strip().lower() in TRUE)
        tasks.append(PairTask(a, b, mirror_side(a, b, flag)))
    if not tasks:
        raise DataError(f"{path}: no pairs listed")
    return tasks


@dataclass
class Batch:
    tasks: list[PairTask]
    rows: list[dict]  # in the order of the pairs CSV, each with its "rank" (None for an error)
    order: list[int]  # row indices, best first (errors last)

    @property
    def errors(self) -> int:
        return sum(1 for r in self.rows if r["error"])

    def likely_same(self, cur: Curator) -> int:
        """Pairs with P(same whale) >= 0.5 (none without a calibration)."""
        return sum(1 for r in self.rows if not r["error"] and cur.calibration is not None
                   and cur.confidence(r) >= 0.5)


def verify_batch(cur: Curator, tasks: list[PairTask], pictures: int, images_dir: Path,
                 outliers: str = "faint") -> Batch:
    """Verify the pairs, rank them (confidence, then strength, then CSV order) and draw the best ``pictures``."""
    rows = cur.verify(tasks)
    order = sorted(range(len(rows)), key=lambda i: (bool(rows[i]["error"]), -cur.confidence(rows[i]),
                                                    -(rows[i]["strength"] or 0.0), i))
    for rank, i in enumerate(order, 1):
        rows[i]["rank"] = rank if not rows[i]["error"] else None
    cur.draw_many([(tasks[i], rows[i]) for i in order[: max(0, pictures)]], images_dir, outliers)
    return Batch(tasks, rows, order)


def write_results(batch: Batch, path: Path) -> Path:
    """The results CSV: a row per pair in the CSV's order, ``rank`` first."""
    return report.write_csv(pd.DataFrame(batch.rows, columns=["rank"] + RESULT_COLUMNS), path)


def write_page(cur: Curator, batch: Batch, pairs_csv: Path, pictures: int, page: Path) -> Path:
    """The review page: every pair, best first, with its picture and decision controls (image B's whale, when the
    metadata names it, is the candidate whale of a decision)."""
    ranked = [{**batch.rows[i], "whale_b": batch.tasks[i].b.whale_id} for i in batch.order]
    summary = [f"{len(batch.tasks)} pairs from {pairs_csv.name}; {batch.errors} could not be verified",
               cur.prior_line(), *cur.describe(prior=False)]
    if pictures < len(batch.tasks):
        summary.append(f"pictures for the best {pictures} pairs (--pictures)")
    columns = report.PAIR_COLUMNS + [report.Column("error", "error")]
    table = report.Table("Pairs", columns, report.pictures_relative(ranked, page), table_id="pairs",
                         review=Review("image_b", "whale_b", query="image_a"))
    return report.write(report.Report("whalematch: pair verification", summary, [table]), page)
