"""Search in batch: several new photos (a folder, a metadata CSV or a text file of paths) against one catalogue.

Every pair of every new photo is verified in one call (on a cluster with ``--backend ray``, one job that
keeps every worker busy), then each new photo is ranked exactly as ``search`` ranks one (:mod:`.search`:
the same tables, pictures and review page, in a folder of its own under ``--out``), with its own prior
(1 in the K whales it was compared with). ``OUT/batch.csv`` sums up: one row per new photo with its best
catalogue image and whale, or why it could not be searched.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd

from ..errors import DataError
from ..io.catalogue import Photo, load_catalogue, resolve_photo
from ..io.paths import checked
from . import cluster, priors, report, search
from .curator import Curator, PairTask, from_options, safe_name

LIST_SUFFIXES = (".txt", ".lst", ".list")
SUMMARY_COLUMNS = ["new_photo", "path", "viewpoint", "compared", "best_image", "best_whale", "n_inliers", "score",
                   "probability", "verdict", "results", "error"]


def read_new_photos(source: Path, viewpoint: str | None = None) -> list[Photo]:
    """The new photos of a folder of images, a metadata CSV (``image_id,path[,viewpoint]``) or a text file of paths
    (one a line, relative to the working folder or to the file's; ``#`` starts a comment); ``viewpoint`` for those
    that have none."""
    source = checked(source, "new photos")
    if source.is_file() and source.suffix.lower() in LIST_SUFFIXES:
        lines = [line.strip() for line in source.read_text(encoding="utf-8-sig").splitlines()]
        photos = [resolve_photo(line, None, source.parent) for line in lines
                  if line and not line.startswith("#")]
    else:
        photos = load_catalogue(source)
    if not photos:
        raise DataError(f"{source}: no new photos listed")
    seen: dict[str, Path] = {}
    for p in photos:
        if seen.setdefault(p.id, p.path) != p.path:
            raise DataError(f"{source}: {p.id!r} is listed twice with different files")
    view = (viewpoint or "").lower()
    return [replace(p, viewpoint=p.viewpoint or view) for p in dict.fromkeys(photos)]


def batch_tasks(queries: list[Photo], catalogue: list[Photo], mirror: bool = False, all_views: bool = False
                ) -> dict[str, list[PairTask]]:
    """Per new photo (by id), its pairs with the catalogue as :func:`search.search_tasks` makes them. A new photo
    whose id is a catalogue id of another file is named by its path instead (ids name one file each)."""
    by_id = {c.id: c.path for c in catalogue}
    out: dict[str, list[PairTask]] = {}
    for i, q in enumerate(queries):
        if by_id.get(q.id, q.path) != q.path:
            q = queries[i] = replace(q, id=str(q.path))
        out[q.id] = search.search_tasks(q, catalogue, mirror, all_views)
    return out


def folder_names(queries: list[Photo]) -> dict[str, str]:
    """A distinct, file-name-safe folder name per new photo."""
    names: dict[str, str] = {}
    used: set[str] = set()
    for q in queries:
        base = safe_name(Path(q.id).stem, 60)
        name, k = base, 2
        while name in used:
            name, k = f"{base}-{k}", k + 1
        used.add(name)
        names[q.id] = name
    return names


def search_batch(cur: Curator, queries: list[Photo], tasks: dict[str, list[PairTask]], catalogue: list[Photo],
                 args) -> tuple[list[dict], Path]:
    """Verify every pair at once, then rank, draw and write each new photo's results (``args``: the search
    command's options); the summary rows and the summary CSV."""
    cur.verdicts([t for q in queries for t in tasks[q.id]])
    names = folder_names(queries)
    summary = []
    for q in queries:
        out = args.out / names[q.id]
        row = dict.fromkeys(SUMMARY_COLUMNS, "")
        row.update(new_photo=q.id, path=str(q.path), viewpoint=q.viewpoint, compared=len(tasks[q.id]),
                   results=str(out))
        summary.append(row)
        if q.id in cur.bad:
            row["error"] = cur.bad[q.id]
            continue
        if not tasks[q.id]:
            row["error"] = f"no catalogue image to compare with (views: {q.viewpoint or 'any'})"
            continue
        cur.use_prior(priors.for_search(args.prior, [t.b for t in tasks[q.id]]))
        result = search.search(cur, q, tasks[q.id], catalogue, args.top, out / "images", args.outliers)
        search.write_tables(result, out)
        search.write_page(cur, result, search.summary_lines(cur, result, args.catalogue), args.top, out)
        best = next((r for r in result.rows if not r.get("error")), None)
        if best is None:
            row["error"] = result.rows[0]["error"] if result.rows else "not verified"
            continue
        row.update(best_image=best["image_b"], best_whale=best["whale_id"], n_inliers=best["n_inliers"],
                   score=best["score"], probability=best["probability"], verdict=best["verdict"])
    path = report.write_csv(pd.DataFrame(summary, columns=SUMMARY_COLUMNS), args.out / "batch.csv")
    return summary, path


# --------------------------------------------------------------------------- the command


def run(args, argv: list[str]) -> int:
    """Several new photos against a catalogue: every pair verified in one go, each photo ranked on its own."""
    catalogue = search.catalogue_of(args)
    queries = read_new_photos(args.batch, args.viewpoint)
    cur = from_options(args, args.calibration)
    tasks = batch_tasks(queries, catalogue, args.mirror, args.all_views)
    n_tasks = sum(len(t) for t in tasks.values())
    print(f"searching {len(queries)} new photos from {args.batch} against {len(catalogue)} catalogue images "
          f"({n_tasks} pairs); {cur.extraction_line(queries + catalogue)}", file=sys.stderr)
    if cluster.wanted(cur, [t for ts in tasks.values() for t in ts]):
        print("\n".join(cluster.plan_lines(cur, [t for ts in tasks.values() for t in ts], args.plan_nodes)))
    sys.stdout.flush()
    summary, path = search_batch(cur, queries, tasks, catalogue, args)
    print(f"best catalogue image of each new photo ({cur.engine.verified()} pairs verified by this run; "
          f"{cur.engine.backend.label}):")
    for r in summary:
        print(f"  {r['new_photo']:<28} " + (f"error: {r['error']}" if r["error"] else
              f"{r['best_image']:<24} {r['best_whale']:<12} inliers {r['n_inliers']:>4}  score {r['score']:.3f}  "
              f"P {report.fmt(r['probability'], '.2f')}  {r['verdict']}"))
    print(f"summary: {path}; each new photo's results, pictures and review page in {args.out}/<photo>/")
    return 0
