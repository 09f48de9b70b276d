"""The commands' inputs (photos named by id or path, subsets of a catalogue, pair lists) and the verify
command's batch: verdicts ranked, drawn, written as a CSV and shown on a review page."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import DataError, WhaleMatchError
from ..io.catalogue import Photo, read_photos, resolve_photo
from ..io.tables import read_csv
from . import priors, report
from .curator import RESULT_COLUMNS, Curator, PairTask, from_options, mirror_side
from .review_page import Review

TRUE = {"1", "true", "yes", "y", "t"}


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


# --------------------------------------------------------------------------- the command


def run(args, argv: list[str]) -> int:
    """``whalematch verify``."""
    return _run(args)


def _run(args) -> int:
    """One pair: its verdict printed and its picture drawn (a batch with --pairs)."""
    if args.pairs is not None:
        if args.images:
            raise WhaleMatchError("give either two images or --pairs CSV, not both")
        return _run_batch(args)
    if len(args.images) != 2:
        raise WhaleMatchError("verify needs two images (A B), or --pairs CSV")
    meta = read_photos(args.metadata) if args.metadata else None
    a, b = (resolve_photo(v, meta) for v in args.images)
    cur = from_options(args, args.calibration)
    cur.use_prior(priors.for_pairs(args.prior, priors.ONE_PAIR_WHY))
    task = PairTask(a, b, mirror_side(a, b, args.mirror))
    row = cur.verify([task])[0]
    if row["error"]:
        raise WhaleMatchError(row["error"])
    picture = args.picture or args.out / cur.picture_name(task)
    cur.draw(task, row, picture, args.outliers)
    row["picture"] = str(picture)
    if args.json:
        print(json.dumps({**row, "settings": cur.engine.settings_key, "preset": args.preset}, indent=2))
        return 0
    print(f"A: {a.id}  ({a.path}{', ' + a.viewpoint if a.viewpoint else ''})")
    print(f"B: {b.id}  ({b.path}{', ' + b.viewpoint if b.viewpoint else ''})")
    if task.mirror:
        side = a if task.mirror == "a" else b
        why = "left versus right flank" if {a.viewpoint, b.viewpoint} == {"left", "right"} else "--mirror"
        print(f"mirrored: {side.id} was flipped horizontally before matching ({why}); the picture shows it unflipped")
    else:
        print("mirrored: no")
    print(f"matches: {row['n_matches']} tentative, {row['n_inliers']} inliers")
    print(f"strength {row['strength']:.2f}   score {row['score']:.3f}   "
          f"P(same whale) {report.fmt(row['probability'], '.3f')}")
    print(f"verdict: {row['verdict']}" + (f"  ({row['note']})" if row["note"] else ""))
    for line in cur.describe():
        print(f"settings: {line}")
    print(f"picture: {picture}")
    return 0


def _run_batch(args) -> int:
    """A CSV of pairs: results CSV, pictures of the best and a review page."""
    meta = read_photos(args.metadata) if args.metadata else None
    tasks = read_pairs(args.pairs, meta, args.mirror)
    cur = from_options(args, args.calibration)
    cur.use_prior(priors.for_pairs(args.prior, priors.PAIRS_WHY))
    print(f"{len(tasks)} pairs from {args.pairs}; {len({p.id for t in tasks for p in (t.a, t.b)})} images",
          file=sys.stderr)
    found = verify_batch(cur, tasks, args.pictures, args.out / "images", args.outliers)
    csv_path = write_results(found, args.output or args.out / "results.csv")
    page = write_page(cur, found, args.pairs, args.pictures, args.out / "report.html")
    print(f"verified {len(found.rows) - found.errors} pairs"
          + (f", {found.likely_same(cur)} with P(same whale) >= 0.5" if cur.calibration is not None else ""))
    print(cur.prior_line())
    print(f"results: {csv_path}\nreview page: {page} (decisions: Same / Different / Not sure, exported as a CSV "
          "for whalematch apply-decisions)")
    return 0
